"""How far a half-precision guidance gradient is from float32's (``sma-guide bench precision``).

One guided step's gradient with respect to the latent — the reference features of one latent and the
objective (eq. 19, summed over the recorded layers) of another, both at the first sampling timestep,
backpropagated to the latent — computed with the denoiser in float32, then in ``dtype`` (float16 or
bfloat16) without and with the loss scale of :mod:`sma_guidance.precision`. For DMT alone (λg = λl = 0)
and for DMT + SMA (the configuration's λ): the cosine and the relative error ``‖g − g₃₂‖ / ‖g₃₂‖``
between each half-precision gradient and float32's, the share of the latent's gradient that is exactly
zero, whether everything stayed finite, and how far float32's own gradient at the features moves under a
change of float16's relative precision (:func:`feature_gradient_sensitivity`: an objective whose gradient
jumps under such a change — SMA's Fourier term is one — cannot agree better in half precision).

Latents are seeded standard normal draws: at the first sampling timestep a latent is almost pure noise,
whatever the clip, so no clip and no inversion are needed and any size runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from sma_guidance.config import SMAConfig
from sma_guidance.precision import LossScale, scaled_backward

from pipelines.motion_transfer.hub import quiet_loading
from pipelines.motion_transfer.pipeline_sma import SMAMotionTransferPipeline

TARGET_PROMPT, SOURCE_PROMPT = "a red car driving on a road", "a white car driving on a road"


def guidance_gradient(
    pipe: SMAMotionTransferPipeline, config: SMAConfig, reference_latents: torch.Tensor, latents: torch.Tensor,
    t: int | float, source: torch.Tensor, target: torch.Tensor, scale: LossScale,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The gradient of one guided step's objective with respect to ``latents`` (float32, as the guidance
    optimizes it) at the denoiser's current dtype, and the objective's terms."""
    recorder = pipe.feature_recorder(config)
    with pipe.speed_options(config), recorder:
        with torch.no_grad():
            reference = recorder.run(pipe.model_prediction, reference_latents, t, source)
        leaf = latents.detach().clone().float().requires_grad_(True)
        with pipe.guidance_backward(config), torch.enable_grad():
            terms = scaled_backward(
                lambda: pipe.guidance_objective(leaf, t, target, reference, recorder, config), [leaf], scale
            )
    return leaf.grad.detach(), {key: float(value.detach()) for key, value in terms.items()}


def feature_gradient_sensitivity(
    pipe: SMAMotionTransferPipeline, config: SMAConfig, reference_latents: torch.Tensor, latents: torch.Tensor,
    t: int | float, source: torch.Tensor, target: torch.Tensor, epsilon: float = 2.0**-11,
) -> float:
    """How much the objective's gradient with respect to the recorded features moves, in float32, when the
    features change by a relative ``epsilon`` (default: float16's precision, 2⁻¹¹) of seeded noise:
    ``‖g(f·(1 + ε·n)) − g(f)‖ / ‖g(f)‖``. What no half-precision forward can do better than; the
    denoiser must be in float32."""
    recorder = pipe.feature_recorder(config)
    with pipe.speed_options(config), recorder, torch.no_grad():
        reference = {k: v.float() for k, v in recorder.run(pipe.model_prediction, reference_latents, t, source).items()}
        features = {k: v.float() for k, v in recorder.run(pipe.model_prediction, latents, t, target).items()}
    generator = torch.Generator("cpu").manual_seed(3)
    noise = {k: torch.randn(v.shape, generator=generator).to(v.device) for k, v in features.items()}

    def gradient(relative: float) -> torch.Tensor:
        leaves = {k: (v * (1 + relative * noise[k])).requires_grad_(True) for k, v in features.items()}
        with torch.enable_grad():
            total = pipe.objective_of_features(reference, leaves, config)["total"]
            grads = torch.autograd.grad(total, list(leaves.values()))
        return torch.cat([g.flatten().double() for g in grads])

    base = gradient(0.0)
    return float((gradient(epsilon) - base).norm() / base.norm())


def _compare(gradient: torch.Tensor, exact: torch.Tensor) -> dict[str, Any]:
    gradient, exact = gradient.double().flatten(), exact.double().flatten()
    finite = bool(torch.isfinite(gradient).all())
    return {
        "cosine": float(torch.nn.functional.cosine_similarity(gradient, exact, dim=0)) if finite else None,
        "relative_error": float((gradient - exact).norm() / exact.norm()) if finite else None,
        "zero_share": float((gradient == 0).double().mean()),
        "finite": finite,
    }


