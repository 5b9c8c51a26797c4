"""The AnimateDiff family through the backbone seam: the tiny random UNetMotionModel end to end (Python,
CLI, batch, fine-tune, bench), loading an SD 1.5-style base + motion adapter from folders, family
detection and its one-line errors, and the full-size architecture built on the meta device."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel, UNetMotionModel
from diffusers import MotionAdapter as DiffusersMotionAdapter

import pipelines.motion_transfer.pipeline_sma as sma_pipeline_module
from conftest import quiet_pipeline, write_moving_square
from pipelines import SMAMotionTransferPipeline
from pipelines.motion_transfer.backbones import BACKBONES, detect_backbone, model_family
from pipelines.motion_transfer.backbones.animatediff import AnimateDiffBackbone
from pipelines.motion_transfer.backbones.animatediff import (
    MOTION_ADAPTER_CONFIG,
    SD15_UNET_CONFIG,
    build_tiny_animatediff,
    check_adapter_fits,
    motion_unet_config,
)
from pipelines.motion_transfer.finetune import MotionAdapter
from sma_guidance.config import DMT_FEATURE_LAYERS, SMAConfig
from sma_guidance.errors import UserError
from sma_guidance.memory import checkpoint_units
from test_cli import assert_one_line_error, assert_success, invoke, load_record

TINY = "tiny-random-animatediff"
# DMT's decoder block 1 on an AnimateDiff UNet (SD 1.5's layout, as the tiny model's): the middle resnet,
# the motion module after it, the upsampler.
ANIMATEDIFF_FEATURE_LAYERS = ("up_blocks.1.resnets.1.conv2", "up_blocks.1.motion_modules.1", "up_blocks.1.upsamplers.0")
FAST = dict(num_frames=4, num_inference_steps=4, inversion_steps=4, optimization_steps=1, restart_sampling=False)
FAST_ARGS = ["--model", TINY, "--steps", "4", "--inversion-steps", "4", "--optimization-steps", "1", "--frames", "4",
             "--no-restart", "-q"]


@pytest.fixture(scope="module")
def pipe():
    return quiet_pipeline(TINY)


@pytest.fixture()
def clip():
    """A white square moving right on black, (F, H, W, 3) uint8."""
    video = np.zeros((6, 64, 64, 3), np.uint8)
    for frame in range(6):
        video[frame, 24:40, 4 + 8 * frame : 20 + 8 * frame] = 255
    return video


# ------------------------------------------------------------------------------------------ the family
def test_tiny_model_is_an_animatediff_with_the_default_layers(pipe):
    assert isinstance(pipe.unet, UNetMotionModel)
    assert pipe.backbone.name == "animatediff"
    config = pipe.default_config()
    assert config.feature_layers == ANIMATEDIFF_FEATURE_LAYERS
    assert pipe.backbone.trainable_pattern(config.trainable_modules) == r"motion_modules\..*\.to_[qkv]$"
    assert (config.num_frames, config.height, config.width) == (8, 64, 64)  # the tiny preset over 16 x 512 x 512
    modules = dict(pipe.unet.named_modules())
    assert all(name in modules for name in config.feature_layers)
    assert SMAConfig.for_model("some/sd15-model", family="animatediff").num_frames == 16


def test_recorded_features_are_frames_of_one_video(pipe, clip):
    config = pipe.default_config().replace(**FAST).validate()
    frames, _ = pipe.prepare_video(clip, config)
    latents = pipe.encode_video(frames)
    assert latents.shape == (1, 4, 4, 8, 8)
    with pipe.feature_recorder(config) as recorder, torch.no_grad():
        features = recorder.run(pipe.model_prediction, latents, 901, pipe.encode_prompt(""))
        # the same clip twice in one batch: each video's features are its own frames, in order
        doubled = recorder.run(pipe.model_prediction, torch.cat([latents, latents]), 901, pipe.encode_prompt("").repeat(2, 1, 1))
    for name, feature in features.items():
        assert feature.ndim == 5 and feature.shape[:2] == (1, 4), name
        torch.testing.assert_close(doubled[name][1:], feature, rtol=1e-4, atol=1e-5)
    # the motion module mixes frames: changing the last frame changes the first frame's motion feature
    changed = latents.clone()
    changed[:, :, -1] += 1.0
    with pipe.feature_recorder(config) as recorder, torch.no_grad():
        other = recorder.run(pipe.model_prediction, changed, 901, pipe.encode_prompt(""))
    motion = "up_blocks.1.motion_modules.1"
    assert not torch.allclose(other[motion][:, 0], features[motion][:, 0])


def test_the_text_embedding_reaches_every_frame(pipe):
    seen = []
    attention = pipe.unet.up_blocks[1].attentions[0]
    handle = attention.register_forward_pre_hook(lambda m, a, k: seen.append(k["encoder_hidden_states"].shape), with_kwargs=True)
    try:
        with torch.no_grad():
            pipe.model_prediction(torch.zeros(2, 4, 3, 8, 8), 1, torch.zeros(2, 77, 32))
    finally:
        handle.remove()
    assert seen == [torch.Size([6, 77, 32])]


def test_end_to_end_python_call_is_deterministic(pipe, clip):
    out = pipe(clip, "a red square", **FAST)
    assert out.frames.shape == (1, 4, 64, 64, 3) and np.isfinite(out.frames).all()
    assert len(out.loss_history) == 2
    assert all(np.isfinite(it["total"]) for step in out.loss_history for it in step["iterations"])
    again = pipe(clip, "a red square", **FAST)
    np.testing.assert_array_equal(out.frames, again.frames)
    assert again.timings["inversion_cached"] == 1


def test_the_inversion_cache_key_names_family_and_adapter(pipe, clip, monkeypatch):
    seen = {}
    original = sma_pipeline_module.inversion_cache_key

    def spy(video, fingerprint, **settings):
        seen.update(settings)
        return original(video, fingerprint, **settings)

    monkeypatch.setattr(sma_pipeline_module, "inversion_cache_key", spy)
    pipe(clip, "a red square", **FAST)
    assert seen["family"] == "animatediff" and "motion_adapter" in seen


def test_too_many_frames_for_the_motion_modules_is_a_user_error(pipe, clip):
    # More frames than the window are sampled in windows; a window past the positional embedding is refused.
    with pytest.raises(UserError, match="--window 32 or fewer"):
        pipe(clip, "x", **{**FAST, "num_frames": 33, "window": 33})


@pytest.mark.parametrize("granularity", ["blocks", "layers"])
def test_checkpointing_keeps_the_guidance_gradient(pipe, clip, granularity):
    config = pipe.default_config().replace(**FAST).validate()
    units = checkpoint_units(pipe.unet, granularity, config.feature_layers)
    if granularity == "layers":
        assert "down_blocks.0.motion_modules.0" in units
    frames, _ = pipe.prepare_video(clip, config)
    latents = pipe.encode_video(frames)
    target = pipe.encode_prompt("a red square")
    with pipe.feature_recorder(config) as recorder:
        with torch.no_grad():
            reference = recorder.run(pipe.model_prediction, latents, 901, pipe.encode_prompt(""))
        grads = {}
        for choice in ("off", granularity):
            x = (latents + 0.3).requires_grad_(True)
            with pipe.guidance_backward(config.replace(activation_checkpointing=choice)), torch.enable_grad():
                pipe.guidance_objective(x, 901, target, reference, recorder, config)["total"].backward()
            grads[choice] = x.grad
    assert grads["off"].abs().sum() > 0
    torch.testing.assert_close(grads[granularity], grads["off"], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------ fine-tune
def test_fine_tune_trains_the_motion_modules_attention_and_records_the_family(pipe, clip):
    before = {name: p.detach().clone() for name, p in pipe.unet.named_parameters()}
    adapter = pipe.train_motion(clip, train_steps=2, **{k: v for k, v in FAST.items() if k != "optimization_steps"})
    assert adapter.family == "animatediff"
    assert adapter.tensors and all(".motion_modules." in n and n.split(".")[-2] in ("to_q", "to_k", "to_v")
                                   for n in adapter.tensors)
    assert any(not torch.equal(adapter.tensors[n], before[n]) for n in adapter.tensors)
    assert all(torch.equal(p, before[n]) for n, p in pipe.unet.named_parameters())  # weights restored
    out = pipe(clip, "a red square", adapter=adapter, mode="both", **FAST)
    assert np.isfinite(out.frames).all()


def test_an_adapter_of_another_family_is_refused(pipe, clip, tmp_path):
    zeroscope = quiet_pipeline("tiny-random")
    adapter = zeroscope.train_motion(clip, train_steps=1, num_frames=4)
    path = adapter.save(tmp_path / "zeroscope.safetensors")
    assert MotionAdapter.load(path).family == "zeroscope"
    with pytest.raises(UserError, match="zeroscope-family"):
        pipe(clip, "x", adapter=str(path), **FAST)


# ------------------------------------------------------------------------------------------ loading
@pytest.fixture(scope="module")
def sd_folders(tmp_path_factory):
    """A tiny SD 1.5-style image model folder (StableDiffusionPipeline) and a matching MotionAdapter folder,
    made of the tiny AnimateDiff's own parts."""
    root = tmp_path_factory.mktemp("sd")
    parts = build_tiny_animatediff()
    unet2d = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32, 32), layers_per_block=1, cross_attention_dim=32, attention_head_dim=4,
        norm_num_groups=8,
    )
    image = StableDiffusionPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], unet=unet2d,
        scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    image.save_pretrained(root / "base")
    adapter = DiffusersMotionAdapter(block_out_channels=(16, 32, 32), motion_layers_per_block=1,
                                     motion_num_attention_heads=2, motion_norm_num_groups=8, use_motion_mid_block=False)
    adapter.save_pretrained(root / "adapter")
    other = DiffusersMotionAdapter(block_out_channels=(16, 32, 64), motion_layers_per_block=1,
                                   motion_num_attention_heads=2, motion_norm_num_groups=8, use_motion_mid_block=False)
    other.save_pretrained(root / "other_adapter")
    return {"root": root, "base": root / "base", "adapter": root / "adapter", "other": root / "other_adapter",
            "motion": adapter}


