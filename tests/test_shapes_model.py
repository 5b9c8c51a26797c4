"""Held-out check of the bundled shapes model: text-to-video prompts it was not trained on (seeded),
judged by the project's own metrics (object colour, shape and direction of motion)."""

import itertools
from pathlib import Path

import numpy as np
import pytest

from pipelines import SMAMotionTransferPipeline
from pipelines.components import BUNDLED_MODELS
from sma_guidance import metrics, shapes

pytestmark = pytest.mark.skipif(
    not (BUNDLED_MODELS["shapes"] / "model_index.json").is_file(), reason="the bundled shapes model is not built"
)

# 20 prompts: every linear direction with five appearance combinations.
APPEARANCES = [
    ("red", "circle", "black"),
    ("yellow", "square", "gray"),
    ("cyan", "triangle", "dark blue"),
    ("white", "circle", "gray"),
    ("magenta", "square", "black"),
]
PROMPTS = [
    (f"a {color} {shape} {shapes.MOTION_PHRASES[motion]} on a {background} background", color, shape, motion)
    for (color, shape, background), motion in itertools.product(APPEARANCES, ("left", "right", "up", "down"))
]


@pytest.fixture(scope="module")
def pipe():
    pipe = SMAMotionTransferPipeline.load("shapes", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def held_out(pipe):
    """(colour, shape, motion) matches of each held-out prompt's generated video."""
    results = []
    for seed, (prompt, color, shape, motion) in enumerate(PROMPTS, start=1000):
        frames = np.round(pipe.generate(prompt, seed=seed).frames[0] * 255).astype(np.uint8)
        found = metrics.detect_object(frames)
        results.append(
            (
                found is not None and found["color"] == color,
                found is not None and found["shape"] == shape,
                found is not None and metrics.motion_direction_match(found["centroids"], motion),
            )
        )
    return np.array(results)


def test_held_out_prompts_show_their_colour(held_out):
    assert len(held_out) >= 16
    assert held_out[:, 0].mean() >= 0.9


@pytest.mark.xfail(
    strict=True,
    reason="measured on the shipped weights: colour 100 %, shape 55 %, motion 20 %, all three 10 % of 20 prompts; "
    "80 more CPU-minutes of training did not change it: the model does not bind motion words (README; issue 4 open)",
)
def test_held_out_prompts_show_their_colour_shape_and_motion(held_out):
    rate = float(held_out.all(axis=1).mean())
    assert rate >= 0.8, f"only {rate:.0%} of held-out prompts match colour, shape and motion"


def test_loads_by_name_with_its_preset(pipe):
    config = pipe.default_config()
    assert pipe.model_name == "shapes"
    assert (config.num_frames, config.height, config.width) == (8, 64, 64)
    assert pipe.tokenizer("a red circle").input_ids[1:-1] == [
        pipe.tokenizer.convert_tokens_to_ids(word + "</w>") for word in ("a", "red", "circle")
    ]


def test_readme_demo_writes_output_side_by_side_and_record(tmp_path):
    """The README's first command, with fewer steps: a real motion transfer with the bundled model."""
    from click.testing import CliRunner

    from cli import main
    from sma_guidance.video_io import read_frames

    output = tmp_path / "red_circle_right.sma.mp4"
    sample = Path(__file__).resolve().parents[1] / "samples" / "red_circle_right.mp4"
    args = [str(sample), "--prompt", "a yellow square on a gray background", "--model", "shapes", "--side-by-side",
            "-o", str(output), "--steps", "5", "--inversion-steps", "5", "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    frames, _ = read_frames(output)
    comparison, _ = read_frames(tmp_path / "red_circle_right.sma.side_by_side.mp4")
    assert frames.shape == (8, 64, 64, 3) and comparison.shape == (8, 64, 128, 3)
    assert (tmp_path / "red_circle_right.sma.json").is_file()
