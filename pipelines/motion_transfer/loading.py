"""Loading a pipeline by name, folder or Hub id: the family is detected from the model's own
``model_index.json`` (:mod:`pipelines.motion_transfer.backbones`), whose module loads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sma_guidance.errors import UserError

from .backbones import BACKBONES, BUILTIN_MODELS, BUNDLED_MODELS, detect_backbone, read_model_index
from .hub import looks_local


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for but no CUDA GPU is available; use --device cpu")
    return resolved


# The names a dtype may be given by (torch's own and the short ones users type), to the dtype.
DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``dtype`` as a torch dtype: a torch dtype (float32, float16, bfloat16) as it is, its name (with or
    without ``torch.``, or fp32 / fp16 / half / bf16), or ``"auto"``: float16 on a GPU, float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES.values():
            raise UserError(f"dtype {dtype} is not supported; use torch.float32, torch.float16 or torch.bfloat16")
        return dtype
    name = str(dtype).strip().lower().removeprefix("torch.")
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPE_NAMES:
        raise UserError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16 (or a torch dtype)")
    return DTYPE_NAMES[name]


def load_pipeline(
    pipeline_cls: type, model: str, torch_dtype: torch.dtype | None = None, motion_adapter: str | None = None, **kwargs: Any
) -> Any:
    """``pipeline_cls`` holding ``model``'s components, with errors a user can act on.

    ``model`` is a model built in code (``tiny-random``, ``zeroscope-arch``, ``tiny-random-animatediff``,
    ``animatediff-arch``), a bundled model, a local diffusers folder, or a Hub id (downloaded once, then
    read from the local cache; safetensors are preferred when the repository has them). Its family is
    detected from its ``model_index.json`` (:mod:`pipelines.backbones`), whose module loads it;
    ``motion_adapter`` (AnimateDiff) turns an SD 1.5 image model into a ``UNetMotionModel``.
    """
    if model in BUILTIN_MODELS:
        backbone = BACKBONES[BUILTIN_MODELS[model]]
        if motion_adapter:
            raise UserError(
                f"--motion-adapter goes with an SD 1.5 image model, but {model} is a built-in {backbone.name}-family "
                f"model; drop --motion-adapter"
            )
        components = backbone.builtin[model]()
        if torch_dtype not in (None, torch.float32):
            for name in ("vae", "text_encoder", "unet"):
                components[name].to(torch_dtype)
        pipe = pipeline_cls(**components)
        pipe.register_to_config(_name_or_path=model)
        return pipe

    if model in BUNDLED_MODELS:
        folder = BUNDLED_MODELS[model]
        if not (folder / "model_index.json").is_file():
            raise UserError(
                f"the bundled {model} model is missing from {folder}; reinstall sma-guide or train it with "
                f"`python -m pipelines.shapes_training`"
            )
        pipe = load_pipeline(pipeline_cls, str(folder), torch_dtype=torch_dtype, motion_adapter=motion_adapter, **kwargs)
        pipe.register_to_config(_name_or_path=model)
        return pipe

    path = Path(model).expanduser()
    local = looks_local(model)
    if local:
        if not path.is_dir():
            raise UserError(f"model folder not found: {model} — pass a diffusers folder, a Hub id or tiny-random")
        if not (path / "model_index.json").is_file():
            raise UserError(
                f"{model} is not a diffusers pipeline folder (no model_index.json); save one with "
                f"pipe.save_pretrained(folder) or pass a Hub id"
            )
    source = str(path) if local else model
    index = read_model_index(source, local)
    return detect_backbone(index, model, motion_adapter).load(pipeline_cls, source, index, torch_dtype, motion_adapter, **kwargs)


__all__ = ["DTYPE_NAMES", "load_pipeline", "resolve_device", "resolve_dtype"]
