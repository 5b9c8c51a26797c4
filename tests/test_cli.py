"""End-to-end tests of the ``sma-guide`` CLI with the tiny random model (offline, seconds each).

Most runs go through click's CliRunner in this process (fast); a few go through a real subprocess to
prove that the console script works and that no traceback reaches a terminal.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from cli import main
from conftest import FAST_ARGS, moving_square_frames, write_moving_square
from sma_guidance.video_io import export_to_video, read_frames

PROMPT = "a red car driving on a road"
STEPS, FRAMES, SIZE, OPT_STEPS = 4, 4, 64, 1
GUIDED_STEPS = round(0.4 * STEPS)  # default guidance_fraction 0.4, optimization-steps > 0


# ----------------------------------------------------------------------------------------- helpers


def invoke(args) -> Result:
    """Run the CLI in-process; ``result.output`` holds stdout and stderr as a terminal shows them."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def uncaught(result) -> str | None:
    """The traceback of an exception that escaped the command (SystemExit is the normal exit)."""
    if result.exception is None or isinstance(result.exception, SystemExit):
        return None
    return "".join(traceback.format_exception(*result.exc_info))


def assert_success(result) -> None:
    assert uncaught(result) is None, uncaught(result)
    assert result.exit_code == 0, result.output


def assert_one_line_error(exit_code: int, text: str, expected: str) -> str:
    """A failed run printed exactly one non-empty line, ``error: ...`` mentioning ``expected``."""
    assert exit_code != 0
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    assert lines[0].startswith("error:"), lines[0]
    assert expected.lower() in lines[0].lower(), lines[0]
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything under ``root``: relative name -> (kind, size, mtime, content hash)."""
    state = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        state[str(path.relative_to(root))] = (path.is_dir(), stat.st_size, stat.st_mtime_ns, digest)
    state["."] = (True, 0, root.stat().st_mtime_ns, None)  # a file created then removed shows here
    return state


def load_record(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def all_finite(values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


# ------------------------------------------------------------------------------- end to end (ok)


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """One in-process run with FAST_ARGS (and --seed 7) writing to ``out/result.mp4``."""
    root = tmp_path_factory.mktemp("fast_run")
    video = write_moving_square(root / "clip.mp4")
    (root / "out").mkdir()
    output = root / "out" / "result.mp4"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("SMA_GUIDE_CACHE", str(root / "cache"))
        result = invoke([video, "--prompt", PROMPT, "-o", output, *FAST_ARGS, "--seed", "7"])
    return {"result": result, "root": root, "video": video, "output": output, "record": output.with_suffix(".json")}


def test_run_writes_video_and_record(fast_run):
    assert_success(fast_run["result"])
    output, record_path = fast_run["output"], fast_run["record"]
    assert output.is_file() and output.stat().st_size > 0
    assert record_path.is_file()
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in output.parent.iterdir()) == ["result.json", "result.mp4"]

    frames, fps = read_frames(output)
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)
    assert frames.dtype == np.uint8

    record = load_record(record_path)
    assert set(record) >= {"config", "loss_history", "timings", "fps"}
    assert record["prompt"] == PROMPT
    assert Path(record["output"]) == output
    # The output keeps the input's duration: 10 frames at 8 fps -> 4 frames at 3.2 fps.
    assert record["fps"] == pytest.approx(8.0 * FRAMES / 10)
    assert fps == pytest.approx(record["fps"], rel=0.05)
    assert all_finite(record["timings"].values())
    assert all(v >= 0 for v in record["timings"].values())


def test_record_config_holds_the_flag_values(fast_run):
    assert_success(fast_run["result"])
    config = load_record(fast_run["record"])["config"]
    assert config["model"] == "tiny-random"
    assert config["num_inference_steps"] == STEPS
    assert config["inversion_steps"] == 4
    assert config["optimization_steps"] == OPT_STEPS
    assert config["num_frames"] == FRAMES
    assert config["restart_sampling"] is False
    assert config["seed"] == 7
    # Not given as flags: the tiny-random preset and SMAConfig's defaults.
    assert (config["height"], config["width"]) == (SIZE, SIZE)
    assert config["lambda_global"] == 0.4 and config["lambda_local"] == 0.2
    assert config["guidance_fraction"] == 0.4


def test_loss_history_has_one_finite_entry_per_guided_step(fast_run):
    assert_success(fast_run["result"])
    history = load_record(fast_run["record"])["loss_history"]
    assert len(history) == GUIDED_STEPS
    assert [entry["step"] for entry in history] == list(range(GUIDED_STEPS))
    timesteps = [entry["timestep"] for entry in history]
    assert timesteps == sorted(timesteps, reverse=True) and all(0 <= t < 1000 for t in timesteps)
    assert [entry["learning_rate"] for entry in history] == pytest.approx([0.007, 0.004])
    for entry in history:
        assert len(entry["iterations"]) == OPT_STEPS
        for terms in entry["iterations"]:
            assert set(terms) == {"dmt", "global", "local", "total"}
            assert all_finite(terms.values()), terms
            assert terms["total"] == pytest.approx(terms["dmt"] + 0.4 * terms["global"] + 0.2 * terms["local"], rel=1e-4)


def test_saved_run_record_works_as_config(fast_run, tmp_path):
    """``--config run.json`` takes the record's "config" entry: the rerun has the same settings."""
    assert_success(fast_run["result"])
    output = tmp_path / "again.mp4"
    result = invoke([fast_run["video"], "--prompt", "a blue boat", "--config", fast_run["record"], "-o", output, "-q"])
    assert_success(result)
    first = load_record(fast_run["record"])
    again = load_record(output.with_suffix(".json"))
    assert again["config"] == first["config"]
    assert len(again["loss_history"]) == GUIDED_STEPS
    assert read_frames(output)[0].shape == (FRAMES, SIZE, SIZE, 3)


