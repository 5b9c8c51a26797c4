"""Evaluation metrics for motion transfer: tracking, DMT's motion fidelity, temporal smoothness and,
in the shapes world, whether the output shows the prompted object doing the prompted motion.

Conventions (as in :mod:`sma_guidance.shapes`): clips are uint8 ``(F, H, W, 3)`` RGB; points are
``(x, y)`` with x to the right and y DOWN, in pixels unless said otherwise; a track set is float
``(N, F, 2)`` with NaN where a track is absent. Everything here is numpy only, so it runs without
torch or a GPU.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .errors import UserError
from .shapes import BACKGROUNDS, COLORS, MOTIONS, SHAPES, parse_prompt
from .tracking import DMT_GRID, cotracker_grid, cotracker_tracks, dmt_box_mask, klt_tracks, points_in_box

TRACKERS = ("auto", "shapes", "klt", "cotracker", "points")
GRID_TRACKERS = frozenset({"klt", "cotracker"})  # both follow DMT's query grid: track i of two clips starts at one point
LINEAR_MOTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}

_COLOR_NAMES = tuple(COLORS)
_COLOR_RGB = np.array([COLORS[c] for c in _COLOR_NAMES], np.float32)
_FG_THRESHOLD = 40.0  # RGB distance from the background: every named colour is >= 150 away from every
# background, so this keeps anti-aliased rim pixels down to ~25 % coverage while ignoring codec noise
_MAX_COLOR_DIST = 110.0  # < half the >= 255 spacing of the named colours: no pixel can fit two of them
_STILL_PX = 0.25  # px: a displacement shorter than this is "not moving"


# ---- input checks --------------------------------------------------------------------------------


def _check_clip(frames, what: str = "clip", min_frames: int = 2) -> np.ndarray:
    """``frames`` as uint8 ``(F, H, W, 3)``; a wrong shape is a user problem, not a crash. Floats are
    taken to be in [0, 1], as ``video_io.to_uint8`` does (model outputs come that way)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise UserError(f"{what} must be (frames, height, width, 3) RGB, got shape {frames.shape}")
    if len(frames) < min_frames:
        raise UserError(f"{what} needs at least {min_frames} frames, got {len(frames)}")
    if np.issubdtype(frames.dtype, np.floating):
        frames = np.round(np.clip(np.nan_to_num(frames), 0.0, 1.0) * 255.0)
    if frames.dtype != np.uint8:
        frames = np.clip(frames, 0, 255).astype(np.uint8)
    return frames


def resample_nearest(frames: np.ndarray, num_frames: int) -> np.ndarray:
    """``(F, ...)`` → ``(num_frames, ...)`` at the nearest indices of a uniform spread (first and
    last frames kept); the same rule as ``video_io.resample_frames``, without its torch import."""
    index = np.round(np.linspace(0, len(frames) - 1, num_frames)).astype(np.int64)
    return frames[index]


# ---- object-centroid tracking (shapes world) -----------------------------------------------------


def estimate_background(frames: np.ndarray, background=None) -> np.ndarray:
    """The background colour: float32 ``(3,)``.

    Args:
        frames: uint8 ``(F, H, W, 3)``.
        background: a BACKGROUNDS/COLORS name or an RGB triple; None = the most common colour of the
            border pixels (quantised to 16 levels per channel so codec noise does not split it,
            then averaged within that bin), since objects rarely cover the frame's edges.
    """
    if background is not None:
        if isinstance(background, str):
            rgb = BACKGROUNDS.get(background, COLORS.get(background))
            if rgb is None:
                raise UserError(f"unknown background {background!r}; give an RGB triple or one of "
                                f"{', '.join(map(repr, (*BACKGROUNDS, *COLORS)))}")
            return np.asarray(rgb, np.float32)
        return np.asarray(background, np.float32).reshape(3)
    border = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], 1).reshape(-1, 3)
    bins = (border >> 4).astype(np.int32)
    key = bins[:, 0] * 256 + bins[:, 1] * 16 + bins[:, 2]
    mode = np.bincount(key).argmax()
    return border[key == mode].astype(np.float32).mean(0)


