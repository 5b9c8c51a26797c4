"""``sma-guide``: transfer the motion of a video to new content described by a prompt.

    sma-guide input.mp4 --prompt "a car driving in a forest"          # writes input.sma.mp4 + input.sma.json
    sma-guide input.mp4 --prompt "..." --model tiny-random -o out.mp4  # ~20 s on 2 CPU cores (output is noise)
    sma-guide input.mp4 --prompt "..." --model BASE --motion-adapter ADAPTER   # AnimateDiff (SD 1.5 + adapter)
    sma-guide ui                                                       # the same in a local web page

Every default comes from :class:`sma_guidance.config.SMAConfig` (DMT's published settings for Zeroscope,
SMA's λg = 0.4, λl = 0.2), overridden in turn by the model family's preset (detected from the model's
``model_index.json``), the model's preset, ``--config FILE`` and the flags.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import click

from sma_guidance.atomic import check_writable_folder
from sma_guidance.config import SMAConfig, write_run_record
from sma_guidance.errors import UserAdvice, UserError

# CLI flag -> SMAConfig field, for the flags whose names differ from the field.
FLAG_FIELDS = {
    "frames": "num_frames",
    "steps": "num_inference_steps",
}


class _DefaultCommandGroup(click.Group):
    """A group whose first argument may be the input video: ``sma-guide IN ...`` means ``sma-guide run IN ...``."""

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultCommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sma-guide")
def main() -> None:
    """Zero-shot video motion transfer with Spectral Motion Alignment (SMA) on DMT.

    Usage: sma-guide INPUT --prompt TEXT [options]   (see `sma-guide run --help`)
    """
    warnings.showwarning = _show_advice


_show_warning = warnings.showwarning


def _show_advice(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """The project's advice (:class:`UserAdvice`) as one line ``warning: ...`` on stderr; other warnings as Python shows them."""
    if issubclass(category, UserAdvice):
        click.echo(f"warning: {message}", err=True)
    else:
        _show_warning(message, category, *args, **kwargs)


def reports_user_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Print a :class:`UserError` as one line ``error: ...`` and exit 1 (130 on Ctrl-C), no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except UserError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written", err=True)
            sys.exit(130)

    return wrapper


def _default_output(input_path: Path) -> Path:
    base = input_path.name if input_path.is_dir() else input_path.stem
    return input_path.parent / f"{base or 'output'}.sma.mp4"


def _comparison_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.side_by_side{output.suffix}")


def _strip_path(output: Path) -> Path:
    return output.with_name(output.stem + ".strip.png")


def _record_path(output: Path) -> Path:
    return output.with_suffix(".json")


@main.command("run")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--prompt", "-p", required=True, help="Target prompt: what the output shows.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output video (.mp4 or .gif). [default: INPUT.sma.mp4]")
@click.option("--source-prompt", help='Prompt describing the input (inversion and reference features). [default: ""]')
@click.option("--negative-prompt", help="Negative prompt for classifier-free guidance. [default: DMT's]")
@click.option("--model", help="Hub id (Zeroscope, AnimateDiff, Wan 2.1), local diffusers folder, shapes, tiny-random, "
                   "tiny-random-animatediff or tiny-random-wan. [default: cerspense/zeroscope_v2_576w]")
@click.option("--motion-adapter", help="AnimateDiff: a diffusers MotionAdapter (Hub id or folder) for an SD 1.5 --model.")
@click.option("--frames", type=int, help="Frames resampled from the input. [default: 24; AnimateDiff: 16; Wan: 81, always 4k + 1]")
@click.option("--start", type=float, help="Seconds of the input skipped before the part used. [default: 0]")
@click.option("--duration", type=float, help="Seconds of the input used from --start on; only those frames are decoded. "
                                             "[default: to the end]")
@click.option("--height", type=int, help="Output height, a multiple of 8 (Wan: 16). [default: 320; AnimateDiff: 512; Wan: 480]")
@click.option("--width", type=int, help="Output width, a multiple of 8 (Wan: 16). [default: 576; AnimateDiff: 512; Wan: 832]")
@click.option("--steps", type=int, help="Sampling steps (DDIM; Euler for flow-matching Wan). [default: 50]")
@click.option("--inversion-steps", type=int, help="Inversion steps; unset, the preset's count is fitted to pass through "
                                                  "the sampling timesteps. [default: 999; Wan: 50, a multiple of --steps]")
@click.option("--guidance-scale", type=float, help="Classifier-free guidance scale. [default: 10; AnimateDiff 7.5; Wan 5]")
@click.option("--feature-layers", help="Recorded layers, comma-separated submodule names of the UNet / transformer. "
                                       "[default: the family's: DMT's decoder block 1; Wan: blocks.15]")