def test_config_file_values_are_used_and_flags_override_them(moving_square_video, tmp_path):
    config_file = tmp_path / "settings.json"
    config_file.write_text(
        json.dumps(
            {
                "model": "tiny-random",  # no --model flag: the file's model (and its preset) is used
                "num_inference_steps": 4,
                "inversion_steps": 4,
                "num_frames": 4,
                "optimization_steps": 3,  # overridden by --optimization-steps 1
                "seed": 3,  # overridden by --seed 5
                "lambda_global": 0.9,  # overridden by --lambda-global 0.4 (the default value, given explicitly)
                "restart_sampling": True,  # overridden by --no-restart
                "lambda_local": 0.7,  # kept
                "delta": 0.1,  # kept
            }
        )
    )
    output = tmp_path / "out.mp4"
    result = invoke(
        [moving_square_video, "--prompt", PROMPT, "--config", config_file, "-o", output,
         "--optimization-steps", "1", "--seed", "5", "--lambda-global", "0.4", "--no-restart", "-q"]
    )
    assert_success(result)
    record = load_record(output.with_suffix(".json"))
    config = record["config"]
    assert config["model"] == "tiny-random"
    assert (config["height"], config["width"]) == (SIZE, SIZE)
    assert config["num_inference_steps"] == 4 and config["inversion_steps"] == 4 and config["num_frames"] == 4
    assert config["optimization_steps"] == 1
    assert config["seed"] == 5
    assert config["lambda_global"] == 0.4
    assert config["restart_sampling"] is False
    assert config["lambda_local"] == 0.7 and config["delta"] == 0.1
    assert [len(entry["iterations"]) for entry in record["loss_history"]] == [1] * GUIDED_STEPS


def test_zero_lambdas_run_plain_dmt(moving_square_video, tmp_path):
    output = tmp_path / "dmt.gif"  # .gif output; its record is dmt.json
    result = invoke(
        [moving_square_video, "--prompt", PROMPT, "-o", output, *FAST_ARGS, "--lambda-global", "0", "--lambda-local", "0"]
    )
    assert_success(result)
    assert output.is_file()
    record = load_record(tmp_path / "dmt.json")
    assert record["config"]["lambda_global"] == 0 and record["config"]["lambda_local"] == 0
    iterations = [terms for entry in record["loss_history"] for terms in entry["iterations"]]
    assert len(iterations) == GUIDED_STEPS * OPT_STEPS
    for terms in iterations:
        assert terms["global"] == 0 and terms["local"] == 0
        assert math.isfinite(terms["dmt"]) and terms["total"] == pytest.approx(terms["dmt"])


def test_subprocess_run_writes_beside_the_input_by_default(moving_square_video, run_cli):
    """A real process (a fine-tune, so that its path runs outside pytest too; zero-shot runs in real
    processes in test_failures.py) writes beside the input by default."""
    proc = run_cli(["clip.mp4", "--prompt", PROMPT, *FAST_ARGS, "--mode", "fine-tune", "--train-steps", "3",
                    "--residual", "abs"], cwd=moving_square_video.parent)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    folder = moving_square_video.parent
    assert (folder / "clip.sma.mp4").is_file()
    record = load_record(folder / "clip.sma.json")
    assert record["output"] == "clip.sma.mp4"
    assert record["config"]["num_inference_steps"] == STEPS
    assert record["config"]["mode"] == "fine-tune" and record["config"]["residual"] == "abs"
    assert len(record["train_loss_history"]) == 3
    assert read_frames(folder / "clip.sma.mp4")[0].shape == (FRAMES, SIZE, SIZE, 3)


