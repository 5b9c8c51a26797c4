"""How right is the background colour a new scene is repainted in? For every background of the shapes world
and four objects on it, the colour :meth:`~pipelines.SMAMotionTransferPipeline.repaint_scene` would take — the
border of one sample the model draws for the prompt — against the named background, for a few samplers.
The repaint draws with no restart rounds: this is the measurement behind that choice.

    python -m pipelines.bench.scene_colors [SEEDS]     # SEEDS: samples per prompt and sampler, default 1
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from sma_guidance import shapes
from sma_guidance.scene import clip_border_color

# (label, generate() settings): the repaint's, the preset's text-to-video sampler, and fewer steps.
SAMPLERS = (
    ("preset steps, no restarts (the repaint's)", {"restarts": 0}),
    ("preset steps, preset restarts (2)", {}),
    ("10 steps, no restarts", {"restarts": 0, "num_inference_steps": 10}),
)
OBJECTS = (("red", "circle"), ("white", "square"), ("blue", "triangle"), ("yellow", "square"))


def drawn_color(pipe, prompt: str, seed: int, **settings) -> np.ndarray:
    """The repaint's colour for ``prompt`` (RGB 0-255): the median over frames of each frame's border colour."""
    frames = pipe.generate(prompt, seed=seed, output_type="pt", **settings).frames[0].float().cpu()
    return ((clip_border_color(frames * 2 - 1) + 1) * 127.5).numpy()


def table(pipe, seeds: int = 1) -> str:
    lines = ["| sampler | prompts × seeds | RGB distance to the named background: mean | max | within 30 | s / draw |",
             "|---|---|---|---|---|---|"]
    prompts = [(f"a {color} {shape} on a {name} background", name) for name in shapes.BACKGROUNDS for color, shape in OBJECTS]
    for label, settings in SAMPLERS:
        start, errors = time.perf_counter(), []
        for index, (prompt, name) in enumerate(prompts):
            for seed in range(seeds):
                color = drawn_color(pipe, prompt, seed=1000 * seed + index, **settings)
                errors.append(float(np.linalg.norm(color - np.asarray(shapes.BACKGROUNDS[name], np.float64))))
        per_draw = (time.perf_counter() - start) / len(errors)
        lines.append(f"| {label} | {len(prompts)} × {seeds} | {np.mean(errors):.1f} | {max(errors):.1f} | "
                     f"{np.mean(np.asarray(errors) <= 30):.0%} | {per_draw:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    from pipelines import SMAMotionTransferPipeline

    torch.set_num_threads(1)
    pipe = SMAMotionTransferPipeline.load("shapes", device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    print(table(pipe, int(sys.argv[1]) if len(sys.argv) > 1 else 1))
