"""Motion-transfer quality benchmark on the shapes world (the paper's Tables 1 and 3 in miniature).

A fixed held-out set of (input clip, target prompt) pairs is rendered by :mod:`sma_guidance.shapes`
with seeds disjoint from the model's training data, covering every motion; each pair is transferred
with every method and two sampling seeds, and scored with :mod:`sma_guidance.metrics`:

- motion fidelity (DMT's score on object-centroid tracks of input and output),
- motion match (the output's object follows the input's motion: direction, rotation sense, ...),
- edit fidelity (the output's object has the target prompt's colour and shape),
- temporal consistency (cosine similarity of consecutive frames),
- seconds per video (fine-tune methods: the adapter is trained once per clip and shared by its
  seeds, as a user would with ``--save-adapter``; its training time is split between them).
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import queue as queue_module
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sma_guidance import metrics, shapes
from sma_guidance import atomic
from sma_guidance.atomic import atomic_write
from sma_guidance.config import SMAConfig

# Far from the training streams (seeds 0 and 7 of pipelines.training.shapes_training).
HELD_OUT_SEED = 20251125

METHODS: dict[str, dict[str, Any]] = {
    # The metrics' ceiling: the exact inverted latent sampled with the clip's own caption, no guidance.
    "reconstruction": {"optimization_steps": 0, "downsample_factor": 1, "low_pass_grid": None},
    "inversion only": {"optimization_steps": 0},
    "DMT": {"lambda_global": 0.0, "lambda_local": 0.0},
    "DMT + global": {"lambda_local": 0.0},
    "DMT + local": {"lambda_global": 0.0},
    "DMT + SMA": {},
    "fine-tune": {"mode": "fine-tune", "train_lambda_global": 0.0, "train_lambda_local": 0.0},
    "fine-tune + SMA": {"mode": "fine-tune"},
    "both": {"mode": "both"},
    # Not in the default run: the official SMA code's |δ| residuals, for the signed-vs-abs question.
    "fine-tune + SMA (abs)": {"mode": "fine-tune", "residual": "abs"},
    # --new-scene: the clip's background repainted in the model's colour for the prompt, then inverted.
    "DMT (new scene)": {"lambda_global": 0.0, "lambda_local": 0.0, "new_scene": True},
    "DMT + SMA (new scene)": {"new_scene": True},
}
# Sampled with the clip's own caption (source prompt) and scored against it.
SOURCE_PROMPT_METHODS = frozenset({"reconstruction"})
# The single-term ablations and the |δ| variant run on request (--methods): leaving them out keeps the
# default run under an hour on a 2-core CPU at DMT's optimization budget.
OPTIONAL_METHODS = ("DMT + global", "DMT + local", "fine-tune + SMA (abs)", "DMT (new scene)", "DMT + SMA (new scene)")
# `--pairs new-scene`: the two starts, each with and without SMA's terms.
NEW_SCENE_METHODS = ["DMT", "DMT + SMA", "DMT (new scene)", "DMT + SMA (new scene)"]
DEFAULT_METHODS = [name for name in METHODS if name not in OPTIONAL_METHODS]
# `sma-guide bench quality --quick`: the headline (one pair per motion, one seed).
QUICK_METHODS = ["reconstruction", "inversion only", "DMT", "DMT + SMA"]
# Paired differences reported under the table: (method, baseline).
COMPARISONS = (
    ("DMT + SMA", "DMT"), ("DMT + global", "DMT"), ("DMT + local", "DMT"), ("DMT", "inversion only"),
    ("fine-tune + SMA", "fine-tune"),
    ("DMT + SMA (new scene)", "DMT (new scene)"), ("DMT + SMA (new scene)", "DMT + SMA"), ("DMT (new scene)", "DMT"),
)

PAIRED_METRICS = ("motion_fidelity", "motion_match", "path_error", "background_match")
METRICS = (
    "motion_fidelity", "motion_match", "path_error", "color_match", "shape_match", "background_match", "temporal_consistency",
    "seconds", "inversion_seconds",
)
TABLE_METRICS = METRICS[:7]  # the columns scored as mean ± std; seconds are shown as a mean


@dataclass(frozen=True)
class Pair:
    """One benchmark item: an input clip, its caption (source prompt) and a target prompt. ``spec`` is
    the clip's :class:`shapes.ClipSpec`, or ``None`` for a path outside the world's motions (``path``
    names it)."""

    index: int
    spec: shapes.ClipSpec | None
    frames: np.ndarray  # (F, 64, 64, 3) uint8
    source_prompt: str
    target_prompt: str
    path: str = ""
    # What the output's motion is scored against (default: frames): the moving objects alone, where the
    # clip also holds a still one that a new scene may redraw as background.
    reference: np.ndarray | None = None
    edit_scored: bool = True  # colour and shape: only for a one-object target prompt

    @property
    def motion(self) -> str:
        return self.spec.objects[0].motion if self.spec is not None else self.path


def _target_prompt(rng: np.random.Generator, color: str, shape: str) -> str:
    """An appearance-only prompt of another colour and shape than the clip's, on any background."""
    other_color = str(rng.choice([c for c in shapes.COLORS if c != color]))
    other_shape = str(rng.choice([s for s in shapes.SHAPES if s != shape]))
    return f"a {other_color} {other_shape} on a {rng.choice(list(shapes.BACKGROUNDS))} background"


