"""Memory a run would need on a GPU, estimated anywhere, without the GPU and without the weights
(``sma-guide bench memory``).

The model is built from its configuration under PyTorch's ``FakeTensorMode``: tensors carry shapes
and dtypes but no data, so Zeroscope at 24 × 320 × 576 "runs" on a laptop in seconds. Each stage —
one guidance iteration (forward to the last recorded layer, the SMA objective, the backward to the
latent), one denoising step, one VAE encode and decode call — runs through the pipeline's own code
while :class:`~sma_guidance.memory.TensorMemory` counts the bytes of the tensors it creates. A run's
estimated peak is the weights plus the largest stage.

Families whose text encoder is moved off the GPU between prompt encodings (Wan's UMT5-XXL) count it
only in the prompt-encoding stage: a run's peak is the larger of (all weights + prompt encoding) and
(the weights kept during the loop + its largest stage).

What it leaves out: the CUDA context (~0.3–0.5 GiB), the caching allocator's rounding and
fragmentation, cuDNN / cuBLAS workspaces, and the latents kept between steps (a few MiB). Attention
kernels are those PyTorch picks for CPU tensors of this dtype (fused, memory-efficient ones for
``attention="sdpa"``, as on a GPU); ``attention="classic"`` materializes the attention matrix on both.
So the figures are a lower bound on what ``torch.cuda.max_memory_allocated`` reports, not a
measurement; ``sma-guide bench speed`` on a GPU measures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from diffusers import AutoencoderKL, AutoencoderKLWan, MotionAdapter, UNet2DConditionModel
from torch._subclasses.fake_tensor import FakeTensorMode
from transformers import CLIPTextConfig, UMT5Config

from sma_guidance.config import CHECKPOINTING, SMAConfig
from sma_guidance.errors import UserError
from sma_guidance.memory import TensorMemory

from pipelines.motion_transfer.backbones import (
    BACKBONES,
    BUILTIN_MODELS,
    BUNDLED_MODELS,
    backbone_of,
    detect_backbone,
    read_model_index,
)
from pipelines.motion_transfer.backbones.animatediff import (
    ANIMATEDIFF_ARCH,
    MOTION_ADAPTER_CONFIG,
    SD15_TEXT_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    check_adapter_fits,
    motion_unet_config,
)
from pipelines.motion_transfer.backbones.wan import UMT5_XXL_CONFIG, WAN_ARCH, WAN_TRANSFORMER_CONFIG, WAN_VAE_CONFIG
from pipelines.motion_transfer.backbones.zeroscope import (
    ZEROSCOPE_ARCH,
    ZEROSCOPE_TEXT_CONFIG,
    ZEROSCOPE_UNET_CONFIG,
    ZEROSCOPE_VAE_CONFIG,
)
from pipelines.motion_transfer.hub import looks_local
from pipelines.motion_transfer.models import ARCH_MODELS, TINY_MODELS
from pipelines.motion_transfer.pipeline_sma import SMAMotionTransferPipeline
from pipelines.motion_transfer.samplers import sampler_for

_GIB = 2**30


def component_configs(model: str, motion_adapter: str | None = None) -> dict[str, Any]:
    """The family and the UNet, VAE and text-encoder configurations of ``model`` (a model built in code,
    a bundled model, a diffusers folder, or a Hub id already in the local cache; with ``motion_adapter``
    an SD 1.5 image model made AnimateDiff) — no weights read."""
    if model == ZEROSCOPE_ARCH:
        return {"family": "zeroscope", "unet": dict(ZEROSCOPE_UNET_CONFIG), "vae": dict(ZEROSCOPE_VAE_CONFIG),
                "text_encoder": CLIPTextConfig(**ZEROSCOPE_TEXT_CONFIG)}
    if model == ANIMATEDIFF_ARCH:
        return {"family": "animatediff", "unet": motion_unet_config(SD15_UNET_CONFIG, MOTION_ADAPTER_CONFIG),
                "vae": dict(SD15_VAE_CONFIG), "text_encoder": CLIPTextConfig(**SD15_TEXT_CONFIG)}
    if model == WAN_ARCH:
        return {"family": "wan", "unet": dict(WAN_TRANSFORMER_CONFIG), "vae": dict(WAN_VAE_CONFIG),
                "text_encoder": UMT5Config(**UMT5_XXL_CONFIG)}
    if model in BUILTIN_MODELS:
        parts = BACKBONES[BUILTIN_MODELS[model]].builtin[model]()
        denoiser = parts.get("unet") or parts["transformer"]
        return {"family": backbone_of(denoiser).name, "unet": dict(denoiser.config),
                "vae": dict(parts["vae"].config), "text_encoder": parts["text_encoder"].config}
    source = str(BUNDLED_MODELS.get(model, model))
    try:
        index = read_model_index(source, looks_local(source))
    except UserError as err:
        raise UserError(
            f"cannot read the unet/vae/text_encoder configs of {model!r} ({err}); pass "
            f"{', '.join((*TINY_MODELS.values(), *BUNDLED_MODELS))}, {', '.join(ARCH_MODELS.values())}, "
            f"a diffusers folder, or a Hub id in the local cache"
        ) from None
    backbone = detect_backbone(index, model, motion_adapter)  # the one family detection, as loading does
    try:
        if backbone.name == "wan":  # WanPipeline's layout: the transformer, its VAE and UMT5
            return {
                "family": "wan",
                "unet": dict(UNet2DConditionModel.load_config(source, subfolder="transformer")),
                "vae": dict(AutoencoderKLWan.load_config(source, subfolder="vae")),
                "text_encoder": UMT5Config.from_pretrained(source, subfolder="text_encoder"),
            }
        unet = dict(UNet2DConditionModel.load_config(source, subfolder="unet"))  # any UNet's config.json
        configs = {
            "family": backbone.name,
            "unet": unet,
            "vae": dict(AutoencoderKL.load_config(source, subfolder="vae")),
            "text_encoder": CLIPTextConfig.from_pretrained(source, subfolder="text_encoder"),
        }
        adapter = dict(MotionAdapter.load_config(motion_adapter)) if motion_adapter else None
    except Exception as err:  # noqa: BLE001 — a component folder missing, not cached offline...
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot read the unet/vae/text_encoder configs of {model!r} ({detail})") from None
    if adapter is not None:  # an SD 1.5 image UNet made AnimateDiff
        check_adapter_fits(unet, adapter, model, str(motion_adapter))
        configs["unet"] = motion_unet_config(unet, adapter)
    return configs


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _fake_pipeline(configs: dict[str, Any], dtype: torch.dtype, scheduler: Any) -> SMAMotionTransferPipeline:
    """The pipeline with shape-only components in ``dtype`` (call inside ``FakeTensorMode``); the
    scheduler is made outside it, so that its timesteps are real numbers. The VAE takes the family's
    own dtype where it has one (Wan's stays in float32, as its loader keeps it)."""
    backbone = BACKBONES[configs["family"]]
    vae_type, text_encoder_type = backbone.component_types()
    with _default_dtype(dtype):
        denoiser = backbone.unet_type.from_config(configs["unet"]).eval()
        text_encoder = text_encoder_type(configs["text_encoder"]).eval()
    with _default_dtype(backbone.vae_dtype or dtype):
        vae = vae_type.from_config(configs["vae"]).eval()
    return SMAMotionTransferPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=backbone.placeholder_tokenizer(), scheduler=scheduler,
        **{backbone.denoiser_component: denoiser},
    )


