"""Point tracking for real video: DMT's query grid, tracked by OpenCV's pyramidal Lucas–Kanade or by CoTracker3.

The standard motion-fidelity score (DMT's ``motion_fidelity_score.py``) tracks CoTracker's ``55 x 55`` query
grid of the first frame (:func:`cotracker_grid`), optionally only the points inside the bounding box of a
first-frame foreground mask (:func:`dmt_box_mask`, :func:`points_in_box`). Two trackers follow that grid:

- :func:`klt_tracks`, offline and light: every point is followed frame to frame by
  ``cv2.calcOpticalFlowPyrLK``, checked forward–backward (tracked back to the previous frame, a point that
  does not return within ``max_error`` px is marked lost: occlusion, or a textureless area where
  Lucas–Kanade cannot see motion), and NaN from the frame it is lost or leaves the image. OpenCV is the
  ``eval`` extra.
- :func:`cotracker_tracks`, DMT's own tracker, when CoTracker3's code and weights are on disk (torch hub's
  cache, or a checkpoint file with the ``cotracker`` package installed); nothing is downloaded.

The grid is laid out in fractions of the frame, so track ``i`` of two clips starts at the same query point
whatever their sizes (DMT's score relies on it).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .errors import UserError

__all__ = [
    "COTRACKER_INTERP", "DMT_GRID", "cotracker_grid", "cotracker_tracks", "dmt_box_mask", "klt_tracks",
    "load_cotracker", "points_in_box", "read_foreground",
]

DMT_GRID = 55  # DMT's motion_fidelity_score.py: CoTracker's grid_size=55
COTRACKER_INTERP = (384, 512)  # (H, W) CoTracker3 resizes every clip to before it lays out and tracks its grid


def _cv2():
    try:
        import cv2
    except ImportError:
        raise UserError('the klt tracker needs OpenCV: pip install -e ".[eval]" (opencv-python-headless)') from None
    return cv2


def _interp_grid(grid: int, interp: tuple[int, int]) -> np.ndarray:
    """CoTracker's ``get_points_on_a_grid`` on its working size ``interp`` ``(H, W)``: ``(grid², 2)`` ``(x, y)``,
    row by row, from a margin of ``W // 64`` px to the opposite margin on both axes (one point: the centre)."""
    height, width = interp
    if grid == 1:
        return np.array([[width / 2, height / 2]], np.float64)
    margin = width // 64
    steps = np.arange(grid, dtype=np.float64) / (grid - 1)
    xs, ys = np.meshgrid(margin + steps * (width - 2 * margin), margin + steps * (height - 2 * margin))
    return np.stack([xs, ys], -1).reshape(-1, 2)


def cotracker_grid(height: int, width: int, grid: int = DMT_GRID, interp: tuple[int, int] = COTRACKER_INTERP) -> np.ndarray:
    """The query points of DMT's score in a ``height x width`` clip: CoTracker's ``grid x grid`` lattice laid
    out on its working size ``interp`` and scaled back to the clip as CoTracker scales its tracks (by
    ``(W - 1) / (W_interp - 1)``): float64 ``(grid², 2)`` pixel ``(x, y)``, row by row."""
    if grid < 1:
        raise UserError(f"the tracking grid needs at least one point per side, got {grid}")
    points = _interp_grid(grid, interp)
    return points * np.array([(width - 1) / (interp[1] - 1), (height - 1) / (interp[0] - 1)])


def dmt_box_mask(mask) -> np.ndarray:
    """DMT's foreground restriction: the rectangle over a first-frame segmentation ``mask`` ``(H, W)`` (or
    ``(H, W, C)``; any nonzero pixel is foreground), as its script builds it — rows ``min..max`` and columns
    ``min..max`` of the foreground, the last row and column left out (its slices stop before the maximum).
    Bool ``(H, W)``."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask.max(-1)
    if mask.ndim != 2:
        raise UserError(f"a foreground mask is one image (H, W), got shape {mask.shape}")
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        raise UserError("the foreground mask is empty (all black); paint the subject of the first frame white")
    box = np.zeros(mask.shape, bool)
    box[rows.min():rows.max(), cols.min():cols.max()] = True
    return box


def read_foreground(path) -> np.ndarray:
    """A first-frame foreground mask as DMT's script reads it: the image file's own values
    (``np.array(Image.open(path))``: a DAVIS palette PNG gives its object indices), ``(H, W)`` or ``(H, W, C)``;
    :func:`dmt_box_mask` takes any nonzero value as foreground."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"foreground mask not found: {path} — give the first frame's mask as an image file")
    try:
        with Image.open(path) as image:
            return np.array(image)
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"cannot read the foreground mask {path} ({error}); give a PNG or JPEG image") from None


