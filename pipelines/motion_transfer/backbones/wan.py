"""The Wan 2.1 family: a video diffusion transformer trained with flow matching
(``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``, diffusers' ``WanPipeline``).

What differs from the UNet families:

- the denoiser is a ``WanTransformer3DModel`` (component ``transformer``): latents ``(B, 16, F', h, w)``
  are cut into 1×2×2 patches and every block works on one token sequence ``(B, F'·h/2·w/2, D)``, tokens
  in (frame, row, column) order — a recorded block's output is reshaped back to ``(B, F', D, h/2, w/2)``
  with the patch grid, so DMT's loss and SMA's terms apply unchanged over the *latent* frames;
- its VAE (``AutoencoderKLWan``) is causal 3-D: the first frame alone, then 4 frames per latent frame
  (``F = 4k + 1`` frames → ``F' = k + 1``), 8× spatially; latents are normalized per channel with the
  VAE's ``latents_mean`` / ``latents_std``;
- it predicts a flow velocity: sampling and inversion are the Euler ODE of the scheduler's shifted
  sigmas (:class:`pipelines.samplers.FlowMatchSampler`), with the Hub's ``flow_shift``;
- the text encoder is UMT5-XXL (~11 GB in half precision): prompts are padded to 512 tokens and the
  embedding is zero past each prompt's length (as ``WanPipeline``); on a GPU the encoder is moved to the
  CPU between encodings, so the guided loop does not hold it.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from einops import rearrange
from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

from sma_guidance.errors import UserError

from ..hub import from_pretrained, quiet_loading
from ..models import ARCH_MODELS, TINY_MODELS
from .base import Backbone

TINY_RANDOM_WAN = TINY_MODELS["wan"]
WAN_ARCH = ARCH_MODELS["wan"]
# WanPipeline's prompt length (its __call__'s max_sequence_length).
MAX_SEQUENCE_LENGTH = 512

# Wan2.1-T2V-1.3B's components (transformer/config.json, vae/config.json, text_encoder/config.json and
# scheduler/scheduler_config.json of Wan-AI/Wan2.1-T2V-1.3B-Diffusers).
WAN_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
# AutoencoderKLWan's defaults are Wan 2.1's VAE (base 96 channels, z 16, 4x temporal / 8x spatial).
WAN_VAE_CONFIG: dict[str, Any] = {}
UMT5_XXL_CONFIG: dict[str, Any] = {
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu_new",
    "is_gated_act": True,
    "tie_word_embeddings": False,
}
# The Hub's UniPC scheduler runs flow sigmas with shift 3 (Wan's 480p setting); sampled here with Euler.
WAN_FLOW_SHIFT = 3.0
SUPPORTED = "wan (a WanTransformer3DModel flow-matching video model, e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)"


def flow_scheduler(shift: float = WAN_FLOW_SHIFT, num_train_timesteps: int = 1000) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)


def build_tiny_t5_tokenizer(max_length: int = MAX_SEQUENCE_LENGTH) -> T5TokenizerFast:
    """A T5 (SentencePiece-style unigram) tokenizer over single characters, built in code: every text
    tokenizes and nothing is downloaded. UMT5's own has 256,384 pieces; only the ids differ."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    characters = "abcdefghijklmnopqrstuvwxyz0123456789.,'-"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)] + [(c, -2.0) for c in characters]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.normalizer = None
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=max_length)


def umt5_encoder(config: UMT5Config) -> UMT5EncoderModel:
    """A UMT5 encoder built from ``config`` whose encoder reads the shared embedding, as a loaded checkpoint's
    does (transformers 5.0-5.2 give a ``tie_word_embeddings=False`` config, UMT5-XXL's, a second copy)."""
    model = UMT5EncoderModel(config)
    model.encoder.embed_tokens = model.shared
    return model


