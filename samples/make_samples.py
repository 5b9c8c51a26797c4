"""Render the bundled sample clips with the shapes-world renderer: ``python samples/make_samples.py``.

Each clip is seeded, so the files are reproducible; their captions are the source prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sma_guidance import shapes
from sma_guidance.video_io import export_to_video

HERE = Path(__file__).resolve().parent

# name -> (seed, forced choices)
SAMPLES = {
    "red_circle_right": (1, {"motion": "right", "shape": "circle", "color": "red", "background": "black"}),
    "yellow_square_circling": (2, {"motion": "circle_cw", "shape": "square", "color": "yellow", "background": "gray"}),
    "cyan_triangle_bouncing": (3, {"motion": "bouncing", "shape": "triangle", "color": "cyan", "background": "dark blue"}),
}


def main() -> None:
    for name, (seed, choices) in SAMPLES.items():
        spec = shapes.sample_clip_spec(np.random.default_rng(seed), p_two=0, **choices)
        path = export_to_video(shapes.render(spec), HERE / f"{name}.mp4", fps=8)
        print(f"wrote {path}: {shapes.caption(spec)}")


if __name__ == "__main__":
    main()
