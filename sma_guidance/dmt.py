"""DMT's space-time feature loss (Yatim et al.) and the SMA objective built on it (eq. 19).

Features are ``(B, F, C, H, W)`` with frames on dim 1; a 4-D ``(F, C, H, W)`` tensor means
``B = 1``. All functions are pure and differentiable in ``pred_features``.
"""

import torch
import torch.nn.functional as F

from .errors import UserError
from .masks import masked_mean, residual_weights
from .spectral import _batched, frame_residuals, global_motion_loss, local_motion_loss

__all__ = ["dmt_loss", "initial_latent", "low_pass_size", "sma_objective", "sma_objective_terms"]


def _frame_pairs(frames, device):
    """Indices ``(i, j)`` of all ordered pairs of distinct frames, each ``(F·(F - 1),)``."""
    # Arithmetic rather than a boolean mask: no data-dependent shapes, so the loss also runs on
    # shape-only (fake / meta) tensors when memory is estimated.
    i = torch.arange(frames, device=device).repeat_interleave(frames - 1)
    j = (i + 1 + torch.arange(frames - 1, device=device).repeat(frames)) % frames
    return i, j


def _pooled(features, mask):
    """``(B, F, C, H, W)`` -> ``(B, F, C)``: the mean over space, or over the subject ``mask`` ``(F, H, W)``."""
    return features.mean(dim=(-2, -1)) if mask is None else masked_mean(features, mask)


def dmt_loss(ref_features, pred_features, mask=None):
    """DMT space-time feature loss: align pairwise frame differences of pooled features.

    Features are averaged over ``(H, W)`` (with a subject ``mask``, over the mask: a weighted mean) to
    ``f`` of shape ``(B, F, C)``; for each anchor ``i``
    and other frame ``j ≠ i``, ``Δ = f_j - f_i``, and the loss is the mean over ``(b, i, j)`` of
    ``1 - cos(Δ_pred, Δ_ref)`` along ``C``. The ``i = j`` pairs are left out: their Δ is 0 for
    both videos, so they would only add a constant.

    Args:
        ref_features, pred_features: ``(F, C, H, W)`` or ``(B, F, C, H, W)``, ``F >= 2``.
        mask: ``None``, or the subject's weights ``(F, H, W)`` in [0, 1] on the features' grid.

    Returns:
        Scalar tensor.
    """
    if ref_features.shape != pred_features.shape:
        raise ValueError(
            "ref_features and pred_features must have the same shape, got "
            f"{tuple(ref_features.shape)} and {tuple(pred_features.shape)}"
        )
    ref = _pooled(_batched(ref_features, "ref_features"), mask)  # (B, F, C)
    pred = _pooled(_batched(pred_features, "pred_features"), mask)
    frames = ref.shape[1]
    if frames < 2:
        raise UserError(f"the DMT loss compares frames and needs at least 2, got {frames}")
    # Only distinct pairs are formed, so no zero Δ from i = j reaches the cosine or its gradient.
    i, j = _frame_pairs(frames, ref.device)
    cos = F.cosine_similarity(pred[:, j] - pred[:, i], ref[:, j] - ref[:, i], dim=-1)  # (B, P)
    return (1 - cos).mean()


