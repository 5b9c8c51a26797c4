"""The quality benchmark's plumbing on tiny-random (its scores are meaningless there: output is noise)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pipelines.bench.quality import (
    METHODS, held_out_pairs, markdown_table, run_benchmark, run_parallel, summarize, write_json,
)
from sma_guidance import shapes
from conftest import quiet_pipeline

FAST = dict(num_frames=8, num_inference_steps=4, inversion_steps=4, optimization_steps=1, restart_sampling=False, train_steps=2)


@pytest.fixture(scope="module")
def pipe():
    return quiet_pipeline("tiny-random")


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
    """Training draws clips from seeds 0 and 7 (pipelines.training.shapes_training); none of the first thousand
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
    assert [(r["method"], r["pair"], r["seed"]) for r in records] == [
        (m, p.index, s) for m in methods for p in pairs for s in (0, 1)
    ]
    for record in records:
        assert {"motion_fidelity", "motion_match", "path_error", "color_match", "shape_match", "background_match",
                "temporal_consistency", "seconds"} <= set(record)
        assert record["seconds"] > 0 and record["inversion_seconds"] > 0
    summary = summarize(records)
    assert list(summary) == methods
    table = markdown_table(summary, len(pairs) * 2)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == len(methods) + 1  # header + one row per method
    assert all(row.count("|") == 10 for row in rows)  # method, 7 scored metrics, seconds
    assert "background match" in rows[0]
    path = write_json(tmp_path / "bench.json", records, summary, {"model": "tiny-random"})
    assert json.loads(path.read_text())["settings"]["model"] == "tiny-random"