def test_base_and_motion_adapter_load_as_animatediff(sd_folders):
    pipe = SMAMotionTransferPipeline.load(str(sd_folders["base"]), device="cpu", motion_adapter=str(sd_folders["adapter"]))
    assert isinstance(pipe.unet, UNetMotionModel) and pipe.backbone.name == "animatediff"
    assert pipe.motion_adapter_name == str(sd_folders["adapter"])
    assert isinstance(pipe.scheduler, DDIMScheduler)
    expected = sd_folders["motion"].down_blocks[0].motion_modules[0].proj_in.weight
    torch.testing.assert_close(pipe.unet.down_blocks[0].motion_modules[0].proj_in.weight, expected)
    assert model_family(str(sd_folders["base"]), str(sd_folders["adapter"])) == "animatediff"
    assert pipe.default_config().motion_adapter == str(sd_folders["adapter"])


def test_a_saved_animatediff_folder_loads_alone(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "ad")
    index = json.loads((tmp_path / "ad" / "model_index.json").read_text())
    # as diffusers' AnimateDiffPipeline saves it: its motion adapter beside the UNetMotionModel, optional parts unset
    index.update(_class_name="AnimateDiffPipeline", motion_adapter=["diffusers", "MotionAdapter"],
                 feature_extractor=[None, None], image_encoder=[None, None])
    DiffusersMotionAdapter(block_out_channels=(16, 32, 32), motion_layers_per_block=1, motion_num_attention_heads=2,
                           motion_norm_num_groups=8, use_motion_mid_block=False).save_pretrained(tmp_path / "ad" / "motion_adapter")
    (tmp_path / "ad" / "model_index.json").write_text(json.dumps(index))
    loaded = SMAMotionTransferPipeline.load(str(tmp_path / "ad"), device="cpu")
    assert loaded.backbone.name == "animatediff"
    for name, tensor in pipe.unet.state_dict().items():
        torch.testing.assert_close(loaded.unet.state_dict()[name], tensor)
    assert model_family(str(tmp_path / "ad")) == "animatediff"


