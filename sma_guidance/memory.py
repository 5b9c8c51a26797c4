"""Memory of the guidance backward: activation checkpointing with hooks, and a tensor-memory counter.

The latent optimization back-propagates through the UNet down to the recorded decoder layers, so
autograd keeps every intermediate activation of that forward. With checkpointing, chosen submodules
keep only their inputs; their insides are recomputed during the backward. This uses PyTorch's
composable ``checkpoint`` API, which installs a forward pre-hook and a forward hook on each module
(no wrapper modules, no edited ``forward``): the model's code and names stay as diffusers wrote them.

Granularities (measured in pipelines/bench/RESULTS.md, "What the memory and speed options cost"):

- ``"blocks"``: each top-level UNet block (``down_blocks.i``, ``mid_block``, ``up_blocks.j``), or each
  transformer block of a DiT (Wan's ``blocks.i``);
- ``"layers"``: each resnet, temporal convolution, spatial and temporal transformer (UNet3D) or
  motion module (AnimateDiff's UNetMotionModel) inside them, or a DiT block's self-attention,
  cross-attention and feed-forward —
  more recomputation bookkeeping, less memory at the peak of the backward.

A module that holds a recorded layer is never checkpointed: its output feeds the loss directly, and
the forward may end inside it (the early stop).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .config import CHECKPOINTING
from .errors import UserError

_BLOCK_PARENTS = ("down_blocks", "up_blocks", "blocks")
_LAYER_PARENTS = ("resnets", "temp_convs", "attentions", "temp_attentions", "motion_modules")
# a diffusion transformer's block (Wan's ``blocks.i``): self-attention, cross-attention, feed-forward
_TRANSFORMER_LAYERS = ("attn1", "attn2", "ffn")


def _holds(name: str, recorded: Iterable[str]) -> bool:
    return any(layer == name or layer.startswith(name + ".") or name.startswith(layer + ".") for layer in recorded)


def checkpoint_units(model: nn.Module, granularity: str, recorded: Iterable[str] = ()) -> list[str]:
    """Names of the submodules of a video UNet that ``granularity`` checkpoints, in forward order.

    Args:
        model: a ``UNet3DConditionModel`` or ``UNetMotionModel`` (any module whose blocks follow
            diffusers' naming).
        granularity: one of :data:`CHECKPOINTING`.
        recorded: layer names whose outputs the caller reads; modules holding one are skipped.
    """
    if granularity not in CHECKPOINTING:
        raise UserError(f"activation checkpointing must be one of {', '.join(CHECKPOINTING)} (got {granularity!r})")
    recorded = tuple(recorded)
    names = []
    for name, _ in model.named_modules():
        parts = name.split(".")
        if granularity == "blocks":
            unit = (len(parts) == 2 and parts[0] in _BLOCK_PARENTS) or name == "mid_block"
        elif granularity == "layers":
            unit = (len(parts) >= 2 and parts[-2] in _LAYER_PARENTS and parts[-1].isdigit()) or (
                len(parts) == 3 and parts[0] == "blocks" and parts[2] in _TRANSFORMER_LAYERS
            )
        else:
            unit = False
        if unit and not _holds(name, recorded):
            names.append(name)
    return names


@contextlib.contextmanager
def activation_checkpointing(model: nn.Module, names: Iterable[str]) -> Iterator[None]:
    """Inside the block, the submodules ``names`` of ``model`` recompute their activations in the backward.

    Outputs and gradients are unchanged (the recomputation runs the same operations on the same
    inputs). The hooks are installed on first use and stay, switched off, outside the block, so
    entering it again costs nothing.
    """
    names = list(names)
    if not names:
        yield
        return
    try:
        from torch.distributed._composable import checkpoint
    except ImportError:  # builds without torch.distributed (some Windows/macOS wheels)
        raise UserError(
            "activation checkpointing needs a PyTorch build with torch.distributed; use --activation-checkpointing off"
        ) from None
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise UserError(f"{missing[0]!r} is not a submodule of the {type(model).__name__}")
    states = []
    for name in names:
        module = modules[name]
        if checkpoint.state(module) is None:
            checkpoint(module)
        states.append(checkpoint.state(module))
    for state in states:
        state.enable_hook = True
    try:
        yield
    finally:
        for state in states:
            state.enable_hook = False


class TensorMemory(TorchDispatchMode):
    """Count the bytes of tensor storage created inside the block: ``current`` (still alive) and
    ``peak`` (the most alive at once).

    Each storage is counted once, when an operator first returns it, and uncounted when it is freed;
    storages that existed before (weights, inputs — pass them to :meth:`exclude`) are never counted,
    nor are views of them. It sees every operator, forward and backward, on real tensors and equally
    on fake (shape-only) ones — so under ``FakeTensorMode`` it gives the memory a computation *would*
    take without running it. It counts tensors, not the allocator: no caching-allocator rounding or
    fragmentation, no CUDA context, no library workspaces.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, tuple[int, Any]] = {}

    def exclude(self, tensors: Iterable[torch.Tensor]) -> TensorMemory:
        """Never count these tensors' storages (they were allocated before the block)."""
        for tensor in tensors:
            self._live.setdefault(tensor.untyped_storage()._cdata, (0, None))
        return self

    def _freed(self, key: int) -> None:
        self.current -= self._live.pop(key, (0, None))[0]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self._live:
                    size = storage.nbytes()
                    self._live[key] = (size, weakref.ref(storage, lambda _, key=key: self._freed(key)))
                    self.current += size
                    self.peak = max(self.peak, self.current)
        return out


__all__ = ["CHECKPOINTING", "TensorMemory", "activation_checkpointing", "checkpoint_units"]
