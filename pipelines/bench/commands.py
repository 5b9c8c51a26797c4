"""``sma-guide bench ...``: the benchmark commands (click wiring; the work is in this package's modules).
The CLI loads this module only when a bench command runs, so that a plain run imports no benchmark."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from sma_guidance.atomic import write_json
from sma_guidance.config import SMAConfig
from sma_guidance.errors import UserError

from ..frontends.shell import reports_user_errors
from ..motion_transfer.models import ARCH_MODELS, BUNDLED_MODELS, TINY_MODELS
from ..motion_transfer.run import check_json_path

TINY, ARCH, BUNDLED = (', '.join(names) for names in (TINY_MODELS.values(), ARCH_MODELS.values(), BUNDLED_MODELS))


@click.group("bench", context_settings={"help_option_names": ["-h", "--help"]})
def bench() -> None:
    """Benchmarks: `sma-guide bench quality` (motion-transfer quality on the shapes world), `sma-guide bench
    appearance` (the shapes model's plain samples of held-out prompts),
    `sma-guide bench speed` (time and memory of each stage), `sma-guide bench memory` (GPU memory, estimated),
    `sma-guide bench precision` (half-precision gradients against float32), `sma-guide bench inversion`
    (what fewer inversion steps cost), `sma-guide bench masks` (subject masks), `sma-guide bench windows`
    (clips longer than the model's window) and `sma-guide bench set` (a benchmark set: DiTFlow's, MTBench, yours)."""


@bench.command("quality")
@click.option("--model", default="shapes", show_default=True, help="Model to benchmark (a shapes-world model).")
@click.option("--quick", is_flag=True,
              help="The headline in minutes: one pair per motion, one seed, reconstruction / inversion only / DMT / DMT + SMA.")
@click.option("--pairs", "pair_set", type=click.Choice(["held-out", "unseen-paths", "new-scene"]), default="held-out", show_default=True,
              help="held-out: clips of every motion of the shapes world; unseen-paths: 5 paths none of its motions makes (spiral, S-curve, ...); "
                   "new-scene: 14 clips (every motion, growing, shrinking, stop-and-go, circling beside a still object, two apart) whose targets name another background.")
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
    from pipelines.bench.quality import (
        DEFAULT_METHODS, METHODS, NEW_SCENE_METHODS, QUICK_METHODS, ProgressLog, benchmark_pairs, comparison_lines, comparisons,
        markdown_table, record_key, run_benchmark, run_parallel, sort_records, summarize, write_json,
    )
    from pipelines.motion_transfer.inversion import model_fingerprint

    per_motion = per_motion or (1 if quick else 3)
    seeds = seeds or (1 if quick else 2)
    json_path = json_path or Path("bench_quality_quick.json" if quick else "bench_quality.json")
    chosen = [m.strip() for m in methods.split(",")] if methods else (
        NEW_SCENE_METHODS if pair_set == "new-scene" else QUICK_METHODS if quick else DEFAULT_METHODS)
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
    earlier = _resume(progress, wanted, record_key, fresh)
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


def _resume(progress: Any, wanted: set, key: Any, fresh: bool) -> list[dict[str, Any]]:
    """The records of a stopped run with the same settings that this run still wants (none with ``fresh``);
    the progress log starts again from them, and the user is told how many there are."""
    earlier = [] if fresh else [r for r in progress.load() if key(r) in wanted]
    progress.start(earlier)
    if earlier:
        click.echo(f"continuing a stopped run: {len(earlier)} of {len(wanted)} videos already made ({progress.path})", err=True)
    return earlier


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
              help=f"{TINY}, {BUNDLED}, {ARCH} (the real architectures with random weights: Zeroscope, SD 1.5 + "
                   f"AnimateDiff v3, Wan 2.1 T2V 1.3B), a folder or a Hub id.")
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
    from pipelines.bench.speed import markdown_table, run_speed_benchmark

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
    write_json(json_path, record)
    click.echo(markdown_table(record))
    click.echo(f"\nwrote {json_path}")


@bench.command("memory")
@click.option("--model", default="zeroscope-arch", show_default=True,
              help=f"{ARCH}, {TINY}, {BUNDLED}, a diffusers folder or a cached Hub id (only configs are read).")
@click.option("--motion-adapter", help="AnimateDiff: a diffusers MotionAdapter (Hub id or folder) for an SD 1.5 --model.")
@_size_options
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default="float16", show_default=True)
@click.option("--attention", type=click.Choice(["sdpa", "classic"]), help="[default: the config's, sdpa]")
@click.option("--vae-batch-size", type=click.IntRange(min=1), help="[default: the config's, 1]")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="JSON of SMAConfig fields over the preset.")
@click.option("--fine-tune", is_flag=True, help="Wan: the LoRA fine-tune step instead, with and without gradient checkpointing.")
@click.option("--output", "json_path", type=click.Path(path_type=Path), default=Path("bench_memory.json"), show_default=True)
@reports_user_errors
def bench_memory(
    model: str, motion_adapter: str | None, frames: int | None, height: int | None, width: int | None, dtype: str, attention: str | None,
    vae_batch_size: int | None, config_file: Path | None, fine_tune: bool, json_path: Path,
) -> None:
    """Estimate a run's GPU memory at any size without a GPU or weights, for each activation-checkpointing
    choice (fake tensors; a lower bound); prints a markdown table, writes JSON."""
    import torch

    from pipelines.motion_transfer.memory_estimate import (
        component_configs, estimate_fine_tune_memory, estimate_memory, fine_tune_table, memory_table,
    )

    check_json_path(json_path, flag="--output")
    overrides = SMAConfig.read_file(config_file) if config_file is not None else {}
    configs = component_configs(model, motion_adapter)
    config = SMAConfig.for_model(
        model, family=configs["family"], **{k: v for k, v in overrides.items() if k != "model"}
    ).replace(
        num_frames=frames, height=height, width=width, attention=attention, vae_batch_size=vae_batch_size,
        motion_adapter=motion_adapter,
    ).validate()
    if fine_tune:
        record = estimate_fine_tune_memory(model, config, getattr(torch, dtype), configs=configs)
        write_json(json_path, record)
        click.echo(fine_tune_table(record))
        click.echo(f"\nwrote {json_path}")
        return
    record = estimate_memory(model, config, getattr(torch, dtype), configs=configs)
    write_json(json_path, record)
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
              help=f"Any model bench speed takes: {ARCH} (full size, random weights), the tiny ones, {BUNDLED}, "
                   f"a folder or a Hub id.")
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

    from pipelines.bench.precision import precision_table, run_precision_benchmark

    check_json_path(json_path, flag="--output")
    pipe, config = _bench_pipeline(model, motion_adapter, device, "float32", config_file, num_frames=frames, height=height,
                                   width=width, activation_checkpointing=activation_checkpointing)
    record = run_precision_benchmark(pipe, config, getattr(torch, dtype),
                                     log=None if quiet else (lambda message: click.echo(message, err=True)))
    write_json(json_path, record)
    click.echo(precision_table(record))
    click.echo(f"\nwrote {json_path}")


@bench.command("terms")
@click.option("--model", default="tiny-random", show_default=True,
              help=f"{BUNDLED}, {ARCH}, the tiny ones, a folder or a Hub id.")
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
    from pipelines.bench.terms import SOURCE_PROMPT, run_terms_benchmark, terms_table

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
    write_json(json_path, record)
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
    from pipelines.bench.appearance import appearance_scores, appearance_table

    check_json_path(json_path, flag="--output")
    pipe = SMAMotionTransferPipeline.load(model, device=device, dtype="float32")
    # The prompts sample as one batch, so the per-prompt lines only come at its end: the bar shows the steps.
    pipe.set_progress_bar_config(disable=quiet)
    # generate resolves and validates the settings: a bad number is an error before the first sample.
    result = appearance_scores(pipe, seed_start, count, None if quiet else (lambda line: click.echo(line, err=True)),
                               num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta,
                               guidance_rescale=guidance_rescale, restarts=restarts)
    write_json(json_path, {"model": model, "seed_start": seed_start, **result})
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
    from pipelines.bench.quality import held_out_pairs
    from pipelines.bench.speed import inversion_table, run_inversion_study

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
    write_json(json_path, {"model": model, "num_inference_steps": config.num_inference_steps, "rows": rows})
    click.echo(inversion_table(rows))
    click.echo(f"\nwrote {json_path}")


def _picture_bench_options(name: str) -> Any:
    """The options of a shapes-world bench that writes a JSON and a picture: bench_NAME.json, bench_NAME.png."""
    options = [
        click.option("--model", default="shapes", show_default=True, help="A shapes-world model (the clips are shapes-world clips)."),
        click.option("--device", default="auto", show_default=True),
        click.option("--output", "json_path", type=click.Path(path_type=Path), default=Path(f"bench_{name}.json"),
                     show_default=True),
        click.option("--strip", "strip_path", type=click.Path(path_type=Path), default=Path(f"bench_{name}.png"),
                     show_default=True, help="A picture of one run: input frames over output frames."),
        click.option("--quiet", "-q", is_flag=True, help="No per-run lines."),
    ]

    def decorate(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _picture_bench_pipeline(model: str, device: str, json_path: Path, strip_path: Path) -> Any:
    """The outputs checked, then the model loaded in float32 without progress bars."""
    from pipelines import SMAMotionTransferPipeline

    check_json_path(json_path, flag="--output")
    check_json_path(strip_path, (json_path,), flag="--strip")
    pipe = SMAMotionTransferPipeline.load(model, device=device, dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _without_frames(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in record.items() if key not in ("frames", "input")} for record in records]


@bench.command("masks")
@_picture_bench_options("masks")
@reports_user_errors
def bench_masks(model: str, device: str, json_path: Path, strip_path: Path, quiet: bool) -> None:
    """Subject masks: two-object clips whose objects move differently, transferred to a one-object prompt with
    the mask on either object and without one, scored against both objects' paths; prints tables, writes JSON."""
    import numpy as np

    from pipelines.bench import subjects
    from sma_guidance import shapes
    from sma_guidance.video_io import frame_strip, save_image

    pipe = _picture_bench_pipeline(model, device, json_path, strip_path)

    def report(r: dict[str, Any]) -> None:
        if not quiet:
            click.echo(f"{r['case']:>12} | {r['condition']:<18} | objects {int(r['objects'])} | fidelity first "
                       f"{r['fidelity_first']:.3f} second {r['fidelity_second']:.3f} | {r['seconds']:.0f} s", err=True)

    case_list = subjects.cases()
    records = subjects.run(pipe, case_list, report)
    shown = next(r for r in records if r["condition"] == "mask on the second")
    case = next(c for c in case_list if c.name == shown["case"])
    mask_row = np.repeat(subjects.object_mask(case, 1)[..., None].astype(np.float32), 3, axis=-1)
    save_image(frame_strip(shapes.render(case.spec), mask_row, shown["frames"], scale=3), strip_path)
    write_json(json_path, {"model": model, "records": _without_frames(records),
                           "by_subject": subjects.by_subject(records)})
    click.echo(subjects.markdown(records))
    click.echo(f"\nwrote {json_path} and {strip_path}")


@bench.command("windows")
@_picture_bench_options("windows")
@reports_user_errors
def bench_windows(model: str, device: str, json_path: Path, strip_path: Path, quiet: bool) -> None:
    """Clips longer than the model's window: a 24- and a 40-frame path through the 8-frame shapes model, in
    windows and at once, scored for fidelity, path error and seams; prints a table, writes JSON."""
    from pipelines.bench import long_clips
    from sma_guidance.video_io import frame_strip, save_image

    pipe = _picture_bench_pipeline(model, device, json_path, strip_path)

    def report(r: dict[str, Any]) -> None:
        if not quiet:
            click.echo(f"{r['clip']} | {r['run']} | fidelity {r['fidelity']:.3f} path error {r['path_error']:.3f} "
                       f"jump {r['jump_ratio']:.2f} | {r['seconds']:.0f} s", err=True)

    records = long_clips.run(pipe, long_clips.clips(), report)
    shown = next(r for r in records if r["run"] == "windows")
    save_image(frame_strip(shown["input"], shown["frames"], scale=2), strip_path)
    write_json(json_path, {"model": model, "records": _without_frames(records)})
    click.echo(long_clips.markdown(records))
    click.echo(f"\nwrote {json_path} and {strip_path}")


@bench.command("set")
@click.argument("manifest", metavar="MANIFEST", type=click.Path(path_type=Path))
@click.option("--clips", "clips_root", type=click.Path(path_type=Path),
              help="Where the clips of a DiTFlow prompts.js are: DAVIS's JPEGImages/480p, or a folder of NAME.mp4.")
@click.option("--model", default="shapes", show_default=True, help="Any --model of `sma-guide run`.")
@click.option("--motion-adapter", help="AnimateDiff: a diffusers MotionAdapter (Hub id or folder) for an SD 1.5 --model.")
@click.option("--methods", default="DMT,DMT + SMA", show_default=True,
              help="Comma-separated; the first is the baseline of the paired differences. Choose from `bench quality`'s methods.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True, help="Sampling seeds per (clip, target).")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N clips (a first look).")
@click.option("--start", type=float, help="Seconds skipped in clips whose manifest gives no range. [default: 0]")
@click.option("--duration", type=float, help="Seconds used of clips whose manifest gives no range. [default: to the end]")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="JSON of SMAConfig fields over the model's preset (frames, size, steps, ...).")
@click.option("--tracker", type=click.Choice(["klt", "cotracker", "shapes", "auto", "points"]), default="klt", show_default=True,
              help="One tracker for the whole set, so that every video is scored alike: klt (DMT's grid, Lucas-Kanade), "
                   "cotracker (DMT's own, weights on disk), shapes (object centroids, shapes-world sets); as `sma-guide eval`.")
