"""DMT's latent optimization with SMA's objective: at a guided timestep, Adam on the latent so that the
target's recorded features move between frames as the input's do (Park et al. 2025, eq. 19).

Pure functions of tensors and callables; the pipeline supplies the denoiser call and the recorded layers."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from sma_guidance.config import SMAConfig
from sma_guidance.dmt import sma_objective_terms
from sma_guidance.masks import resize_mask
from sma_guidance.precision import LossScale, scaled_backward

Terms = dict[str, torch.Tensor]


def objective_of_features(
    reference: dict[str, torch.Tensor], features: dict[str, torch.Tensor], config: SMAConfig,
    mask: torch.Tensor | None = None,
) -> Terms:
    """Eq. 19 summed over the layers of ``features`` (``{layer: (B, F, C, H, W)}``) against ``reference``
    (the same layers), computed in float32; with ``feature_normalization="ref-rms"`` both maps of a layer
    are divided by the reference's RMS first. A subject ``mask`` ``(F, H', W')`` (any size: it is resized
    to each layer's grid, :func:`~sma_guidance.masks.resize_mask`) restricts the terms to the subject
    (:func:`~sma_guidance.dmt.sma_objective_terms`). Returns the total and its DMT / global / local parts."""
    totals: dict[str, torch.Tensor] = {}
    for name, pred in features.items():
        ref = reference[name].float()
        pred = pred.float()
        layer_mask = None if mask is None else resize_mask(mask.to(ref.device, torch.float32), tuple(ref.shape[-2:]))
        if config.feature_normalization == "ref-rms":
            # Same scale for both so the cosine term is untouched and the L1 terms become relative.
            scale = ref.pow(2).mean().sqrt().clamp_min(1e-8)
            ref, pred = ref / scale, pred / scale
        terms = sma_objective_terms(
            ref, pred, lambda_global=config.lambda_global, lambda_local=config.lambda_local, mask=layer_mask,
            **config.spectral_settings,
        )
        for key, value in terms.items():
            totals[key] = totals.get(key, 0) + value
    return totals


def optimize_latent(
    objective: Callable[[torch.Tensor], Terms] | list[Callable[[torch.Tensor], Terms]],
    latents: torch.Tensor,
    learning_rate: float,
    steps: int,
    scale: LossScale,
    on_iteration: Callable[[dict[str, float]], None] | None = None,
    windows: list[tuple[int, int]] | None = None,
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """``steps`` Adam steps on ``latents`` ``(B, C, F, h, w)`` (a float32 copy) down ``objective(latents)
    ["total"]``, its backward through ``scale`` (:func:`~sma_guidance.precision.scaled_backward`: Adam steps
    on the true gradient). Returns the optimized latents (detached) and, per step, the objective's parts
    (with the loss scale used, when one is).

    With temporal ``windows`` ``[(start, stop), ...]`` (frames on dim 2), ``objective`` is one callable per
    window, each taking its window's slice: the objective is their sum, backpropagated one window at a time
    (so the activations held are one window's) and its gradient gathered on the whole latent, so frames that
    windows share move as every window containing them asks. A step's record is then the mean over windows,
    each window's own under ``"windows"``."""
    objectives = objective if isinstance(objective, list) else [objective]
    spans = windows or [(0, latents.shape[2])]
    optimized = latents.detach().clone().float().requires_grad_(True)
    optimizer = torch.optim.Adam([optimized], lr=learning_rate)
    history = []
    for _ in range(steps):
        gradient = torch.zeros_like(optimized)
        records = []
        for (start, stop), window_objective in zip(spans, objectives):
            part = optimized.detach()[:, :, start:stop].clone().requires_grad_(True)
            terms = scaled_backward(lambda: window_objective(part), [part], scale)
            gradient[:, :, start:stop] += part.grad
            records.append({key: float(value.detach()) for key, value in terms.items()})
            if scale.enabled:
                records[-1]["loss_scale"] = scale.last
        optimized.grad = gradient
        optimizer.step()
        record = records[0] if len(records) == 1 else {
            **{key: sum(r[key] for r in records) / len(records) for key in records[0]}, "windows": records,
        }
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
