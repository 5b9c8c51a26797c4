"""Speed and memory benchmark of the pipeline's stages (``sma-guide bench speed``).

Each stage is run ``warmup`` times untimed, then ``repeats`` times timed (wall clock, with the GPU
synchronised); the table gives the median and the spread (min–max). Memory is the CUDA allocator's
peak during the stage on a GPU, and the process's peak resident set size so far on a CPU (the OS
keeps only a running maximum, so a CPU figure never goes down from one stage to the next).

Stages, all at the settings of the model's :class:`~sma_guidance.config.SMAConfig` (its preset, then
the caller's overrides):

- ``inversion``: a DDIM inversion of the clip up to the first sampling timestep (no cache);
- ``reference features``: one forward with the source prompt up to the last recorded layer;
- ``guidance iteration``: one latent-optimization iteration: forward to the last recorded layer
  with the target prompt, the loss, and the backward to the latent; timed with the configured
  λg, λl and again with λg = λl = 0 (plain DMT) in the same run, whose ratio is reported;
- ``guidance iteration, full forward``: the same without stopping the forward after the last
  recorded layer (what the early stop saves);
- ``SMA terms``: the global + local spectral terms alone (forward and backward) on recorded features;
- ``denoising step``: one DDIM step with classifier-free guidance (a batch of two);
- ``decode``: the VAE decode of the clip's latents;
- ``whole run``: the full ``pipe(...)`` call (inversion cache off).
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sma_guidance.config import SMAConfig
from sma_guidance.spectral import frame_residuals, global_motion_loss, local_motion_loss

from pipelines.motion_transfer.pipeline_sma import SMAMotionTransferPipeline


# ------------------------------------------------------------------------------------ measurement
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def measure(fn: Callable[[], Any], device: torch.device, warmup: int = 1, repeats: int = 3) -> dict[str, Any]:
    """Median / min / max seconds of ``fn()`` over ``repeats`` timed calls after ``warmup`` untimed
    ones, and the peak memory in bytes (see the module docstring for what "peak" means)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        _synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "repeats": repeats,
        "peak_memory_bytes": int(peak),
    }


# ------------------------------------------------------------------------------------ the stages
def _clip(config: SMAConfig, seed: int = 0) -> np.ndarray:
    """A random uint8 clip ``(F, H, W, 3)`` at the run's size: content does not change the cost."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (config.num_frames, config.height, config.width, 3), dtype=np.uint8)


class _Stages:
    """The pipeline's pieces at one config, prepared once so that each stage times only itself."""

    def __init__(self, pipe: SMAMotionTransferPipeline, config: SMAConfig) -> None:
        self.pipe, self.config = pipe, config
        self.clip = _clip(config)
        self.frames, _ = pipe.prepare_video(self.clip, config)
        self.timesteps = pipe.sampling_timesteps(config.num_inference_steps)
        self.t = self.timesteps[0]
        self.negative, self.target, self.source = (
            pipe.encode_prompt(text) for text in (config.negative_prompt, "a benchmark", config.source_prompt)
        )
        self.latents = pipe.encode_video(self.frames, config.vae_batch_size).float()
        self.recorder = pipe.feature_recorder(config)
        with self.recorder, torch.no_grad():
            self.reference = self.recorder.run(pipe.model_prediction, self.latents, self.t, self.source)

    def inversion(self) -> None:
        self.pipe.invert(self.frames, self.source, self.config.replace(inversion_cache=False), [self.t])

    def reference_features(self) -> None:
        with self.recorder, torch.no_grad():
            self.recorder.run(self.pipe.model_prediction, self.latents, self.t, self.source)

    def guidance_iteration(self, config: SMAConfig, early_stop: bool = True) -> Callable[[], None]:
        recorder = self.recorder if early_stop else self.pipe.feature_recorder(config, stop_after_last=False)


        def step() -> None:
            latents = self.latents.detach().clone().requires_grad_(True)
            with recorder, self.pipe.guidance_backward(config), torch.enable_grad():
                terms = self.pipe.guidance_objective(latents, self.t, self.target, self.reference, recorder, config)
                terms["total"].backward()

        return step

    def sma_terms(self) -> None:
        settings = self.config.spectral_settings
        if not hasattr(self, "_perturbed"):  # made once: the stage times the terms, not the noise
            generator = torch.Generator("cpu").manual_seed(0)
            self._perturbed = {
                name: ref.float() + 0.1 * torch.randn(ref.shape, generator=generator).to(ref.device)
                for name, ref in self.reference.items()
            }
        with torch.enable_grad():
            total = 0.0
            for name, ref in self.reference.items():
                ref = ref.float()
                pred = self._perturbed[name].detach().requires_grad_(True)
                res_ref, res_pred = frame_residuals(ref), frame_residuals(pred)
                if self.config.lambda_global:
                    total = total + self.config.lambda_global * global_motion_loss(
                        res_ref, res_pred, settings["levels"], settings["level_weights"], settings["wavelet"]
                    )
                if self.config.lambda_local:
                    total = total + self.config.lambda_local * local_motion_loss(res_ref, res_pred, settings["delta"])
            if isinstance(total, torch.Tensor):
                total.backward()

    def denoising_step(self) -> None:
        embeddings = torch.cat([self.negative, self.target])
        self.pipe.denoise_step(self.latents, self.t, embeddings, self.config.guidance_scale)

    def decode(self) -> None:
        with torch.no_grad():
            self.pipe.decode_latents(self.latents, self.config.vae_batch_size)

    def whole_run(self) -> None:
        self.pipe(self.clip, "a benchmark", config=self.config.replace(inversion_cache=False), output_type="pt")


