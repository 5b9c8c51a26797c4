"""The first thing to run when a GPU is at hand: every family's full-size architecture in the dtype a GPU
user gets, checked and measured in one go (``python3 -m pipelines.bench.gpu_check``; issue "Real checkpoints
at real precision").

For each of ``zeroscope-arch`` (24 × 320 × 576), ``animatediff-arch`` (16 × 512 × 512) and
``wan2.1-1.3b-arch`` (81 × 480 × 832) — the real architectures with seeded random weights, built on the
GPU — in ``--dtype auto`` (float16; Wan bfloat16):

- one guided step (the reference features, ``optimization_steps`` Adam iterations on the latent with the
  loss scale, one CFG denoising step) and one guidance iteration, timed;
- ``torch.cuda.max_memory_allocated`` over the step against ``sma-guide bench memory``'s estimate;
- the inversion's time per step (``num_inference_steps`` steps run; the preset's count projected);
- NaN / inf: the objective, the optimized latent, the denoised latent and the decoded frames are finite;
- ``bench precision`` (the model reloaded in float32: half-precision gradients against float32's, with
  and without loss scaling) and ``bench terms`` (each term's gradient against DMT's).

Writes ``$OUT/gpu_check.json`` (or ``--output``) after every family, so a run cut short still returns what
it measured, and ``gpu_check.md``: the tables for RESULTS.md.

The lent machines have PyTorch but not diffusers and no network. Prepare once, here, in the repository root::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \\
        diffusers==0.42.1 importlib_metadata zipp PyWavelets pytorch-wavelets imageio-ffmpeg

then run with ``carry [".whl"]``: ``PYTHONUNBUFFERED=1 python3 -m pipelines.bench.gpu_check`` (it installs the
wheels itself when diffusers is missing). ``--models`` picks families; ``--device cpu --small`` runs the
tiny models here as a smoke test of the script.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.motion_transfer.models import ARCH_MODELS, TINY_MODELS

ROOT = Path(__file__).resolve().parents[2]
FULL_SIZE = tuple(ARCH_MODELS.values())
SMALL = tuple(TINY_MODELS.values())
_GIB = 2**30


def ensure_packages() -> None:
    """Install the carried wheels (``.whl``) into /tmp/site when diffusers is missing; the project's root on the path."""
    sys.path.insert(0, str(ROOT))
    try:
        import diffusers  # noqa: F401
        return
    except ImportError:
        pass
    wheels = sorted(glob.glob(str(ROOT / ".whl" / "*.whl")))
    if not wheels:
        sys.exit("diffusers is not installed and no wheels were carried in .whl (see this file's docstring)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", "/tmp/site", *wheels], check=True)
    sys.path.insert(0, "/tmp/site")


def _synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load(model: str, device: str, dtype: str) -> Any:
    """The model built directly on ``device`` (random initialization of billions of weights is slow on a CPU)."""
    import torch

    from pipelines import SMAMotionTransferPipeline

    with torch.device(device):
        pipe = SMAMotionTransferPipeline.load(model, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def guided_step(pipe: Any, config: Any) -> dict[str, Any]:
    """One guided step at the first sampling timestep, timed, with the memory peak and finiteness checks."""
    import torch

    device = pipe.device
    timesteps = pipe.sampling_timesteps(config.num_inference_steps)
    t = timesteps[0]
    shape = pipe.backbone.latent_shape(pipe, config)
    reference = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(1)).to(device)
    start = pipe.initial_latent(reference, torch.randn(shape, generator=torch.Generator("cpu").manual_seed(2)).to(device),
                                config.downsample_factor, config.low_pass_grid)
    negative, target, source = (pipe.encode_prompt(text) for text in (config.negative_prompt, "a red car", "a white car"))
    recorder = pipe.feature_recorder(config)
    scale = pipe.loss_scale(config)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _synchronize(device)
    clock = time.perf_counter()
    with pipe.speed_options(config), recorder, torch.enable_grad():
        latents, history = pipe.optimize_latent(start, t, reference, source, target, config.learning_rate_start, config,
                                                recorder, loss_scale=scale)
    _synchronize(device)
    guidance = time.perf_counter() - clock
    with pipe.speed_options(config):
        denoised = pipe.sampling_step(latents, 0, timesteps, torch.cat([negative, target]), int(config.restart_sampling),
                                      guidance_scale=config.guidance_scale)
    _synchronize(device)
    step = time.perf_counter() - clock
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    with pipe.speed_options(config):
        frames = pipe.decode_latents(denoised, config.vae_batch_size)
    finite = {
        "objective": all(all(map(_finite_number, record.values())) for record in history),
        "optimized latent": bool(torch.isfinite(latents).all()),
        "denoised latent": bool(torch.isfinite(denoised).all()),
        "decoded frames": bool(torch.isfinite(frames).all()),
    }
    return {"guided_step_s": step, "guidance_s": guidance, "iteration_s": guidance / max(config.optimization_steps, 1),
            "peak_bytes": peak, "finite": finite, "loss_first": history[0]["total"], "loss_last": history[-1]["total"],
            "loss_scale": scale.last if scale.enabled else None, "loss_scale_retries": scale.retries}


