"""Fine-tune objective (paper Algorithm 1): VMC's residual alignment plus SMA's spectral terms on
latent-frame residuals of the clean clip v₀ and the model's denoised estimate v̂₀.

Frames are on dim 1: ``(B, F, C, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .spectral import frame_residuals, global_motion_loss, local_motion_loss

RESIDUAL_MODES = ("signed", "abs")
PREDICTION_TYPES = ("epsilon", "v_prediction")


def noise_from_prediction(
    model_output: torch.Tensor, noisy: torch.Tensor, alpha_prod: torch.Tensor, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """The noise estimate ε̂ from a UNet's output, so that the objective reads the same for every model.

    Args:
        model_output: ε̂ itself (``"epsilon"``, Zeroscope) or v̂ = √ᾱ ε̂ − √(1−ᾱ) v̂₀ (``"v_prediction"``,
            Salimans & Ho 2022), in which case ε̂ = √ᾱ v̂ + √(1−ᾱ) v_t; any shape.
        noisy: v_t, the UNet's input, same shape.
        alpha_prod: ᾱ_t, a scalar tensor.
    """
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha_prod.sqrt() * model_output + (1 - alpha_prod).sqrt() * noisy
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def residual_alignment_loss(noise_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """VMC's motion distillation loss: mean over frame residuals n of 1 − cos(δε̂ⁿ, δεⁿ).

    Args:
        noise_pred, noise: ``(B, F, C, H, W)``; each residual frame is flattened for the cosine.
    """
    pred = frame_residuals(noise_pred).flatten(2)
    target = frame_residuals(noise).flatten(2)
    return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()


def motion_distillation_terms(
    noise_pred: torch.Tensor,
    noise: torch.Tensor,
    clean: torch.Tensor,
    noisy: torch.Tensor,
    alpha_prod: torch.Tensor | float,
    lambda_global: float = 0.4,
    lambda_local: float = 0.2,
    residual: str = "signed",
    levels: int | None = None,
    level_weights: tuple[float, ...] | None = None,
    wavelet: str = "haar",
    delta: float = 0.05,
) -> dict[str, torch.Tensor]:
    """The fine-tune objective of one step (paper Algorithm 1), frames on dim 1.

    Args:
        noise_pred: ε̂ ``(B, F, C, H, W)``; noise: ε; clean: v₀; noisy: v_t (all the same shape).
        alpha_prod: ᾱ_t.
        residual: ``"signed"`` (the paper's δ) or ``"abs"`` (|δ|, as the official SMA code does) for
            the spectral terms; VMC's cosine term always uses signed residuals.

    Returns:
        ``{"vmc", "global", "local", "total"}``; a term whose λ is 0 is not computed (0-valued).
    """
    alpha_prod = torch.as_tensor(alpha_prod, dtype=noisy.dtype, device=noisy.device)
    denoised = (noisy - (1 - alpha_prod).sqrt() * noise_pred) / alpha_prod.sqrt()  # Tweedie's v̂₀
    return distillation_terms(noise_pred, noise, clean, denoised, lambda_global, lambda_local, residual, levels,
                              level_weights, wavelet, delta)


def flow_estimates(velocity: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise and clean estimates ``(ε̂, x̂₀)`` of a flow-matching model's velocity prediction.

    On the path x_σ = (1 − σ)·x₀ + σ·ε the model predicts v̂ ≈ ε − x₀, so x̂₀ = x_σ − σ·v̂ and
    ε̂ = x_σ + (1 − σ)·v̂ (each exact when v̂ is). Any shape, σ a scalar."""
    sigma = torch.as_tensor(sigma, dtype=noisy.dtype, device=noisy.device)
    return noisy + (1 - sigma) * velocity, noisy - sigma * velocity


def flow_motion_distillation_terms(
    velocity_pred: torch.Tensor,
    noise: torch.Tensor,
    clean: torch.Tensor,
    noisy: torch.Tensor,
    sigma: torch.Tensor | float,
    lambda_global: float = 0.4,
    lambda_local: float = 0.2,
    residual: str = "signed",
    levels: int | None = None,
    level_weights: tuple[float, ...] | None = None,
    wavelet: str = "haar",
    delta: float = 0.05,
) -> dict[str, torch.Tensor]:
    """The fine-tune objective of one step for a flow-matching model (Wan): as
    :func:`motion_distillation_terms`, on the noise and clean estimates of its velocity
    (:func:`flow_estimates`). ``noisy`` is x_σ = (1 − σ)·clean + σ·noise; all ``(B, F, C, H, W)``."""
    noise_pred, denoised = flow_estimates(velocity_pred, noisy, sigma)
    return distillation_terms(noise_pred, noise, clean, denoised, lambda_global, lambda_local, residual, levels,
                              level_weights, wavelet, delta)


def distillation_terms(
    noise_pred: torch.Tensor,
    noise: torch.Tensor,
    clean: torch.Tensor,
    denoised: torch.Tensor,
    lambda_global: float = 0.4,
    lambda_local: float = 0.2,
    residual: str = "signed",
    levels: int | None = None,
    level_weights: tuple[float, ...] | None = None,
    wavelet: str = "haar",
    delta: float = 0.05,
) -> dict[str, torch.Tensor]:
    """VMC's residual alignment of ``noise_pred`` with ``noise`` plus SMA's spectral terms between the
    residuals of ``clean`` and of the model's clean estimate ``denoised`` (paper Algorithm 1); all
    ``(B, F, C, H, W)``. Returns ``{"vmc", "global", "local", "total"}``; a term whose λ is 0 is 0."""
    if residual not in RESIDUAL_MODES:
        raise ValueError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
    vmc = residual_alignment_loss(noise_pred, noise)
    zero = vmc.new_zeros(())
    terms = {"vmc": vmc, "global": zero, "local": zero}
    if lambda_global or lambda_local:
        ref, pred = frame_residuals(clean), frame_residuals(denoised)
        if residual == "abs":
            ref, pred = ref.abs(), pred.abs()
        if lambda_global:
            terms["global"] = global_motion_loss(ref, pred, levels=levels, level_weights=level_weights, wavelet=wavelet)
        if lambda_local:
            terms["local"] = local_motion_loss(ref, pred, delta=delta)
    terms["total"] = vmc + lambda_global * terms["global"] + lambda_local * terms["local"]
    return terms


__all__ = ["PREDICTION_TYPES", "RESIDUAL_MODES", "distillation_terms", "flow_estimates", "flow_motion_distillation_terms",
           "motion_distillation_terms", "noise_from_prediction", "residual_alignment_loss"]
