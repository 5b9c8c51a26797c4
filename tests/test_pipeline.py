"""SMAMotionTransferPipeline on tiny-random: guidance, inversion cache, initial latent, loading."""

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines import SMAMotionTransferPipeline
from pipelines.motion_transfer.inversion import InversionCache, check_timesteps_covered, ddim_invert
from sma_guidance.config import SMAConfig
from sma_guidance.dmt import dmt_loss
from sma_guidance.errors import UserError
from sma_guidance.features import FeatureRecorder
from sma_guidance.spectral import frame_residuals, global_motion_loss, local_motion_loss
from conftest import quiet_pipeline

SHARED_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "videos"
FAST = dict(num_frames=4, num_inference_steps=4, inversion_steps=4, optimization_steps=1, restart_sampling=False)


@pytest.fixture(scope="module")
def pipe():
    return quiet_pipeline("tiny-random")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMA_GUIDE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture()
def clip():
    """A white square moving right on black, (F, H, W, 3) uint8."""
    video = np.zeros((6, 64, 64, 3), np.uint8)
    for frame in range(6):
        video[frame, 24:40, 4 + 8 * frame : 20 + 8 * frame] = 255
    return video


def _guidance_setup(pipe, clip, **overrides):
    config = pipe.default_config().replace(**{**FAST, **overrides}).validate()
    frames, _ = pipe.prepare_video(clip, config)
    pipe.scheduler.set_timesteps(config.num_inference_steps)
    t = int(pipe.scheduler.timesteps[0])
    source, target = pipe.encode_prompt(""), pipe.encode_prompt("a red square")
    inverted, _ = pipe.invert(frames, source, config, [t])
    generator = torch.Generator().manual_seed(1)
    latents = inverted[t] + 0.5 * torch.randn(inverted[t].shape, generator=generator)
    recorder = FeatureRecorder(pipe.unet, config.feature_layers, config.num_frames, stop_after_last=True)
    with recorder, torch.no_grad():
        reference = recorder.run(pipe.model_prediction, inverted[t], t, source)
    return config, t, inverted[t], latents, source, target, recorder, reference


def test_objective_gradient_reaches_the_latent(pipe, clip):
    config, t, _, latents, _, target, recorder, reference = _guidance_setup(pipe, clip)
    latents = latents.clone().requires_grad_(True)
    with recorder:
        terms = pipe.guidance_objective(latents, t, target, reference, recorder, config)
    terms["total"].backward()
    assert set(terms) == {"dmt", "global", "local", "total"}
    assert all(float(terms[k].detach()) > 0 for k in ("dmt", "global", "local"))
    assert torch.isfinite(latents.grad).all() and latents.grad.abs().sum() > 0


def test_objective_is_eq19_summed_over_layers(pipe, clip):
    config, t, _, latents, _, target, recorder, reference = _guidance_setup(pipe, clip)
    with recorder, torch.no_grad():
        terms = pipe.guidance_objective(latents, t, target, reference, recorder, config)
        features = recorder.run(pipe.model_prediction, latents, t, target)
    expected_dmt = sum(dmt_loss(reference[name], features[name]) for name in config.feature_layers)
    torch.testing.assert_close(terms["dmt"], expected_dmt)
    expected_total = terms["dmt"] + 0.4 * terms["global"] + 0.2 * terms["local"]
    torch.testing.assert_close(terms["total"], expected_total)


@pytest.mark.parametrize("normalization", ["ref-rms", "none"])
def test_spectral_terms_see_features_divided_by_the_references_rms_by_default(pipe, clip, normalization):
    config, t, _, latents, _, target, recorder, reference = _guidance_setup(pipe, clip, feature_normalization=normalization)
    with recorder, torch.no_grad():
        terms = pipe.guidance_objective(latents, t, target, reference, recorder, config)
        features = recorder.run(pipe.model_prediction, latents, t, target)
    expected_global = expected_local = 0.0
    for name in config.feature_layers:
        ref, pred = reference[name].double(), features[name].double()
        rms = float(ref.pow(2).mean().sqrt()) if normalization == "ref-rms" else 1.0
        ref_res, pred_res = frame_residuals(ref / rms), frame_residuals(pred / rms)
        expected_global += float(global_motion_loss(ref_res, pred_res))
        expected_local += float(local_motion_loss(ref_res, pred_res))
    assert float(terms["global"]) == pytest.approx(expected_global, rel=1e-4)
    assert float(terms["local"]) == pytest.approx(expected_local, rel=1e-4)


