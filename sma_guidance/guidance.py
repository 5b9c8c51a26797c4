"""Classifier-free guidance (Ho & Salimans, 2022) with the rescale of Lin et al. (2024), "Common
Diffusion Noise Schedules and Sample Steps are Flawed", Sec. 3.4 — diffusers' ``guidance_rescale``."""

import torch

__all__ = ["classifier_free_guidance"]


def classifier_free_guidance(uncond, cond, guidance_scale, guidance_rescale=0.0):
    """Combine the two branches of a denoiser's prediction.

    ``x_cfg = uncond + w · (cond - uncond)``; with ``φ = guidance_rescale > 0`` the result is pulled
    back toward the conditional branch's standard deviation (Lin et al., eq. 15–16):
    ``x = φ · x_cfg · σ(cond) / σ(x_cfg) + (1 - φ) · x_cfg``, σ taken per sample over all its
    elements. A large ``w`` inflates the prediction's spread, which on a latent shows as over-
    saturated, tinted frames; the rescale keeps ``w``'s direction at the conditional's scale.

    Args:
        uncond, cond: the predictions ``(B, ...)`` (e.g. ``(B, C, F, H, W)``) without and with the prompt.
        guidance_scale: ``w`` (1 = the conditional prediction).
        guidance_rescale: ``φ`` in [0, 1] (0 = plain classifier-free guidance).

    Returns:
        Tensor shaped as ``cond``.
    """
    guided = uncond + guidance_scale * (cond - uncond)
    if guidance_rescale <= 0:
        return guided
    dims = tuple(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return guidance_rescale * rescaled + (1 - guidance_rescale) * guided