def run_precision_benchmark(
    pipe: SMAMotionTransferPipeline, config: SMAConfig, dtype: torch.dtype, log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compare ``dtype``'s guidance gradients with float32's on ``pipe`` (loaded in float32) at
    ``config``'s size; the denoiser is cast to ``dtype`` for the comparison and back afterwards.
    Returns a JSON-ready record."""
    device = pipe.device
    t = pipe.sampling_timesteps(config.num_inference_steps)[0]
    source, target = pipe.encode_prompt(SOURCE_PROMPT), pipe.encode_prompt(TARGET_PROMPT)
    shape = pipe.backbone.latent_shape(pipe, config)
    reference_latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(1)).to(device)
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(2)).to(device)
    variants = {"DMT": config.replace(lambda_global=0.0, lambda_local=0.0), "DMT + SMA": config}
    off = LossScale.for_run("off", 1.0, dtype)
    rows = []
    exact, sensitivity = {}, {}
    for name, variant in variants.items():
        clock = time.perf_counter()
        exact[name] = guidance_gradient(pipe, variant, reference_latents, latents, t, source, target, off)
        sensitivity[name] = feature_gradient_sensitivity(pipe, variant, reference_latents, latents, t, source, target)
        if log:
            log(f"{name}: float32 gradient in {time.perf_counter() - clock:.1f}s; its gradient at the features moves "
                f"{sensitivity[name]:.4f} under a 2^-11 relative change of them")
    with quiet_loading():  # diffusers' note on casting with .to(): nothing is kept in float32 here
        pipe.denoiser.to(dtype)
    try:
        for name, variant in variants.items():
            exact_gradient, exact_terms = exact[name]
            for scaling in ("off", config.loss_scaling if config.loss_scaling != "off" else "dynamic"):
                scale = LossScale.for_run(scaling, config.loss_scale, dtype)
                if scaling != "off" and not scale.enabled:
                    break  # bfloat16: nothing is scaled, the row would repeat the one before
                clock = time.perf_counter()
                gradient, terms = guidance_gradient(pipe, variant, reference_latents, latents, t, source, target, scale)
                row = {
                    "objective": name, "loss_scaling": scaling if scale.enabled else "off",
                    "loss_scale": scale.last if scale.enabled else None, "retries": scale.retries,
                    **_compare(gradient, exact_gradient), "float32_sensitivity": sensitivity[name],
                    "loss": terms["total"], "loss_float32": exact_terms["total"], "seconds": time.perf_counter() - clock,
                }
                rows.append(row)
                if log:
                    log(f"{name}, loss scaling {row['loss_scaling']}: cosine {row['cosine']}, relative error "
                        f"{row['relative_error']}, {row['seconds']:.1f}s")
    finally:
        with quiet_loading():
            pipe.denoiser.to(torch.float32)
    return {
        "model": pipe.model_name,
        "family": pipe.backbone.name,
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(device),
        "frames": config.num_frames,
        "height": config.height,
        "width": config.width,
        "feature_layers": list(config.feature_layers),
        "timestep": float(t),
        "lambda_global": config.lambda_global,
        "lambda_local": config.lambda_local,
        "activation_checkpointing": config.activation_checkpointing,
        "rows": rows,
    }


def precision_table(record: dict[str, Any]) -> str:
    """The comparison as markdown."""
    head = (f"{record['model']} · {record['frames']} × {record['height']} × {record['width']} · {record['dtype']} on "
            f"{record['device']} against float32 · gradient of one guided step w.r.t. the latent at t = {record['timestep']:g}")
    lines = [head, "", "| objective | loss scaling | cosine | relative error | zero share | finite | float32 sensitivity |",
             "|---|---|---:|---:|---:|---|---:|"]
    for row in record["rows"]:
        scaling = row["loss_scaling"] + (f" ({row['loss_scale']:g})" if row["loss_scale"] else "")
        cosine = "—" if row["cosine"] is None else f"{row['cosine']:.6f}"
        error = "—" if row["relative_error"] is None else f"{row['relative_error']:.4f}"
        lines.append(f"| {row['objective']} | {scaling} | {cosine} | {error} | {row['zero_share']:.4f} | "
                     f"{'yes' if row['finite'] else 'NO'} | {row['float32_sensitivity']:.4f} |")
    lines.append("")
    lines.append("float32 sensitivity: how far the float32 gradient at the recorded features moves when they change by "
                 "float16's relative precision (2^-11): a half-precision run cannot agree better than that.")
    return "\n".join(lines)


__all__ = ["feature_gradient_sensitivity", "guidance_gradient", "precision_table", "run_precision_benchmark"]
