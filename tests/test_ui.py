"""The web page (``sma-guide ui``): its run function and error messages in-process (tiny-random, seconds),
and one whole run in a real headless browser (Debian's chromium driven by Selenium, the shapes model).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import gradio as gr
import pytest
from click.testing import CliRunner

from cli import main
from pipelines.frontends.ui import KNOBS, SAMPLES, build_app, preset_values, run_transfer
from sma_guidance.config import SMAConfig
from sma_guidance.video_io import read_frames

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = SAMPLES / "red_circle_right.mp4"
PROMPT = "a yellow square on a gray background"
# A complete tiny-random run in seconds: 4 frames, 4 steps, one Adam iteration per guided step.
FAST_KNOBS = {"frames": 4, "steps": 4, "inversion_steps": 4, "optimization_steps": 1, "train_steps": 2}
BROWSER_SECONDS = 90  # the browser's part: start, upload, run, downloads


def knob_args(**values) -> list:
    """The page handler's knob arguments in page order; unnamed knobs blank (= the preset)."""
    return [values.get(name) for name, _, _ in KNOBS]


# ----------------------------------------------------------------------------------- run function


@pytest.fixture(autouse=True)
def run_folders_in_tmp(monkeypatch, tmp_path):
    """The per-run folders go under this test's tmp_path, not the system's temp folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def test_run_writes_the_video_its_record_and_the_side_by_side():
    files = run_transfer(SAMPLE, PROMPT, "a red circle", "tiny-random", "zero-shot", None, FAST_KNOBS,
                         device="cpu", show_progress=False)
    assert files.folder.is_dir() and files.folder != SAMPLES
    assert {files.output.parent, files.record.parent, files.comparison.parent} == {files.folder}
    record = json.loads(files.record.read_text())
    assert record["prompt"] == PROMPT and record["output"] == str(files.output)
    # The page's knobs reach the run; blank ones keep the preset.
    assert record["config"]["num_inference_steps"] == 4 and record["config"]["num_frames"] == 4
    assert record["config"]["source_prompt"] == "a red circle"
    assert record["config"]["guidance_scale"] == SMAConfig.for_model("tiny-random").guidance_scale
    output, _ = read_frames(files.output)
    comparison, _ = read_frames(files.comparison)
    assert output.shape[0] == 4 and comparison.shape[2] == 2 * output.shape[2]  # (input | output)
    assert files.adapter is None  # zero-shot trains nothing


def test_a_blank_inversion_count_is_fitted_to_the_sampling_steps():
    knobs = {"frames": 4, "steps": 3, "optimization_steps": 1}  # the preset's 20 inversion steps miss 3-step sampling
    files = run_transfer(SAMPLE, PROMPT, None, "tiny-random", "zero-shot", None, knobs, device="cpu", show_progress=False)
    assert json.loads(files.record.read_text())["config"]["inversion_steps"] == 27  # as tests/test_step_counts.py


def test_fine_tune_saves_an_adapter_the_next_run_reuses_with_one_loaded_model():
    pipelines: dict = {}
    trained = run_transfer(SAMPLE, PROMPT, "", "tiny-random", "fine-tune", None, FAST_KNOBS, device="cpu",
                           pipelines=pipelines, show_progress=False)
    assert trained.adapter is not None and trained.adapter.suffix == ".safetensors" and trained.adapter.is_file()
    assert len(json.loads(trained.record.read_text())["train_loss_history"]) == FAST_KNOBS["train_steps"]
    reused = run_transfer(SAMPLE, "a blue ball", "", "tiny-random", "fine-tune", str(trained.adapter), FAST_KNOBS,
                          device="cpu", pipelines=pipelines, show_progress=False)
    record = json.loads(reused.record.read_text())
    assert record["adapter"] == str(trained.adapter) and not record["train_loss_history"]  # applied, not trained
    assert reused.adapter is None and reused.folder != trained.folder
    assert len(pipelines) == 1  # the second run did not load the model again


def test_only_the_newest_run_folders_are_kept(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for stamp in (1, 2, 3):  # three earlier runs, oldest first, and a folder that is not a run
        (runs / f"sma-guide-run-{stamp:020d}-x").mkdir()
        (runs / f"sma-guide-run-{stamp:020d}-x" / "out.mp4").write_bytes(b"")
    (runs / "notes").mkdir()
    files = run_transfer(SAMPLE, PROMPT, None, "tiny-random", "zero-shot", None, FAST_KNOBS, device="cpu",
                         show_progress=False, runs_folder=runs, keep_runs=2)
    assert files.folder.parent == runs and files.output.is_file()
    assert sorted(p.name for p in runs.iterdir()) == ["notes", f"sma-guide-run-{3:020d}-x", files.folder.name]


def test_the_page_runs_in_its_own_folder_removed_with_it():
    app = build_app("tiny-random", device="cpu")
    folder = Path(app.runs_folder.name)
    comparison, output, record, _ = app.on_run(str(SAMPLE), PROMPT, "", "tiny-random", "zero-shot", None,
                                               *knob_args(**FAST_KNOBS))
    assert Path(output).is_file() and Path(output).parent.parent == folder
    app.runs_folder.cleanup()  # what its finalizer does when the page's process ends
    assert not folder.exists()


def test_the_page_takes_a_subject_box_windows_and_a_new_scene():
    app = build_app("tiny-random", device="cpu")
    knobs = knob_args(**dict(FAST_KNOBS, frames=6, window=4, overlap=1))
    _, _, record, _ = app.on_run(str(SAMPLE), PROMPT, "", "tiny-random", "zero-shot", None, *knobs, None, "0, 16, 40, 48",
                                 True)
    saved = json.loads(Path(record).read_text())
    assert saved["windows"] == [[0, 4], [2, 6]]
    assert saved["config"]["mask_box"] == [0, 16, 40, 48] and saved["config"]["window"] == 4
    assert saved["config"]["new_scene"] is True and "new_scene" in saved["timings"]
    app.runs_folder.cleanup()


def test_knobs_start_at_the_models_preset():
    for model in ("shapes", "tiny-random"):
        config = SMAConfig.for_model(model, family="zeroscope")  # both are UNet3D models
        expected = [None if name == "inversion_steps" else getattr(config, field) for name, field, _ in KNOBS]
        assert preset_values(model) == expected  # inversion steps blank: fitted to the sampling steps
    assert preset_values("shapes") != preset_values("tiny-random")  # 25 vs 20 steps: the page follows the model
    # A model whose family shows only once it loads: blanks, so that its family's preset decides then.
    assert preset_values("example-org/not-in-the-cache") == [None] * len(KNOBS)


# ---------------------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def page():
    return build_app("tiny-random", device="cpu")


def page_message(page, *arguments) -> str:
    """The message the page shows for a run with these arguments (it must fail)."""
    with pytest.raises(gr.Error) as caught:
        page.on_run(*arguments)
    return caught.value.message


def test_empty_prompt_is_a_message_on_the_page(page):
    message = page_message(page, str(SAMPLE), "  ", "", "tiny-random", "zero-shot", None, *knob_args(**FAST_KNOBS))
    assert message == "the prompt is empty; describe what the output should show"


def test_missing_clip_and_bad_knobs_are_messages_on_the_page(page):
    message = page_message(page, None, PROMPT, "", "tiny-random", "zero-shot", None, *knob_args(**FAST_KNOBS))
    assert message == "no input clip: upload a video or pick a bundled sample"
    message = page_message(page, str(SAMPLE), PROMPT, "", "tiny-random", "zero-shot", None,
                           *knob_args(steps=4, inversion_steps=6))
    assert "inversion_steps" in message and "multiple" in message  # SMAConfig's own check


def test_unexpected_failure_is_a_message_not_a_traceback(page):
    # A NaN seed (a page sends none, a script might) fails in Python's int(), not in a check of ours: the
    # page still shows one line naming the exception.
    message = page_message(page, str(SAMPLE), PROMPT, "", "tiny-random", "zero-shot", None,
                           *knob_args(**FAST_KNOBS, seed=float("nan")))
    assert message == "the run failed: ValueError: cannot convert float NaN to integer"


def test_ui_without_gradio_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError, as when not installed
    result = CliRunner().invoke(main, ["ui", "--port", "7861"])
    assert result.exit_code == 1
    assert result.output == 'error: the web page needs gradio: pip install -e ".[ui]"\n'


# --------------------------------------------------------------------------------------- browser


def _chromium() -> tuple[str, str]:
    """Paths of Debian's chromium and chromedriver (`.ci/run` installs them), or skip saying so."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None)
        pytest.skip(f"chromium is not installed: no {missing} on PATH (apt-get install chromium chromium-driver; "
                    ".ci/run tries that first)")
    return browser, driver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(offline_env, tmp_path):
    """``sma-guide ui --model shapes`` in a subprocess on a free port; yields its URL."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "GRADIO_ANALYTICS_ENABLED": "False", "SMA_GUIDE_CACHE": str(offline_env), "TMPDIR": str(tmp_path)}
    log = (tmp_path / "server.log").open("w")
    child = subprocess.Popen([sys.executable, "-m", "cli", "ui", "--port", str(port), "--model", "shapes", "--device", "cpu"],
                             cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 45
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if child.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the page did not come up:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
        log.close()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read()


def test_browser_run_with_the_shapes_model(server, tmp_path):
    browser_path, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.keys import Keys

    clock = time.monotonic()
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,2000"):
        options.add_argument(argument)
    options.binary_location = browser_path
    driver = webdriver.Chrome(service=Service(driver_path), options=options)  # an explicit driver: no download
    driver.implicitly_wait(0)

    def texts(selector: str) -> list[str]:
        """The texts of what matches now; Gradio re-renders while a run goes, so an element can vanish between
        finding it and reading it: that one is skipped, the next poll reads its replacement."""
        read = []
        for element in driver.find_elements(By.CSS_SELECTOR, selector):
            try:
                read.append(element.text)
            except StaleElementReferenceException:
                pass
        return read

    def find(selector: str, seconds: float = 20):
        deadline = time.monotonic() + seconds
        while True:
            found = driver.find_elements(By.CSS_SELECTOR, selector)
            if found:
                return found[0]
            errors = texts(".toast-body")
            assert not errors, f"the page shows an error: {errors}"
            assert time.monotonic() < deadline, f"nothing matches {selector} after {seconds} s"
            time.sleep(0.2)

    def act(selector: str, action, seconds: float = 20):
        """``action(element)`` on what matches ``selector``, found again if the page re-rendered it meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                return action(find(selector, seconds))
            except StaleElementReferenceException:
                assert time.monotonic() < deadline, f"{selector} kept being re-rendered for {seconds} s"

    def attribute(selector: str, name: str) -> str:
        return act(selector, lambda element: element.get_attribute(name))

    def type_into(selector: str, text: str) -> None:
        # Tab: the page takes the value on blur too
        act(selector, lambda field: field.send_keys(Keys.CONTROL, "a") or field.send_keys(text, Keys.TAB))

    try:
        driver.get(server)
        act("#input-video input[type=file]", lambda field: field.send_keys(str(SAMPLE)))
        find("#input-video video[src]")  # uploaded: the clip plays in the input box
        type_into("#prompt textarea", PROMPT)
        assert attribute("#steps input", "value") == str(SMAConfig.for_model("shapes").num_inference_steps)
        for knob, value in (("steps", "5"), ("inversion-steps", "5"), ("optimization-steps", "1")):
            type_into(f"#{knob} input", value)
        act("#run", lambda button: button.click())
        shown = set()  # the progress texts the page shows while the run goes
        deadline = time.monotonic() + 60
        while not driver.find_elements(By.CSS_SELECTOR, "#comparison video[src]"):
            shown.update(texts("#comparison .progress-text, #comparison .meta-text"))
            errors = texts(".toast-body")
            assert not errors, f"the page shows an error: {errors}"
            assert time.monotonic() < deadline, "no result video after 60 s"
            time.sleep(0.1)
        video_url = attribute("#output-video video[src]", "src")
        record_url = attribute("#record a[href]", "href")
    finally:
        driver.quit()

    video = tmp_path / "downloaded.mp4"
    video.write_bytes(_get(video_url))
    frames, _ = read_frames(video)
    assert frames.shape[0] == SMAConfig.for_model("shapes").num_frames
    record = json.loads(_get(record_url))
    assert record["prompt"] == PROMPT and record["config"]["model"] == "shapes"
    assert record["config"]["num_inference_steps"] == 5 and record["config"]["optimization_steps"] == 1
    # The pipeline's tqdm bars (5 inversion steps, then 5 sampling steps) reached the page's progress bar.
    assert any(re.fullmatch(r"[0-5]/5 steps \| [0-9.]+s", text) for text in shown), shown
    assert time.monotonic() - clock < BROWSER_SECONDS
