"""Loss scaling for backward passes through a float16 network (Micikevicius et al., *Mixed Precision
Training*, 2018; the rule of ``torch.amp.GradScaler``, which DMT's own code runs its guidance under).

The guidance objective is a mean over ~10⁷ feature elements (Zeroscope's decoder block 1 at 24 × 320 × 576),
so the gradient reaching a float16 layer is tiny: measured on features with decoder block 1's shape and
smooth O(1) statistics, DMT's term gives ~5·10⁻⁹ per element, below float16's smallest subnormal
(6·10⁻⁸), and flushes to zero before the backward pass even enters the network. Multiplying the loss by
a scale ``S`` moves those gradients into float16's range; dividing the float32 gradient of the leaf
(the latent, or a fine-tune's float32 master weights) by ``S`` afterwards gives the true gradient, so the
optimizer — Adam's update and its ε included — sees exactly what it would see without scaling.

A *dynamic* scale starts at ``initial`` and, when a backward produces inf or NaN (float16 overflow),
halves and recomputes the same iteration (forward and backward again), so no step is skipped; after
``growth_interval`` finite backwards in a row it doubles, up to ``largest``. A *static* scale only halves.
bfloat16 has float32's exponent range, so nothing underflows there: scaling is for float16 alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from .config import LOSS_SCALINGS
from .errors import UserError

__all__ = ["LOSS_SCALINGS", "LossScale", "scaled_backward"]


@dataclass
class LossScale:
    """The scale of one optimization (its state changes as :func:`scaled_backward` runs).

    Attributes:
        value: the current scale ``S`` (1 and ``enabled=False``: plain backward).
        enabled: whether the loss is scaled at all.
        dynamic: grow by ``growth_factor`` after ``growth_interval`` finite backwards in a row.
        growth_interval, growth_factor, backoff_factor, largest: the dynamic rule.
        good_steps: finite backwards since the last change of ``value``.
        retries: backwards recomputed after an overflow, over the optimization.
        last: the scale of the last backward that counted.
    """

    value: float = 2.0**16
    enabled: bool = True
    dynamic: bool = True
    growth_interval: int = 10
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    largest: float = 2.0**24
    good_steps: int = 0
    retries: int = 0
    last: float = 1.0

    @classmethod
    def for_run(cls, mode: str, initial: float, dtype: torch.dtype) -> "LossScale":
        """The scale a run uses: ``mode`` one of :data:`LOSS_SCALINGS`, on only for a float16 network."""
        if mode not in LOSS_SCALINGS:
            raise UserError(f"loss_scaling must be one of {', '.join(LOSS_SCALINGS)} (got {mode!r})")
        if mode == "off" or dtype != torch.float16:
            return cls(value=1.0, enabled=False, dynamic=False)
        if not (math.isfinite(initial) and initial > 0):
            raise UserError(f"loss_scale must be a positive number (got {initial}); 65536 is the usual start")
        return cls(value=float(initial), dynamic=mode == "dynamic")

    def update(self, finite: bool) -> None:
        """After a backward: back off on an overflow, grow after enough finite ones (when dynamic)."""
        if not finite:
            self.value *= self.backoff_factor
            self.good_steps = 0
            self.retries += 1
            return
        self.good_steps += 1
        if self.dynamic and self.good_steps >= self.growth_interval:
            self.value = min(self.value * self.growth_factor, self.largest)
            self.good_steps = 0


def _finite(tensors: Iterable[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t.grad).all()) for t in tensors if t.grad is not None)


def scaled_backward(
    objective: Callable[[], dict[str, torch.Tensor]],
    leaves: list[torch.Tensor],
    scale: LossScale,
    max_attempts: int = 30,
) -> dict[str, torch.Tensor]:
    """Evaluate ``objective()`` (a dict whose ``"total"`` is the scalar loss) and backpropagate it into the
    ``.grad`` of ``leaves`` (float32 tensors: the latent, or master weights), scaled by ``scale.value``
    and divided back, so the gradients are the true ones. On inf / NaN in a gradient the scale backs off
    and the objective is evaluated again; a loss that is itself not finite is a :class:`UserError`
    (scaling cannot help a forward pass that overflows). Returns the terms of the attempt that counted."""
    for _ in range(max_attempts):
        for leaf in leaves:
            leaf.grad = None
        terms = objective()
        total = terms["total"]
        if not bool(torch.isfinite(total.detach())):
            raise UserError(
                f"the objective is {float(total.detach())} in the forward pass of a half-precision model; "
                f"run in float32 (--dtype float32) or, on GPUs that have it, bfloat16"
            )
        if not scale.enabled:
            total.backward()
            return terms
        used = scale.value
        (total * used).backward()
        finite = _finite(leaves)
        scale.update(finite)
        if finite:
            for leaf in leaves:
                if leaf.grad is not None:
                    leaf.grad.div_(used)
            scale.last = used
            return terms
    raise UserError(
        f"the gradient stayed inf/NaN after {max_attempts} backwards with ever smaller loss scales; run in float32 "
        f"(--dtype float32)"
    )
