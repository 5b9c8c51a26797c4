"""Memory and speed options: activation checkpointing, attention kernel, VAE batch size and tiling.

Each option must leave the result unchanged (up to float rounding) and must actually take effect.
"""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import FAST_ARGS, moving_square_frames, quiet_pipeline, write_moving_square
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

import cli
from pipelines.motion_transfer.optimization import frozen
from sma_guidance.config import SMAConfig
from sma_guidance.errors import UserError
from sma_guidance.features import FeatureRecorder
from sma_guidance.memory import activation_checkpointing, checkpoint_units

FAST = {"num_frames": 4, "num_inference_steps": 4, "inversion_steps": 4, "optimization_steps": 2, "restart_sampling": False}


@pytest.fixture(scope="module")
def pipe():
    return quiet_pipeline("tiny-random")


@pytest.fixture()
def clip():
    return moving_square_frames(6)


# ------------------------------------------------------------------------------ which modules
def test_checkpoint_units_by_granularity(pipe):
    layers = pipe.default_config().feature_layers  # up_blocks.1.resnets.1.conv2, up_blocks.1.temp_convs.1, up_blocks.1.upsamplers.0
    assert checkpoint_units(pipe.unet, "off", layers) == []
    blocks = checkpoint_units(pipe.unet, "blocks", layers)
    top = [n for n, _ in pipe.unet.named_children() if n in ("down_blocks", "up_blocks")]
    assert top == ["down_blocks", "up_blocks"]
    expected = [f"down_blocks.{i}" for i in range(len(pipe.unet.down_blocks))] + ["mid_block"]
    expected += [f"up_blocks.{i}" for i in range(len(pipe.unet.up_blocks)) if i != 1]  # 1 holds the recorded layers
    assert sorted(blocks) == sorted(expected)

    units = checkpoint_units(pipe.unet, "layers", layers)
    assert "down_blocks.0.resnets.0" in units and "mid_block.attentions.0" in units
    assert "up_blocks.1.resnets.0" in units and "up_blocks.1.temp_attentions.1" in units
    # The recorded layers and the modules holding them keep their activations.
    assert "up_blocks.1.resnets.1" not in units and "up_blocks.1.temp_convs.1" not in units
    assert not any(name.endswith(("conv1", "to_q", "proj_in")) for name in units)  # units, not their insides
    modules = dict(pipe.unet.named_modules())
    assert all(name in modules for name in units)


def test_checkpoint_units_rejects_an_unknown_granularity(pipe):
    with pytest.raises(UserError, match="off, blocks, layers"):
        checkpoint_units(pipe.unet, "everything")


# ------------------------------------------------------------------------------ same gradient, recomputed
def _guidance_gradient(pipe, clip, granularity, counted="down_blocks.0.resnets.0.conv1"):
    """The latent's gradient of one guidance objective, and how often ``counted`` ran in forward + backward."""
    config = pipe.default_config().replace(**FAST).validate()
    frames, _ = pipe.prepare_video(clip, config)
    pipe.scheduler.set_timesteps(config.num_inference_steps)
    t = int(pipe.scheduler.timesteps[0])
    source, target = pipe.encode_prompt(""), pipe.encode_prompt("a red square")
    latents = pipe.encode_video(frames)
    recorder = FeatureRecorder(pipe.unet, config.feature_layers, config.num_frames, stop_after_last=True)
    with recorder, torch.no_grad():
        reference = recorder.run(pipe.model_prediction, latents, t, source)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(3))
    x = (latents + 0.5 * noise).requires_grad_(True)
    calls = []
    handle = dict(pipe.unet.named_modules())[counted].register_forward_hook(lambda *_: calls.append(1))
    units = checkpoint_units(pipe.unet, granularity, config.feature_layers)
    try:
        with recorder, frozen(pipe.unet), activation_checkpointing(pipe.unet, units), torch.enable_grad():
            pipe.guidance_objective(x, t, target, reference, recorder, config)["total"].backward()
    finally:
        handle.remove()
    return x.grad.detach(), len(calls)


@pytest.mark.parametrize("granularity", ["blocks", "layers"])
def test_checkpointing_recomputes_and_keeps_the_gradient(pipe, clip, granularity):
    plain, plain_calls = _guidance_gradient(pipe, clip, "off")
    checkpointed, calls = _guidance_gradient(pipe, clip, granularity)
    assert plain_calls == 1
    assert calls == 2  # the forward, and the recomputation in the backward
    assert plain.abs().sum() > 0
    torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-7)


