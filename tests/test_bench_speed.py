"""`sma-guide bench speed` on tiny-random (CPU): every stage timed, the SMA ratio, the scaling table."""

import json
import time

import pytest
import torch
from click.testing import CliRunner

from cli import main
from pipelines import SMAMotionTransferPipeline
from pipelines.bench.speed import (
    markdown_table,
    measure,
    measure_interleaved,
    run_speed_benchmark,
)
from pipelines.motion_transfer.backbones.zeroscope import ZEROSCOPE_UNET_CONFIG
from conftest import quiet_pipeline

FAST = {"num_frames": 4, "num_inference_steps": 4, "inversion_steps": 4, "optimization_steps": 1, "restart_sampling": False}
STAGES = ["inversion", "reference features", "guidance iteration", "guidance iteration, λg = λl = 0",
          "guidance iteration, full forward", "SMA terms", "denoising step", "decode", "whole run"]


@pytest.fixture(scope="module")
def pipe():
    return quiet_pipeline("tiny-random")


def test_measure_times_the_call_and_counts_repeats():
    calls = []

    def nap():
        calls.append(1)
        time.sleep(0.02)

    result = measure(nap, torch.device("cpu"), warmup=2, repeats=3)
    assert len(calls) == 5 and result["repeats"] == 3
    assert 0.02 <= result["min_s"] <= result["median_s"] <= result["max_s"] < 0.5
    assert result["peak_memory_bytes"] > 10 * 2**20  # this process's peak RSS


def test_interleaved_measure_alternates_and_separates():
    order = []
    fast, slow = measure_interleaved(lambda: order.append("a"), lambda: (order.append("b"), time.sleep(0.01)),
                                     torch.device("cpu"), warmup=1, repeats=4)
    assert order == ["a", "b"] * 5
    assert fast["median_s"] < 0.005 and slow["median_s"] >= 0.01


