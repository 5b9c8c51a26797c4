"""`sma-guide bench memory`: the tensor-memory counter, and fake-tensor estimates checked against real runs."""

import json

import pytest
import torch
from click.testing import CliRunner

from cli import main
from pipelines.motion_transfer.memory_estimate import (
    component_configs,
    estimate_memory,
    memory_table,
    stage_memory,
)
from pipelines.motion_transfer.backbones.zeroscope import ZEROSCOPE_UNET_CONFIG
from sma_guidance.config import SMAConfig
from sma_guidance.errors import UserError
from sma_guidance.memory import TensorMemory
from conftest import quiet_pipeline

FAST = {"num_frames": 4, "num_inference_steps": 4, "inversion_steps": 4, "optimization_steps": 1}


def test_counter_counts_new_storages_until_freed():
    x = torch.ones(1000)  # 4,000 bytes, made before: not counted
    with TensorMemory().exclude([x]) as counter:
        y = x * 2  # +4,000
        view = y[:10]  # a view: no new storage
        z = y + 1  # +4,000 -> peak 8,000
        del y, view  # -4,000
        w = x[:500].clone()  # +2,000
    assert counter.peak == 8000
    assert counter.current == 6000
    del z, w
    assert counter.current == 0


def test_counter_sees_the_backward():
    x = torch.ones(256, requires_grad=True)
    with TensorMemory().exclude([x]) as counter:
        (x.exp() * 3).sum().backward()
    assert x.grad is not None
    # exp saves its 1 KiB output; the product, the sum and the gradient chain allocate more.
    assert counter.peak >= 2 * 1024


@pytest.fixture(scope="module")
def pipe():
    return quiet_pipeline("tiny-random")


@pytest.mark.parametrize("choice", ["off", "blocks", "layers"])
def test_fake_estimate_matches_the_same_count_on_real_tensors(pipe, choice):
    config = pipe.default_config().replace(**FAST, activation_checkpointing=choice).validate()
    pipe.scheduler.set_timesteps(config.num_inference_steps)
    real = stage_memory(pipe, config, int(pipe.scheduler.timesteps[0]))
    estimate = estimate_memory("tiny-random", config, torch.float32, checkpointing=(choice,))
    fake = estimate["checkpointing"][choice]["stages"]
    assert set(fake) == {"prompt encoding", "guidance iteration", "denoising step", "VAE encode", "VAE decode"}
    for stage, value in real.items():
        assert value > 0
        assert fake[stage] == pytest.approx(value, rel=0.02), stage
    weights = sum(t.numel() * t.element_size() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for t in [*m.parameters(), *m.buffers()])
    assert sum(estimate["weights_bytes"].values()) == weights


def test_checkpointing_lowers_the_estimate_at_zeroscope_scale():
    record = estimate_memory("zeroscope-arch", SMAConfig(num_frames=4, height=64, width=64), torch.float16)
    guidance = {c: record["checkpointing"][c]["stages"]["guidance iteration"] for c in ("off", "blocks", "layers")}
    assert guidance["off"] > 1.5 * guidance["blocks"] > 1.5 * guidance["layers"] > 0
    # float16 UNet weights: 1,411 M parameters (Zeroscope's count) x 2 bytes.
    assert record["weights_bytes"]["unet"] == pytest.approx(1.411e9 * 2, rel=0.01)
    table = memory_table(record)
    assert "checkpointing blocks" in table and "run peak" in table


def test_component_configs_read_a_folder_without_weights(tmp_path):
    configs = component_configs("zeroscope-arch")
    assert configs["unet"]["block_out_channels"] == ZEROSCOPE_UNET_CONFIG["block_out_channels"]
    shapes = component_configs("shapes")  # the bundled folder: configs only
    assert shapes["unet"]["_class_name"] == "UNet3DConditionModel"
    with pytest.raises(UserError, match="cannot read the unet/vae/text_encoder configs"):
        component_configs(str(tmp_path / "nothing-here"))


def test_cli_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "new" / "deeper" / "memory.json"  # missing folders are created
    result = CliRunner().invoke(main, ["bench", "memory", "--model", "tiny-random", "--frames", "4", "--dtype", "float32",
                                       "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "| **run peak**" in result.output
    record = json.loads(out.read_text())
    assert set(record["checkpointing"]) == {"off", "blocks", "layers"}
    assert record["frames"] == 4 and record["dtype"] == "float32"


def test_cli_unknown_model_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["bench", "memory", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "m.json")])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "cannot read" in result.output


def test_an_estimate_leaves_no_shape_only_tensors_behind():
    """Cached constants (the DWT matrices) made during an estimate must be real for later runs."""
    from sma_guidance import spectral

    spectral._dwt_matrices.cache_clear()
    estimate_memory("tiny-random", SMAConfig.for_model("tiny-random", num_frames=6), torch.float32, ("off",))
    residuals = torch.randn(1, 5, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    loss = spectral.global_motion_loss(residuals, torch.zeros_like(residuals))
    assert torch.isfinite(loss) and float(loss) > 0


def test_the_wan_lora_step_estimate_counts_on_fake_tensors_what_real_ones_hold():
    from pipelines.motion_transfer.memory_estimate import _fake_pipeline, estimate_fine_tune_memory, lora_step_memory
    from pipelines.motion_transfer.backbones.wan import flow_scheduler

    # The estimate's own components built on real tensors (its placeholder tokenizer pads to Wan's 512 tokens).
    scheduler = flow_scheduler()
    pipe = _fake_pipeline(component_configs("tiny-random-wan"), torch.float32, scheduler)
    config = pipe.with_feature_layers(SMAConfig.for_model("tiny-random-wan", family="wan", num_frames=9, height=64,
                                                          width=64, mode="fine-tune")).validate()
    real = lora_step_memory(pipe, config, gradient_checkpointing=True)
    record = estimate_fine_tune_memory("tiny-random-wan", config, torch.float32)
    on, off = record["gradient_checkpointing"]["on"], record["gradient_checkpointing"]["off"]
    assert real["step"] > 0 and on["step"] == pytest.approx(real["step"], rel=0.01) and on["trainable"] == real["trainable"]
    # rank 16 on q / k / v of blocks 2-3 (width 16): A and B in float32, with a gradient and two AdamW moments
    assert on["trainable"] == 4 * 4 * 6 * (16 * 16 + 16 * 16)
    assert off["step"] > on["step"]  # the checkpointed blocks keep only their inputs


def test_the_fine_tune_estimate_of_a_unet_model_is_one_error_line(tmp_path):
    result = CliRunner().invoke(main, ["bench", "memory", "--model", "tiny-random", "--fine-tune", "--output",
                                       str(tmp_path / "m.json")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "diffusion transformer (Wan)" in lines[0], result.output
