"""Point tracking for real video: OpenCV's pyramidal Lucas–Kanade on a fixed query grid.

The standard motion-fidelity score (DMT's) tracks a grid of points with CoTracker; its weights cannot be had
offline, so this is the tracker that can: every point of a ``grid x grid`` lattice of the first frame is
followed frame to frame by ``cv2.calcOpticalFlowPyrLK``, checked forward–backward (tracked back to the
previous frame, a point that does not return within ``max_error`` px is marked lost: occlusion, or a
textureless area where Lucas–Kanade cannot see motion), and NaN from the frame it is lost or leaves the
image. The lattice is the same in every clip of a given size, so track ``i`` of two clips starts at the
same query point, as CoTracker's grid does (DMT's score relies on it). OpenCV is the ``eval`` extra.
"""

from __future__ import annotations

import numpy as np

from .errors import UserError

__all__ = ["grid_points", "klt_tracks"]


def _cv2():
    try:
        import cv2
    except ImportError:
        raise UserError('the klt tracker needs OpenCV: pip install -e ".[eval]" (opencv-python-headless)') from None
    return cv2


def grid_points(height: int, width: int, grid: int) -> np.ndarray:
    """A ``grid x grid`` lattice of pixel positions ``(x, y)`` over the frame, centred in its cells:
    float32 ``(grid², 2)``, row by row."""
    xs = (np.arange(grid, dtype=np.float32) + 0.5) * width / grid
    ys = (np.arange(grid, dtype=np.float32) + 0.5) * height / grid
    return np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)


def klt_tracks(frames, grid: int = 30, window: int = 15, levels: int = 3, max_error: float = 1.0,
               min_eigen: float = 1e-3) -> np.ndarray:
    """Tracks of a ``grid x grid`` query lattice through ``frames`` uint8 ``(F, H, W, 3)``: float64
    ``(grid², F, 2)`` pixel ``(x, y)``, NaN once a point is lost (forward–backward error above ``max_error``
    px, Lucas–Kanade's own failure, a gradient matrix whose smallest eigenvalue is below ``min_eigen`` — no
    texture to track —, or the point leaving the frame). ``window``: the Lucas–Kanade window in px,
    ``levels``: pyramid levels above the image."""
    cv2 = _cv2()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 2:
        raise UserError(f"tracking needs a clip (F >= 2, H, W, 3), got shape {frames.shape}")
    if grid < 1:
        raise UserError(f"the tracking grid needs at least one point per side, got {grid}")
    gray = [cv2.cvtColor(np.ascontiguousarray(f, dtype=np.uint8), cv2.COLOR_RGB2GRAY) for f in frames]
    height, width = gray[0].shape
    params = dict(winSize=(window, window), maxLevel=levels, minEigThreshold=min_eigen,
                  criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    points = grid_points(height, width, grid)
    out = np.full((len(points), len(frames), 2), np.nan)
    out[:, 0] = points
    alive = np.ones(len(points), bool)
    for n in range(1, len(frames)):
        if not alive.any():
            break
        previous = out[alive, n - 1].astype(np.float32).reshape(-1, 1, 2)
        forward, ok_forward, _ = cv2.calcOpticalFlowPyrLK(gray[n - 1], gray[n], previous, None, **params)
        back, ok_back, _ = cv2.calcOpticalFlowPyrLK(gray[n], gray[n - 1], forward, None, **params)
        error = np.linalg.norm((back - previous).reshape(-1, 2), axis=-1)
        moved = forward.reshape(-1, 2).astype(np.float64)
        inside = (moved[:, 0] >= 0) & (moved[:, 0] <= width - 1) & (moved[:, 1] >= 0) & (moved[:, 1] <= height - 1)
        kept = ok_forward.ravel().astype(bool) & ok_back.ravel().astype(bool) & (error <= max_error) & inside
        index = np.flatnonzero(alive)
        out[index[kept], n] = moved[kept]
        alive[index[~kept]] = False
    return out
