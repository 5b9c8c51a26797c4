"""What a backbone (a video-model family) tells the pipeline core.

The core — inversion and its cache, the initial latent, the guided loop, the losses, the fine-tune and
the outputs — is written once against :class:`Backbone`; one subclass per family (``zeroscope.py``,
``animatediff.py``) says what differs: which UNet class it drives, how that UNet is called, how the
outputs of its recorded layers become ``(B, F, C, H, W)``, which models it builds in code and how it
loads a checkpoint. Defaults (recorded layers, trained modules, native size) live in
:data:`sma_guidance.config.FAMILY_PRESETS`, the single source of defaults.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from einops import rearrange

from sma_guidance.config import FAMILY_PRESETS


class Backbone:
    """A video-model family. Subclasses set the class attributes and override what differs."""

    #: family id, the key of :data:`FAMILY_PRESETS` and what adapters and cache keys record
    name: str = ""
    #: the UNet class the family builds from a configuration
    unet_type: type = torch.nn.Module
    #: the ``unet`` component's class name(s) that identify the family
    unet_classes: tuple[str, ...] = ()
    #: model names built in code (no download): name -> builder of the components
    builtin: dict[str, Callable[[], dict[str, Any]]] = {}
    #: one line naming what a user passes for this family (for error messages)
    accepts: str = ""

    @property
    def preset(self) -> dict[str, Any]:
        return FAMILY_PRESETS[self.name]

    @property
    def default_layers(self) -> tuple[str, ...]:
        """The layers recorded by default (the counterpart of DMT's decoder block 1)."""
        from sma_guidance.config import SMAConfig

        return tuple(self.preset.get("feature_layers", SMAConfig().feature_layers))

    def check(self, unet: torch.nn.Module, config: Any) -> None:
        """Raise a one-line :class:`~sma_guidance.errors.UserError` when ``config`` (an
        :class:`~sma_guidance.config.SMAConfig`) asks what this family's ``unet`` cannot do."""

    # ------------------------------------------------------------------------- model calls
    def unet_call(self, unet: torch.nn.Module, latents: torch.Tensor, t: int, embedding: torch.Tensor) -> torch.Tensor:
        """Noise prediction ``(B, C, F, h, w)`` for latents ``(B, C, F, h, w)`` and a text embedding
        ``(B, L, D)`` (one per video)."""
        return unet(latents.to(unet.dtype), t, encoder_hidden_states=embedding).sample

    def features_to_frames(self, output: torch.Tensor, num_frames: int) -> torch.Tensor:
        """A recorded layer's output as ``(B, F, C, H, W)``. The UNets of both families run their 2-D
        layers on frames stacked in the batch, ``(B·F, C, H, W)``, frames of one video adjacent."""
        if output.shape[0] % num_frames:
            raise RuntimeError(f"recorded output of shape {tuple(output.shape)} does not split into {num_frames} frames")
        return rearrange(output, "(b f) ... -> b f ...", f=num_frames)

    # ------------------------------------------------------------------------- latents <-> frames
    @staticmethod
    def latents_to_frame_batch(latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(1, C, F, h, w)`` → per-frame VAE latents ``(F, C, h, w)``."""
        return latents[0].permute(1, 0, 2, 3)

    @staticmethod
    def frame_batch_to_latents(latents: torch.Tensor) -> torch.Tensor:
        """Per-frame VAE latents ``(F, C, h, w)`` → video latents ``(1, C, F, h, w)``."""
        return latents.permute(1, 0, 2, 3)[None]

    # ------------------------------------------------------------------------- loading
    def load(self, pipeline_cls: type, model: str, index: dict[str, Any], torch_dtype: torch.dtype | None,
             motion_adapter: str | None, **kwargs: Any) -> Any:
        """A pipeline of ``pipeline_cls`` from the folder or Hub id ``model`` whose ``model_index.json``
        is ``index``. Errors are :class:`~sma_guidance.errors.UserError`."""
        raise NotImplementedError


__all__ = ["Backbone"]
