"""DMT's latent optimization with SMA's objective: at a guided timestep, Adam on the latent so that the
target's recorded features move between frames as the input's do (Park et al. 2025, eq. 19).

Pure functions of tensors and callables; the pipeline supplies the denoiser call and the recorded layers."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from sma_guidance.config import SMAConfig
from sma_guidance.dmt import sma_objective_terms
from sma_guidance.precision import LossScale, scaled_backward

Terms = dict[str, torch.Tensor]


def objective_of_features(reference: dict[str, torch.Tensor], features: dict[str, torch.Tensor], config: SMAConfig) -> Terms:
    """Eq. 19 summed over the layers of ``features`` (``{layer: (B, F, C, H, W)}``) against ``reference``
    (the same layers), computed in float32; with ``feature_normalization="ref-rms"`` both maps of a layer
    are divided by the reference's RMS first. Returns the total and its DMT / global / local parts."""
    totals: dict[str, torch.Tensor] = {}
    for name, pred in features.items():
        ref = reference[name].float()
        pred = pred.float()
        if config.feature_normalization == "ref-rms":
            # Same scale for both so the cosine term is untouched and the L1 terms become relative.
            scale = ref.pow(2).mean().sqrt().clamp_min(1e-8)
            ref, pred = ref / scale, pred / scale
        terms = sma_objective_terms(
            ref, pred, lambda_global=config.lambda_global, lambda_local=config.lambda_local, **config.spectral_settings
        )
        for key, value in terms.items():
            totals[key] = totals.get(key, 0) + value
    return totals


def optimize_latent(
    objective: Callable[[torch.Tensor], Terms],
    latents: torch.Tensor,
    learning_rate: float,
    steps: int,
    scale: LossScale,
    on_iteration: Callable[[dict[str, float]], None] | None = None,
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """``steps`` Adam steps on ``latents`` ``(B, C, F, h, w)`` (a float32 copy) down ``objective(latents)
    ["total"]``, its backward through ``scale`` (:func:`~sma_guidance.precision.scaled_backward`: Adam steps
    on the true gradient). Returns the optimized latents (detached) and, per step, the objective's parts
    (with the loss scale used, when one is)."""
    optimized = latents.detach().clone().float().requires_grad_(True)
    optimizer = torch.optim.Adam([optimized], lr=learning_rate)
    history = []
    for _ in range(steps):
        terms = scaled_backward(lambda: objective(optimized), [optimized], scale)
        optimizer.step()
        record = {key: float(value.detach()) for key, value in terms.items()}
        if scale.enabled:
            record["loss_scale"] = scale.last
        history.append(record)
        if on_iteration:
            on_iteration(record)
    return optimized.detach(), history


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """No parameter of ``module`` requires grad inside the block: the backward pass of the latent
    optimization then computes no weight gradients (time and memory for nothing)."""
    flags = {name: p.requires_grad for name, p in module.named_parameters()}
    module.requires_grad_(False)
    try:
        yield
    finally:
        for name, param in module.named_parameters():
            param.requires_grad_(flags[name])


__all__ = ["frozen", "objective_of_features", "optimize_latent"]
