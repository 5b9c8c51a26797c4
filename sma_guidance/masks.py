"""Subject masks: whose motion a run transfers.

A mask is white where the subject is. It is read from an image (one mask for every frame), a video or a
folder of images (one per frame), or made from a box; it is brought to the run's frames and size as the
input is (same frames picked, same cover-and-crop), then resized to every recorded layer's grid and to
the latent. Tensors here are masks ``(F, H, W)`` in [0, 1] unless said otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

__all__ = [
    "box_mask",
    "check_mask",
    "composite",
    "dilate",
    "fit_mask",
    "mask_array",
    "masked_mean",
    "pool_frames",
    "read_mask",
    "resize_mask",
    "residual_weights",
    "select_mask_frames",
    "subject_mask",
]

# A mask is white where the subject is: a pixel above half grey counts as subject.
_THRESHOLD = 0.5
# At the run's size, a mask covering more than this share of every frame selects the whole frame.
_FULL = 0.995


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """The mask in ``path``: an image (one mask for every frame), or a video or a folder of images (one
    per frame). Returns float32 ``(M, H, W)``, 1 where the file is white (above half grey), else 0."""
    from .video_io import IMAGE_EXTENSIONS, _read_image, _to_rgb, read_frames

    path = Path(path)
    if not path.exists():
        raise UserError(f"mask not found: {path} — check the path")
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        frames = _to_rgb(_read_image(path))[None]
    else:
        frames, _ = read_frames(path)
    return mask_array(frames, f"mask {path}")


def mask_array(mask: Any, what: str = "the mask") -> np.ndarray:
    """``mask`` as float32 ``(M, H, W)`` of 0 and 1: an array or tensor ``(H, W)``, ``(M, H, W)`` or
    ``(M, H, W, 3)`` (RGB, averaged), booleans, 0–1 floats or 0–255 integers; above half counts as subject."""
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.ndim == 4 and array.shape[-1] in (3, 4):
        array = array[..., :3].astype(np.float32).mean(-1)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or min(array.shape) < 1:
        raise UserError(f"{what} must be (H, W) or (F, H, W) (one mask per frame), got shape {tuple(array.shape)}")
    if array.dtype == bool:
        return array.astype(np.float32)
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise UserError(f"{what} holds NaN or infinite values; give 0 (background) and 1 or 255 (subject)")
    top = 255.0 if array.max() > 1 else 1.0
    return (array / top > _THRESHOLD).astype(np.float32)


def box_mask(box: Sequence[float], height: int, width: int) -> np.ndarray:
    """A box ``(x0, y0, x1, y1)`` in pixels of a ``height x width`` input as a mask ``(1, height, width)``
    (the box's pixels 1, the edges' partly covered pixels by their covered share)."""
    if len(box) != 4:
        raise UserError(f"a mask box is X0,Y0,X1,Y1 (4 numbers), got {len(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x0 < x1 and y0 < y1):
        raise UserError(f"the mask box {x0:g},{y0:g},{x1:g},{y1:g} is empty; give X0 < X1 and Y0 < Y1 in pixels")
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise UserError(
            f"the mask box {x0:g},{y0:g},{x1:g},{y1:g} lies outside the {width}x{height} input; give pixels of the input"
        )
    cols = np.clip(np.minimum(np.arange(width) + 1, x1) - np.maximum(np.arange(width), x0), 0, 1)
    rows = np.clip(np.minimum(np.arange(height) + 1, y1) - np.maximum(np.arange(height), y0), 0, 1)
    return (rows[:, None] * cols[None, :])[None].astype(np.float32)


def select_mask_frames(
    mask: np.ndarray, num_frames: int, positions: np.ndarray | None = None, source_frames: int | None = None
) -> np.ndarray:
    """The masks of the run's ``num_frames`` frames from ``mask`` ``(M, H, W)``: one mask is every frame's;
    ``M == num_frames`` is one per run frame; otherwise, with the input's ``source_frames`` and the source
    ``positions`` the run picked (:func:`~sma_guidance.video_io.selected_indices`), the mask at the same
    place in its own sequence (its frame ``i`` when ``M == source_frames``); without them, spread uniformly."""
    count = len(mask)
    if count == 1:
        return np.repeat(mask, num_frames, axis=0)
    if count == num_frames:
        return mask
    if positions is not None and source_frames:
        where = np.asarray(positions, np.float64) * (count - 1) / max(source_frames - 1, 1)
    else:
        where = np.linspace(0, count - 1, num_frames)
    return mask[np.clip(np.round(where).astype(np.int64), 0, count - 1)]


def fit_mask(mask: np.ndarray, source_size: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """``mask`` ``(F, h, w)`` at the run's size, as the input's frames are brought there: stretched to the
    input's ``source_size`` ``(H, W)`` when it has another size, then scaled to cover ``height x width`` and
    centre-cropped (:func:`~sma_guidance.video_io.resize_and_crop`). Returns float32 ``(F, height, width)``."""
    from .video_io import cover_and_crop

    tensor = torch.from_numpy(np.ascontiguousarray(mask, np.float32))[:, None]
    if tuple(tensor.shape[-2:]) != tuple(source_size):
        tensor = F.interpolate(tensor, size=tuple(source_size), mode="bilinear", align_corners=False, antialias=True)
    return cover_and_crop(tensor, height, width)[:, 0].clamp(0, 1).contiguous()


def check_mask(mask: torch.Tensor, what: str = "the mask") -> None:
    """Refuse, in one line, a mask that selects nothing, or everything (a run without a mask)."""
    if float(mask.max()) <= 0:
        raise UserError(f"{what} is empty (nothing white in the part of the frame the run uses); paint the subject "
                        "white, or give --mask-box X0,Y0,X1,Y1")
    if float(mask.flatten(1).mean(1).min()) >= _FULL:
        raise UserError(f"{what} is white over the whole frame, which selects everything (a run without a mask); "
                        "paint only the subject white, or drop the mask")


def subject_mask(
    mask: Any = None,
    box: Sequence[float] | None = None,
    *,
    source_size: tuple[int, int],
    num_frames: int,
    height: int,
    width: int,
    positions: np.ndarray | None = None,
    source_frames: int | None = None,
) -> torch.Tensor:
    """The subject's mask at a run's frames and size, ``(num_frames, height, width)`` in [0, 1], checked:
    from ``mask`` (a path for :func:`read_mask`, or an array / tensor for :func:`mask_array`) or ``box``
    (pixels of the input, :func:`box_mask`); ``source_size`` ``(H, W)`` is the input's frame size and
    ``positions`` / ``source_frames`` the frames the run picked from it (:func:`select_mask_frames`)."""
    if mask is not None and box is not None:
        raise UserError("give the subject as a mask or as a box, not both (--mask or --mask-box)")
    if box is not None:
        raw, what = box_mask(box, *source_size), "the mask box"
    elif isinstance(mask, (str, os.PathLike)):
        raw, what = read_mask(mask), f"mask {mask}"
    else:
        raw, what = mask_array(mask), "the mask"
    frames = select_mask_frames(raw, num_frames, positions, source_frames)
    fitted = fit_mask(frames, source_size, height, width)
    check_mask(fitted, what)
    return fitted


def pool_frames(mask: torch.Tensor, groups: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Per group ``(start, stop)`` of frames (e.g. the frames a latent frame packs), the union (maximum) of
    their masks: ``(F, H, W)`` -> ``(len(groups), H, W)``."""
    if all(stop - start == 1 for start, stop in groups) and len(groups) == len(mask):
        return mask
    return torch.stack([mask[start:stop].amax(0) for start, stop in groups])


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``mask`` ``(F, H, W)`` resized to ``size`` ``(h, w)``: each cell's covered share when shrinking (area
    average), bilinear when growing."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    shrinking = size[0] <= mask.shape[-2] and size[1] <= mask.shape[-1]
    if shrinking:
        return F.adaptive_avg_pool2d(mask[:, None], size)[:, 0]
    return F.interpolate(mask[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def masked_mean(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Features ``(B, F, C, H, W)`` averaged over space with the weights ``mask`` ``(F, H, W)``: ``(B, F, C)``.
    A frame whose mask is empty averages to 0."""
    weights = mask.to(features)[None, :, None]
    return (features * weights).sum((-2, -1)) / weights.sum((-2, -1)).clamp_min(1e-6)


def residual_weights(mask: torch.Tensor) -> torch.Tensor:
    """The weight of each frame residual ``x[t + 1] - x[t]`` (eq. 10): where the subject is in either frame,
    ``max(m[t], m[t + 1])``. ``(F, H, W)`` -> ``(F - 1, H, W)``."""
    return torch.maximum(mask[1:], mask[:-1])


def dilate(mask: torch.Tensor, cells: int) -> torch.Tensor:
    """``mask`` ``(F, H, W)`` grown by ``cells`` in every direction (a ``(2·cells + 1)²`` maximum filter)."""
    if cells <= 0:
        return mask
    return F.max_pool2d(mask[:, None], 2 * cells + 1, stride=1, padding=cells)[:, 0]


def composite(inside: torch.Tensor, outside: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Latents ``(B, C, F, h, w)``: ``inside`` where ``mask`` ``(F, h, w)`` is 1, ``outside`` where it is 0."""
    weights = mask.to(inside)[None, None]
    return weights * inside + (1 - weights) * outside
