"""Failure behaviour: concurrent runs sharing one inversion cache, runs and batches killed with SIGKILL
in the middle of writing, and corrupted inputs. Each test is bounded in time."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from cli import main
from sma_guidance.video_io import export_to_video, read_frames

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
FAST = ["--model", "tiny-random", "--frames", "4", "--steps", "2", "--inversion-steps", "2", "--optimization-steps", "1"]
# the whole path of a run at its cheapest (no guided step): a damaged clip either fails to read or runs
SMALLEST = ["--model", "tiny-random", "--frames", "3", "--steps", "1", "--inversion-steps", "1"]

# Runs the CLI in a child process; with SMA_TEST_KILL_AT=NAME the process SIGKILLs itself at the moment a
# finished temporary file would be renamed to NAME: the worst moment of a write (all data written, not
# yet published). os.replace is the only step that publishes a file (sma_guidance/atomic.py).
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    target = os.environ.get("SMA_TEST_KILL_AT")
    if target:
        replace = os.replace
        def replace_or_die(src, dst, *args, **kwargs):
            if os.path.basename(str(dst)) == target:
                os.kill(os.getpid(), signal.SIGKILL)
            return replace(src, dst, *args, **kwargs)
        os.replace = replace_or_die
    from cli import main
    main(sys.argv[1:], prog_name="sma-guide")
    """
)


def _child(tmp_path: Path, args: list[str], kill_at: str | None = None, timeout: float = 120,
           hash_seed: str = "0") -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONHASHSEED": hash_seed}
    env.pop("SMA_TEST_KILL_AT", None)
    if kill_at:
        env["SMA_TEST_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, str(script), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path)


def _rerun(tmp_path: Path, args: list, monkeypatch):
    """The run after a killed one, in this process (as the child, from ``tmp_path``): only what the killed
    process left on disk matters to it."""
    monkeypatch.chdir(tmp_path)
    return CliRunner().invoke(main, [str(a) for a in args])


def test_two_processes_share_one_inversion_cache(tmp_path):
    """Two concurrent processes write one cache entry; a third reads it. Each process has its own hash
    seed (str hashes differ between them), so the cache key must not depend on Python's hash()."""
    cache = tmp_path / "cache"
    clip = SAMPLES / "red_circle_right.mp4"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    (tmp_path / "child.py").write_text(CHILD)
    runs = [
        subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(clip), "--prompt", "a dog", *FAST,
                          "--cache-dir", str(cache), "-o", str(tmp_path / f"out{i}.mp4"), "-q"],
                         env={**env, "PYTHONHASHSEED": str(i + 1)}, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    entries = list((cache / "inversions").glob("*.safetensors"))
    assert len(entries) == 1 and not list((cache / "inversions").glob(".*tmp*"))  # one entry, no leftovers
    assert load_file(str(entries[0]))  # a complete safetensors file
    np.testing.assert_array_equal(read_frames(tmp_path / "out0.mp4")[0], read_frames(tmp_path / "out1.mp4")[0])
    # a third run, with a third hash seed, reads the shared entry and makes the same video
    result = _child(tmp_path, [clip, "--prompt", "a dog", *FAST, "--cache-dir", cache, "-o", tmp_path / "out2.mp4", "-q"],
                    hash_seed="3")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out2.json").read_text())["timings"]["inversion_cached"] == 1.0
    np.testing.assert_array_equal(read_frames(tmp_path / "out2.mp4")[0], read_frames(tmp_path / "out0.mp4")[0])


def test_a_run_killed_while_writing_leaves_no_partial_output(tmp_path, monkeypatch):
    clip = SAMPLES / "red_circle_right.mp4"
    args = [clip, "--prompt", "a dog", *FAST, "--no-cache", "-o", tmp_path / "out.mp4", "-q"]
    killed = _child(tmp_path, args, kill_at="out.mp4")
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "out.json").exists()
    result = _rerun(tmp_path, args, monkeypatch)
    assert result.exit_code == 0, result.output
    assert read_frames(tmp_path / "out.mp4")[0].shape[0] == 4
    assert json.loads((tmp_path / "out.json").read_text())["config"]["num_frames"] == 4


