"""``sma-guide bench set MANIFEST``: motion transfer on a public benchmark set, scored the standard way.

A set is a list of clips, each with a frame range, a source prompt and target prompts (:class:`SetClip`). Three
formats are read (:func:`read_set`):

- ours, a JSON file: ``{"clips": [{"name", "clip", "source_prompt", "targets": [...] or {id: prompt},
  "start", "duration", "foreground"}]}``, paths relative to the file;
- DiTFlow's 50-clip DAVIS list, its project page's ``prompts.js`` (``const prompts = {'clip': {'easy': ...,
  'medium': ..., 'hard': ...}, ...}``): the three levels are the targets, there is no source prompt, and the
  clips are found under ``--clips`` (DAVIS's ``JPEGImages/480p``, or a folder of ``NAME.mp4``);
- MTBench's folder (DeT, ICCV 2025): ``NAME/videos/NAME.mp4``, ``NAME/prompts.txt`` (the source prompt),
  ``NAME/eval_prompts.txt`` (one target a line) and, when there, ``NAME/masks/NAME/00000.png``, the first
  frame's mask that restricts the score to the box over the subject as MTBench's evaluation does.

Every (clip, target, method, seed) is one video, written under ``OUTPUT/videos`` and scored against the input
as the model saw it (same frames, same size) by :func:`sma_guidance.metrics.evaluate` — every motion-fidelity
formula — and, when CLIP weights are on disk, CLIP text alignment and CLIP temporal consistency
(:mod:`pipelines.bench.clip_scores`). Records are appended to ``OUTPUT/records.jsonl`` as they come, so a stopped
run continues where it was; the end writes ``OUTPUT/results.json`` and ``OUTPUT/results.md``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sma_guidance import metrics
from sma_guidance.atomic import write_json
from sma_guidance.config import SMAConfig
from sma_guidance.errors import UserError
from sma_guidance.video_io import VIDEO_EXTENSIONS

from .quality import METHODS, SOURCE_PROMPT_METHODS, ProgressLog

SET_METHODS = [name for name in METHODS if name not in SOURCE_PROMPT_METHODS]
DEFAULT_SET_METHODS = ["DMT", "DMT + SMA"]
SCORES = ("motion_fidelity", *(f"motion_fidelity_{name}" for name in metrics.FORMULAS), "clip_text_alignment",
          "clip_temporal_consistency", "temporal_consistency", "seconds")


@dataclass(frozen=True)
class SetClip:
    """One clip of a benchmark set: its ``name``, the video (or image folder) ``clip``, the ``source_prompt``,
    the ``targets`` ``{id: prompt}``, the part used (``start``, ``duration`` in seconds; ``None``: from the
    beginning, to the end) and an optional first-frame ``foreground`` mask for DMT's box restriction."""

    name: str
    clip: Path
    source_prompt: str
    targets: dict[str, str]
    start: float | None = None
    duration: float | None = None
    foreground: Path | None = None


def find_clip(root: Path, name: str) -> Path:
    """The clip ``name`` under ``root``: ``NAME.<video>``, a folder ``NAME`` of frames, or DAVIS's
    ``JPEGImages/480p/NAME``."""
    candidates = [root / f"{name}{suffix}" for suffix in VIDEO_EXTENSIONS]
    candidates += [root / name, root / "JPEGImages" / "480p" / name]
    for path in candidates:
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            return path
    raise UserError(f"clip {name!r} not found under {root} (looked for {name}.mp4, {name}/ and JPEGImages/480p/{name}/)")


def read_ditflow_prompts(path: Path, clips_root: Path | None) -> list[SetClip]:
    """DiTFlow's ``prompts.js``: ``{clip: {level: prompt}}`` → one :class:`SetClip` a clip, its levels the
    targets, found under ``clips_root`` (:func:`find_clip`)."""
    if clips_root is None:
        raise UserError(f"{path.name} names DAVIS clips: pass --clips FOLDER (DAVIS's JPEGImages/480p, or NAME.mp4 files)")
    text = path.read_text(encoding="utf-8")
    match = re.search(r"=\s*(\{.*\})\s*;?\s*$", text, re.DOTALL)
    try:
        table = ast.literal_eval(match.group(1)) if match else None
    except (ValueError, SyntaxError):
        table = None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise UserError(f"{path} is not DiTFlow's prompts.js (const prompts = {{'clip': {{'easy': '...', ...}}, ...}})")
    return [SetClip(name, find_clip(clips_root, name), "", {str(k): str(v) for k, v in levels.items()})
            for name, levels in table.items()]