@click.option("--tracker-weights", type=click.Path(path_type=Path), help="CoTracker3's scaled_offline.pth. [default: torch hub's cache]")
@click.option("--clip-model", help="CLIP weights folder for text alignment and CLIP temporal consistency. "
                                   "[default: openai/clip-vit-base-patch32 from the Hugging Face cache; skipped when absent]")
@click.option("--output", "out_dir", type=click.Path(path_type=Path), default=Path("bench_set"), show_default=True,
              help="Folder of the videos, records.jsonl (a stopped run continues from it), results.json and results.md.")
@click.option("--fresh", is_flag=True, help="Start over instead of continuing a stopped run with the same settings.")
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No per-video lines.")
@reports_user_errors
def bench_set(
    manifest: Path, clips_root: Path | None, model: str, motion_adapter: str | None, methods: str, seeds: int,
    limit: int | None, start: float | None, duration: float | None, config_file: Path | None, tracker: str,
    tracker_weights: Path | None, clip_model: str | None, out_dir: Path, fresh: bool, device: str, dtype: str, quiet: bool,
) -> None:
    """Motion transfer on a benchmark set — our JSON manifest, DiTFlow's prompts.js (its 50 DAVIS clips) or
    MTBench's folder — with each method, scored by every motion-fidelity formula and, with CLIP weights on
    disk, CLIP text alignment and temporal consistency. Prints a markdown table and the paired differences."""
    import dataclasses

    from pipelines import SMAMotionTransferPipeline
    from pipelines.bench.benchmark_sets import (
        SET_METHODS, ProgressLog, read_set, record_key, run_set, write_results,
    )
    from pipelines.bench.clip_scores import load_clip_scorer
    from pipelines.motion_transfer.inversion import model_fingerprint

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in SET_METHODS]
    if unknown or not chosen:
        raise UserError(f"unknown method {(unknown or [methods])[0]!r}; choose from: {', '.join(SET_METHODS)}")
    items = read_set(manifest, clips_root)[:limit]
    items = [item if item.start is not None or item.duration is not None else
             dataclasses.replace(item, start=start, duration=duration) for item in items]
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--output {out_dir} is a file; give a folder")
    overrides = SMAConfig.read_file(config_file) if config_file is not None else {}
    clip_scorer, clip_skipped = load_clip_scorer(clip_model)
    pipe = SMAMotionTransferPipeline.load(model, device=device, dtype=dtype, motion_adapter=motion_adapter)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.fit_inversion_steps(pipe.default_config().replace(**overrides).validate())
    settings = {"manifest": str(manifest), "model": model, "weights": model_fingerprint(pipe.denoiser, pipe.vae, pipe.text_encoder),
                "config": config.to_dict(), "tracker": tracker, "tracker_weights": str(tracker_weights or ""),
                "clip_model": None if clip_scorer is None else str(clip_model or "default")}
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = ProgressLog(out_dir / "records.jsonl", settings)
    wanted = {(i.name, t, m, s) for i in items for t in i.targets for m in chosen for s in range(seeds)}
    earlier = _resume(progress, wanted, record_key, fresh)
    if clip_skipped:
        click.echo(f"note: CLIP scores skipped: {clip_skipped}", err=True)
    clock = time.perf_counter()

    def report(record: dict[str, Any]) -> None:
        progress.append(record)
        if not quiet:
            fidelity = record["motion_fidelity"]
            shown = "n/a" if fidelity is None else f"{fidelity:+.3f}"
            click.echo(f"{record['clip']} / {record['target']} / {record['method']} / seed {record['seed']}: fidelity "
                       f"{shown} ({record['formula']}, {record['tracker']}, {record['tracks']} tracks) "
                       f"{record['seconds']:.1f}s", err=True)

    records = run_set(pipe, items, chosen, out_dir, config, tuple(range(seeds)), tracker, tracker_weights, clip_scorer,
                      frozenset(record_key(r) for r in earlier), report)
    records = earlier + records
    settings.update(clips=len(items), seeds=seeds, methods=chosen, videos=len(records),
                    seconds_total=time.perf_counter() - clock, resumed_videos=len(earlier))
    table = write_results(out_dir, records, chosen, settings, clip_skipped)
    click.echo(table)
    click.echo(f"\nwrote {out_dir / 'results.json'}, {out_dir / 'results.md'} and {len(records)} videos under {out_dir / 'videos'}")