def held_out_pairs(per_motion: int = 3, num_frames: int = 8, seed: int = HELD_OUT_SEED) -> list[Pair]:
    """``per_motion`` pairs for every motion; targets change colour, shape and often background."""
    rng = np.random.default_rng(seed)
    pairs = []
    for motion in shapes.MOTIONS:
        for _ in range(per_motion):
            spec = shapes.sample_clip_spec(rng, num_frames=num_frames, p_two=0, motion=motion)
            obj = spec.objects[0]
            pairs.append(
                Pair(
                    index=len(pairs),
                    spec=spec,
                    frames=shapes.render(spec),
                    source_prompt=shapes.caption(spec, drop_motion=True),
                    target_prompt=_target_prompt(rng, obj.color, obj.shape),
                )
            )
    return pairs


PAIR_SETS = ("held-out", "unseen-paths", "new-scene")


def benchmark_pairs(pair_set: str = "held-out", per_motion: int = 3, num_frames: int = 8) -> list[Pair]:
    """The pairs of a benchmark run: ``"held-out"`` (:func:`held_out_pairs`, ``per_motion`` for every
    motion), ``"unseen-paths"`` (:func:`unseen_path_pairs`) or ``"new-scene"`` (:func:`new_scene_pairs`)."""
    if pair_set == "unseen-paths":
        return unseen_path_pairs(num_frames)
    if pair_set == "new-scene":
        return new_scene_pairs(num_frames)
    return held_out_pairs(per_motion, num_frames)


