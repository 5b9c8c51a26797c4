"""DDIM inversion of a video latent, and an on-disk cache of its results.

The inversion runs diffusers' :class:`~diffusers.DDIMInverseScheduler` from the clean latent up the
noise levels and keeps the latent at every timestep the sampler will need (its own DDIM timesteps), so
the guidance can compute reference features at exactly those noise levels. The cache is keyed by
everything the result depends on — the preprocessed video, the model's weights and configuration, the
source prompt, the step counts, the size, the frame count and the dtype — so a second run with another
target prompt skips the inversion.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable

import torch
from diffusers import DDIMInverseScheduler
from safetensors.torch import load_file, save_file

from sma_guidance.atomic import atomic_write, disk_full_message, is_disk_full
from sma_guidance.errors import UserAdvice, UserError


def inversion_timesteps(scheduler_config: dict, inversion_steps: int) -> torch.Tensor:
    """The ascending timesteps of a ``inversion_steps``-step DDIM inversion."""
    inverse = DDIMInverseScheduler.from_config(scheduler_config)
    inverse.set_timesteps(inversion_steps)
    return inverse.timesteps


def check_timesteps_covered(scheduler_config: dict, inversion_steps: int, needed: Iterable[int]) -> None:
    """Raise a :class:`UserError` when the inversion would skip a timestep the sampler needs."""
    available = set(inversion_timesteps(scheduler_config, inversion_steps).tolist())
    missing = sorted(set(int(t) for t in needed) - available)
    if missing:
        raise UserError(
            f"inversion_steps={inversion_steps} does not pass through the sampling timesteps (e.g. t={missing[0]}); "
            f"use 999 or a multiple of the sampling steps that divides 1000"
        )


@torch.no_grad()
def ddim_invert(
    unet: torch.nn.Module,
    scheduler_config: dict,
    latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    inversion_steps: int,
    keep_timesteps: Iterable[int],
    progress: Callable[[int], object] | None = None,
) -> dict[int, torch.Tensor]:
    """DDIM-invert ``latents`` and return ``{timestep: latent}`` for every timestep in ``keep_timesteps``.

    Args:
        unet: a noise-prediction UNet3D, called as ``unet(x, t, encoder_hidden_states=...)``.
        scheduler_config: the pipeline scheduler's config (betas, offset, spacing).
        latents: clean latents ``(B, C, F, h, w)``, already scaled by the VAE's scaling factor.
        encoder_hidden_states: the source prompt's embedding ``(B, L, D)``.
        inversion_steps: number of DDIM steps from t ≈ 0 up to t ≈ 1000.
        keep_timesteps: the timesteps whose latents are returned (each must lie on the inversion path).
        progress: a callable taking the number of steps, returning a tqdm-like bar (``update``/``close``).

    Returns:
        a dict from timestep to the latent ``x_t`` ``(B, C, F, h, w)``, same dtype and device as ``latents``.
    """
    keep = sorted(set(int(t) for t in keep_timesteps))
    check_timesteps_covered(scheduler_config, inversion_steps, keep)
    inverse = DDIMInverseScheduler.from_config(scheduler_config)
    inverse.set_timesteps(inversion_steps, device=latents.device)
    # The inversion stops at the noisiest timestep the sampler needs: later steps would be wasted.
    timesteps = [t for t in inverse.timesteps.tolist() if t <= keep[-1]]
    bar = progress(len(timesteps)) if progress else None
    kept: dict[int, torch.Tensor] = {}
    sample = latents
    for t in timesteps:
        noise = unet(sample, t, encoder_hidden_states=encoder_hidden_states).sample
        sample = inverse.step(noise, t, sample).prev_sample
        if t in keep:
            kept[t] = sample.clone()
        if bar is not None:
            bar.update(1)
    if bar is not None and hasattr(bar, "close"):
        bar.close()
    return kept


# ---------------------------------------------------------------------------------------- cache
def public_config(config: object) -> dict:
    """A diffusers/transformers config as a plain dict without its private ``_`` entries, which hold
    loader bookkeeping (``_use_default_values`` is built from a set, so its order changes between
    processes and would make every cache key different)."""
    items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {key: value for key, value in items.items() if not str(key).startswith("_")}


def model_fingerprint(*modules: torch.nn.Module) -> str:
    """A cheap content hash of models: their configurations plus a slice of every weight tensor."""
    digest = hashlib.sha256()
    for module in modules:
        config = getattr(module, "config", None)
        if config is not None:
            digest.update(json.dumps(public_config(config), sort_keys=True, default=str).encode())
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            head = tensor.detach().flatten()[:64].to("cpu", torch.float32)
            digest.update(head.numpy().tobytes())
    return digest.hexdigest()


def inversion_cache_key(video: torch.Tensor, fingerprint: str, **settings: object) -> str:
    """Hash of the preprocessed ``video`` ``(F, 3, H, W)``, the model fingerprint and ``settings``."""
    digest = hashlib.sha256()
    digest.update(video.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest.update(fingerprint.encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


class InversionCache:
    """Inverted latents on disk, one safetensors file per key under ``<root>/inversions/``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.folder = Path(root) / "inversions"

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def load(self, key: str, device: torch.device | str) -> dict[int | float, torch.Tensor] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path), device=str(device))
        except Exception:
            # A truncated or foreign file is a cache miss, not an error: it is rewritten.
            return None
        return {_timestep(name[1:]): tensor for name, tensor in tensors.items()}

    def save(self, key: str, latents: dict[int | float, torch.Tensor]) -> Path | None:
        """Write atomically; a cache that cannot be written is skipped (the run itself goes on; a full disk
        says so in one warning line, :class:`UserAdvice`, with the path and the space needed). Float
        timesteps (flow matching) are written with ``repr``, which reads back to the same float."""
        needed = sum(x.numel() * x.element_size() for x in latents.values())
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.path(key), needed=needed) as tmp:
                save_file({f"t{t}": x.detach().contiguous().cpu() for t, x in latents.items()}, str(tmp))
            return self.path(key)
        except UserError as error:  # atomic_write's full-disk message; the half-written entry is gone
            warnings.warn(f"the inversion is not cached: {error}", UserAdvice, stacklevel=2)
            return None
        except OSError as error:
            if is_disk_full(error):
                warnings.warn(f"the inversion is not cached: {disk_full_message(self.path(key), needed)}", UserAdvice,
                              stacklevel=2)
            return None


def _timestep(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


__all__ = [
    "InversionCache",
    "check_timesteps_covered",
    "ddim_invert",
    "inversion_cache_key",
    "inversion_timesteps",
    "model_fingerprint",
    "public_config",
]
