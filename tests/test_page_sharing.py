"""The web page beyond loopback: credentials, what it may load, a bounded queue, uploads; models that carry code
or pickles; memory over many runs. Real servers where it matters, on loopback addresses only, bounded in time."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from pipelines.frontends.ui import ModelPolicy, is_loopback, model_policy, parse_auth, run_transfer
from sma_guidance.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "red_circle_right.mp4"
FAST = {"frames": 4, "steps": 4, "inversion_steps": 4, "optimization_steps": 1}

pytest.importorskip("gradio", reason="the web page needs the ui extra")


def _one_error_line(result, expected: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output


# ------------------------------------------------------------------------------------------- rules


def test_loopback_and_credentials_rules():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.5", "::", "example.org"))
    assert parse_auth("ann:s3:cret") == ("ann", "s3:cret") and parse_auth(None) is None and parse_auth("") is None
    for bad in ("nopassword", ":x", "ann:"):
        with pytest.raises(UserError, match="USER:PASSWORD"):
            parse_auth(bad)


def test_a_network_host_without_credentials_does_not_start(monkeypatch):
    monkeypatch.delenv("SMA_GUIDE_AUTH", raising=False)
    _one_error_line(CliRunner().invoke(main, ["ui", "--host", "0.0.0.0", "--port", "7862"]), "--auth USER:PASSWORD")
    monkeypatch.setenv("SMA_GUIDE_AUTH", "broken")
    _one_error_line(CliRunner().invoke(main, ["ui", "--host", "0.0.0.0", "--port", "7862"]), "USER:PASSWORD")


def test_what_the_page_may_load():
    local = model_policy("127.0.0.1", None, "shapes")
    local.check("/some/folder")  # loopback, no --models: anything, as the CLI
    shared = model_policy("0.0.0.0", None, "shapes")
    assert "shapes" in shared.allowed and "tiny-random" in shared.allowed
    with pytest.raises(UserError, match="may load only"):
        shared.check("/etc")
    listed = model_policy("127.0.0.1", "shapes,tiny-random", "tiny-random")
    assert listed == ModelPolicy(("shapes", "tiny-random"), any_local=False)
    with pytest.raises(UserError, match="may load only"):
        listed.check("tiny-random-wan")
    with pytest.raises(UserError, match="not in --models"):
        model_policy("0.0.0.0", "shapes", "tiny-random")


def test_the_shared_page_refuses_a_model_it_may_not_load():
    import gradio as gr

    from pipelines.frontends.ui import build_app

    app = build_app("tiny-random", device="cpu", policy=model_policy("0.0.0.0", None, "tiny-random"))
    with pytest.raises(gr.Error, match="may load only"):
        app.on_run(str(SAMPLE), "a cat", "", "/etc", "zero-shot", None, *[None] * 11)


def test_only_video_uploads_are_taken(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UserError, match="the input clip must be one of .mp4"):
        run_transfer(text, "a cat", None, "tiny-random", "zero-shot", None, FAST, "cpu")
    with pytest.raises(UserError, match="the mask must be one of"):
        run_transfer(SAMPLE, "a cat", None, "tiny-random", "zero-shot", None, FAST, "cpu", mask=text)
    with pytest.raises(UserError, match="the motion adapter must be one of .safetensors"):
        run_transfer(SAMPLE, "a cat", None, "tiny-random", "zero-shot", str(tmp_path / "a.pt"), FAST, "cpu")


# ------------------------------------------------------------------------------------------- models carry no code


def _tiny_folder(tmp_path: Path, safe: bool) -> Path:
    from pipelines.motion_transfer.backbones.zeroscope import build_tiny_random
    from pipelines.motion_transfer.pipeline_sma import SMAMotionTransferPipeline

    folder = tmp_path / "tiny"
    SMAMotionTransferPipeline(**build_tiny_random(0)).save_pretrained(folder, safe_serialization=safe)
    return folder


class _Trap:
    """Unpickling this object would run os.system: what a hostile .bin could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_weight_file_cannot_run_code(tmp_path, offline_env):
    from pipelines.motion_transfer.pipeline_sma import SMAMotionTransferPipeline

    folder = _tiny_folder(tmp_path, safe=False)
    weights = next((folder / "unet").glob("*.bin"))
    marker = tmp_path / "pwned"
    with weights.open("wb") as handle:
        pickle.dump({"trap": _Trap(marker)}, handle)
    with pytest.raises(UserError):
        SMAMotionTransferPipeline.load(str(folder), device="cpu", dtype="float32")
    assert not marker.exists()  # torch's weights_only refused the object before running it