def unseen_paths(num_frames: int = 8) -> dict[str, np.ndarray]:
    """Centre paths ``(F, 2)`` (pixels, 64-px frames, y down) that none of the world's motions makes:
    the check that transfer follows the clip, not a motion the model knows."""
    t = np.linspace(0.0, 1.0, num_frames)
    radius, angle = 18 - 13 * t, 1.75 * np.pi * t
    ease = np.concatenate([np.full(num_frames // 2, 0.0), np.linspace(0.0, 1.0, num_frames - num_frames // 2)])
    corner = np.minimum(t, 0.5) * 2, np.maximum(t - 0.5, 0) * 2
    return {
        "spiral": np.stack([32 + radius * np.cos(angle), 32 - radius * np.sin(angle)], 1),
        "s-curve": np.stack([12 + 40 * t, 32 + 13 * np.sin(2 * np.pi * t)], 1),
        "v-shape": np.stack([12 + 40 * t, 14 + 36 * (1 - np.abs(2 * t - 1))], 1),
        "stop-and-go": np.stack([12 + 40 * (0.15 * t + 0.85 * ease), 20 + 24 * t], 1),
        "l-turn": np.stack([12 + 30 * corner[0], 14 + 36 * corner[1]], 1),
    }


def unseen_path_pairs(num_frames: int = 8, seed: int = HELD_OUT_SEED + 1) -> list[Pair]:
    """One pair per :func:`unseen_paths` path: a random object drawn along it, an appearance-only target."""
    rng = np.random.default_rng(seed)
    pairs = []
    for name, path in unseen_paths(num_frames).items():
        color, shape = str(rng.choice(list(shapes.COLORS))), str(rng.choice(list(shapes.SHAPES)))
        background = str(rng.choice(list(shapes.BACKGROUNDS)))
        frames = shapes.render_path(path, shape, color, float(rng.uniform(12, 18)), background)
        pairs.append(Pair(index=len(pairs), spec=None, frames=frames, path=name,
                          source_prompt=f"a {color} {shape} on a {background} background",
                          target_prompt=_target_prompt(rng, color, shape)))
    return pairs


def _other_background(rng: np.random.Generator, background: str) -> str:
    return str(rng.choice([b for b in shapes.BACKGROUNDS if b != background]))


def _new_scene_prompt(rng: np.random.Generator, color: str, shape: str, background: str) -> str:
    """An object of another colour and shape on a background other than the clip's."""
    other_color = str(rng.choice([c for c in shapes.COLORS if c != color]))
    other_shape = str(rng.choice([s for s in shapes.SHAPES if s != shape]))
    return f"a {other_color} {other_shape} on a {_other_background(rng, background)} background"


def new_scene_pairs(num_frames: int = 8, seed: int = HELD_OUT_SEED + 2) -> list[Pair]:
    """Pairs whose every target prompt names a background other than the clip's: one clip of each world
    motion, then motions that are more than one translation, rendered along paths the training never drew
    (held out): an object growing while it moves right, one shrinking while it moves down, stop-and-go, one
    circling beside a still one (scored against the circling one alone: a new scene may redraw the still one
    as background), and two objects moving apart (a two-object target; its colour and shape are not scored)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for motion in shapes.MOTIONS:
        spec = shapes.sample_clip_spec(rng, num_frames=num_frames, p_two=0, motion=motion)
        obj = spec.objects[0]
        pairs.append(Pair(len(pairs), spec, shapes.render(spec), shapes.caption(spec, drop_motion=True),
                          _new_scene_prompt(rng, obj.color, obj.shape, spec.background)))
    t = np.linspace(0.0, 1.0, num_frames)

    def one(name: str, path: np.ndarray, size) -> None:
        color, shape = str(rng.choice(list(shapes.COLORS))), str(rng.choice(list(shapes.SHAPES)))
        background = str(rng.choice(list(shapes.BACKGROUNDS)))
        frames = shapes.render_path(path, shape, color, size, background)
        pairs.append(Pair(len(pairs), None, frames, f"a {color} {shape} on a {background} background",
                          _new_scene_prompt(rng, color, shape, background), path=name))

    one("growing, right", np.stack([14 + 34 * t, np.full_like(t, 34.0)], 1), 10 + 12 * t)
    one("shrinking, down", np.stack([np.full_like(t, 30.0), 14 + 34 * t], 1), 22 - 12 * t)
    ease = np.concatenate([np.zeros(num_frames // 2), np.linspace(0.0, 1.0, num_frames - num_frames // 2)])
    one("stop-and-go", np.stack([12 + 40 * (0.15 * t + 0.85 * ease), 44 - 24 * t], 1), 14.0)

    colors = [str(c) for c in rng.choice(list(shapes.COLORS), 2, replace=False)]
    shape_pair = [str(s) for s in rng.choice(list(shapes.SHAPES), 2)]
    background = str(rng.choice(list(shapes.BACKGROUNDS)))
    angle = 1.5 * np.pi * t
    circling = np.stack([22 + 12 * np.cos(angle), 32 - 12 * np.sin(angle)], 1)
    still = np.tile([[52.0, 50.0]], (num_frames, 1))
    frames = shapes.render_paths([(circling, shape_pair[0], colors[0], 14.0), (still, shape_pair[1], colors[1], 12.0)], background)
    reference = shapes.render_path(circling, shape_pair[0], colors[0], 14.0, background)
    pairs.append(Pair(len(pairs), None, frames,
                      f"a {colors[0]} {shape_pair[0]} and a {colors[1]} {shape_pair[1]} on a {background} background",
                      _new_scene_prompt(rng, colors[0], shape_pair[0], background), path="circling, other still",
                      reference=reference))

    colors = [str(c) for c in rng.choice(list(shapes.COLORS), 2, replace=False)]
    shape_pair = [str(s) for s in rng.choice(list(shapes.SHAPES), 2)]
    background = str(rng.choice(list(shapes.BACKGROUNDS)))
    left, right = np.stack([28 - 18 * t, 24 + 0 * t], 1), np.stack([36 + 18 * t, 40 + 0 * t], 1)
    frames = shapes.render_paths([(left, shape_pair[0], colors[0], 12.0), (right, shape_pair[1], colors[1], 12.0)], background)
    targets = [str(c) for c in rng.choice([c for c in shapes.COLORS if c not in colors], 2, replace=False)]
    pairs.append(Pair(len(pairs), None, frames,
                      f"a {colors[0]} {shape_pair[0]} and a {colors[1]} {shape_pair[1]} on a {background} background",
                      f"a {targets[0]} {shape_pair[1]} and a {targets[1]} {shape_pair[0]} on a "
                      f"{_other_background(rng, background)} background", path="two apart", edit_scored=False))
    return pairs


def score(pair: Pair, output: np.ndarray, prompt: str | None = None) -> dict[str, float]:
    """Metrics of one output ``(F, H, W, 3)`` uint8 against its pair; ``prompt`` (default the pair's
    target prompt) is what the colour and shape must match."""
    reference = pair.frames if pair.reference is None else pair.reference
    result = metrics.evaluate(reference, output, prompt=prompt or pair.target_prompt, method="shapes")
    detected = metrics.detect_object(output)
    if pair.motion in shapes.MOTIONS:
        moved = float(detected is not None and metrics.motion_direction_match(detected["centroids"], pair.motion))
    else:  # a path outside the world's motions has no class to match: fidelity alone says it
        moved = math.nan
    return {
        "motion_fidelity": float(result["motion_fidelity"]),
        "motion_match": moved,
        "path_error": float(result["path_error"]),
        "color_match": float(bool(result.get("color_match", False))) if pair.edit_scored else math.nan,
        "shape_match": float(bool(result.get("shape_match", False))) if pair.edit_scored else math.nan,
        # NaN when the target prompt names no background: nothing was asked, so nothing can be missed
        "background_match": float(result["background_match"]) if "background_match" in result else math.nan,
        "temporal_consistency": float(result["temporal_consistency"]),
    }


def method_config(base: SMAConfig, name: str, pair: Pair) -> SMAConfig:
    """``base`` with method ``name``'s settings (``None`` included: it clears a preset's value) and the
    pair's caption as the source prompt."""
    return dataclasses.replace(base, **METHODS[name]).replace(source_prompt=pair.source_prompt).validate()


def method_prompt(name: str, pair: Pair) -> str:
    """The prompt method ``name`` samples with, and is scored against."""
    return pair.source_prompt if name in SOURCE_PROMPT_METHODS else pair.target_prompt


def record_key(record: dict[str, Any]) -> tuple[str, int, int]:
    """What identifies one video of a run: ``(method, pair, seed)``."""
    return record["method"], int(record["pair"]), int(record["seed"])


def run_benchmark(
    pipe: Any,
    methods: list[str],
    pairs: list[Pair],
    seeds: tuple[int, ...] = (0, 1),
    base: SMAConfig | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    skip: frozenset[tuple[str, int, int]] = frozenset(),
) -> list[dict[str, Any]]:
    """Run every method on every pair and seed; returns one record per (method, pair, seed), in
    method, pair, seed order. Keys in ``skip`` (see :func:`record_key`: videos a stopped run already
    made) are left out.

    Each clip is inverted once, into a temporary inversion cache that every method and seed then
    reads, as a user's repeated runs on a clip do: ``seconds`` leaves the inversion out (it is the
    same for every method) and ``inversion_seconds`` gives it per clip. Fine-tune adapters are
    trained once per clip and recipe and their time split between the seeds."""
    base = base or pipe.default_config()
    records = []
    with tempfile.TemporaryDirectory(prefix="sma-bench-") as cache_dir:
        base = base.replace(inversion_cache=True, cache_dir=cache_dir)
        for pair in pairs:
            adapters: dict[tuple, tuple[Any, float]] = {}  # one adapter per training recipe
            inversion_seconds = math.nan
            for name in methods:
                todo = [seed for seed in seeds if (name, pair.index, seed) not in skip]
                if not todo:
                    continue
                config = method_config(base, name, pair)
                prompt = method_prompt(name, pair)
                adapter, train_seconds = None, 0.0
                if config.trains:
                    recipe = (config.train_lambda_global, config.train_lambda_local, config.residual)
                    if recipe not in adapters:
                        clock = time.perf_counter()
                        adapters[recipe] = (pipe.train_motion(pair.frames, config=config), time.perf_counter() - clock)
                    adapter, train_seconds = adapters[recipe]
                for seed in todo:
                    clock = time.perf_counter()
                    out = pipe(pair.frames, prompt, config=config.replace(seed=seed), adapter=adapter)
                    seconds = time.perf_counter() - clock - out.timings["inversion"] + train_seconds / len(todo)
                    if not out.timings["inversion_cached"]:
                        inversion_seconds = out.timings["inversion"]
                    output = np.round(out.frames[0] * 255).astype(np.uint8)
                    record = {
                        "method": name,
                        "pair": pair.index,
                        "motion": pair.motion,
                        "seed": seed,
                        "source_prompt": pair.source_prompt,
                        "target_prompt": prompt,
                        **score(pair, output, prompt),
                        "seconds": seconds,
                        "inversion_seconds": inversion_seconds,
                    }
                    records.append(record)
                    if on_result:
                        on_result(record)
    return sort_records(records, methods)


def sort_records(records: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """Method (in ``methods`` order), pair, seed order, whatever order the records came in."""
    return sorted(records, key=lambda r: (methods.index(r["method"]), r["pair"], r["seed"]))


def _worker(job: dict[str, Any], pair_indices: list[int], threads: int, queue: Any) -> None:
    """One process of :func:`run_parallel`: loads the model, runs its share of the pairs and sends
    each record (then ``None``, or the error text) through ``queue``."""
    try:
        import torch

        from pipelines.motion_transfer.pipeline_sma import SMAMotionTransferPipeline

        torch.set_num_threads(threads)
        pipe = SMAMotionTransferPipeline.load(job["model"], device=job["device"], dtype="float32")
        pipe.set_progress_bar_config(disable=True)
        pairs = [p for p in benchmark_pairs(job.get("pair_set", "held-out"), job["per_motion"], job["num_frames"])
                 if p.index in pair_indices]
        base = pipe.default_config().replace(**job["overrides"])
        skip = frozenset(tuple(key) for key in job.get("skip", ()))
        run_benchmark(pipe, job["methods"], pairs, tuple(job["seeds"]), base, on_result=queue.put, skip=skip)
        queue.put(None)
    except BaseException as error:  # noqa: BLE001 — reported by the parent, which then stops
        queue.put(f"{type(error).__name__}: {error}")


def run_parallel(
    job: dict[str, Any],
    workers: int,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """:func:`run_benchmark` split by pair over ``workers`` processes of one thread each (on a CPU
    the model is too small for two threads to keep busy: two processes do ~1.4x the work).

    ``job``: ``model``, ``device``, ``methods``, ``per_motion``, ``num_frames``, ``seeds``,
    ``overrides`` (config fields over the model's preset) and optionally ``pairs`` (indices of the
    pairs to run; default all) and ``skip`` (:func:`record_key` s already made). The records do not
    depend on ``workers``."""
    pair_set = job.get("pair_set", "held-out")
    indices = job.get("pairs") or list(range(len(benchmark_pairs(pair_set, job["per_motion"], job["num_frames"]))))
    skip = {tuple(key) for key in job.get("skip", ())}
    indices = [i for i in indices if any((m, i, s) not in skip for m in job["methods"] for s in job["seeds"])]
    if not indices:
        return []
    workers = max(1, min(workers, len(indices)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // workers)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [
        context.Process(target=_worker, args=(job, indices[i::workers], threads, queue), daemon=True)
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    records, running = [], workers
    finished = False
    try:
        while running:
            try:
                message = queue.get(timeout=5)
            except queue_module.Empty:
                if not any(p.is_alive() for p in processes):
                    raise RuntimeError("a benchmark worker died without reporting (out of memory?)") from None
                continue
            if message is None:
                running -= 1
            elif isinstance(message, str):
                raise RuntimeError(f"a benchmark worker failed: {message}")
            else:
                records.append(message)
                if on_result:
                    on_result(message)
        finished = True
    finally:
        for process in processes:
            # A worker that reported its last record is exiting: let it run its exit handlers (they
            # release its semaphores; a kill leaves one to the resource tracker's "leaked" warning).
            process.join(timeout=60 if finished else 0)
            if process.is_alive():
                process.terminate()
            process.join()
        queue.close()  # release the queue's pipe and feeder thread before returning
        queue.join_thread()
    return sort_records(records, job["methods"])


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{method: {metric: (mean, std)}}`` over pairs and seeds (NaN scores are skipped)."""
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for name in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == name]
        table[name] = {}
        for metric in METRICS:
            values = np.array([r.get(metric, math.nan) for r in rows], dtype=float)  # (older logs lack some)
            values = values[np.isfinite(values)]
            table[name][metric] = (float(values.mean()), float(values.std())) if len(values) else (math.nan, math.nan)
    return table


def markdown_table(summary: dict[str, dict[str, tuple[float, float]]], count: int) -> str:
    """The summary as a markdown table: mean ± standard deviation over ``count`` videos per method."""
    header = ("| method | motion fidelity ↑ | motion match ↑ | path error ↓ | colour match ↑ | shape match ↑ "
              "| background match ↑ | temporal consistency ↑ | s / video |")
    lines = [header, "|" + "---|" * 9]
    for name, row in summary.items():
        cells = ["—" if math.isnan(row[m][0]) else f"{row[m][0]:.3f} ± {row[m][1]:.3f}" for m in TABLE_METRICS]
        cells.append(f"{row['seconds'][0]:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    inversion = np.nanmean([row["inversion_seconds"][0] for row in summary.values()])
    lines.append(
        f"\n{count} videos per method (mean ± std over pairs and seeds); tracker: object centroids; path error "
        "in fractions of the frame. "
        f"s / video leaves out the DDIM inversion ({inversion:.1f} s per clip, cached and shared by every "
        "method and seed; fine-tune methods invert once more with their adapted model)."
    )
    return "\n".join(lines)


def paired_difference(records: list[dict[str, Any]], method: str, baseline: str, metric: str) -> tuple[float, float, int]:
    """``(mean, standard error, n pairs)`` of ``method − baseline`` over the videos both made (same pair and
    seed): pairing removes the spread between clips, which is far larger than the methods' differences.

    Seeds are averaged within a pair first, and the error is taken over pairs: the seeds of one clip are
    not independent samples (with the whole inversion as initial latent and no restart sampling, the
    sampler is deterministic and every seed gives the same video), so counting them apart would shrink
    the error by up to √seeds."""
    base = {(r["pair"], r["seed"]): r.get(metric, math.nan) for r in records if r["method"] == baseline}
    by_pair: dict[Any, list[float]] = {}
    for r in records:
        key = (r["pair"], r["seed"])
        if r["method"] == method and key in base:
            difference = r.get(metric, math.nan) - base[key]
            if np.isfinite(difference):
                by_pair.setdefault(r["pair"], []).append(difference)
    diffs = np.array([np.mean(values) for values in by_pair.values()], dtype=float)
    if len(diffs) == 0:
        return math.nan, math.nan, 0
    error = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else math.nan
    return float(diffs.mean()), error, len(diffs)


def comparisons(records: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Paired differences of :data:`COMPARISONS` present in ``records``, on :data:`PAIRED_METRICS`:
    ``{"DMT + SMA − DMT": {metric: (mean, standard error, n)}}``."""
    present = {r["method"] for r in records}
    return {
        f"{method} − {baseline}": {
            metric: paired_difference(records, method, baseline, metric) for metric in PAIRED_METRICS
        }
        for method, baseline in COMPARISONS
        if method in present and baseline in present
    }


def comparison_lines(table: dict[str, dict[str, tuple[float, float, int]]]) -> str:
    """:func:`comparisons` as markdown bullets: mean ± standard error over n paired clips."""
    def show(mean: float, error: float) -> str:
        return "—" if math.isnan(mean) else f"{mean:+.3f} ± {error:.3f}"

    lines = []
    for name, row in table.items():
        (fm, fe, n), (mm, me, _), (pm, pe, _), (bm, be, _) = (row[metric] for metric in PAIRED_METRICS)
        lines.append(f"- {name}: motion fidelity {show(fm, fe)}, motion match {show(mm, me)}, path error {show(pm, pe)}, "
                     f"background match {show(bm, be)} "
                     f"(paired mean ± standard error over {n} clips, seeds averaged within a clip)")
    return "\n".join(lines)


class ProgressLog:
    """A benchmark run's records, one JSON line each as they come, so that a stopped run continues where
    it was. The first line holds the run's settings; a log written with other settings is not resumed."""

    def __init__(self, path: str | Path, settings: dict[str, Any]) -> None:
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings, default=str))

    def load(self) -> list[dict[str, Any]]:
        """The records of an earlier run with the same settings (none when there is no such log)."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        try:
            if not lines or json.loads(lines[0]).get("settings") != self.settings:
                return []
        except ValueError:
            return []
        records = []
        for line in lines[1:]:
            try:
                records.append(json.loads(line))
            except ValueError:  # the last line of a run killed mid-write
                break
        return records

    def start(self, records: list[dict[str, Any]]) -> None:
        """Begin the log afresh with ``records`` (those of a resumed run), atomically."""
        with atomic_write(self.path) as tmp:
            tmp.write_text("".join(json.dumps(item) + "\n" for item in [{"settings": self.settings}, *records]))

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def write_json(path: str | Path, records: list[dict[str, Any]], summary: dict, settings: dict,
               paired: dict | None = None) -> Path:
    path = Path(path)
    data = {"settings": settings, "summary": summary, "paired_differences": paired or {}, "records": records}
    return atomic.write_json(path, data)


__all__ = [
    "COMPARISONS", "DEFAULT_METHODS", "HELD_OUT_SEED", "METHODS", "OPTIONAL_METHODS", "NEW_SCENE_METHODS", "PAIRED_METRICS", "PAIR_SETS", "QUICK_METHODS",
    "Pair", "ProgressLog", "benchmark_pairs", "comparison_lines", "comparisons", "held_out_pairs", "markdown_table",
    "method_config", "paired_difference", "record_key", "run_benchmark", "run_parallel", "score", "sort_records",
    "summarize", "unseen_path_pairs", "unseen_paths", "write_json",
]
