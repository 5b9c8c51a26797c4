"""The AnimateDiff family: diffusers' ``UNetMotionModel`` — an SD 1.5-class image UNet
(``UNet2DConditionModel``) with a ``MotionAdapter``'s motion modules after each of its layers.

What differs from Zeroscope: the UNet takes latents ``(B, C, F, h, w)`` like a UNet3D but runs every
layer on ``(B·F, ...)``, and its cross-attention needs the text embedding once per *frame*
(``(B·F, L, D)``, as diffusers' ``AnimateDiffPipeline`` repeats it); a checkpoint is either a saved
AnimateDiff folder (its ``unet`` a ``UNetMotionModel``) or an SD 1.5 image model plus a motion adapter
(``--model BASE --motion-adapter ADAPTER``, each a Hub id or a local folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, UNetMotionModel
from diffusers import MotionAdapter as DiffusersMotionAdapter
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sma_guidance.errors import UserError

from ..hub import explain_load_error, from_pretrained, quiet_loading
from ..models import ARCH_MODELS, TINY_MODELS
from .base import Backbone
from .tokenizers import build_tiny_tokenizer
from .zeroscope import build_tiny_random

TINY_RANDOM_ANIMATEDIFF = TINY_MODELS["animatediff"]
ANIMATEDIFF_ARCH = ARCH_MODELS["animatediff"]

# AnimateDiff's sampler (guoyww/AnimateDiff's inference configs, the schedule its motion modules were
# trained on): DDIM on SD's beta range with a *linear* schedule (SD 1.5's own is scaled_linear), no x̂₀
# clipping, leading timesteps with offset 1. diffusers' AnimateDiff docs use the same with linspace spacing.
ANIMATEDIFF_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
# Stable Diffusion 1.5's components (runwayml/stable-diffusion-v1-5: unet, vae, CLIP ViT-L/14 text tower).
SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
# AnimateDiff v3's motion modules for SD 1.5 (guoyww/animatediff-motion-adapter-v1-5-3): two per down
# block, three per up block, none in the middle block, 8 heads, up to 32 frames.
MOTION_ADAPTER_CONFIG: dict[str, Any] = {
    "block_out_channels": (320, 640, 1280, 1280),
    "motion_layers_per_block": 2,
    "motion_mid_block_layers_per_block": 1,
    "motion_num_attention_heads": 8,
    "motion_norm_num_groups": 32,
    "motion_max_seq_length": 32,
    "use_motion_mid_block": False,
}
# SD 1.5's text cross-attention width; SD 2.x has the same UNet channels with 1024.
SD15_CROSS_ATTENTION_DIM = 768
SUPPORTED = "animatediff (an SD 1.5 image model with an SD 1.5 motion adapter, or a saved AnimateDiff folder)"


# ------------------------------------------------------------------------------------------ building
def animatediff_scheduler(checkpoint_config: dict[str, Any] | None = None) -> DDIMScheduler:
    """AnimateDiff's sampler; with a checkpoint's scheduler configuration, its training-step count and
    prediction type kept (everything else is AnimateDiff's)."""
    config = dict(ANIMATEDIFF_SCHEDULER_CONFIG)
    for key in ("num_train_timesteps", "prediction_type"):
        if checkpoint_config and checkpoint_config.get(key) is not None:
            config[key] = checkpoint_config[key]
    return DDIMScheduler(**config)


def motion_unet_config(unet_config: dict[str, Any], adapter_config: dict[str, Any]) -> dict[str, Any]:
    """The ``UNetMotionModel`` configuration that ``UNetMotionModel.from_unet2d`` makes of an image UNet
    and a motion adapter with these configurations (built on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        adapter = DiffusersMotionAdapter.from_config(adapter_config)
        model = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
    return {key: value for key, value in dict(model.config).items() if not key.startswith("_")}


def build_tiny_animatediff(seed: int = 0) -> dict[str, Any]:
    """A toy AnimateDiff with seeded random weights: ``tiny-random``'s VAE, text encoder and tokenizer,
    and a ``UNetMotionModel`` made by diffusers' ``from_unet2d`` of a three-block image UNet and a motion
    adapter, so that ``up_blocks.1`` has the resnets, motion modules and upsampler recorded by default."""
    parts = build_tiny_random(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        unet2d = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            cross_attention_dim=parts["text_encoder"].config.hidden_size,
            attention_head_dim=4,
            norm_num_groups=8,
        )
        adapter = DiffusersMotionAdapter(
            block_out_channels=(16, 32, 32),
            motion_layers_per_block=1,
            motion_num_attention_heads=2,
            motion_norm_num_groups=8,
            motion_max_seq_length=32,
            use_motion_mid_block=False,
        )
        with quiet_loading():  # from_unet2d's notice about casting with .to()
            unet = UNetMotionModel.from_unet2d(unet2d, adapter).eval()
    return {**parts, "unet": unet, "scheduler": animatediff_scheduler()}


def build_animatediff_arch(seed: int = 0) -> dict[str, Any]:
    """SD 1.5 + AnimateDiff v3's exact architecture with seeded random weights (≈1.4 B parameters), built
    without any download: for ``bench speed`` and ``bench memory`` at full scale. Its output is noise."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_tiny_tokenizer(max_length=77)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG, bos_token_id=tokenizer.bos_token_id,
                                                    eos_token_id=tokenizer.eos_token_id,
                                                    pad_token_id=tokenizer.pad_token_id))
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
        unet = UNetMotionModel.from_config(motion_unet_config(SD15_UNET_CONFIG, MOTION_ADAPTER_CONFIG))
    for module in (text_encoder, vae, unet):
        module.eval()
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet,
            "scheduler": animatediff_scheduler()}


