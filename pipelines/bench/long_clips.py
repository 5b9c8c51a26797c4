"""Clips longer than the model's window on the shapes world (``sma-guide bench windows``).

The bundled shapes model was trained on 8-frame clips. A 24-frame clip of an object moving right and a
40-frame clip of an object going once round a circle cross several window borders; each is transferred
in overlapping windows (the family's default: windows of the native clip, a quarter of it shared) and,
for comparison, with the whole clip at once. Scored against the input's exact path: DMT's motion
fidelity, the path error, and the largest frame-to-frame jump of the output's object against its median
jump (a seam between windows shows as a jump).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from sma_guidance import metrics, shapes

FRAME = 64
STILL = 0.25 / FRAME


@dataclass(frozen=True)
class LongClip:
    name: str
    path: np.ndarray  # (F, 2) pixel centres
    shape: str
    color: str
    size: float
    motion_phrase: str
    prompt: str

    @property
    def frames(self) -> np.ndarray:
        return shapes.render_path(self.path, self.shape, self.color, self.size, "black", FRAME)

    @property
    def source_prompt(self) -> str:
        return f"a {self.color} {self.shape} {self.motion_phrase} on a black background"


def clips() -> list[LongClip]:
    """A 24-frame straight path (2 px per frame) and a 40-frame circle (radius 18 px, one turn clockwise)."""
    t24 = np.arange(24, dtype=np.float64)
    straight = np.stack([8 + 2 * t24, np.full_like(t24, 32.0)], 1)
    t40 = np.arange(40, dtype=np.float64)
    angle = -2 * math.pi * t40 / 40  # clockwise on screen (y down)
    circle = np.stack([32 + 18 * np.cos(angle), 32 - 18 * np.sin(angle)], 1)
    return [
        LongClip("24 frames, moving right", straight, "circle", "red", 14, "moving right",
                 "a yellow square on a black background"),
        LongClip("40 frames, a circle clockwise", circle, "square", "green", 12, "moving in a circle clockwise",
                 "a magenta circle on a black background"),
    ]


def jump_ratio(track: np.ndarray) -> float:
    """The largest frame-to-frame step of ``track`` ``(F, 2)`` over its median step (NaN steps skipped)."""
    steps = np.linalg.norm(np.diff(track, axis=0), axis=-1)
    steps = steps[np.isfinite(steps)]
    if len(steps) == 0 or np.median(steps) <= 0:
        return math.nan
    return float(steps.max() / np.median(steps))


def score(clip: LongClip, output: np.ndarray) -> dict[str, float]:
    """Fidelity and path error of the output ``(F, H, W, 3)`` in [0, 1] against the input's path, and the jump
    ratio of the output object that follows it best."""
    frames = (np.clip(output, 0, 1) * 255).round().astype(np.uint8)
    found = metrics.normalise_tracks(metrics.shape_tracks(frames), FRAME, FRAME)
    wanted = metrics.normalise_tracks(clip.path[None], FRAME, FRAME)
    record = {"objects": float(len(found)), "fidelity": metrics.motion_fidelity(wanted, found, STILL),
              "path_error": metrics.path_error(wanted, found, STILL), "jump_ratio": math.nan}
    if len(found):
        best = int(np.nanargmax(np.nan_to_num(metrics.track_correlation(wanted, found, STILL)[0], nan=-2)))
        record["jump_ratio"] = jump_ratio(found[best])
    return record


# The preset's windows (overlap: a quarter of the window), windows sharing half their frames, and the whole
# clip in one window (the model run past the length it was trained on).
RUNS = ("windows", "windows, half overlap", "whole clip at once")


def run(pipe: Any, clip_list: list[LongClip], report: Callable[[dict[str, Any]], None] | None = None,
        runs: tuple[str, ...] = RUNS, **settings: Any) -> list[dict[str, Any]]:
    """Each clip under each of ``runs`` (:data:`RUNS`); ``settings`` go to the pipeline call."""
    records = []
    window = pipe.default_config().window or 8
    for clip in clip_list:
        video = clip.frames
        for name in runs:
            overrides = dict(settings)
            if name == "windows, half overlap":
                overrides["overlap"] = window // 2
            elif name == "whole clip at once":
                overrides["window"] = len(video)
            clock = time.perf_counter()
            out = pipe(video, clip.prompt, source_prompt=clip.source_prompt, num_frames=len(video), **overrides)
            record = {"clip": clip.name, "run": name, "windows": out.windows, "seconds": time.perf_counter() - clock,
                      **score(clip, out.frames[0]), "frames": out.frames[0], "input": video}
            records.append(record)
            if report is not None:
                report(record)
    return records


def markdown(records: list[dict[str, Any]]) -> str:
    lines = ["| clip | run | windows (frames) | objects | fidelity ↑ | path error ↓ | largest / median jump ↓ | s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        windows = ", ".join(f"{a}–{b - 1}" for a, b in r["windows"])
        lines.append(f"| {r['clip']} | {r['run']} | {windows} | {int(r['objects'])} | {r['fidelity']:.3f} | "
                     f"{r['path_error']:.3f} | {r['jump_ratio']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


__all__ = ["LongClip", "clips", "jump_ratio", "markdown", "run", "score"]