def color_layers(frames: np.ndarray, background=None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Split a clip's foreground by named colour.

    Each pixel is compared with the blend line from the background to every named colour (so an
    anti-aliased rim pixel, a mix of the two, still belongs to its object) and takes the nearest
    one within ``_MAX_COLOR_DIST``; its position along that line is its coverage.

    Returns:
        ``(labels, alpha, names)``: int8 ``(F, H, W)`` index into ``names`` or -1 (background or
        no colour fits); float32 ``(F, H, W)`` coverage in [0, 1] (0 where unlabelled); the colour
        names, COLORS minus those too close to the background to be told apart from it.
    """
    bg = estimate_background(frames, background)
    pix = frames.astype(np.float32) - bg
    fg = np.einsum("...c,...c->...", pix, pix) > _FG_THRESHOLD**2
    keep = [i for i, rgb in enumerate(_COLOR_RGB) if np.linalg.norm(rgb - bg) > 2 * _FG_THRESHOLD]
    best = np.full(frames.shape[:-1], np.inf, np.float32)
    labels = np.full(frames.shape[:-1], -1, np.int8)
    alpha = np.zeros(frames.shape[:-1], np.float32)
    for k, i in enumerate(keep):
        axis = _COLOR_RGB[i] - bg
        t = np.clip(pix @ axis / float(axis @ axis), 0.0, 1.0)
        off = pix - t[..., None] * axis
        dist = np.einsum("...c,...c->...", off, off)
        win = fg & (dist < best) & (dist <= _MAX_COLOR_DIST**2)
        best = np.where(win, dist, best)
        labels[win], alpha[win] = k, t[win]
    return labels, alpha, tuple(_COLOR_NAMES[i] for i in keep)


def _objects(frames: np.ndarray, background=None, min_pixels: int = 6, colour_layers=None) -> list[tuple[str, np.ndarray]]:
    """``[(colour name, coverage (F, H, W) float32), ...]`` for every colour present (>= min_pixels)
    in at least half the frames, largest total coverage first.

    A layer lying mostly (> 50 % of its pixels) against another layer is dropped as a fringe: video
    codecs subsample colour, so e.g. the rim of a yellow object on dark blue decodes as a thin
    white ring, which is not an object of its own. ``colour_layers``: :func:`color_layers`'s result
    when the caller has it already.
    """
    labels, alpha, names = colour_layers if colour_layers is not None else color_layers(frames, background)
    layers = [(name, _despeckle(np.where(labels == k, alpha, 0.0).astype(np.float32))) for k, name in enumerate(names)]
    layers = [(n, w) for n, w in layers if ((w > 0).sum(axis=(1, 2)) >= min_pixels).sum() * 2 >= len(frames)]
    masks = [w > 0 for _, w in layers]
    found = []
    for k, (name, weights) in enumerate(layers):
        others = np.zeros_like(masks[k])
        for j in range(len(masks)):
            if j != k:
                others |= masks[j]
        touching = masks[k] & (_neighbours(others) > 0)
        if touching.sum() * 2 <= masks[k].sum():
            found.append((name, weights))
    return sorted(found, key=lambda item: -float(item[1].sum()))


def _neighbours(mask: np.ndarray) -> np.ndarray:
    """How many of each pixel's 8 neighbours are set in bool ``(F, H, W)``: int ``(F, H, W)``."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1))).astype(np.int8)
    h, w = mask.shape[1:]
    total = sum(padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    return total - mask


def _despeckle(weights: np.ndarray) -> np.ndarray:
    """Keep an object's solid pixels (coverage >= 0.5) that touch another solid pixel, and partial
    ones only next to those (its anti-aliased rim): isolated noise pixels that happen to lie near
    the colour's blend line would otherwise stretch the shape's bounding box and pull its centroid."""
    solid = weights >= 0.5
    solid &= _neighbours(solid) > 0
    return np.where(solid | (_neighbours(solid) > 0), weights, 0.0).astype(np.float32)


def _weighted_centroids(weights: np.ndarray, min_weight: float) -> np.ndarray:
    """Coverage-weighted ``(x, y)`` per frame of ``(F, H, W)`` weights: ``(F, 2)``, NaN where the
    frame holds less than ``min_weight`` (weighting by coverage gives sub-pixel centres)."""
    total = weights.sum(axis=(1, 2), dtype=np.float64)
    xs = weights.sum(axis=1, dtype=np.float64) @ np.arange(weights.shape[2])
    ys = weights.sum(axis=2, dtype=np.float64) @ np.arange(weights.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.stack([xs / total, ys / total], 1)
    out[total < min_weight] = np.nan
    return out


def shape_tracks(frames, background=None, min_pixels: int = 6) -> np.ndarray:
    """Object-centroid tracking for shapes-world-like clips: one track per named colour.

    Background = ``background`` (name or RGB) or the most common border colour; foreground =
    pixels > ``_FG_THRESHOLD`` from it, each assigned to the nearest named colour (see
    :func:`color_layers`). A colour present (>= ``min_pixels`` pixels) in at least half the frames
    is an object; its track is the coverage-weighted centroid per frame.

    Args:
        frames: uint8 ``(F, H, W, 3)``.
    Returns:
        float64 ``(N, F, 2)`` pixel ``(x, y)``, NaN where the object is absent; largest object first;
        ``(0, F, 2)`` when nothing is found.
    """
    frames = _check_clip(frames)
    objs = _objects(frames, background, min_pixels)
    out = [_weighted_centroids(w, min_pixels * 0.5) for _, w in objs]
    return np.stack(out) if out else np.zeros((0, len(frames), 2))


# ---- point tracking (any video) ------------------------------------------------------------------


def _gray(frames: np.ndarray) -> np.ndarray:
    """float32 ``(F, H, W)`` channel mean. Not luma: under luma a blue object on the dark-blue
    background differs by ~4 levels, under the mean by ~48 (every shapes-world pair >= 43)."""
    return frames.astype(np.float32).mean(-1)


def _box_mean(image: np.ndarray, window: int) -> np.ndarray:
    """Mean over the ``window x window`` box centred on every pixel (edges replicated): ``(H, W)``."""
    r = window // 2
    padded = np.pad(image, r + 1, mode="edge").astype(np.float64)
    c = padded.cumsum(0).cumsum(1)
    h, w = image.shape
    total = c[window:window + h, window:window + w] - c[:h, window:window + w] - c[window:window + h, :w] + c[:h, :w]
    return total / window**2


def _patches(padded: np.ndarray, pos: np.ndarray, offset: int, window: int) -> np.ndarray:
    """``(N, window, window)`` patches of a padded ``(H', W')`` image centred on ``pos`` (N, 2)
    integer ``(x, y)`` of the unpadded image; ``offset`` = padding - window // 2."""
    span = np.arange(window)
    rows = pos[:, 1, None] + offset + span
    cols = pos[:, 0, None] + offset + span
    return padded[rows[:, :, None], cols[:, None, :]]


def seed_points(gray: np.ndarray, grid: int = 8, window: int = 7, min_energy: float = 25.0) -> np.ndarray:
    """Grid points over textured areas of one grayscale frame: int ``(N, 2)`` ``(x, y)``.

    The grid has spacing ``grid`` px, inset by half a spacing; a point is kept when the mean squared
    gradient over its ``window`` box is >= ``min_energy`` (levels²/px²), because block matching on a
    flat patch has no unique answer.
    """
    gx = np.zeros_like(gray)
    gy = np.zeros_like(gray)
    gx[:, 1:-1] = (gray[:, 2:] - gray[:, :-2]) / 2
    gy[1:-1] = (gray[2:] - gray[:-2]) / 2
    energy = _box_mean(gx * gx + gy * gy, window)
    h, w = gray.shape
    ys, xs = np.meshgrid(np.arange(grid // 2, h, grid), np.arange(grid // 2, w, grid), indexing="ij")
    pts = np.stack([xs.ravel(), ys.ravel()], 1)
    return pts[energy[pts[:, 1], pts[:, 0]] >= min_energy]


def _match(prev: np.ndarray, nxt: np.ndarray, pos: np.ndarray, window: int, max_disp: int) -> np.ndarray:
    """Block matching: for each point, the integer shift ``(dx, dy)`` in ``[-max_disp, max_disp]²``
    minimising the SSD between its patch in ``prev`` and the shifted patch in ``nxt``. A tiny
    penalty on ``|d|²`` breaks ties (flat or repetitive patches) towards staying put. ``(N, 2)``."""
    pad = window // 2 + max_disp
    a_pad, b_pad = np.pad(prev, pad, mode="edge"), np.pad(nxt, pad, mode="edge")
    template = _patches(a_pad, pos, max_disp, window)
    best = np.full(len(pos), np.inf)
    shift = np.zeros((len(pos), 2), np.int64)
    for dy in range(-max_disp, max_disp + 1):
        for dx in range(-max_disp, max_disp + 1):
            d = np.array([dx, dy])
            cand = _patches(b_pad, pos + d, max_disp, window)
            cost = ((cand - template) ** 2).sum(axis=(1, 2)) + 1e-3 * (dx * dx + dy * dy)
            better = cost < best
            best[better], shift[better] = cost[better], d
    return shift


def point_tracks(frames, grid: int = 8, window: int = 7, max_disp: int = 6, max_points: int = 1024,
                 min_energy: float = 25.0) -> np.ndarray:
    """A general point tracker for any video: grid points on textured areas, block-matched frame to frame.

    This stands in for CoTracker (which DMT uses for its motion-fidelity score) because its weights
    cannot be downloaded here. Like CoTracker's grid mode it seeds points in the first frame only
    (:func:`seed_points`; at most ``max_points``, evenly subsampled); each is then followed from
    frame n to n+1 by the integer shift of smallest SSD of its ``window x window`` grayscale patch
    within ``±max_disp`` px. No sub-pixel refinement, occlusion or re-detection: a point leaving the
    frame is NaN from then on. Motion faster than ``max_disp`` px/frame is not followed.

    Args:
        frames: uint8 ``(F, H, W, 3)``.
    Returns:
        float64 ``(N, F, 2)`` pixel ``(x, y)``; ``(0, F, 2)`` when the first frame has no texture.
    """
    frames = _check_clip(frames)
    if grid < 1 or window < 1 or max_disp < 0:
        raise UserError(f"point tracker needs grid >= 1, window >= 1, max_disp >= 0; got {grid}, {window}, {max_disp}")
    gray = _gray(frames)
    pos = seed_points(gray[0], grid, window, min_energy)
    if len(pos) > max_points:
        pos = pos[np.round(np.linspace(0, len(pos) - 1, max_points)).astype(np.int64)]
    h, w = gray.shape[1:]
    out = np.full((len(pos), len(frames), 2), np.nan)
    alive = np.ones(len(pos), bool)
    out[:, 0] = pos
    for n in range(1, len(frames)):
        if not alive.any():
            break
        pos = pos.copy()
        pos[alive] += _match(gray[n - 1], gray[n], pos[alive], window, max_disp)
        alive &= (pos[:, 0] >= 0) & (pos[:, 0] < w) & (pos[:, 1] >= 0) & (pos[:, 1] < h)
        out[alive, n] = pos[alive]
    return out


def real_video_tracker() -> str:
    """The tracker ``auto`` takes for real footage: ``klt`` (OpenCV's Lucas–Kanade on a query grid) when
    OpenCV is installed (the ``eval`` extra), else the block matcher ``points``."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        return "points"
    return "klt"


def tracks(frames, method: str = "auto", grid: int | None = None, foreground=None, weights=None,
           device: str = "cpu") -> tuple[np.ndarray, str]:
    """Tracks of a clip by ``method``: "shapes" (:func:`shape_tracks`), "klt"
    (:func:`sma_guidance.tracking.klt_tracks`), "cotracker" (:func:`sma_guidance.tracking.cotracker_tracks`,
    CoTracker3 from ``weights`` on disk), "points" (:func:`point_tracks`) or "auto" — shapes for a
    shapes-world render (:func:`looks_like_shapes`), else :func:`real_video_tracker`'s.

    ``grid`` (default DMT's 55) and ``foreground`` (a first-frame mask ``(H, W)``: only DMT's query points in
    the box over it, :func:`sma_guidance.tracking.dmt_box_mask`) apply to the grid trackers, klt and cotracker.

    Returns:
        ``(tracks (N, F, 2) pixels, method used)``.
    """
    frames = _check_clip(frames)
    if method not in TRACKERS:
        raise UserError(f"unknown tracker {method!r}; choose one of {', '.join(TRACKERS)}")
    if method == "auto":
        method = "shapes" if looks_like_shapes(frames) else real_video_tracker()
    if method not in GRID_TRACKERS:
        return (shape_tracks(frames) if method == "shapes" else point_tracks(frames)), method
    grid = grid or DMT_GRID
    box = None if foreground is None else dmt_box_mask(foreground)
    if method == "cotracker":
        return cotracker_tracks(frames, grid, box, weights, device), method
    points = cotracker_grid(*frames.shape[1:3], grid)
    if box is not None:
        points = points[points_in_box(box, grid)]
    return klt_tracks(frames, points=points), method


_PLAIN_BACKGROUND = 0.6  # share of a shapes-world frame within 20 RGB of its background (renders: >= 0.86)
_FLAT_COLOUR = 0.5  # share of its other pixels that are one named colour at >= 80 % (renders: >= 0.74)


def looks_like_shapes(frames: np.ndarray) -> bool:
    """True when the clip is a shapes-world render: a plain background (most pixels within 20 RGB of it),
    flat-coloured objects (most other pixels a named colour, not a blend), 1–4 of them covering < 50 % of
    the frame. Real footage fails the first two (the shared clips: 5–28 % near their border colour, 0–20 %
    flat), however its colours happen to sort into the named ones."""
    labels, alpha, names = color_layers(frames)
    distance = np.linalg.norm(frames.astype(np.float32) - estimate_background(frames), axis=-1)
    foreground = distance > _FG_THRESHOLD
    if (distance < 20).mean() < _PLAIN_BACKGROUND:
        return False
    if foreground.any() and (alpha[foreground] >= 0.8).mean() < _FLAT_COLOUR:
        return False
    objs = _objects(frames, colour_layers=(labels, alpha, names))
    if not 1 <= len(objs) <= 4:
        return False
    cover = sum(float(w.sum()) for _, w in objs) / (frames.shape[0] * frames.shape[1] * frames.shape[2])
    return cover < 0.5


def normalise_tracks(tr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel tracks → fractions of the frame (x / width, y / height), so clips of different sizes compare."""
    return np.asarray(tr, np.float64) / np.array([width, height], np.float64)


# ---- DMT motion fidelity -------------------------------------------------------------------------


def _displacement_parts(tracks: np.ndarray, still: float) -> tuple[np.ndarray, ...]:
    """Per track and frame step of ``tracks`` ``(N, F, 2)``: the unit displacement ``(N, F-1, 2)`` (0 where the
    point is still or lost), and as floats ``(N, F-1)`` whether it moves (length >= ``still``), whether it is
    still (known, shorter) and whether it is known at all."""
    step = np.diff(tracks, axis=1)
    length = np.linalg.norm(step, axis=-1)
    known = np.isfinite(length)
    moving = known & (length >= still)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = np.where(moving[..., None], step / length[..., None], 0.0)
    return unit, moving.astype(np.float64), (known & ~moving).astype(np.float64), known.astype(np.float64)


def _check_track_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:] or a.shape[2] != 2:
        raise UserError(f"tracks must be (N, F, 2) with the same F, got {a.shape} and {b.shape}")
    return a, b


def _mean_or_nan(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.where(count > 0, count, 1.0), np.nan)


def track_correlation(input_tracks, output_tracks, still=_STILL_PX, both_still: float = 1.0) -> np.ndarray:
    """``corr(τ, τ̃)`` for every pair: float64 ``(N, M)``, the mean over frames of the cosine between
    the two tracks' displacements ``track[1:] - track[:-1]``.

    Frames where either displacement is NaN are ignored. A displacement shorter than ``still``
    counts as no motion: both still → 1 (they agree), one still and one moving → 0 (no evidence
    either way). A pair with no usable frame is NaN. Computed as sums over frames by matrix products,
    in ``O(N·M)`` memory: DMT's 55 x 55 grid is 3025 tracks a side.

    Args:
        input_tracks: ``(N, F, 2)``; output_tracks: ``(M, F, 2)``, same F and units.
        still: threshold in track units; a pair ``(input, output)`` when their units differ.
        both_still: what a frame where both are still counts (1: agreement); NaN leaves it out.
    """
    a, b = _check_track_pair(input_tracks, output_tracks)
    still_a, still_b = (still, still) if np.isscalar(still) else still
    unit_a, _, rest_a, known_a = _displacement_parts(a, still_a)
    unit_b, _, rest_b, known_b = _displacement_parts(b, still_b)
    total = unit_a[..., 0] @ unit_b[..., 0].T + unit_a[..., 1] @ unit_b[..., 1].T  # cosines where both move
    count = known_a @ known_b.T
    both_rest = rest_a @ rest_b.T
    if np.isnan(both_still):
        count = count - both_rest
    else:
        total = total + both_still * both_rest
    return _mean_or_nan(total, count)


def paired_correlation(input_tracks, output_tracks, still=_STILL_PX, both_still: float = 1.0) -> np.ndarray:
    """The diagonal of :func:`track_correlation`: track ``i`` against track ``i`` only, float64 ``(N,)`` for
    ``N`` tracks on each side."""
    a, b = _check_track_pair(input_tracks, output_tracks)
    if a.shape[0] != b.shape[0]:
        raise UserError(f"paired tracks need as many on each side, got {a.shape[0]} and {b.shape[0]}")
    still_a, still_b = (still, still) if np.isscalar(still) else still
    unit_a, _, rest_a, known_a = _displacement_parts(a, still_a)
    unit_b, _, rest_b, known_b = _displacement_parts(b, still_b)
    total = (unit_a * unit_b).sum((-1, -2))
    count = (known_a * known_b).sum(-1)
    both_rest = (rest_a * rest_b).sum(-1)
    if np.isnan(both_still):
        count = count - both_rest
    else:
        total = total + both_still * both_rest
    return _mean_or_nan(total, count)


def motion_fidelity(input_tracks, output_tracks, still=_STILL_PX) -> float:
    """DMT's motion fidelity score (Yatim et al., "Space-Time Diffusion Features for Zero-Shot
    Text-Driven Motion Transfer", CVPR 2024): how well the output's tracks follow the input's.

    ``½ · [mean over output tracks τ̃ of max over input tracks τ of corr(τ, τ̃) + mean over input
    tracks of max over output tracks of corr]``, with ``corr`` from :func:`track_correlation`
    (mean cosine of per-frame displacements). Both directions matter: every output motion should
    exist in the input, and every input motion should be reproduced.

    Args:
        input_tracks: ``(N, F, 2)``; output_tracks: ``(M, F, 2)`` in the same units (e.g.
            :func:`normalise_tracks`) and frame count.
        still: see :func:`track_correlation`; it is in TRACK units (default 0.25 for pixels), so
            scale it with the tracks, e.g. ``0.25 / size`` for :func:`normalise_tracks` output.
    Returns:
        In [-1, 1]: 1 = identical motion, -1 = reversed motion; NaN when either side has no track.
    """
    corr = track_correlation(input_tracks, output_tracks, still)
    if corr.size == 0 or np.isnan(corr).all():
        return math.nan
    with warnings.catch_warnings():  # nanmax of an all-NaN row warns; that row just drops out
        warnings.simplefilter("ignore", RuntimeWarning)
        out_side = np.nanmean(np.nanmax(corr, axis=0))
        in_side = np.nanmean(np.nanmax(corr, axis=1))
    return float(0.5 * (out_side + in_side))


def path_error(input_tracks, output_tracks, still=_STILL_PX) -> float:
    """How far the output's path strays from the input's: mean over frames of ``‖(τ̃_t − τ̃_0) −
    (τ_t − τ_0)‖``, the distance between the two tracks' displacements from their first frame, for
    every input track ``τ`` and its best-agreeing output track ``τ̃`` (highest :func:`track_correlation`),
    averaged over input tracks; frames where either is NaN are skipped.

    :func:`motion_fidelity` scores directions only, so an object that moves the right way but half as
    far scores as high as one that follows the path; this error sees the distance. 0 = the same path
    (wherever it starts); in track units (frame fractions for :func:`normalise_tracks`).

    Args:
        input_tracks: ``(N, F, 2)``; output_tracks: ``(M, F, 2)``, same units and F.
        still: see :func:`track_correlation` (only used to match the tracks).
    Returns:
        ``>= 0``, lower is better; NaN when either side has no track.
    """
    corr = track_correlation(input_tracks, output_tracks, still)
    if corr.size == 0 or np.isnan(corr).all():
        return math.nan
    a, b = np.asarray(input_tracks, np.float64), np.asarray(output_tracks, np.float64)
    errors = []
    for i, row in enumerate(corr):
        if np.isnan(row).all():
            continue
        match = b[int(np.nanargmax(row))]
        da, db = a[i] - _first_valid(a[i]), match - _first_valid(match)
        distance = np.linalg.norm(db - da, axis=-1)
        if np.isfinite(distance).any():
            errors.append(np.nanmean(distance))
    return float(np.mean(errors)) if errors else math.nan


# ---- the published formulas --------------------------------------------------------------------
#
# Motion fidelity, each published variant under its own name. Every variant scores the same per-pair
# similarity (track_correlation); they differ in how the pairs are reduced:
#
# - "dmt": DMT's released motion_fidelity_score.py (Yatim et al., CVPR 2024): the similarity matrix of output
#   tracks against input tracks, MINUS THE IDENTITY (both sets come from CoTracker's same query grid there, so
#   a track may not match the input track of its own grid point; `same_grid`), then the maximum over input
#   tracks and the mean over output tracks. One direction only.
# - "ditflow": DiTFlow's eval/motion_fidelity_score.py (Pondaven et al., CVPR 2025): the same reduction, on
#   clips cut to the shorter one's frames instead of resampled to the input's.
# - "symmetric": ours, motion_fidelity above: both directions averaged, no identity (object tracks).
# - "paired": ours, for grid tracks: track i against track i (the same query point), frames where both are
#   still left out, "still" as in "symmetric" (shorter than `still`: Lucas-Kanade drifts ~1e-4 px a frame on a
#   frozen clip, which the exact-zero test would take for a direction). The default for grid tracks: of the four, the only one that scores a still or reversed copy
#   of a real clip far below the clip itself (pipelines/bench/RESULTS.md, "Scoring real video").
#
# Static tracks: DMT's and DiTFlow's code divide a displacement by its length, so a point that does not move
# between two frames gives 0/0 and the whole score NaN. Here a still displacement counts explicitly: both still
# -> 1, one still and one moving -> 0. "Still" is what each formula's code would see: for "dmt" and "ditflow"
# only a displacement of length 0 (their code takes any other as a direction, however small), for "symmetric"
# one shorter than `still` (0.25 px by default: a tracker's sub-pixel jitter on a static point is not motion).

FORMULAS = ("dmt", "ditflow", "symmetric", "paired")
DEFAULT_FORMULA = "symmetric"  # for object tracks; grid tracks (klt) are scored "paired" by default


def similarity_matrix(output_tracks, input_tracks, still=_STILL_PX) -> np.ndarray:
    """DMT's similarity matrix: ``(M, N)`` for ``M`` output and ``N`` input tracks ``(·, F, 2)``, entry
    ``(m, n)`` the mean over frames of the cosine of their displacements (static handling: module docstring)."""
    still_pair = (still, still) if np.isscalar(still) else (still[1], still[0])
    return track_correlation(output_tracks, input_tracks, still_pair)


def _nanmean_of_rowmax(matrix: np.ndarray) -> float:
    if matrix.size == 0 or np.isnan(matrix).all():
        return math.nan
    with warnings.catch_warnings():  # an all-NaN row (a track lost in every frame) drops out
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(np.nanmax(matrix, axis=1)))


_EXACTLY_STILL = 1e-12  # below any real displacement in pixels or frame fractions; 0 itself


def fidelity(input_tracks, output_tracks, formula: str = DEFAULT_FORMULA, still=_STILL_PX,
             same_grid: bool = True) -> float:
    """Motion fidelity of ``output_tracks`` ``(M, F, 2)`` against ``input_tracks`` ``(N, F, 2)`` by ``formula``
    (:data:`FORMULAS`). The tracks must span the same frames: for ``"ditflow"`` cut both clips to the shorter
    one first (:func:`fidelity_variants` does). ``still``: the ``"symmetric"`` formula's threshold, a scalar or
    ``(input, output)`` in each side's units (the published formulas take only a zero displacement as still).
    ``same_grid``: track ``i`` of both sets starts at the same query point (CoTracker's grid, as in DMT's
    script), so the published formulas subtract the identity; pass ``False`` for tracks that are not paired
    that way (object centroids, points seeded per clip), where subtracting it would only penalize track 0
    against track 0. NaN when a side has no track."""
    if formula not in FORMULAS:
        raise UserError(f"unknown motion-fidelity formula {formula!r}; choose one of {', '.join(FORMULAS)}")
    still_in, still_out = (still, still) if np.isscalar(still) else still
    if formula == "paired":  # ours: sub-pixel tracker drift on a static point (Lucas-Kanade's, ~1e-4 px) is no motion
        return paired_fidelity(input_tracks, output_tracks, (still_in, still_out), same_grid)
    if formula != "symmetric":
        still_in = still_out = _EXACTLY_STILL  # the published code: any nonzero displacement is a direction
    matrix = similarity_matrix(output_tracks, input_tracks, (still_in, still_out))  # (M out, N in)
    if formula == "symmetric":
        if matrix.size == 0 or np.isnan(matrix).all():
            return math.nan
        return 0.5 * (_nanmean_of_rowmax(matrix) + _nanmean_of_rowmax(matrix.T))
    if same_grid and matrix.shape[0] == matrix.shape[1]:
        matrix = matrix - np.eye(matrix.shape[0])
    return _nanmean_of_rowmax(matrix)


def paired_fidelity(input_tracks, output_tracks, still=_STILL_PX, same_grid: bool = True) -> float:
    """Ours, for grid tracks: each output track against the input track of the same query point (track ``i``
    with track ``i``), the mean over frames of their displacements' cosine, frames where both are still left
    out (one still, one moving: 0), averaged over the pairs that move at all. No maximum over other tracks:
    the motion must happen where it happened in the input, so a still or reversed clip cannot borrow a
    matching motion from elsewhere in the frame (`pipelines/bench/RESULTS.md`, "Scoring real video").
    NaN without grid pairing (``same_grid=False``, or another number of tracks) or without motion."""
    a, b = np.asarray(input_tracks, np.float64), np.asarray(output_tracks, np.float64)
    if not same_grid or a.shape[0] != b.shape[0] or a.shape[0] == 0:
        return math.nan
    pairs = paired_correlation(a, b, still, both_still=math.nan)
    return float(np.nanmean(pairs)) if np.isfinite(pairs).any() else math.nan


def fidelity_variants(input_tracks, output_tracks, output_tracks_cut=None, input_tracks_cut=None,
                      still=_STILL_PX, same_grid: bool = True) -> dict[str, float]:
    """Every formula at once: ``{"dmt", "ditflow", "symmetric"}``. ``output_tracks`` span the input's frames
    (the output resampled to them); DiTFlow's variant takes ``input_tracks_cut`` / ``output_tracks_cut``, both
    clips cut to the shorter one (default: the tracks as given, right when the clips have equal length)."""
    cut_in = input_tracks if input_tracks_cut is None else input_tracks_cut
    cut_out = output_tracks if output_tracks_cut is None else output_tracks_cut
    return {
        "dmt": fidelity(input_tracks, output_tracks, "dmt", still, same_grid),
        "ditflow": fidelity(cut_in, cut_out, "ditflow", still, same_grid),
        "symmetric": fidelity(input_tracks, output_tracks, "symmetric", still),
        "paired": fidelity(input_tracks, output_tracks, "paired", still, same_grid),
    }


def _first_valid(track: np.ndarray) -> np.ndarray:
    """A track's ``(2,)`` position in its first frame with one (NaNs when it has none)."""
    valid = np.nonzero(np.isfinite(track).all(-1))[0]
    return track[valid[0]] if len(valid) else np.full(2, np.nan)


# ---- smoothness ----------------------------------------------------------------------------------


def temporal_consistency(frames) -> float:
    """Mean cosine similarity of consecutive frames' pixel vectors, after subtracting the clip's
    mean colour (else any two frames of a bright clip would look alike). 1 = identical frames;
    flicker and noise lower it. Two frames both equal to the mean colour count 1, one of them 0.

    Args:
        frames: uint8 ``(F, H, W, 3)``, F >= 2.
    """
    frames = _check_clip(frames)
    x = frames.reshape(len(frames), -1, 3).astype(np.float64)
    x = (x - x.mean(axis=(0, 1))).reshape(len(frames), -1)
    a, b = x[:-1], x[1:]
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (a * b).sum(1) / (na * nb)
    cos = np.where((na > 0) & (nb > 0), cos, np.where((na > 0) | (nb > 0), 0.0, 1.0))
    return float(np.clip(cos, -1.0, 1.0).mean())


def frame_difference(frames) -> float:
    """Mean absolute change between consecutive frames, ``|f[n+1] - f[n]| / 255`` averaged over
    pixels, channels and pairs: 0 = static; lower is smoother."""
    frames = _check_clip(frames)
    return float(np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() / 255.0)


# ---- shapes-world edit fidelity ------------------------------------------------------------------

# The radial profile r(φ) of an object (how far its coverage reaches from its centroid along each
# direction) is flat for a circle and has a 4-fold ripple for a square and a 3-fold one for a triangle,
# whatever their orientation: a bounding-box fill ratio reads a square tilted by 15° (fill 0.67) as a
# triangle and one tilted by 8° (0.78) as a circle. Relative amplitudes |r̂_k| / r̂_0 measured on renders
# (every object size 10–24 px at 64 px and 5–12 px at 32 px, random sub-pixel centres, upright and at
# random angles): circle k=3 and k=4 ≤ 0.006; square k=4 0.058–0.072, k=3 ≤ 0.005; triangle k=3
# 0.106–0.137, k=4 ≤ 0.007. Each is divided by its ideal value below, so 1 reads "as much ripple as the
# ideal polygon" and 0 "round"; an object is a polygon from halfway between.
_SQUARE_RIPPLE = 0.068  # |r̂_4| / r̂_0 of an ideal square
_TRIANGLE_RIPPLE = 0.13  # |r̂_3| / r̂_0 of an ideal equilateral triangle
_POLYGON_MIN_RIPPLE = 0.5
_RAYS = 72
_RAY_STEP = 0.25  # px between samples along a ray


def _largest_blob(weights: np.ndarray) -> np.ndarray:
    """``weights (H, W)`` outside its 8-connected blob of the most coverage set to 0: a second object of
    the same colour would otherwise put the centroid between the two."""
    labels, _ = _component_labels(weights > 0)
    if labels.max() <= 1:
        return weights
    mass = np.bincount(labels.ravel(), weights=weights.ravel())
    mass[0] = 0
    return np.where(labels == int(mass.argmax()), weights, 0).astype(weights.dtype)


def radial_profile(weights: np.ndarray, rays: int = _RAYS) -> np.ndarray:
    """r(φ_j) = ∫ coverage(c + t·(cos φ_j, sin φ_j)) dt from the coverage centroid c, φ_j = 2πj / rays:
    float64 ``(rays,)`` in px. Integrating the (bilinearly sampled) coverage rather than finding an
    edge keeps the anti-aliased rim's sub-pixel position. ``weights (H, W)`` must not be empty."""
    h, w = weights.shape
    weights = weights.astype(np.float64)
    area = weights.sum()
    cy = weights.sum(1) @ np.arange(h) / area
    cx = weights.sum(0) @ np.arange(w) / area
    phi = np.arange(rays) * 2 * math.pi / rays
    t = np.arange(0.5, max(h, w) / _RAY_STEP) * _RAY_STEP
    x, y = cx + np.cos(phi)[:, None] * t, cy + np.sin(phi)[:, None] * t
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    padded = np.pad(weights, 1)  # samples off the frame read 0

    def at(row: np.ndarray, col: np.ndarray) -> np.ndarray:
        return padded[np.clip(row + 1, 0, h + 1), np.clip(col + 1, 0, w + 1)]

    samples = (at(y0, x0) * (1 - fx) * (1 - fy) + at(y0, x0 + 1) * fx * (1 - fy)
               + at(y0 + 1, x0) * (1 - fx) * fy + at(y0 + 1, x0 + 1) * fx * fy)
    return samples.sum(1) * _RAY_STEP


def shape_features(weights: np.ndarray) -> tuple[float, float]:
    """``(triangle ripple, square ripple)`` of one object's coverage ``(H, W)``: the 3rd and 4th
    harmonics of its :func:`radial_profile` relative to the mean radius, each divided by an ideal
    triangle's (square's) value, so a circle gives ≈ (0, 0), a square ≈ (0, 1), a triangle ≈ (1, 0) at
    any orientation; NaNs when empty. Only the blob holding most of the coverage counts."""
    if not weights.sum() > 0:
        return math.nan, math.nan
    spectrum = np.abs(np.fft.rfft(radial_profile(_largest_blob(weights))))
    return float(spectrum[3] / spectrum[0] / _TRIANGLE_RIPPLE), float(spectrum[4] / spectrum[0] / _SQUARE_RIPPLE)


def classify_shape(weights: np.ndarray) -> str | None:
    """SHAPES entry for one object's coverage ``(H, W)`` (see the ripples above); None when empty."""
    triangle, square = shape_features(weights)
    if math.isnan(triangle):
        return None
    if max(triangle, square) < _POLYGON_MIN_RIPPLE:
        return "circle"
    return "triangle" if triangle >= square else "square"


def detect_object(frames, background=None) -> dict | None:
    """The dominant (largest) object of a shapes-world-like clip.

    colour = the named colour whose blend line (see :func:`color_layers`) the object's pixels
    lie on, which is the named colour nearest to their median; shape = majority vote of
    :func:`classify_shape` over the frames where the object is largest (>= 90 % of its largest
    coverage: occlusion or a clipped edge only ever shrinks it).

    Returns:
        ``{"color": name, "shape": one of SHAPES, "centroids": (F, 2) float64 pixels (NaN where
        absent)}``, or None when no object is found.
    """
    frames = _check_clip(frames, min_frames=1)
    objs = _objects(frames, background)
    if not objs:
        return None
    color, weights = objs[0]
    per_frame = weights.sum(axis=(1, 2))
    best = np.nonzero(per_frame >= 0.9 * per_frame.max())[0]
    votes = [s for s in (classify_shape(weights[i]) for i in best) if s is not None]
    shape = max(SHAPES, key=votes.count) if votes else None
    return {"color": color, "shape": shape, "centroids": _weighted_centroids(weights, 3.0)}


def edit_fidelity(frames, prompt: str) -> dict:
    """Does the clip show the object the prompt asks for (shapes world)?

    Returns:
        ``{"color_match": bool, "shape_match": bool, "both": bool, "detected": detect_object(...)
        or None}``. Raises UserError (from :func:`shapes.parse_prompt`) when the prompt names no
        "<color> <shape>".
    """
    want = parse_prompt(prompt)
    found = detect_object(frames)
    color_ok = bool(found is not None and found["color"] == want["color"])
    shape_ok = bool(found is not None and found["shape"] == want["shape"])
    return {"color_match": color_ok, "shape_match": shape_ok, "both": color_ok and shape_ok, "detected": found}


# ---- appearance checks (shapes world) -------------------------------------------------------------

_BACKGROUND_TOLERANCE = 30.0  # RGB distance; the named backgrounds are >= 83 apart


def background_match(frames, name: str, tolerance: float = _BACKGROUND_TOLERANCE) -> bool:
    """Is the clip's background the named one, at its borders as well as inside?

    Per-channel medians of the outer 2-pixel ring and of the whole frames (objects cover a few percent,
    so the median is the background) must both lie within ``tolerance`` (RGB distance) of
    ``BACKGROUNDS[name]``: a VAE that tints the borders fails even when the middle is right.
    """
    frames = _check_clip(frames, min_frames=1).astype(np.float32)
    if name not in BACKGROUNDS:
        raise UserError(f"unknown background {name!r}; choose one of {', '.join(BACKGROUNDS)}")
    target = np.asarray(BACKGROUNDS[name], np.float32)
    ring = np.concatenate([frames[:, :2].reshape(-1, 3), frames[:, -2:].reshape(-1, 3),
                           frames[:, :, :2].reshape(-1, 3), frames[:, :, -2:].reshape(-1, 3)])
    return all(float(np.linalg.norm(np.median(part, axis=0) - target)) <= tolerance
               for part in (ring, frames.reshape(-1, 3)))


def _component_labels(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """8-connected components of a bool ``(H, W)`` mask: int labels ``(H, W)`` (0 outside the mask,
    k for the k-th component found) and each component's pixel count (entry k - 1)."""
    labels = np.zeros(mask.shape, np.int32)
    sizes: list[int] = []
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        sizes.append(0)
        stack = [start]
        labels[start] = len(sizes)
        while stack:
            i, j = stack.pop()
            sizes[-1] += 1
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    a, b = i + di, j + dj
                    if 0 <= a < mask.shape[0] and 0 <= b < mask.shape[1] and mask[a, b] and not labels[a, b]:
                        labels[a, b] = len(sizes)
                        stack.append((a, b))
    return labels, sizes


def _components(mask: np.ndarray, min_pixels: int) -> int:
    """How many 8-connected components of ``min_pixels`` or more a bool ``(H, W)`` mask holds."""
    return sum(size >= min_pixels for size in _component_labels(mask)[1])


def single_clean_object(frames, max_stray_pixels: int = 6) -> bool:
    """Does every frame show exactly one object: the clip's dominant colour as one solid blob (coverage
    >= 0.5, 8-connected, >= 6 pixels), and at most ``max_stray_pixels`` solid pixels of other colours?"""
    frames = _check_clip(frames, min_frames=1)
    labels, alpha, names = layers = color_layers(frames)
    objs = _objects(frames, colour_layers=layers)  # the dominant object as detect_object finds it
    if not objs:
        return False
    dominant = names.index(objs[0][0])
    solid = alpha >= 0.5
    for k in range(len(frames)):
        if _components(solid[k] & (labels[k] == dominant), 6) != 1:
            return False
        if int((solid[k] & (labels[k] != dominant) & (labels[k] >= 0)).sum()) > max_stray_pixels:
            return False
    return True


# ---- motion classification -----------------------------------------------------------------------

_MIN_TRAVEL_PX = 1.5  # an object whose path spans less than this has not moved
_STRAIGHT = 0.8  # |net displacement| / path length of a linear motion
_CIRCLE_TURN = math.radians(90)  # total signed turning of a circular arc (the clips sweep >= 180°)


def _sign_changes(values: np.ndarray, tol: float) -> tuple[int, int]:
    """``(changes, first sign)`` of a 1-D series, ignoring entries with ``|v| < tol`` (the step
    straddling a turn can be ~0 and would otherwise count as its own reversal)."""
    signs = np.sign(values[np.abs(values) >= tol])
    if len(signs) == 0:
        return 0, 0
    return int((signs[1:] != signs[:-1]).sum()), int(signs[0])


def _turning(steps: np.ndarray, tol: float) -> np.ndarray:
    """Signed turning angles between successive non-tiny steps ``(K, 2)``, y down: > 0 is clockwise
    on screen (the cross product ``dx₀·dy₁ - dy₀·dx₁`` convention of shapes.py)."""
    s = steps[np.linalg.norm(steps, axis=1) >= tol]
    if len(s) < 2:
        return np.zeros(0)
    a, b = s[:-1], s[1:]
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    return np.arctan2(cross, (a * b).sum(1))


def _path(centroids) -> np.ndarray | None:
    """The present points of an ``(F, 2)`` path, or None when more than half are missing or the
    path spans < ``_MIN_TRAVEL_PX``."""
    c = np.asarray(centroids, np.float64)
    if c.ndim != 2 or c.shape[1] != 2:
        raise UserError(f"centroids must be (frames, 2), got shape {c.shape}")
    p = c[~np.isnan(c).any(1)]
    if len(p) < 3 or 2 * len(p) < len(c):
        return None
    if (p.max(0) - p.min(0)).max() < _MIN_TRAVEL_PX:
        return None
    return p


def _linear_label(d: np.ndarray) -> str:
    """left/right/up/down within 22.5° of the axis, else diagonal (y down: up is -y)."""
    angle = math.degrees(math.atan2(-d[1], d[0])) % 360  # on-screen angle, counterclockwise from right
    for name, centre in (("right", 0), ("up", 90), ("left", 180), ("down", 270), ("right", 360)):
        if abs(angle - centre) <= 22.5:
            return name
    return "diagonal"


def classify_motion(centroids) -> str | None:
    """Which of shapes.MOTIONS an object's centroid path ``(F, 2)`` (pixels, y down) shows.

    In order: zigzag = x progresses monotonically while y reverses >= 2 times; bouncing = y goes
    down then up (one reversal) with horizontal travel <= 0.6 x vertical travel (a circular arc
    through its lowest point with monotone x travels at least as far sideways as vertically);
    circle_cw/ccw = the signed turning angles sum to >= 90° in one sense (> 0 clockwise on screen)
    and no single turn holds most of it; linear = path straightness >= 0.8, named by the direction
    of the net displacement (axis ± 22.5°, else diagonal).

    Returns:
        a MOTIONS key, or None when the object is missing in over half the frames, barely moves
        (path spans < 1.5 px), or the path fits no class.
    """
    p = _path(centroids)
    if p is None:
        return None
    steps = np.diff(p, axis=0)
    tol = max(0.3, 0.15 * float(np.abs(steps).max()))
    x_changes, _ = _sign_changes(steps[:, 0], tol)
    y_changes, y_first = _sign_changes(steps[:, 1], tol)
    travel_x, travel_y = np.abs(steps[:, 0]).sum(), np.abs(steps[:, 1]).sum()
    if x_changes == 0 and y_changes >= 2 and travel_x >= tol:
        return "zigzag"
    if y_changes == 1 and y_first > 0 and x_changes == 0 and travel_x <= 0.6 * travel_y:
        return "bouncing"
    turns = _turning(steps, tol)
    total = float(turns.sum()) if len(turns) else 0.0
    if abs(total) >= _CIRCLE_TURN and np.abs(turns).max() <= 0.75 * abs(total):
        return "circle_cw" if total > 0 else "circle_ccw"
    net = p[-1] - p[0]
    length = float(np.linalg.norm(steps, axis=1).sum())
    if length > 0 and np.linalg.norm(net) >= _STRAIGHT * length:
        return _linear_label(net)
    return None


def motion_direction_match(centroids, motion: str) -> bool:
    """Does the path ``(F, 2)`` move as ``motion`` asks?

    Linear motions: the net displacement points the right way (left/right/up/down: within 45° of
    the axis; diagonal: within 22.5° of a diagonal), whatever the wobble. Circles: the signed
    turning (> 0 clockwise on screen) sums to >= 45° in the asked sense. zigzag/bouncing:
    :func:`classify_motion` says so. A missing or still object never matches.
    """
    if motion not in MOTIONS:
        raise UserError(f"unknown motion {motion!r}; choose one of {', '.join(MOTIONS)}")
    p = _path(centroids)
    if p is None:
        return False
    net = p[-1] - p[0]
    if motion in LINEAR_MOTIONS:
        return bool(net @ np.array(LINEAR_MOTIONS[motion]) > math.sqrt(0.5) * np.linalg.norm(net))
    if motion == "diagonal":
        return _linear_label(net) == "diagonal" and np.linalg.norm(net) >= _MIN_TRAVEL_PX
    if motion in ("circle_cw", "circle_ccw"):
        steps = np.diff(p, axis=0)
        total = float(_turning(steps, max(0.3, 0.15 * float(np.abs(steps).max()))).sum())
        return total >= math.radians(45) if motion == "circle_cw" else total <= -math.radians(45)
    return classify_motion(centroids) == motion


# ---- everything at once --------------------------------------------------------------------------


def evaluate(input_frames, output_frames, prompt: str | None = None, method: str = "auto", grid: int | None = None,
             foreground=None, tracker_weights=None, device: str = "cpu") -> dict:
    """All metrics of one motion transfer.

    The output is resampled to the input's frame count (nearest index) and both clips' tracks are
    compared in normalised coordinates, so sizes and lengths may differ. With "auto", the shapes
    tracker is used only when BOTH clips look like shapes-world clips, so the two track sets always
    come from the same tracker. ``grid``, ``foreground`` (the input's first-frame mask; the same box restricts
    both clips' grids, as in DMT's script), ``tracker_weights`` and ``device``: see :func:`tracks`.

    Returns:
        ``{"tracker", "formula", "motion_fidelity" (by the formula named: "paired" for klt's grid tracks, else
        :data:`DEFAULT_FORMULA`), "motion_fidelity_dmt", "motion_fidelity_ditflow", "motion_fidelity_symmetric",
        "motion_fidelity_paired" (every formula, :func:`fidelity`), "path_error",
        "input_tracks", "output_tracks",
        "temporal_consistency", "frame_difference"}`` (the last two of the OUTPUT; NaN fidelity when a side has no track)
        and, when ``prompt`` names a "<color> <shape>": ``"detected_color"``, ``"detected_shape"``,
        ``"color_match"``, ``"shape_match"``; when it also names a background: ``"background"``,
        ``"background_match"`` (:func:`background_match`); when it names a motion: ``"motion"``,
        ``"detected_motion"``, ``"motion_match"`` of the output's dominant object.
    """
    inp = _check_clip(input_frames, "input clip")
    out_full = _check_clip(output_frames, "output clip")
    if method not in TRACKERS:
        raise UserError(f"unknown tracker {method!r}; choose one of {', '.join(TRACKERS)}")
    out = resample_nearest(out_full, len(inp))
    if method == "auto":
        method = "shapes" if looks_like_shapes(inp) and looks_like_shapes(out) else real_video_tracker()
    def track(frames: np.ndarray) -> np.ndarray:
        return tracks(frames, method, grid, foreground, tracker_weights, device)[0]

    tr_in, tr_out = track(inp), track(out)
    (hi, wi), (ho, wo) = inp.shape[1:3], out.shape[1:3]
    still = (_STILL_PX / max(hi, wi), _STILL_PX / max(ho, wo))  # 0.25 px in each clip's own pixels
    norm_in, norm_out = normalise_tracks(tr_in, hi, wi), normalise_tracks(tr_out, ho, wo)
    shortest = min(len(inp), len(out_full))
    if len(out_full) == len(inp):
        cut_in, cut_out = norm_in, norm_out
    else:  # DiTFlow cuts both clips to the shorter one instead of resampling the output
        cut_in = norm_in[:, :shortest] if shortest == len(inp) else normalise_tracks(track(inp[:shortest]), hi, wi)
        cut_out = normalise_tracks(track(out_full[:shortest]), ho, wo)
    # Only the grid trackers query one fixed grid (in frame fractions) in both clips, pairing track i with
    # track i as CoTracker's grid does in DMT's script; objects and points seeded on each clip are not paired.
    paired = method in GRID_TRACKERS
    variants = fidelity_variants(norm_in, norm_out, cut_out, cut_in, still, same_grid=paired)
    formula = "paired" if paired else DEFAULT_FORMULA
    result = {
        "tracker": method,
        "formula": formula,
        "motion_fidelity": variants[formula],
        **{f"motion_fidelity_{name}": value for name, value in variants.items()},
        "path_error": path_error(norm_in, norm_out, still),
        "input_tracks": len(tr_in),
        "output_tracks": len(tr_out),
        "grid": (grid or DMT_GRID) if paired else None,
        "foreground_box": paired and foreground is not None,
        "temporal_consistency": temporal_consistency(out_full),
        "frame_difference": frame_difference(out_full),
    }
    if prompt is not None:
        result.update(_prompt_fields(out_full, prompt))
    return result


def _prompt_fields(frames: np.ndarray, prompt: str) -> dict:
    """Edit/motion fields for ``evaluate``; empty when the prompt is not a shapes-world prompt."""
    try:
        want = parse_prompt(prompt)
    except UserError:
        return {}
    edit = edit_fidelity(frames, prompt)
    found = edit["detected"]
    fields = {
        "detected_color": found["color"] if found else None,
        "detected_shape": found["shape"] if found else None,
        "color_match": edit["color_match"],
        "shape_match": edit["shape_match"],
    }
    if want["background"] is not None:
        fields.update(background=want["background"], background_match=background_match(frames, want["background"]))
    if want["motion"] is not None:
        cents = found["centroids"] if found else np.full((len(frames), 2), np.nan)
        fields.update(motion=want["motion"], detected_motion=classify_motion(cents),
                      motion_match=motion_direction_match(cents, want["motion"]))
    return fields



def json_safe(metrics: dict) -> dict:
    """``metrics`` with NaN floats as None (NaN is not JSON) and numpy scalars as Python ones."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (np.floating, float)):
            value = None if math.isnan(value) else float(value)
        elif isinstance(value, np.bool_):
            value = bool(value)
        elif isinstance(value, np.integer):
            value = int(value)
        out[key] = value
    return out


def format_report(metrics: dict) -> str:
    """:func:`evaluate`'s result as a small two-column table, one metric a line."""

    def show(value) -> str:
        if isinstance(value, (bool, np.bool_)):
            return "yes" if value else "no"
        if isinstance(value, (float, np.floating)):
            return "n/a (no tracks)" if math.isnan(value) else f"{value:.3f}"
        return "-" if value is None else str(value)

    grid = metrics.get("grid")
    query = "" if not grid else f"DMT's {grid}x{grid} query grid{' in the foreground box' if metrics.get('foreground_box') else ''}, "
    rows = [
        ("tracker", f"{metrics['tracker']} ({query}{metrics['input_tracks']} input / "
                    f"{metrics['output_tracks']} output tracks)"),
        ("motion fidelity", f"{show(metrics['motion_fidelity'])}  (formula {metrics['formula']}; -1..1, higher is better)"),
        ("  every formula", "  ".join(f"{name} {show(metrics['motion_fidelity_' + name])}" for name in FORMULAS)),
        ("path error", f"{show(metrics['path_error'])}  (frame fractions; 0 = the input's path, lower is better)"),
        ("temporal consistency", f"{show(metrics['temporal_consistency'])}  (1 = identical frames)"),
        ("frame difference", f"{show(metrics['frame_difference'])}  (lower is smoother)"),
    ]
    if "color_match" in metrics:
        rows.append(("color match", f"{show(metrics['color_match'])}  (detected {show(metrics['detected_color'])})"))
        rows.append(("shape match", f"{show(metrics['shape_match'])}  (detected {show(metrics['detected_shape'])})"))
    if "background_match" in metrics:
        rows.append(("background match", f"{show(metrics['background_match'])}  ({metrics['background']} asked)"))
    if "motion_match" in metrics:
        rows.append((f"motion match ({metrics['motion']})",
                     f"{show(metrics['motion_match'])}  (detected {show(metrics['detected_motion'])})"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


__all__ = [
    "DEFAULT_FORMULA", "FORMULAS", "fidelity", "fidelity_variants", "paired_fidelity", "real_video_tracker",
    "similarity_matrix",
    "TRACKERS", "background_match", "classify_motion", "classify_shape", "color_layers", "detect_object", "edit_fidelity",
    "estimate_background", "evaluate", "format_report", "frame_difference", "json_safe", "looks_like_shapes",
    "motion_direction_match", "motion_fidelity", "normalise_tracks", "path_error", "point_tracks", "radial_profile",
    "resample_nearest", "seed_points", "shape_features", "shape_tracks", "single_clean_object", "temporal_consistency",
    "track_correlation", "tracks", "paired_correlation", "GRID_TRACKERS",
]