def test_a_folder_that_names_its_own_code_is_refused(tmp_path, offline_env):
    from pipelines.motion_transfer.pipeline_sma import SMAMotionTransferPipeline

    folder = _tiny_folder(tmp_path, safe=True)
    marker = tmp_path / "ran"
    (folder / "my_scheduler.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                            "from diffusers import DDIMScheduler as MyScheduler\n")
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["my_scheduler", "MyScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError):
        SMAMotionTransferPipeline.load(str(folder), device="cpu", dtype="float32")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _serve(tmp_path: Path, offline_env: Path, *args: str):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "SMA_GUIDE_CACHE": str(offline_env), "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("SMA_GUIDE_AUTH", None)
    log = (tmp_path / f"server-{port}.log").open("w")
    child = subprocess.Popen([sys.executable, "-m", "cli", "ui", "--port", str(port), "--model", "tiny-random",
                              "--device", "cpu", *args], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise AssertionError((tmp_path / f"server-{port}.log").read_text())
        try:
            _status(url + "config")
            return child, url
        except OSError:
            time.sleep(0.5)
    child.kill()
    raise AssertionError("the page did not come up in 90 s")


def _stop(child) -> None:
    child.terminate()
    try:
        child.wait(timeout=20)
    except subprocess.TimeoutExpired:
        child.kill()


def _run_args(prompt: str, steps: int = 4) -> list:
    from gradio_client import handle_file

    return [handle_file(str(SAMPLE)), prompt, "a red circle", "tiny-random", "zero-shot", None,
            4, steps, None, 7.5, 1, 0.4, 0.2, 1, 0, 8, None, None, None]  # inversion steps: fitted


def test_shared_page_asks_for_the_password(tmp_path, offline_env):
    from gradio_client import Client

    child, url = _serve(tmp_path, offline_env, "--host", "0.0.0.0", "--auth", "ann:secret", "--max-upload-mb", "1")
    try:
        assert _status(url + "config") == 401  # over 127.0.0.1, without the password: no page
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, auth=("ann", "wrong"), verbose=False)
        client = Client(url, auth=("ann", "secret"), verbose=False)
        _, video, record, _ = client.predict(*_run_args("a yellow square"), api_name="/on_run")
        assert Path(video["video"] if isinstance(video, dict) else video).stat().st_size > 0
        assert json.loads(Path(record).read_text())["prompt"] == "a yellow square"
        big = tmp_path / "big.mp4"
        big.write_bytes(os.urandom(2 * 2**20))  # over --max-upload-mb 1
        from gradio_client import handle_file

        args = _run_args("too big")
        args[0] = handle_file(str(big))
        with pytest.raises(Exception, match="(?i)size|large|exceed"):
            client.predict(*args, api_name="/on_run")
    finally:
        _stop(child)


def test_a_bounded_queue_runs_one_at_a_time_and_refuses_the_rest(tmp_path, offline_env):
    from gradio_client import Client
    from gradio_client.utils import Status

    child, url = _serve(tmp_path, offline_env, "--queue", "8")
    try:
        client = Client(url, verbose=False)
        first = client.submit(*_run_args("run 0", steps=12), api_name="/on_run")
        deadline = time.monotonic() + 60
        while first.status().code != Status.PROCESSING and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.status().code == Status.PROCESSING
        with ThreadPoolExecutor(19) as pool:  # 19 more at once, while run 0 holds the page
            jobs = list(pool.map(lambda n: client.submit(*_run_args(f"run {n}"), api_name="/on_run"), range(1, 20)))
        outcomes = {}
        for n, job in enumerate([first, *jobs]):
            try:
                record = job.result(timeout=240)[2]
                outcomes[n] = json.loads(Path(record).read_text())["prompt"]
            except Exception as error:  # noqa: BLE001 — the refused ones
                outcomes[n] = f"refused: {error}"
        done = [n for n, value in outcomes.items() if not value.startswith("refused")]
        refused = [value for value in outcomes.values() if value.startswith("refused")]
        assert len(done) == 9 and len(refused) == 11, outcomes  # one running + 8 waiting
        assert all("Queue is full" in value for value in refused)
        # The page keeps its last 8 run folders, named by the clock at their start; each record is written last.
        records = sorted(tmp_path.glob("sma-guide-ui-*/sma-guide-run-*/*.sma.json"), key=lambda p: p.parent.name)
        assert len(records) == 8
        starts = [int(p.parent.name.split("-")[3]) for p in records]
        ends = [p.stat().st_mtime_ns for p in records]
        assert all(end <= start for end, start in zip(ends, starts[1:]))  # one run at a time: none overlaps the next
        assert {json.loads(p.read_text())["prompt"] for p in records} <= {outcomes[n] for n in done[1:]}
    finally:
        _stop(child)


# ------------------------------------------------------------------------------------------- many runs


def test_twenty_runs_in_one_process_do_not_grow(tmp_path, offline_env):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "SMA_GUIDE_CACHE": str(offline_env)}
    result = subprocess.run([sys.executable, "-m", "pipelines.bench.page_memory", "20", "--json", str(tmp_path / "m.json")],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    records = json.loads((tmp_path / "m.json").read_text())
    assert len(records) == 20 and {r["model"] for r in records} == {"tiny-random", "tiny-random-animatediff"}
    assert records[-1]["peak_rss_mb"] <= 1.10 * records[1]["peak_rss_mb"]
    assert max(r["run_folders"] for r in records) <= 8 and records[-1]["run_folders"] == 8
