"""What a backbone (a video-model family) tells the pipeline core.

The core — inversion and its cache, the initial latent, the guided loop, the losses, the fine-tune and
the outputs — is written once against :class:`Backbone`; one subclass per family (``zeroscope.py``,
``animatediff.py``, ``wan.py``) says what differs: which denoiser class it drives (a UNet, or Wan's
transformer) and how it is called, how the outputs of its recorded layers become ``(B, F, C, H, W)``,
how prompts and frames are encoded, which sampler runs it, which models it builds in code and how it
loads a checkpoint. The defaults here are the UNet families' (a per-frame 2-D VAE, a CLIP text encoder,
DDIM). Settings (native size, guidance scale, trained modules) live in
:data:`sma_guidance.config.FAMILY_PRESETS`, the single source of defaults; what follows from a loaded
model's architecture (the recorded layers, :meth:`Backbone.default_feature_layers`) is derived here.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from einops import rearrange

from sma_guidance.errors import UserError


class Backbone:
    """A video-model family. Subclasses set the class attributes and override what differs."""

    #: family id, the key of :data:`~sma_guidance.config.FAMILY_PRESETS` and what adapters and cache keys record
    name: str = ""
    #: the denoiser class the family builds from a configuration
    unet_type: type = torch.nn.Module
    #: the denoiser component's class name(s) that identify the family
    unet_classes: tuple[str, ...] = ()
    #: the pipeline component that holds the denoiser (``unet``, or ``transformer`` for a DiT)
    denoiser_component: str = "unet"
    #: move the text encoder off the GPU between prompt encodings (a large encoder, e.g. UMT5-XXL)
    offloads_text_encoder: bool = False
    #: the VAE encodes frames one by one (``vae_batch_size`` per call), not the clip as a whole
    per_frame_vae: bool = True
    #: the half precision ``--dtype auto`` picks on a GPU
    half_dtype: torch.dtype = torch.float16
    #: the VAE's dtype whatever the run's (``None``: the run's)
    vae_dtype: torch.dtype | None = None
    #: model names built in code (no download): name -> builder of the components
    builtin: dict[str, Callable[[], dict[str, Any]]] = {}
    #: one line naming what a user passes for this family (for error messages)
    accepts: str = ""

    #: the submodule list, in each UNet up block, of the temporal layer that follows each resnet
    temporal_layers: str = "temp_convs"
    #: what the fine-tune may train, by name (``SMAConfig.trainable_modules``): regular expressions over
    #: the denoiser's submodule names. "vmc" is VMC's recipe: the temporal attentions' q / k / v.
    trainable_sets: dict[str, str] = {
        "vmc": r"temp_attentions\..*\.to_[qkv]$",
        # ours (the default before VMC's recipe): the UNet3D's input temporal transformer as well
        "vmc+transformer_in": r"(temp_attentions|transformer_in)\..*\.to_[qkv]$",
    }

    def trainable_pattern(self, trainable_modules: str) -> str:
        """The regular expression of ``trainable_modules``: a named set of this family's, or a pattern as it is."""
        return self.trainable_sets.get(trainable_modules, trainable_modules)

    def default_feature_layers(self, denoiser: torch.nn.Module) -> tuple[str, ...]:
        """The layers recorded when the user names none, read off the loaded architecture: DMT's decoder
        block 1, i.e. the first up block after the lowest resolution that runs text cross-attention
        (``up_blocks.1`` of Zeroscope and SD 1.5; any up block after the first when none attends),
        and in it the resnet DMT records (``resnets.1``, the last when there is one), the temporal layer
        after that resnet and the block's upsampler when it has one. On Zeroscope's UNet this gives
        DMT's published ``up_blocks.1.resnets.1.conv2``, ``up_blocks.1.temp_convs.1``,
        ``up_blocks.1.upsamplers.0``."""
        blocks = list(getattr(denoiser, "up_blocks", None) or [])
        if not blocks:
            raise UserError(
                f"this {type(denoiser).__name__} has no up blocks to record DMT's decoder features from; "
                f"name the layers with --feature-layers"
            )
        later = list(enumerate(blocks))[1:] or [(0, blocks[0])]
        index, block = next(((i, b) for i, b in later if getattr(b, "attentions", None)), later[0])
        resnet = min(1, len(block.resnets) - 1)
        layers = [f"up_blocks.{index}.resnets.{resnet}.conv2"]
        temporal = getattr(block, self.temporal_layers, None)
        if temporal is not None and len(temporal) > resnet:
            layers.append(f"up_blocks.{index}.{self.temporal_layers}.{resnet}")
        if getattr(block, "upsamplers", None):
            layers.append(f"up_blocks.{index}.upsamplers.0")
        return tuple(layers)

    def check(self, pipe: Any, config: Any) -> None:
        """Raise a one-line :class:`~sma_guidance.errors.UserError` when ``config`` (an
        :class:`~sma_guidance.config.SMAConfig`) asks what this family's model (in ``pipe``) cannot do."""

    # ------------------------------------------------------------------------- model calls
    def unet_call(
        self, unet: torch.nn.Module, latents: torch.Tensor, t: int | torch.Tensor, embedding: torch.Tensor
    ) -> torch.Tensor:
        """Noise prediction ``(B, C, F, h, w)`` for latents ``(B, C, F, h, w)`` and a text embedding
        ``(B, L, D)`` (one per video). Both go in at the denoiser's dtype: ``from_pretrained`` without
        ``torch_dtype`` leaves a float16 checkpoint's text encoder in float16 (transformers) and the
        denoiser in float32 (diffusers)."""
        return unet(latents.to(unet.dtype), t, encoder_hidden_states=embedding.to(unet.dtype)).sample

    def features_to_frames(self, output: torch.Tensor, num_frames: int) -> torch.Tensor:
        """A recorded layer's output as ``(B, F, C, H, W)``. The UNets of both families run their 2-D
        layers on frames stacked in the batch, ``(B·F, C, H, W)``, frames of one video adjacent."""
        if output.shape[0] % num_frames:
            raise RuntimeError(f"recorded output of shape {tuple(output.shape)} does not split into {num_frames} frames")
        return rearrange(output, "(b f) ... -> b f ...", f=num_frames)

    def feature_frames(self, pipe: Any, config: Any) -> int:
        """Frames of the recorded features: the video's (a per-frame VAE keeps them all)."""
        return config.num_frames

    def feature_reshaper(self, pipe: Any, config: Any) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """``(output, frames) -> (B, F, C, H, W)`` for the recorded layers at ``config``'s size."""
        return self.features_to_frames

    def latent_frame_groups(self, vae: Any, num_frames: int) -> list[tuple[int, int]]:
        """Per latent frame, the video frames ``(start, stop)`` it holds: one each for a per-frame VAE."""
        return [(i, i + 1) for i in range(num_frames)]

    def latent_shape(self, pipe: Any, config: Any) -> tuple[int, ...]:
        """Shape ``(1, C, F, h, w)`` of the latents of a ``config``-sized video."""
        factor = pipe.vae_scale_factor
        return (1, pipe.denoiser.config.in_channels, config.num_frames, config.height // factor, config.width // factor)

    def attention_processor(self, config: Any) -> Any:
        """The attention processor ``config.attention`` selects for this family's models, or ``None`` to
        leave the models' own."""
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        return AttnProcessor2_0() if config.attention == "sdpa" else AttnProcessor()

    def sampling_scheduler(self, scheduler: Any) -> Any:
        """The scheduler the core samples and inverts with, made from the checkpoint's: a DDIM scheduler
        as it is; any other noise-prediction scheduler (PNDM, Euler, ...) as DDIM on its betas, timestep
        spacing and offset, without x̂₀ clipping unless its configuration asks for it (DDIM's own default
        clips to [−1, 1], which is wrong for latents: a scheduler that does not mention it never meant it)."""
        from diffusers import DDIMScheduler

        if isinstance(scheduler, DDIMScheduler):
            return scheduler
        if "beta_schedule" not in scheduler.config:
            raise UserError(f"a {type(scheduler).__name__} cannot drive a noise-prediction UNet; pass a DDIM-compatible scheduler")
        return DDIMScheduler.from_config(scheduler.config, clip_sample=bool(scheduler.config.get("clip_sample", False)))

    # ------------------------------------------------------------------------- text and VAE
    @torch.no_grad()
    def encode_prompt(self, pipe: Any, prompt: str) -> torch.Tensor:
        """CLIP text embedding ``(1, L, D)`` of ``prompt``, padded to the tokenizer's length."""
        tokens = pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        return pipe.text_encoder(tokens.input_ids.to(pipe.device))[0]

    @torch.no_grad()
    def encode_video(self, pipe: Any, frames: torch.Tensor, batch_size: int = 1) -> torch.Tensor:
        """Scaled VAE latents ``(1, C, F, h, w)`` of frames ``(F, 3, H, W)``, ``batch_size`` frames per
        call, posterior mean (so the latent, and the inversion cached from it, are deterministic)."""
        frames = frames.to(pipe.device, pipe.vae.dtype)
        latents = torch.cat([pipe.vae.encode(chunk).latent_dist.mode() for chunk in frames.split(batch_size)])
        return self.frame_batch_to_latents(latents * pipe.vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode_latents(self, pipe: Any, latents: torch.Tensor, batch_size: int = 1) -> torch.Tensor:
        """Frames ``(1, F, 3, H, W)`` in [0, 1] of latents ``(1, C, F, h, w)``, ``batch_size`` per call."""
        frames = self.latents_to_frame_batch(latents) / pipe.vae.config.scaling_factor
        images = torch.cat([pipe.vae.decode(chunk.to(pipe.vae.dtype)).sample for chunk in frames.split(batch_size)])
        return (images.float() / 2 + 0.5).clamp(0, 1)[None]

    # ------------------------------------------------------------------------- latents <-> frames
    @staticmethod
    def latents_to_frame_batch(latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(1, C, F, h, w)`` → per-frame VAE latents ``(F, C, h, w)``."""
        return latents[0].permute(1, 0, 2, 3)

    @staticmethod
    def frame_batch_to_latents(latents: torch.Tensor) -> torch.Tensor:
        """Per-frame VAE latents ``(F, C, h, w)`` → video latents ``(1, C, F, h, w)``."""
        return latents.permute(1, 0, 2, 3)[None]

    # ------------------------------------------------------------------------- built from configurations
    def component_types(self) -> tuple[type, type]:
        """The VAE and text-encoder classes, to build them from configurations (``bench memory``)."""
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel

        return AutoencoderKL, CLIPTextModel

    def placeholder_tokenizer(self) -> Any:
        """A tokenizer built in code for a model built from configurations (ids only change cost nothing)."""
        from .tokenizers import build_tiny_tokenizer

        return build_tiny_tokenizer()

    def default_scheduler(self) -> Any:
        """A scheduler of this family's kind with its usual settings (for a model built from configurations)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------- fine-tune
    def train_adapter(self, pipe: Any, latents: torch.Tensor, embedding: torch.Tensor, config: Any,
                      progress: Callable[[int], Any] | None = None) -> Any:
        """The motion fine-tune of ``pipe``'s denoiser on the clip's latents ``(1, C, F, h, w)`` with the source
        prompt's ``embedding``: VMC's recipe plus SMA's terms on the projections of ``config.trainable_modules``
        (:func:`~pipelines.motion_transfer.finetune.train_motion_adapter`). Returns the
        :class:`~pipelines.motion_transfer.finetune.MotionAdapter`; the model is left as it was."""
        from ..finetune import train_motion_adapter

        return train_motion_adapter(
            pipe.denoiser,
            pipe.scheduler.alphas_cumprod,
            latents,
            embedding,
            trainable_modules=self.trainable_pattern(config.trainable_modules),
            prediction_type=pipe.scheduler.config.prediction_type,
            **self.fine_tune_settings(pipe, config, progress),
        )

    def fine_tune_settings(self, pipe: Any, config: Any, progress: Callable[[int], Any] | None) -> dict[str, Any]:
        """What every family's fine-tune takes from ``config`` and ``pipe``: steps, optimizer, checkpointing,
        seed, the objective's weights and spectral settings, the loss scale, and the adapter's provenance."""
        return dict(
            steps=config.train_steps,
            learning_rate=config.train_learning_rate,
            weight_decay=config.train_weight_decay,
            max_grad_norm=config.train_max_grad_norm,
            gradient_checkpointing=config.gradient_checkpointing,
            seed=config.seed,
            base_model=pipe.model_name,
            family=self.name,
            unet_call=pipe.model_prediction,
            progress=progress,
            lambda_global=config.train_lambda_global,
            lambda_local=config.train_lambda_local,
            residual=config.residual,
            loss_scaling=config.loss_scaling,
            loss_scale=config.loss_scale,
            **config.spectral_settings,
        )

    # ------------------------------------------------------------------------- loading
    def load(self, pipeline_cls: type, model: str, index: dict[str, Any], torch_dtype: torch.dtype | None,
             motion_adapter: str | None, **kwargs: Any) -> Any:
        """A pipeline of ``pipeline_cls`` from the folder or Hub id ``model`` whose ``model_index.json``
        is ``index``. Errors are :class:`~sma_guidance.errors.UserError`."""
        raise NotImplementedError


__all__ = ["Backbone"]
