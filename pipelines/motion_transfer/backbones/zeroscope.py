"""The Zeroscope family: ModelScope's text-to-video ``UNet3DConditionModel`` (Zeroscope, the bundled
shapes model, ``tiny-random``, ``zeroscope-arch``).

Everything the pipeline did before the backbone seam is this family's behaviour: the UNet takes latents
``(B, C, F, h, w)`` and one text embedding per video, its 2-D layers and temporal convolutions work on
``(B·F, C, H, W)``, and a checkpoint loads with ``from_pretrained`` as it is.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..hub import from_pretrained
from ..models import ARCH_MODELS, TINY_MODELS
from .base import Backbone
from .tokenizers import build_tiny_tokenizer

TINY_RANDOM = TINY_MODELS["zeroscope"]
ZEROSCOPE_ARCH = ARCH_MODELS["zeroscope"]

# Zeroscope's scheduler (scheduler/scheduler_config.json of cerspense/zeroscope_v2_576w).
ZEROSCOPE_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}



def build_small_video_model(
    tokenizer: CLIPTokenizer,
    text_width: int,
    vae_channels: tuple[int, ...],
    unet_channels: tuple[int, int, int],
    latent_size: int,
    cross_attention_blocks: tuple[bool, bool, bool],
    attention_head_dim: int,
    norm_groups: int,
    vae_norm_groups: int,
    text_layers: int = 2,
) -> dict[str, Any]:
    """Untrained components in Zeroscope's classes at a small size.

    The VAE downsamples by ``2 ** (len(vae_channels) - 1)``; the UNet has three blocks so that decoder
    block 1 has the resnets, temporal convolutions and upsampler that DMT records;
    ``cross_attention_blocks`` says which of its (down) blocks attend to the text (mirrored going up).
    """
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_width,
            intermediate_size=2 * text_width,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
        block_out_channels=vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=vae_norm_groups,
        sample_size=latent_size * 2 ** (len(vae_channels) - 1),
    )
    down = tuple("CrossAttnDownBlock3D" if attend else "DownBlock3D" for attend in cross_attention_blocks)
    up = tuple("CrossAttnUpBlock3D" if attend else "UpBlock3D" for attend in reversed(cross_attention_blocks))
    unet = UNet3DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=unet_channels,
        layers_per_block=1,
        cross_attention_dim=text_width,
        attention_head_dim=attention_head_dim,
        norm_num_groups=norm_groups,
    )
    scheduler = DDIMScheduler(**ZEROSCOPE_SCHEDULER_CONFIG)
    for module in (text_encoder, vae, unet):
        module.eval()
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler}


def build_tiny_random(seed: int = 0) -> dict[str, Any]:
    """Components of a toy Zeroscope-shaped model with seeded random weights (≈1 M parameters);
    the VAE downsamples by 8 like Zeroscope's."""
    with torch.random.fork_rng(devices=[]):  # seeded weights without moving the caller's random stream
        torch.manual_seed(seed)
        return build_small_video_model(
            build_tiny_tokenizer(),
            text_width=32,
            vae_channels=(8, 8, 16, 16),
            unet_channels=(16, 32, 32),
            latent_size=8,
            cross_attention_blocks=(True, True, False),
            attention_head_dim=4,
            norm_groups=8,
            vae_norm_groups=4,
        )


# Zeroscope's architecture (cerspense/zeroscope_v2_576w, the ModelScope text-to-video UNet3D with an
# SD-2 VAE and OpenCLIP ViT-H/14 text tower), from its published component configs.
ZEROSCOPE_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1024,
    "attention_head_dim": 64,
}
ZEROSCOPE_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 768,
    "scaling_factor": 0.18215,
}
ZEROSCOPE_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 512,
}


def build_zeroscope_arch(seed: int = 0) -> dict[str, Any]:
    """Zeroscope's exact UNet3D / VAE / text-encoder architecture with seeded random weights (≈1.8 B
    parameters, 7 GB in float32), built from the configs above without any download: for measuring
    full-scale speed and memory anywhere. Its output is noise. The tokenizer is the byte-level one of
    ``tiny-random`` (ids within the 49,408-token vocabulary; a real tokenizer would only change ids)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_tiny_tokenizer(max_length=77)
        text_encoder = CLIPTextModel(CLIPTextConfig(**ZEROSCOPE_TEXT_CONFIG, bos_token_id=tokenizer.bos_token_id,
                                                    eos_token_id=tokenizer.eos_token_id,
                                                    pad_token_id=tokenizer.pad_token_id))
        vae = AutoencoderKL(**ZEROSCOPE_VAE_CONFIG)
        unet = UNet3DConditionModel(**ZEROSCOPE_UNET_CONFIG)
    for module in (text_encoder, vae, unet):
        module.eval()
    scheduler = DDIMScheduler(**ZEROSCOPE_SCHEDULER_CONFIG)
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler}


def _build(name: str) -> Any:
    """This module's builder ``name``, looked up when called (tests replace it here)."""
    return lambda: globals()[name]()


class ZeroscopeBackbone(Backbone):
    name = "zeroscope"
    unet_type = UNet3DConditionModel
    unet_classes = ("UNet3DConditionModel",)
    builtin = {TINY_RANDOM: _build("build_tiny_random"), ZEROSCOPE_ARCH: _build("build_zeroscope_arch")}
    accepts = "zeroscope (a UNet3DConditionModel video model, e.g. cerspense/zeroscope_v2_576w, shapes, tiny-random)"

    def default_scheduler(self) -> Any:
        return DDIMScheduler(**ZEROSCOPE_SCHEDULER_CONFIG)

    def load(self, pipeline_cls: type, model: str, index: dict[str, Any], torch_dtype: torch.dtype | None,
             motion_adapter: str | None, **kwargs: Any) -> Any:
        return from_pretrained(pipeline_cls, model, torch_dtype=torch_dtype, **kwargs)


__all__ = [
    "TINY_RANDOM",
    "ZEROSCOPE_ARCH",
    "ZEROSCOPE_SCHEDULER_CONFIG",
    "ZeroscopeBackbone",
    "build_small_video_model",
    "build_tiny_random",
    "build_zeroscope_arch",
]
