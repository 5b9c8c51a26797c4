"""Diffusers pipelines of sma-guide: zero-shot SMA motion transfer on a text-to-video UNet3D."""

from sma_guidance.video_io import export_to_video

from .components import TINY_RANDOM, build_tiny_random
from .sma_pipeline import SMAMotionTransferPipeline, SMAPipelineOutput

__all__ = ["SMAMotionTransferPipeline", "SMAPipelineOutput", "TINY_RANDOM", "build_tiny_random", "export_to_video"]