def _finite_number(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def inversion_time(pipe: Any, config: Any, preset_steps: int) -> dict[str, Any]:
    """The inversion of a random clip to the first sampling timestep with ``config.inversion_steps`` steps."""
    import numpy as np
    import torch

    clip = np.random.default_rng(0).integers(0, 256, (config.num_frames, config.height, config.width, 3), dtype=np.uint8)
    frames, _ = pipe.prepare_video(clip, config)
    t = pipe.sampling_timesteps(config.num_inference_steps)[0]
    source = pipe.encode_prompt("a white car")
    _synchronize(pipe.device)
    clock = time.perf_counter()
    inverted, _ = pipe.invert(frames, source, config.replace(inversion_cache=False), [t])
    _synchronize(pipe.device)
    seconds = time.perf_counter() - clock
    steps = pipe.sampler.inversion_steps_run(config.inversion_steps, t)
    return {"steps": steps, "seconds": seconds, "seconds_per_step": seconds / steps,
            "preset_steps": pipe.sampler.inversion_steps_run(preset_steps, t),
            "finite": bool(torch.isfinite(inverted[t]).all())}


def check_model(model: str, device: str, log: Any) -> dict[str, Any]:
    import torch

    from pipelines.motion_transfer.memory_estimate import estimate_memory
    from pipelines.bench.precision import run_precision_benchmark
    from pipelines.bench.terms import run_terms_benchmark

    clock = time.perf_counter()
    pipe = _load(model, device, "auto")
    dtype = pipe.denoiser.dtype
    preset = pipe.default_config()
    config = preset.replace(inversion_steps=preset.num_inference_steps)  # timed per step, projected to the preset's
    log(f"{model}: loaded in {dtype} in {time.perf_counter() - clock:.0f}s; {config.num_frames} x {config.height} x {config.width}")
    result: dict[str, Any] = {"model": model, "family": pipe.backbone.name, "dtype": str(dtype).replace("torch.", ""),
                              "frames": config.num_frames, "height": config.height, "width": config.width,
                              "activation_checkpointing": config.activation_checkpointing,
                              "optimization_steps": config.optimization_steps,
                              "feature_layers": list(config.feature_layers)}
    result["step"] = guided_step(pipe, config)
    log(f"{model}: guided step {result['step']['guided_step_s']:.1f}s, peak {result['step']['peak_bytes'] or 0:,} bytes, "
        f"finite {result['step']['finite']}")
    result["inversion"] = inversion_time(pipe, config, preset.inversion_steps)
    log(f"{model}: inversion {result['inversion']['seconds_per_step']:.3f}s per step")
    result["estimate_bytes"] = estimate_memory(model, config, dtype, checkpointing=(config.activation_checkpointing,))[
        "checkpointing"][config.activation_checkpointing]["peak_bytes"]
    del pipe
    if device == "cuda":
        torch.cuda.empty_cache()
    pipe = _load(model, device, "float32")
    half = dtype if dtype != torch.float32 else torch.float16  # a CPU smoke run still compares a half precision
    result["precision"] = run_precision_benchmark(pipe, config, half)
    log(f"{model}: precision {[(r['objective'], r['loss_scaling'], r['relative_error']) for r in result['precision']['rows']]}")
    result["terms"] = run_terms_benchmark(pipe, config)
    result["seconds"] = time.perf_counter() - clock
    del pipe
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def markdown(results: list[dict[str, Any]], device_name: str) -> str:
    """RESULTS.md's tables: speed, memory and finiteness per family; precision per family and objective."""
    lines = [f"Measured on {device_name} by `python3 -m pipelines.bench.gpu_check` (random weights, real architectures).", "",
             "| model | size | dtype | guided step (s) | iteration (s) | inversion (s/step; preset) | peak GiB (estimate) | finite |",
             "|---|---|---|---:|---:|---|---:|---|"]
    for r in results:
        step, inv = r["step"], r["inversion"]
        peak = f"{step['peak_bytes'] / _GIB:.1f}" if step["peak_bytes"] else "—"
        lines.append(
            f"| {r['model']} | {r['frames']} × {r['height']} × {r['width']} | {r['dtype']} | {step['guided_step_s']:.2f} | "
            f"{step['iteration_s']:.2f} | {inv['seconds_per_step']:.3f}; {inv['preset_steps']} steps ≈ "
            f"{inv['seconds_per_step'] * inv['preset_steps']:.0f} s | {peak} ({r['estimate_bytes'] / _GIB:.1f}) | "
            f"{'yes' if all(step['finite'].values()) and inv['finite'] else 'NO: ' + str(step['finite'])} |")
    lines += ["", "| model | objective | loss scaling | cosine | relative error |", "|---|---|---|---:|---:|"]
    for r in results:
        for row in r["precision"]["rows"]:
            cosine = "—" if row["cosine"] is None else f"{row['cosine']:.6f}"
            error = "—" if row["relative_error"] is None else f"{row['relative_error']:.4f}"
            lines.append(f"| {r['model']} | {row['objective']} | {row['loss_scaling']} | {cosine} | {error} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated; default: the three full-size architectures")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="the tiny models (a smoke test of this script)")
    parser.add_argument("--output", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    args = parser.parse_args(argv)
    ensure_packages()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from sma_guidance.atomic import write_json

    models = args.models.split(",") if args.models else (SMALL if args.small else FULL_SIZE)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    log = lambda message: print(message, flush=True)  # noqa: E731
    log(f"{device_name}, torch {torch.__version__}")
    results: list[dict[str, Any]] = []
    for model in models:
        try:
            results.append(check_model(model, args.device, log))
        except Exception as err:  # noqa: BLE001 — one family's failure is a finding; the others still run
            log(f"{model}: FAILED: {type(err).__name__}: {err}")
            results.append({"model": model, "error": f"{type(err).__name__}: {err}"})
        write_json(args.output, {"device": device_name, "torch": torch.__version__, "results": results})
        done = [r for r in results if "error" not in r]
        if done:
            args.output.with_suffix(".md").write_text(markdown(done, device_name))
    log(f"wrote {args.output}")


if __name__ == "__main__":
    main()
