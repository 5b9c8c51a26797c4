"""The quality benchmark's plumbing on tiny-random (its scores are meaningless there: output is noise)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pipelines import SMAMotionTransferPipeline
from pipelines.bench_quality import METHODS, held_out_pairs, markdown_table, run_benchmark, summarize, write_json
from sma_guidance import shapes

FAST = dict(num_frames=8, num_inference_steps=4, inversion_steps=4, optimization_steps=1, restart_sampling=False, train_steps=2)


@pytest.fixture(scope="module")
def pipe():
    pipe = SMAMotionTransferPipeline.load("tiny-random", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_held_out_pairs_cover_every_motion_and_change_appearance():
    pairs = held_out_pairs(per_motion=3)
    assert len(pairs) == 27 >= 24
    assert sorted({p.motion for p in pairs}) == sorted(shapes.MOTIONS)
    for pair in pairs:
        source, target = shapes.parse_prompt(pair.source_prompt), shapes.parse_prompt(pair.target_prompt)
        assert source["motion"] is None and target["motion"] is None  # appearance-only prompts
        assert source["color"] != target["color"] and source["shape"] != target["shape"]
        assert pair.frames.shape == (8, 64, 64, 3)
    again = held_out_pairs(per_motion=3)
    assert all(np.array_equal(a.frames, b.frames) and a.target_prompt == b.target_prompt for a, b in zip(pairs, again))


def test_held_out_clips_are_not_training_clips():
    """Training draws clips from seeds 0 and 7 (pipelines.shapes_training); none of the first thousand
    training clips equals a benchmark clip."""
    bench = {p.frames.tobytes() for p in held_out_pairs(per_motion=3)}
    for seed in (0, 7):
        rng = np.random.default_rng(seed)
        for _ in range(1000):
            clip, _, _ = shapes.sample_clip(rng)
            assert clip.tobytes() not in bench


def test_run_summarize_and_report(pipe, tmp_path, monkeypatch):
    trained = []
    original = pipe.train_motion
    monkeypatch.setattr(pipe, "train_motion", lambda *a, **k: trained.append(1) or original(*a, **k))
    methods = ["inversion only", "DMT + SMA", "fine-tune + SMA", "both"]
    pairs = held_out_pairs(per_motion=1)[:2]
    base = pipe.default_config().replace(**FAST)
    records = run_benchmark(pipe, methods, pairs, seeds=(0, 1), base=base)
    assert len(records) == len(methods) * len(pairs) * 2
    assert len(trained) == len(pairs)  # "both" reuses the fine-tune + SMA adapter of each clip
    for record in records:
        assert {"motion_fidelity", "motion_match", "color_match", "shape_match", "temporal_consistency", "seconds"} <= set(record)
        assert record["seconds"] > 0
    summary = summarize(records)
    assert list(summary) == methods
    table = markdown_table(summary, len(pairs) * 2)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == len(methods) + 1  # header + one row per method
    path = write_json(tmp_path / "bench.json", records, summary, {"model": "tiny-random"})
    assert json.loads(path.read_text())["settings"]["model"] == "tiny-random"


def test_cli_rejects_unknown_method(tmp_path):
    from cli import main

    result = CliRunner().invoke(main, ["bench", "quality", "--model", "tiny-random", "--methods", "magic", "--output", str(tmp_path / "b.json")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: unknown method 'magic'; choose from: {', '.join(METHODS)}"]
    assert not (tmp_path / "b.json").exists()
