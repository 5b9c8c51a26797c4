"""The CLI's fine-tune mode: --mode, --train-steps, --residual, --adapter and --save-adapter (tiny model, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FAST_ARGS, write_moving_square
from pipelines.motion_transfer.finetune import MotionAdapter
from test_cli import assert_one_line_error, assert_success, invoke, load_record, snapshot, uncaught

PROMPT = "a red car driving on a road"
# A real parameter of tiny-random's UNet that VMC's recipe trains (a temporal attention projection).
TINY_LAYER = "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1.to_q.weight"


# ------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def fine_tune_runs(tmp_path_factory):
    """A ``--mode fine-tune --save-adapter`` run, then a ``--adapter ... --mode both`` run reusing it."""
    root = tmp_path_factory.mktemp("fine_tune_runs")
    video = write_moving_square(root / "clip.mp4")
    (root / "out").mkdir()
    first, second = root / "out" / "first.mp4", root / "out" / "second.mp4"
    adapter = root / "out" / "a.safetensors"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("SMA_GUIDE_CACHE", str(root / "cache"))
        train = invoke(
            [video, "--prompt", PROMPT, "-o", first, *FAST_ARGS, "--mode", "fine-tune", "--train-steps", "5",
             "--save-adapter", adapter]
        )
        files_after_first = sorted(p.name for p in (root / "out").iterdir())
        reuse = invoke(
            [video, "--prompt", "a blue boat on a lake", "-o", second, *FAST_ARGS, "--adapter", adapter, "--mode", "both"]
        )
    return dict(train=train, reuse=reuse, first=first, second=second, adapter=adapter, files_after_first=files_after_first)


def test_fine_tune_run_writes_video_record_and_adapter(fine_tune_runs):
    runs = fine_tune_runs
    assert_success(runs["train"])
    assert runs["files_after_first"] == ["a.safetensors", "first.json", "first.mp4"]  # no temporary files
    assert runs["first"].stat().st_size > 0
    record = load_record(runs["first"].with_suffix(".json"))
    assert record["config"]["mode"] == "fine-tune"
    assert record["config"]["train_steps"] == 5
    assert record["loss_history"] == []  # no latent optimization in fine-tune mode
    history = record["train_loss_history"]
    assert len(history) == 5 and [entry["step"] for entry in history] == list(range(5))
    assert all({"vmc", "global", "local", "total"} <= set(entry) for entry in history)
    assert "fine_tune" in record["timings"]
    assert record["adapter"] == str(runs["adapter"])

    adapter = MotionAdapter.load(runs["adapter"])
    assert adapter.base_model == "tiny-random"
    assert adapter.settings["steps"] == 5
    assert TINY_LAYER in adapter.tensors
    assert set(load_file(str(runs["adapter"]))) == set(adapter.tensors)
    assert all(".to_q." in k or ".to_k." in k or ".to_v." in k for k in adapter.tensors)


def test_saved_adapter_is_reused_without_training(fine_tune_runs):
    runs = fine_tune_runs
    assert_success(runs["train"])
    assert_success(runs["reuse"])
    record = load_record(runs["second"].with_suffix(".json"))
    assert record["train_loss_history"] == []
    assert "fine_tune" not in record["timings"]
    assert len(record["loss_history"]) == 2  # "both": the zero-shot guidance still runs
    assert record["config"]["mode"] == "both"
    assert record["config"]["adapter"] == str(runs["adapter"])
    assert record["prompt"] == "a blue boat on a lake"
    assert runs["second"].stat().st_size > 0


# -------------------------------------------------------------------------------------- bad input


def _text(name, text="not an adapter\n"):
    def setup(d: Path):
        (d / name).write_text(text)
    return setup


def _plain_safetensors(name):
    def setup(d: Path):
        save_file({"weight": torch.zeros(2, 2)}, str(d / name))  # no sma-guide metadata
    return setup


def _adapter(name, tensors, architecture):
    def setup(d: Path):
        MotionAdapter(tensors=tensors, base_model="some/other-model", architecture=architecture).save(d / name)
    return setup


def _mkdir(name):
    def setup(d: Path):
        (d / name).mkdir()
    return setup


BAD_INPUTS = [
    # id, setup, extra args, expected text of the error line
    ("train-steps-zero", None, ["--mode", "fine-tune", "--train-steps", "0"], "train_steps must be positive"),
    ("train-steps-negative", None, ["--mode", "fine-tune", "--train-steps", "-3"], "train_steps must be positive"),
    ("adapter-missing", None, ["--adapter", "missing.safetensors"], "not found"),
    ("adapter-not-safetensors", _text("notes.safetensors"), ["--adapter", "notes.safetensors"], "not a safetensors"),
    ("adapter-plain-safetensors", _plain_safetensors("plain.safetensors"), ["--adapter", "plain.safetensors"],
     "not an sma-guide motion adapter"),
    ("adapter-for-another-architecture", _adapter("other.safetensors", {TINY_LAYER: torch.zeros(3, 3)}, "deadbeef"),
     ["--adapter", "other.safetensors", "--mode", "both"], "does not fit"),
    ("adapter-with-wrong-shapes", _adapter("shapes.safetensors", {TINY_LAYER: torch.zeros(3, 3)}, ""),
     ["--adapter", "shapes.safetensors"], "does not fit"),
    ("adapter-with-unknown-layer", _adapter("layer.safetensors", {"no.such.layer.weight": torch.zeros(3)}, ""),
     ["--adapter", "layer.safetensors", "--mode", "fine-tune"], "no layer"),
    ("save-adapter-zero-shot", None, ["--save-adapter", "a.safetensors"], "needs a training run"),
    ("save-adapter-with-adapter", _adapter("given.safetensors", {TINY_LAYER: torch.zeros(3, 3)}, ""),
     ["--mode", "fine-tune", "--adapter", "given.safetensors", "--save-adapter", "a.safetensors"], "needs a training run"),
    ("save-adapter-bin", None, ["--mode", "fine-tune", "--save-adapter", "a.bin"], "must end in .safetensors"),
    ("save-adapter-under-a-file", _text("notes"), ["--mode", "fine-tune", "--save-adapter", "notes/a.safetensors"],
     "is a file"),
    # The adapter's new folder is made when it is saved: a run refused before then leaves none.
    ("save-adapter-new-folder-bad-steps", None,
     ["--mode", "fine-tune", "--train-steps", "0", "--save-adapter", "new/a.safetensors"], "train_steps must be positive"),
    ("save-adapter-is-a-directory", _mkdir("dir.safetensors"), ["--mode", "both", "--save-adapter", "dir.safetensors"],
     "directory"),
]


@pytest.fixture
def work_dir(tmp_path, monkeypatch):
    """``tmp_path/work`` as the cwd, holding clip.mp4."""
    d = tmp_path / "work"
    d.mkdir()
    write_moving_square(d / "clip.mp4")
    monkeypatch.chdir(d)
    return d


def _command(extra):
    return ["clip.mp4", "--prompt", PROMPT, *FAST_ARGS, "--train-steps", "2", *extra]


@pytest.mark.parametrize("setup, args, expected", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_fine_tune_input_is_one_error_line_and_writes_nothing(work_dir, offline_env, setup, args, expected):
    if setup:
        setup(work_dir)
    before = snapshot(work_dir)
    result = invoke(_command(args))
    assert uncaught(result) is None, uncaught(result)
    assert_one_line_error(result.exit_code, result.output, expected)
    assert snapshot(work_dir) == before
    assert not any(offline_env.iterdir()), "the inversion cache was written"


@pytest.mark.parametrize("args", [["--residual", "bogus"], ["--mode", "finetune"], ["--train-steps", "many"]],
                         ids=["residual-bogus", "mode-bogus", "train-steps-not-a-number"])
def test_bad_choice_is_a_usage_error_and_writes_nothing(work_dir, offline_env, args):
    before = snapshot(work_dir)
    result = invoke(_command(args))
    assert uncaught(result) is None, uncaught(result)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert snapshot(work_dir) == before
    assert not any(offline_env.iterdir())


def test_invalid_trainable_modules_regex_in_config_is_one_error_line(work_dir, offline_env):
    (work_dir / "settings.json").write_text(json.dumps({"trainable_modules": "("}))
    before = snapshot(work_dir)
    result = invoke(_command(["--mode", "fine-tune", "--config", "settings.json"]))
    assert snapshot(work_dir) == before
    assert uncaught(result) is None, uncaught(result)
    assert_one_line_error(result.exit_code, result.output, "trainable_modules")