def test_a_killed_batch_restarts_and_runs_every_job_once(tmp_path, monkeypatch):
    clip = SAMPLES / "red_circle_right.mp4"
    options = {"model": "tiny-random", "frames": 4, "steps": 2, "inversion-steps": 2, "optimization-steps": 1, "cache": False}
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"input": str(clip), "prompt": f"a {name}", "output": f"{name}.mp4", **options}) + "\n"
                            for name in ("dog", "cat", "fox")))
    # killed as the second job publishes its record: its video is written, its job not finished
    killed = _child(tmp_path, ["batch", jobs, "-q"], kill_at="cat.json")
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "dog.json").exists() and not (tmp_path / "cat.json").exists() and not (tmp_path / "fox.mp4").exists()
    first = (tmp_path / "dog.mp4").stat().st_mtime_ns
    result = _rerun(tmp_path, ["batch", jobs], monkeypatch)
    assert result.exit_code == 0, result.output
    assert "2 done, 1 already finished, 0 failed of 3 job(s)" in result.output
    assert (tmp_path / "dog.mp4").stat().st_mtime_ns == first  # not run again
    for name in ("dog", "cat", "fox"):
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["prompt"] == f"a {name}" and read_frames(tmp_path / f"{name}.mp4")[0].shape[0] == 4


def _corrupted_copies(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` copies of the sample clips (mp4, and a GIF made of one), each truncated at a random
    length or with 1–16 random bytes flipped."""
    rng = np.random.default_rng(seed)
    gif = folder / "sample.gif"
    export_to_video(read_frames(SAMPLES / "yellow_square_circling.mp4")[0], gif, fps=8)
    sources = [*sorted(SAMPLES.glob("*.mp4")), gif]
    copies = []
    for i in range(count):
        source = sources[i % len(sources)]
        data = bytearray(source.read_bytes())
        if (i // len(sources)) % 2:  # each source in turn truncated and bit-flipped (i % 2 gave each only one)
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for position in rng.integers(0, len(data), size=int(rng.integers(1, 17))):
                data[position] ^= int(rng.integers(1, 256))
        copy = folder / f"broken{i:03d}{source.suffix}"
        copy.write_bytes(bytes(data))
        copies.append(copy)
    return copies


# Each copy that still decodes runs a whole (tiny) transfer, about a second: 40 copies (every source
# truncated and bit-flipped several times) keep the suite's time in bounds.
COPIES = 40


class _Hang(Exception):
    pass


def test_corrupted_inputs_give_one_error_line_or_a_valid_run(tmp_path):
    """COPIES damaged copies of the sample clips and a GIF: each ends in one `error:` line (exit 1) or a
    valid video (exit 0), within 10 s, never a traceback."""

    def alarm(*_):
        raise _Hang

    previous = signal.signal(signal.SIGALRM, alarm)
    runner = CliRunner()
    outcomes = {"error": 0, "video": 0}
    try:
        for copy in _corrupted_copies(tmp_path, COPIES):
            out = tmp_path / f"{copy.stem}.out.mp4"
            signal.alarm(10)
            try:
                result = runner.invoke(main, [str(copy), "--prompt", "a dog", *SMALLEST, "--no-cache", "-o", str(out), "-q"])
            except _Hang:
                pytest.fail(f"{copy.name} took more than 10 s")
            finally:
                signal.alarm(0)
            lines = [line for line in result.output.splitlines() if line.strip()]
            if result.exit_code == 0:
                assert read_frames(out)[0].shape == (3, 64, 64, 3), copy.name
                outcomes["video"] += 1
            else:
                assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (copy.name, result.output)
                assert "Traceback" not in result.output and not out.exists(), copy.name
                outcomes["error"] += 1
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert outcomes["error"] > 0 and outcomes["video"] > 0 and sum(outcomes.values()) == COPIES, outcomes