# ------------------------------------------------------------------------------------------ checks
def check_adapter_fits(unet_config: dict[str, Any], adapter_config: dict[str, Any], model: str, adapter: str) -> None:
    """Raise a one-line :class:`UserError` unless the motion adapter fits the image UNet as SD 1.5's."""
    if unet_config.get("addition_embed_type") == "text_time":
        raise UserError(
            f"--model {model} is an SDXL-class image model (addition_embed_type text_time); motion adapters "
            f"are supported on SD 1.5 bases — pass an SD 1.5 checkpoint"
        )
    base_channels = tuple(unet_config.get("block_out_channels", ()))
    adapter_channels = tuple(adapter_config.get("block_out_channels", ()))
    if base_channels != adapter_channels:
        raise UserError(
            f"motion adapter {adapter} is for a UNet with channels {adapter_channels}, but {model}'s UNet has "
            f"{base_channels}; pass an SD 1.5 base with an SD 1.5 motion adapter"
        )
    layers = unet_config.get("layers_per_block")
    motion_layers = adapter_config.get("motion_layers_per_block")
    if layers != motion_layers:
        raise UserError(
            f"motion adapter {adapter} has {motion_layers} motion modules per block, but {model}'s UNet has "
            f"{layers} layers per block; pass an SD 1.5 base with an SD 1.5 motion adapter"
        )
    cross = unet_config.get("cross_attention_dim")
    if base_channels == tuple(SD15_UNET_CONFIG["block_out_channels"]) and cross != SD15_CROSS_ATTENTION_DIM:
        raise UserError(
            f"--model {model} is not an SD 1.5 base (text cross-attention width {cross}, SD 1.5's is "
            f"{SD15_CROSS_ATTENTION_DIM}; SD 2.x has 1024); motion adapters are supported on SD 1.5 bases"
        )


def _adapter_config(adapter: str) -> tuple[dict[str, Any], str]:
    """The motion adapter's ``config.json`` and where to load it from (a folder or a Hub id)."""
    path = Path(adapter).expanduser()
    if path.is_file():
        raise UserError(
            f"--motion-adapter {adapter} is a file; it takes a diffusers MotionAdapter folder or Hub id (e.g. "
            f"guoyww/animatediff-motion-adapter-v1-5-3) — a motion adapter saved by sma-guide goes to --adapter"
        )
    local = path.exists() or adapter.startswith((".", "/", "~")) or adapter.count("/") > 1
    if local:
        if not path.is_dir():
            raise UserError(f"motion adapter folder not found: {adapter} — pass a MotionAdapter folder or a Hub id")
        if (path / "model_index.json").is_file():
            found = json.loads((path / "model_index.json").read_text()).get("_class_name", "?")
            raise UserError(
                f"--motion-adapter {adapter} is a whole pipeline ({found}), not a MotionAdapter; pass it as --model "
                f"or pass a MotionAdapter folder or Hub id (e.g. guoyww/animatediff-motion-adapter-v1-5-3)"
            )
        if not (path / "config.json").is_file():
            raise UserError(f"{adapter} is not a diffusers MotionAdapter folder (no config.json)")
    try:
        with quiet_loading():
            config = DiffusersMotionAdapter.load_config(str(path) if local else adapter)
    except Exception as err:  # noqa: BLE001 — not cached offline, unknown id, unreadable JSON...
        raise UserError(explain_load_error(adapter, local, err)) from None
    found = config.get("_class_name")
    if found != "MotionAdapter":
        raise UserError(
            f"--motion-adapter {adapter} holds a {found or 'model of unknown class'}, not a MotionAdapter; supported: "
            f"diffusers MotionAdapters for SD 1.5 (e.g. guoyww/animatediff-motion-adapter-v1-5-3)"
        )
    return dict(config), str(path) if local else adapter


