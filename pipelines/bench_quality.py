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
from sma_guidance.atomic import atomic_write
from sma_guidance.config import SMAConfig

# Far from the training streams (seeds 0 and 7 of pipelines.shapes_training).
HELD_OUT_SEED = 20251125

METHODS: dict[str, dict[str, Any]] = {
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
}
DEFAULT_METHODS = [name for name in METHODS if name != "fine-tune + SMA (abs)"]

METRICS = (
    "motion_fidelity", "motion_match", "color_match", "shape_match", "temporal_consistency", "seconds", "inversion_seconds",
)


@dataclass(frozen=True)
class Pair:
    """One benchmark item: an input clip, its caption (source prompt) and a target prompt."""

    index: int
    spec: shapes.ClipSpec
    frames: np.ndarray  # (F, 64, 64, 3) uint8
    source_prompt: str
    target_prompt: str

    @property
    def motion(self) -> str:
        return self.spec.objects[0].motion


def held_out_pairs(per_motion: int = 3, num_frames: int = 8, seed: int = HELD_OUT_SEED) -> list[Pair]:
    """``per_motion`` pairs for every motion; targets change colour, shape and often background."""
    rng = np.random.default_rng(seed)
    pairs = []
    for motion in shapes.MOTIONS:
        for _ in range(per_motion):
            spec = shapes.sample_clip_spec(rng, num_frames=num_frames, p_two=0, motion=motion)
            obj = spec.objects[0]
            color = str(rng.choice([c for c in shapes.COLORS if c != obj.color]))
            shape = str(rng.choice([s for s in shapes.SHAPES if s != obj.shape]))
            background = str(rng.choice(list(shapes.BACKGROUNDS)))
            pairs.append(
                Pair(
                    index=len(pairs),
                    spec=spec,
                    frames=shapes.render(spec),
                    source_prompt=shapes.caption(spec, drop_motion=True),
                    target_prompt=f"a {color} {shape} on a {background} background",
                )
            )
    return pairs


def score(pair: Pair, output: np.ndarray) -> dict[str, float]:
    """Metrics of one output ``(F, H, W, 3)`` uint8 against its pair."""
    result = metrics.evaluate(pair.frames, output, prompt=pair.target_prompt, method="shapes")
    detected = metrics.detect_object(output)
    moved = detected is not None and metrics.motion_direction_match(detected["centroids"], pair.motion)
    return {
        "motion_fidelity": float(result["motion_fidelity"]),
        "motion_match": float(moved),
        "color_match": float(bool(result.get("color_match", False))),
        "shape_match": float(bool(result.get("shape_match", False))),
        "temporal_consistency": float(result["temporal_consistency"]),
    }


def run_benchmark(
    pipe: Any,
    methods: list[str],
    pairs: list[Pair],
    seeds: tuple[int, ...] = (0, 1),
    base: SMAConfig | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every method on every pair and seed; returns one record per (method, pair, seed), in
    method, pair, seed order.

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
                config = base.replace(source_prompt=pair.source_prompt, **METHODS[name]).validate()
                adapter, train_seconds = None, 0.0
                if config.trains:
                    recipe = (config.train_lambda_global, config.train_lambda_local, config.residual)
                    if recipe not in adapters:
                        clock = time.perf_counter()
                        adapters[recipe] = (pipe.train_motion(pair.frames, config=config), time.perf_counter() - clock)
                    adapter, train_seconds = adapters[recipe]
                for seed in seeds:
                    clock = time.perf_counter()
                    out = pipe(pair.frames, pair.target_prompt, config=config.replace(seed=seed), adapter=adapter)
                    seconds = time.perf_counter() - clock - out.timings["inversion"] + train_seconds / len(seeds)
                    if not out.timings["inversion_cached"]:
                        inversion_seconds = out.timings["inversion"]
                    output = np.round(out.frames[0] * 255).astype(np.uint8)
                    record = {
                        "method": name,
                        "pair": pair.index,
                        "motion": pair.motion,
                        "seed": seed,
                        "source_prompt": pair.source_prompt,
                        "target_prompt": pair.target_prompt,
                        **score(pair, output),
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

        from .sma_pipeline import SMAMotionTransferPipeline

        torch.set_num_threads(threads)
        pipe = SMAMotionTransferPipeline.load(job["model"], device=job["device"], dtype="float32")
        pipe.set_progress_bar_config(disable=True)
        pairs = [p for p in held_out_pairs(job["per_motion"], job["num_frames"]) if p.index in pair_indices]
        base = pipe.default_config().replace(**job["overrides"])
        run_benchmark(pipe, job["methods"], pairs, tuple(job["seeds"]), base, on_result=queue.put)
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
    pairs to run; default all). The records do not depend on ``workers``."""
    indices = job.get("pairs") or list(range(len(held_out_pairs(job["per_motion"], job["num_frames"]))))
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
            values = np.array([r[metric] for r in rows], dtype=float)
            values = values[np.isfinite(values)]
            table[name][metric] = (float(values.mean()), float(values.std())) if len(values) else (math.nan, math.nan)
    return table


def markdown_table(summary: dict[str, dict[str, tuple[float, float]]], count: int) -> str:
    """The summary as a markdown table: mean ± standard deviation over ``count`` videos per method."""
    header = "| method | motion fidelity ↑ | motion match ↑ | colour match ↑ | shape match ↑ | temporal consistency ↑ | s / video |"
    lines = [header, "|" + "---|" * 7]
    for name, row in summary.items():
        cells = [f"{row[m][0]:.3f} ± {row[m][1]:.3f}" for m in METRICS[:5]]
        cells.append(f"{row['seconds'][0]:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    inversion = np.nanmean([row["inversion_seconds"][0] for row in summary.values()])
    lines.append(
        f"\n{count} videos per method (mean ± std over pairs and seeds); tracker: object centroids. "
        f"s / video leaves out the DDIM inversion ({inversion:.1f} s per clip, cached and shared by every "
        "method and seed; fine-tune methods invert once more with their adapted model)."
    )
    return "\n".join(lines)


def write_json(path: str | Path, records: list[dict[str, Any]], summary: dict, settings: dict) -> Path:
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps({"settings": settings, "summary": summary, "records": records}, indent=2))
    return path


__all__ = [
    "DEFAULT_METHODS", "HELD_OUT_SEED", "METHODS", "Pair", "held_out_pairs", "markdown_table", "run_benchmark",
    "run_parallel", "score", "sort_records", "summarize",
]
