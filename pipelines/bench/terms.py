"""How hard each term of the guidance objective pulls, at a model's own feature sizes (``sma-guide bench terms``).

SMA's λg = 0.4 and λl = 0.2 come from its pixel- and latent-space fine-tunes; the zero-shot objective
applies them to raw denoiser features, whose size and scale differ from model to model: the wavelet
term is a mean of absolute Haar coefficients (its gradient per element does not grow with the frame),
the Fourier term's amplitudes grow with H·W under the unnormalized FFT, and DMT's cosine does not care
about scale at all. This benchmark measures, for every recorded layer at the first guided step, the
norm of the gradient of λg·global, λl·local (and of its amplitude and phase parts) with respect to the
predicted features, against DMT's — the ratios say what λ means on that model — under each way of
scaling the spectral terms (:data:`SCALINGS`).

The features are those of a realistic first guided step: the reference latent ``z`` (a clip's
inversion when a clip is given, else a seeded draw: at the first sampling timestep a latent is almost
pure noise) with the source prompt, and DMT's initial latent (``z``'s low spatial frequencies, fresh
noise's high ones, at the configuration's cut-off) with the target prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sma_guidance.config import SMAConfig
from sma_guidance.dmt import dmt_loss, initial_latent
from sma_guidance.spectral import frame_residuals, global_motion_loss, local_motion_loss

from pipelines.motion_transfer.pipeline_sma import SMAMotionTransferPipeline

# name -> (divide both feature maps by the reference's RMS, the FFT's norm)
SCALINGS: dict[str, tuple[bool, str]] = {
    "paper": (False, "backward"),
    "ortho FFT": (False, "ortho"),
    "ref-rms": (True, "backward"),
    "ref-rms + ortho FFT": (True, "ortho"),
}
TARGET_PROMPT, SOURCE_PROMPT = "a red car driving on a road", "a white car driving on a road"


def term_gradient_norms(ref: torch.Tensor, pred: torch.Tensor, config: SMAConfig, rms: bool, norm: str) -> dict[str, float]:
    """Norms of the gradients of DMT's term, λg·global and λl·local (and of λl times its amplitude and its
    phase part alone) with respect to ``pred`` (features ``(B, F, C, H, W)``), float32."""
    ref, pred = ref.float().detach(), pred.float().detach().requires_grad_(True)
    scale = ref.pow(2).mean().sqrt().clamp_min(1e-8) if rms else 1.0
    settings = config.spectral_settings

    def residuals() -> tuple[torch.Tensor, torch.Tensor]:
        return frame_residuals(ref / scale), frame_residuals(pred / scale)

    def phase_only() -> torch.Tensor:  # the phase half of eq. 17: the whole minus the amplitude half
        r, p = residuals()
        return local_motion_loss(r, p, settings["delta"], norm=norm) - _amplitude_part(r, p, settings["delta"], norm)

    terms: dict[str, Callable[[], torch.Tensor]] = {
        "dmt": lambda: dmt_loss(ref, pred),
        "global": lambda: config.lambda_global * global_motion_loss(
            *residuals(), settings["levels"], settings["level_weights"], settings["wavelet"]),
        "local": lambda: config.lambda_local * local_motion_loss(*residuals(), settings["delta"], norm=norm),
        "local amplitude": lambda: config.lambda_local * _amplitude_part(*residuals(), settings["delta"], norm),
        "local phase": lambda: config.lambda_local * phase_only(),
    }
    norms = {}
    for name, term in terms.items():
        (gradient,) = torch.autograd.grad(term(), pred)
        norms[name] = float(gradient.norm())
    return norms


def _amplitude_part(ref: torch.Tensor, pred: torch.Tensor, delta: float, norm: str) -> torch.Tensor:
    """The amplitude half of eq. 17: the local term with the prediction's phases made the reference's."""
    spec_ref, spec_pred = torch.fft.rfft2(ref, norm=norm), torch.fft.rfft2(pred, norm=norm)
    same_phase = torch.polar(spec_pred.abs(), torch.angle(spec_ref))
    aligned = torch.fft.irfft2(same_phase, s=pred.shape[-2:], norm=norm)
    return local_motion_loss(ref, aligned, delta, norm=norm)


def run_terms_benchmark(
    pipe: SMAMotionTransferPipeline, config: SMAConfig, reference_latents: torch.Tensor | None = None,
    source_prompt: str = SOURCE_PROMPT, log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Each term's gradient norm at every recorded layer of ``pipe`` at ``config``'s size, under each of
    :data:`SCALINGS`. ``reference_latents``: the clip's latents at the first sampling timestep (default a
    seeded draw). Returns a JSON-ready record."""
    t = pipe.sampling_timesteps(config.num_inference_steps)[0]
    shape = pipe.backbone.latent_shape(pipe, config)
    if reference_latents is None:
        reference_latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(1))
    reference_latents = reference_latents.to(pipe.device, torch.float32)
    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(2)).to(pipe.device)
    start = initial_latent(reference_latents, noise, config.downsample_factor, config.low_pass_grid)
    recorder = pipe.feature_recorder(config)
    with pipe.speed_options(config), recorder, torch.no_grad():
        reference = recorder.run(pipe.model_prediction, reference_latents, t, pipe.encode_prompt(source_prompt))
        predicted = recorder.run(pipe.model_prediction, start, t, pipe.encode_prompt(TARGET_PROMPT))
    rows = []
    for layer in config.feature_layers:
        ref, pred = reference[layer], predicted[layer]
        for name, (rms, norm) in SCALINGS.items():
            norms = term_gradient_norms(ref, pred, config, rms, norm)
            row = {"layer": layer, "scaling": name, "shape": list(ref.shape), "rms": float(ref.float().pow(2).mean().sqrt()),
                   "gradient_norms": norms,
                   "global_over_dmt": norms["global"] / norms["dmt"], "local_over_dmt": norms["local"] / norms["dmt"]}
            rows.append(row)
            if log:
                log(f"{layer} {name}: global/DMT {row['global_over_dmt']:.3g}, local/DMT {row['local_over_dmt']:.3g}")
    return {
        "model": pipe.model_name, "family": pipe.backbone.name, "frames": config.num_frames, "height": config.height,
        "width": config.width, "timestep": float(t), "lambda_global": config.lambda_global,
        "lambda_local": config.lambda_local, "levels": config.levels, "low_pass": [config.downsample_factor, config.low_pass_grid],
        "rows": rows,
    }


def terms_table(record: dict[str, Any]) -> str:
    """The ratios as markdown: one row per layer and scaling."""
    head = (f"{record['model']} · {record['frames']} × {record['height']} × {record['width']} · gradient norms w.r.t. "
            f"the recorded features at t = {record['timestep']:g}, λg = {record['lambda_global']}, λl = {record['lambda_local']}")
    lines = [head, "", "| layer | features (B, F, C, H, W) | RMS | scaling | ‖∇ λg·global‖ / ‖∇ DMT‖ | "
             "‖∇ λl·local‖ / ‖∇ DMT‖ | amplitude part | phase part |", "|---|---|---:|---|---:|---:|---:|---:|"]
    for row in record["rows"]:
        norms = row["gradient_norms"]
        lines.append(
            f"| {row['layer']} | {tuple(row['shape'])} | {row['rms']:.3g} | {row['scaling']} | {row['global_over_dmt']:.3g} | "
            f"{row['local_over_dmt']:.3g} | {norms['local amplitude'] / norms['dmt']:.3g} | {norms['local phase'] / norms['dmt']:.3g} |"
        )
    return "\n".join(lines)


__all__ = ["SCALINGS", "run_terms_benchmark", "term_gradient_norms", "terms_table"]