def _index(unet: str, class_name: str = "X") -> dict:
    return {"_class_name": class_name, "unet": ["diffusers", unet]}


def test_detection_reads_the_model_index_not_the_name():
    assert detect_backbone(_index("UNet3DConditionModel", "TextToVideoSDPipeline"), "animatediff-lookalike").name == "zeroscope"
    assert detect_backbone(_index("UNetMotionModel", "AnimateDiffPipeline"), "zeroscope-lookalike").name == "animatediff"
    assert detect_backbone(_index("UNet2DConditionModel"), "m", motion_adapter="a").name == "animatediff"
    with pytest.raises(UserError, match="--motion-adapter"):
        detect_backbone(_index("UNet2DConditionModel", "StableDiffusionPipeline"), "sd")
    wan = {"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"]}
    assert detect_backbone(wan, "zeroscope-lookalike").name == "wan"
    with pytest.raises(UserError, match="unknown model family.*CogVideoXTransformer3DModel.*supported: zeroscope"):
        detect_backbone({"_class_name": "CogVideoXPipeline", "transformer": ["diffusers", "CogVideoXTransformer3DModel"]}, "cog")
    with pytest.raises(UserError, match="zeroscope-family"):
        detect_backbone(_index("UNet3DConditionModel"), "z", motion_adapter="a")