def points_in_box(box, grid: int = DMT_GRID, interp: tuple[int, int] = COTRACKER_INTERP) -> np.ndarray:
    """Which query points of :func:`cotracker_grid` a foreground ``box`` ``(H, W)`` keeps, as CoTracker's
    ``segm_mask`` does: the box resized to ``interp`` by nearest neighbour, then read at each point's rounded
    position there. Bool ``(grid²,)``; the kept points are the same for clips of any size."""
    box = np.asarray(box, bool)
    height, width = box.shape
    rows = np.minimum(np.floor(np.arange(interp[0]) * (height / interp[0])).astype(int), height - 1)
    cols = np.minimum(np.floor(np.arange(interp[1]) * (width / interp[1])).astype(int), width - 1)
    resized = box[rows][:, cols]
    points = np.round(_interp_grid(grid, interp)).astype(int)
    return resized[points[:, 1], points[:, 0]]


def klt_tracks(frames, grid: int = DMT_GRID, window: int = 15, levels: int = 3, max_error: float = 1.0,
               min_eigen: float = 1e-3, points=None) -> np.ndarray:
    """Tracks of DMT's query grid (:func:`cotracker_grid`, ``grid x grid``) — or of ``points`` ``(N, 2)``
    pixel ``(x, y)`` of the first frame — through ``frames`` uint8 ``(F, H, W, 3)``: float64 ``(N, F, 2)``
    pixel ``(x, y)``, NaN once a point is lost (forward–backward error above ``max_error`` px, Lucas–Kanade's
    own failure, a gradient matrix whose smallest eigenvalue is below ``min_eigen`` — no texture to track —,
    or the point leaving the frame). ``window``: the Lucas–Kanade window in px, ``levels``: pyramid levels
    above the image."""
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
    points = cotracker_grid(height, width, grid) if points is None else np.asarray(points, np.float64).reshape(-1, 2)
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


_HUB_REPO = "facebookresearch_co-tracker_main"  # where torch.hub.load('facebookresearch/co-tracker', ...) keeps the code
_HUB_WEIGHTS = "scaled_offline.pth"  # ... and where its cotracker3_offline entry keeps the weights (hub dir/checkpoints)


def _cotracker_places(weights) -> tuple:
    import torch

    hub = Path(torch.hub.get_dir())
    return hub / _HUB_REPO, Path(weights) if weights is not None else hub / "checkpoints" / _HUB_WEIGHTS


@functools.lru_cache(maxsize=2)
def load_cotracker(weights: str | None = None, device: str = "cpu"):
    """CoTracker3 (offline) from disk, never from the network: its code from torch hub's cache
    (``<hub dir>/facebookresearch_co-tracker_main``, what ``torch.hub.load('facebookresearch/co-tracker',
    'cotracker3_offline')`` leaves there) or from the ``cotracker`` package, and its weights from ``weights``
    (default: the hub cache's ``checkpoints/scaled_offline.pth``), read with ``weights_only=True``. Kept
    loaded for the next clip."""
    import torch

    repo, path = _cotracker_places(weights)
    fetch = ("python -c \"import torch; torch.hub.load('facebookresearch/co-tracker', 'cotracker3_offline')\" "
             "once with network")
    if not path.is_file():
        raise UserError(f"CoTracker3 weights not found at {path}: pass --tracker-weights PATH (scaled_offline.pth), "
                        f"or run {fetch}; --tracker klt needs no weights")
    if (repo / "hubconf.py").is_file():
        model = torch.hub.load(str(repo), "cotracker3_offline", source="local", pretrained=False)
    else:
        try:
            from cotracker.predictor import CoTrackerPredictor
        except ImportError:
            raise UserError(f"CoTracker3's code is not on disk (no {repo}, no cotracker package): run {fetch}, or "
                            "pip install git+https://github.com/facebookresearch/co-tracker") from None
        model = CoTrackerPredictor(checkpoint=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    except Exception as error:  # a truncated file, another model's weights: say which file, not a traceback
        raise UserError(f"{path} is not a CoTracker3 checkpoint ({type(error).__name__}: {str(error)[:200]}); "
                        "pass the scaled_offline.pth of cotracker3_offline") from None
    return model.to(device).eval()


def cotracker_tracks(frames, grid: int = DMT_GRID, box=None, weights=None, device: str = "cpu") -> np.ndarray:
    """DMT's tracks: CoTracker3 on ``frames`` uint8 ``(F, H, W, 3)`` with ``grid_size=grid`` and, when given, the
    foreground ``box`` ``(H, W)`` (:func:`dmt_box_mask`) as its ``segm_mask`` — the call of DMT's
    ``motion_fidelity_score.py``. Float64 ``(N, F, 2)`` pixel ``(x, y)``; like DMT, every track is kept,
    visible or not."""
    import torch

    model = load_cotracker(None if weights is None else str(weights), device)
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)[None].float().to(device)
    segm = None if box is None else torch.from_numpy(np.asarray(box, np.float32))[None, None].to(device)
    with torch.no_grad():
        tracks, _visibility = model(video, grid_size=grid, segm_mask=segm)  # (1, F, N, 2), (1, F, N)
    return tracks[0].permute(1, 0, 2).double().cpu().numpy()