def read_mtbench(root: Path) -> list[SetClip]:
    """MTBench's folder (layout in the module docstring), clips in name order."""
    items = []
    for folder in sorted(p for p in root.iterdir() if (p / "eval_prompts.txt").is_file()):
        name = folder.name
        video = folder / "videos" / f"{name}.mp4"
        if not video.is_file():
            raise UserError(f"MTBench clip {name}: {video} is missing")
        source = folder / "prompts.txt"
        source_prompt = source.read_text(encoding="utf-8").splitlines()[0].strip() if source.is_file() else ""
        targets = [line.strip() for line in (folder / "eval_prompts.txt").read_text(encoding="utf-8").splitlines()]
        mask = folder / "masks" / name / "00000.png"
        items.append(SetClip(name, video, source_prompt, {str(i): t for i, t in enumerate(t for t in targets if t)},
                             foreground=mask if mask.is_file() else None))
    if not items:
        raise UserError(f"{root} holds no MTBench clip (NAME/eval_prompts.txt and NAME/videos/NAME.mp4)")
    return items


def read_manifest_json(path: Path) -> list[SetClip]:
    """Our JSON manifest (module docstring); paths relative to its folder."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["clips"] if isinstance(data, dict) else data
        items = []
        for index, entry in enumerate(entries):
            clip = path.parent / entry["clip"]
            targets = entry["targets"]
            targets = {str(k): str(v) for k, v in targets.items()} if isinstance(targets, dict) else \
                {str(i): str(t) for i, t in enumerate(targets)}
            foreground = entry.get("foreground")
            items.append(SetClip(str(entry.get("name") or Path(entry["clip"]).stem), clip, str(entry.get("source_prompt", "")),
                                 targets, entry.get("start"), entry.get("duration"),
                                 path.parent / foreground if foreground else None))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"{path} is not a benchmark manifest ({type(error).__name__}: {error}); expected "
                        '{"clips": [{"clip": ..., "source_prompt": ..., "targets": [...]}]}') from None
    for item in items:
        if not item.clip.exists():
            raise UserError(f"clip not found: {item.clip} (named in {path})")
        if not item.targets:
            raise UserError(f"clip {item.name} of {path} has no target prompt")
    return items


def read_set(manifest: Path, clips_root: Path | None = None) -> list[SetClip]:
    """The clips of a benchmark set: MTBench's folder, DiTFlow's ``prompts.js`` or our JSON manifest."""
    if not manifest.exists():
        raise UserError(f"benchmark set not found: {manifest}")
    if manifest.is_dir():
        items = read_mtbench(manifest)
    elif manifest.suffix == ".js":
        items = read_ditflow_prompts(manifest, clips_root)
    else:
        items = read_manifest_json(manifest)
    names = [item.name for item in items]
    if len(set(names)) != len(names):
        raise UserError(f"{manifest} names a clip twice; give each clip its own name")
    return items


def record_key(record: dict[str, Any]) -> tuple[str, str, str, int]:
    """What identifies one video: ``(clip, target id, method, seed)``."""
    return record["clip"], record["target"], record["method"], int(record["seed"])


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def run_set(
    pipe: Any,
    items: list[SetClip],
    methods: list[str],
    out_dir: Path,
    base: SMAConfig,
    seeds: tuple[int, ...] = (0,),
    tracker: str = "klt",
    tracker_weights: Path | None = None,
    clip_scorer: Callable[[np.ndarray, str], dict[str, float]] | None = None,
    skip: frozenset = frozenset(),
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every method on every (clip, target) and seed of ``items``; one record a video (keys in ``skip`` left
    out), each video written to ``out_dir/videos/CLIP/TARGET/METHOD_sSEED.mp4``. Each clip is inverted once
    (a cache every method and seed reads)."""
    import tempfile

    from sma_guidance.masks import fit_mask
    from sma_guidance.tracking import read_foreground
    from sma_guidance.video_io import export_to_video, read_clip

    records = []
    with tempfile.TemporaryDirectory(prefix="sma-bench-set-") as cache_dir:
        base = base.replace(inversion_cache=True, cache_dir=cache_dir)
        for item in items:
            todo = [(t, m, s) for t in item.targets for m in methods for s in seeds if (item.name, t, m, s) not in skip]
            if not todo:
                continue
            config = base.replace(source_prompt=item.source_prompt).validate()
            clip = read_clip(item.clip, config.num_frames, item.start or 0.0, item.duration)
            shown, _ = pipe.prepare_video(clip, config)  # the input as the model sees it: frames and size
            source = np.round((shown.permute(0, 2, 3, 1).float().cpu().numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
            foreground = None
            if item.foreground is not None:
                raw = np.asarray(read_foreground(item.foreground))
                raw = (raw.max(-1) if raw.ndim == 3 else raw) > 0  # DMT's "any nonzero value"
                foreground = fit_mask(raw[None].astype(np.float32), clip.frames.shape[1:3], config.height, config.width)[0].numpy() > 0.5
            for target, name, seed in todo:
                prompt = item.targets[target]
                run_config = dataclasses.replace(config, **METHODS[name]).replace(seed=seed).validate()
                clock = time.perf_counter()
                out = pipe(video=clip, prompt=prompt, config=run_config)
                seconds = time.perf_counter() - clock - out.timings.get("inversion", 0.0)
                output = np.round(out.frames[0] * 255).astype(np.uint8)
                path = out_dir / "videos" / _slug(item.name) / _slug(target) / f"{_slug(name)}_s{seed}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                export_to_video(output, path, fps=out.fps)
                scores = metrics.evaluate(source, output, method=tracker, foreground=foreground, tracker_weights=tracker_weights)
                record = {
                    "clip": item.name, "target": target, "method": name, "seed": seed, "prompt": prompt,
                    "source_prompt": item.source_prompt, "video": str(path.relative_to(out_dir)),
                    "tracker": scores["tracker"], "formula": scores["formula"], "tracks": scores["input_tracks"],
                    "foreground_box": bool(scores.get("foreground_box")),
                    **{key: _finite(scores[key]) for key in scores if key.startswith("motion_fidelity")},
                    "temporal_consistency": _finite(scores["temporal_consistency"]),
                    **(clip_scorer(output, prompt) if clip_scorer is not None else {}),
                    "seconds": seconds,
                }
                records.append(record)
                if on_result is not None:
                    on_result(record)
    return records


def _finite(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def summarize(records: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per method: videos, and each score's mean and standard error (missing scores left out)."""
    summary = {}
    for name in methods:
        rows = [r for r in records if r["method"] == name]
        entry: dict[str, Any] = {"videos": len(rows)}
        for key in SCORES:
            values = np.array([r[key] for r in rows if r.get(key) is not None], np.float64)
            if len(values):
                entry[key] = {"mean": float(values.mean()), "sem": _sem(values), "n": len(values)}
        summary[name] = entry
    return summary


def _sem(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan


def paired_differences(records: list[dict[str, Any]], methods: list[str], key: str = "motion_fidelity") -> list[dict[str, Any]]:
    """Each method minus the first one (the baseline) on the same (clip, target, seed): mean, standard error, n."""
    if len(methods) < 2:
        return []
    by_key = {(r["clip"], r["target"], r["seed"], r["method"]): r.get(key) for r in records}
    baseline = methods[0]
    result = []
    for name in methods[1:]:
        diffs = np.array([value - by_key[(c, t, s, baseline)] for (c, t, s, m), value in by_key.items()
                          if m == name and value is not None and by_key.get((c, t, s, baseline)) is not None])
        if len(diffs):
            result.append({"method": name, "baseline": baseline, "metric": key, "mean": float(diffs.mean()),
                           "sem": _sem(diffs), "n": len(diffs)})
    return result


def markdown_table(summary: dict[str, dict[str, Any]], clip_skipped: str | None = None) -> str:
    """The summary as a markdown table: mean ± standard error of each score, n/a where none was made."""
    columns = [("motion fidelity (default)", "motion_fidelity")] + \
        [(name, f"motion_fidelity_{name}") for name in metrics.FORMULAS] + \
        [("CLIP text", "clip_text_alignment"), ("CLIP temporal", "clip_temporal_consistency"),
         ("pixel temporal", "temporal_consistency"), ("s / video", "seconds")]

    def cell(entry: dict[str, Any], key: str) -> str:
        value = entry.get(key)
        if value is None:
            return "n/a"
        if key == "seconds" or math.isnan(value["sem"]):
            return f"{value['mean']:.3f}"
        return f"{value['mean']:.3f} ± {value['sem']:.3f}"

    lines = ["| method | videos | " + " | ".join(title for title, _ in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for name, entry in summary.items():
        lines.append(f"| {name} | {entry['videos']} | " + " | ".join(cell(entry, key) for _, key in columns) + " |")
    if clip_skipped:
        lines.append(f"\nCLIP scores skipped: {clip_skipped}")
    return "\n".join(lines)


def difference_lines(differences: list[dict[str, Any]]) -> str:
    return "\n".join(f"{d['method']} − {d['baseline']}: {d['metric']} {d['mean']:+.3f} ± {d['sem']:.3f} "
                     f"(standard error, {d['n']} paired videos)" for d in differences)


def write_results(out_dir: Path, records: list[dict[str, Any]], methods: list[str], settings: dict[str, Any],
                  clip_skipped: str | None) -> str:
    """``results.json`` (settings, records, summary, paired differences) and ``results.md``; returns the markdown."""
    summary = summarize(records, methods)
    differences = paired_differences(records, methods)
    write_json(out_dir / "results.json", {"settings": settings, "summary": summary, "paired_differences": differences,
                                          "clip_scores_skipped": clip_skipped, "records": records})
    text = markdown_table(summary, clip_skipped)
    if differences:
        text += "\n\n" + difference_lines(differences)
    from sma_guidance.atomic import atomic_write

    with atomic_write(out_dir / "results.md") as tmp:
        tmp.write_text(f"# {settings['manifest']} on {settings['model']}\n\n{text}\n")
    return text


__all__ = [
    "DEFAULT_SET_METHODS", "SET_METHODS", "SetClip", "ProgressLog", "find_clip", "markdown_table", "paired_differences",
    "read_ditflow_prompts", "read_manifest_json", "read_mtbench", "read_set", "record_key", "run_set", "summarize",
    "write_results",
]