def test_adapter_fit_checks():
    sd15 = dict(SD15_UNET_CONFIG)
    check_adapter_fits(sd15, MOTION_ADAPTER_CONFIG, "sd15", "v3")
    with pytest.raises(UserError, match="SD 2.x"):
        check_adapter_fits({**sd15, "cross_attention_dim": 1024}, MOTION_ADAPTER_CONFIG, "sd21", "v3")
    with pytest.raises(UserError, match="SDXL"):
        check_adapter_fits({**sd15, "addition_embed_type": "text_time"}, MOTION_ADAPTER_CONFIG, "sdxl", "v3")
    with pytest.raises(UserError, match="channels"):
        check_adapter_fits(sd15, {**MOTION_ADAPTER_CONFIG, "block_out_channels": (320, 640, 1280)}, "sd15", "xl")


def _error_line(args) -> str:
    result = invoke(args)
    return assert_one_line_error(result.exit_code, result.output, "")


def test_bad_models_and_adapters_are_one_error_line(sd_folders, tmp_path):
    video = write_moving_square(tmp_path / "clip.mp4")
    base, adapter, other = (str(sd_folders[k]) for k in ("base", "adapter", "other"))
    run = [video, "--prompt", "x", "-o", tmp_path / "out.mp4", "--steps", "4", "--inversion-steps", "4", "--frames", "4", "-q"]
    line = _error_line([*run, "--model", "tiny-random", "--motion-adapter", adapter])
    assert "zeroscope-family" in line and "--motion-adapter" in line
    line = _error_line([*run, "--model", base])
    assert "image model" in line and "UNet2DConditionModel" in line
    line = _error_line([*run, "--model", base, "--motion-adapter", other])
    assert "channels" in line
    adapter_file = tmp_path / "motion.safetensors"
    adapter_file.write_bytes(b"x")
    assert "is a file" in _error_line([*run, "--model", base, "--motion-adapter", adapter_file])
    assert "whole pipeline" in _error_line([*run, "--model", base, "--motion-adapter", base])
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "model_index.json").write_text(json.dumps({"_class_name": "CogVideoXPipeline",
                                                          "transformer": ["diffusers", "CogVideoXTransformer3DModel"]}))
    line = _error_line([*run, "--model", unknown])
    assert "unknown model family" in line and "CogVideoXPipeline" in line and "supported" in line
    assert not (tmp_path / "out.mp4").exists()


# ------------------------------------------------------------------------------------------ CLI
def test_cli_run_with_fine_tune_and_side_by_side(tmp_path, monkeypatch):
    monkeypatch.setenv("SMA_GUIDE_CACHE", str(tmp_path / "cache"))
    video = write_moving_square(tmp_path / "clip.mp4")
    out = tmp_path / "out.mp4"
    result = invoke([video, "--prompt", "a red square", "-o", out, *FAST_ARGS, "--mode", "both", "--train-steps", "2",
                     "--side-by-side", "--save-adapter", tmp_path / "a.safetensors"])
    assert_success(result)
    record = load_record(out.with_suffix(".json"))
    assert record["family"] == "animatediff"
    assert record["config"]["feature_layers"] == list(ANIMATEDIFF_FEATURE_LAYERS)
    assert record["config"]["model"] == TINY and len(record["train_loss_history"]) == 2
    assert (tmp_path / "out.side_by_side.mp4").is_file()
    assert MotionAdapter.load(tmp_path / "a.safetensors").family == "animatediff"


def test_cli_base_plus_adapter_folders(sd_folders, tmp_path, monkeypatch):
    monkeypatch.setenv("SMA_GUIDE_CACHE", str(tmp_path / "cache"))
    video = write_moving_square(tmp_path / "clip.mp4")
    out = tmp_path / "out.mp4"
    args = [video, "--prompt", "a red square", "-o", out, "--model", sd_folders["base"], "--motion-adapter",
            sd_folders["adapter"], "--steps", "4", "--inversion-steps", "4", "--optimization-steps", "1", "--frames", "4",
            "--height", "64", "--width", "64", "--no-restart", "-q"]
    assert_success(invoke(args))
    record = load_record(out.with_suffix(".json"))
    assert record["family"] == "animatediff" and record["config"]["motion_adapter"] == str(sd_folders["adapter"])
    assert record["config"]["feature_layers"] == list(ANIMATEDIFF_FEATURE_LAYERS)


