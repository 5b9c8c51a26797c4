"""A new scene: the input's background repainted before it is inverted.

Kept whole, the inversion of a clip carries its motion *and* its background, so the prompt cannot change
the background; drawn afresh, the start carries neither, and the guidance alone rarely brings the motion
back (pipelines/bench/RESULTS.md, "New scenes"). Repainting the clip's background with the one the model
draws for the prompt, then inverting that clip, keeps the subject and its motion where they were and hands
the prompt its background. Frames here are ``(F, 3, H, W)`` in [-1, 1] (the pipeline's) and masks
``(F, H, W)`` in [0, 1], 1 on the subject.
"""

from __future__ import annotations

import torch

__all__ = ["BORDER", "border_color", "clip_border_color", "components", "plain_share", "repaint_background", "still_pixels", "subject_alpha"]

BORDER = 2  # width in pixels of the ring a frame's background colour is read from
# Distances from the background colour, in RGB levels (0-255, the largest channel's): below the first a
# pixel is background (codec noise, a VAE's tint), above the second subject; between, a blend of the two
# (anti-aliased outlines). The shapes world's colours lie >= 83 levels from its backgrounds.
_BACKGROUND_BELOW = 15.0
_SUBJECT_ABOVE = 45.0
# A region off the background whose pixels are this share still (:func:`still_pixels`) is scenery, not subject.
_STILL_SHARE = 0.9


def border_pixels(frames: torch.Tensor, width: int = BORDER) -> torch.Tensor:
    """The pixels of each frame's outer ring ``width`` pixels wide: ``(F, 3, P)`` from frames ``(F, 3, H, W)``."""
    return torch.cat([frames[..., :width, :].flatten(2), frames[..., -width:, :].flatten(2),
                      frames[..., width:-width, :width].flatten(2), frames[..., width:-width, -width:].flatten(2)], 2)


def border_color(frames: torch.Tensor) -> torch.Tensor:
    """Each frame's background colour ``(F, 3)``: the per-channel median of its outer ring (a subject rarely
    touches all four edges, so most of the ring is background)."""
    return border_pixels(frames).median(dim=2).values


def clip_border_color(frames: torch.Tensor) -> torch.Tensor:
    """One colour ``(3,)`` for a whole clip: the per-channel median over frames of :func:`border_color`."""
    return border_color(frames).median(dim=0).values


def _off_background(frames: torch.Tensor) -> torch.Tensor:
    """Each pixel's distance ``(F, H, W)`` from its frame's :func:`border_color`, in RGB levels (largest channel)."""
    return (frames - border_color(frames)[..., None, None]).abs().amax(dim=1) * 127.5


def still_pixels(frames: torch.Tensor) -> torch.Tensor:
    """Pixels ``(H, W)`` off the background in every frame whose colour stays within 15 levels over the clip:
    where something stands still."""
    off = (_off_background(frames) > _BACKGROUND_BELOW).all(dim=0)
    spread = (frames.amax(dim=0) - frames.amin(dim=0)).amax(dim=0) * 127.5
    return off & (spread <= _BACKGROUND_BELOW)


def components(mask: torch.Tensor) -> torch.Tensor:
    """8-connected regions of each frame of a bool mask ``(F, H, W)``: labels ``(F, H, W)``, 0 outside the mask
    and the same positive number on each region's pixels (unique across frames). Labels spread by 3 x 3
    max-pooling until nothing changes."""
    count = mask[0].numel()
    ids = torch.arange(1, mask.numel() + 1, dtype=torch.float64).reshape(mask.shape)
    labels = torch.where(mask, ids, torch.zeros_like(ids))[:, None]
    for _ in range(count):
        spread = torch.nn.functional.max_pool2d(labels, 3, stride=1, padding=1) * mask[:, None]
        if torch.equal(spread, labels):
            break
        labels = spread
    return labels[:, 0].long()


def subject_alpha(frames: torch.Tensor) -> torch.Tensor:
    """How much each pixel is subject rather than background, ``(F, H, W)`` in [0, 1], for a clip on a plain
    background: 0 within 15 RGB levels of the frame's :func:`border_color` (largest channel), 1 beyond 45,
    a linear ramp between (the blended pixels of an outline) — except on a region that stands still through
    the clip (90 % of its pixels :func:`still_pixels`), which is scenery. When nothing moves, every region
    off the background is kept."""
    alpha = ((_off_background(frames) - _BACKGROUND_BELOW) / (_SUBJECT_ABOVE - _BACKGROUND_BELOW)).clamp(0, 1)
    labels = components(alpha > 0)
    size = torch.bincount(labels.flatten(), minlength=labels.numel() + 1).double()
    still = torch.bincount(labels.flatten(), weights=still_pixels(frames).expand_as(labels).flatten().double(),
                           minlength=labels.numel() + 1)
    scenery = still > _STILL_SHARE * size.clamp(min=1)
    scenery[0] = False
    moving = ~scenery[labels]
    if not (moving & (labels > 0)).any():
        return alpha
    return alpha * moving


def plain_share(alpha: torch.Tensor) -> float:
    """The share of the clip's pixels that :func:`subject_alpha` calls background (alpha 0): near 1 on a plain
    background, low on a textured one, where the border colour says nothing of what lies behind the subject."""
    return float((alpha == 0).float().mean())


def repaint_background(frames: torch.Tensor, alpha: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """Frames ``(F, 3, H, W)`` with their background replaced by ``color`` ``(3,)``:
    ``alpha * frames + (1 - alpha) * color``, ``alpha`` ``(F, H, W)`` the subject's share of each pixel."""
    alpha = alpha[:, None].to(frames.dtype)
    return alpha * frames + (1 - alpha) * color.to(frames)[None, :, None, None]