def _bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def stage_memory(pipe: SMAMotionTransferPipeline, config: SMAConfig, t: int | float) -> dict[str, int]:
    """Bytes of tensors created by each stage at ``config``'s size and options (weights and the
    stage's inputs excluded), the denoiser at timestep ``t``. Works on real components as on fake ones;
    the sampler's timesteps must be set (``pipe.sampling_timesteps``) before."""
    choice = config.activation_checkpointing
    return stage_memory_by_checkpointing(pipe, config, t, (choice,))[choice]


def stage_memory_by_checkpointing(
    pipe: SMAMotionTransferPipeline, config: SMAConfig, t: int | float, choices: Sequence[str]
) -> dict[str, dict[str, int]]:
    """:func:`stage_memory` for each activation-checkpointing choice in ``choices``. Only the guidance
    iteration (the one stage with a backward) depends on the choice, so the other stages, and the
    reference features the guidance needs, are measured once and shared."""
    denoiser, vae = pipe.denoiser, pipe.vae
    shape = pipe.backbone.latent_shape(pipe, config)
    weights = [*denoiser.parameters(), *denoiser.buffers(), *vae.parameters(), *vae.buffers(),
               *pipe.text_encoder.parameters(), *pipe.text_encoder.buffers()]
    # Content does not change the cost, so zeros stand in for the clip and the latents.
    latents = torch.zeros(shape)
    recorder = pipe.feature_recorder(config)
    results: dict[str, int] = {}
    counter = TensorMemory().exclude(weights)
    with counter:
        embedding = pipe.encode_prompt("a benchmark prompt")
    results["prompt encoding"] = counter.peak
    guidance: dict[str, int] = {}
    with pipe.speed_options(config):
        with recorder, torch.no_grad():
            reference = recorder.run(pipe.model_prediction, latents, t, embedding)
        for choice in choices:
            chosen = config.replace(activation_checkpointing=choice)
            optimized = latents.clone().requires_grad_(True)
            counter = TensorMemory().exclude([*weights, latents, embedding, optimized, *reference.values()])
            with counter, recorder, pipe.guidance_backward(chosen), torch.enable_grad():
                terms = pipe.guidance_objective(optimized, t, embedding, reference, recorder, chosen)
                terms["total"].backward()
                del terms
            guidance[choice] = counter.peak
        results["guidance iteration"] = 0  # keeps the stages in the order a run meets them

        embeddings = torch.cat([embedding, embedding])
        counter = TensorMemory().exclude([*weights, latents, embeddings])
        with counter:
            pipe.denoise_step(latents, t, embeddings, config.guidance_scale)
        results["denoising step"] = counter.peak

        # a per-frame VAE sees vae_batch_size frames per call; Wan's causal VAE takes the whole clip
        per_frame = pipe.backbone.per_frame_vae
        count = min(config.vae_batch_size, config.num_frames) if per_frame else config.num_frames
        frames = torch.zeros(count, 3, config.height, config.width)
        counter = TensorMemory().exclude([*weights, frames])
        with counter:
            pipe.encode_video(frames, config.vae_batch_size)
        results["VAE encode"] = counter.peak

        few = latents[:, :, :count] if per_frame else latents
        counter = TensorMemory().exclude([*weights, latents])
        with counter:
            pipe.decode_latents(few, config.vae_batch_size)
        results["VAE decode"] = counter.peak
    return {choice: {**results, "guidance iteration": guidance[choice]} for choice in choices}