def sma_objective_terms(
    ref_features,
    pred_features,
    lambda_global=0.4,
    lambda_local=0.2,
    levels=None,
    level_weights=None,
    wavelet="haar",
    delta=0.05,
    mask=None,
):
    """The terms of the SMA objective for one layer (eq. 19).

    ``total = dmt(f_ref, f) + λg·global(δf_ref, δf) + λl·local(δf_ref, δf)`` with ``δ`` the
    frame residuals (eq. 10). With a subject ``mask`` ``(F, H, W)``, DMT's term pools over the mask and the
    spectral terms compare mask-weighted residuals ``max(m_t, m_{t+1}) · δf_t``. A term whose λ is 0 is
    not computed and reported as 0, so
    ``λg = λl = 0`` gives plain DMT at no extra cost, with ``total`` identical to ``dmt``.

    Args:
        ref_features, pred_features: ``(F, C, H, W)`` or ``(B, F, C, H, W)``, ``F >= 2``.
        lambda_global, lambda_local: λg and λl.
        levels, level_weights, wavelet: see :func:`~sma_guidance.spectral.global_motion_loss`.
        delta: see :func:`~sma_guidance.spectral.local_motion_loss`.
        mask: ``None``, or the subject's weights ``(F, H, W)`` in [0, 1] on the features' grid.

    Returns:
        ``{"dmt", "global", "local", "total"}``, each a scalar tensor.
    """
    dmt = dmt_loss(ref_features, pred_features, mask)
    terms = {"dmt": dmt, "global": dmt.new_zeros(()), "local": dmt.new_zeros(())}
    total = dmt
    if lambda_global != 0 or lambda_local != 0:
        res_ref = frame_residuals(_batched(ref_features, "ref_features"))
        res_pred = frame_residuals(_batched(pred_features, "pred_features"))
        if mask is not None:
            weights = residual_weights(mask.to(res_ref))[None, :, None]  # (1, F - 1, 1, H, W)
            res_ref, res_pred = res_ref * weights, res_pred * weights
        if lambda_global != 0:
            terms["global"] = global_motion_loss(res_ref, res_pred, levels, level_weights, wavelet)
            total = total + lambda_global * terms["global"]
        if lambda_local != 0:
            terms["local"] = local_motion_loss(res_ref, res_pred, delta)
            total = total + lambda_local * terms["local"]
    terms["total"] = total
    return terms


def sma_objective(
    ref_features,
    pred_features,
    lambda_global=0.4,
    lambda_local=0.2,
    levels=None,
    level_weights=None,
    wavelet="haar",
    delta=0.05,
    mask=None,
):
    """Scalar SMA objective for one layer (eq. 19); see :func:`sma_objective_terms`."""
    return sma_objective_terms(
        ref_features,
        pred_features,
        lambda_global,
        lambda_local,
        levels,
        level_weights,
        wavelet,
        delta,
        mask,
    )["total"]


def low_pass_size(height, width, downsample_factor=4, low_pass_grid=None):
    """The low-frequency grid ``(h, w)`` of DMT's initial latent for a latent of ``height x width``.

    ``low_pass_grid`` (cells along the shorter side; the longer side keeps the aspect ratio) takes
    precedence; otherwise DMT's rule ``(height // downsample_factor, width // downsample_factor)``
    (Zeroscope: 40x72 latents, factor 4 -> 10x18). Returns ``(height, width)`` itself when the grid
    is not smaller than the latent: nothing is filtered then.
    """
    if low_pass_grid is not None:
        shorter = min(height, width)
        if low_pass_grid >= shorter:
            return height, width
        return max(1, round(height * low_pass_grid / shorter)), max(1, round(width * low_pass_grid / shorter))
    if downsample_factor <= 1:
        return height, width
    return max(1, height // downsample_factor), max(1, width // downsample_factor)


def initial_latent(inverted, noise, downsample_factor=4, low_pass_grid=None):
    """DMT's initial latent: the inverted latent's low spatial frequencies plus the noise's high ones.

    ``inverted``, ``noise``: ``(B, C, F, h, w)``. "Low" is what survives a bilinear (antialiased)
    resize of every frame to :func:`low_pass_size` and back; a grid as large as the latent returns
    ``inverted`` unchanged (the exact inversion).
    """
    b, c, f, h, w = inverted.shape
    small = low_pass_size(h, w, downsample_factor, low_pass_grid)
    if small == (h, w):
        return inverted

    def low_pass(x):
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        down = F.interpolate(frames, size=small, mode="bilinear", align_corners=True, antialias=True)
        up = F.interpolate(down, size=(h, w), mode="bilinear", align_corners=True, antialias=True)
        return up.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)

    return low_pass(inverted) + (noise - low_pass(noise))
