"""Diffusers pipelines of sma-guide: SMA motion transfer on text-to-video models of several families.

The product path is :mod:`pipelines.motion_transfer` (its families in
:mod:`pipelines.motion_transfer.backbones`); the benchmarks are :mod:`pipelines.bench`, the shapes model's
trainer :mod:`pipelines.training`, the web page and batch runner :mod:`pipelines.frontends`.

``from pipelines import SMAMotionTransferPipeline`` stays the way in. The names below load on first use, so
that importing a light module of this package (the CLI's) does not import torch and diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "SMAMotionTransferPipeline": "pipelines.motion_transfer.pipeline_sma",
    "SMAPipelineOutput": "pipelines.motion_transfer.pipeline_sma",
    "TINY_RANDOM": "pipelines.motion_transfer.backbones.zeroscope",
    "build_tiny_random": "pipelines.motion_transfer.backbones.zeroscope",
    "export_to_video": "sma_guidance.video_io",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