def test_cli_rejects_unknown_method(tmp_path):
    from cli import main

    result = CliRunner().invoke(main, ["bench", "quality", "--model", "tiny-random", "--methods", "magic", "--output", str(tmp_path / "b.json")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: unknown method 'magic'; choose from: {', '.join(METHODS)}"]
    assert not (tmp_path / "b.json").exists()


def test_each_clip_is_inverted_once_for_all_zero_shot_methods_and_seeds(pipe, monkeypatch):
    inversions = []
    original = pipe.encode_video  # called only when an inversion is computed, not read from the cache
    monkeypatch.setattr(pipe, "encode_video", lambda *a, **k: inversions.append(1) or original(*a, **k))
    pairs = held_out_pairs(per_motion=1)[:2]
    records = run_benchmark(pipe, ["inversion only", "DMT", "DMT + SMA"], pairs, seeds=(0, 1),
                            base=pipe.default_config().replace(**FAST))
    assert len(records) == 12 and len(inversions) == len(pairs)
    for pair in pairs:
        assert len({r["inversion_seconds"] for r in records if r["pair"] == pair.index}) == 1


def test_parallel_workers_give_the_same_records(pipe, monkeypatch):
    """Two worker processes split the pairs; records come back complete, in order, with the scores
    of an in-process run (up to float noise from the thread count). Workers that finished are left
    to exit on their own, never killed (a kill leaks their semaphores)."""
    import multiprocessing.context

    killed = []
    real_terminate = multiprocessing.context.SpawnProcess.terminate
    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "terminate",
                        lambda self: killed.append(self.pid) or real_terminate(self))
    methods, seeds = ["DMT + SMA"], (0,)
    pairs = held_out_pairs(per_motion=1)[:3]
    job = dict(model="tiny-random", device="cpu", methods=methods, per_motion=1, num_frames=8, seeds=list(seeds),
               overrides=FAST, pairs=[p.index for p in pairs])
    parallel = run_parallel(job, workers=2)
    assert killed == []
    local = run_benchmark(pipe, methods, pairs, seeds=seeds, base=pipe.default_config().replace(**FAST))
    assert [(r["method"], r["pair"], r["seed"]) for r in parallel] == [(r["method"], r["pair"], r["seed"]) for r in local]
    for a, b in zip(parallel, local):
        assert a["temporal_consistency"] == pytest.approx(b["temporal_consistency"], abs=1e-3)


def test_parallel_worker_failure_is_reported():
    job = dict(model="tiny-random", device="cpu", methods=["DMT"], per_motion=1, num_frames=8, seeds=[0],
               overrides={"optimization_steps": -1})
    with pytest.raises(RuntimeError, match="optimization_steps"):
        run_parallel(job, workers=1)  # one worker process: each one costs seconds of imports


def test_cli_runs_with_a_config_file_over_the_preset(tmp_path):
    from cli import main

    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST))
    output = tmp_path / "b.json"
    args = ["bench", "quality", "--model", "tiny-random", "--per-motion", "1", "--seeds", "1", "--methods", "inversion only",
            "--config", str(config), "--workers", "1", "--output", str(output), "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    saved = json.loads(output.read_text())
    assert saved["settings"]["workers"] == 1 and len(saved["records"]) == 9
    assert {k: saved["settings"]["config"][k] for k in FAST} == FAST
    assert "| inversion only |" in result.output

    config.write_text(json.dumps({"optimisation_steps": 3}))
    result = CliRunner().invoke(main, [*args[:-3], "--output", str(tmp_path / "c.json")])
    assert result.exit_code == 1 and "unknown configuration key(s) optimisation_steps" in result.output
    assert not (tmp_path / "c.json").exists()


def test_reconstruction_samples_the_exact_inversion_with_the_source_prompt(pipe, monkeypatch):
    seen = []
    original = type(pipe).__call__
    monkeypatch.setattr(type(pipe), "__call__", lambda self, video, prompt, **k: seen.append((prompt, k["config"])) or original(self, video, prompt, **k))
    pair = held_out_pairs(per_motion=1)[0]
    base = pipe.default_config().replace(**FAST, low_pass_grid=4)
    records = run_benchmark(pipe, ["reconstruction", "inversion only"], [pair], seeds=(0,), base=base)
    (prompt, config), (other_prompt, other) = seen
    assert prompt == pair.source_prompt and records[0]["target_prompt"] == pair.source_prompt
    assert config.optimization_steps == 0 and config.downsample_factor == 1 and config.low_pass_grid is None
    assert other_prompt == pair.target_prompt and other.low_pass_grid == 4  # the preset's value stays for the others


def test_paired_difference_matches_a_direct_computation():
    from pipelines.bench.quality import comparisons, paired_difference

    rng = np.random.default_rng(0)
    records = []
    for pair in range(5):
        for seed in range(2):
            for method in ("DMT", "DMT + SMA"):
                records.append({"method": method, "pair": pair, "seed": seed, "motion_fidelity": float(rng.normal()),
                                "motion_match": float(rng.integers(0, 2))})
    records.append({"method": "DMT + SMA", "pair": 9, "seed": 0, "motion_fidelity": 5.0, "motion_match": 1.0})  # unpaired
    diffs = [a["motion_fidelity"] - b["motion_fidelity"] for a, b in zip(records[1:-1:2], records[0:-1:2])]
    per_pair = np.reshape(diffs, (5, 2)).mean(axis=1)  # records run pair by pair, seed by seed
    mean, error, n = paired_difference(records, "DMT + SMA", "DMT", "motion_fidelity")
    assert n == 5 and mean == pytest.approx(np.mean(diffs))
    assert error == pytest.approx(np.std(per_pair, ddof=1) / np.sqrt(5))
    assert list(comparisons(records)) == ["DMT + SMA − DMT"]


def test_cli_quick_run_stopped_midway_continues_where_it_was(tmp_path, monkeypatch):
    """A run interrupted after 4 videos makes only the 5 missing ones when started again; the result
    equals an uninterrupted run's, and the progress file is gone at the end."""
    from cli import main
    from pipelines.bench import quality as bench_quality

    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST))
    output = tmp_path / "q.json"
    args = ["bench", "quality", "--quick", "--model", "tiny-random", "--methods", "inversion only", "--config", str(config),
            "--workers", "1", "--output", str(output), "-q"]
    calls = []
    real_score = bench_quality.score

    def interrupted_score(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_score(*a, **k)

    monkeypatch.setattr(bench_quality, "score", interrupted_score)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130 and not output.exists()
    progress = tmp_path / "q.json.progress.jsonl"
    assert len(progress.read_text().splitlines()) == 1 + 4

    calls.clear()
    monkeypatch.setattr(bench_quality, "score", lambda *a, **k: calls.append(1) or real_score(*a, **k))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(calls) == 5 and "4 of 9 videos already made" in result.output
    assert not progress.exists()
    resumed = json.loads(output.read_text())["records"]
    assert [r["pair"] for r in resumed] == list(range(9))

    fresh = tmp_path / "fresh.json"
    result = CliRunner().invoke(main, [*args[:-3], "--output", str(fresh), "-q"])
    assert result.exit_code == 0, result.output
    for a, b in zip(resumed, json.loads(fresh.read_text())["records"]):
        assert a["motion_fidelity"] == pytest.approx(b["motion_fidelity"], nan_ok=True)
        assert a["temporal_consistency"] == pytest.approx(b["temporal_consistency"])


def test_progress_log_of_other_settings_is_not_resumed(tmp_path):
    from pipelines.bench.quality import ProgressLog

    path = tmp_path / "p.jsonl"
    log = ProgressLog(path, {"config": {"optimization_steps": 3}})
    log.start([])
    log.append({"method": "DMT", "pair": 0, "seed": 0})
    assert ProgressLog(path, {"config": {"optimization_steps": 3}}).load() == [{"method": "DMT", "pair": 0, "seed": 0}]
    assert ProgressLog(path, {"config": {"optimization_steps": 10}}).load() == []
    with path.open("a") as handle:
        handle.write('{"method": "DMT", "pa')  # killed mid-line
    assert len(ProgressLog(path, {"config": {"optimization_steps": 3}}).load()) == 1


def test_unseen_path_pairs_follow_their_paths_and_leave_motion_match_out():
    from pipelines.bench.quality import benchmark_pairs, score, unseen_paths
    from sma_guidance import metrics

    pairs = benchmark_pairs("unseen-paths")
    paths = unseen_paths()
    assert [p.motion for p in pairs] == list(paths) and len(pairs) == 5
    for pair in pairs:
        assert pair.motion not in shapes.MOTIONS and pair.spec is None
        found = metrics.detect_object(pair.frames)
        assert np.abs(found["centroids"] - paths[pair.motion]).max() < 1.0  # triangles: centroid = path point
        result = score(pair, pair.frames, pair.source_prompt)
        assert np.isnan(result["motion_match"]) and result["motion_fidelity"] > 0.95
        assert result["color_match"] == result["shape_match"] == result["background_match"] == 1.0
        background = shapes.parse_prompt(pair.source_prompt)["background"]
        other = next(name for name in shapes.BACKGROUNDS if name != background)
        assert score(pair, pair.frames, pair.source_prompt.replace(background, other))["background_match"] == 0.0
        assert np.isnan(score(pair, pair.frames, pair.source_prompt.split(" on ")[0])["background_match"])
