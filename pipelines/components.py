"""Model components: the real diffusers loaders with actionable errors, and a tiny random model.

Which family a model belongs to, and how each family loads, lives in :mod:`pipelines.backbones`;
this module holds the shared loading steps and Zeroscope's builders.

``tiny-random`` builds the same classes Zeroscope uses (``UNet3DConditionModel``, ``AutoencoderKL``,
``CLIPTextModel`` + ``CLIPTokenizer``, ``DDIMScheduler``) at toy size with seeded random weights, in
code, without any download. Its output is noise: it exists so that the whole pipeline runs on a CPU in
seconds, in tests and smoke runs.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from sma_guidance.errors import UserError

TINY_RANDOM = "tiny-random"
ZEROSCOPE_ARCH = "zeroscope-arch"
# Models that ship inside the package, by name.
BUNDLED_MODELS = {"shapes": Path(__file__).resolve().parent / "shapes_model"}

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


def _byte_level_alphabet() -> list[str]:
    """GPT-2/CLIP's reversible map of the 256 bytes to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def build_tiny_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer over single bytes (no merges): every text tokenizes, nothing is downloaded."""
    alphabet = _byte_level_alphabet()
    vocab = {char: i for i, char in enumerate(alphabet)}
    vocab.update({char + "</w>": len(alphabet) + i for i, char in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _bpe_pieces(word: str, merges: list[tuple[str, str]]) -> list[str]:
    """The pieces that CLIP's byte-pair encoding leaves of ``word`` with these ranked ``merges``."""
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def build_word_tokenizer(words: list[str], max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer whose BPE merges rebuild each of ``words`` into one token.

    Any other text still tokenizes (into single bytes), but every word of a closed vocabulary — the
    shapes world's captions — becomes exactly one token, which a small text encoder learns far more
    easily than spelling.
    """
    alphabet = _byte_level_alphabet()
    vocab = {char: i for i, char in enumerate(alphabet)}
    vocab.update({char + "</w>": len(alphabet) + i for i, char in enumerate(alphabet)})
    merges: list[tuple[str, str]] = []
    for word in sorted(set(words)):
        # BPE applies the lowest-ranked merge first, so a merge added for an earlier word (``r i`` from
        # "right") can split a later one ("t ri ..."): follow the word's actual merge path and append a
        # merge wherever the path stops short of one token.
        while len(pieces := _bpe_pieces(word, merges)) > 1:
            merges.append((pieces[0], pieces[1]))
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for but no CUDA GPU is available; use --device cpu")
    return resolved


# The names a dtype may be given by (torch's own and the short ones users type), to the dtype.
DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``dtype`` as a torch dtype: a torch dtype (float32, float16, bfloat16) as it is, its name (with or
    without ``torch.``, or fp32 / fp16 / half / bf16), or ``"auto"``: float16 on a GPU, float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES.values():
            raise UserError(f"dtype {dtype} is not supported; use torch.float32, torch.float16 or torch.bfloat16")
        return dtype
    name = str(dtype).strip().lower().removeprefix("torch.")
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPE_NAMES:
        raise UserError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16 (or a torch dtype)")
    return DTYPE_NAMES[name]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def load_pipeline(
    pipeline_cls: type, model: str, torch_dtype: torch.dtype | None = None, motion_adapter: str | None = None, **kwargs: Any
) -> Any:
    """``pipeline_cls`` holding ``model``'s components, with errors a user can act on.

    ``model`` is a model built in code (``tiny-random``, ``zeroscope-arch``, ``tiny-random-animatediff``,
    ``animatediff-arch``), a bundled model, a local diffusers folder, or a Hub id (downloaded once, then
    read from the local cache; safetensors are preferred when the repository has them). Its family is
    detected from its ``model_index.json`` (:mod:`pipelines.backbones`), whose module loads it;
    ``motion_adapter`` (AnimateDiff) turns an SD 1.5 image model into a ``UNetMotionModel``.
    """
    from .backbones import BACKBONES, BUILTIN_MODELS, detect_backbone, read_model_index

    if model in BUILTIN_MODELS:
        backbone = BACKBONES[BUILTIN_MODELS[model]]
        if motion_adapter:
            raise UserError(
                f"--motion-adapter goes with an SD 1.5 image model, but {model} is a built-in {backbone.name}-family "
                f"model; drop --motion-adapter"
            )
        components = backbone.builtin[model]()
        if torch_dtype not in (None, torch.float32):
            for name in ("vae", "text_encoder", "unet"):
                components[name].to(torch_dtype)
        pipe = pipeline_cls(**components)
        pipe.register_to_config(_name_or_path=model)
        return pipe

    if model in BUNDLED_MODELS:
        folder = BUNDLED_MODELS[model]
        if not (folder / "model_index.json").is_file():
            raise UserError(
                f"the bundled {model} model is missing from {folder}; reinstall sma-guide or train it with "
                f"`python -m pipelines.shapes_training`"
            )
        pipe = load_pipeline(pipeline_cls, str(folder), torch_dtype=torch_dtype, motion_adapter=motion_adapter, **kwargs)
        pipe.register_to_config(_name_or_path=model)
        return pipe

    path = Path(model).expanduser()
    local = _looks_local(model)
    if local:
        if not path.is_dir():
            raise UserError(f"model folder not found: {model} — pass a diffusers folder, a Hub id or tiny-random")
        if not (path / "model_index.json").is_file():
            raise UserError(
                f"{model} is not a diffusers pipeline folder (no model_index.json); save one with "
                f"pipe.save_pretrained(folder) or pass a Hub id"
            )
    source = str(path) if local else model
    index = read_model_index(source, local)
    return detect_backbone(index, model, motion_adapter).load(pipeline_cls, source, index, torch_dtype, motion_adapter, **kwargs)


def _looks_local(model: str) -> bool:
    return Path(model).expanduser().exists() or model.startswith((".", "/", "~")) or model.count("/") > 1


def from_pretrained(pipeline_cls: type, model: str, torch_dtype: torch.dtype | None = None, **kwargs: Any) -> Any:
    """``pipeline_cls.from_pretrained(model)`` quietly, its failures as one :class:`UserError`."""
    try:
        with quiet_loading():
            return pipeline_cls.from_pretrained(model, torch_dtype=torch_dtype, **kwargs)
    except UserError:
        raise
    except Exception as err:  # diffusers raises OSError, ValueError, EnvironmentError, hub errors...
        raise UserError(explain_load_error(model, _looks_local(model), err)) from None


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence the loaders' chatter (hub retries, deprecations): failures surface as one UserError."""
    diffusers_level = diffusers_logging.get_verbosity()
    transformers_level = transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        diffusers_logging.set_verbosity(diffusers_level)
        transformers_logging.set_verbosity(transformers_level)


def explain_load_error(model: str, local: bool, err: Exception) -> str:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if local:
        return f"cannot load the model folder {model}: {detail} — check that it holds all weights (model_index.json and each component)"
    if _offline():
        return (
            f"model {model!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: download it "
            f"once on a connected machine (`hf download {model}`), or pass --model PATH to a local diffusers folder"
        )
    name = type(err).__name__
    if "RepositoryNotFound" in name or "404" in detail:
        return f"unknown model id {model!r} on the Hugging Face Hub — check the spelling or pass a local folder"
    return f"cannot load model {model!r}: {detail} — check the id, your network, or pass a local folder"


__all__ = [
    "BUNDLED_MODELS",
    "TINY_RANDOM",
    "ZEROSCOPE_ARCH",
    "build_zeroscope_arch",
    "build_small_video_model",
    "build_tiny_random",
    "build_tiny_tokenizer",
    "explain_load_error",
    "from_pretrained",
    "load_pipeline",
    "quiet_loading",
    "resolve_device",
    "resolve_dtype",
]