def test_zero_lambdas_give_plain_dmt(pipe, clip):
    config, t, _, latents, _, target, recorder, reference = _guidance_setup(pipe, clip, lambda_global=0.0, lambda_local=0.0)
    with recorder, torch.no_grad():
        terms = pipe.guidance_objective(latents, t, target, reference, recorder, config)
    assert float(terms["global"]) == 0 and float(terms["local"]) == 0
    torch.testing.assert_close(terms["total"], terms["dmt"])


def test_one_optimization_step_lowers_the_objective(pipe, clip):
    config, t, reference_latents, latents, source, target, recorder, reference = _guidance_setup(pipe, clip)
    with recorder:
        with torch.no_grad():
            before = float(pipe.guidance_objective(latents, t, target, reference, recorder, config)["total"])
        optimized, history = pipe.optimize_latent(
            latents, t, reference_latents, source, target, 1e-3, config, recorder
        )
        with torch.no_grad():
            after = float(pipe.guidance_objective(optimized, t, target, reference, recorder, config)["total"])
    assert history[0]["total"] == pytest.approx(before, rel=1e-5)
    assert after < before
    assert not optimized.requires_grad


def test_reference_features_computed_once_per_step(pipe, clip):
    config, t, reference_latents, latents, source, target, recorder, _ = _guidance_setup(
        pipe, clip, optimization_steps=3
    )
    embeddings_seen = []
    handle = pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: embeddings_seen.append(kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    try:
        with recorder:
            pipe.optimize_latent(latents, t, reference_latents, source, target, 1e-3, config, recorder)
    finally:
        handle.remove()
    assert len(embeddings_seen) == 1 + 3
    assert torch.equal(embeddings_seen[0], source)
    assert all(torch.equal(e, target) for e in embeddings_seen[1:])


def test_initial_latent_keeps_low_and_replaces_high_frequencies():
    generator = torch.Generator().manual_seed(0)
    inverted = torch.randn(1, 4, 3, 16, 16, generator=generator)
    noise = torch.randn(1, 4, 3, 16, 16, generator=generator)
    init = SMAMotionTransferPipeline.initial_latent
    assert torch.equal(init(inverted, noise, 1), inverted)
    torch.testing.assert_close(init(inverted, inverted, 4), inverted)  # LP(x) + x - LP(x) = x
    mixed = init(inverted, noise, 4)
    # With zero noise only the inverted latent's low-pass remains: a smooth field.
    smooth = init(inverted, torch.zeros_like(noise), 4)
    torch.testing.assert_close(mixed - smooth, init(torch.zeros_like(inverted), noise, 4))
    assert smooth.diff(dim=-1).abs().mean() < 0.5 * inverted.diff(dim=-1).abs().mean()


def test_end_to_end_shapes_determinism_and_history(pipe, clip):
    out = pipe(clip, "a red square", **FAST)
    assert out.frames.shape == (1, 4, 64, 64, 3)
    assert out.frames.min() >= 0 and out.frames.max() <= 1
    config = SMAConfig.from_dict(out.config)
    assert len(out.loss_history) == config.num_guided_steps == 2
    assert out.fps == pytest.approx(8.0 * 4 / 6)
    again = pipe(clip, "a red square", **FAST)
    np.testing.assert_array_equal(out.frames, again.frames)
    other_seed = pipe(clip, "a red square", seed=1, **FAST)
    assert not np.array_equal(out.frames, other_seed.frames)


def test_start_and_duration_select_the_part_of_an_array(pipe, clip):
    config = pipe.default_config().replace(**FAST).validate()
    # An array counts as 8 fps: [0.25 s, 0.75 s) holds frames 2 to 5 (at 0.25, 0.375, 0.5, 0.625 s).
    part, fps = pipe.prepare_video(clip, config.replace(start=0.25, duration=0.5))
    whole, _ = pipe.prepare_video(clip[2:6], config)
    torch.testing.assert_close(part, whole)
    assert fps == pytest.approx(8.0 * 4 / 4)
    out = pipe(clip, "a red square", start=0.25, duration=0.5, **FAST)
    assert (out.config["start"], out.config["duration"]) == (0.25, 0.5) and out.fps == pytest.approx(fps)
    with pytest.raises(UserError, match="beyond the end of the video, which lasts 0.75 s"):
        pipe(clip, "a red square", start=1.0, **FAST)


def test_inversion_cache_hit_for_new_target_prompt(pipe, clip, tmp_path):
    first = pipe(clip, "a red square", **FAST)
    second = pipe(clip, "a blue circle", **FAST)
    assert first.timings["inversion_cached"] == 0 and second.timings["inversion_cached"] == 1
    uncached = pipe(clip, "a blue circle", inversion_cache=False, **FAST)
    np.testing.assert_array_equal(second.frames, uncached.frames)
    files = list((tmp_path / "cache" / "inversions").glob("*.safetensors"))
    assert len(files) == 1
    changed_source = pipe(clip, "a blue circle", source_prompt="a white square", **FAST)
    assert changed_source.timings["inversion_cached"] == 0
    assert len(list((tmp_path / "cache" / "inversions").glob("*.safetensors"))) == 2


def test_unguided_run_caches_an_inversion_a_guided_run_can_use(pipe, clip, tmp_path):
    unguided = pipe(clip, "a red square", **{**FAST, "optimization_steps": 0})
    guided = pipe(clip, "a red square", **FAST)
    assert unguided.timings["inversion_cached"] == 0 and guided.timings["inversion_cached"] == 1
    fresh = pipe(clip, "a red square", inversion_cache=False, **FAST)
    np.testing.assert_array_equal(guided.frames, fresh.frames)


def test_corrupt_cache_file_is_a_miss(tmp_path):
    cache = InversionCache(tmp_path)
    cache.folder.mkdir(parents=True)
    cache.path("abc").write_bytes(b"not safetensors")
    assert cache.load("abc", "cpu") is None
    cache.save("abc", {21: torch.ones(2)})
    assert torch.equal(cache.load("abc", "cpu")[21], torch.ones(2))


def test_inversion_keeps_requested_timesteps_and_checks_coverage(pipe):
    config = dict(pipe.scheduler.config)
    latents = torch.zeros(1, 4, 3, 8, 8)
    embedding = pipe.encode_prompt("")
    kept = ddim_invert(pipe.unet, config, latents, embedding, 10, [1, 501, 901])
    assert sorted(kept) == [1, 501, 901]
    assert all(x.shape == latents.shape for x in kept.values())
    # noisier timesteps move further from the clean latent
    assert (kept[901] - latents).std() > (kept[1] - latents).std()
    with pytest.raises(UserError, match="inversion_steps=7"):
        check_timesteps_covered(config, 7, [1, 251, 501, 751])


def test_non_square_input_is_cropped_not_stretched(pipe):
    config = pipe.default_config().replace(**FAST)
    wide = np.zeros((4, 32, 128, 3), np.uint8)
    wide[:, :, :32] = 255  # a white band on the far left: cropped away by cover + centre crop
    frames, _ = pipe.prepare_video(wide, config)
    assert frames.shape == (4, 3, 64, 64)
    assert frames.max() < -0.9


@pytest.mark.skipif(not SHARED_VIDEOS.is_dir(), reason="needs ../shared/videos")
def test_real_clip_smoke(pipe):
    out = pipe(str(SHARED_VIDEOS / "cars_bridge.mp4"), "turtles are moving", **FAST)
    assert out.frames.shape == (1, 4, 64, 64, 3) and np.isfinite(out.frames).all()


def test_save_and_load_a_local_folder(pipe, tmp_path):
    folder = tmp_path / "model"
    pipe.save_pretrained(folder)
    assert (folder / "model_index.json").is_file()
    assert list(folder.glob("unet/*.safetensors")), "weights should be saved as safetensors"
    loaded = SMAMotionTransferPipeline.load(str(folder), device="cpu")
    for name, tensor in pipe.unet.state_dict().items():
        torch.testing.assert_close(loaded.unet.state_dict()[name], tensor)
    assert loaded.tokenizer("a red square").input_ids == pipe.tokenizer("a red square").input_ids


def test_unknown_config_argument_is_rejected(pipe, clip):
    with pytest.raises(TypeError, match="no_such_option"):
        pipe(clip, "x", no_such_option=1)


def test_loads_a_zeroscope_style_folder(pipe, tmp_path):
    """Zeroscope's model_index.json names TextToVideoSDPipeline; the same components load into ours."""
    import json

    folder = tmp_path / "zeroscope-like"
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "TextToVideoSDPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    loaded = SMAMotionTransferPipeline.from_pretrained(str(folder))
    assert isinstance(loaded, SMAMotionTransferPipeline)
    assert type(loaded.unet).__name__ == "UNet3DConditionModel"


def test_stochastic_ddim_step_is_eq12_with_eq16_sigma(pipe):
    """DDIM paper eq. 12 with σ_t(η) of eq. 16, computed here from ᾱ alone."""
    from pipelines.motion_transfer.samplers import DDIMSampler

    sampler = DDIMSampler(pipe.scheduler)
    t, t_prev = sampler.timesteps(4)[1:3]
    latents = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    a, a_prev = (float(pipe.scheduler.alphas_cumprod[s]) for s in (t, t_prev))
    x0 = (latents - (1 - a) ** 0.5 * eps) / a**0.5
    for eta in (0.0, 0.5, 1.0):
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        z = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2)) if eta else 0.0
        expected = a_prev**0.5 * x0 + (1 - a_prev - sigma**2) ** 0.5 * eps + sigma * z
        got = sampler.step(eps, t, latents, eta, torch.Generator().manual_seed(2))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_eta_applies_after_the_guided_steps_only(pipe, clip):
    base = pipe(clip, "a red square", **FAST).frames
    stochastic = pipe(clip, "a red square", eta=1.0, **FAST)
    assert not np.allclose(base, stochastic.frames, atol=1e-4)
    np.testing.assert_array_equal(stochastic.frames, pipe(clip, "a red square", eta=1.0, **FAST).frames)  # seeded
    # Every step guided: no step is left for eta, so the run is the deterministic one.
    all_guided = {**FAST, "guidance_fraction": 1.0}
    np.testing.assert_array_equal(
        pipe(clip, "a red square", **all_guided).frames, pipe(clip, "a red square", eta=1.0, **all_guided).frames
    )
    assert SMAConfig.from_dict(stochastic.config).eta == 1.0


