"""The Wan 2.1 family (flow-matching diffusion transformer) on the backbone seam, on ``tiny-random-wan``."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import UniPCMultistepScheduler
from safetensors.torch import load_file

from cli import main
from conftest import quiet_pipeline, write_moving_square
from diffusers_layouts import save_wan
from pipelines import SMAMotionTransferPipeline
from pipelines.motion_transfer.backbones import model_family
from pipelines.motion_transfer.backbones.wan import WAN_TRANSFORMER_CONFIG, WanBackbone, build_tiny_t5_tokenizer, build_tiny_wan
from pipelines.motion_transfer.finetune import applied_adapter
from pipelines.motion_transfer.samplers import FlowMatchSampler
from sma_guidance.errors import UserError
from sma_guidance.memory import checkpoint_units
from sma_guidance.video_io import read_frames


@pytest.fixture(scope="module")
def pipe():
    return quiet_pipeline("tiny-random-wan")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_moving_square(tmp_path_factory.mktemp("wan") / "clip.mp4", num_frames=12)


# ------------------------------------------------------------------------------------ the sampler
@pytest.mark.parametrize("steps", [5, 50])
def test_flow_sigmas_are_those_of_wans_own_scheduler(steps):
    """Independent reference: diffusers' UniPC on flow sigmas, as in Wan's Hub scheduler config."""
    reference = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    reference.set_timesteps(steps)
    sampler = FlowMatchSampler(build_tiny_wan()["scheduler"])
    np.testing.assert_allclose(sampler.sigmas(steps), reference.sigmas.numpy(), rtol=1e-6, atol=1e-7)
    timesteps = sampler.timesteps(steps)
    assert len(timesteps) == steps and timesteps == sorted(timesteps, reverse=True)
    np.testing.assert_allclose(np.floor(timesteps), reference.timesteps.numpy())  # UniPC rounds them down


def test_euler_step_and_inversion_follow_the_ode():
    sampler = FlowMatchSampler(build_tiny_wan()["scheduler"])
    timesteps = sampler.timesteps(4)
    sigmas = sampler.sigmas(4)
    x, v = torch.randn(1, 2, 3, 4, 4), torch.randn(1, 2, 3, 4, 4)
    torch.testing.assert_close(sampler.step(v, timesteps[1], x), x + (sigmas[2] - sigmas[1]) * v)
    # A constant velocity field makes Euler exact: the inversion lands on x0 + σ v at every kept sigma,
    # also on an 8-step inversion that passes through the 4 sampling sigmas.
    x0 = torch.randn(1, 2, 3, 4, 4)
    calls = []
    kept = sampler.invert(lambda x, t, e: calls.append(t) or v, x0, None, 8, timesteps)
    assert set(kept) == set(timesteps) and len(calls) == 8
    for t, sigma in zip(timesteps, sigmas):
        torch.testing.assert_close(kept[t], x0 + sigma * v)
    with pytest.raises(UserError, match="multiple of num_inference_steps"):
        sampler.check(30, 4)


def test_renoise_draws_the_forward_process():
    sampler = FlowMatchSampler(build_tiny_wan()["scheduler"])
    x0 = torch.full((200_000,), 0.5)
    a, b = 300.0, 800.0
    x_a = (1 - a / 1000) * x0 + a / 1000 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    x_b = sampler.renoise(x_a, a, b, torch.Generator().manual_seed(2))
    assert float(x_b.mean()) == pytest.approx((1 - b / 1000) * 0.5, abs=0.01)
    assert float(x_b.std()) == pytest.approx(b / 1000, rel=0.01)


def test_inversion_then_sampling_reconstructs_the_latent(pipe, clip):
    """Invert the clip's latent with the source prompt, sample it back with the same prompt and no
    classifier-free guidance: at 50 steps the first-order ODE error is well below the latent's scale,
    and it shrinks with the step count."""
    config = pipe.default_config().replace(inversion_cache=False)
    frames, _ = pipe.prepare_video(clip, config)
    source = pipe.encode_prompt("a white square")
    clean = pipe.encode_video(frames)
    errors = {}
    for steps in (25, 50):
        timesteps = pipe.sampling_timesteps(steps)
        inverted, _ = pipe.invert(frames, source, config.replace(num_inference_steps=steps, inversion_steps=steps),
                                  [timesteps[0]])
        latents = inverted[timesteps[0]]
        for t in timesteps:
            latents = pipe.denoise_step(latents, t, torch.cat([source, source]), 1.0)
        errors[steps] = float((latents - clean).pow(2).mean().sqrt())
    scale = float(clean.pow(2).mean().sqrt())
    assert errors[50] < 0.15 * scale, (errors, scale)  # measured 4.8 %
    assert errors[50] < 0.6 * errors[25]


# ------------------------------------------------------------------------------------ features
def test_block_tokens_become_latent_frames_on_the_patch_grid(pipe):
    config = pipe.default_config()
    assert pipe.backbone.feature_frames(pipe, config) == (config.num_frames - 1) // 4 + 1 == 5
    to_frames = pipe.backbone.feature_reshaper(pipe, config)
    grid = torch.randn(1, 7, 5, 4, 4)  # (B, D, F', H, W) as the patch embedding lays it out
    tokens = grid.flatten(2).transpose(1, 2)  # what Wan's forward feeds its blocks
    torch.testing.assert_close(to_frames(tokens, 5), grid.permute(0, 2, 1, 3, 4))
    with pipe.feature_recorder(config) as recorder:
        latents = torch.randn(pipe.backbone.latent_shape(pipe, config))
        features = recorder.run(pipe.model_prediction, latents, 500.0, pipe.encode_prompt("x"))
    assert config.feature_layers == ("blocks.2",)  # the middle of the tiny model's 4 blocks
    assert features["blocks.2"].shape == (1, 5, pipe.transformer.config.num_attention_heads * 8, 4, 4)


def test_the_forward_stops_after_the_recorded_block(pipe):
    config = pipe.default_config()
    ran = []
    hooks = [block.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, block in enumerate(pipe.transformer.blocks)]
    try:
        with pipe.feature_recorder(config) as recorder:
            recorder.run(pipe.model_prediction, torch.randn(pipe.backbone.latent_shape(pipe, config)), 500.0, pipe.encode_prompt("x"))
    finally:
        for hook in hooks:
            hook.remove()
    assert ran == [0, 1, 2]


def test_block_checkpointing_keeps_the_guidance_gradient(pipe):
    config = pipe.default_config()
    assert checkpoint_units(pipe.transformer, "blocks", config.feature_layers) == ["blocks.0", "blocks.1", "blocks.3"]
    assert "blocks.0.attn1" in checkpoint_units(pipe.transformer, "layers", config.feature_layers)
    timesteps = pipe.sampling_timesteps(config.num_inference_steps)
    latents = torch.randn(pipe.backbone.latent_shape(pipe, config), generator=torch.Generator().manual_seed(0))
    target = pipe.encode_prompt("a dog")
    gradients = {}
    for choice in ("off", "blocks", "layers"):
        run = config.replace(activation_checkpointing=choice)
        recorder = pipe.feature_recorder(run)
        with recorder, torch.no_grad():
            reference = recorder.run(pipe.model_prediction, latents * 0.9, timesteps[0], pipe.encode_prompt(""))
        optimized = latents.clone().requires_grad_(True)
        with recorder, pipe.guidance_backward(run), torch.enable_grad():
            pipe.guidance_objective(optimized, timesteps[0], target, reference, recorder, run)["total"].backward()
        gradients[choice] = optimized.grad
    assert float(gradients["off"].abs().max()) > 0
    torch.testing.assert_close(gradients["blocks"], gradients["off"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gradients["layers"], gradients["off"], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------ end to end
def test_cli_runs_end_to_end_with_the_asked_frame_count(clip, tmp_path):
    out = tmp_path / "wan.mp4"
    args = [str(clip), "--prompt", "a dog running", "--model", "tiny-random-wan", "-o", str(out), "--frames", "9",
            "--side-by-side", "--cache-dir", str(tmp_path / "cache"), "--feature-layers", "blocks.0, blocks.2", "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    frames, _ = read_frames(out)
    assert frames.shape == (9, 64, 64, 3)
    assert read_frames(tmp_path / "wan.side_by_side.mp4")[0].shape == (9, 64, 128, 3)
    record = json.loads((tmp_path / "wan.json").read_text())
    assert record["config"]["num_frames"] == 9 and record["config"]["feature_layers"] == ["blocks.0", "blocks.2"]
    assert len(record["loss_history"]) == round(0.4 * 50)
    # The second run reads the cached inversion (float timesteps survive the file) and gives the same video.
    again = tmp_path / "again.mp4"
    result = CliRunner().invoke(main, [*args[:5], "-o", str(again), *args[7:]])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "again.json").read_text())["timings"]["inversion_cached"] == 1.0
    np.testing.assert_array_equal(read_frames(again)[0], frames)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--frames", "16"], r"4k \+ 1 frames.*--frames 13 or 17"),
        (["--frames", "5"], "at least 9 frames"),
        (["--height", "72"], "multiple of 16"),
        (["--mode", "fine-tune", "--trainable-modules", "vmc+transformer_in"], "the Zeroscope family's; use vmc"),
        (["--mode", "fine-tune", "--trainable-modules", "no_such_layer"], "no linear layer of this Wan transformer"),
        (["--attention", "classic"], "use --attention sdpa"),
        (["--levels", "3"], "too deep for Wan's 5 latent frames"),
        (["--inversion-steps", "30"], "multiple of num_inference_steps"),
        (["--feature-layers", "blocks.9"], "not in this 4-block Wan transformer; pass --feature-layers blocks.2"),
    ],
)
def test_bad_settings_are_one_error_line(clip, tmp_path, extra, expected):
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(main, [str(clip), "--prompt", "x", "--model", "tiny-random-wan", "-o", str(out), "-q", *extra])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert __import__("re").search(expected, lines[0]), lines[0]
    assert not out.exists()


# ------------------------------------------------------------------------------------ Hub layout
def _save_hub_layout(folder):
    """A tiny Wan saved as Wan-AI/Wan2.1-T2V-1.3B-Diffusers lays its repository out: WanPipeline's
    model_index.json, a UniPC scheduler on flow sigmas (shift 3), a T5 fast tokenizer, UMT5."""
    parts = build_tiny_wan()
    for name in ("transformer", "vae", "text_encoder", "tokenizer"):
        parts[name].save_pretrained(folder / name)
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                            num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline",
        "_diffusers_version": "0.33.0.dev0",
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }))


def test_loads_the_hub_layout_without_code_changes(pipe, clip, tmp_path):
    folder = tmp_path / "Wan2.1-T2V-tiny-Diffusers"
    _save_hub_layout(folder)
    assert model_family(str(folder)) == "wan"
    loaded = quiet_pipeline(str(folder), dtype="bfloat16")
    assert loaded.backbone.name == "wan" and loaded.unet is None
    assert type(loaded.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and loaded.scheduler.config.shift == 3.0
    assert loaded.transformer.dtype == torch.bfloat16 and loaded.vae.dtype == torch.float32  # Wan's VAE stays fp32
    loaded = quiet_pipeline(str(folder), dtype="float32")
    settings = dict(num_inference_steps=4, inversion_steps=4, optimization_steps=2, inversion_cache=False, seed=3,
                    num_frames=9, height=64, width=64)
    ours = loaded(clip, "a dog", **settings)  # the default layer is the folder's middle block, not the 1.3B's blocks.15
    assert ours.config["feature_layers"] == ["blocks.2"]
    built = pipe(clip, "a dog", feature_layers=("blocks.2",), **settings).frames  # the same weights built in code
    np.testing.assert_allclose(ours.frames, built, atol=1e-5)


def test_the_real_architecture_is_wan_2_1_1_3b():
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        transformer = WanTransformer3DModel(**WAN_TRANSFORMER_CONFIG)
    parameters = sum(p.numel() for p in transformer.parameters())
    assert 1.3e9 < parameters < 1.5e9
    assert len(transformer.blocks) == 30 and WanBackbone().default_feature_layers(transformer) == ("blocks.15",)
    tokenizer = build_tiny_t5_tokenizer()
    assert tokenizer("a dog").input_ids[-1] == tokenizer.eos_token_id and tokenizer.model_max_length == 512


def test_memory_estimate_fits_a_24_gb_card_at_49_frames():
    from pipelines.motion_transfer.memory_estimate import estimate_memory
    from sma_guidance.config import SMAConfig

    config = SMAConfig.for_model("wan2.1-1.3b-arch", family="wan", num_frames=49).validate()
    record = estimate_memory("wan2.1-1.3b-arch", config, torch.bfloat16, checkpointing=("blocks",))
    assert (config.height, config.width) == (480, 832) and record["text_encoder_offloaded"]
    assert record["weights_bytes"]["transformer"] == pytest.approx(1.42e9 * 2, rel=0.03)
    peak = record["checkpointing"]["blocks"]["peak_bytes"]
    assert peak <= 24 * 2**30
    # UMT5-XXL (10.6 GiB in bfloat16) is on the GPU only while the prompts are encoded
    weights = record["weights_bytes"]
    assert weights["text_encoder"] == pytest.approx(5.68e9 * 2, rel=0.03)
    assert record["loop_weights_bytes"] == weights["transformer"] + weights["vae"]


def test_auto_dtype_on_a_gpu_is_bfloat16_for_wan(monkeypatch):
    from pipelines.motion_transfer import pipeline_sma as sma_pipeline

    seen = {}

    def record_dtype(cls, model, torch_dtype, motion_adapter):  # the loader, stopped before any GPU is needed
        seen[model] = torch_dtype
        raise RuntimeError("stop")

    monkeypatch.setattr(sma_pipeline, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(sma_pipeline, "load_pipeline", record_dtype)
    for model in ("tiny-random-wan", "tiny-random"):
        with pytest.raises(RuntimeError, match="stop"):
            SMAMotionTransferPipeline.load(model, dtype="auto")
    assert seen == {"tiny-random-wan": torch.bfloat16, "tiny-random": torch.float16}


def test_on_a_gpu_the_text_encoder_moves_on_once_per_encoding_block(pipe, monkeypatch):
    """UMT5-XXL sits on the CPU except while prompts are encoded (nested blocks move it once)."""
    moves = []
    monkeypatch.setattr(type(pipe), "device", property(lambda self: torch.device("cuda")))
    monkeypatch.setattr(pipe.text_encoder, "to", lambda *args, **kwargs: moves.append(str(args[0])))
    with pipe.text_encoder_on_device():
        with pipe.text_encoder_on_device():
            assert moves == ["cuda"]
    assert moves == ["cuda", "cpu"]
    monkeypatch.setattr(type(pipe), "device", property(lambda self: torch.device("cpu")))
    with pipe.text_encoder_on_device():
        pass
    assert moves == ["cuda", "cpu"]  # on a CPU nothing moves


def test_flow_sampler_refuses_eta():
    sampler = FlowMatchSampler(build_tiny_wan()["scheduler"])
    sampler.check_eta(0.0)
    with pytest.raises(UserError, match="needs a DDIM model") as err:
        sampler.check_eta(0.5)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------ fine-tune (LoRA)
def test_the_lora_fine_tune_leaves_the_transformer_as_it_was_and_its_adapter_changes_the_prediction(pipe, clip):
    before = {name: tensor.clone() for name, tensor in pipe.transformer.state_dict().items()}
    adapter = pipe.train_motion(clip, "a red circle", train_steps=2, num_frames=9, height=64, width=64)
    after = pipe.transformer.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[name], before[name]) for name in before)
    assert adapter.is_lora and adapter.family == "wan" and len(adapter.loss_history) == 2
    # VMC's recipe on a DiT: q / k / v of the self-attention, from the recorded block (blocks.2 of 4) on.
    assert adapter.settings["target_modules"] == [f"blocks.{b}.attn1.to_{x}" for b in (2, 3) for x in "qkv"]
    assert set(adapter.tensors) == {f"blocks.{b}.attn1.to_{x}.lora_{ab}.weight" for b in (2, 3) for x in "qkv" for ab in "AB"}
    shape = pipe.backbone.latent_shape(pipe, pipe.default_config().replace(num_frames=9, height=64, width=64))
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    embedding = pipe.encode_prompt("a dog")
    with torch.no_grad():
        base = pipe.model_prediction(latents, 500.0, embedding)
        with applied_adapter(pipe.transformer, adapter, pipe.model_name, "wan"):
            adapted = pipe.model_prediction(latents, 500.0, embedding)
        assert float((adapted - base).abs().max()) > 0
        torch.testing.assert_close(pipe.model_prediction(latents, 500.0, embedding), base, rtol=0, atol=0)


def test_a_wan_lora_is_refused_on_another_family_in_one_line(pipe, clip, tmp_path):
    adapter = pipe.train_motion(clip, "a red circle", train_steps=1, num_frames=9, height=64, width=64)
    path = adapter.save(tmp_path / "wan.safetensors")
    video = tmp_path / "clip.mp4"
    write_moving_square(video, num_frames=6)
    result = CliRunner().invoke(main, [str(video), "--prompt", "x", "--model", "tiny-random", "--adapter", str(path),
                                       "-o", str(tmp_path / "out.mp4"), "-q"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "wan-family" in lines[0], result.output


@pytest.mark.parametrize("layout", ["built-in", "saved by WanPipeline"])
def test_cli_fine_tunes_saves_and_reuses_a_lora(clip, tmp_path, layout):
    model = "tiny-random-wan" if layout == "built-in" else str(save_wan(tmp_path / "wan-folder", num_layers=2))
    adapter = tmp_path / "motion.safetensors"
    common = [str(clip), "--prompt", "a dog running", "--model", model, "--frames", "9", "--height", "64", "--width", "64", "--steps", "4",
              "--inversion-steps", "4", "--cache-dir", str(tmp_path / "cache"), "-q"]
    result = CliRunner().invoke(main, [*common, "-o", str(tmp_path / "tuned.mp4"), "--mode", "fine-tune",
                                       "--train-steps", "2", "--lora-rank", "4", "--save-adapter", str(adapter)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "tuned.json").read_text())
    assert len(record["train_loss_history"]) == 2 and record["loss_history"] == []  # fine-tune: no guidance
    tensors = load_file(str(adapter))
    assert tensors and all(".lora_A." in name or ".lora_B." in name for name in tensors)  # the LoRA alone
    assert all(tensor.shape[0] == 4 for name, tensor in tensors.items() if ".lora_A." in name)  # --lora-rank
    result = CliRunner().invoke(main, [*common, "-o", str(tmp_path / "both.mp4"), "--mode", "both", "--adapter",
                                       str(adapter), "--optimization-steps", "1"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "both.json").read_text())
    assert record["adapter"] == str(adapter) and record["train_loss_history"] == [] and len(record["loss_history"]) > 0
    assert read_frames(tmp_path / "both.mp4")[0].shape == (9, 64, 64, 3)
