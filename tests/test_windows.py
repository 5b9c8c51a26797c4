"""Clips longer than the model's window: window placement, the cross-fade, the windowed prediction, and
long clips through every family's tiny model (Zeroscope 20 frames, AnimateDiff 40, Wan 97)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from conftest import moving_square_frames, quiet_pipeline, write_moving_square
from sma_guidance.config import SMAConfig
from sma_guidance.errors import UserError
from sma_guidance.windows import blend_windows, crossfade_weights, temporal_windows


def test_windows_cover_the_clip_with_the_overlap():
    assert temporal_windows(24, 8, 2) == [(0, 8), (6, 14), (12, 20), (16, 24)]
    assert temporal_windows(40, 16, 4) == [(0, 16), (12, 28), (24, 40)]
    assert temporal_windows(25, 21, 5) == [(0, 21), (4, 25)]
    assert temporal_windows(8, 8, 2) == [(0, 8)]
    assert temporal_windows(5, 8, 2) == [(0, 5)]
    with pytest.raises(UserError, match="overlap"):
        temporal_windows(24, 8, 8)


def test_crossfade_is_linear_and_sums_to_one():
    windows = [(0, 8), (6, 14)]
    first, second = crossfade_weights(windows, 14)
    assert first.tolist() == pytest.approx([1] * 6 + [2 / 3, 1 / 3])
    assert second.tolist() == pytest.approx([1 / 3, 2 / 3] + [1] * 6)
    for total, window, overlap in ((24, 8, 2), (40, 16, 4), (11, 8, 6), (30, 8, 0)):
        spans = temporal_windows(total, window, overlap)
        coverage = torch.zeros(total, dtype=torch.float64)
        for (start, stop), weight in zip(spans, crossfade_weights(spans, total)):
            assert (weight > 0).all()
            coverage[start:stop] += weight
        assert torch.allclose(coverage, torch.ones(total, dtype=torch.float64))


def test_blending_the_windows_of_one_tensor_gives_it_back():
    x = torch.randn(2, 3, 24, 4, 4)
    spans = temporal_windows(24, 8, 2)
    assert torch.allclose(blend_windows([x[:, :, a:b] for a, b in spans], spans, 24), x, atol=1e-6)


def test_windowed_prediction_is_each_windows_prediction_cross_faded():
    pipe = quiet_pipeline("tiny-random")
    latents = torch.randn(1, 4, 14, 8, 8, generator=torch.Generator().manual_seed(0))
    embedding = pipe.encode_prompt("a cat")
    spans = [(0, 8), (6, 14)]
    with torch.no_grad():
        first = pipe.model_prediction(latents[:, :, 0:8], 500, embedding)
        second = pipe.model_prediction(latents[:, :, 6:14], 500, embedding)
        with pipe.in_windows(spans):
            blended = pipe.model_prediction(latents, 500, embedding)
        whole = pipe.model_prediction(latents, 500, embedding)
    assert torch.allclose(blended[:, :, :6], first[:, :, :6], atol=1e-5)
    assert torch.allclose(blended[:, :, 8:], second[:, :, 2:], atol=1e-5)
    assert torch.allclose(blended[:, :, 6], 2 / 3 * first[:, :, 6] + 1 / 3 * second[:, :, 0], atol=1e-5)
    assert torch.allclose(blended[:, :, 7], 1 / 3 * first[:, :, 7] + 2 / 3 * second[:, :, 1], atol=1e-5)
    assert not torch.allclose(whole, blended, atol=1e-3)  # outside the block: the whole clip at once


FAST = dict(num_inference_steps=4, inversion_steps=4, optimization_steps=1, restart_sampling=False)


def test_a_long_clip_runs_in_windows_with_one_cached_inversion(tmp_path):
    pipe = quiet_pipeline("tiny-random")
    video = moving_square_frames(20)
    settings = dict(FAST, num_frames=20, window=8, cache_dir=str(tmp_path))
    out = pipe(video, "a cat", **settings)
    assert out.frames.shape[:2] == (1, 20)
    assert out.windows == [[0, 8], [6, 14], [12, 20]]
    first = out.loss_history[0]["iterations"][0]
    assert len(first["windows"]) == 3 and first["total"] == pytest.approx(np.mean([w["total"] for w in first["windows"]]))
    again = pipe(video, "a dog", **settings)
    assert again.timings["inversion_cached"] == 1.0
    assert len(list((tmp_path / "inversions").glob("*.safetensors"))) == 1
    other = pipe(video, "a dog", **dict(settings, overlap=4))  # other windows: another inversion
    assert other.windows == [[0, 8], [4, 12], [8, 16], [12, 20]] and other.timings["inversion_cached"] == 0.0


def test_windows_default_to_the_familys_native_clip():
    assert SMAConfig.for_model("cerspense/zeroscope_v2_576w", family="zeroscope").window == 24
    assert SMAConfig.for_model("x", family="animatediff").window == 16
    assert SMAConfig.for_model("x", family="wan").window == 81
    assert SMAConfig.for_model("shapes", family="zeroscope").window == 8
    config = SMAConfig(num_frames=40, window=16)
    assert config.windowed and config.overlap_frames == 4 and config.window_frames == 16
    assert not SMAConfig(num_frames=16, window=16).windowed


@pytest.mark.parametrize("changes, message", [
    (dict(num_frames=24, window=8, overlap=8), "overlap must be below"),
    (dict(num_frames=24, window=8, mode="fine-tune"), "trains on one window"),
    (dict(window=2), "window must be at least 3"),
    (dict(num_frames=24, window=8, levels=4), "too deep for 8 frames"),
])
def test_bad_window_settings_are_refused(changes, message):
    with pytest.raises(UserError, match=message):
        SMAConfig(**changes).validate()


def test_animatediff_at_40_frames_in_windows(tmp_path):
    clip = write_moving_square(tmp_path / "in.mp4", num_frames=40)
    out = tmp_path / "out.mp4"
    args = [str(clip), "--prompt", "a cat", "--model", "tiny-random-animatediff", "-o", str(out), "--frames", "40",
            "--steps", "2", "--inversion-steps", "4", "--optimization-steps", "1", "--no-restart", "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["windows"] == [[0, 16], [12, 28], [24, 40]]
    assert record["config"]["window"] == 16
    # more frames at once than the motion modules' positional embedding holds: one line
    bad = CliRunner().invoke(main, [*args[:-1], "--window", "40", "-q", "-o", str(tmp_path / "bad.mp4")])
    assert bad.exit_code != 0 and "--window 32 or fewer" in bad.output


def test_wan_at_97_frames_in_windows(tmp_path):
    pipe = quiet_pipeline("tiny-random-wan")
    video = moving_square_frames(97, size=64)
    out = pipe(video, "a cat", num_frames=97, num_inference_steps=2, inversion_steps=2, optimization_steps=1,
               inversion_cache=False)
    assert out.frames.shape[:2] == (1, 97)
    # 25 latent frames in windows of 21 (81 frames) sharing 5 (20 frames); the recorded frames cover the clip
    assert out.windows == [[0, 81], [13, 97]]
    assert out.config["window"] == 81
