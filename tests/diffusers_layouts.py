"""Tiny model folders saved by diffusers' own pipeline classes, as a Hub checkpoint of each family lays
its repository out: ``TextToVideoSDPipeline`` (Zeroscope), ``AnimateDiffPipeline``, an SD 1.5-style
``StableDiffusionPipeline`` with SD 1.5's PNDM scheduler plus a separate ``MotionAdapter`` (AnimateDiff
as the README loads it), and ``WanPipeline``. Seeded random weights, a few hundred kB each; the UNets
come in any number of levels and the Wan transformer in any number of blocks, so that the rules that read
layers off an architecture meet more than one size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AnimateDiffPipeline,
    DDIMScheduler,
    MotionAdapter,
    PNDMScheduler,
    StableDiffusionPipeline,
    TextToVideoSDPipeline,
    UNet2DConditionModel,
    UNet3DConditionModel,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)

from pipelines.motion_transfer.backbones.wan import build_tiny_wan
from pipelines.motion_transfer.backbones.zeroscope import ZEROSCOPE_SCHEDULER_CONFIG, build_tiny_random

# Stable Diffusion 1.5's scheduler as its repository ships it (scheduler/scheduler_config.json of
# runwayml/stable-diffusion-v1-5): PNDM on scaled_linear betas. Not AnimateDiff's sampler.
SD15_SCHEDULER_CONFIG = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
}


def _block_types(levels: int, three_d: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Down and up block types of an SD-like UNet of ``levels`` levels: text cross-attention in every
    level but the lowest (SD 1.5's and Zeroscope's pattern)."""
    kind = "3D" if three_d else "2D"
    down = tuple(f"CrossAttnDownBlock{kind}" for _ in range(levels - 1)) + (f"DownBlock{kind}",)
    up = (f"UpBlock{kind}",) + tuple(f"CrossAttnUpBlock{kind}" for _ in range(levels - 1))
    return down, up


def _channels(levels: int) -> tuple[int, ...]:
    return tuple(16 * min(2**i, 2) for i in range(levels))


def _seeded(seed: int):
    torch.manual_seed(seed)


def save_text_to_video_sd(folder: Path, levels: int = 3, seed: int = 0) -> Path:
    """A tiny Zeroscope (``UNet3DConditionModel`` of ``levels`` levels, Zeroscope's DDIM) saved by
    ``TextToVideoSDPipeline``."""
    parts = build_tiny_random(seed)
    down, up = _block_types(levels, three_d=True)
    with torch.random.fork_rng(devices=[]):
        _seeded(seed + 1)
        unet = UNet3DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, down_block_types=down, up_block_types=up,
            block_out_channels=_channels(levels), layers_per_block=2, cross_attention_dim=32,
            attention_head_dim=4, norm_num_groups=8,
        ).eval()
    pipe = TextToVideoSDPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                                 unet=unet, scheduler=DDIMScheduler(**ZEROSCOPE_SCHEDULER_CONFIG))
    pipe.save_pretrained(folder)
    return folder


def _image_unet_and_adapter(levels: int, seed: int) -> tuple[UNet2DConditionModel, MotionAdapter]:
    down, up = _block_types(levels, three_d=False)
    channels = _channels(levels)
    with torch.random.fork_rng(devices=[]):
        _seeded(seed + 1)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, down_block_types=down, up_block_types=up,
            block_out_channels=channels, layers_per_block=2, cross_attention_dim=32, attention_head_dim=4,
            norm_num_groups=8,
        ).eval()
        adapter = MotionAdapter(block_out_channels=channels, motion_layers_per_block=2, motion_num_attention_heads=2,
                                motion_norm_num_groups=8, motion_max_seq_length=32, use_motion_mid_block=False)
    return unet, adapter


def save_sd15_base_and_adapter(folder: Path, levels: int = 3, seed: int = 0) -> tuple[Path, Path]:
    """A tiny SD 1.5-style image model saved by ``StableDiffusionPipeline`` with SD 1.5's own PNDM
    scheduler, and a matching ``MotionAdapter`` saved beside it: ``(base, adapter)`` folders."""
    parts = build_tiny_random(seed)
    unet, adapter = _image_unet_and_adapter(levels, seed)
    StableDiffusionPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], unet=unet,
        scheduler=PNDMScheduler(**SD15_SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder / "base")
    adapter.save_pretrained(folder / "adapter")
    return folder / "base", folder / "adapter"


def save_animatediff(folder: Path, levels: int = 3, seed: int = 0, scheduler=None) -> Path:
    """A tiny AnimateDiff saved by ``AnimateDiffPipeline`` (its ``unet`` a ``UNetMotionModel``, the motion
    adapter beside it). The scheduler defaults to SD 1.5's PNDM, which ``AnimateDiffPipeline.from_pretrained
    (SD15_BASE, motion_adapter=...)`` keeps when such a pipeline is saved."""
    parts = build_tiny_random(seed)
    unet, adapter = _image_unet_and_adapter(levels, seed)
    pipe = AnimateDiffPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                               unet=unet, motion_adapter=adapter,
                               scheduler=scheduler or PNDMScheduler(**SD15_SCHEDULER_CONFIG))
    pipe.save_pretrained(folder)
    return folder


def save_wan(folder: Path, num_layers: int = 4, seed: int = 0) -> Path:
    """A tiny Wan (``WanTransformer3DModel`` of ``num_layers`` blocks) saved by ``WanPipeline`` with the
    Hub's scheduler: UniPC on flow sigmas, shift 3."""
    parts = build_tiny_wan(seed)
    with torch.random.fork_rng(devices=[]):
        _seeded(seed + 1)
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
            text_dim=32, freq_dim=32, ffn_dim=32, num_layers=num_layers, rope_max_seq_len=64,
        ).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)
    WanPipeline(tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"], vae=parts["vae"],
                scheduler=scheduler, transformer=transformer).save_pretrained(folder)
    return folder


__all__ = ["SD15_SCHEDULER_CONFIG", "save_animatediff", "save_sd15_base_and_adapter", "save_text_to_video_sd", "save_wan"]