def test_checkpointing_is_off_outside_the_block(pipe, clip):
    _guidance_gradient(pipe, clip, "layers")  # installs the hooks
    _, calls = _guidance_gradient(pipe, clip, "off")
    assert calls == 1


# ------------------------------------------------------------------------------ whole runs
def _run(pipe, clip, **options):
    return pipe(clip, "a red square", output_type="pt", **FAST, **options)


@pytest.mark.parametrize(
    "options, tolerance",
    [
        ({"activation_checkpointing": "blocks"}, 1e-5),
        ({"activation_checkpointing": "layers"}, 1e-5),
        ({"attention": "classic"}, 1e-4),
        ({"vae_batch_size": 3}, 1e-5),
        ({"vae_tiling": True}, 1e-5),
    ],
    ids=["checkpoint-blocks", "checkpoint-layers", "classic-attention", "vae-batch-3", "vae-tiling"],
)
def test_options_leave_the_result_unchanged(pipe, clip, options, tolerance):
    baseline = _run(pipe, clip)
    result = _run(pipe, clip, **options)
    assert result.config | options == result.config  # recorded in the run's config
    torch.testing.assert_close(result.frames, baseline.frames, rtol=0, atol=tolerance)
    first = [float(i["total"]) for step in baseline.loss_history for i in step["iterations"]]
    second = [float(i["total"]) for step in result.loss_history for i in step["iterations"]]
    np.testing.assert_allclose(second, first, rtol=1e-4)


def test_speed_options_apply_inside_and_restore_after(pipe):
    before = {name: type(p) for name, p in pipe.unet.attn_processors.items()}
    assert set(before.values()) == {AttnProcessor2_0}
    config = pipe.default_config().replace(attention="classic", vae_tiling=True)
    with pipe.speed_options(config):
        assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor}
        assert {type(p) for p in pipe.vae.attn_processors.values()} == {AttnProcessor}
        assert pipe.vae.use_tiling
    assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == before
    assert {type(p) for p in pipe.vae.attn_processors.values()} == {AttnProcessor2_0}
    assert not pipe.vae.use_tiling
    pipe.vae.enable_tiling()  # the diffusers way, by the caller: kept by a run without vae_tiling
    try:
        with pipe.speed_options(pipe.default_config()):
            assert pipe.vae.use_tiling
        assert pipe.vae.use_tiling
    finally:
        pipe.vae.disable_tiling()


def test_vae_batches_match_frame_by_frame(pipe, clip):
    config = pipe.default_config().replace(num_frames=6).validate()
    frames, _ = pipe.prepare_video(clip, config)
    one = pipe.encode_video(frames, batch_size=1)
    four = pipe.encode_video(frames, batch_size=4)  # batches of 4 and 2
    torch.testing.assert_close(four, one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pipe.decode_latents(one, batch_size=4), pipe.decode_latents(one), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("attention", "flash", "attention must be one of sdpa, classic"),
        ("activation_checkpointing", "all", "activation_checkpointing must be one of off, blocks, layers"),
        ("vae_batch_size", 0, "vae_batch_size must be positive"),
        ("vae_tiling", "yes", "vae_tiling must be true or false"),
    ],
)
def test_bad_option_values_are_user_errors(field, value, message):
    with pytest.raises(UserError, match=message):
        SMAConfig(**{field: value}).validate()


def test_cli_flags_reach_the_run_record(tmp_path, monkeypatch):
    monkeypatch.setenv("SMA_GUIDE_CACHE", str(tmp_path / "cache"))
    video = write_moving_square(tmp_path / "clip.mp4")
    output = tmp_path / "out.mp4"
    result = CliRunner().invoke(
        cli.main,
        ["run", str(video), "--prompt", "a red square", "-o", str(output), *FAST_ARGS,
         "--attention", "classic", "--activation-checkpointing", "layers", "--vae-batch-size", "2", "--vae-tiling"],
    )
    assert result.exit_code == 0, result.output
    config = json.loads(output.with_suffix(".json").read_text())["config"]
    assert (config["attention"], config["activation_checkpointing"]) == ("classic", "layers")
    assert (config["vae_batch_size"], config["vae_tiling"]) == (2, True)