def test_missing_output_folders_are_created_for_every_output(tmp_path, monkeypatch):
    """The video, its JSON, the side-by-side, the strip and a saved adapter, each into new nested folders."""
    video = write_moving_square(tmp_path / "clip.mp4")
    monkeypatch.chdir(tmp_path)
    output, adapter = Path("new/deeper/result.mp4"), Path("adapters/a/b/motion.safetensors")
    result = invoke([video, "--prompt", PROMPT, "-o", output, *FAST_ARGS, "--side-by-side", "--strip",
                     "--mode", "fine-tune", "--train-steps", "1", "--save-adapter", adapter])
    assert_success(result)
    assert sorted(p.name for p in output.parent.iterdir()) == [
        "result.json", "result.mp4", "result.side_by_side.mp4", "result.strip.png"]
    assert [p.name for p in adapter.parent.iterdir()] == ["motion.safetensors"]
    assert read_frames(output)[0].shape == (FRAMES, SIZE, SIZE, 3)
    assert load_record(output.with_suffix(".json"))["adapter"] == str(adapter)


def test_start_and_duration_select_the_part_and_are_recorded(tmp_path):
    video = write_moving_square(tmp_path / "clip.mp4")  # 10 frames at 8 fps
    output = tmp_path / "part.mp4"
    result = invoke([video, "--prompt", PROMPT, "-o", output, *FAST_ARGS, "--start", "0.25", "--duration", "0.75"])
    assert_success(result)
    record = load_record(output.with_suffix(".json"))
    assert (record["config"]["start"], record["config"]["duration"]) == (0.25, 0.75)
    # Frames 2..7 (times 0.25 to 0.875 s) are the part: 6 frames shown as 4 keep its 0.75 s.
    assert record["fps"] == pytest.approx(8.0 * FRAMES / 6)
    assert read_frames(output)[1] == pytest.approx(record["fps"], rel=0.05)


# -------------------------------------------------------------------------------------- bad input


def _write_text(name, text="this is not a video\n"):
    def setup(d: Path):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    return setup


def _write_noise(name):
    def setup(d: Path):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(np.random.default_rng(0).bytes(4096))
    return setup


def _two_frames(name):
    def setup(d: Path):
        export_to_video(moving_square_frames(2), d / name, fps=8)  # two different frames (GIF keeps both)
    return setup


def _mkdirs(*names):
    def setup(d: Path):
        for name in names:
            (d / name).mkdir(parents=True, exist_ok=True)
    return setup


def _txt_only_dir(d: Path):
    (d / "frames").mkdir()
    (d / "frames" / "notes.txt").write_text("no images here\n")


def _model_folder_without_index(d: Path):
    (d / "my-model" / "unet").mkdir(parents=True)
    (d / "my-model" / "unet" / "config.json").write_text("{}")


def _hard_link(d: Path):
    os.link(d / "clip.mp4", d / "alias.mp4")


def _video_named_json(d: Path):
    shutil.copy(d / "clip.mp4", d / "out.json")


