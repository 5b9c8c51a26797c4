"""The Zeroscope family: ModelScope's text-to-video ``UNet3DConditionModel`` (Zeroscope, the bundled
shapes model, ``tiny-random``, ``zeroscope-arch``).

Everything the pipeline did before the backbone seam is this family's behaviour: the UNet takes latents
``(B, C, F, h, w)`` and one text embedding per video, its 2-D layers and temporal convolutions work on
``(B·F, C, H, W)``, and a checkpoint loads with ``from_pretrained`` as it is.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet3DConditionModel

from .. import components
from ..components import TINY_RANDOM, ZEROSCOPE_ARCH, from_pretrained
from .base import Backbone


def _build(name: str) -> Any:
    """``components.<name>`` looked up when called (the builders live, and are replaced in tests, there)."""
    return lambda: getattr(components, name)()


class ZeroscopeBackbone(Backbone):
    name = "zeroscope"
    unet_type = UNet3DConditionModel
    unet_classes = ("UNet3DConditionModel",)
    builtin = {TINY_RANDOM: _build("build_tiny_random"), ZEROSCOPE_ARCH: _build("build_zeroscope_arch")}
    accepts = "zeroscope (a UNet3DConditionModel video model, e.g. cerspense/zeroscope_v2_576w, shapes, tiny-random)"

    def load(self, pipeline_cls: type, model: str, index: dict[str, Any], torch_dtype: torch.dtype | None,
             motion_adapter: str | None, **kwargs: Any) -> Any:
        return from_pretrained(pipeline_cls, model, torch_dtype=torch_dtype, **kwargs)


__all__ = ["ZeroscopeBackbone"]