def run_speed_benchmark(
    pipe: SMAMotionTransferPipeline,
    config: SMAConfig,
    warmup: int = 1,
    repeats: int = 3,
    whole_run: bool = True,
    scaling_frames: tuple[int, ...] = (),
    scaling_sizes: tuple[tuple[int, int], ...] = (),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time every stage (see the module docstring) and, optionally, a guidance iteration at other
    frame counts and sizes. Returns a JSON-ready record."""
    with pipe.speed_options(config):
        device = pipe.device
        say = log or (lambda message: None)
        stages = _Stages(pipe, config)
        dmt_only = config.replace(lambda_global=0.0, lambda_local=0.0)
        plan: list[tuple[str, Callable[[], None], int, int]] = [
            ("inversion", stages.inversion, min(warmup, 1), repeats),
            ("reference features", stages.reference_features, warmup, repeats),
            ("guidance iteration, full forward", stages.guidance_iteration(config, early_stop=False), warmup, repeats),
            ("SMA terms", stages.sma_terms, warmup, repeats),
            ("denoising step", stages.denoising_step, warmup, repeats),
            ("decode", stages.decode, warmup, repeats),
        ]
        if whole_run:
            plan.append(("whole run", stages.whole_run, 0, 1))
        results: dict[str, Any] = {}
        say("timing a guidance iteration with and without the SMA terms, alternately ...")
        results["guidance iteration"], results["guidance iteration, λg = λl = 0"] = measure_interleaved(
            stages.guidance_iteration(config), stages.guidance_iteration(dmt_only), device, warmup, max(repeats, 5)
        )
        for name, fn, stage_warmup, stage_repeats in plan:
            say(f"timing {name} ...")
            results[name] = measure(fn, device, stage_warmup, stage_repeats)
        order = ["inversion", "reference features", "guidance iteration", "guidance iteration, λg = λl = 0"]
        results = {name: results[name] for name in [*order, *(n for n in results if n not in order)]}
        with_sma = results["guidance iteration"]["median_s"]
        without = results["guidance iteration, λg = λl = 0"]["median_s"]
        record: dict[str, Any] = {
            "model": pipe.model_name,
            "device": device_description(device),
            "dtype": str(pipe.denoiser.dtype).replace("torch.", ""),
            "torch_threads": torch.get_num_threads(),
            "frames": config.num_frames,
            "height": config.height,
            "width": config.width,
            "inversion_steps_run": _inversion_steps_run(pipe, config, stages.t),
            "num_inference_steps": config.num_inference_steps,
            "optimization_steps": config.optimization_steps,
            "feature_layers": list(config.feature_layers),
            "lambda_global": config.lambda_global,
            "lambda_local": config.lambda_local,
            "memory": "CUDA allocator peak" if device.type == "cuda" else "process peak RSS so far",
            "attention": config.attention,
            "activation_checkpointing": config.activation_checkpointing,
            "vae_batch_size": config.vae_batch_size,
            "vae_tiling": config.vae_tiling,
            "stages": results,
            "sma_ratio": with_sma / without,
            "scaling": [],
            "config": config.to_dict(),
        }
        for frames in scaling_frames:
            record["scaling"].append(_scaling_point(pipe, config.replace(num_frames=frames), warmup, repeats, say))
        for height, width in scaling_sizes:
            record["scaling"].append(_scaling_point(pipe, config.replace(height=height, width=width), warmup, repeats, say))
        return record


def _inversion_steps_run(pipe: SMAMotionTransferPipeline, config: SMAConfig, t_max: float) -> int:
    return pipe.sampler.inversion_steps_run(config.inversion_steps, t_max)


def measure_interleaved(
    first: Callable[[], Any], second: Callable[[], Any], device: torch.device, warmup: int = 1, repeats: int = 5
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`measure` of two functions called alternately (A B A B ...), so that a drift of the
    machine's speed (other processes, clocks) hits both alike: for ratios of close timings."""
    for _ in range(warmup):
        first()
        second()
    pairs = [(measure(first, device, 0, 1), measure(second, device, 0, 1)) for _ in range(repeats)]

    def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
        seconds = [r["median_s"] for r in results]
        return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
                "repeats": repeats, "peak_memory_bytes": max(r["peak_memory_bytes"] for r in results)}

    return combine([a for a, _ in pairs]), combine([b for _, b in pairs])