def test_generate_with_eta_is_seeded_and_differs_from_ddim(pipe):
    settings = dict(num_frames=4, num_inference_steps=4)
    deterministic = pipe.generate("a red square", seed=3, **settings).frames
    first = pipe.generate("a red square", seed=3, eta=1.0, **settings).frames
    np.testing.assert_array_equal(first, pipe.generate("a red square", seed=3, eta=1.0, **settings).frames)
    assert not np.allclose(first, deterministic, atol=1e-4)


@pytest.mark.parametrize("eta, restarts", [(0.0, 0), (1.0, 0), (0.0, 1)])
def test_generate_batch_samples_what_each_prompt_samples_alone(pipe, eta, restarts):
    settings = dict(num_frames=4, num_inference_steps=4, eta=eta, restarts=restarts)
    prompts, seeds = ["a red square", "a blue circle", "a red square"], [3, 8, 5]
    batch = pipe.generate(prompts, seed=seeds, **settings)
    assert batch.frames.shape[0] == 3 and batch.config["seed"] == seeds
    for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
        alone = pipe.generate(prompt, seed=seed, **settings).frames
        assert alone.shape[0] == 1
        np.testing.assert_allclose(batch.frames[i], alone[0], atol=2e-4)
    # Same prompt, other seed: another video (the batch does not share its noise between items).
    assert not np.allclose(batch.frames[0], batch.frames[2], atol=1e-3)
    # One int: that seed, then the next ones.
    np.testing.assert_allclose(pipe.generate(prompts[:2], seed=3, **settings).frames[1],
                               pipe.generate(prompts[1], seed=4, **settings).frames[0], atol=2e-4)