def build_tiny_wan(seed: int = 0) -> dict[str, Any]:
    """A toy Wan with seeded random weights (≈0.26 M parameters): the classes of Wan 2.1 — a
    ``WanTransformer3DModel`` with 4 blocks, a causal ``AutoencoderKLWan`` with Wan's 4× temporal and 8×
    spatial compression, a UMT5 encoder with a T5 tokenizer (32 tokens) and a flow-matching scheduler —
    so that the whole family runs on a CPU in seconds. Its output is noise."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_tiny_t5_tokenizer(max_length=32)
        text_encoder = umt5_encoder(UMT5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_gated_act=True,
            dense_act_fn="gelu_new", pad_token_id=tokenizer.pad_token_id,
        ))
        vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                               latents_mean=[0.1, -0.2, 0.0, 0.3], latents_std=[1.5, 0.8, 1.0, 1.2])
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
            text_dim=32, freq_dim=32, ffn_dim=32, num_layers=4, rope_max_seq_len=64,
        )
    for module in (text_encoder, vae, transformer):
        module.eval()
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "transformer": transformer,
            "scheduler": flow_scheduler()}


def build_wan_arch(seed: int = 0) -> dict[str, Any]:
    """Wan 2.1 T2V 1.3B's exact transformer and VAE, and UMT5-XXL, with seeded random weights, built
    without any download: for ``bench speed`` and ``bench memory`` at full scale (≈7 B parameters in all,
    most of them the text encoder's). Its output is noise. The tokenizer is the character-level one of
    ``tiny-random-wan`` (ids within UMT5's vocabulary; a real tokenizer would only change ids)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_tiny_t5_tokenizer()
        text_encoder = umt5_encoder(UMT5Config(**UMT5_XXL_CONFIG))
        vae = AutoencoderKLWan(**WAN_VAE_CONFIG)
        transformer = WanTransformer3DModel(**WAN_TRANSFORMER_CONFIG)
    for module in (text_encoder, vae, transformer):
        module.eval()
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "transformer": transformer,
            "scheduler": flow_scheduler()}


class WanBackbone(Backbone):
    name = "wan"
    unet_type = WanTransformer3DModel
    unet_classes = ("WanTransformer3DModel",)
    denoiser_component = "transformer"
    builtin = {TINY_RANDOM_WAN: build_tiny_wan, WAN_ARCH: build_wan_arch}
    accepts = SUPPORTED
    offloads_text_encoder = True
    per_frame_vae = False
    half_dtype = torch.bfloat16  # Wan was trained in bfloat16; float16 overflows in its activations
    vae_dtype = torch.float32  # Wan's own recommendation: its decoder is sensitive to half precision, and small

    # ------------------------------------------------------------------------- sizes
    @staticmethod
    def temporal_factor(vae: Any) -> int:
        return int(getattr(vae.config, "scale_factor_temporal", None) or 4)

    def latent_frames(self, vae: Any, num_frames: int) -> int:
        return (num_frames - 1) // self.temporal_factor(vae) + 1

    def latent_frame_groups(self, vae: Any, num_frames: int) -> list[tuple[int, int]]:
        """The causal VAE's packing: latent frame 0 holds frame 0, latent frame k the 4 frames 4k - 3 … 4k."""
        factor = self.temporal_factor(vae)
        count = self.latent_frames(vae, num_frames)
        return [(0, 1)] + [(factor * k - factor + 1, min(num_frames, factor * k + 1)) for k in range(1, count)]

    def spatial_factor(self, vae: Any) -> int:
        return int(getattr(vae.config, "scale_factor_spatial", None) or 8)

    def check(self, pipe: Any, config: Any) -> None:
        """Frames 4k + 1, sides on the patch grid, the fine-tune's targets, Haar levels within the latent frames."""
        vae, transformer = pipe.vae, pipe.denoiser
        factor = self.temporal_factor(vae)
        if (config.num_frames - 1) % factor:
            below = (config.num_frames - 1) // factor * factor + 1
            raise UserError(
                f"Wan takes {factor}k + 1 frames (its VAE keeps the first frame and packs {factor} frames into each "
                f"latent frame), got {config.num_frames}; pass --frames {max(below, factor + 1)} or "
                f"{below + factor} (49 or 81 at full size)"
            )
        if config.num_frames < 2 * factor + 1:
            raise UserError(
                f"Wan needs at least {2 * factor + 1} frames (3 latent frames: two residuals), got {config.num_frames}"
            )
        patch = tuple(transformer.config.patch_size)
        multiple = self.spatial_factor(vae) * max(patch[1:])
        for side in ("height", "width"):
            value = getattr(config, side)
            if value % multiple:
                raise UserError(
                    f"{side} must be a multiple of {multiple} for Wan (VAE 8x, then {patch[1]}x{patch[2]} patches), "
                    f"got {value}; try {max(multiple, round(value / multiple) * multiple)}"
                )
        if config.trains:
            self.lora_targets(transformer, config)  # a pattern that names nothing fails before any work
        if config.attention != "sdpa":
            raise UserError(
                "attention 'classic' is not available for Wan (its own attention applies rotary embeddings); "
                "use --attention sdpa"
            )
        blocks = len(transformer.blocks)
        modules = dict(transformer.named_modules())
        for layer in config.feature_layers:
            if layer not in modules:
                raise UserError(
                    f"feature layer {layer!r} is not in this {blocks}-block Wan transformer; pass --feature-layers "
                    f"blocks.{blocks // 2} (its middle block) or another blocks.N below {blocks}"
                )
        from sma_guidance.spectral import max_wavelet_level

        residuals = self.latent_frames(vae, config.window_frames) - 1  # the wavelet runs over one window
        deepest = max_wavelet_level(residuals, config.wavelet)
        if config.levels is not None and config.levels > deepest:
            raise UserError(
                f"--levels {config.levels} is too deep for Wan's {residuals + 1} latent frames ({residuals} residuals "
                f"allow at most {deepest}); pass --levels {deepest} or fewer"
            )

    def default_feature_layers(self, denoiser: torch.nn.Module) -> tuple[str, ...]:
        """The middle transformer block, ``blocks.{n // 2}`` of n (Wan 2.1 1.3B: ``blocks.15`` of 30; 14B:
        ``blocks.20`` of 40), as DiTFlow records a middle block of CogVideoX; the forward stops after it,
        so the guidance runs half the network."""
        blocks = len(getattr(denoiser, "blocks", None) or [])
        if not blocks:
            raise UserError("this Wan transformer has no blocks to record; name the layers with --feature-layers")
        return (f"blocks.{blocks // 2}",)

    # ------------------------------------------------------------------------- fine-tune
    def lora_targets(self, transformer: torch.nn.Module, config: Any) -> list[str]:
        """The linear layers the fine-tune's LoRA adapts: for ``trainable_modules="vmc"`` VMC's recipe on a DiT,
        the self-attention's q / k / v (``attn1.to_q/k/v``: Wan attends over space and time at once) of the
        blocks from the first recorded one on; otherwise the linear layers whose names match the pattern."""
        names = [name for name, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)]
        if config.trainable_modules == "vmc":
            recorded = [int(layer.split(".")[1]) for layer in config.feature_layers or ()
                        if layer.startswith("blocks.") and layer.split(".")[1].isdigit()]
            first = min(recorded, default=len(transformer.blocks) // 2)
            pattern = r"^blocks\.(\d+)\.attn1\.to_[qkv]$"
            chosen = [n for n in names if (m := re.match(pattern, n)) and int(m.group(1)) >= first]
        elif config.trainable_modules == "vmc+transformer_in":
            raise UserError("trainable_modules 'vmc+transformer_in' is the Zeroscope family's; use vmc for Wan")
        else:
            chosen = [n for n in names if re.search(config.trainable_modules, n)]
        if not chosen:
            raise UserError(f"no linear layer of this Wan transformer matches trainable_modules={config.trainable_modules!r}")
        return chosen

    def train_adapter(self, pipe: Any, latents: torch.Tensor, embedding: torch.Tensor, config: Any,
                      progress: Any = None) -> Any:
        """The fine-tune of a flow-matching DiT: a LoRA (rank ``config.lora_rank``) on :meth:`lora_targets`,
        trained on VMC's and SMA's objective written for the velocity
        (:func:`~pipelines.motion_transfer.finetune.train_lora_adapter`), σ drawn from the sampler's
        shifted training sigmas."""
        from ..finetune import train_lora_adapter

        sampler = pipe.sampler
        sigmas = torch.tensor(sampler.sigmas(sampler.num_train_timesteps)[:-1])
        return train_lora_adapter(
            pipe.denoiser,
            sigmas,
            latents,
            embedding,
            target_modules=self.lora_targets(pipe.denoiser, config),
            rank=config.lora_rank,
            num_train_timesteps=sampler.num_train_timesteps,
            **self.fine_tune_settings(pipe, config, progress),
        )

    # ------------------------------------------------------------------------- model calls
    def unet_call(self, unet: torch.nn.Module, latents: torch.Tensor, t: float, embedding: torch.Tensor) -> torch.Tensor:
        """The transformer's velocity ``(B, C, F', h, w)``; the timestep goes in once per video."""
        timestep = torch.full((latents.shape[0],), float(t), device=latents.device)
        return super().unet_call(unet, latents, timestep, embedding)

    def feature_frames(self, pipe: Any, config: Any) -> int:
        return self.latent_frames(pipe.vae, config.num_frames)

    def feature_reshaper(self, pipe: Any, config: Any) -> Any:
        """Tokens ``(B, F'·H·W, D)`` of a block → ``(B, F', D, H, W)`` on the patch grid of ``config``'s size."""
        _, patch_h, patch_w = tuple(pipe.denoiser.config.patch_size)
        height = config.height // self.spatial_factor(pipe.vae) // patch_h
        width = config.width // self.spatial_factor(pipe.vae) // patch_w

        def to_frames(output: torch.Tensor, num_frames: int) -> torch.Tensor:
            if output.ndim != 3 or output.shape[1] != num_frames * height * width:
                raise RuntimeError(
                    f"recorded output of shape {tuple(output.shape)} is not {num_frames}x{height}x{width} tokens"
                )
            return rearrange(output, "b (f h w) d -> b f d h w", f=num_frames, h=height, w=width)

        return to_frames

    def latent_shape(self, pipe: Any, config: Any) -> tuple[int, ...]:
        factor = self.spatial_factor(pipe.vae)
        return (1, pipe.denoiser.config.in_channels, self.latent_frames(pipe.vae, config.num_frames),
                config.height // factor, config.width // factor)

    def attention_processor(self, config: Any) -> Any:
        return None  # Wan's own processor (rotary embeddings, scaled_dot_product_attention) stays

    def sampling_scheduler(self, scheduler: Any) -> Any:
        """The Hub's scheduler (UniPC on flow sigmas) as the flow-matching Euler scheduler of the same
        shift and training steps: sampling and inversion are then one deterministic ODE."""
        if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            return scheduler
        config = dict(scheduler.config)
        shift = config.get("flow_shift") or config.get("shift") or WAN_FLOW_SHIFT
        return flow_scheduler(float(shift), int(config.get("num_train_timesteps", 1000)))

    # ------------------------------------------------------------------------- text and VAE
    @torch.no_grad()
    def encode_prompt(self, pipe: Any, prompt: str) -> torch.Tensor:
        """UMT5 embedding ``(1, L, D)`` padded to ``L`` = 512 tokens (the tokenizer's limit when lower),
        zero past the prompt's own tokens, as ``WanPipeline`` feeds the transformer."""
        length = min(MAX_SEQUENCE_LENGTH, int(pipe.tokenizer.model_max_length))
        tokens = pipe.tokenizer(prompt, padding="max_length", max_length=length, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        encoder = pipe.text_encoder
        device = next(encoder.parameters()).device  # the pipeline puts it on its device to encode
        hidden = encoder(tokens.input_ids.to(device), tokens.attention_mask.to(device)).last_hidden_state
        mask = tokens.attention_mask.to(hidden.device, hidden.dtype)[..., None]
        return (hidden * mask).to(pipe.device)

    def vae_latent_stats(self, vae: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
        std = torch.tensor(vae.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
        return mean, std

    @torch.no_grad()
    def encode_video(self, pipe: Any, frames: torch.Tensor, batch_size: int = 1) -> torch.Tensor:
        """Normalized latents ``(1, C, F', h, w)`` of frames ``(F, 3, H, W)`` in [-1, 1]: the causal VAE
        takes the whole clip (it works through it 4 frames at a time itself), posterior mean."""
        video = frames.to(pipe.device, pipe.vae.dtype).permute(1, 0, 2, 3)[None]
        latents = pipe.vae.encode(video).latent_dist.mode().float()
        mean, std = self.vae_latent_stats(pipe.vae, latents)
        return (latents - mean) / std

    @torch.no_grad()
    def decode_latents(self, pipe: Any, latents: torch.Tensor, batch_size: int = 1) -> torch.Tensor:
        """Frames ``(1, F, 3, H, W)`` in [0, 1] of normalized latents ``(1, C, F', h, w)``."""
        mean, std = self.vae_latent_stats(pipe.vae, latents.float())
        video = pipe.vae.decode((latents.float() * std + mean).to(pipe.vae.dtype)).sample
        return (video.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)

    # ------------------------------------------------------------------------- loading
    def load(self, pipeline_cls: type, model: str, index: dict[str, Any], torch_dtype: torch.dtype | None,
             motion_adapter: str | None, **kwargs: Any) -> Any:
        """The Hub layout of ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` (``WanPipeline``: transformer, vae,
        text_encoder, tokenizer, scheduler) as it is; the VAE stays in float32, as Wan's own pipeline
        recommends (its decoder is sensitive to half precision, and it is small)."""
        pipe = from_pretrained(pipeline_cls, model, torch_dtype=torch_dtype, **kwargs)
        with quiet_loading():
            pipe.vae.to(self.vae_dtype)
        return pipe

    def component_types(self) -> tuple[type, Any]:
        return AutoencoderKLWan, umt5_encoder

    def placeholder_tokenizer(self) -> Any:
        return build_tiny_t5_tokenizer()

    def default_scheduler(self) -> Any:
        return flow_scheduler()


__all__ = [
    "MAX_SEQUENCE_LENGTH",
    "TINY_RANDOM_WAN",
    "UMT5_XXL_CONFIG",
    "WAN_ARCH",
    "WAN_FLOW_SHIFT",
    "WAN_TRANSFORMER_CONFIG",
    "WAN_VAE_CONFIG",
    "WanBackbone",
    "build_tiny_t5_tokenizer",
    "build_tiny_wan",
    "build_wan_arch",
    "flow_scheduler",
]