def _scaling_point(pipe, config: SMAConfig, warmup: int, repeats: int, say: Callable[[str], None]) -> dict[str, Any]:
    say(f"timing a guidance iteration at {config.num_frames} × {config.height} × {config.width} ...")
    stages = _Stages(pipe, config.validate())
    if pipe.device.type == "cuda":
        torch.cuda.empty_cache()
    result = measure(stages.guidance_iteration(config), pipe.device, warmup, repeats)
    return {"frames": config.num_frames, "height": config.height, "width": config.width, **result}


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# ------------------------------------------------------------------------------------ inversion steps
def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [0, 1]."""
    mse = float((a.float() - b.float()).pow(2).mean())
    return float("inf") if mse == 0 else 10 * float(np.log10(1 / mse))


@torch.no_grad()
def inversion_reconstruction(
    pipe: SMAMotionTransferPipeline, clip: np.ndarray, source_prompt: str, config: SMAConfig
) -> dict[str, float]:
    """How well a ``config.inversion_steps``-step DDIM inversion comes back: invert the clip to the
    first sampling timestep, run plain DDIM (``config.num_inference_steps``, the source prompt, no
    classifier-free guidance) back to t = 0 and compare, in PSNR, with the VAE's own reconstruction
    (the inversion's error alone) and with the input. Also the inversion's seconds."""
    frames, _ = pipe.prepare_video(clip, config)
    timesteps = pipe.sampling_timesteps(config.num_inference_steps)
    source = pipe.encode_prompt(source_prompt)
    start = time.perf_counter()
    inverted, _ = pipe.invert(frames, source, config.replace(inversion_cache=False), [timesteps[0]])
    seconds = time.perf_counter() - start
    latents = inverted[timesteps[0]]
    embeddings = torch.cat([source, source])
    for t in timesteps:
        latents = pipe.denoise_step(latents, t, embeddings, 1.0)
    video = pipe.decode_latents(latents)[0]  # (F, 3, H, W) in [0, 1]
    autoencoded = pipe.decode_latents(pipe.encode_video(frames))[0]
    frames = (frames.to(video.device) + 1) / 2  # prepare_video gives [-1, 1]
    return {"psnr_vs_autoencoded": _psnr(video, autoencoded), "psnr_vs_input": _psnr(video, frames),
            "inversion_seconds": seconds}


def run_inversion_study(
    pipe: SMAMotionTransferPipeline,
    config: SMAConfig,
    clips: list[tuple[np.ndarray, str]],
    step_counts: tuple[int, ...],
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """:func:`inversion_reconstruction` of every ``(clip, source prompt)`` at each inversion step
    count; one row per count with the means and the spread (min) of the PSNRs."""
    rows = []
    for steps in step_counts:
        run_config = config.replace(inversion_steps=steps).validate()
        results = []
        for index, (clip, prompt) in enumerate(clips):
            results.append(inversion_reconstruction(pipe, clip, prompt, run_config))
            if log:
                log(f"{steps} inversion steps: clip {index + 1}/{len(clips)} "
                    f"PSNR {results[-1]['psnr_vs_autoencoded']:.1f} dB ({results[-1]['inversion_seconds']:.1f} s)")
        rows.append({
            "inversion_steps": steps,
            "clips": len(results),
            **{f"mean_{key}": float(np.mean([r[key] for r in results])) for key in results[0]},
            **{f"min_{key}": float(np.min([r[key] for r in results])) for key in ("psnr_vs_autoencoded", "psnr_vs_input")},
        })
    return rows


def inversion_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| inversion steps | s / clip | PSNR vs VAE reconstruction (mean, min) | PSNR vs input (mean, min) |",
             "|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['inversion_steps']} | {row['mean_inversion_seconds']:.2f} | "
            f"{row['mean_psnr_vs_autoencoded']:.1f} dB, {row['min_psnr_vs_autoencoded']:.1f} | "
            f"{row['mean_psnr_vs_input']:.1f} dB, {row['min_psnr_vs_input']:.1f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ reporting
def _memory(value: int) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def markdown_table(record: dict[str, Any]) -> str:
    """The stages table, the SMA ratio line and (when measured) the scaling table."""
    head = (
        f"{record['model']} · {record['frames']} × {record['height']} × {record['width']} · {record['dtype']} · "
        f"{record['device']} · memory: {record['memory']}\n\n"
        f"attention {record['attention']} · activation checkpointing {record['activation_checkpointing']} · "
        f"VAE batch {record['vae_batch_size']}{' · VAE tiling' if record['vae_tiling'] else ''}"
    )
    lines = [head, "", "| stage | median | spread (min–max) | repeats | peak memory |", "|---|---:|---:|---:|---:|"]
    for name, result in record["stages"].items():
        spread = f"{_seconds(result['min_s'])} – {_seconds(result['max_s'])}"
        label = f"{name} ({record['inversion_steps_run']} steps)" if name == "inversion" else name
        lines.append(
            f"| {label} | {_seconds(result['median_s'])} | {spread} | {result['repeats']} | "
            f"{_memory(result['peak_memory_bytes'])} |"
        )
    ratio = (
        f"SMA terms cost: guidance iteration with λg = {record['lambda_global']}, λl = {record['lambda_local']} "
        f"over λg = λl = 0: ratio {record['sma_ratio']:.3f}"
    )
    lines += ["", ratio]
    if record["scaling"]:
        lines += ["", "| frames | height × width | guidance iteration (median) | peak memory |", "|---:|---:|---:|---:|"]
        for point in record["scaling"]:
            lines.append(
                f"| {point['frames']} | {point['height']} × {point['width']} | {_seconds(point['median_s'])} | "
                f"{_memory(point['peak_memory_bytes'])} |"
            )
    return "\n".join(lines)


__all__ = ["inversion_reconstruction", "inversion_table", "markdown_table", "measure", "measure_interleaved", "peak_rss_bytes", "run_inversion_study", "run_speed_benchmark"]
