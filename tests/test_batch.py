"""`sma-guide batch JOBS.jsonl` on tiny-random: parsing, running, skipping finished jobs, sharing."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import write_moving_square

import cli
from pipelines.motion_transfer import run
from cli import main
from pipelines.frontends.batch import Job, assigned, read_jobs

FAST = {"model": "tiny-random", "frames": 4, "steps": 4, "inversion-steps": 4, "optimization-steps": 1,
        "restart": False}


def write_jobs(path, *jobs):
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    return path


def test_options_take_the_run_commands_long_names_and_types(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl",
                      {"input": "clips/a.mp4", "prompt": "a cat", "optimization-steps": 5, "no-restart": True,
                       "lambda-global": 0, "output": "out/a.mp4", "mode": "fine-tune", "side-by-side": True},
                      {"input": "b.mp4", "prompt": "a dog", "restart": True, "cache": False, "start": 30, "duration": 2.5})
    (tmp_path / "jobs.jsonl").write_text("# a comment\n\n" + jobs.read_text())
    first, second = read_jobs(jobs, cli.run_command)
    assert (first.line, second.line) == (3, 4)
    assert first.input == tmp_path / "clips" / "a.mp4" and first.prompt == "a cat"
    assert first.options == {"optimization_steps": 5, "restart_sampling": False, "lambda_global": 0.0,
                             "output": tmp_path / "out" / "a.mp4", "mode": "fine-tune", "side_by_side": True}
    assert second.options == {"restart_sampling": True, "inversion_cache": False, "start": 30.0, "duration": 2.5}


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "x"}', "'input' is missing"),
    ('{"input": "a.mp4", "prompt": "x", "optimisation-steps": 5}', "unknown option 'optimisation-steps'"),
    ('{"input": "a.mp4", "prompt": "x", "steps": "many"}', "'steps'"),
    ('{"input": "a.mp4", "prompt": "x", "mode": "sideways"}', "'mode'"),
    ('{"input": "a.mp4", "prompt": "x", "restart": "yes"}', "true or false"),
    ('{"input": "a.mp4", "prompt": "x", "device": "cuda:1"}', "launcher"),
    ('{"input": "a.mp4", "prompt": "x", "restart": true, "no-restart": true}', "repeats"),
    ('["a.mp4", "x"]', "JSON object"),
    ('{"input": "a.mp4", "prompt": "x"', "not JSON"),
])
def test_a_bad_line_is_one_error_naming_it_and_nothing_runs(tmp_path, line, message, monkeypatch):
    monkeypatch.setattr(run, "transfer", lambda *a, **k: pytest.fail("no job may run"))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"input": "a.mp4", "prompt": "fine"}\n' + line + "\n")
    result = CliRunner().invoke(main, ["batch", str(jobs), "-q"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: ") and "line 2" in result.output and message in result.output


def test_two_jobs_writing_one_file_are_refused(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"input": "a.mp4", "prompt": "x"}, {"input": "a.mp4", "prompt": "y"})
    result = CliRunner().invoke(main, ["batch", str(jobs)])
    assert result.exit_code == 1 and "lines 1 and 2 both write" in result.output


def test_jobs_are_dealt_round_robin():
    jobs = [Job(line=i, input=None, prompt="") for i in range(7)]
    shares = [[j.line for j in assigned(jobs, k, 3)] for k in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]


def test_batch_runs_jobs_skips_finished_ones_and_reruns_changed_ones(tmp_path, monkeypatch):
    write_moving_square(tmp_path / "clip.mp4", num_frames=6)
    jobs = write_jobs(tmp_path / "jobs.jsonl",
                      {"input": "clip.mp4", "prompt": "a red car", **FAST},
                      {"input": "clip.mp4", "prompt": "a blue car", "output": "blue.mp4", "side-by-side": True, **FAST})
    ran = []
    real = run.transfer
    monkeypatch.setattr(run, "transfer", lambda *a, **k: ran.append(a[1]) or real(*a, **k))
    result = CliRunner().invoke(main, ["batch", str(jobs), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    assert ran == ["a red car", "a blue car"] and "2 done, 0 already finished" in result.output
    for name in ("clip.sma.mp4", "clip.sma.json", "blue.mp4", "blue.json", "blue.side_by_side.mp4"):
        assert (tmp_path / name).is_file(), name
    record = json.loads((tmp_path / "blue.json").read_text())
    assert record["prompt"] == "a blue car" and record["config"]["optimization_steps"] == 1

    # A restart after a crash: the finished job is skipped, the one without its record runs again.
    (tmp_path / "blue.json").unlink()
    result = CliRunner().invoke(main, ["batch", str(jobs), "--device", "cpu", "-q"])
    assert ran[2:] == ["a blue car"] and "1 done, 1 already finished" in result.output
    # A changed setting is a different job: it runs again.
    write_jobs(jobs, {"input": "clip.mp4", "prompt": "a red car", **FAST, "optimization-steps": 2})
    result = CliRunner().invoke(main, ["batch", str(jobs), "--device", "cpu", "-q"])
    assert ran[3:] == ["a red car"] and result.exit_code == 0
    assert json.loads((tmp_path / "clip.sma.json").read_text())["config"]["optimization_steps"] == 2


def test_a_failing_job_does_not_stop_the_others_and_sets_the_exit_code(tmp_path):
    write_moving_square(tmp_path / "clip.mp4", num_frames=6)
    jobs = write_jobs(tmp_path / "jobs.jsonl",
                      {"input": "missing.mp4", "prompt": "a red car", **FAST},
                      {"input": "clip.mp4", "prompt": "a blue car", **FAST})
    result = CliRunner().invoke(main, ["batch", str(jobs), "--device", "cpu", "-q"])
    assert result.exit_code == 1
    assert "line 1: error: input not found" in result.output and "1 done, 0 already finished, 1 failed" in result.output
    assert (tmp_path / "clip.sma.mp4").is_file()


def test_a_job_writes_into_missing_folders(tmp_path):
    write_moving_square(tmp_path / "clip.mp4", num_frames=6)
    jobs = write_jobs(tmp_path / "jobs.jsonl",
                      {"input": "clip.mp4", "prompt": "a red car", "output": "new/deeper/red.mp4", "strip": True, **FAST})
    result = CliRunner().invoke(main, ["batch", str(jobs), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "new" / "deeper").iterdir()) == ["red.json", "red.mp4", "red.strip.png"]


ACCELERATE = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")


@pytest.mark.skipif(ACCELERATE is None, reason="accelerate's launcher is not installed")
def test_accelerate_launch_splits_jobs_over_processes(tmp_path):
    """Two CPU processes under `accelerate launch` (as one per GPU): each runs its own share."""
    write_moving_square(tmp_path / "clip.mp4", num_frames=6)
    jobs = write_jobs(tmp_path / "jobs.jsonl",
                      *({"input": "clip.mp4", "prompt": f"a car {i}", "output": f"out{i}.mp4", **FAST} for i in range(3)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "cli", "batch",
         str(jobs), "-q"],
        capture_output=True, text=True, check=False, env=env, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "process 1/2: 2 done" in done.stdout and "process 2/2: 1 done" in done.stdout
    assert all((tmp_path / f"out{i}.json").is_file() for i in range(3))