# (id, setup(d) or None, args: INPUT first then options, relative to the work dir, text in the message)
BAD_INPUTS = [
    ("missing-input", None, ["nope.mp4"], "not found"),
    ("text-named-mp4", _write_text("text/clip.mp4"), ["text/clip.mp4"], "could not read"),
    ("random-bytes-named-mp4", _write_noise("noise/clip.mp4"), ["noise/clip.mp4"], "could not read"),
    ("two-frame-gif", _two_frames("short.gif"), ["short.gif"], "at least 3 frames"),
    ("two-frame-mp4", _two_frames("short.mp4"), ["short.mp4"], "at least 3 frames"),
    ("empty-directory", _mkdirs("empty"), ["empty"], "no images"),
    ("directory-with-only-txt", _txt_only_dir, ["frames"], "no images"),
    ("output-is-input", None, ["clip.mp4", "-o", "clip.mp4"], "is the input"),
    ("output-is-input-respelled", _mkdirs("sub"), ["clip.mp4", "-o", "./sub/../clip.mp4"], "is the input"),
    ("output-is-input-hard-link", _hard_link, ["clip.mp4", "-o", "alias.mp4"], "is the input"),
    ("record-would-overwrite-input", _video_named_json, ["out.json", "-o", "out.mp4"], "overwrite the input"),
    ("output-folder-under-a-file", _write_text("notes"), ["clip.mp4", "-o", "notes/out.mp4"], "is a file"),
    # A new output folder is made only when the run writes: a bad input or model leaves none behind.
    ("new-output-folder-bad-input", _two_frames("short.mp4"), ["short.mp4", "-o", "new/deep/out.mp4"], "at least 3 frames"),
    ("new-output-folder-bad-model", None, ["clip.mp4", "-o", "new/deep/out.mp4", "--model", "nobody/no-such-model"],
     "local Hugging Face cache"),
    ("new-output-folder-bad-levels", None, ["clip.mp4", "-o", "new/out.mp4", "--levels", "5"], "too deep"),
    ("output-unsupported-extension", None, ["clip.mp4", "-o", "out.txt"], "unsupported output format"),
    ("output-is-a-directory", _mkdirs("outdir"), ["clip.mp4", "-o", "outdir"], "directory"),
    ("unknown-hub-model", None, ["clip.mp4", "--model", "nobody/no-such-model"], "local Hugging Face cache"),
    ("model-folder-without-index", _model_folder_without_index, ["clip.mp4", "--model", "my-model"], "model_index.json"),
    ("levels-too-deep", None, ["clip.mp4", "--frames", "4", "--levels", "5"], "too deep"),
    ("delta-nan", None, ["clip.mp4", "--delta", "nan"], "finite"),
    ("lambda-global-inf", None, ["clip.mp4", "--lambda-global", "inf"], "finite"),
    ("guidance-scale-nan", None, ["clip.mp4", "--guidance-scale", "nan"], "finite"),
    ("steps-zero", None, ["clip.mp4", "--steps", "0"], "positive"),
    ("frames-zero", None, ["clip.mp4", "--frames", "0"], "positive"),
    ("height-negative", None, ["clip.mp4", "--height", "-64"], "positive"),
    ("delta-zero", None, ["clip.mp4", "--delta", "0"], "positive"),
    ("optimization-steps-negative", None, ["clip.mp4", "--optimization-steps", "-1"], "at least 0"),
    ("width-not-multiple-of-8", None, ["clip.mp4", "--width", "60"], "multiple of 8"),
    ("height-not-multiple-of-8", None, ["clip.mp4", "--height", "70"], "multiple of 8"),
    ("inversion-misses-sampling-timesteps", None, ["clip.mp4", "--inversion-steps", "7"], "inversion_steps"),
    ("config-file-missing", None, ["clip.mp4", "--config", "nope.json"], "config file not found"),
    ("config-file-unknown-key", _write_text("bad.json", '{"num_inference_steps": 4, "bogus_key": 1}'),
     ["clip.mp4", "--config", "bad.json"], "bogus_key"),
    ("config-file-not-json", _write_text("broken.json", "num_inference_steps: 4\n"),
     ["clip.mp4", "--config", "broken.json"], "cannot read config file"),
    ("start-beyond-the-end", None, ["clip.mp4", "--start", "2"], "beyond the end of clip.mp4, which lasts 1.25 s"),
    ("start-negative", None, ["clip.mp4", "--start", "-1"], "start must not be negative"),
    ("duration-zero", None, ["clip.mp4", "--duration", "0"], "duration must be positive"),
    ("duration-nan", None, ["clip.mp4", "--duration", "nan"], "finite"),
    ("part-too-short", None, ["clip.mp4", "--start", "0.5", "--duration", "0.2"], "selects 2 frame(s)"),
    ("empty-prompt", None, ["clip.mp4", "--prompt", ""], "prompt"),
    ("blank-prompt", None, ["clip.mp4", "--prompt", "   "], "prompt"),
]

PRIOR_OUTPUT = b"an earlier result that must survive\n"


@pytest.fixture
def work_dir(tmp_path, monkeypatch):
    """``tmp_path/work`` as the cwd, with clip.mp4 and an earlier run's clip.sma.mp4 / clip.sma.json."""
    d = tmp_path / "work"
    d.mkdir()
    write_moving_square(d / "clip.mp4")
    (d / "clip.sma.mp4").write_bytes(PRIOR_OUTPUT)
    (d / "clip.sma.json").write_bytes(PRIOR_OUTPUT)
    monkeypatch.chdir(d)
    return d


