"""Overlapping temporal windows: how a clip longer than a video model's native window is sampled.

A clip of ``T`` (latent) frames is covered by windows of ``W`` frames that overlap by ``K``; every window
is denoised (and guided) on its own, and where windows overlap their results are blended with a linear
cross-fade along time, as FreeNoise (Qiu et al. 2024) and MultiDiffusion (Bar-Tal et al. 2023) blend
along time and space. Pure functions of integers and tensors.
"""

from __future__ import annotations

import torch

from .errors import UserError

__all__ = ["blend_windows", "crossfade_weights", "temporal_windows"]


def temporal_windows(total: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Windows ``[(start, stop), ...]`` of ``window`` frames covering ``range(total)``, consecutive ones
    sharing at least ``overlap`` frames; the first starts at 0, the last ends at ``total`` (it is moved
    back to keep its full length, so it may overlap its neighbour by more). One window ``(0, total)``
    when the clip fits.

    Raises:
        UserError: ``window < 1`` or ``overlap`` outside ``[0, window)``.
    """
    if window < 1:
        raise UserError(f"the window must hold at least one frame, got {window}")
    if not 0 <= overlap < window:
        raise UserError(f"the overlap must be at least 0 and below the window ({window} frames), got {overlap}")
    if total <= window:
        return [(0, total)]
    stride = window - overlap
    starts = list(range(0, total - window, stride)) + [total - window]
    return [(start, start + window) for start in starts]


def crossfade_weights(windows: list[tuple[int, int]], total: int) -> list[torch.Tensor]:
    """Per window, the weight ``(stop - start,)`` of each of its frames in the blend, summing to 1 over
    the windows that hold a frame: a linear ramp across each overlap (``k / (n + 1)`` for an overlap of
    ``n`` frames, so no frame gets weight 0), 1 where a window is alone.

    Raises:
        UserError: a frame of ``range(total)`` that no window covers.
    """
    raw = []
    for index, (start, stop) in enumerate(windows):
        weight = torch.ones(stop - start, dtype=torch.float64)
        if index > 0:  # fade in over the frames shared with the previous window
            shared = max(0, windows[index - 1][1] - start)
            weight[:shared] = torch.arange(1, shared + 1, dtype=torch.float64) / (shared + 1)
        if index + 1 < len(windows):  # fade out over the frames shared with the next one
            shared = max(0, stop - windows[index + 1][0])
            if shared:
                weight[-shared:] = torch.minimum(
                    weight[-shared:], torch.arange(shared, 0, -1, dtype=torch.float64) / (shared + 1)
                )
        raw.append(weight)
    coverage = torch.zeros(total, dtype=torch.float64)
    for (start, stop), weight in zip(windows, raw):
        coverage[start:stop] += weight
    if (coverage <= 0).any():
        missing = int(torch.nonzero(coverage <= 0)[0])
        raise UserError(f"frame {missing} of {total} lies in no window; the windows must cover the clip")
    return [weight / coverage[start:stop] for (start, stop), weight in zip(windows, raw)]


def blend_windows(parts: list[torch.Tensor], windows: list[tuple[int, int]], total: int, dim: int = 2) -> torch.Tensor:
    """One tensor of ``total`` frames along ``dim`` from per-window ``parts`` (each with its window's
    frames along ``dim``, e.g. latents ``(B, C, W, h, w)`` with ``dim=2``): the cross-fade of
    :func:`crossfade_weights` where windows overlap."""
    weights = crossfade_weights(windows, total)
    shape = list(parts[0].shape)
    shape[dim] = total
    out = parts[0].new_zeros(shape)
    for part, (start, stop), weight in zip(parts, windows, weights):
        view = [1] * part.ndim
        view[dim] = stop - start
        out.narrow(dim, start, stop - start).add_(part * weight.to(part).view(view))
    return out
