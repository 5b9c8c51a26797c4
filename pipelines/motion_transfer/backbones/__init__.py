"""Backbones: one module per video-model family, and the detection of a model's family.

A family is recognised from the model's own ``model_index.json`` — its ``_class_name`` and the class
of its ``unet`` (or ``transformer``) component — never from the model's name; a loaded pipeline's
family is that of its denoiser's class. The models built in code (``tiny-random``, ``zeroscope-arch``,
``tiny-random-animatediff``, ``animatediff-arch``, ``tiny-random-wan``, ``wan2.1-1.3b-arch``) belong to
the family that builds them.

============  =====================================  ===========================================
family        denoiser                               pass
============  =====================================  ===========================================
zeroscope     unet ``UNet3DConditionModel``          a video model (``TextToVideoSDPipeline``)
animatediff   unet ``UNetMotionModel``               a saved AnimateDiff folder, or an SD 1.5
              (SD 1.5's ``UNet2DConditionModel``)    image model with ``--motion-adapter``
wan           transformer ``WanTransformer3DModel``  a Wan 2.1 text-to-video model (``WanPipeline``)
============  =====================================  ===========================================
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from sma_guidance.errors import UserError

from ..hub import explain_load_error, quiet_loading
from ..models import BUNDLED_MODELS
from .animatediff import AnimateDiffBackbone
from .base import Backbone
from .wan import WanBackbone
from .zeroscope import ZeroscopeBackbone

BACKBONES: dict[str, Backbone] = {
    backbone.name: backbone for backbone in (ZeroscopeBackbone(), AnimateDiffBackbone(), WanBackbone())
}
#: models built in code, by name -> their family
BUILTIN_MODELS: dict[str, str] = {name: family for family, b in BACKBONES.items() for name in b.builtin}
IMAGE_UNET = "UNet2DConditionModel"


def supported() -> str:
    return "; ".join(backbone.accepts for backbone in BACKBONES.values())


def backbone_of(unet: torch.nn.Module) -> Backbone:
    """The family of a loaded denoiser (UNet or transformer), from its class."""
    name = type(unet).__name__
    for backbone in BACKBONES.values():
        if name in backbone.unet_classes:
            return backbone
    raise UserError(f"no backbone drives a {name}; supported: {supported()}")


def component_class(index: dict[str, Any], name: str) -> str | None:
    """The class named for component ``name`` in a ``model_index.json`` (``["diffusers", "X"]``)."""
    entry = index.get(name)
    return entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None


def describe_index(index: dict[str, Any]) -> str:
    """What a ``model_index.json`` says, in a few words: ``_class_name 'X' (unet: Y, vae: Z, ...)``."""
    parts = [f"{name}: {component_class(index, name)}" for name in index
             if not name.startswith("_") and component_class(index, name)]
    return f"_class_name {index.get('_class_name')!r} ({', '.join(parts) or 'no components'})"


def detect_backbone(index: dict[str, Any], model: str, motion_adapter: str | None = None) -> Backbone:
    """The family of the model whose ``model_index.json`` is ``index``; a one-line :class:`UserError`
    naming what was found and what is supported when no family fits (or the motion adapter does not)."""
    unet = component_class(index, "unet") or component_class(index, "transformer")
    found = describe_index(index)
    if unet == IMAGE_UNET:
        if not motion_adapter:
            raise UserError(
                f"{model} is an image model ({found}); to drive it as AnimateDiff add --motion-adapter ADAPTER "
                f"(e.g. guoyww/animatediff-motion-adapter-v1-5-3)"
            )
        return BACKBONES["animatediff"]
    for backbone in BACKBONES.values():
        if unet in backbone.unet_classes:
            if motion_adapter and backbone.name != "animatediff":
                raise UserError(
                    f"--motion-adapter goes with an SD 1.5 image model, but {model} is a {backbone.name}-family "
                    f"video model ({found}); drop --motion-adapter"
                )
            return backbone
    raise UserError(f"unknown model family: {model} has {found}; supported: {supported()}")


def read_model_index(model: str, local: bool) -> dict[str, Any]:
    """``model_index.json`` of a local folder or a Hub id (from the local cache when offline)."""
    try:
        if local:
            return json.loads((Path(model).expanduser() / "model_index.json").read_text())
        from diffusers import DiffusionPipeline

        with quiet_loading(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # hub client deprecations: a failure is one UserError
            return dict(DiffusionPipeline.load_config(model))
    except Exception as err:  # noqa: BLE001 — unreadable JSON, not cached offline, unknown id...
        raise UserError(explain_load_error(model, local, err)) from None


def model_family(model: str, motion_adapter: str | None = None) -> str | None:
    """The family of ``model`` when it can be told cheaply (a built-in name, a bundled model, a local
    folder, a Hub id in the local cache), else ``None``: loading the model then reports the problem."""
    if model in BUILTIN_MODELS:
        return BUILTIN_MODELS[model]
    if motion_adapter:
        return "animatediff"  # the one family that takes a motion adapter (loading checks that it fits)
    source = str(BUNDLED_MODELS.get(model, model))
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            index = json.loads((path / "model_index.json").read_text())
        else:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "model_index.json")
            if not isinstance(cached, str):
                return None
            index = json.loads(Path(cached).read_text())
        return detect_backbone(index, model, motion_adapter).name
    except Exception:  # noqa: BLE001 — any problem surfaces, with its explanation, when the model loads
        return None


__all__ = [
    "BACKBONES",
    "BUILTIN_MODELS",
    "BUNDLED_MODELS",
    "Backbone",
    "backbone_of",
    "component_class",
    "detect_backbone",
    "model_family",
    "read_model_index",
]
