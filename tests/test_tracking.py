"""The Lucas-Kanade grid tracker and the choice of tracker for real video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sma_guidance import metrics, shapes
from sma_guidance.shapes import ClipSpec, ObjectSpec

pytest.importorskip("cv2", reason="the klt tracker needs the eval extra (opencv-python-headless)")

from sma_guidance.tracking import cotracker_grid, dmt_box_mask, klt_tracks, points_in_box

SHARED = Path(__file__).resolve().parents[2] / "shared" / "videos"


def textured_square_clip(frames: int = 10, speed: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """A 24-px square of random texture sliding right at a sub-pixel ``speed`` over a flat grey background:
    uint8 ``(F, 96, 96, 3)`` and its top-left corner per frame ``(F, 2)``."""
    noise = np.random.default_rng(0).integers(0, 256, (26, 26)).astype(np.float32)
    # a 3x3 box blur: a picture's texture, not per-pixel noise (which aliases under sub-pixel motion)
    texture = sum(noise[i:i + 24, j:j + 24] for i in range(3) for j in range(3)) / 9
    texture = np.clip((texture - texture.mean()) * 3 + 128, 0, 255)
    clip = np.full((frames, 96, 96, 3), 128, np.uint8)
    corners = np.stack([10 + speed * np.arange(frames), np.full(frames, 36.0)], 1)
    for n, (x, y) in enumerate(corners):
        # bilinear placement at a fractional x: what a renderer's anti-aliasing does
        left, frac = int(np.floor(x)), x - np.floor(x)
        shifted = np.zeros((24, 25), np.float32)
        shifted[:, :24] += (1 - frac) * texture
        shifted[:, 1:] += frac * texture
        alpha = np.zeros((24, 25), np.float32)
        alpha[:, :24] += 1 - frac
        alpha[:, 1:] += frac
        region = clip[n, int(y):int(y) + 24, left:left + 25, :].astype(np.float32)
        region = alpha[..., None] * shifted[..., None] + (1 - alpha[..., None]) * region
        clip[n, int(y):int(y) + 24, left:left + 25] = np.clip(region + 0.5, 0, 255).astype(np.uint8)
    return clip, corners


def test_points_on_an_object_move_with_it():
    clip, corners = textured_square_clip()
    tracks = klt_tracks(clip, grid=24)
    start = tracks[:, 0]
    on_object = ((start[:, 0] > corners[0, 0] + 3) & (start[:, 0] < corners[0, 0] + 21)
                 & (start[:, 1] > corners[0, 1] + 3) & (start[:, 1] < corners[0, 1] + 21))
    kept = on_object & np.isfinite(tracks[:, -1]).all(-1)
    assert kept.sum() >= 10
    moved = tracks[kept] - tracks[kept, :1]
    truth = corners - corners[0]
    assert np.linalg.norm(moved - truth, axis=-1).mean() <= 1.0  # the bound: 1 px
    flat = (start[:, 0] < 8) & (start[:, 1] < 8)  # plain grey: nothing to track, marked lost
    assert np.isnan(tracks[flat, 1]).all()


def test_the_query_grid_is_cotrackers_55_by_55_lattice():
    # On CoTracker3's own working size (384 x 512) its grid runs from the margin W // 64 = 8 px to 8 px from
    # the far edge, 55 points a side, row by row; a clip of another size gets it scaled by (W - 1) / 511.
    native = cotracker_grid(384, 512)
    assert native.shape == (55 * 55, 2)
    assert np.allclose(native[:55, 0], np.linspace(8, 504, 55)) and np.allclose(native[::55, 1], np.linspace(8, 376, 55))
    assert np.allclose(native[:55, 1], 8) and np.allclose(native[::55, 0], 8)
    small = cotracker_grid(64, 96)
    assert np.allclose(small / [95, 63], native / [511, 383])  # the same lattice in frame fractions
    assert np.allclose(cotracker_grid(10, 10, grid=1), [[256 * 9 / 511, 192 * 9 / 383]])


def test_dmts_foreground_box_keeps_the_grid_points_inside_it():
    mask = np.zeros((384, 512), np.uint8)
    mask[100:200, 150:301] = 255  # rows 100..199, columns 150..300
    box = dmt_box_mask(mask)
    # DMT's slices stop before the maximum: rows 100..198, columns 150..299
    assert box[100, 150] and box[198, 299] and not box[199, 150] and not box[100, 300] and box.sum() == 99 * 150
    kept = points_in_box(box)
    points = cotracker_grid(384, 512)  # on the working size, the grid's own coordinates
    rounded = np.round(points)
    expected = (rounded[:, 1] >= 100) & (rounded[:, 1] <= 198) & (rounded[:, 0] >= 150) & (rounded[:, 0] <= 299)
    assert kept.tolist() == expected.tolist() and 0 < kept.sum() < len(kept)
    # the same box on a half-size mask keeps the same points: the grid is laid out in frame fractions
    assert points_in_box(box[::2, ::2]).sum() == pytest.approx(kept.sum(), abs=kept.sum() * 0.1)
    with pytest.raises(Exception, match="empty"):
        dmt_box_mask(np.zeros((8, 8)))


def test_auto_takes_shapes_only_for_renders():
    spec = ClipSpec((ObjectSpec("circle", "red", 14, "right", 12, 32, vx=4),), "black")
    assert metrics.tracks(shapes.render(spec))[1] == "shapes"
    clip, _ = textured_square_clip()
    assert metrics.tracks(clip)[1] == "klt"


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/videos is not beside the checkout")
def test_real_footage_is_not_taken_for_a_shapes_render():
    from sma_guidance.video_io import read_clip

    for path in sorted(SHARED.glob("*.mp4")):
        frames, _ = read_clip(path, 4)
        assert not metrics.looks_like_shapes(frames), path.name


def test_the_default_score_tells_a_frozen_or_reversed_copy_from_the_clip():
    clip, _ = textured_square_clip(frames=10)
    still = np.repeat(clip[:1], len(clip), axis=0)
    scores = {name: metrics.evaluate(clip, other) for name, other in
              (("itself", clip), ("still", still), ("reversed", clip[::-1].copy()))}
    assert all(result["tracker"] == "klt" and result["formula"] == "paired" for result in scores.values())
    itself = scores["itself"]["motion_fidelity"]
    assert itself >= 0.95
    assert scores["still"]["motion_fidelity"] <= itself - 0.3 and scores["reversed"]["motion_fidelity"] <= itself - 0.3
    assert set(scores["still"]) >= {"motion_fidelity_dmt", "motion_fidelity_ditflow", "motion_fidelity_symmetric"}


def test_eval_restricts_dmts_grid_to_the_foreground_box(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from cli import main
    from sma_guidance.video_io import export_to_video

    clip, corners = textured_square_clip(frames=8)
    video = export_to_video(clip, tmp_path / "square.mp4", fps=8)
    mask = np.zeros(clip.shape[1:3], np.uint8)
    x, y = corners[0].astype(int)
    mask[y:y + 24, x:x + 24] = 1  # a palette-style mask: object index 1, not white
    Image.fromarray(mask).save(tmp_path / "mask.png")
    whole = tmp_path / "whole.json"
    boxed = tmp_path / "boxed.json"
    runner = CliRunner()
    first = runner.invoke(main, ["eval", str(video), str(video), "--tracker", "klt", "--json", str(whole)])
    second = runner.invoke(main, ["eval", str(video), str(video), "--tracker", "klt", "--foreground-mask",
                                  str(tmp_path / "mask.png"), "--json", str(boxed)])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert "DMT's 55x55 query grid in the foreground box" in second.output
    import json

    whole_metrics, boxed_metrics = (json.loads(p.read_text())["metrics"] for p in (whole, boxed))
    assert whole_metrics["input_tracks"] == 55 * 55 and whole_metrics["grid"] == 55
    expected = points_in_box(dmt_box_mask(mask)).sum()
    assert boxed_metrics["input_tracks"] == expected and 0 < expected < 55 * 55 and boxed_metrics["foreground_box"]
    missing = runner.invoke(main, ["eval", str(video), str(video), "--foreground-mask", str(tmp_path / "nope.png")])
    assert missing.exit_code == 1 and "foreground mask not found" in missing.output