def test_generate_restarts_renoise_and_redo_every_step_but_the_last(pipe):
    settings = dict(num_frames=4, num_inference_steps=3, guidance_scale=5.0, seed=3, output_type="latent")
    got = pipe.generate("a red square", restarts=2, **settings)
    assert got.config["generate_restarts"] == 2
    # The same loop by hand: DDIM (eta 0, so no draws), and after each step but the last two rounds of
    # q(x_t | x_t_next) = N(sqrt(a_t / a_next) x, (1 - a_t / a_next) I) with the seed's generator, then the step again.
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(pipe.backbone.latent_shape(pipe, pipe.default_config().replace(num_frames=4)), generator=generator)
    embeddings = torch.cat([pipe.encode_prompt(pipe.default_config().negative_prompt), pipe.encode_prompt("a red square")])
    timesteps = pipe.sampling_timesteps(3)
    alphas = pipe.scheduler.alphas_cumprod
    for i, t in enumerate(timesteps):
        latents = pipe.denoise_step(latents, t, embeddings, 5.0)
        for _ in range(2 if i + 1 < len(timesteps) else 0):
            ratio = float(alphas[t] / alphas[timesteps[i + 1]])
            latents = ratio**0.5 * latents + (1 - ratio) ** 0.5 * torch.randn(latents.shape, generator=generator)
            latents = pipe.denoise_step(latents, t, embeddings, 5.0)
    torch.testing.assert_close(got.frames, latents, rtol=1e-4, atol=1e-5)
    plain = pipe.generate("a red square", **settings)
    assert plain.config["generate_restarts"] == 0 and not torch.allclose(plain.frames, got.frames, atol=1e-3)