def estimate_memory(
    model: str, config: SMAConfig, dtype: torch.dtype, checkpointing: tuple[str, ...] = CHECKPOINTING,
    configs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Estimated GPU memory of ``model`` at ``config`` in ``dtype``, for each activation-checkpointing
    choice in ``checkpointing``: the weights, each stage and a run's peak. ``configs``: those of
    :func:`component_configs` when already read. Returns a JSON-ready record."""
    configs = configs or component_configs(model, config.motion_adapter)
    backbone = BACKBONES[configs["family"]]
    scheduler = backbone.default_scheduler()
    sampler = sampler_for(scheduler)
    t = sampler.timesteps(config.num_inference_steps)[0]  # real numbers: set before the fake mode
    with FakeTensorMode(allow_non_fake_inputs=True):
        pipe = _fake_pipeline(configs, dtype, scheduler)
        pipe.sampler = sampler
        config = pipe.with_feature_layers(config)
        backbone.check(pipe, config)
        weights = {name: _bytes(getattr(pipe, name)) for name in (backbone.denoiser_component, "vae", "text_encoder")}
        # weights on the GPU during the loop: without a text encoder that is moved off after encoding
        loop_weights = sum(weights.values()) - (weights["text_encoder"] if backbone.offloads_text_encoder else 0)
        columns = {}
        for choice, stages in stage_memory_by_checkpointing(pipe, config, t, checkpointing).items():
            loop = max(value for stage, value in stages.items() if stage != "prompt encoding")
            peak = max(sum(weights.values()) + stages["prompt encoding"], loop_weights + loop)
            columns[choice] = {"stages": stages, "peak_bytes": peak}
    return {
        "model": model,
        "family": configs["family"],
        "frames": config.num_frames,
        "height": config.height,
        "width": config.width,
        "dtype": str(dtype).replace("torch.", ""),
        "attention": config.attention,
        "vae_batch_size": config.vae_batch_size,
        "feature_layers": list(config.feature_layers),
        "method": "tensor bytes counted on fake (shape-only) tensors; no CUDA context, allocator overhead or workspaces",
        "weights_bytes": weights,
        "text_encoder_offloaded": backbone.offloads_text_encoder,
        "loop_weights_bytes": loop_weights,
        "checkpointing": columns,
    }


def lora_step_memory(pipe: SMAMotionTransferPipeline, config: SMAConfig, gradient_checkpointing: bool) -> dict[str, int]:
    """Bytes of one LoRA fine-tune step of a diffusion transformer (Wan) at ``config``'s size: the forward
    and backward of the velocity objective at σ = 0.5, with the model's own gradient checkpointing or not.

    peft cannot wrap layers of shape-only tensors, so the LoRA is a stand-in with its cost: forward hooks
    add (x·A)·B of rank ``config.lora_rank`` on the targets the fine-tune adapts (float32 A, B, as peft
    keeps them). Returns ``{"step": activations' peak, "trainable": the LoRA with its gradient and AdamW's
    two moments}``. Works on real components as on fake ones."""
    from sma_guidance.vmc import flow_motion_distillation_terms

    denoiser = pipe.denoiser
    targets = pipe.backbone.lora_targets(denoiser, config)
    modules = dict(denoiser.named_modules())
    latents = torch.zeros(pipe.backbone.latent_shape(pipe, config))
    embedding = pipe.encode_prompt("a benchmark prompt")
    weights = [*denoiser.parameters(), *denoiser.buffers()]
    lora, hooks = [], []
    was_checkpointing = bool(getattr(denoiser, "is_gradient_checkpointing", False))
    requires_grad = {name: p.requires_grad for name, p in denoiser.named_parameters()}
    denoiser.requires_grad_(False)
    try:
        for name in targets:
            layer = modules[name]
            down = torch.zeros(layer.in_features, config.lora_rank, requires_grad=True)
            up = torch.zeros(config.lora_rank, layer.out_features, requires_grad=True)
            lora += [down, up]
            hooks.append(layer.register_forward_hook(
                lambda _, inputs, output, down=down, up=up: output + ((inputs[0].float() @ down) @ up).to(output.dtype)
            ))
        if gradient_checkpointing and getattr(denoiser, "_supports_gradient_checkpointing", False):
            denoiser.enable_gradient_checkpointing()
        counter = TensorMemory().exclude([*weights, latents, embedding, *lora])
        with counter, torch.enable_grad():
            noisy = latents.to(denoiser.dtype)
            velocity = pipe.model_prediction(noisy, 0.5 * pipe.sampler.num_train_timesteps, embedding)
            frames_first = [x.permute(0, 2, 1, 3, 4).float() for x in (velocity, latents, latents, latents)]
            terms = flow_motion_distillation_terms(*frames_first, 0.5, lambda_global=config.train_lambda_global,
                                                   lambda_local=config.train_lambda_local, **config.spectral_settings)
            terms["total"].backward()
            del terms, velocity, frames_first
    finally:
        for hook in hooks:
            hook.remove()
        if not was_checkpointing and getattr(denoiser, "is_gradient_checkpointing", False):
            denoiser.disable_gradient_checkpointing()
        for name, param in denoiser.named_parameters():
            param.requires_grad_(requires_grad[name])
    return {"step": counter.peak, "trainable": 4 * sum(p.numel() * p.element_size() for p in lora)}


def estimate_fine_tune_memory(model: str, config: SMAConfig, dtype: torch.dtype,
                              configs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Estimated GPU memory of the LoRA fine-tune of a diffusion transformer (Wan) at ``config``'s size, with
    and without gradient checkpointing: the denoiser's weights (the text encoder is moved off after encoding,
    the VAE stays), the LoRA with its optimizer state, one step's activations."""
    configs = configs or component_configs(model, config.motion_adapter)
    backbone = BACKBONES[configs["family"]]
    if not hasattr(backbone, "lora_targets"):
        raise UserError(f"the fine-tune estimate covers the LoRA of a diffusion transformer (Wan); {model} is a "
                        f"{configs['family']}-family UNet")
    scheduler = backbone.default_scheduler()
    sampler = sampler_for(scheduler)
    columns = {}
    with FakeTensorMode(allow_non_fake_inputs=True):
        pipe = _fake_pipeline(configs, dtype, scheduler)
        pipe.sampler = sampler
        config = pipe.with_feature_layers(config).replace(mode="fine-tune")
        backbone.check(pipe, config)
        weights = _bytes(pipe.denoiser) + _bytes(pipe.vae)  # the text encoder is moved off after encoding
        for checkpointing in (True, False):
            parts = lora_step_memory(pipe, config, checkpointing)
            columns["on" if checkpointing else "off"] = {**parts, "peak_bytes": weights + parts["trainable"] + parts["step"]}
    return {"model": model, "family": configs["family"], "frames": config.num_frames, "height": config.height,
            "width": config.width, "dtype": str(dtype).replace("torch.", ""), "lora_rank": config.lora_rank,
            "lora_targets": len(backbone.lora_targets(pipe.denoiser, config)), "weights_bytes": weights,
            "method": "tensor bytes counted on fake (shape-only) tensors, the LoRA as hooks of its shape",
            "gradient_checkpointing": columns}


def fine_tune_table(record: dict[str, Any]) -> str:
    """The fine-tune estimate as markdown, GiB, one column per gradient-checkpointing choice."""
    columns = record["gradient_checkpointing"]
    lines = [f"{record['model']} · LoRA fine-tune step · {record['frames']} × {record['height']} × {record['width']} · "
             f"{record['dtype']} · rank {record['lora_rank']} on {record['lora_targets']} layers · estimated on fake "
             f"tensors (a lower bound)", "",
             "| GiB | " + " | ".join(f"gradient checkpointing {c}" for c in columns) + " |", "|---|" + "---:|" * len(columns),
             "| weights on the GPU (denoiser, VAE) | " + " | ".join(f"{record['weights_bytes'] / _GIB:.2f}" for _ in columns) + " |",
             "| LoRA + gradient + AdamW | " + " | ".join(f"{c['trainable'] / _GIB:.3f}" for c in columns.values()) + " |",
             "| one step's activations | " + " | ".join(f"{c['step'] / _GIB:.2f}" for c in columns.values()) + " |",
             "| **peak** | " + " | ".join(f"**{c['peak_bytes'] / _GIB:.2f}**" for c in columns.values()) + " |"]
    return "\n".join(lines)


def memory_table(record: dict[str, Any]) -> str:
    """The estimate as markdown: one column per checkpointing choice, GiB."""
    choices = list(record["checkpointing"])
    weights = record["weights_bytes"]
    head = (
        f"{record['model']} · {record['frames']} × {record['height']} × {record['width']} · {record['dtype']} · "
        f"attention {record['attention']} · VAE batch {record['vae_batch_size']} · estimated on fake tensors "
        f"(a lower bound: no CUDA context, allocator overhead or workspaces)"
    )
    lines = [head, "", "| GiB | " + " | ".join(f"checkpointing {c}" for c in choices) + " |",
             "|---|" + "---:|" * len(choices)]
    parts = ", ".join(f"{name} {value / _GIB:.2f}" for name, value in weights.items())
    lines.append(f"| weights ({parts}) | " + " | ".join(f"{sum(weights.values()) / _GIB:.2f}" for _ in choices) + " |")
    if record.get("text_encoder_offloaded"):
        loop = record["loop_weights_bytes"] / _GIB
        lines.append("| weights during the loop (text encoder moved off after encoding) | "
                     + " | ".join(f"{loop:.2f}" for _ in choices) + " |")
    for stage in record["checkpointing"][choices[0]]["stages"]:
        values = [record["checkpointing"][c]["stages"][stage] / _GIB for c in choices]
        lines.append(f"| {stage} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    lines.append("| **run peak** (weights on the GPU + largest stage) | "
                 + " | ".join(f"**{record['checkpointing'][c]['peak_bytes'] / _GIB:.2f}**" for c in choices) + " |")
    return "\n".join(lines)


__all__ = ["component_configs", "estimate_fine_tune_memory", "estimate_memory", "fine_tune_table", "lora_step_memory",
           "memory_table", "stage_memory", "stage_memory_by_checkpointing"]
