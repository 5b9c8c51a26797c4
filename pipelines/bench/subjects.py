"""Subject masks on the shapes world: whose motion a run transfers (``sma-guide bench masks``).

Two-object clips whose objects move differently, each transferred three times to a prompt for one
object: with the mask on the first object, on the second, and without a mask. Every output is scored
against both objects' exact tracks (:func:`sma_guidance.shapes.trajectory`): DMT's motion fidelity and
the path error (:mod:`sma_guidance.metrics`). A mask works when the output follows the masked object
(fidelity near 1 against it) and not the other one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from sma_guidance import metrics, shapes
from sma_guidance.shapes import ClipSpec, ObjectSpec

FRAME = 64
STILL = 0.25 / FRAME  # metrics' "not moving" threshold, in frame fractions


@dataclass(frozen=True)
class TwoObjectCase:
    """A clip of two objects moving differently, and the one-object prompt it is transferred to."""

    name: str
    spec: ClipSpec
    prompt: str

    @property
    def source_prompt(self) -> str:
        return shapes.caption(self.spec)


def cases(num_frames: int = 8) -> list[TwoObjectCase]:
    """Four clips, objects apart, moving in opposite or crossing directions (4 px per frame)."""
    def clip(first: ObjectSpec, second: ObjectSpec) -> ClipSpec:
        return ClipSpec((first, second), "black", num_frames=num_frames, size=FRAME)

    return [
        TwoObjectCase("right / left", clip(ObjectSpec("circle", "red", 14, "right", 12, 16, vx=4),
                                           ObjectSpec("square", "blue", 14, "left", 52, 48, vx=-4)),
                      "a yellow triangle on a black background"),
        TwoObjectCase("down / up", clip(ObjectSpec("triangle", "yellow", 16, "down", 16, 12, vy=4),
                                        ObjectSpec("circle", "green", 14, "up", 48, 52, vy=-4)),
                      "a red square on a black background"),
        TwoObjectCase("right / up", clip(ObjectSpec("square", "magenta", 14, "right", 12, 48, vx=4),
                                         ObjectSpec("circle", "cyan", 14, "up", 48, 36, vy=-4)),
                      "a white triangle on a black background"),
        TwoObjectCase("left / down", clip(ObjectSpec("triangle", "green", 16, "left", 52, 16, vx=-4),
                                          ObjectSpec("square", "red", 14, "down", 16, 28, vy=4)),
                      "a cyan circle on a black background"),
    ]


CONDITIONS = ("mask on the first", "mask on the second", "no mask")


def object_mask(case: TwoObjectCase, index: int) -> np.ndarray:
    """The exact mask ``(F, H, W)`` of object ``index``: where it covers more than half a pixel."""
    return shapes.coverage(case.spec.objects[index], case.spec.num_frames, case.spec.size) > 0.5


def track(case: TwoObjectCase, index: int) -> np.ndarray:
    """Object ``index``'s exact track ``(1, F, 2)`` in frame fractions."""
    path = shapes.trajectory(case.spec.objects[index], case.spec.num_frames)
    return metrics.normalise_tracks(path[None], case.spec.size, case.spec.size)


def score(case: TwoObjectCase, output: np.ndarray) -> dict[str, float]:
    """The output ``(F, H, W, 3)`` (floats in [0, 1]) against both objects: fidelity and path error per object,
    and how many objects the output shows."""
    frames = (np.clip(output, 0, 1) * 255).round().astype(np.uint8)
    found = metrics.normalise_tracks(metrics.shape_tracks(frames), case.spec.size, case.spec.size)
    record: dict[str, float] = {"objects": float(len(found))}
    for index, which in enumerate(("first", "second")):
        record[f"fidelity_{which}"] = metrics.motion_fidelity(track(case, index), found, STILL)
        record[f"path_error_{which}"] = metrics.path_error(track(case, index), found, STILL)
    return record


def run(pipe: Any, case_list: list[TwoObjectCase], report: Callable[[dict[str, Any]], None] | None = None,
        **settings: Any) -> list[dict[str, Any]]:
    """Every case under every condition; ``settings`` go to the pipeline call. One record per run, the
    output frames under ``"frames"``."""
    records = []
    for case in case_list:
        video = shapes.render(case.spec)
        for condition in CONDITIONS:
            mask = None if condition == "no mask" else object_mask(case, CONDITIONS.index(condition))
            clock = time.perf_counter()
            out = pipe(video, case.prompt, source_prompt=case.source_prompt, mask=mask, **settings)
            record = {"case": case.name, "condition": condition, "prompt": case.prompt,
                      "seconds": time.perf_counter() - clock, **score(case, out.frames[0]), "frames": out.frames[0]}
            records.append(record)
            if report is not None:
                report(record)
    return records


def by_subject(records: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Scores per subject (each object of each clip): with the mask on it, against it (``followed``) and against
    the other object; and from the run without a mask, against it and the other."""
    rows: dict[str, dict[str, list[float]]] = {"masked": {}, "unmasked": {}}
    runs = {(r["case"], r["condition"]): r for r in records}
    for case in dict.fromkeys(r["case"] for r in records):
        for index, (this, other) in enumerate((("first", "second"), ("second", "first"))):
            for kind, record in (("masked", runs.get((case, CONDITIONS[index]))), ("unmasked", runs.get((case, "no mask")))):
                if record is None:
                    continue
                for metric in ("fidelity", "path_error"):
                    rows[kind].setdefault(f"{metric}_subject", []).append(record[f"{metric}_{this}"])
                    rows[kind].setdefault(f"{metric}_other", []).append(record[f"{metric}_{other}"])
    return rows


def markdown(records: list[dict[str, Any]]) -> str:
    """The summary table (mean ± std over subjects) and one line per run."""
    def show(values: list[float]) -> str:
        array = np.asarray(values, np.float64)
        return f"{np.nanmean(array):.3f} ± {np.nanstd(array):.3f}"

    rows = by_subject(records)
    lines = [
        "| run | subjects | fidelity vs subject ↑ | fidelity vs other object | path error vs subject ↓ | path error vs other |",
        "|---|---|---|---|---|---|",
    ]
    for kind, label in (("masked", "mask on the subject"), ("unmasked", "no mask")):
        values = rows[kind]
        if not values:
            continue
        lines.append(f"| {label} | {len(values['fidelity_subject'])} | {show(values['fidelity_subject'])} | "
                     f"{show(values['fidelity_other'])} | {show(values['path_error_subject'])} | "
                     f"{show(values['path_error_other'])} |")
    lines += ["", "| clip (first / second object's motion) | run | objects | fidelity vs first | vs second | "
                  "path error vs first | vs second |", "|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['case']} | {r['condition']} | {int(r['objects'])} | {r['fidelity_first']:.3f} | "
                     f"{r['fidelity_second']:.3f} | {r['path_error_first']:.3f} | {r['path_error_second']:.3f} |")
    return "\n".join(lines)


__all__ = ["CONDITIONS", "TwoObjectCase", "by_subject", "cases", "markdown", "object_mask", "run", "score", "track"]
