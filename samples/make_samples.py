"""Render the bundled sample clips (small, procedural, seeded): ``python samples/make_samples.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sma_guidance.video_io import export_to_video

HERE = Path(__file__).resolve().parent


def disc_moving_right(num_frames: int = 16, size: int = 64) -> np.ndarray:
    """A red disc crossing a dark-blue background left to right, anti-aliased, (F, H, W, 3) uint8."""
    rows, cols = np.mgrid[0:size, 0:size] + 0.5
    video = np.empty((num_frames, size, size, 3), np.float32)
    for frame in range(num_frames):
        centre_x = 12 + (size - 24) * frame / (num_frames - 1)
        distance = np.hypot(cols - centre_x, rows - size / 2)
        coverage = np.clip(9.0 - distance + 0.5, 0, 1)[..., None]
        video[frame] = (1 - coverage) * np.array([20, 20, 90]) + coverage * np.array([230, 40, 40])
    return video.round().astype(np.uint8)


if __name__ == "__main__":
    path = export_to_video(disc_moving_right(), HERE / "disc_right.mp4", fps=8)
    print(f"wrote {path}")
