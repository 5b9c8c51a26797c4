"""The shapes model's training script: optimizer groups, checkpoint and resume (two tiny steps)."""

import json

import numpy as np
import pytest
import torch

from pipelines.training import shapes_training
from sma_guidance import shapes


def _pool(count=4, frames=8):
    rng = np.random.default_rng(0)
    specs = [shapes.sample_clip_spec(rng, num_frames=frames) for _ in range(count)]
    return torch.randn(count, 4, frames, 16, 16), specs


def test_temporal_layers_get_their_own_learning_rate_and_training_resumes(tmp_path, monkeypatch):
    components = shapes_training.build_shapes_components(seed=0)
    unet = components["unet"]
    latents, specs = _pool()
    seen = []
    original_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append([(len(g["params"]), g["lr"]) for g in self.param_groups])
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    log = {}
    shapes_training.train_unet(components, latents, specs, tmp_path, steps=2, minutes=None, seed=0, log=log,
                               batch_size=2, temporal_lr_scale=4.0)
    temporal = [n for n, _ in unet.named_parameters() if "temp_" in n or n.startswith("transformer_in.")]
    assert temporal and any("temp_convs" in n for n in temporal) and any("temp_attentions" in n for n in temporal)
    total = sum(1 for _ in unet.parameters()) + sum(1 for _ in components["text_encoder"].parameters())
    (rest, rest_lr), (temporal_count, temporal_lr) = seen[-1]
    assert temporal_count == len(temporal) and rest + temporal_count == total
    assert temporal_lr == 4.0 * rest_lr > 0

    state = torch.load(tmp_path / "unet.pt", weights_only=False)
    assert state["step"] == 2 and log["unet_steps"] == 2
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    shapes_training.train_unet(components, latents, specs, tmp_path, steps=3, minutes=None, seed=0, log=log,
                               batch_size=2, temporal_lr_scale=4.0)
    assert torch.load(tmp_path / "unet.pt", weights_only=False)["step"] == 3 and len(seen) == 3
    assert any(not torch.equal(before[n], p) for n, p in unet.named_parameters())
    json.dumps(log)  # the log stays writable as JSON


def test_ema_sitting_saves_the_moving_average_and_resumes_it(tmp_path, monkeypatch):
    """With ``ema_decay`` the models end holding a ← d·a + (1 − d)·p over the sitting's optimizer steps,
    started at the resumed weights; the checkpoint keeps the raw weights and the average, and a later
    sitting continues that average."""
    components = shapes_training.build_shapes_components(seed=0)
    params = [*components["unet"].parameters(), *components["text_encoder"].parameters()]
    latents, specs = _pool()
    before_steps, after_steps = [], []
    original_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        before_steps.append([p.detach().clone() for p in params])
        result = original_step(self, *args, **kwargs)
        after_steps.append([p.detach().clone() for p in params])
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    start = [p.detach().clone() for p in params]
    decay = 0.6

    def average(initial, snapshots):
        out = [w.clone() for w in initial]
        for snapshot in snapshots:
            out = [decay * a + (1 - decay) * p for a, p in zip(out, snapshot)]
        return out

    shapes_training.train_unet(components, latents, specs, tmp_path, steps=3, minutes=None, seed=0, log={},
                               batch_size=2, ema_decay=decay, peak_lr=1.0)
    expected = average(start, after_steps)
    assert len(after_steps) == 3
    assert all(torch.allclose(p, e, atol=1e-6) for p, e in zip(params, expected))
    assert any(not torch.allclose(p, raw, atol=1e-4) for p, raw in zip(params, after_steps[-1]))
    state = torch.load(tmp_path / "unet.pt", weights_only=False)
    names = [name for name, _ in components["unet"].named_parameters()]
    assert all(torch.equal(state["unet"][name], raw) for name, raw in zip(names, after_steps[-1]))
    assert all(torch.equal(a, e) for a, e in zip(state["ema"], params))

    # the next sitting, with the models still holding the average, resumes the raw weights from the
    # checkpoint and continues the saved average
    shapes_training.train_unet(components, latents, specs, tmp_path, steps=4, minutes=None, seed=0, log={},
                               batch_size=2, ema_decay=decay, peak_lr=1.0)
    assert len(after_steps) == 4
    assert all(torch.equal(b, raw) for b, raw in zip(before_steps[3], after_steps[2]))
    assert all(torch.allclose(p, e, atol=1e-6) for p, e in zip(params, average(expected, after_steps[3:])))


