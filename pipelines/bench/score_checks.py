"""Does the score mean something on real video? Each shared clip scored against itself, a still of its first
frame, itself reversed, itself shifted 20 px right, and another clip, by every motion-fidelity formula
(:data:`sma_guidance.metrics.FORMULAS`), with the tracker ``auto`` picks. A score that cannot tell a frozen or
reversed clip from the clip itself cannot judge a transfer.

    python -m pipelines.bench.score_checks [FOLDER]     # FOLDER: ../shared/videos by default
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from sma_guidance import metrics
from sma_guidance.video_io import read_clip

CONDITIONS = ("itself", "still", "reversed", "shifted 20 px", "another clip")


def variants(frames: np.ndarray, other: np.ndarray) -> dict[str, np.ndarray]:
    """The clips each condition scores ``frames`` against."""
    return {"itself": frames, "still": np.repeat(frames[:1], len(frames), 0), "reversed": frames[::-1].copy(),
            "shifted 20 px": np.roll(frames, 20, axis=2), "another clip": other}


def table(folder: Path, num_frames: int = 24) -> str:
    clips = {path.stem: read_clip(path, num_frames)[0] for path in sorted(folder.glob("*.mp4"))}
    names = list(clips)
    lines = ["| clip | against | tracker (tracks) | " + " | ".join(metrics.FORMULAS) + " |",
             "|---|---|---|" + "---|" * len(metrics.FORMULAS)]
    for index, name in enumerate(names):
        other = clips[names[(index + 1) % len(names)]]
        for condition, output in variants(clips[name], other).items():
            result = metrics.evaluate(clips[name], output)
            scores = " | ".join(f"{result['motion_fidelity_' + f]:.3f}" for f in metrics.FORMULAS)
            lines.append(f"| {name} | {condition} | {result['tracker']} ({result['input_tracks']}) | {scores} |")
    return "\n".join(lines)


if __name__ == "__main__":
    start = time.perf_counter()
    print(table(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "shared" / "videos"))
    print(f"\n{time.perf_counter() - start:.0f} s")
