"""The Lucas-Kanade grid tracker and the choice of tracker for real video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sma_guidance import metrics, shapes
from sma_guidance.shapes import ClipSpec, ObjectSpec

pytest.importorskip("cv2", reason="the klt tracker needs the eval extra (opencv-python-headless)")

from sma_guidance.tracking import grid_points, klt_tracks  # noqa: E402

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


def test_the_query_grid_is_the_same_lattice_in_every_clip():
    small, large = grid_points(64, 64, 4), grid_points(128, 128, 4)
    assert np.allclose(small / 64, large / 128) and small[0].tolist() == [8, 8] and small[1].tolist() == [24, 8]


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