@click.option("--guidance-fraction", type=float, help="Share of the first steps with latent optimization. [default: 0.4]")
@click.option("--optimization-steps", type=int, help="Adam steps on the latent per guided step. [default: 10]")
@click.option("--learning-rate-start", type=float, help="Adam's learning rate on the latent at the first guided step. [default: 0.007; shapes: preset]")
@click.option("--learning-rate-end", type=float, help="... and at the last guided step (linear in between). [default: 0.004; shapes: preset]")
@click.option("--lambda-global", type=float, help="Weight of the global (Haar wavelet) motion term. [default: 0.4]")
@click.option("--lambda-local", type=float, help="Weight of the local (FFT) motion term. [default: 0.2]")
@click.option("--levels", type=int, help="Haar wavelet levels, 1 to ceil(log2(frames - 1)). [default: that maximum, the paper's: 3 for 8 frames, 4 for 16]")
@click.option("--delta", type=float, help="Exponent δ of the low-frequency weights. [default: 0.05]")
@click.option("--downsample-factor", type=int, help="DMT's initial latent keeps the inversion's frequencies below 1/FACTOR of the latent size. [default: 4]")
@click.option("--low-pass-grid", type=int, help="The same cut-off as a grid of N cells along the latent's shorter side (overrides --downsample-factor). [default: off; shapes: preset]")
@click.option("--restart/--no-restart", "restart_sampling", default=None, help="DMT's restart sampling. [default: on]")
@click.option("--eta", type=float, help="DDIM eta of the steps after the guided ones: 0 deterministic, 1 DDPM-like. [default: 0; shapes: preset]")
@click.option("--guidance-rescale", type=float, help="Rescale of classifier-free guidance toward the conditional prediction's spread, 0 to 1. [default: 0; shapes: preset]")
@click.option("--cache/--no-cache", "inversion_cache", default=None, help="Reuse cached inversions. [default: on]")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Inversion cache. [default: $SMA_GUIDE_CACHE or ~/.cache/sma-guide]")
@click.option("--mode", type=click.Choice(["zero-shot", "fine-tune", "both"]), help="zero-shot guidance, a motion fine-tune, or both. [default: zero-shot]")
@click.option("--train-steps", type=int, help="Fine-tune steps (modes fine-tune, both). [default: 400, VMC's; shapes: 60]")
@click.option("--trainable-modules", help="What the fine-tune trains: vmc (VMC's recipe: the temporal attentions' q/k/v), "
                                          "vmc+transformer_in (ours: also Zeroscope's input temporal transformer) or a "
                                          "regular expression over the denoiser's submodule names. [default: vmc]")
@click.option("--train-lambda-global", type=float, help="λg of the fine-tune objective. [default: 0.4]")
@click.option("--train-lambda-local", type=float, help="λl of the fine-tune objective. [default: 0.2]")
@click.option("--residual", type=click.Choice(["signed", "abs"]), help="Frame residuals of the fine-tune's spectral terms. [default: signed]")
@click.option("--adapter", type=click.Path(path_type=Path), help="Apply a saved motion adapter (no training).")
@click.option("--save-adapter", type=click.Path(path_type=Path), help="Save the trained motion adapter (.safetensors).")
@click.option("--fps", type=float, help="Output frame rate. [default: keeps the input's duration]")
@click.option("--seed", type=int, help="Random seed. [default: 0]")
@click.option("--device", help="auto, cpu, cuda or cuda:N. [default: auto]")
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), help="[default: auto: float16 on GPU (Wan: bfloat16)]")
@click.option("--loss-scaling", type=click.Choice(["dynamic", "static", "off"]),
              help="float16 only: scale the loss in the guidance and fine-tune backward so gradients do not underflow. [default: dynamic]")
@click.option("--loss-scale", type=float, help="The (initial) loss scale of --loss-scaling. [default: 65536]")
@click.option("--attention", type=click.Choice(["sdpa", "classic"]), help="Attention kernel: PyTorch's fused SDPA or the explicit softmax. [default: sdpa]")
@click.option("--activation-checkpointing", type=click.Choice(["off", "blocks", "layers"]),
              help="Recompute UNet activations in the guidance backward: less memory, more time. [default: blocks; off in the tiny-random and shapes presets]")
