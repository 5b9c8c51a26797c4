"""A run that meets an out-of-memory error or a full disk: one line saying what to do, nothing partial left,
the inversion cache intact; in a batch, that job fails and the others go on. The errors are injected (a fake
CUDA out-of-memory error in the guided loop, ENOSPC from a writer): this machine has neither a GPU nor a
small disk to fill."""

from __future__ import annotations

import errno
import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import main
from conftest import FAST_ARGS, write_moving_square
from pipelines.motion_transfer.pipeline_sma import SMAMotionTransferPipeline
from sma_guidance.errors import UserAdvice


def _one_error_line(result, *expected: str) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _left_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and p.name != "clip.mp4")


@pytest.fixture
def clip(tmp_path, offline_env):
    folder = tmp_path / "work"
    folder.mkdir()
    return write_moving_square(folder / "clip.mp4")


def _raise_out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def test_out_of_memory_in_the_guided_loop_is_one_line_with_the_estimate_and_the_flags(clip, offline_env, monkeypatch):
    out = clip.parent / "out.mp4"
    args = ["run", str(clip), "--prompt", "a cat", "-o", str(out), "--side-by-side", *FAST_ARGS]
    with monkeypatch.context() as patch:
        patch.setattr(SMAMotionTransferPipeline, "optimize_latent", _raise_out_of_memory)  # the estimator uses the rest
        result = CliRunner().invoke(main, args)
    line = _one_error_line(result, "out of GPU memory", "tiny-random at 4 frames of 64x64", "(estimate)",
                           "--activation-checkpointing layers", "--frames", "--vae-tiling", "--vae-batch-size 1")
    assert "needs about 7 MiB (estimate)" in line  # tiny-random's estimate at this size: 7.5 MB
    assert _left_files(clip.parent) == []  # no partial output
    cached = list(offline_env.rglob("*.safetensors"))
    assert len(cached) == 1  # the inversion, made before the loop, is cached whole
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert json.loads(out.with_suffix(".json").read_text())["timings"]["inversion_cached"] == 1.0


def test_in_a_batch_the_job_that_runs_out_of_memory_fails_and_the_rest_go_on(clip, monkeypatch):
    jobs = clip.parent / "jobs.jsonl"
    fast = {"model": "tiny-random", "frames": 4, "steps": 4, "inversion-steps": 4, "optimization-steps": 1}
    jobs.write_text("\n".join(json.dumps({"input": "clip.mp4", "prompt": p, "output": f"{n}.mp4", **fast})
                              for n, p in (("first", "a cat"), ("second", "a dog"))) + "\n")
    calls = {"n": 0}
    original = SMAMotionTransferPipeline.optimize_latent

    def once(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            _raise_out_of_memory()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SMAMotionTransferPipeline, "optimize_latent", once)
    result = CliRunner().invoke(main, ["batch", str(jobs), "--device", "cpu"])
    assert result.exit_code == 1  # a failed job
    assert "line 1: error: out of GPU memory" in result.output and "1 done, 0 already finished, 1 failed" in result.output
    assert not (clip.parent / "first.mp4").exists() and (clip.parent / "second.mp4").is_file()


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_writing_the_video_leaves_nothing(clip, monkeypatch):
    out = clip.parent / "results" / "out.mp4"
    monkeypatch.setattr("sma_guidance.video_io._write", _disk_full)
    result = CliRunner().invoke(main, ["run", str(clip), "--prompt", "a cat", "-o", str(out), *FAST_ARGS])
    _one_error_line(result, f"no space left on the device to write {out}", "needed", "free there")
    assert _left_files(clip.parent) == [] and not (clip.parent / "results").exists()


def test_a_full_disk_at_the_record_removes_the_video_already_written(clip, monkeypatch):
    out = clip.parent / "out.mp4"
    real = Path.write_text

    def full_at_json(self, *args, **kwargs):
        if self.name.startswith(".out.json.tmp-"):
            _disk_full()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_at_json)
    result = CliRunner().invoke(main, ["run", str(clip), "--prompt", "a cat", "-o", str(out), "--side-by-side",
                                       "--strip", *FAST_ARGS])
    _one_error_line(result, f"no space left on the device to write {out.with_suffix('.json')}", "needed")
    assert _left_files(clip.parent) == []  # the video, side-by-side and strip written before it are removed


def test_a_full_disk_at_the_adapter_is_one_line_naming_it(clip, monkeypatch):
    out, adapter = clip.parent / "out.mp4", clip.parent / "motion.safetensors"
    monkeypatch.setattr("pipelines.motion_transfer.finetune.save_file", _disk_full)
    result = CliRunner().invoke(main, ["run", str(clip), "--prompt", "a cat", "-o", str(out), "--mode", "fine-tune",
                                       "--train-steps", "1", "--save-adapter", str(adapter), *FAST_ARGS])
    _one_error_line(result, f"no space left on the device to write {adapter}", "needed")
    assert _left_files(clip.parent) == []


def test_a_full_disk_at_the_inversion_cache_keeps_no_half_entry_and_the_run_goes_on(clip, offline_env, monkeypatch):
    out = clip.parent / "out.mp4"
    real_save = __import__("safetensors.torch", fromlist=["save_file"]).save_file

    def half_then_full(tensors, filename, *args, **kwargs):
        real_save(tensors, filename)  # the bytes land, then the disk is full (a half-written entry)
        _disk_full()

    monkeypatch.setattr("pipelines.motion_transfer.inversion.save_file", half_then_full)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = SMAMotionTransferPipeline.load("tiny-random", device="cpu", dtype="float32")
        pipe.set_progress_bar_config(disable=True)
        pipe(str(clip), "a cat", num_frames=4, num_inference_steps=4, inversion_steps=4, optimization_steps=1,
             restart_sampling=False, cache_dir=str(offline_env))
    advice = [str(w.message) for w in caught if issubclass(w.category, UserAdvice)]
    assert any("the inversion is not cached: no space left on the device to write" in a and "needed" in a for a in advice)
    assert [p for p in offline_env.rglob("*") if p.is_file()] == []  # neither the entry nor its temporary file
    assert not out.exists()
