"""Train the bundled "shapes" text-to-video model from scratch, seeded and resumable.

    python -m pipelines.training.shapes_training                      # writes pipelines/shapes_model/
    python -m pipelines.training.shapes_training --unet-minutes 60    # train the UNet for a wall-clock budget
    python -m pipelines.training.shapes_training --device cuda --batch-size 64 --restart-minutes 6.5   # a GPU sitting

Three stages, each checkpointed in ``--workdir`` so that a stopped run resumes where it was:

1. the VAE (``AutoencoderKL``, 64×64 frames → 4×16×16 latents) on random frames of the shapes world;
2. a fixed pool of clips encoded once into latents (posterior means);
3. the ``UNet3DConditionModel`` and the ``CLIPTextModel`` (word-level tokenizer over the caption
   vocabulary) jointly, ε-prediction MSE with 10 % empty captions for classifier-free guidance.
4. optionally (``--refine-decoder-steps``), the VAE decoder on the model's own samples of renders, so
   that it decodes what the UNet actually makes (e.g. squares with rounded corners) as the render.

The result is a diffusers folder (safetensors, float16) loadable with ``--model shapes``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL

from sma_guidance import metrics, shapes
from sma_guidance.config import PRESET_FILE
from sma_guidance.video_io import to_uint8

from pipelines.motion_transfer.backbones import BUNDLED_MODELS
from pipelines.motion_transfer.backbones.tokenizers import build_word_tokenizer
from pipelines.motion_transfer.backbones.zeroscope import build_small_video_model

SHAPES_MODEL_DIR = BUNDLED_MODELS["shapes"]
MAX_TOKENS = 24
TEMPORAL_PREFIXES = ("transformer_in.",)  # plus every "*.temp_convs.*" / "*.temp_attentions.*"


def build_shapes_components(
    seed: int = 0, prediction_type: str = "epsilon", attention_at_16: bool = False
) -> dict[str, Any]:
    """Untrained components of the shapes model (same classes as Zeroscope's): 64×64 frames →
    4×16×16 latents; text cross-attention at 8×8 (and at 16×16 with ``attention_at_16``); a DDIM
    scheduler with Zeroscope's noise schedule that predicts ``prediction_type`` (``"epsilon"`` or
    ``"v_prediction"``)."""
    torch.manual_seed(seed)
    components = build_small_video_model(
        build_word_tokenizer(shapes.vocabulary(), max_length=MAX_TOKENS),
        text_width=64,
        vae_channels=(16, 32, 64),
        unet_channels=(32, 48, 64),
        latent_size=16,
        cross_attention_blocks=(attention_at_16, True, False),
        attention_head_dim=8,
        norm_groups=16,
        vae_norm_groups=16,
    )
    scheduler = components["scheduler"]
    components["scheduler"] = type(scheduler).from_config(scheduler.config, prediction_type=prediction_type)
    return components


def _frames_batch(rng: np.random.Generator, count: int) -> torch.Tensor:
    """``count`` random frames of random clips, ``(count, 3, 64, 64)`` in [-1, 1]."""
    frames = []
    while len(frames) < count:
        clip, _, _ = shapes.sample_clip(rng)
        frames.extend(clip[rng.permutation(len(clip))[:2]])
    batch = torch.from_numpy(np.stack(frames[:count])).permute(0, 3, 1, 2).float()
    return batch / 127.5 - 1


def _save_state(path: Path, **state: Any) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _resume(checkpoint: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load ``model`` and ``optimizer`` from ``checkpoint`` if it exists; the step to continue from."""
    if not checkpoint.exists():
        return 0
    state = torch.load(checkpoint, weights_only=False, map_location=next(model.parameters()).device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["step"]


BORDER_RING_PX = 4


def _border_ring(size: tuple[int, int], width: int) -> torch.Tensor:
    """``(1, 1, H, W)``: 1 on the outer ``width`` pixels of a frame, 0 inside."""
    ring = torch.ones(1, 1, *size)
    ring[..., width:-width, width:-width] = 0
    return ring


def reconstruction_loss(
    recon: torch.Tensor, frames: torch.Tensor, border_weight: float = 4.0, tint_weight: float = 0.0
) -> torch.Tensor:
    """Weighted L1 + MSE of decoded frames ``(N, 3, H, W)`` against renders, both in [-1, 1] (object
    pixels weigh 21, background ones 1, the outer ring ``border_weight`` more), plus ``tint_weight`` times
    the background's tint: the mean over frames and channels of |the mean error over background pixels|."""
    # Objects cover a few percent of a frame: weight their pixels up, or the background wins. The
    # outer ring too: the convolutions' zero padding tints the borders unless errors there count.
    corner = frames[:, :, :1, :1]
    is_object = ((frames - corner).abs().amax(dim=1, keepdim=True) > 0.1).float()
    weight = 1 + 20 * is_object + border_weight * _border_ring(frames.shape[-2:], BORDER_RING_PX).to(frames.device)
    error = recon - frames
    loss = ((error.abs() + error.pow(2)) * weight).mean() / weight.mean()
    if not tint_weight:
        return loss
    # Per-pixel terms leave a uniform shift of the whole background cheap: the decoder learned to tint a
    # large object's background toward its complement (a 24-px magenta square on gray: 31 RGB off).
    background = 1 - is_object
    tint = (error * background).sum(dim=(2, 3)) / background.sum(dim=(2, 3)).clamp(min=1)
    return loss + tint_weight * tint.abs().mean()


def train_vae(
    vae: AutoencoderKL, workdir: Path, steps: int, seed: int, log: dict, border_weight: float = 4.0
) -> None:
    """Reconstruction (L1 + MSE, object pixels and the outer ring weighted up) of the posterior mean
    with a small KL term; resumes from ``workdir/vae.pt``."""
    checkpoint = workdir / "vae.pt"
    device = next(vae.parameters()).device
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    start = _resume(checkpoint, vae, optimizer)
    rng = np.random.default_rng(seed + start)
    clock = time.time()
    vae.train()
    for step in range(start, steps):
        lr = 2e-3 * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        frames = _frames_batch(rng, 16).to(device)
        posterior = vae.encode(frames).latent_dist
        rec = reconstruction_loss(vae.decode(posterior.mode()).sample, frames, border_weight)
        loss = rec + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            print(f"vae step {step + 1}/{steps} rec {rec.item():.4f} ({time.time() - clock:.0f}s)", flush=True)
            log["vae_final_reconstruction"] = rec.item()
            _save_state(checkpoint, model=vae.state_dict(), optimizer=optimizer.state_dict(), step=step + 1)
    log["vae_seconds"] = log.get("vae_seconds", 0) + time.time() - clock
    vae.eval()


# Far from the training streams (seeds 0 and 7) and from the quality benchmark's.
VAE_CHECK_SEED = 20251126


@torch.no_grad()
def vae_round_trip(vae: AutoencoderKL, clips: int = 200, seed: int = VAE_CHECK_SEED) -> dict[str, float]:
    """How much of the shapes world survives ``vae``: ``clips`` single-object renders (every colour,
    shape, background, size and motion the world draws; seeds apart from training) are encoded
    (posterior mean) and decoded, and judged as the benchmark judges outputs.

    Returns the share of clips whose object keeps its colour (``color``) and shape (``shape``), whose
    background stays the named one at the borders and inside (``background``,
    :func:`sma_guidance.metrics.background_match`), and all three at once (``all``).
    """
    rng = np.random.default_rng(seed)
    hits = np.zeros((clips, 3), bool)
    for index in range(clips):
        spec = shapes.sample_clip_spec(rng, p_two=0)
        frames = torch.from_numpy(shapes.render(spec)).permute(0, 3, 1, 2).float() / 127.5 - 1
        decoded = vae.decode(vae.encode(frames.to(vae.device, vae.dtype)).latent_dist.mode()).sample
        clip = to_uint8((decoded.float() / 2 + 0.5).permute(0, 2, 3, 1))  # as the pipeline decodes
        found = metrics.detect_object(clip)
        obj = spec.objects[0]
        hits[index] = (
            found is not None and found["color"] == obj.color,
            found is not None and found["shape"] == obj.shape,
            metrics.background_match(clip, spec.background),
        )
    rates = hits.mean(axis=0)
    return {"color": float(rates[0]), "shape": float(rates[1]), "background": float(rates[2]),
            "all": float(hits.all(axis=1).mean()), "clips": clips}


@torch.no_grad()
def encode_pool(
    vae: AutoencoderKL, workdir: Path, clips: int, seed: int, clips_per_batch: int = 1
) -> tuple[torch.Tensor, list]:
    """Latent means ``(N, 4, F, 16, 16)`` (on the CPU) of a fixed pool of clips and their specs (cached);
    ``clips_per_batch`` clips go through the encoder at once (1 on a CPU, more on a GPU)."""
    cache = workdir / "pool.pt"
    if cache.exists():
        state = torch.load(cache, weights_only=False)
        if state["clips"] == clips:
            return state["latents"], state["specs"]
    rng = np.random.default_rng(seed)
    latents, specs, pending = [], [], []
    for index in range(clips):
        clip, _, spec = shapes.sample_clip(rng)
        pending.append(clip)
        specs.append(spec)
        if len(pending) == clips_per_batch or index + 1 == clips:
            frames = torch.from_numpy(np.concatenate(pending)).permute(0, 3, 1, 2).float() / 127.5 - 1
            encoded = vae.encode(frames.to(vae.device)).latent_dist.mode().cpu()
            latents.extend(encoded.unflatten(0, (len(pending), -1)).permute(0, 2, 1, 3, 4))
            pending = []
        if (index + 1) % 1000 == 0:
            print(f"encoded {index + 1}/{clips} clips", flush=True)
    stacked = torch.stack(latents)
    torch.save({"clips": clips, "latents": stacked, "specs": specs}, cache)
    return stacked, specs


def object_masks(specs: list, latent_size: int = 16, halo: int = 1) -> torch.Tensor:
    """Where each clip's objects lie on the latent grid: float ``(N, 1, F, latent_size, latent_size)`` in
    [0, 1]. A latent cell counts as much as the object covers any of its pixels (max-pooled coverage), and
    the mask grows by ``halo`` cells because a cell's decoded pixels reach into its neighbours."""
    masks = []
    for spec in specs:
        cover = np.zeros((spec.num_frames, spec.size, spec.size), np.float32)
        for obj in spec.objects:
            cover = np.maximum(cover, shapes.coverage(obj, spec.num_frames, spec.size))
        masks.append(torch.nn.functional.max_pool2d(torch.from_numpy(cover)[:, None], spec.size // latent_size))
    cells = torch.cat(masks)  # (N·F, 1, latent_size, latent_size)
    if halo:
        cells = torch.nn.functional.max_pool2d(cells, 2 * halo + 1, stride=1, padding=halo)
    return cells.view(len(specs), -1, 1, latent_size, latent_size).transpose(1, 2).contiguous()


def _redraw_share(t: torch.Tensor, share: float, bounds: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Timesteps ``t`` ``(B,)`` with about ``share`` of them drawn again, uniformly from ``[low, high)``."""
    redrawn = torch.randint(*bounds, t.shape, generator=generator, device=t.device)
    return torch.where(torch.rand(t.shape, generator=generator, device=t.device) < share, redrawn, t)


def clip_draw_probability(specs: list, shape_weights: dict[str, float] | None) -> np.ndarray | None:
    """Probability of drawing each pool clip ``(N,)``: proportional to the weight of its first object's
    shape (unnamed shapes 1); ``None`` (uniform) without weights."""
    if not shape_weights:
        return None
    weights = np.array([shape_weights.get(spec.objects[0].shape, 1.0) for spec in specs], float)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"shape weights must be >= 0 and not all 0, got {shape_weights}")
    return weights / weights.sum()


def ema_update(average: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """One step of an exponential moving average of weights, in place: ``a ← d·a + (1 − d)·p``.

    No warm-up: the sittings that use it resume trained weights, so the average may start there."""
    with torch.no_grad():
        for a, p in zip(average, params):
            a.lerp_(p.detach(), 1 - decay)


def train_unet(
    components: dict[str, Any],
    latents: torch.Tensor,
    specs: list,
    workdir: Path,
    steps: int,
    minutes: float | None,
    seed: int,
    log: dict,
    batch_size: int = 12,
    temporal_lr_scale: float = 1.0,
    high_noise_share: float = 0.0,
    high_noise_from: int = 500,
    low_noise_share: float = 0.0,
    low_noise_until: int = 400,
    max_snr_weight: float = 1.0,
    offset_noise: float = 0.0,
    restart_minutes: float | None = None,
    object_weight: float = 1.0,
    peak_lr: float = 3e-4,
    shape_weights: dict[str, float] | None = None,
    ema_decay: float = 0.0,
) -> None:
    """Joint training of the UNet3D and the text encoder on the scheduler's prediction type (ε or v);
    resumes from ``workdir/unet.pt``. ``latents`` may live on the CPU; the UNet's device is used.

    The learning rate follows one cosine over ``steps`` (``peak_lr`` → a tenth of it, after a 500-step
    warm-up). With ``restart_minutes`` this sitting is instead a warm restart: its own cosine over that
    many minutes (100-step warm-up from the peak), ending annealed whatever speed the machine has; ``steps`` and
    ``minutes`` are then ignored. ``object_weight`` > 1 weighs the loss on the latent cells the objects
    cover (:func:`object_masks`) that many times the background's. ``shape_weights`` (e.g.
    ``{"square": 2.0}``; unnamed shapes 1) draws clips whose first object has that shape that much more often.

    ``ema_decay`` > 0 keeps an exponential moving average of the UNet's and text encoder's weights
    (:func:`ema_update`; in the checkpoint beside the raw weights) and leaves the models holding it at the
    end, so that is what gets saved; the checkpoint keeps the raw weights to resume training from."""
    unet, text_encoder, tokenizer = components["unet"], components["text_encoder"], components["tokenizer"]
    device = next(unet.parameters()).device
    latents = latents.to(device)
    # Objects fill 2–14 % of a frame, so the plain loss is mostly background, which the model already gets
    # right; their shapes (squares with corners, triangles with straight sides) are what it gets wrong.
    masks = object_masks(specs, latents.shape[-1]).to(device) if object_weight != 1 else None
    alphas = components["scheduler"].alphas_cumprod.float().to(device)
    predicts_velocity = components["scheduler"].config.prediction_type == "v_prediction"
    draw_probability = clip_draw_probability(specs, shape_weights)
    checkpoint = workdir / "unet.pt"
    params = [*unet.parameters(), *text_encoder.parameters()]
    # The temporal layers start as identities (zero-initialised last convs / projections) and move
    # slowly at the shared learning rate; a recipe can give them a larger step (a variant we tried).
    temporal = [p for n, p in unet.named_parameters() if n.startswith(TEMPORAL_PREFIXES) or ".temp_" in n]
    chosen = {id(p) for p in temporal}
    groups = [
        {"params": [p for p in params if id(p) not in chosen], "scale": 1.0},
        {"params": temporal, "scale": temporal_lr_scale},
    ]
    optimizer = torch.optim.AdamW(groups, lr=peak_lr, weight_decay=1e-2)
    start = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False, map_location=device)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        if len(state["optimizer"]["param_groups"]) == len(groups):
            optimizer.load_state_dict(state["optimizer"])
            for group, spec in zip(optimizer.param_groups, groups):
                group["scale"] = spec["scale"]
        else:  # a checkpoint from before the temporal group: its moments cannot be mapped, start afresh
            print("optimizer state from an older recipe: Adam moments start afresh", flush=True)
        start = state["step"]
    ema = None
    if ema_decay > 0:
        saved = state.get("ema") if checkpoint.exists() else None
        # a sitting that adds the average starts it from the weights it resumes
        ema = [w.to(device) for w in saved] if saved is not None else [p.detach().clone() for p in params]
    rng = np.random.default_rng(seed + 1 + start)
    # Noise and timesteps are drawn where the UNet runs: on a GPU, drawing them on the host and copying
    # them over bounded the step rate. On a CPU this is the same stream as before.
    generator = torch.Generator(device).manual_seed(seed + start)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    token_ids: dict[str, torch.Tensor] = {}  # the captions are a few hundred strings: tokenize each once

    def tokenize(captions: list[str]) -> torch.Tensor:
        for caption in set(captions) - token_ids.keys():
            token_ids[caption] = tokenizer(caption, padding="max_length", max_length=MAX_TOKENS,
                                           truncation=True, return_tensors="pt").input_ids[0]
        return torch.stack([token_ids[caption] for caption in captions])
    unet.train()
    text_encoder.train()
    clock = time.time()
    losses: list[torch.Tensor] = []
    step = start

    def running() -> bool:
        if restart_minutes is not None:
            return time.time() - clock < restart_minutes * 60
        return step < steps and (minutes is None or time.time() - clock < minutes * 60)

    while running():
        if restart_minutes is None:
            progress, warmup = step / steps, min(1.0, (step + 1) / 500)
        else:
            progress, warmup = (time.time() - clock) / (restart_minutes * 60), min(1.0, (step - start + 1) / 100)
        lr = peak_lr * warmup * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
        for group in optimizer.param_groups:
            group["lr"] = lr * group["scale"]
        if draw_probability is None:  # the default recipe keeps its random stream
            index = rng.integers(0, len(latents), batch_size)
        else:
            index = rng.choice(len(latents), batch_size, p=draw_probability)
        clean = latents[torch.from_numpy(index).to(device)] * components["vae"].config.scaling_factor
        captions = [
            "" if rng.random() < 0.1 else shapes.random_caption(specs[i], rng) for i in index.tolist()
        ]
        embedding = text_encoder(tokenize(captions).to(device))[0]
        t = torch.randint(0, len(alphas), (batch_size,), generator=generator, device=device)
        if high_noise_share > 0:  # no extra draws otherwise: the default recipe keeps its random stream
            t = _redraw_share(t, high_noise_share, (high_noise_from, len(alphas)), generator)
        if low_noise_share > 0:
            # Squares lose their corners when the model denoises from t ≈ 120–360 (the model card's table, pipelines/shapes_model/README.md):
            # a sitting can spend more of its steps there.
            t = _redraw_share(t, low_noise_share, (0, low_noise_until), generator)
        noise = torch.randn(clean.shape, generator=generator, device=device)
        if offset_noise > 0:
            # The schedule leaves √ᾱ_T ≈ 0.07 of the clip at t = T, enough for the model to read the
            # background colour off the noise's mean instead of the prompt; sampling starts from
            # zero-mean noise, so backgrounds came out tinted at random. A per-clip, per-channel offset
            # (constant over frames and pixels) hides that mean (Guttenberg 2023, "offset noise").
            noise = noise + offset_noise * torch.randn(*clean.shape[:2], 1, 1, 1, generator=generator, device=device)
        a = alphas[t].view(-1, 1, 1, 1, 1)
        noisy = a.sqrt() * clean + (1 - a).sqrt() * noise
        # v = √ᾱ ε − √(1−ᾱ) x₀: its MSE weighs x₀ errors by 1/(1−ᾱ) instead of ε's SNR = ᾱ/(1−ᾱ), so
        # the noisiest steps, the only ones where the motion phrase says what the clip cannot, count.
        target = a.sqrt() * noise - (1 - a).sqrt() * clean if predicts_velocity else noise
        error = (unet(noisy, t, encoder_hidden_states=embedding).sample - target).pow(2)
        # The motion phrase only tells the model something the noisy clip does not at high noise, where
        # ε-MSE scales x0 errors by SNR ≪ 1; a recipe can weight by 1/SNR (capped) to stress those steps.
        weight = ((1 - a) / a).clamp(1.0, max_snr_weight)
        if masks is not None:
            weight = weight * (1 + (object_weight - 1) * masks[torch.from_numpy(index).to(device)])
        loss = (weight * error).mean() / weight.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if ema is not None:
            ema_update(ema, params, ema_decay)
        # plain MSE of the prediction, comparable across recipes (no .item(): a GPU would wait each step)
        losses.append(error.mean().detach())
        step += 1
        if step % 100 == 0 or step == steps or not running():
            recent = float(torch.stack(losses[-100:]).mean())
            losses = losses[-100:]
            print(f"unet step {step}/{steps} loss {recent:.4f} lr {lr:.2e} ({time.time() - clock:.0f}s)", flush=True)
            log["unet_final_loss_100"] = recent
            log["unet_steps"] = step
            _save_state(
                checkpoint,
                unet=unet.state_dict(),
                text_encoder=text_encoder.state_dict(),
                optimizer=optimizer.state_dict(),
                step=step,
                **({"ema": ema} if ema is not None else {}),
            )
    log["unet_seconds"] = log.get("unet_seconds", 0) + time.time() - clock
    if restart_minutes is not None:
        log.setdefault("unet_restarts", []).append(
            {"from_step": start, "to_step": step, "minutes": restart_minutes, "batch_size": batch_size,
             "peak_lr": peak_lr, "object_weight": object_weight, "low_noise_share": low_noise_share,
             "high_noise_share": high_noise_share, "shape_weights": shape_weights or {},
             "ema_decay": ema_decay, "device": str(device), "seconds": round(time.time() - clock)}
        )
    if ema is not None:
        with torch.no_grad():
            for param, average in zip(params, ema):
                param.copy_(average)
    unet.eval()
    text_encoder.eval()


# Sampling starts from this range of timesteps when making refinement pairs: high enough that the model
# redraws the object's outline, low enough that it keeps the render's layout (so the render stays the target).
REFINE_T_RANGE = (200, 560)


@torch.no_grad()
def decoder_pairs(
    pipe: Any, clips: int, seed: int, batch: int = 16, guidance_scale: float = 7.5, num_inference_steps: int = 25
) -> dict[str, torch.Tensor]:
    """What the model's own sampling makes of renders, for the decoder to learn to undo.

    Each single-object clip is rendered, encoded (posterior mean), noised to a sampling timestep drawn
    from :data:`REFINE_T_RANGE` and denoised to t = 0 by ``pipe``'s sampler (DDIM, classifier-free
    guidance, prompted with a training caption). The output keeps the render's layout but carries the
    model's systematic errors: a square's corners come back rounded (7 of 8 squares on the bundled
    model, against 0 of 24 circles and triangles changed).

    Returns ``latents`` (the encoder's) and ``sampled`` (the model's), both ``(N, 4, F, h, w)`` unscaled
    on the CPU, and the render ``frames`` ``(N, F, H, W, 3)`` uint8.
    """
    vae, device = pipe.vae, pipe.vae.device
    scaling = vae.config.scaling_factor
    timesteps = [int(t) for t in pipe.sampling_timesteps(num_inference_steps)]
    starts = [i for i, t in enumerate(timesteps) if REFINE_T_RANGE[0] <= t <= REFINE_T_RANGE[1]]
    rng, generator = np.random.default_rng(seed), torch.Generator(device).manual_seed(seed)
    empty = pipe.encode_prompt("")
    alphas = pipe.scheduler.alphas_cumprod.to(device)
    out: dict[str, list] = {"latents": [], "sampled": [], "frames": []}
    for first in range(0, clips, batch):
        specs = [shapes.sample_clip_spec(rng, p_two=0) for _ in range(min(batch, clips - first))]
        frames = np.stack([shapes.render(spec) for spec in specs])
        pixels = torch.from_numpy(frames).flatten(0, 1).permute(0, 3, 1, 2).to(device).float() / 127.5 - 1
        latents = vae.encode(pixels).latent_dist.mode().unflatten(0, (len(specs), -1)).transpose(1, 2)
        captions = [shapes.random_caption(spec, rng) for spec in specs]
        embeddings = torch.cat([empty.expand(len(specs), -1, -1), *map(pipe.encode_prompt, captions)])
        start = int(rng.choice(starts))
        a = alphas[timesteps[start]]
        noisy = a.sqrt() * latents * scaling + (1 - a).sqrt() * torch.randn(
            latents.shape, generator=generator, device=device)
        for t in timesteps[start:]:
            noisy = pipe.denoise_step(noisy, t, embeddings, guidance_scale)
        out["latents"].append(latents.cpu())
        out["sampled"].append((noisy / scaling).cpu())
        out["frames"].append(torch.from_numpy(frames))
    return {name: torch.cat(parts) for name, parts in out.items()}


def refine_decoder(
    vae: AutoencoderKL,
    pairs: dict[str, torch.Tensor],
    workdir: Path,
    steps: int,
    seed: int,
    log: dict,
    frames_per_step: int = 16,
    peak_lr: float = 3e-4,
    sampled_share: float = 0.5,
    tint_weight: float = 0.0,
) -> None:
    """Fine-tune the decoder (``post_quant_conv`` and ``decoder``; the encoder, hence the latent space the
    UNet was trained on, stays fixed) to decode the model's sampled latents to their renders
    (:func:`decoder_pairs`); the other ``1 - sampled_share`` of each batch decodes the encoder's own
    latents, so that round trips stay exact. Same loss as :func:`train_vae`, plus ``tint_weight`` times the
    background's tint (:func:`reconstruction_loss`); cosine learning rate; resumes from
    ``workdir/decoder.pt``."""
    checkpoint = workdir / "decoder.pt"
    device = next(vae.parameters()).device
    params = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=peak_lr, weight_decay=0.0)
    start = _resume(checkpoint, vae, optimizer)
    rng = np.random.default_rng(seed + 11 + start)
    clips, frames_per_clip = pairs["frames"].shape[:2]
    clock = time.time()
    vae.train()
    for step in range(start, steps):
        lr = peak_lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        clip = torch.from_numpy(rng.integers(0, clips, frames_per_step))
        frame = torch.from_numpy(rng.integers(0, frames_per_clip, frames_per_step))
        sampled = torch.from_numpy(rng.random(frames_per_step) < sampled_share).view(-1, 1, 1, 1)
        latents = torch.where(sampled, pairs["sampled"][clip, :, frame], pairs["latents"][clip, :, frame])
        target = pairs["frames"][clip, frame].permute(0, 3, 1, 2).float() / 127.5 - 1
        rec = reconstruction_loss(vae.decode(latents.to(device)).sample, target.to(device), tint_weight=tint_weight)
        optimizer.zero_grad(set_to_none=True)
        rec.backward()
        optimizer.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            print(f"decoder step {step + 1}/{steps} rec {rec.item():.4f} ({time.time() - clock:.0f}s)", flush=True)
            log["decoder_refine_steps"], log["decoder_refine_reconstruction"] = step + 1, rec.item()
            _save_state(checkpoint, model=vae.state_dict(), optimizer=optimizer.state_dict(), step=step + 1)
    vae.eval()


def graft_unet(unet: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load ``state``, a UNet3D's weights, into ``unet``, which may have attention layers the saved one
    lacks (e.g. cross-attention added at 16×16); returns the names of the modules so added.

    Spatial and temporal transformers add their output to their input, so zeroing their last projection
    (``proj_out``) makes each new one an identity: the grafted UNet computes exactly what the saved one
    did, and training grows the new layers from there."""
    missing, unexpected = unet.load_state_dict(state, strict=False)
    added = sorted({key.split(".proj_out.")[0] for key in missing if ".proj_out." in key})
    stray = [key for key in missing if not key.startswith(tuple(name + "." for name in added))]
    if unexpected or stray:
        raise ValueError(f"cannot graft: unexpected {unexpected[:3]}, missing outside new attention {stray[:3]}")
    modules = dict(unet.named_modules())
    with torch.no_grad():
        for name in added:
            modules[name].proj_out.weight.zero_()
            modules[name].proj_out.bias.zero_()
    return added


def _init_from(components: dict[str, Any], folder: Path, workdir: Path, vae_steps: int) -> dict:
    """Seed the checkpoints from a saved model (optimizer state starts afresh): the VAE stage counts as
    done and the UNet stage continues from the step count in the folder's training log. Attention layers
    this UNet has and the saved one lacks are grafted in as identities (:func:`graft_unet`)."""
    from pipelines.motion_transfer.pipeline_sma import SMAMotionTransferPipeline

    saved = SMAMotionTransferPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
    components["vae"].load_state_dict(saved.vae.state_dict())
    added = graft_unet(components["unet"], saved.unet.state_dict())
    if added:
        print(f"grafted {len(added)} attention layers as identities: {', '.join(added)}", flush=True)
    _load_text_encoder(components, saved.text_encoder, saved.tokenizer)
    log = json.loads((folder / "training_log.json").read_text())
    _save_state(workdir / "vae.pt", model=components["vae"].state_dict(),
                optimizer=torch.optim.AdamW(components["vae"].parameters()).state_dict(), step=vae_steps)
    params = [*components["unet"].parameters(), *components["text_encoder"].parameters()]
    _save_state(workdir / "unet.pt", unet=components["unet"].state_dict(),
                text_encoder=components["text_encoder"].state_dict(),
                optimizer=torch.optim.AdamW(params).state_dict(), step=int(log.get("unet_steps", 0)))
    return log


def _load_text_encoder(components: dict[str, Any], text_encoder: torch.nn.Module, tokenizer: Any) -> None:
    """Copy a saved text encoder whose tokenizer may number the tokens differently: embedding rows are
    matched by token string (a token new to this tokenizer keeps its fresh initialisation)."""
    state = text_encoder.state_dict()
    key = "embeddings.token_embedding.weight"
    old_rows, new_rows = state.pop(key), components["text_encoder"].state_dict()[key].clone()
    old_ids = tokenizer.get_vocab()
    for token, new_id in components["tokenizer"].get_vocab().items():
        if token in old_ids:
            new_rows[new_id] = old_rows[old_ids[token]]
    state[key] = new_rows
    components["text_encoder"].load_state_dict(state)


def _shape_weight(text: str) -> tuple[str, float]:
    """``"square=2"`` → ``("square", 2.0)``; argparse reports the error on anything else."""
    shape, _, weight = text.partition("=")
    try:
        value = float(weight)
    except ValueError:
        value = math.nan
    if shape not in shapes.SHAPES or not value >= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give SHAPE=WEIGHT with SHAPE one of {', '.join(shapes.SHAPES)} and WEIGHT >= 0")
    return shape, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=SHAPES_MODEL_DIR)
    parser.add_argument("--workdir", type=Path, default=Path(".shapes_work"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--clips", type=int, default=12000)
    parser.add_argument("--unet-steps", type=int, default=3200)
    parser.add_argument("--unet-minutes", type=float, default=None, help="stop the UNet stage after this long")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="where to train (cpu, cuda)")
    parser.add_argument("--batch-size", type=int, default=12, help="UNet batch (clips per step)")
    parser.add_argument("--restart-minutes", type=float, default=None,
                        help="a warm-restart sitting of the UNet: its own cosine learning rate over this many minutes")
    # Recipe variants tried on top of the shipped model (see the model card's training history); the defaults are its recipe.
    parser.add_argument("--ema-decay", type=float, default=0.0,
                        help="keep a moving average of the weights with this decay (e.g. 0.999) and save it; 0: off")
    parser.add_argument("--temporal-lr-scale", type=float, default=1.0, help="learning-rate factor of the temporal layers")
    parser.add_argument("--high-noise-share", type=float, default=0.0, help="share of timesteps drawn from the noisier range")
    parser.add_argument("--high-noise-from", type=int, default=500, help="first timestep of the noisier range")
    parser.add_argument("--low-noise-share", type=float, default=0.0, help="share of timesteps drawn below --low-noise-until")
    parser.add_argument("--low-noise-until", type=int, default=400, help="end (exclusive) of the less noisy range")
    parser.add_argument("--max-snr-weight", type=float, default=1.0, help="cap of the 1/SNR loss weight (1 = plain ε-MSE)")
    parser.add_argument("--offset-noise", type=float, default=0.0,
                        help="std of a per-clip, per-channel constant added to the training noise")
    parser.add_argument("--object-weight", type=float, default=1.0,
                        help="loss weight of the latent cells the objects cover, against 1 for the background")
    parser.add_argument("--peak-lr", type=float, default=3e-4,
                        help="peak learning rate (a short sitting on an annealed model wants less, e.g. 1e-4)")
    parser.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default="epsilon",
                        help="what the UNet predicts (a variant we tried: v_prediction)")
    parser.add_argument("--shape-weight", type=_shape_weight, action="append", default=[], metavar="SHAPE=WEIGHT",
                        help="draw clips of this first shape WEIGHT times as often (repeatable; e.g. square=2)")
    parser.add_argument(
        "--init-from", type=Path, default=None, help="continue from a saved model folder (e.g. the bundled one)"
    )
    parser.add_argument("--refine-decoder-steps", type=int, default=0,
                        help="then fine-tune the VAE decoder this many steps on the model's own samples (0: skip)")
    parser.add_argument("--refine-clips", type=int, default=1600, help="clips sampled for the decoder refinement")
    parser.add_argument("--refine-tint-weight", type=float, default=0.0,
                        help="weight of the background-tint term in the decoder refinement's loss (0: off)")
    parser.add_argument("--attention-at-16", action="store_true",
                        help="text cross-attention at the 16×16 level too (grafted in as identities with --init-from)")
    args = parser.parse_args(argv)
    shape_weights = dict(args.shape_weight)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    log_path = args.workdir / "log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    components = build_shapes_components(args.seed, args.prediction_type, args.attention_at_16)
    for name in ("vae", "unet", "text_encoder"):
        components[name].to(args.device)
    if args.init_from is not None and not (args.workdir / "unet.pt").exists():
        # The saved model's log is the history this run continues; this run's recipe goes on top of it.
        log = {**_init_from(components, args.init_from, args.workdir, args.vae_steps), **log}
    log.update({"seed": args.seed, "vae_steps": args.vae_steps, "clips": args.clips, "unet_target_steps": args.unet_steps,
                "temporal_lr_scale": args.temporal_lr_scale, "high_noise_share": args.high_noise_share,
                "high_noise_from": args.high_noise_from, "max_snr_weight": args.max_snr_weight,
                "low_noise_share": args.low_noise_share, "low_noise_until": args.low_noise_until,
                "offset_noise": args.offset_noise, "object_weight": args.object_weight,
                "attention_at_16": args.attention_at_16, "prediction_type": args.prediction_type})

    train_vae(components["vae"], args.workdir, args.vae_steps, args.seed, log)
    if "vae_round_trip" not in log:
        log["vae_round_trip"] = vae_round_trip(components["vae"])
        print(f"vae round trip: {log['vae_round_trip']}", flush=True)
    log_path.write_text(json.dumps(log, indent=2))
    latents, specs = encode_pool(components["vae"], args.workdir, args.clips, args.seed + 7,
                                 clips_per_batch=1 if args.device == "cpu" else 64)
    scaling = float(1 / latents.std())
    components["vae"].register_to_config(scaling_factor=scaling)
    log["vae_scaling_factor"] = scaling

    train_unet(components, latents, specs, args.workdir, args.unet_steps, args.unet_minutes, args.seed, log,
               temporal_lr_scale=args.temporal_lr_scale, high_noise_share=args.high_noise_share,
               high_noise_from=args.high_noise_from, max_snr_weight=args.max_snr_weight,
               low_noise_share=args.low_noise_share, low_noise_until=args.low_noise_until,
               offset_noise=args.offset_noise, object_weight=args.object_weight, peak_lr=args.peak_lr,
               batch_size=args.batch_size, restart_minutes=args.restart_minutes, shape_weights=shape_weights,
               ema_decay=args.ema_decay)
    log_path.write_text(json.dumps(log, indent=2))

    from pipelines.motion_transfer.pipeline_sma import SMAMotionTransferPipeline

    pipe = SMAMotionTransferPipeline(**components)
    if args.refine_decoder_steps:
        cache = args.workdir / "refine_pairs.pt"
        pairs = torch.load(cache) if cache.exists() else None
        if pairs is None or len(pairs["frames"]) != args.refine_clips:
            clock = time.time()
            pairs = decoder_pairs(pipe, args.refine_clips, args.seed + 13, batch=16 if args.device == "cpu" else 256)
            torch.save(pairs, cache)
            print(f"sampled {args.refine_clips} clips for the decoder ({time.time() - clock:.0f}s)", flush=True)
        if "decoder_refine_steps" in log and not (args.workdir / "decoder.pt").exists():
            # The model this run continues was refined already: keep that sitting's record.
            earlier = {key: log.pop(key) for key in [k for k in log if k.startswith("decoder_refine_")]}
            earlier["round_trip"] = log.pop("vae_round_trip_refined", None)
            log["earlier_decoder_refinements"] = [*log.get("earlier_decoder_refinements", []), earlier]
        log["decoder_refine_clips"] = args.refine_clips
        log["decoder_refine_tint_weight"] = args.refine_tint_weight
        # Persist the move now: a sitting stopped once decoder.pt exists resumes without moving again, and
        # would otherwise overwrite the earlier record still sitting in the unmoved keys of log.json.
        log_path.write_text(json.dumps(log, indent=2))
        refine_decoder(components["vae"], pairs, args.workdir, args.refine_decoder_steps, args.seed, log,
                       tint_weight=args.refine_tint_weight)
        log["vae_round_trip_refined"] = vae_round_trip(components["vae"])
        print(f"vae round trip after the refinement: {log['vae_round_trip_refined']}", flush=True)
        log_path.write_text(json.dumps(log, indent=2))
    pipe.to("cpu", torch.float16)
    pipe.save_pretrained(args.output, safe_serialization=True)
    (args.output / "training_log.json").write_text(json.dumps(log, indent=2))
    (args.output / PRESET_FILE).write_text(json.dumps({"preset": "shapes"}) + "\n")  # its defaults when loaded by path
    print(f"saved the shapes model to {args.output}: {json.dumps(log)}", flush=True)


if __name__ == "__main__":
    main()