@click.option("--vae-batch-size", type=click.IntRange(min=1), help="Frames per VAE encode/decode call. [default: 1]")
@click.option("--vae-tiling/--no-vae-tiling", default=None, help="VAE in tiles, for frames above its tile size. [default: off]")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="JSON of SMAConfig fields (or a saved run's JSON).")
@click.option("--side-by-side", is_flag=True, help="Also write OUT.side_by_side.mp4: (input | output).")
@click.option("--strip", is_flag=True, help="Also write OUT.strip.png: input frames over output frames, in one picture.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@reports_user_errors
def run_command(
    input_path: Path,
    prompt: str,
    output: Path | None,
    config_file: Path | None,
    save_adapter: Path | None,
    side_by_side: bool,
    strip: bool,
    quiet: bool,
    **flags: Any,
) -> None:
    """Transfer the motion of INPUT (video file or folder of images) to PROMPT."""
    transfer(input_path, prompt, output, config_file, save_adapter, side_by_side, quiet, flags, strip=strip)


def transfer(
    input_path: Path,
    prompt: str,
    output: Path | None,
    config_file: Path | None,
    save_adapter: Path | None,
    side_by_side: bool,
    quiet: bool,
    flags: dict[str, Any],
    pipelines: dict[tuple[str | None, ...], Any] | None = None,
    strip: bool = False,
) -> None:
    """The run command's work (also one job of ``batch``): checks, the run, the files. ``pipelines``
    caches loaded models by (model, motion adapter, device, dtype) across calls."""
    # Checks that need no library first: a typo is reported at once, not after seconds of imports (torch;
    # build_config's family detection imports diffusers).
    if not prompt.strip():
        raise UserError("the prompt is empty; describe what the output should show")
    if not input_path.exists():
        raise UserError(f"input not found: {input_path} — check the path")
    from sma_guidance.video_io import (
        check_output_path, check_readable, export_to_video, frame_strip, read_clip, save_image, side_by_side as stack,
    )

    check_readable(input_path)  # junk is refused before build_config imports diffusers
    config = build_config(config_file, flags)
    read_clip(input_path, config.num_frames, config.start, config.duration)  # fail before the (slow) model load
    output = check_output_path(output or _default_output(input_path), input_path)
    record_path = check_output_path_record(_record_path(output), input_path)
    comparison = check_output_path(_comparison_path(output), input_path) if side_by_side else None
    picture = _strip_path(output) if strip else None
    if config.adapter:
        from pipelines.finetune import MotionAdapter

        MotionAdapter.load(config.adapter)  # a missing or foreign file fails before the model loads
    if save_adapter is not None:
        check_adapter_path(save_adapter, config, input_path, output)

    from pipelines import SMAMotionTransferPipeline

    key = (config.model, config.motion_adapter, config.device, config.dtype)
    pipe = pipelines.get(key) if pipelines is not None else None
    if pipe is None:
        pipe = SMAMotionTransferPipeline.load(
            config.model, device=config.device, dtype=config.dtype, motion_adapter=config.motion_adapter
        )
        if pipelines is not None:
            pipelines[key] = pipe
    config = build_config(config_file, flags, family=pipe.backbone.name)  # the loaded model's family decides
    if not _chosen("inversion_steps", config_file, flags):
        fitted = pipe.fit_inversion_steps(config)
        if fitted.inversion_steps != config.inversion_steps and not quiet:
            click.echo(f"note: {fitted.inversion_steps} inversion steps (the preset's {config.inversion_steps} do not pass "
                       f"through the {config.num_inference_steps} sampling steps)", err=True)
        config = fitted
    pipe.set_progress_bar_config(disable=quiet)
    result = pipe(video=input_path, prompt=prompt, config=config)
    written = export_to_video(result.frames[0], output, fps=result.fps)
    if save_adapter is not None:
        result.adapter.save(save_adapter)
    if comparison is not None or picture is not None:
        frames, _ = pipe.prepare_video(input_path, config)
        shown = (frames.permute(0, 2, 3, 1) + 1) / 2
        if comparison is not None:
            export_to_video(stack(shown, result.frames[0]), comparison, fps=result.fps)
        if picture is not None:
            scale = max(1, 256 // max(config.height, config.width))  # small clips: pixels a person can see
            save_image(frame_strip(shown, result.frames[0], scale=scale), picture)
    # Written last: a record beside the output means the run finished (batch skips such jobs).
    write_run_record(
        record_path,
        {
            "input": str(input_path),
            "output": str(written),
            "prompt": prompt,
            "fps": result.fps,
            "family": pipe.backbone.name,
            "config": result.config,
            "sampler": result.sampler,
            "loss_history": result.loss_history,
            "timings": result.timings,
            "adapter": str(save_adapter or config.adapter or "") or None,
            "train_loss_history": result.train_loss_history,
        },
    )
    if not quiet:
        extra = "".join(f", {path}" for path in (save_adapter, comparison, picture) if path is not None)
        click.echo(f"wrote {written}{extra} and {record_path}")


def build_config(config_file: Path | None, flags: dict[str, Any], family: str | None = None) -> SMAConfig:
    """Defaults ← the model family's preset ← the model's preset ← ``--config`` file ← flags, validated.
    The family is detected from the model's ``model_index.json`` unless given (a loaded pipeline's)."""
    file_values = SMAConfig.read_file(config_file) if config_file is not None else {}
    fields = {FLAG_FIELDS.get(name, name): value for name, value in flags.items() if value is not None}
    for name in ("cache_dir", "adapter"):
        if name in fields:
            fields[name] = str(fields[name])
    if isinstance(fields.get("feature_layers"), str):
        fields["feature_layers"] = tuple(name.strip() for name in fields["feature_layers"].split(",") if name.strip())
    model = fields.pop("model", None) or file_values.pop("model", None) or SMAConfig().model
    file_values.pop("model", None)
    if family is None:
        from pipelines.backbones import model_family

        family = model_family(model, fields.get("motion_adapter") or file_values.get("motion_adapter"))
    return SMAConfig.for_model(model, family=family, **file_values).replace(**fields).validate()


def _chosen(field: str, config_file: Path | None, flags: dict[str, Any]) -> bool:
    """Whether the user set ``field`` (a flag or the ``--config`` file), not a preset."""
    flag = next((name for name, target in FLAG_FIELDS.items() if target == field), field)
    if flags.get(flag) is not None:
        return True
    return config_file is not None and field in SMAConfig.read_file(config_file)


def check_adapter_path(path: Path, config: SMAConfig, input_path: Path, output: Path) -> None:
    """``--save-adapter`` needs something to save and a writable ``.safetensors`` path."""
    if not config.trains:
        raise UserError("--save-adapter needs a training run: use --mode fine-tune or --mode both (without --adapter)")
    if path.suffix != ".safetensors":
        raise UserError(f"--save-adapter {path} must end in .safetensors")
    if path.is_dir():
        raise UserError(f"--save-adapter {path} is a directory; give a file name ending in .safetensors")
    check_writable_folder(path, "--save-adapter")
    for other in (input_path, output):
        if path.resolve() == other.resolve():
            raise UserError(f"--save-adapter {path} would overwrite {other}; choose another path")


def check_output_path_record(path: Path, input_path: Path) -> Path:
    """The JSON beside the output must not clobber the input either."""
    if path.exists() and input_path.exists() and os.path.samefile(path, input_path):
        raise UserError(f"the run record {path} would overwrite the input; choose another -o")
    return path


@main.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on (0.0.0.0: every network interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--model", default="shapes", show_default=True, help="The model the page starts with (any --model of `sma-guide run`).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@reports_user_errors
def ui_command(host: str, port: int, model: str, device: str) -> None:
    """A local web page: upload a clip or pick a sample, set the prompt, model, mode and knobs, follow the
    progress, watch the side-by-side and download the video, its JSON and a trained adapter.
    Needs the ui extra: pip install -e ".[ui]"."""
    from pipelines.ui import launch

    launch(host, port, model, device)


@main.command("eval")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output_path", metavar="OUTPUT", type=click.Path(path_type=Path))
@click.option("--prompt", "-p", help="OUTPUT's prompt; a shapes-world prompt adds edit and motion checks.")
@click.option("--tracker", type=click.Choice(["auto", "shapes", "points"]), default="auto", show_default=True,
              help="shapes: object centroids (shapes-world clips); points: block-matched grid points (any video).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the metrics to this JSON file.")
@reports_user_errors
def eval_command(input_path: Path, output_path: Path, prompt: str | None, tracker: str, json_path: Path | None) -> None:
    """Score a motion transfer: how well OUTPUT follows INPUT's motion (DMT's motion fidelity), how
    smooth it is, and, for a shapes-world PROMPT, whether it shows the prompted object and motion."""
    from sma_guidance.metrics import evaluate, format_report, json_safe
    from sma_guidance.video_io import read_frames

    if json_path is not None:  # fail before the (slow) tracking, not after it
        check_json_path(json_path, (input_path, output_path))
    metrics = evaluate(read_frames(input_path)[0], read_frames(output_path)[0], prompt=prompt, method=tracker)
    click.echo(format_report(metrics))
    if json_path is not None:
        record = {"input": str(input_path), "output": str(output_path), "prompt": prompt}
        write_run_record(json_path, {**record, "metrics": json_safe(metrics)})
        click.echo(f"wrote {json_path}")


def check_json_path(json_path: Path, protected: tuple[Path, ...] = (), flag: str = "--json") -> None:
    """A JSON output must be a file name whose folder exists or can be created (it is created when the
    JSON is written) and must not replace one of ``protected``."""
    if json_path.is_dir():
        raise UserError(f"cannot write {flag} {json_path}: it is a folder; give a file name")
    check_writable_folder(json_path, flag)
    if any(json_path.resolve() == p.resolve() for p in protected):
        raise UserError(f"{flag} {json_path} would overwrite a video; choose another path")


@main.group("bench")
def bench() -> None:
    """Benchmarks: `sma-guide bench quality` (motion-transfer quality on the shapes world), `sma-guide bench
    appearance` (the shapes model's plain samples of held-out prompts),
    `sma-guide bench speed` (time and memory of each stage), `sma-guide bench memory` (GPU memory, estimated),
    `sma-guide bench precision` (half-precision gradients against float32) and `sma-guide bench inversion`
    (what fewer inversion steps cost)."""


@bench.command("quality")
@click.option("--model", default="shapes", show_default=True, help="Model to benchmark (a shapes-world model).")
@click.option("--quick", is_flag=True,
              help="The headline in minutes: one pair per motion, one seed, reconstruction / inversion only / DMT / DMT + SMA.")
@click.option("--pairs", "pair_set", type=click.Choice(["held-out", "unseen-paths"]), default="held-out", show_default=True,
              help="held-out: clips of every motion of the shapes world; unseen-paths: 5 paths none of its motions makes (spiral, S-curve, ...).")
@click.option("--per-motion", type=click.IntRange(min=1), default=None, help="Pairs per motion (9 motions). [default: 3; --quick: 1]")
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Sampling seeds per pair. [default: 2; --quick: 1]")
@click.option("--methods", help="Comma-separated methods. [default: all but the ablations 'DMT + global', 'DMT + local', 'fine-tune + SMA (abs)'; --quick: its four]")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="JSON of SMAConfig fields over the model's preset (e.g. a sweep of optimization_steps).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes, split by pair. [default: one per CPU core (up to 4) on a CPU, 1 on a GPU]")
@click.option("--output", "json_path", type=click.Path(path_type=Path), default=None,
              help="Results JSON; OUTPUT.progress.jsonl holds a running benchmark's videos. [default: bench_quality.json; --quick: bench_quality_quick.json]")
@click.option("--fresh", is_flag=True, help="Start over instead of continuing a stopped run with the same settings.")
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No per-video lines.")
@reports_user_errors
def bench_quality(
    model: str, quick: bool, pair_set: str, per_motion: int | None, seeds: int | None, methods: str | None, config_file: Path | None,
    workers: int | None, json_path: Path | None, fresh: bool, device: str, quiet: bool,
) -> None:
    """Every method on a held-out set of shapes-world pairs: prints a markdown table and the paired
    differences between methods, writes JSON. A stopped run continues where it was when run again."""
    import torch

    from pipelines import SMAMotionTransferPipeline
    from pipelines.bench_quality import (
        DEFAULT_METHODS, METHODS, QUICK_METHODS, ProgressLog, benchmark_pairs, comparison_lines, comparisons,
        markdown_table, record_key, run_benchmark, run_parallel, sort_records, summarize, write_json,
    )
    from pipelines.inversion import model_fingerprint

    per_motion = per_motion or (1 if quick else 3)
    seeds = seeds or (1 if quick else 2)
    json_path = json_path or Path("bench_quality_quick.json" if quick else "bench_quality.json")
    chosen = [m.strip() for m in methods.split(",")] if methods else (QUICK_METHODS if quick else DEFAULT_METHODS)
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r}; choose from: {', '.join(METHODS)}")
    check_json_path(json_path, flag="--output")
    overrides = SMAConfig.read_file(config_file) if config_file is not None else {}
    pipe = SMAMotionTransferPipeline.load(model, device=device, dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    config = pipe.default_config().replace(**overrides).validate()
    if workers is None:
        workers = 1 if pipe.device.type != "cpu" else max(1, min(4, torch.get_num_threads()))
    pairs = benchmark_pairs(pair_set, per_motion, config.num_frames)
    progress = ProgressLog(
        json_path.with_name(json_path.name + ".progress.jsonl"),
        {"model": model, "weights": model_fingerprint(pipe.denoiser, pipe.vae, pipe.text_encoder), "per_motion": per_motion,
         "pairs": pair_set, "config": config.to_dict()},
    )
    wanted = {(m, p.index, s) for m in chosen for p in pairs for s in range(seeds)}
    earlier = [] if fresh else [r for r in progress.load() if record_key(r) in wanted]
    progress.start(earlier)
    if earlier:
        click.echo(f"continuing a stopped run: {len(earlier)} of {len(wanted)} videos already made ({progress.path})", err=True)
    clock = time.perf_counter()

    def report(record: dict[str, Any]) -> None:
        progress.append(record)
        if not quiet:
            click.echo(
                f"{record['method']:<16} pair {record['pair']:>2} seed {record['seed']} {record['motion']:<10} "
                f"fidelity {record['motion_fidelity']:+.2f} motion {record['motion_match']:.0f} "
                f"colour {record['color_match']:.0f} shape {record['shape_match']:.0f} "
                f"background {record['background_match']:.0f} ({record['seconds']:.1f}s)",
                err=True,
            )

    skip = frozenset(record_key(r) for r in earlier)
    if workers == 1:
        records = run_benchmark(pipe, chosen, pairs, seeds=tuple(range(seeds)), base=config, on_result=report, skip=skip)
    else:
        del pipe  # each worker loads its own copy
        job = dict(model=model, device=device, methods=chosen, per_motion=per_motion, num_frames=config.num_frames,
                   seeds=list(range(seeds)), overrides=overrides, skip=sorted(skip), pair_set=pair_set)
        records = run_parallel(job, workers, on_result=report)
    records = sort_records(earlier + records, chosen)
    summary = summarize(records)
    paired = comparisons(records)
    table = markdown_table(summary, len(pairs) * seeds)
    settings = {"model": model, "pair_set": pair_set, "per_motion": per_motion, "seeds": seeds, "pairs": len(pairs), "workers": workers,
                "config": config.to_dict(), "seconds_total": time.perf_counter() - clock, "resumed_videos": len(earlier)}
    write_json(json_path, records, summary, settings, paired)
    progress.remove()
    click.echo(table)
    if paired:
        click.echo("\n" + comparison_lines(paired))
    click.echo(f"\nwrote {json_path} ({settings['seconds_total']:.0f} s in all, {workers} worker(s))")


@main.command("batch")
@click.argument("jobs_path", metavar="JOBS.jsonl", type=click.Path(path_type=Path))
@click.option("--device", default="auto", show_default=True,
              help="Device when not launched by accelerate (under `accelerate launch`, each process takes its GPU).")
@click.option("--quiet", "-q", is_flag=True, help="No per-job lines or progress bar.")
@reports_user_errors
def batch_command(jobs_path: Path, device: str, quiet: bool) -> None:
    """Run every job of JOBS.jsonl (one JSON object per line: input, prompt, optional output and any
    option of `sma-guide run` by its long name, e.g. "optimization-steps": 5), skipping finished ones.

    On several GPUs: `accelerate launch --multi_gpu --num_processes N -m cli batch JOBS.jsonl` (one process per GPU,
    jobs dealt round-robin). Paths in the file are relative to its folder.
    """
    import torch
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from pipelines.batch import assigned, is_finished, read_jobs

    jobs = read_jobs(jobs_path, run_command)
    outputs: dict[Path, int] = {}
    for job in jobs:
        output = (job.options.get("output") or _default_output(job.input)).resolve()
        if output in outputs:
            raise UserError(f"{jobs_path}: lines {outputs[output]} and {job.line} both write {output}; give each an \"output\"")
        outputs[output] = job.line
    # Without CUDA, accelerate forms its process group on the CPU (gloo) only when told so.
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    if state.num_processes > 1 or state.device.type == "cuda":
        device = str(state.device)
    mine = assigned(jobs, state.process_index, state.num_processes)
    who = f"process {state.process_index + 1}/{state.num_processes}: " if state.num_processes > 1 else ""
    pipelines: dict[tuple[str | None, ...], Any] = {}
    done = skipped = failed = 0
    for job in tqdm(mine, desc=f"{who}jobs", disable=quiet):
        options = dict(job.options)
        run_args = {name: options.pop(name, None) for name in ("output", "config_file", "save_adapter")}
        side_by_side = bool(options.pop("side_by_side", False))
        strip = bool(options.pop("strip", False))
        flags = {**options, "device": device}
        output = run_args["output"] or _default_output(job.input)
        try:
            config = build_config(run_args["config_file"], flags)
            if is_finished(_record_path(output), job, config.to_dict()):
                skipped += 1
                continue
            transfer(job.input, job.prompt, output, run_args["config_file"], run_args["save_adapter"], side_by_side,
                     True, flags, pipelines, strip=strip)
            done += 1
            if not quiet:
                tqdm.write(f"{who}line {job.line}: wrote {output}")
        except UserError as err:
            failed += 1
            tqdm.write(f"{who}line {job.line}: error: {err}", file=sys.stderr)
    click.echo(f"{who}{done} done, {skipped} already finished, {failed} failed of {len(mine)} job(s)")
    if failed:
        sys.exit(1)


def _int_list(text: str | None, what: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, e.g. 8,16,24,32 (got {text!r})") from None
    return values


def _size_list(text: str | None) -> tuple[tuple[int, int], ...]:
    if not text:
        return ()
    sizes = []
    for part in text.split(","):
        try:
            height, width = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise UserError(f"--scaling-sizes takes HEIGHTxWIDTH pairs, e.g. 160x288,320x576 (got {part!r})") from None
        sizes.append((height, width))
    return tuple(sizes)


def _size_options(command: Any) -> Any:
    """``--frames``, ``--height``, ``--width`` of the bench commands, defaulting to the model's preset."""
    for option in (
        click.option("--width", type=int, help="Width, a multiple of 8. [default: the model's preset]"),
        click.option("--height", type=int, help="Height, a multiple of 8. [default: the model's preset]"),
        click.option("--frames", type=int, help="Frames. [default: the model's preset]"),
    ):
        command = option(command)
    return command


@bench.command("speed")
@click.option("--model", default="tiny-random", show_default=True,
              help="tiny-random, shapes, zeroscope-arch (Zeroscope's architecture, random weights), tiny-random-animatediff, "
                   "animatediff-arch (SD 1.5 + AnimateDiff v3, random weights), tiny-random-wan, wan2.1-1.3b-arch (Wan 2.1 "
                   "T2V 1.3B, random weights), a folder or a Hub id.")
@click.option("--motion-adapter", help="AnimateDiff: a diffusers MotionAdapter (Hub id or folder) for an SD 1.5 --model.")
@_size_options
@click.option("--steps", type=int, help="DDIM sampling steps of the whole run. [default: the model's preset]")
@click.option("--inversion-steps", type=int, help="DDIM inversion steps. [default: the model's preset]")
@click.option("--optimization-steps", type=int, help="Latent-optimization iterations per guided step (whole run).")
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto", show_default=True)
@click.option("--attention", type=click.Choice(["sdpa", "classic"]), help="[default: the config's, sdpa]")
@click.option("--activation-checkpointing", type=click.Choice(["off", "blocks", "layers"]), help="[default: the model's config]")
@click.option("--vae-batch-size", type=click.IntRange(min=1), help="[default: the config's, 1]")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True, help="Untimed calls per stage.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timed calls per stage.")
@click.option("--whole-run/--no-whole-run", default=True, show_default=True, help="Also time one full run.")
@click.option("--scaling-frames", help="Also time a guidance iteration at these frame counts, e.g. 8,16,24,32.")
@click.option("--scaling-sizes", help="... and at these sizes, e.g. 160x288,320x576.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="JSON of SMAConfig fields over the preset.")
@click.option("--output", "json_path", type=click.Path(path_type=Path), default=Path("bench_speed.json"), show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No per-stage lines.")
@reports_user_errors
def bench_speed(
    model: str, motion_adapter: str | None, frames: int | None, height: int | None, width: int | None, steps: int | None,
    inversion_steps: int | None, optimization_steps: int | None, device: str, dtype: str, attention: str | None,
    activation_checkpointing: str | None, vae_batch_size: int | None, warmup: int, repeats: int,
    whole_run: bool, scaling_frames: str | None, scaling_sizes: str | None, config_file: Path | None,
    json_path: Path, quiet: bool,
) -> None:
    """Time and peak memory of each stage of a run: prints a markdown table, writes JSON."""
    from pipelines import SMAMotionTransferPipeline
    from pipelines.bench_speed import markdown_table, run_speed_benchmark, write_record

    check_json_path(json_path, flag="--output")
    frame_counts, sizes = _int_list(scaling_frames, "--scaling-frames"), _size_list(scaling_sizes)
    overrides = SMAConfig.read_file(config_file) if config_file is not None else {}
    pipe = SMAMotionTransferPipeline.load(model, device=device, dtype=dtype, motion_adapter=motion_adapter)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.default_config().replace(**overrides).replace(
        num_frames=frames, height=height, width=width, num_inference_steps=steps, inversion_steps=inversion_steps,
        optimization_steps=optimization_steps, device=device, dtype=dtype, attention=attention,
        activation_checkpointing=activation_checkpointing, vae_batch_size=vae_batch_size,
    ).validate()
    for count in frame_counts:
        config.replace(num_frames=count).validate()
    for size_h, size_w in sizes:
        config.replace(height=size_h, width=size_w).validate()
    record = run_speed_benchmark(
        pipe, config, warmup=warmup, repeats=repeats, whole_run=whole_run, scaling_frames=frame_counts,
        scaling_sizes=sizes, log=None if quiet else (lambda message: click.echo(message, err=True)),
    )
    write_record(record, json_path)
    click.echo(markdown_table(record))
    click.echo(f"\nwrote {json_path}")


@bench.command("memory")
@click.option("--model", default="zeroscope-arch", show_default=True,
              help="zeroscope-arch, animatediff-arch, wan2.1-1.3b-arch, tiny-random, tiny-random-animatediff, tiny-random-wan, "
                   "shapes, a diffusers folder or a cached Hub id (only configs are read).")
@click.option("--motion-adapter", help="AnimateDiff: a diffusers MotionAdapter (Hub id or folder) for an SD 1.5 --model.")
@_size_options
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default="float16", show_default=True)
@click.option("--attention", type=click.Choice(["sdpa", "classic"]), help="[default: the config's, sdpa]")
@click.option("--vae-batch-size", type=click.IntRange(min=1), help="[default: the config's, 1]")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="JSON of SMAConfig fields over the preset.")
@click.option("--output", "json_path", type=click.Path(path_type=Path), default=Path("bench_memory.json"), show_default=True)
@reports_user_errors
def bench_memory(
    model: str, motion_adapter: str | None, frames: int | None, height: int | None, width: int | None, dtype: str, attention: str | None,
    vae_batch_size: int | None, config_file: Path | None, json_path: Path,
) -> None:
    """Estimate a run's GPU memory at any size without a GPU or weights, for each activation-checkpointing
    choice (fake tensors; a lower bound); prints a markdown table, writes JSON."""
    import torch

    from pipelines.bench_memory import component_configs, estimate_memory, memory_table
    from pipelines.bench_speed import write_record

    check_json_path(json_path, flag="--output")
    overrides = SMAConfig.read_file(config_file) if config_file is not None else {}
    configs = component_configs(model, motion_adapter)
    config = SMAConfig.for_model(
        model, family=configs["family"], **{k: v for k, v in overrides.items() if k != "model"}
    ).replace(
        num_frames=frames, height=height, width=width, attention=attention, vae_batch_size=vae_batch_size,
        motion_adapter=motion_adapter,
    ).validate()
    record = estimate_memory(model, config, getattr(torch, dtype), configs=configs)
    write_record(record, json_path)
    click.echo(memory_table(record))
    click.echo(f"\nwrote {json_path}")


def _bench_pipeline(model: str, motion_adapter: str | None, device: str, dtype: str, config_file: Path | None,
                    **fields: Any) -> tuple[Any, SMAConfig]:
    """A bench command's model, quiet, and its configuration: the preset, then ``--config``, then the flags
    given (``fields``; None: unset), checked against the model."""
    from pipelines import SMAMotionTransferPipeline

    overrides = SMAConfig.read_file(config_file) if config_file is not None else {}
    pipe = SMAMotionTransferPipeline.load(model, device=device, dtype=dtype, motion_adapter=motion_adapter)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.default_config().replace(**overrides).replace(**fields).validate()
    pipe.backbone.check(pipe, config)
    return pipe, config


@bench.command("precision")
@click.option("--model", default="tiny-random", show_default=True,
              help="Any model bench speed takes: zeroscope-arch, animatediff-arch, wan2.1-1.3b-arch (full size, random "
                   "weights), the tiny ones, shapes, a folder or a Hub id.")
@click.option("--motion-adapter", help="AnimateDiff: a diffusers MotionAdapter (Hub id or folder) for an SD 1.5 --model.")
@_size_options
@click.option("--dtype", type=click.Choice(["float16", "bfloat16"]), default="float16", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--activation-checkpointing", type=click.Choice(["off", "blocks", "layers"]), help="[default: the model's config]")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="JSON of SMAConfig fields over the preset.")
@click.option("--output", "json_path", type=click.Path(path_type=Path), default=Path("bench_precision.json"), show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No per-row lines.")
@reports_user_errors
def bench_precision(
    model: str, motion_adapter: str | None, frames: int | None, height: int | None, width: int | None, dtype: str,
    device: str, activation_checkpointing: str | None, config_file: Path | None, json_path: Path, quiet: bool,
) -> None:
    """How far a half-precision guidance gradient is from float32's, for DMT alone and DMT + SMA, without
    and with loss scaling: cosine and relative error of one guided step's gradient w.r.t. the latent."""
    import torch

    from pipelines.bench_precision import precision_table, run_precision_benchmark
    from pipelines.bench_speed import write_record

    check_json_path(json_path, flag="--output")
    pipe, config = _bench_pipeline(model, motion_adapter, device, "float32", config_file, num_frames=frames, height=height,
                                   width=width, activation_checkpointing=activation_checkpointing)
    record = run_precision_benchmark(pipe, config, getattr(torch, dtype),
                                     log=None if quiet else (lambda message: click.echo(message, err=True)))
    write_record(record, json_path)
    click.echo(precision_table(record))
    click.echo(f"\nwrote {json_path}")


@bench.command("terms")
@click.option("--model", default="tiny-random", show_default=True,
              help="shapes, zeroscope-arch, animatediff-arch, wan2.1-1.3b-arch, the tiny ones, a folder or a Hub id.")
@click.option("--motion-adapter", help="AnimateDiff: a diffusers MotionAdapter (Hub id or folder) for an SD 1.5 --model.")
@click.option("--input", "input_path", type=click.Path(path_type=Path),
              help="A clip whose inversion gives the reference latent (needs --source-prompt). [default: a seeded draw]")
@click.option("--source-prompt", help="What the input shows. [default: a car prompt]")
@_size_options
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="JSON of SMAConfig fields over the preset.")
@click.option("--output", "json_path", type=click.Path(path_type=Path), default=Path("bench_terms.json"), show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No per-row lines.")
@reports_user_errors
def bench_terms(
    model: str, motion_adapter: str | None, input_path: Path | None, source_prompt: str | None, frames: int | None,
    height: int | None, width: int | None, device: str, dtype: str, config_file: Path | None, json_path: Path, quiet: bool,
) -> None:
    """How hard each term of the objective pulls at the model's own feature sizes: the gradient norm of
    λg·global and λl·local against DMT's at every recorded layer, for each way of scaling the spectral terms."""
    from pipelines.bench_speed import write_record
    from pipelines.bench_terms import SOURCE_PROMPT, run_terms_benchmark, terms_table

    check_json_path(json_path, flag="--output")
    pipe, config = _bench_pipeline(model, motion_adapter, device, dtype, config_file, num_frames=frames, height=height,
                                   width=width)
    source = source_prompt or SOURCE_PROMPT
    reference = None
    if input_path is not None:
        frames_in, _ = pipe.prepare_video(input_path, config)
        t = pipe.sampling_timesteps(config.num_inference_steps)[0]
        inverted, _ = pipe.invert(frames_in, pipe.encode_prompt(source), config.replace(source_prompt=source), [t])
        reference = inverted[t]
    record = run_terms_benchmark(pipe, config, reference, source,
                                 log=None if quiet else (lambda message: click.echo(message, err=True)))
    record["input"] = str(input_path) if input_path else None
    write_record(record, json_path)
    click.echo(terms_table(record))
    click.echo(f"\nwrote {json_path}")


@bench.command("appearance")
@click.option("--model", default="shapes", show_default=True, help="A shapes-world model.")
@click.option("--seed-start", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Prompt i samples with seed SEED_START + i (1000: the seeds of the test's check).")
@click.option("--count", type=click.IntRange(1, 27), default=27, show_default=True, help="The first COUNT of the 27 prompts.")
@click.option("--steps", "num_inference_steps", type=click.IntRange(min=1), help="Sampling steps. [default: the preset's]")
@click.option("--guidance-scale", type=float, help="Classifier-free guidance. [default: the preset's]")
@click.option("--eta", type=float, help="DDIM eta: 0 deterministic, 1 DDPM-like. [default: the preset's]")
@click.option("--guidance-rescale", type=float, help="Rescale of classifier-free guidance, 0 to 1. [default: the preset's]")
@click.option("--restarts", type=click.IntRange(min=0), help="Re-noise and denoise again this many times after each step. [default: the preset's]")
@click.option("--device", default="auto", show_default=True)
@click.option("--output", "json_path", type=click.Path(path_type=Path), default=Path("bench_appearance.json"), show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No per-prompt lines.")
@reports_user_errors
def bench_appearance(model: str, seed_start: int, count: int, num_inference_steps: int | None, guidance_scale: float | None,
                     eta: float | None, guidance_rescale: float | None, restarts: int | None, device: str,
                     json_path: Path, quiet: bool) -> None:
    """Plain text-to-video samples of 27 held-out appearance prompts ("a red circle on a gray background"),
    judged for colour, shape, background and one clean object; prints a table, writes JSON."""
    from pipelines import SMAMotionTransferPipeline
    from pipelines.bench_appearance import appearance_scores, appearance_table
    from pipelines.bench_speed import write_record

    check_json_path(json_path, flag="--output")
    pipe = SMAMotionTransferPipeline.load(model, device=device, dtype="float32")
    # The prompts sample as one batch, so the per-prompt lines only come at its end: the bar shows the steps.
    pipe.set_progress_bar_config(disable=quiet)
    # generate resolves and validates the settings: a bad number is an error before the first sample.
    result = appearance_scores(pipe, seed_start, count, None if quiet else (lambda line: click.echo(line, err=True)),
                               num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta,
                               guidance_rescale=guidance_rescale, restarts=restarts)
    write_record({"model": model, "seed_start": seed_start, **result}, json_path)
    click.echo(appearance_table(result["rates"]))
    click.echo(f"\nwrote {json_path}")


@bench.command("inversion")
@click.option("--model", default="shapes", show_default=True, help="A shapes-world model (the clips are shapes-world clips).")
@click.option("--inversion-steps", "step_counts", default="25,50,100,250,999", show_default=True,
              help="Inversion step counts to compare (each a multiple of the sampling steps, or 999).")
@click.option("--per-motion", type=click.IntRange(min=1), default=1, show_default=True,
              help="Held-out clips per motion (those of bench quality).")
@click.option("--device", default="auto", show_default=True)
@click.option("--output", "json_path", type=click.Path(path_type=Path), default=Path("bench_inversion.json"), show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No per-clip lines.")
@reports_user_errors
def bench_inversion(model: str, step_counts: str, per_motion: int, device: str, json_path: Path, quiet: bool) -> None:
    """What fewer inversion steps cost: reconstruction PSNR and time per step count; prints a table, writes JSON."""
    from pipelines import SMAMotionTransferPipeline
    from pipelines.bench_quality import held_out_pairs
    from pipelines.bench_speed import inversion_table, run_inversion_study, write_record

    check_json_path(json_path, flag="--output")
    counts = _int_list(step_counts, "--inversion-steps")
    pipe = SMAMotionTransferPipeline.load(model, device=device, dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    config = pipe.default_config()
    for count in counts:
        config.replace(inversion_steps=count).validate()
    pairs = held_out_pairs(per_motion, config.num_frames)
    rows = run_inversion_study(pipe, config, [(p.frames, p.source_prompt) for p in pairs], counts,
                               log=None if quiet else (lambda message: click.echo(message, err=True)))
    write_record({"model": model, "num_inference_steps": config.num_inference_steps, "rows": rows}, json_path)
    click.echo(inversion_table(rows))
    click.echo(f"\nwrote {json_path}")


if __name__ == "__main__":
    main()