class AnimateDiffBackbone(Backbone):
    name = "animatediff"
    unet_type = UNetMotionModel
    unet_classes = ("UNetMotionModel",)
    builtin = {TINY_RANDOM_ANIMATEDIFF: build_tiny_animatediff, ANIMATEDIFF_ARCH: build_animatediff_arch}
    accepts = SUPPORTED
    # the motion module after each resnet: the temporal transformer, where the frames meet, in the place
    # of DMT's temporal convolution
    temporal_layers = "motion_modules"
    # VMC's recipe on AnimateDiff: the motion modules' attention projections (both attentions of an
    # AnimateDiff motion module attend over frames)
    trainable_sets = {"vmc": r"motion_modules\..*\.to_[qkv]$"}

    def check(self, pipe: Any, config: Any) -> None:
        """The motion modules' positional embedding covers ``motion_max_seq_length`` frames: one window's."""
        most = pipe.denoiser.config.get("motion_max_seq_length", 32)
        if config.window_frames > most:
            what = "--window" if config.windowed else "--frames"
            raise UserError(
                f"{what} {config.window_frames} is more than this AnimateDiff's motion modules take at once ({most}); "
                f"pass --window {most} or fewer (16 is AnimateDiff's native clip): longer clips go in windows"
            )

    def default_scheduler(self) -> Any:
        return animatediff_scheduler()

    def sampling_scheduler(self, scheduler: Any) -> Any:
        """A DDIM scheduler as it is (a saved AnimateDiff folder's choice); any other — an SD 1.5 base's PNDM
        on scaled_linear betas, which AnimateDiffPipeline keeps when it is saved — becomes AnimateDiff's
        own sampler (:data:`ANIMATEDIFF_SCHEDULER_CONFIG`)."""
        if isinstance(scheduler, DDIMScheduler):
            return scheduler
        return animatediff_scheduler(scheduler.config)

    def unet_call(self, unet: torch.nn.Module, latents: torch.Tensor, t: int, embedding: torch.Tensor) -> torch.Tensor:
        """As the UNet3D's, but the text embedding ``(B, L, D)`` goes in once per frame, ``(B·F, L, D)``
        (the frames sit in the batch of every cross-attention)."""
        return super().unet_call(unet, latents, t, embedding.repeat_interleave(latents.shape[2], dim=0))

    def load(self, pipeline_cls: type, model: str, index: dict[str, Any], torch_dtype: torch.dtype | None,
             motion_adapter: str | None, **kwargs: Any) -> Any:
        unet_class = (index.get("unet") or [None, None])[1]
        if unet_class == "UNetMotionModel":
            if motion_adapter:
                raise UserError(
                    f"--model {model} is already an AnimateDiff model (its unet is a UNetMotionModel); drop "
                    f"--motion-adapter, or pass its SD 1.5 base as --model"
                )
            return from_pretrained(pipeline_cls, model, torch_dtype=torch_dtype, **kwargs)
        adapter = str(motion_adapter)  # detection lets an image UNet through only with a motion adapter
        adapter_config, adapter_source = _adapter_config(adapter)
        try:
            with quiet_loading():
                unet_config = UNet2DConditionModel.load_config(model, subfolder="unet")
        except Exception as err:  # noqa: BLE001
            raise UserError(explain_load_error(model, Path(model).exists(), err)) from None
        check_adapter_fits(dict(unet_config), adapter_config, model, adapter)
        try:
            with quiet_loading():
                parts = {
                    "vae": AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=torch_dtype),
                    "text_encoder": CLIPTextModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=torch_dtype),
                    "tokenizer": CLIPTokenizer.from_pretrained(model, subfolder="tokenizer"),
                    # the image model's scheduler samples images; the motion modules were trained on AnimateDiff's
                    "scheduler": animatediff_scheduler(DDIMScheduler.load_config(model, subfolder="scheduler")),
                }
                unet2d = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=torch_dtype)
                motion = DiffusersMotionAdapter.from_pretrained(adapter_source, torch_dtype=torch_dtype)
        except Exception as err:  # noqa: BLE001
            raise UserError(explain_load_error(model, Path(model).exists(), err)) from None
        with quiet_loading():
            unet = UNetMotionModel.from_unet2d(unet2d, motion).eval()
        pipe = pipeline_cls(unet=unet, **parts)
        pipe.register_to_config(_motion_adapter=motion_adapter)
        return pipe


__all__ = [
    "ANIMATEDIFF_ARCH",
    "ANIMATEDIFF_SCHEDULER_CONFIG",
    "AnimateDiffBackbone",
    "MOTION_ADAPTER_CONFIG",
    "SD15_TEXT_CONFIG",
    "SD15_UNET_CONFIG",
    "SD15_VAE_CONFIG",
    "TINY_RANDOM_ANIMATEDIFF",
    "animatediff_scheduler",
    "build_animatediff_arch",
    "build_tiny_animatediff",
    "check_adapter_fits",
    "motion_unet_config",
]
