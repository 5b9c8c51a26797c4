"""``sma-guide eval INPUT OUTPUT``: metrics of a motion transfer, in-process through CliRunner."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from sma_guidance.shapes import render, sample_clip_spec
from sma_guidance.video_io import export_to_video


def _write_clip(path, seed, **kwargs):
    spec = sample_clip_spec(np.random.default_rng(seed), p_two=0, **kwargs)
    return export_to_video(render(spec), path, fps=8)


@pytest.fixture
def videos(tmp_path):
    source = _write_clip(tmp_path / "in.mp4", 0, motion="left", shape="square", color="red", background="black")
    output = _write_clip(tmp_path / "out.mp4", 1, motion="left", shape="circle", color="cyan", background="gray")
    return source, output


def _invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_error_line(result, expected):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert expected in lines[0]


def test_eval_prints_table_and_writes_json(videos, tmp_path):
    source, output = videos
    record = tmp_path / "metrics.json"
    result = _invoke(["eval", source, output, "--prompt", "a cyan circle moving left", "--json", record])
    assert result.exit_code == 0, result.output
    assert "tracker" in result.output and "shapes" in result.output
    assert "motion fidelity" in result.output and "motion match (left)" in result.output
    data = json.loads(record.read_text())
    metrics = data["metrics"]
    assert data["prompt"] == "a cyan circle moving left"
    assert metrics["tracker"] == "shapes" and metrics["motion_fidelity"] > 0.8
    assert metrics["color_match"] is True and metrics["shape_match"] is True and metrics["motion_match"] is True
    # The path error the CLI reports is the library's on the same decoded clips, printed in its row.
    from sma_guidance.metrics import evaluate
    from sma_guidance.video_io import read_frames

    direct = evaluate(read_frames(source)[0], read_frames(output)[0], method="shapes")
    assert metrics["path_error"] == pytest.approx(direct["path_error"], abs=1e-9) and direct["path_error"] > 0
    assert f"path error            {direct['path_error']:.3f}" in result.output


def test_eval_reports_the_prompted_background(videos):
    # The output clip is rendered on gray: asked for gray it matches, asked for black (the input's) it does not.
    gray = _invoke(["eval", *videos, "--prompt", "a cyan circle on a gray background"])
    black = _invoke(["eval", *videos, "--prompt", "a cyan circle on a black background"])
    assert gray.exit_code == black.exit_code == 0, gray.output + black.output
    assert "background match      yes  (gray asked)" in gray.output
    assert "background match      no  (black asked)" in black.output
    assert "background match" not in _invoke(["eval", *videos, "--prompt", "a cyan circle"]).output


def test_eval_points_tracker_and_free_prompt(videos):
    result = _invoke(["eval", *videos, "--tracker", "points", "--prompt", "a car driving in a forest"])
    assert result.exit_code == 0, result.output
    assert "points" in result.output and "color match" not in result.output


def test_eval_missing_input_is_one_error_line(videos, tmp_path):
    result = _invoke(["eval", tmp_path / "nope.mp4", videos[1]])
    _one_error_line(result, "not found")


def test_eval_json_in_missing_folder_creates_it(videos, tmp_path):
    path = tmp_path / "new" / "deeper" / "m.json"
    result = _invoke(["eval", *videos, "--json", path])
    assert result.exit_code == 0, result.output
    assert "motion_fidelity" in json.loads(path.read_text())["metrics"]


def test_eval_json_under_a_file_is_one_error_line(videos, tmp_path):
    (tmp_path / "notes").write_text("a file\n")
    result = _invoke(["eval", *videos, "--json", tmp_path / "notes" / "m.json"])
    _one_error_line(result, "is a file")