def _command(args):
    """INPUT, the prompt and FAST_ARGS, then the case's options (click keeps an option's last value)."""
    return [args[0], "--prompt", PROMPT, *FAST_ARGS, *args[1:]]


@pytest.mark.parametrize("setup, args, expected", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_error_line_and_writes_nothing(work_dir, offline_env, setup, args, expected):
    if setup:
        setup(work_dir)
    before = snapshot(work_dir)
    result = invoke(_command(args))
    assert uncaught(result) is None, uncaught(result)
    assert_one_line_error(result.exit_code, result.output, expected)
    assert snapshot(work_dir) == before
    assert (work_dir / "clip.sma.mp4").read_bytes() == PRIOR_OUTPUT
    assert not any(offline_env.iterdir()), "the inversion cache was written"


@pytest.mark.parametrize(
    "setup, args, expected",
    [
        (_write_noise("noise/clip.mp4"), ["noise/clip.mp4"], "could not read"),  # fails while decoding
        (None, ["clip.mp4", "--model", "nobody/no-such-model"], "local Hugging Face cache"),  # fails loading
    ],
    ids=["random-bytes-named-mp4", "unknown-hub-model"],
)
def test_bad_input_in_a_real_process_prints_one_line(work_dir, offline_env, run_cli, setup, args, expected):
    if setup:
        setup(work_dir)
    before = snapshot(work_dir)
    proc = run_cli(_command(args), cwd=work_dir)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert_one_line_error(proc.returncode, proc.stderr, expected)
    assert snapshot(work_dir) == before
    assert not any(offline_env.iterdir())


def test_learning_rate_and_guidance_rescale_flags_reach_the_config():
    from pipelines.motion_transfer.run import build_config

    flags = {"model": "tiny-random", "learning_rate_start": 0.02, "learning_rate_end": 0.01, "guidance_rescale": 0.5}
    config = build_config(None, flags)
    assert (config.learning_rate_start, config.learning_rate_end, config.guidance_rescale) == (0.02, 0.01, 0.5)
    shapes = build_config(None, {"model": "shapes"})  # the shapes preset's measured rates (RESULTS.md)
    assert (shapes.learning_rate_start, shapes.learning_rate_end, shapes.guidance_rescale) == (0.012, 0.007, 0.0)


def test_bad_guidance_rescale_is_one_error_line(moving_square_video, tmp_path):
    output = tmp_path / "out.mp4"
    result = invoke([moving_square_video, "--prompt", PROMPT, "-o", output, *FAST_ARGS, "--guidance-rescale", "2"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["error: guidance_rescale must be between 0 (plain guidance) and 1 (got 2.0)"]
    assert not output.exists()


def test_a_missing_input_is_reported_before_any_heavy_import(tmp_path):
    """A typo in the path is answered at once: no torch or diffusers import (seconds) before the check."""
    script = (
        "import sys\n"
        "from cli import main\n"
        "try:\n"
        "    main(['no-such-clip.mp4', '--prompt', 'a dog'], prog_name='sma-guide')\n"
        "except SystemExit as exit:\n"
        "    print(exit.code, sorted(m for m in ('torch', 'diffusers') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "1 []", proc.stdout + proc.stderr
    assert proc.stderr.strip() == "error: input not found: no-such-clip.mp4 — check the path"

    # A file that is no video is refused before the model family is detected (diffusers, ~10 s here).
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    script = script.replace("no-such-clip.mp4", "junk.mp4").replace("('torch', 'diffusers')", "('diffusers',)")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "1 []", proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: could not read junk.mp4 as a video") and proc.stderr.count("\n") == 1


def test_a_run_decodes_the_input_once_side_by_side_and_strip_included(moving_square_video, tmp_path, monkeypatch):
    from sma_guidance import video_io

    decoded = []
    real = video_io._read_selection
    monkeypatch.setattr(video_io, "_read_selection", lambda *a, **k: decoded.append(1) or real(*a, **k))
    output = tmp_path / "out.mp4"
    result = invoke([moving_square_video, "--prompt", PROMPT, "-o", output, *FAST_ARGS, "--side-by-side", "--strip"])
    assert result.exit_code == 0, result.output
    assert output.is_file() and output.with_name("out.side_by_side.mp4").is_file() and output.with_name("out.strip.png").is_file()
    assert decoded == [1]


def test_every_option_of_a_run_is_in_the_readme():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [option for param in main.commands["run"].params for option in param.opts
               if option.startswith("--") and option not in readme]
    assert not missing, f"README.md does not mention {missing}"
