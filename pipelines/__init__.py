"""Diffusers pipelines of sma-guide: SMA motion transfer on text-to-video models of several families
(:mod:`pipelines.backbones`: Zeroscope's UNet3D, AnimateDiff's UNetMotionModel)."""

from sma_guidance.video_io import export_to_video

from .components import TINY_RANDOM, build_tiny_random
from .sma_pipeline import SMAMotionTransferPipeline, SMAPipelineOutput

__all__ = ["SMAMotionTransferPipeline", "SMAPipelineOutput", "TINY_RANDOM", "build_tiny_random", "export_to_video"]
