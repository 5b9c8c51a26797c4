"""Shared test helpers: offline, isolated runs of the ``sma-guide`` CLI on a tiny synthetic clip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported, so the fixture below would be
# too late for it: set it before any test module imports diffusers. Tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"

# Under pytest-xdist (the README's test command runs one worker per core) each worker, and every
# `sma-guide` process a test starts, gets its share of the cores: torch's default of all cores per
# process makes the workers' threads spin against each other and the suite several times slower.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _WORKERS:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "long_running: a test file of minutes on a CPU; the suite starts it first (see below)"
    )
    # Under `-n auto --dist loadfile` a worker takes whole files. xdist's default queues the files with
    # the most tests first, so the one file of minutes (the shapes model's held-out check) used to start
    # late and finish alone while the other worker idled; queued first instead (pytest_collection_modifyitems),
    # the other worker runs the rest of the suite beside it (733 s → 541 s on 2 cores).
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("long_running") is None)  # stable: the rest keep their order


# A complete run in seconds on a CPU: the toy model, 4 frames of 64x64, 4 steps, 2 guided steps of 1
# Adam iteration each.
FAST_ARGS = [
    "--model", "tiny-random",
    "--steps", "4",
    "--inversion-steps", "4",
    "--optimization-steps", "1",
    "--frames", "4",
    "--no-restart",
    "-q",
]

# The console script of this environment, else the module (cli.py runs main() under __main__).
_SCRIPT = Path(sys.executable).with_name("sma-guide")
CLI_COMMAND = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "cli"]


def moving_square_frames(num_frames: int = 10, size: int = 64, square: int = 16) -> np.ndarray:
    """uint8 ``(F, size, size, 3)``: a white square stepping right by 4 px per frame on black."""
    frames = np.zeros((num_frames, size, size, 3), np.uint8)
    top = (size - square) // 2
    for i in range(num_frames):
        left = min(4 * i, size - square)
        frames[i, top : top + square, left : left + square] = 255
    return frames


def write_moving_square(path: str | os.PathLike, num_frames: int = 10, fps: float = 8.0) -> Path:
    """Write :func:`moving_square_frames` to ``path`` (any supported extension); return the path."""
    from sma_guidance.video_io import export_to_video

    return Path(export_to_video(moving_square_frames(num_frames), path, fps=fps))


@pytest.fixture(autouse=True)
def offline_env(monkeypatch, tmp_path_factory) -> Path:
    """No network, and an inversion cache of this test's own (never ~/.cache). Returns the cache dir."""
    cache = tmp_path_factory.mktemp("sma-cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SMA_GUIDE_CACHE", str(cache))
    return cache


@pytest.fixture
def moving_square_video(tmp_path) -> Path:
    """``tmp_path/clip.mp4``: 10 frames of 64x64 at 8 fps, a white square moving right."""
    return write_moving_square(tmp_path / "clip.mp4")


@pytest.fixture
def run_cli(offline_env):
    """``run_cli(args, cwd=None, env=None)``: run ``sma-guide *args`` in a real subprocess.

    Returns the :class:`subprocess.CompletedProcess` (``stdout``/``stderr`` as text). The child is
    offline and uses this test's inversion cache; ``env`` adds or overrides variables.
    """

    def run(args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
        child_env = {**os.environ, "HF_HUB_OFFLINE": "1", "SMA_GUIDE_CACHE": str(offline_env), **(env or {})}
        return subprocess.run(
            [*CLI_COMMAND, *(str(a) for a in args)],
            cwd=cwd,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def quiet_pipeline(model: str, device: str = "cpu", **kwargs):
    """``SMAMotionTransferPipeline.load(model)`` on the CPU with its progress bars off, as the tests use it."""
    from pipelines import SMAMotionTransferPipeline

    pipe = SMAMotionTransferPipeline.load(model, device=device, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe
