"""Reading models from folders and the Hugging Face Hub: diffusers' ``from_pretrained`` without the
loaders' chatter, and its failures as one line a user can act on."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from sma_guidance.errors import UserError


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def looks_local(model: str) -> bool:
    return Path(model).expanduser().exists() or model.startswith((".", "/", "~")) or model.count("/") > 1


def from_pretrained(pipeline_cls: type, model: str, torch_dtype: torch.dtype | None = None, **kwargs: Any) -> Any:
    """``pipeline_cls.from_pretrained(model)`` quietly, its failures as one :class:`UserError`. A folder's own
    code never runs (``trust_remote_code=False``: a component naming a module of the folder is refused), and
    a pickle weight file is read only by torch's ``weights_only`` loader (diffusers' default; safetensors are
    preferred where both exist)."""
    kwargs["trust_remote_code"] = False
    try:
        with quiet_loading():
            return pipeline_cls.from_pretrained(model, torch_dtype=torch_dtype, **kwargs)
    except UserError:
        raise
    except Exception as err:  # diffusers raises OSError, ValueError, EnvironmentError, hub errors...
        raise UserError(explain_load_error(model, looks_local(model), err)) from None


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence the loaders' chatter (hub retries, deprecations): failures surface as one UserError."""
    diffusers_level = diffusers_logging.get_verbosity()
    transformers_level = transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        diffusers_logging.set_verbosity(diffusers_level)
        transformers_logging.set_verbosity(transformers_level)


def explain_load_error(model: str, local: bool, err: Exception) -> str:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if local:
        return f"cannot load the model folder {model}: {detail} — check that it holds all weights (model_index.json and each component)"
    if offline():
        return (
            f"model {model!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: download it "
            f"once on a connected machine (`hf download {model}`), or pass --model PATH to a local diffusers folder"
        )
    name = type(err).__name__
    if "RepositoryNotFound" in name or "404" in detail:
        return f"unknown model id {model!r} on the Hugging Face Hub — check the spelling or pass a local folder"
    return f"cannot load model {model!r}: {detail} — check the id, your network, or pass a local folder"


__all__ = ["explain_load_error", "from_pretrained", "looks_local", "offline", "quiet_loading"]