def test_generate_defaults_to_the_presets_generate_settings(pipe, monkeypatch):
    settings = dict(num_frames=4, seed=3)
    explicit = pipe.generate("a red square", num_inference_steps=3, eta=1.0, guidance_scale=4.0, restarts=1, **settings)
    preset = pipe.default_config().replace(generate_num_inference_steps=3, generate_eta=1.0, generate_guidance_scale=4.0,
                                           generate_restarts=1)
    monkeypatch.setattr(pipe, "default_config", lambda: preset)
    by_preset = pipe.generate("a red square", **settings)
    np.testing.assert_array_equal(by_preset.frames, explicit.frames)
    used = {key: by_preset.config[key] for key in ("num_inference_steps", "eta", "guidance_scale", "generate_restarts")}
    assert used == {"num_inference_steps": 3, "eta": 1.0, "guidance_scale": 4.0, "generate_restarts": 1}
    # An argument still wins over the preset.
    assert pipe.generate("a red square", eta=0.0, restarts=0, **settings).config["eta"] == 0.0


def test_generate_batch_rejects_seeds_that_do_not_fit(pipe):
    with pytest.raises(UserError, match="2 seeds for 3 prompts"):
        pipe.generate(["a", "b", "c"], seed=[1, 2], num_frames=4, num_inference_steps=2)
    with pytest.raises(UserError, match="seed must be"):
        pipe.generate(["a", "b"], seed=[1, -2], num_frames=4, num_inference_steps=2)
    with pytest.raises(UserError, match="at least one prompt"):
        pipe.generate([], num_frames=4, num_inference_steps=2)


def test_guidance_rescale_reaches_generate_and_transfer(pipe, clip):
    settings = dict(num_frames=4, num_inference_steps=4, seed=3)
    plain = pipe.generate("a red square", guidance_scale=7.5, **settings)
    rescaled = pipe.generate("a red square", guidance_scale=7.5, guidance_rescale=0.7, **settings)
    assert not np.allclose(plain.frames, rescaled.frames, atol=1e-4)
    assert rescaled.config["guidance_rescale"] == 0.7 and plain.config["guidance_rescale"] == 0.0
    # At guidance scale 1 the guided prediction is the conditional one: nothing to rescale.
    np.testing.assert_allclose(
        pipe.generate("a red square", guidance_scale=1.0, **settings).frames,
        pipe.generate("a red square", guidance_scale=1.0, guidance_rescale=1.0, **settings).frames, atol=1e-5,
    )
    base = pipe(clip, "a red square", **FAST).frames
    assert not np.allclose(base, pipe(clip, "a red square", guidance_rescale=0.7, **FAST).frames, atol=1e-4)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_guidance_rescale_outside_zero_one_is_a_one_line_error(value):
    with pytest.raises(UserError, match="guidance_rescale must") as err:
        SMAConfig(guidance_rescale=value).validate()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("eta, message", [(-0.1, "eta must not be negative"), (1.5, "eta must be between 0")])
def test_eta_outside_zero_one_is_a_one_line_error(eta, message):
    with pytest.raises(UserError, match=message) as err:
        SMAConfig(eta=eta).validate()
    assert "\n" not in str(err.value)