class _Oracle(torch.nn.Module):
    """Stands in for the UNet: returns ``answer(noisy)`` and keeps one trainable scalar."""

    def __init__(self, answer):
        super().__init__()
        self.answer, self.scale = answer, torch.nn.Parameter(torch.ones(()))

    def forward(self, noisy, t, encoder_hidden_states):
        return type("Output", (), {"sample": self.answer(noisy) * self.scale})()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_loss_targets_the_schedulers_prediction_type(tmp_path, monkeypatch, prediction_type):
    """With a clean pool of zeros, x_t = √(1−ᾱ) ε, so ε = x_t / √(1−ᾱ) and v = √ᾱ ε: an oracle that
    knows the right one has zero loss, the other not."""
    components = shapes_training.build_shapes_components(seed=0, prediction_type=prediction_type)
    assert components["scheduler"].config.prediction_type == prediction_type
    alphas = components["scheduler"].alphas_cumprod.float()
    seen_t = []
    real_randint = torch.randint

    def spy_randint(low, high, size, generator=None, device=None):
        t = real_randint(low, high, size, generator=generator, device=device)
        seen_t.append(t)
        return t

    monkeypatch.setattr(torch, "randint", spy_randint)

    latents, specs = torch.zeros(4, 4, 8, 16, 16), _pool()[1]
    losses = {}
    for name in ("epsilon", "v_prediction"):
        def answer(noisy, name=name):
            a = alphas[seen_t[-1]].view(-1, 1, 1, 1, 1)
            eps = noisy / (1 - a).sqrt()
            return eps if name == "epsilon" else a.sqrt() * eps

        components["unet"] = _Oracle(answer)
        log = {}
        (tmp_path / name).mkdir()
        shapes_training.train_unet(components, latents, specs, tmp_path / name, steps=1, minutes=None, seed=0,
                                   log=log, batch_size=2)
        losses[name] = log["unet_final_loss_100"]
    assert losses[prediction_type] < 1e-10
    assert min(losses.values()) < 1e-10 < max(losses.values())


def test_init_from_a_model_with_other_token_ids_matches_embeddings_by_token(tmp_path):
    from pipelines.motion_transfer.backbones.tokenizers import build_word_tokenizer

    components = shapes_training.build_shapes_components(seed=0)
    old_tokenizer = build_word_tokenizer(["moving", "red"], max_length=24)  # ids differ from the full vocabulary
    old_encoder = shapes_training.build_shapes_components(seed=1)["text_encoder"]
    old_encoder.resize_token_embeddings(len(old_tokenizer))
    before = components["text_encoder"].get_input_embeddings().weight.detach().clone()
    shapes_training._load_text_encoder(components, old_encoder, old_tokenizer)
    new_rows = components["text_encoder"].get_input_embeddings().weight
    old_rows = old_encoder.get_input_embeddings().weight
    new_vocab, old_vocab = components["tokenizer"].get_vocab(), old_tokenizer.get_vocab()
    assert new_vocab["red</w>"] != old_vocab["red</w>"]
    for token in ("red</w>", "moving</w>", "a"):
        assert torch.equal(new_rows[new_vocab[token]], old_rows[old_vocab[token]])
    assert torch.equal(new_rows[new_vocab["circle</w>"]], before[new_vocab["circle</w>"]])  # unknown before: kept
    layer = next(name for name in old_encoder.state_dict() if name.endswith("layers.0.mlp.fc1.weight"))
    assert torch.equal(components["text_encoder"].state_dict()[layer], old_encoder.state_dict()[layer])


