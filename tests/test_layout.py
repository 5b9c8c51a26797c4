"""The house: the product path apart from its tooling, and no module that imports one importing it back."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from conftest import FAST_ARGS, write_moving_square

ROOT = Path(__file__).resolve().parents[1]
# What a plain run must never load: the benchmarks, the shapes trainer, the web page and its library.
TOOLING = ("pipelines.bench", "pipelines.training", "pipelines.frontends.ui", "gradio")


def test_a_plain_run_imports_no_benchmark_trainer_or_web_page(tmp_path, offline_env):
    clip = write_moving_square(tmp_path / "clip.mp4", num_frames=6)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SMA_GUIDE_CACHE": str(offline_env), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cli", str(clip), "--prompt", "a red car", *FAST_ARGS],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "clip.sma.mp4").is_file()
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "pipelines.motion_transfer.pipeline_sma" in imported and "torch" in imported  # the log is read right
    loaded = sorted(name for name in imported if name.startswith(TOOLING))
    assert loaded == [], f"a plain run imported {loaded}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere in it (inside functions too), relative ones resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import module` imports that module; `from module import name` the module.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules)
    return found - {name}


def test_no_module_imports_one_that_imports_it_back():
    files = [ROOT / "cli.py", *ROOT.glob("pipelines/**/*.py"), *ROOT.glob("sma_guidance/**/*.py")]
    modules = {_module_name(path) for path in files}
    graph = {_module_name(path): _imports(path, modules) for path in files}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            current = todo.pop()
            if current == goal:
                return True
            if current not in seen:
                seen.add(current)
                todo.extend(graph[current])
        return False

    cycles = sorted(f"{a} -> {b} -> ... -> {a}" for a in graph for b in graph[a] if reaches(b, a))
    assert graph["cli"] and graph["pipelines.motion_transfer.pipeline_sma"]  # the graph is read right
    assert cycles == []


def test_the_cli_module_is_only_wiring():
    assert len((ROOT / "cli.py").read_text().splitlines()) <= 350


def test_every_model_of_the_registry_is_built_by_its_family():
    from pipelines.motion_transfer.backbones import BACKBONES, BUILTIN_MODELS
    from pipelines.motion_transfer.models import ARCH_MODELS, TINY_MODELS

    assert BUILTIN_MODELS == {**{name: family for family, name in TINY_MODELS.items()},
                              **{name: family for family, name in ARCH_MODELS.items()}}
    assert set(TINY_MODELS) == set(ARCH_MODELS) == set(BACKBONES)