def test_batch_runs_an_animatediff_job(tmp_path, monkeypatch):
    monkeypatch.setenv("SMA_GUIDE_CACHE", str(tmp_path / "cache"))
    write_moving_square(tmp_path / "clip.mp4")
    job = {"input": "clip.mp4", "prompt": "a red square", "output": "out.mp4", "model": TINY, "frames": 4, "steps": 4,
           "inversion-steps": 4, "optimization-steps": 1, "restart": False}
    (tmp_path / "jobs.jsonl").write_text(json.dumps(job) + "\n")
    first = invoke(["batch", tmp_path / "jobs.jsonl", "--device", "cpu", "-q"])
    assert_success(first)
    assert "1 done" in first.output and (tmp_path / "out.mp4").is_file()
    again = invoke(["batch", tmp_path / "jobs.jsonl", "--device", "cpu", "-q"])
    assert "1 already finished" in again.output  # the family's preset is the same before and after loading


def test_bench_speed_and_memory_on_the_tiny_model(tmp_path):
    speed = invoke(["bench", "speed", "--model", TINY, "--frames", "4", "--steps", "4", "--inversion-steps", "4",
                    "--optimization-steps", "1", "--no-whole-run", "--warmup", "0", "--repeats", "1", "-q",
                    "--output", tmp_path / "speed.json"])
    assert_success(speed)
    assert "guidance iteration" in speed.output
    memory = invoke(["bench", "memory", "--model", TINY, "--frames", "4", "--dtype", "float32",
                     "--output", tmp_path / "memory.json"])
    assert_success(memory)
    record = json.loads((tmp_path / "memory.json").read_text())
    assert record["family"] == "animatediff" and record["feature_layers"] == list(ANIMATEDIFF_FEATURE_LAYERS)


def test_fake_estimate_matches_real_tensors_on_the_tiny_model(pipe):
    from pipelines.motion_transfer.memory_estimate import estimate_memory, stage_memory

    config = pipe.default_config().replace(**FAST, activation_checkpointing="off").validate()
    pipe.scheduler.set_timesteps(config.num_inference_steps)
    real = stage_memory(pipe, config, int(pipe.scheduler.timesteps[0]))
    fake = estimate_memory(TINY, config, torch.float32, checkpointing=("off",))["checkpointing"]["off"]["stages"]
    for stage, value in real.items():
        assert fake[stage] == pytest.approx(value, rel=0.02), stage


# ------------------------------------------------------------------------------------------ full size
def test_animatediff_arch_is_sd15_plus_the_v3_adapter_built_on_meta():
    config = motion_unet_config(SD15_UNET_CONFIG, MOTION_ADAPTER_CONFIG)
    with torch.device("meta"):
        unet = UNetMotionModel.from_config(config)
    modules = dict(unet.named_modules())
    assert AnimateDiffBackbone().default_feature_layers(unet) == ANIMATEDIFF_FEATURE_LAYERS
    assert modules["up_blocks.1.resnets.1.conv2"].out_channels == 1280
    assert config["cross_attention_dim"] == 768 and config["use_motion_mid_block"] is False
    parameters = sum(p.numel() for p in unet.parameters())
    assert 1.2e9 < parameters < 1.5e9  # SD 1.5's 860 M + v3's motion modules (≈ 420 M)
    assert DMT_FEATURE_LAYERS[1] == "up_blocks.1.temp_convs.1" and DMT_FEATURE_LAYERS[1] not in modules  # Zeroscope's
    assert set(BACKBONES) == {"zeroscope", "animatediff", "wan"}
    with torch.device("meta"):  # the builder behind --model animatediff-arch, without the 5 GB of weights
        from pipelines.motion_transfer.backbones.animatediff import build_animatediff_arch

        parts = build_animatediff_arch()
    assert dict(parts["unet"].config)["block_out_channels"] == (320, 640, 1280, 1280)
    assert parts["text_encoder"].config.hidden_size == 768 and parts["vae"].config.sample_size == 512