def test_vae_loss_weights_the_outer_ring_and_objects(tmp_path, monkeypatch):
    """The border ring counts in the VAE loss (zero padding tints the borders otherwise): with a VAE that
    returns its input plus an error on the ring only, the loss grows with ``border_weight``."""
    ring = shapes_training._border_ring((64, 64), 4)
    assert ring.shape == (1, 1, 64, 64) and int(ring.sum()) == 64 * 64 - 56 * 56
    assert ring[0, 0, 3, 30] == 1 and ring[0, 0, 4, 30] == 0 == ring[0, 0, 32, 32]

    class RingError(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def encode(self, frames):
            dist = type("Dist", (), {"mode": lambda _: frames, "kl": lambda _: torch.zeros(len(frames))})()
            return type("Out", (), {"latent_dist": dist})()

        def decode(self, latents):
            return type("Out", (), {"sample": latents + 0.5 * ring + self.p})()

    losses = {}
    for weight in (0.0, 4.0):
        log, workdir = {}, tmp_path / str(weight)
        workdir.mkdir()
        shapes_training.train_vae(RingError(), workdir, steps=1, seed=0, log=log, border_weight=weight)
        losses[weight] = log["vae_final_reconstruction"]
    assert losses[4.0] > 1.5 * losses[0.0] > 0


def test_offset_noise_is_one_constant_per_clip_and_channel(tmp_path, monkeypatch):
    """With a clean pool of zeros, x_t = √(1−ᾱ) (ε + offset): a large offset shows as per-(clip, channel)
    means far from 0, while what is left around those means is unit Gaussian noise."""
    components = shapes_training.build_shapes_components(seed=0)
    latents, specs = torch.zeros(4, 4, 8, 16, 16), _pool()[1]
    alphas = components["scheduler"].alphas_cumprod.float()
    seen_t, real_randint = [], torch.randint
    monkeypatch.setattr(torch, "randint", lambda *a, **k: seen_t.append(real_randint(*a, **k)) or seen_t[-1])
    means = {}
    for offset in (0.0, 10.0):
        inputs = []
        components["unet"] = _Oracle(lambda noisy: inputs.append(noisy.detach()) or torch.zeros_like(noisy))
        (tmp_path / str(offset)).mkdir()
        shapes_training.train_unet(components, latents, specs, tmp_path / str(offset), steps=1, minutes=None,
                                   seed=0, log={}, batch_size=8, offset_noise=offset)
        noise = inputs[0] / (1 - alphas[seen_t[-1]]).sqrt().view(-1, 1, 1, 1, 1)
        means[offset] = noise.mean(dim=(2, 3, 4))
        residual = noise - means[offset][..., None, None, None]
        assert abs(float(residual.std()) - 1) < 0.02
    assert float(means[0.0].abs().max()) < 0.1  # 2,048 values per mean: std 0.022
    assert 5 < float(means[10.0].std()) < 15


@pytest.mark.parametrize("peak_lr", [None, 1e-4])
def test_a_warm_restart_runs_by_the_clock_and_anneals(tmp_path, monkeypatch, peak_lr):
    """``restart_minutes`` replaces the step budget by a time budget with its own warm-up and cosine
    (a fake clock that ticks 0.1 s a reading makes the run deterministic)."""
    clock = iter(np.arange(0, 10_000, 0.1))
    monkeypatch.setattr(shapes_training.time, "time", lambda: float(next(clock)))
    components = shapes_training.build_shapes_components(seed=0)
    components["unet"] = _Oracle(torch.zeros_like)
    latents, specs = _pool()
    lrs, original_step = [], torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    log = {}
    shapes_training.train_unet(components, latents, specs, tmp_path, steps=1, minutes=None, seed=0, log=log,
                               batch_size=2)
    chosen = {} if peak_lr is None else {"peak_lr": peak_lr}
    shapes_training.train_unet(components, latents, specs, tmp_path, steps=1, minutes=None, seed=0, log=log,
                               batch_size=2, restart_minutes=1.0, **chosen)
    peak = peak_lr or 3e-4  # the default
    (restart,) = log["unet_restarts"]
    assert restart["from_step"] == 1 and restart["to_step"] == log["unet_steps"] > 150  # ``steps`` is ignored
    assert restart["batch_size"] == 2 and restart["device"] == "cpu" and restart["minutes"] == 1.0
    assert restart["peak_lr"] == peak and restart["object_weight"] == 1.0
    assert torch.load(tmp_path / "unet.pt", weights_only=False)["step"] == restart["to_step"]
    sitting = np.array(lrs[1:])
    top = int(sitting.argmax())
    assert sitting[0] == pytest.approx(peak / 100, rel=0.01) and 0 < top < 100  # a 100-step warm-up from 1 %
    assert sitting[top] <= peak
    assert np.all(np.diff(sitting[: top + 1]) > 0) and np.all(np.diff(sitting[top:]) < 0)  # under the cosine
    assert peak / 10 <= sitting[-1] < 1.17 * peak / 10  # annealed to the floor when the minute is up
    json.dumps(log)


def test_pool_encoding_in_batches_matches_one_clip_at_a_time(tmp_path):
    vae = shapes_training.build_shapes_components(seed=0)["vae"]
    (tmp_path / "one").mkdir()
    (tmp_path / "batched").mkdir()
    one, specs_one = shapes_training.encode_pool(vae, tmp_path / "one", clips=5, seed=3)
    batched, specs_batched = shapes_training.encode_pool(vae, tmp_path / "batched", clips=5, seed=3,
                                                         clips_per_batch=2)
    assert one.shape == batched.shape == (5, 4, 8, 16, 16) and specs_one == specs_batched
    torch.testing.assert_close(batched, one, rtol=1e-5, atol=1e-5)
    assert not torch.equal(one[0], one[1])


def _square_clip():
    """One 14-px red square moving right by 3 px a frame on black."""
    square = shapes.ObjectSpec(shape="square", color="red", size=14, motion="right", start_x=20.3, start_y=31.0,
                               vx=3.0)
    return shapes.ClipSpec(objects=(square,), background="black")


def test_object_masks_cover_the_latent_cells_with_object_pixels_and_their_neighbours():
    spec = _square_clip()
    masks = shapes_training.object_masks([spec, spec])
    assert masks.shape == (2, 1, 8, 16, 16) and torch.equal(masks[0], masks[1])
    frames = shapes.render(spec)
    drawn = frames.max(axis=-1) > 0  # on black, every touched pixel is the object's
    cells = drawn.reshape(8, 16, 4, 16, 4).any(axis=(2, 4))
    grown = np.zeros_like(cells)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown |= np.roll(np.roll(cells, dy, axis=1), dx, axis=2)  # the square stays off the edges
    assert np.array_equal(masks[0, 0].numpy() > 0, grown)
    inside = drawn.reshape(8, 16, 4, 16, 4).all(axis=(2, 4))
    assert inside.any() and np.all(masks[0, 0].numpy()[inside] == 1)
    assert np.array_equal(shapes_training.object_masks([spec], halo=0)[0, 0].numpy() > 0, cells)


def test_object_weight_scales_the_loss_on_object_cells(tmp_path, monkeypatch):
    """An oracle that is exactly right except by 1 on the object's cells: its loss is the weighted share of
    those cells, mean(w·I) / mean(w) with w = 1 + (k − 1)·mask, so k = 1 gives the cells' plain share."""
    components = shapes_training.build_shapes_components(seed=0)
    alphas = components["scheduler"].alphas_cumprod.float()
    spec = _square_clip()
    mask = shapes_training.object_masks([spec])  # (1, 1, F, 16, 16)
    on_object = (mask > 0).float()
    seen_t, real_randint = [], torch.randint
    monkeypatch.setattr(torch, "randint", lambda *a, **k: seen_t.append(real_randint(*a, **k)) or seen_t[-1])
    losses, real_backward = [], torch.Tensor.backward
    monkeypatch.setattr(torch.Tensor, "backward", lambda self, *a, **k: losses.append(float(self.detach())) or real_backward(self, *a, **k))

    def answer(noisy):
        eps = noisy / (1 - alphas[seen_t[-1]]).sqrt().view(-1, 1, 1, 1, 1)
        return eps + on_object

    for k in (1.0, 5.0):
        components["unet"] = _Oracle(answer)
        (tmp_path / str(k)).mkdir()
        shapes_training.train_unet(components, torch.zeros(1, 4, 8, 16, 16), [spec], tmp_path / str(k), steps=1,
                                   minutes=None, seed=0, log={}, batch_size=2, object_weight=k)
        weight = 1 + (k - 1) * mask
        assert losses[-1] == pytest.approx(float((weight * on_object).mean() / weight.mean()), rel=1e-5)
    share = float(on_object.mean())
    assert 0.05 < share < 0.3 and losses[-1] > 2 * losses[-2] == pytest.approx(2 * share, rel=1e-5)


def test_grafted_attention_at_16_starts_as_the_saved_unet(tmp_path):
    """A UNet with cross-attention added at 16×16, seeded from one without it, computes the same output
    before training (the new layers are identities) and only the new layers were left to learn."""
    torch.manual_seed(1)
    saved = shapes_training.build_shapes_components(seed=3)["unet"]
    grafted = shapes_training.build_shapes_components(seed=4, attention_at_16=True)["unet"]
    added = shapes_training.graft_unet(grafted, saved.state_dict())
    assert added == ["down_blocks.0.attentions.0", "down_blocks.0.temp_attentions.0",
                     "up_blocks.2.attentions.0", "up_blocks.2.attentions.1",
                     "up_blocks.2.temp_attentions.0", "up_blocks.2.temp_attentions.1"]
    noisy, text = torch.randn(2, 4, 8, 16, 16), torch.randn(2, 24, 64)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        expected = saved(noisy, t, encoder_hidden_states=text).sample
        output = grafted(noisy, t, encoder_hidden_states=text).sample
        torch.testing.assert_close(output, expected, rtol=0, atol=1e-5)
        # the new layers do act once their projections move off zero
        grafted.down_blocks[0].attentions[0].proj_out.weight.normal_()
        assert (grafted(noisy, t, encoder_hidden_states=text).sample - expected).abs().max() > 1e-3
    # the saved weights are really reused: a fresh seed alone gives another output
    fresh = shapes_training.build_shapes_components(seed=4)["unet"]
    with torch.no_grad():
        assert (fresh(noisy, t, encoder_hidden_states=text).sample - expected).abs().max() > 1e-3
    with pytest.raises(ValueError, match="cannot graft"):
        shapes_training.graft_unet(saved, grafted.state_dict())


def _refine_pipe(unet_answer):
    """A shapes pipeline whose encoder returns zero latents and whose UNet is an oracle of ``t``."""
    from pipelines.motion_transfer.pipeline_sma import SMAMotionTransferPipeline

    components = shapes_training.build_shapes_components(seed=0)
    pipe = SMAMotionTransferPipeline(**components)
    alphas = pipe.scheduler.alphas_cumprod.float()

    pipe.unet.forward = lambda noisy, t, encoder_hidden_states: type(
        "Output", (), {"sample": unet_answer(noisy, alphas[int(t)])})()
    pipe.vae.encode = lambda pixels: type("Posterior", (), {"latent_dist": type("D", (), {
        "mode": lambda self: torch.zeros(len(pixels), 4, 16, 16)})()})()
    return pipe


def test_decoder_pairs_sample_back_to_the_latents_with_an_exact_model():
    """With x₀ = 0 an exact ε-model answers ε = x_t / √(1−ᾱ_t); DDIM (η = 0) then keeps only the noise's
    share at its last timestep, √(1−ᾱ₀)·ε (Zeroscope's schedule does not set ᾱ to 1 at the end), so the
    sampled latents have std √(1−ᾱ₀)/scaling. A model that sees no noise (ε = 0) leaves far more."""
    pipe = _refine_pipe(lambda x, a: x / (1 - a).sqrt())
    exact = shapes_training.decoder_pairs(pipe, clips=3, seed=0, batch=2)
    assert exact["latents"].shape == exact["sampled"].shape == (3, 4, 8, 16, 16)
    assert exact["frames"].shape == (3, 8, 64, 64, 3) and exact["frames"].dtype == torch.uint8
    assert torch.count_nonzero(exact["latents"]) == 0
    residual = float((1 - pipe.scheduler.alphas_cumprod[0]).sqrt()) / pipe.vae.config.scaling_factor
    assert float(exact["sampled"].std()) == pytest.approx(residual, rel=0.05)
    blind = shapes_training.decoder_pairs(_refine_pipe(lambda x, a: torch.zeros_like(x)), clips=3, seed=0, batch=2)
    assert blind["sampled"].std() > 5 * residual
    # same seed, same renders: the pairs are reproducible
    assert torch.equal(blind["frames"], exact["frames"])


def test_refine_decoder_trains_only_the_decoder_on_sampled_latents_and_resumes(tmp_path):
    vae = shapes_training.build_shapes_components(seed=0)["vae"]
    encoder_before = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    decoder_before = vae.decoder.conv_out.weight.detach().clone()
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(np.stack([shapes.render(shapes.sample_clip_spec(rng, p_two=0)) for _ in range(2)]))
    pairs = {"frames": frames, "sampled": torch.randn(2, 4, 8, 16, 16),
             "latents": torch.full((2, 4, 8, 16, 16), float("nan"))}  # must not be read at sampled_share=1
    log = {}
    shapes_training.refine_decoder(vae, pairs, tmp_path, steps=2, seed=0, log=log, frames_per_step=2, sampled_share=1.0)
    assert log["decoder_refine_steps"] == 2 and np.isfinite(log["decoder_refine_reconstruction"])
    assert all(torch.equal(v, encoder_before[k]) for k, v in vae.encoder.state_dict().items())
    assert not torch.equal(vae.decoder.conv_out.weight, decoder_before)
    shapes_training.refine_decoder(vae, pairs, tmp_path, steps=3, seed=0, log=log, frames_per_step=2, sampled_share=1.0)
    assert log["decoder_refine_steps"] == 3 and torch.load(tmp_path / "decoder.pt", weights_only=False)["step"] == 3
    (tmp_path / "half").mkdir()  # at the default share, about half the batch decodes the encoder's latents
    shapes_training.refine_decoder(vae, pairs, tmp_path / "half", steps=1, seed=0, log=log, frames_per_step=8)
    assert np.isnan(log["decoder_refine_reconstruction"])


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_low_noise_share_draws_that_share_of_timesteps_below_the_bound(tmp_path, share):
    components = shapes_training.build_shapes_components(seed=0)
    seen = []

    class Recorder(_Oracle):
        def forward(self, noisy, t, encoder_hidden_states):
            seen.append(t)
            return super().forward(noisy, t, encoder_hidden_states)

    components["unet"] = Recorder(torch.zeros_like)
    latents, specs = _pool()
    shapes_training.train_unet(components, latents, specs, tmp_path, steps=20, minutes=None, seed=0, log={},
                               batch_size=50, low_noise_share=share, low_noise_until=100)
    below = float((torch.cat(seen) < 100).float().mean())
    # uniform draws fall below 100 a tenth of the time: share + (1 - share) / 10 in all
    assert below == pytest.approx(share + (1 - share) / 10, abs=0.04)


def _object_on_background(error_on_background: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Renders ``(2, 3, 64, 64)``: a 20×20 object on a plain background, and their reconstruction with
    ``error_on_background`` ``(64, 64)`` added to every background pixel."""
    frames = torch.full((2, 3, 64, 64), -0.5)
    frames[:, :, 20:40, 24:44] = 0.9  # far from the outer ring
    on_background = torch.ones(64, 64)
    on_background[20:40, 24:44] = 0
    return frames + error_on_background * on_background, frames


def test_reconstruction_loss_weights_objects_ring_and_background_by_hand_count():
    recon, frames = _object_on_background(torch.full((64, 64), 0.2))
    ring, objects = 64 * 64 - 56 * 56, 20 * 20
    interior = 64 * 64 - ring - objects
    expected = (0.2 + 0.2**2) * (5 * ring + interior) / (21 * objects + 5 * ring + interior)
    assert shapes_training.reconstruction_loss(recon, frames).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("tint_weight", [1.0, 3.0])
def test_tint_term_costs_a_uniform_background_shift_and_not_zero_mean_noise(tint_weight):
    """The tint term adds ``tint_weight`` × the background's mean error: 0.2 for a uniform shift of 0.2,
    nothing for a ±0.2 checkerboard (mean 0 over the background), whose per-pixel loss is the same."""
    shift = _object_on_background(torch.full((64, 64), 0.2))
    checker = _object_on_background(0.2 * (1 - 2 * ((torch.arange(64)[:, None] + torch.arange(64)) % 2)).float())
    for (recon, frames), tint in ((shift, 0.2), (checker, 0.0)):
        plain = shapes_training.reconstruction_loss(recon, frames).item()
        tinted = shapes_training.reconstruction_loss(recon, frames, tint_weight=tint_weight).item()
        assert tinted - plain == pytest.approx(tint_weight * tint, abs=1e-6)
    # same per-pixel loss (|e| + e² is even), so only the tint tells them apart
    assert shapes_training.reconstruction_loss(*shift).item() == pytest.approx(
        shapes_training.reconstruction_loss(*checker).item(), rel=1e-6)


def test_a_second_decoder_refinement_keeps_the_first_ones_record(tmp_path, monkeypatch):
    """Refining an already refined model (``--init-from``) files the saved model's refinement under
    ``earlier_decoder_refinements`` and records this one's steps and tint weight."""
    from pipelines import SMAMotionTransferPipeline

    monkeypatch.setattr(shapes_training, "vae_round_trip", lambda vae: {"background": 0.5})  # 200 clips: slow

    saved = tmp_path / "saved"
    SMAMotionTransferPipeline(**shapes_training.build_shapes_components(seed=0)).save_pretrained(saved)
    history = {"unet_steps": 2, "decoder_refine_steps": 1500, "decoder_refine_clips": 1600,
               "decoder_refine_reconstruction": 0.05, "vae_round_trip_refined": {"background": 1.0}}
    (saved / "training_log.json").write_text(json.dumps(history))
    output = tmp_path / "out"
    shapes_training.main(["--init-from", str(saved), "--workdir", str(tmp_path / "work"), "--output", str(output),
                          "--vae-steps", "1", "--clips", "2", "--unet-steps", "2", "--threads", "1",
                          "--refine-decoder-steps", "1", "--refine-clips", "1", "--refine-tint-weight", "3"])
    log = json.loads((output / "training_log.json").read_text())
    assert log["earlier_decoder_refinements"] == [{"decoder_refine_steps": 1500, "decoder_refine_clips": 1600,
                                                   "decoder_refine_reconstruction": 0.05,
                                                   "round_trip": {"background": 1.0}}]
    assert log["decoder_refine_steps"] == 1 and log["decoder_refine_clips"] == 1
    assert log["decoder_refine_tint_weight"] == 3.0 and log["vae_round_trip_refined"] == {"background": 0.5}


def test_init_from_keeps_the_saved_history_under_this_runs_recipe(tmp_path):
    """``--init-from``: the saved model's log is continued (its note, its step count), and the recipe
    fields are this run's flags, not the saved model's."""
    from pipelines import SMAMotionTransferPipeline

    saved = tmp_path / "saved"
    SMAMotionTransferPipeline(**shapes_training.build_shapes_components(seed=0)).save_pretrained(saved)
    history = {"unet_steps": 2, "offset_noise": 0.15, "low_noise_share": 0.5, "note": "two sittings",
               "vae_round_trip": {"color": 1.0, "shape": 1.0, "background": 1.0}}
    (saved / "training_log.json").write_text(json.dumps(history))
    output = tmp_path / "out"
    shapes_training.main(["--init-from", str(saved), "--workdir", str(tmp_path / "work"), "--output", str(output),
                          "--vae-steps", "1", "--clips", "2", "--unet-steps", "3", "--batch-size", "2",
                          "--offset-noise", "0.05", "--threads", "1"])
    log = json.loads((output / "training_log.json").read_text())
    assert log["offset_noise"] == 0.05 and log["low_noise_share"] == 0.0  # this run's flags
    assert log["note"] == "two sittings" and log["vae_round_trip"] == history["vae_round_trip"]  # the saved history
    assert log["unet_steps"] == 3 and log["unet_target_steps"] == 3


def test_shape_weights_draw_clips_of_that_shape_that_much_more_often():
    rng = np.random.default_rng(0)
    specs = [shapes.sample_clip_spec(rng, p_two=0.5) for _ in range(300)]
    assert shapes_training.clip_draw_probability(specs, {}) is None  # the default recipe: uniform draws
    probability = shapes_training.clip_draw_probability(specs, {"square": 3.0})
    first = np.array([spec.objects[0].shape for spec in specs])
    counts = {shape: int((first == shape).sum()) for shape in shapes.SHAPES}
    assert probability.sum() == pytest.approx(1.0)
    mass = probability[first == "square"].sum()
    assert mass == pytest.approx(3 * counts["square"] / (3 * counts["square"] + counts["circle"] + counts["triangle"]))
    # every square clip 3 times as likely as any other clip, however many objects it holds
    assert np.allclose(probability[first == "square"], 3 * probability[first == "circle"][0])
    with pytest.raises(ValueError, match="not all 0"):
        shapes_training.clip_draw_probability(specs, {s: 0.0 for s in shapes.SHAPES})


def test_shape_weight_flag_is_checked(capsys):
    with pytest.raises(SystemExit):
        shapes_training.main(["--shape-weight", "hexagon=2"])
    assert "SHAPE=WEIGHT with SHAPE one of circle, square, triangle" in capsys.readouterr().err