def test_every_stage_is_timed_and_the_dmt_only_iteration_skips_the_spectral_terms(pipe, monkeypatch):
    from sma_guidance import dmt

    calls = []
    real = dmt.global_motion_loss
    monkeypatch.setattr(dmt, "global_motion_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = pipe.default_config().replace(**FAST).validate()
    record = run_speed_benchmark(pipe, config, warmup=1, repeats=2, scaling_frames=(3, 4))
    assert list(record["stages"]) == STAGES
    for name, result in record["stages"].items():
        assert result["median_s"] > 0 and result["peak_memory_bytes"] > 0, name
    with_sma, without = record["stages"]["guidance iteration"], record["stages"]["guidance iteration, λg = λl = 0"]
    assert with_sma["repeats"] == without["repeats"] == 5  # the ratio gets at least 5 interleaved pairs
    assert record["sma_ratio"] == pytest.approx(with_sma["median_s"] / without["median_s"])
    # Per layer, one call per guidance iteration with λg > 0 and none without: warm-up + 5 interleaved,
    # warm-up + 2 repeats of the full forward, the whole run's iterations, and warm-up + 2 repeats at
    # each of the two scaling points.
    layers = len(config.feature_layers)
    assert len(calls) == layers * (6 + 3 + config.num_guided_steps * config.optimization_steps + 2 * 3)
    assert [(p["frames"], p["height"]) for p in record["scaling"]] == [(3, 64), (4, 64)]
    assert record["inversion_steps_run"] == 4
    table = markdown_table(record)
    assert "| inversion (4 steps) |" in table and "ratio" in table and "| 3 | 64 × 64 |" in table
    json.dumps(record)


def test_cli_writes_table_and_json(tmp_path):
    output = tmp_path / "speed.json"
    args = ["bench", "speed", "--model", "tiny-random", "--frames", "4", "--steps", "4", "--inversion-steps", "4",
            "--optimization-steps", "1", "--repeats", "1", "--warmup", "0", "--no-whole-run",
            "--scaling-frames", "3", "--scaling-sizes", "32x32", "--output", str(output), "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    record = json.loads(output.read_text())
    assert "whole run" not in record["stages"] and record["frames"] == 4
    assert [(p["frames"], p["height"], p["width"]) for p in record["scaling"]] == [(3, 64, 64), (4, 32, 32)]
    assert "| stage | median |" in result.output


@pytest.mark.parametrize("flag, value", [("--scaling-frames", "8,x"), ("--scaling-sizes", "64by64"),
                                         ("--scaling-frames", "1")])
def test_cli_rejects_bad_scaling_lists_in_one_line(tmp_path, flag, value):
    result = CliRunner().invoke(main, ["bench", "speed", "--model", "tiny-random", flag, value,
                                       "--output", str(tmp_path / "s.json")])
    assert result.exit_code == 1 and result.output.startswith("error: ") and result.output.count("\n") == 1
    assert not (tmp_path / "s.json").exists()


def test_zeroscope_arch_is_zeroscopes_architecture_built_without_download(monkeypatch):
    """The UNet3D from Zeroscope's config has its 1.41 B parameters (counted on the meta device), and
    the model name builds it (here a stand-in, the real one is 7 GB)."""
    from diffusers import UNet3DConditionModel

    from pipelines.motion_transfer.backbones import zeroscope as components

    with torch.device("meta"):
        unet = UNet3DConditionModel(**ZEROSCOPE_UNET_CONFIG)
    assert 1.40e9 < sum(p.numel() for p in unet.parameters()) < 1.42e9
    assert unet.up_blocks[1].resnets[1].conv2 is not None  # DMT's recorded layers exist
    built = []
    monkeypatch.setattr(components, "build_zeroscope_arch", lambda: built.append(1) or components.build_tiny_random())
    pipe = SMAMotionTransferPipeline.load("zeroscope-arch", device="cpu")
    assert built == [1] and pipe.model_name == "zeroscope-arch"
    assert (pipe.default_config().num_frames, pipe.default_config().height) == (24, 320)  # Zeroscope's defaults


def test_the_full_forward_variant_runs_the_layers_the_early_stop_skips(pipe):
    from pipelines.bench.speed import _Stages

    stages = _Stages(pipe, pipe.default_config().replace(**FAST).validate())
    fired = []
    handle = pipe.unet.conv_out.register_forward_hook(lambda *args: fired.append(1))
    try:
        stages.guidance_iteration(stages.config)()
        assert fired == []
        stages.guidance_iteration(stages.config, early_stop=False)()
        assert fired == [1]
    finally:
        handle.remove()


def test_inversion_study_rows_and_the_reconstruction_it_compares(pipe, monkeypatch):
    import numpy as np

    from pipelines.bench.speed import _psnr, inversion_table, run_inversion_study

    config = pipe.default_config().replace(**FAST).validate()
    rng = np.random.default_rng(0)
    clips = [(rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8), "a clip") for _ in range(2)]
    rows = run_inversion_study(pipe, config, clips, (4, 8))
    assert [row["inversion_steps"] for row in rows] == [4, 8] and all(row["clips"] == 2 for row in rows)
    assert all(np.isfinite(row["mean_psnr_vs_input"]) and row["mean_inversion_seconds"] > 0 for row in rows)
    assert "| 8 |" in inversion_table(rows)
    a, b = torch.zeros(2, 3), torch.full((2, 3), 0.2)
    assert _psnr(a, b) == pytest.approx(10 * np.log10(1 / 0.04))
    # A lossless inversion and denoising give back exactly the VAE's reconstruction.
    monkeypatch.setattr(pipe, "invert", lambda frames, source, cfg, keep: ({keep[0]: pipe.encode_video(frames)}, False))
    monkeypatch.setattr(pipe, "denoise_step", lambda latents, *args: latents)
    (row,) = run_inversion_study(pipe, config, clips[:1], (4,))
    frames, _ = pipe.prepare_video(clips[0][0], config)
    autoencoded = pipe.decode_latents(pipe.encode_video(frames))[0]
    assert row["mean_psnr_vs_autoencoded"] == float("inf")
    # ... and against the input, the VAE's own error, both as frames in [0, 1].
    assert row["mean_psnr_vs_input"] == pytest.approx(_psnr(autoencoded, (frames + 1) / 2))


def test_cli_bench_inversion_rejects_a_step_count_off_the_sampling_grid(tmp_path):
    result = CliRunner().invoke(main, ["bench", "inversion", "--model", "tiny-random", "--inversion-steps", "7",
                                       "--output", str(tmp_path / "i.json")])
    assert result.exit_code == 1 and result.output.startswith("error: ") and not (tmp_path / "i.json").exists()
