"""Held-out appearance of a shapes-world model's plain text-to-video samples (``sma-guide bench
appearance``; the check in ``tests/test_shapes_model.py``): does "a {colour} {shape} on a {background}
background" come out in that colour, shape and background, as one clean object in every frame?"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from sma_guidance import metrics, shapes

# 27 prompts: every colour with every shape (7 and 3 are coprime), every shape on every background three times.
COLORS, SHAPES, BACKGROUNDS = list(shapes.COLORS), list(shapes.SHAPES), list(shapes.BACKGROUNDS)
APPEARANCE_PROMPTS: list[tuple[str, str, str]] = [
    (COLORS[i % 7], SHAPES[i % 3], BACKGROUNDS[(i // 3) % 3]) for i in range(27)
]
# The test's seeds (prompt i samples with seed TEST_SEED + i); other seeds check that a sampler chosen
# on these generalises.
TEST_SEED = 1000
CRITERIA = ("color", "shape", "background", "clean")
TARGETS = {"color": 0.95, "shape": 0.85, "background": 0.85, "clean": 0.95}
SAMPLER_SETTINGS = ("num_inference_steps", "guidance_scale", "eta", "guidance_rescale", "generate_restarts")


def appearance_scores(
    pipe: Any, seed_start: int = TEST_SEED, count: int | None = None, log: Callable[[str], None] | None = None,
    **sampling: Any,
) -> dict[str, Any]:
    """Sample the first ``count`` (all) prompts as one batch, prompt i as ``pipe.generate(prompt,
    seed=seed_start + i, **sampling)`` samples it alone, and judge each with the project's metrics.

    Returns ``{"rows": [{"prompt", "seed", "detected_color", "detected_shape", "color", "shape",
    "background", "clean"}, ...], "rates": {criterion: share of prompts}, "num_inference_steps",
    "guidance_scale", "eta", "guidance_rescale", "generate_restarts"}``: the sampler settings as
    ``generate`` resolved them.
    """
    chosen = APPEARANCE_PROMPTS[:count]
    prompts = [f"a {color} {shape} on a {background} background" for color, shape, background in chosen]
    seeds = [seed_start + i for i in range(len(prompts))]
    out = pipe.generate(prompts, seed=seeds, **sampling)
    used = {key: out.config[key] for key in SAMPLER_SETTINGS}
    rows = []
    for (color, shape, background), prompt, seed, video in zip(chosen, prompts, seeds, out.frames):
        frames = np.round(video * 255).astype(np.uint8)
        found = metrics.detect_object(frames)
        row = {
            "prompt": prompt,
            "seed": seed,
            "detected_color": found["color"] if found else None,
            "detected_shape": found["shape"] if found else None,
            "color": bool(found is not None and found["color"] == color),
            "shape": bool(found is not None and found["shape"] == shape),
            "background": bool(metrics.background_match(frames, background)),
            "clean": bool(metrics.single_clean_object(frames)),
        }
        rows.append(row)
        if log:
            log(f"{prompt} (seed {row['seed']}): " + ", ".join(f"{c} {'yes' if row[c] else 'no'}" for c in CRITERIA))
    rates = {c: float(np.mean([row[c] for row in rows])) for c in CRITERIA}
    return {"rows": rows, "rates": rates, **used}


def appearance_table(rates: dict[str, float]) -> str:
    """A markdown table of the rates against :data:`TARGETS`."""
    lines = ["| criterion | share | target |", "|---|---:|---:|"]
    lines += [f"| {c} | {rates[c]:.0%} | ≥ {TARGETS[c]:.0%} |" for c in CRITERIA]
    return "\n".join(lines)
