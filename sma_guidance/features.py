"""Record a network's intermediate outputs with forward hooks.

:class:`FeatureRecorder` hooks named submodules with ``register_forward_hook`` — the model is neither
wrapped nor edited — and reshapes their ``(B·F, D, H, W)`` outputs to ``(B, F, D, H, W)`` (or as a
model family's ``to_frames`` says). With
``stop_after_last=True`` a forward raises a private exception as soon as every named layer has fired,
so the rest of the network (for DMT's decoder block 1: the later up blocks and the output head) never
runs; :meth:`FeatureRecorder.run` swallows it and returns the features.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from einops import rearrange
from torch import nn

from .errors import UserError


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once every recorded layer has fired."""


class FeatureRecorder:
    """Record outputs of ``layer_names`` (dotted submodule names of ``model``).

    Use as a context manager; hooks exist only inside the ``with`` block::

        with FeatureRecorder(unet, ["up_blocks.1.temp_convs.1"], num_frames=24, stop_after_last=True) as rec:
            feats = rec.run(unet, latents, t, encoder_hidden_states=emb)  # {name: (B, F, D, H, W)}

    Args:
        model: the module whose submodules are hooked.
        layer_names: dotted names as in ``model.named_modules()``.
        num_frames: frames per video; outputs of shape ``(B·F, ...)`` are split into ``(B, F, ...)``.
        stop_after_last: end the forward once all layers have been recorded.
        to_frames: ``(output, num_frames) -> (B, F, D, H, W)`` for a model whose layers lay frames out
            otherwise (default: outputs ``(B·F, ...)`` with the frames of a video adjacent).
    """

    def __init__(
        self,
        model: nn.Module,
        layer_names: Iterable[str],
        num_frames: int,
        stop_after_last: bool = False,
        to_frames: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.to_frames = to_frames
        self.layer_names = tuple(layer_names)
        self.num_frames = num_frames
        self.stop_after_last = stop_after_last
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        modules = dict(model.named_modules())
        missing = [name for name in self.layer_names if name not in modules]
        if missing:
            raise UserError(
                f"layer {missing[0]!r} is not a submodule of the {type(model).__name__}; "
                f"pick names from model.named_modules(), e.g. {', '.join(list(modules)[1:4])}"
            )
        if len(set(self.layer_names)) != len(self.layer_names):
            raise UserError("feature layers are listed more than once; name each layer once")
        self._modules = [modules[name] for name in self.layer_names]

    # ---------------------------------------------------------------- hooks
    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.features[name] = (self.to_frames or self._split_frames)(output, self.num_frames)
            if self.stop_after_last and len(self.features) == len(self.layer_names):
                raise _StopForward

        return hook

    @staticmethod
    def _split_frames(output: torch.Tensor, num_frames: int) -> torch.Tensor:
        if output.shape[0] % num_frames:
            raise RuntimeError(f"recorded output of shape {tuple(output.shape)} does not split into {num_frames} frames")
        return rearrange(output, "(b f) ... -> b f ...", f=num_frames)

    def __enter__(self) -> "FeatureRecorder":
        self.attach()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def attach(self) -> None:
        if self._handles:
            return
        self._handles = [
            module.register_forward_hook(self._hook(name)) for name, module in zip(self.layer_names, self._modules)
        ]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.features = {}

    # ---------------------------------------------------------------- running
    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Call ``fn(*args, **kwargs)`` (usually the model) and return the recorded features.

        The forward stops early when ``stop_after_last`` is set. Raises if a layer did not fire.
        """
        if not self._handles:
            raise RuntimeError("FeatureRecorder.run needs the hooks attached: use it inside `with recorder:`")
        self.features = {}
        try:
            fn(*args, **kwargs)
        except _StopForward:
            pass
        missing = [name for name in self.layer_names if name not in self.features]
        if missing:
            raise RuntimeError(f"layer {missing[0]} did not run during the forward pass")
        features, self.features = dict(self.features), {}
        return features


__all__ = ["FeatureRecorder"]
