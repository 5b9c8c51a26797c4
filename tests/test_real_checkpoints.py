"""What a user with a Hub checkpoint meets: default layers read off the architecture (any size, every
family), folders saved by diffusers' own pipelines run from the CLI, the registered scheduler is the one
that samples, torch dtypes as diffusers users write them, advice on an empty source prompt, and a run
record that says which sampler ran."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler, UNet3DConditionModel, UNetMotionModel, WanTransformer3DModel

import pipelines.motion_transfer.pipeline_sma as sma_pipeline_module
from conftest import FAST_ARGS, moving_square_frames, quiet_pipeline, write_moving_square
from diffusers_layouts import save_animatediff, save_sd15_base_and_adapter, save_text_to_video_sd, save_wan
from pipelines import SMAMotionTransferPipeline
from pipelines.motion_transfer.backbones.animatediff import MOTION_ADAPTER_CONFIG, SD15_UNET_CONFIG, AnimateDiffBackbone, motion_unet_config
from pipelines.motion_transfer.backbones.wan import WAN_TRANSFORMER_CONFIG, WanBackbone
from pipelines.motion_transfer.backbones.zeroscope import ZeroscopeBackbone
from pipelines.motion_transfer.backbones.zeroscope import ZEROSCOPE_UNET_CONFIG
from pipelines.motion_transfer.loading import resolve_dtype
from sma_guidance.config import DMT_FEATURE_LAYERS, SMAConfig
from sma_guidance.errors import UserAdvice, UserError
from test_cli import assert_success, invoke, load_record

# Wan 2.1 T2V 14B's transformer (transformer/config.json of Wan-AI/Wan2.1-T2V-14B-Diffusers): 40 blocks.
WAN_14B_TRANSFORMER_CONFIG = {**WAN_TRANSFORMER_CONFIG, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}
FAST = ["--steps", "4", "--inversion-steps", "4", "--optimization-steps", "1", "--no-restart", "-q"]


# ------------------------------------------------------------------------------------ default layers
def test_zeroscopes_unet_gives_dmts_published_layers():
    with torch.device("meta"):
        unet = UNet3DConditionModel(**ZEROSCOPE_UNET_CONFIG)
    assert ZeroscopeBackbone().default_feature_layers(unet) == DMT_FEATURE_LAYERS


def test_the_bundled_shapes_model_keeps_dmts_layers():
    assert quiet_pipeline("shapes").default_config().feature_layers == DMT_FEATURE_LAYERS


def test_animatediff_v3_on_sd15_gives_the_motion_module_in_place_of_the_temporal_convolution():
    with torch.device("meta"):
        unet = UNetMotionModel.from_config(motion_unet_config(SD15_UNET_CONFIG, MOTION_ADAPTER_CONFIG))
    assert AnimateDiffBackbone().default_feature_layers(unet) == (
        "up_blocks.1.resnets.1.conv2", "up_blocks.1.motion_modules.1", "up_blocks.1.upsamplers.0")


@pytest.mark.parametrize("config, expected", [(WAN_TRANSFORMER_CONFIG, "blocks.15"), (WAN_14B_TRANSFORMER_CONFIG, "blocks.20")])
def test_wan_takes_its_middle_block_at_any_depth(config, expected):
    with torch.device("meta"):
        transformer = WanTransformer3DModel(**config)
    assert WanBackbone().default_feature_layers(transformer) == (expected,)


def test_a_unet_without_text_attention_records_the_block_after_the_lowest_resolution():
    with torch.device("meta"):
        unet = UNet3DConditionModel(
            down_block_types=("DownBlock3D",) * 3, up_block_types=("UpBlock3D",) * 3, block_out_channels=(16, 32, 32),
            layers_per_block=1, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
        )
    assert ZeroscopeBackbone().default_feature_layers(unet) == (
        "up_blocks.1.resnets.1.conv2", "up_blocks.1.temp_convs.1", "up_blocks.1.upsamplers.0")


def test_named_layers_stay_as_named(tmp_path):
    pipe = quiet_pipeline("tiny-random")
    config = pipe.with_feature_layers(SMAConfig.for_model("tiny-random", feature_layers=("up_blocks.2.resnets.0",)))
    assert config.feature_layers == ("up_blocks.2.resnets.0",)


# ------------------------------------------------------------------------------------ folders saved by diffusers
@pytest.mark.parametrize(
    "family, save, expected",
    [
        # two levels: the only block with text attention after the lowest resolution is the last, with no upsampler
        ("zeroscope", lambda root: save_text_to_video_sd(root / "m", levels=2),
         ["up_blocks.1.resnets.1.conv2", "up_blocks.1.temp_convs.1"]),
        ("animatediff", lambda root: save_animatediff(root / "m", levels=2),
         ["up_blocks.1.resnets.1.conv2", "up_blocks.1.motion_modules.1"]),
        ("zeroscope", lambda root: save_text_to_video_sd(root / "m", levels=4), list(DMT_FEATURE_LAYERS)),
        ("wan", lambda root: save_wan(root / "m", num_layers=2), ["blocks.1"]),
    ],
    ids=["text-to-video-sd-2-levels", "animatediff-2-levels", "text-to-video-sd-4-levels", "wan-2-blocks"],
)
def test_folders_saved_by_diffusers_run_from_the_cli_with_their_own_layers(tmp_path, family, save, expected):
    folder = save(tmp_path)
    video = write_moving_square(tmp_path / "clip.mp4")
    out = tmp_path / "out.mp4"
    frames = "9" if family == "wan" else "4"
    result = invoke([video, "--prompt", "a red square", "--source-prompt", "a white square", "-o", out, "--model", folder,
                     "--frames", frames, "--height", "64", "--width", "64", *FAST])
    assert_success(result)
    record = load_record(out.with_suffix(".json"))
    assert record["family"] == family and record["config"]["feature_layers"] == expected


# ------------------------------------------------------------------------------------ the registered scheduler samples
def test_an_sd15_base_with_a_motion_adapter_samples_on_animatediffs_schedule(tmp_path):
    base, adapter = save_sd15_base_and_adapter(tmp_path)
    assert json.loads((base / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "PNDMScheduler"
    pipe = quiet_pipeline(str(base), motion_adapter=str(adapter))
    config = pipe.scheduler.config
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert (config.beta_schedule, config.clip_sample, config.steps_offset) == ("linear", False, 1)
    assert pipe.sampler.scheduler is pipe.scheduler  # what is registered is what samples and inverts


def test_a_saved_animatediff_folders_own_ddim_scheduler_is_kept(tmp_path):
    mine = DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, steps_offset=1, timestep_spacing="trailing")
    pipe = quiet_pipeline(str(save_animatediff(tmp_path / "ad", scheduler=mine)))
    assert (pipe.scheduler.config.beta_schedule, pipe.scheduler.config.timestep_spacing) == ("scaled_linear", "trailing")


def test_a_scheduler_that_does_not_mention_clipping_does_not_clip():
    # DDIM's own default clips x̂₀ to [-1, 1]; a PNDM configuration (SD 1.5's) has no such setting.
    made = ZeroscopeBackbone().sampling_scheduler(PNDMScheduler(beta_schedule="scaled_linear", steps_offset=1))
    assert isinstance(made, DDIMScheduler) and made.config.clip_sample is False
    assert made.config.beta_schedule == "scaled_linear" and made.config.steps_offset == 1


# ------------------------------------------------------------------------------------ dtypes
@pytest.mark.parametrize("given", [torch.float16, "float16", "fp16", "torch.float16", "half"])
def test_dtypes_as_diffusers_users_write_them(given):
    assert resolve_dtype(given, torch.device("cpu")) is torch.float16
    pipe = SMAMotionTransferPipeline.load("tiny-random", device="cpu", dtype=given)
    assert pipe.unet.dtype == torch.float16


def test_an_unknown_dtype_is_one_line():
    with pytest.raises(UserError, match="unknown dtype 'float8'; use auto, float32, float16 or bfloat16"):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(UserError, match="not supported"):
        resolve_dtype(torch.int8, torch.device("cpu"))


# ------------------------------------------------------------------------------------ advice and records
def test_an_empty_source_prompt_is_advised_once_per_process(monkeypatch):
    pipe = quiet_pipeline("tiny-random")
    clip = moving_square_frames(6)
    fast = dict(num_frames=4, num_inference_steps=4, inversion_steps=4, optimization_steps=1, restart_sampling=False,
                inversion_cache=False)
    monkeypatch.setattr(sma_pipeline_module, "__warningregistry__", {}, raising=False)  # a fresh "process"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        pipe(clip, "a red square", **fast)
        pipe(clip, "a red square", **fast)
        pipe(clip, "a red square", source_prompt="a white square moving right", **fast)
    advice = [w for w in caught if issubclass(w.category, UserAdvice)]
    assert len(advice) == 1 and "--source-prompt" in str(advice[0].message)


def test_the_cli_prints_the_advice_as_one_warning_line_and_records_the_sampler(tmp_path, run_cli):
    video = write_moving_square(tmp_path / "clip.mp4")
    result = run_cli([video, "--prompt", "a red square", "-o", tmp_path / "out.mp4", *FAST_ARGS])
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: the source prompt is empty") and "Traceback" not in result.stderr
    sampler = load_record(tmp_path / "out.json")["sampler"]
    assert sampler["scheduler"] == "DDIMScheduler" and sampler["sampler"] == "DDIM"
    assert sampler["config"]["beta_schedule"] == "scaled_linear" and sampler["config"]["clip_sample"] is False
    assert sampler["timesteps"] == [751, 501, 251, 1]
    quiet = run_cli([video, "--prompt", "a red square", "--source-prompt", "a white square", "-o", tmp_path / "b.mp4",
                     *FAST_ARGS])
    assert quiet.returncode == 0 and quiet.stderr.strip() == ""


def test_a_flow_models_record_names_its_shift_and_sigmas():
    pipe = quiet_pipeline("tiny-random-wan")
    out = pipe.generate("a dog", num_frames=9, num_inference_steps=3, seed=0)
    assert out.sampler["scheduler"] == "FlowMatchEulerDiscreteScheduler" and out.sampler["shift"] == 3.0
    assert len(out.sampler["sigmas"]) == 4 and out.sampler["sigmas"][-1] == 0.0
