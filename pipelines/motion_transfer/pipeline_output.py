"""The output of :class:`~pipelines.motion_transfer.pipeline_sma.SMAMotionTransferPipeline`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusers.utils import BaseOutput


@dataclass
class SMAPipelineOutput(BaseOutput):
    """Result of :class:`~pipelines.motion_transfer.pipeline_sma.SMAMotionTransferPipeline`.

    Attributes:
        frames: the generated video, ``(1, F, H, W, 3)`` floats in [0, 1] for ``output_type="np"``
            (``frames[0]`` goes straight to ``export_to_video``), ``(1, F, 3, H, W)`` for ``"pt"``,
            latents ``(1, C, F, h, w)`` for ``"latent"``.
        loss_history: one entry per guided step: timestep, learning rate and, per Adam iteration, the
            objective and its DMT / global / local parts (summed over layers).
        config: the full configuration of the run (``SMAConfig.to_dict()``).
        fps: frame rate that keeps the input clip's duration.
        timings: seconds spent in each stage.
        adapter: the motion adapter used (a :class:`~pipelines.motion_transfer.finetune.MotionAdapter`,
            trained in this call or given), or ``None``; save it with ``out.adapter.save("motion.safetensors")``.
        train_loss_history: per fine-tune step: timestep and the VMC / global / local / total loss.
        sampler: what sampled (and inverted): the scheduler's class and settings (betas, spacing, offset,
            clipping; a flow model's shift and sigmas) and the sampling timesteps.
        windows: the video frames ``[start, stop)`` of each temporal window sampled (one, the whole clip,
            unless the clip is longer than the model's window).
    """

    frames: Any
    loss_history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    fps: float = 8.0
    timings: dict[str, float] = field(default_factory=dict)
    adapter: Any = None
    train_loss_history: list[dict[str, float]] = field(default_factory=list)
    sampler: dict[str, Any] = field(default_factory=dict)
    windows: list[list[int]] = field(default_factory=list)


__all__ = ["SMAPipelineOutput"]
