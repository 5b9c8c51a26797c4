"""Zero-shot motion transfer with Spectral Motion Alignment (SMA) guidance on DMT.

Algorithm (DMT, Yatim et al. 2024, with SMA's objective, Park et al. 2025, eq. 19):

1. encode the input video with the VAE and DDIM-invert it with the source prompt, keeping the latent
   at every sampling timestep (cached on disk);
2. start from the inverted noise, keeping its low spatial frequencies and replacing the high ones
   with fresh noise;
3. for each of the first ``guidance_fraction`` of the DDIM steps, record decoder features of the
   inverted latent (reference) once, then run Adam on the current latent for ``optimization_steps``
   so that its features' frame-to-frame motion matches the reference's (DMT loss + Haar-wavelet
   global term + low-frequency-weighted FFT local term);
4. denoise with classifier-free guidance on the target prompt (optionally re-noising one step and
   denoising again: DMT's restart sampling), decode.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from typing import Any, Callable, Iterator

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLWan,
    DDIMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    UNet3DConditionModel,
    UNetMotionModel,
    WanTransformer3DModel,
)
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer, UMT5EncoderModel

from sma_guidance.config import SMAConfig
from sma_guidance.dmt import initial_latent
from sma_guidance.errors import UserAdvice, UserError
from sma_guidance.features import FeatureRecorder
from sma_guidance.guidance import classifier_free_guidance
from sma_guidance.masks import composite, dilate, pool_frames, resize_mask, subject_mask
from sma_guidance.memory import activation_checkpointing, checkpoint_units
from sma_guidance.precision import LossScale
from sma_guidance.scene import clip_border_color, plain_share, repaint_background, subject_alpha
from sma_guidance.video_io import (
    DEFAULT_FPS, Clip, read_clip, resize_and_crop, select_frames, selected_indices, source_positions,
)
from sma_guidance.windows import blend_windows, temporal_windows

from . import optimization
from .backbones import BACKBONES, Backbone, backbone_of, model_family
from .backbones.zeroscope import TINY_RANDOM
from .finetune import MotionAdapter, applied_adapter
from .inversion import InversionCache, inversion_cache_key, model_fingerprint, public_config
from .loading import load_pipeline, resolve_device, resolve_dtype
from .optimization import frozen
from .pipeline_output import SMAPipelineOutput
from .samplers import DDIMSampler, FlowMatchSampler, sampler_for

# a path (video file or image folder), a uint8 array (F, H, W, 3), a tensor (F, 3, H, W) in [-1, 1], or a Clip
# already read (read_clip: the part to use, taken as it is)
VideoInput = Any
# a path (image, video or image folder, white on the subject), or an array / tensor (F, H, W) or (H, W)
MaskInput = Any


# Said once per process (Python's warning registry), as a warning the CLI prints as one line.
EMPTY_SOURCE_PROMPT = (
    "the source prompt is empty: DMT inverts the input and records its reference features conditioned on a "
    "description of it, and without one the motion follows less; describe the input with --source-prompt "
    "(Python: source_prompt=), e.g. \"a red circle moving right on a black background\""
)
# --new-scene without a mask finds the subject as what stands off the frame's border colour; below this share
# of background pixels the clip's background is not plain, and the repaint would keep most of it.
PLAIN_BACKGROUND_SHARE = 0.5
NOT_PLAIN_BACKGROUND = (
    "--new-scene: only {share:.0%} of the clip's pixels match their frame's border colour, so its background is "
    "not plain and little of it is repainted; give the subject with --mask or --mask-box (Python: mask=, mask_box=)"
)


class SMAMotionTransferPipeline(DiffusionPipeline):
    """Transfer the motion of a video to new content described by a prompt, with no training.

    Components are those of a text-to-video diffusion model — a VAE, a text encoder and tokenizer, a
    scheduler — and its denoiser, whose class says the model's family (:mod:`pipelines.motion_transfer.backbones`): a
    ``unet`` that is a ``UNet3DConditionModel`` (Zeroscope, ``cerspense/zeroscope_v2_576w``) or a
    ``UNetMotionModel`` (AnimateDiff: SD 1.5 + a motion adapter), or a ``transformer`` that is a
    ``WanTransformer3DModel`` (Wan 2.1, flow matching). What differs between families goes through
    :attr:`backbone` and the sampler through :attr:`sampler`; the rest is written once.
    """

    model_cpu_offload_seq = "text_encoder->unet->transformer->vae"
    _optional_components = ["unet", "transformer"]

    def __init__(
        self,
        vae: AutoencoderKL | AutoencoderKLWan,
        text_encoder: CLIPTextModel | UMT5EncoderModel,
        tokenizer: CLIPTokenizer,
        scheduler: DDIMScheduler | FlowMatchEulerDiscreteScheduler,
        unet: UNet3DConditionModel | UNetMotionModel | None = None,
        transformer: WanTransformer3DModel | None = None,
    ) -> None:
        super().__init__()
        if (unet is None) == (transformer is None):
            raise ValueError("pass exactly one denoiser: a unet (Zeroscope, AnimateDiff) or a transformer (Wan)")
        scheduler = backbone_of(unet if unet is not None else transformer).sampling_scheduler(scheduler)
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              transformer=transformer)
        self.vae_scale_factor = int(getattr(self.vae.config, "scale_factor_spatial", None)
                                    or 2 ** (len(self.vae.config.block_out_channels) - 1))

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls, model: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
        motion_adapter: str | None = None,
    ) -> "SMAMotionTransferPipeline":
        """Load ``model`` (Hub id, local folder, ``tiny-random``, ``tiny-random-animatediff``, ...) onto
        ``device`` with actionable errors; ``motion_adapter`` (a diffusers ``MotionAdapter``'s Hub id or
        folder) makes an AnimateDiff of an SD 1.5 image model. ``dtype``: a torch dtype
        (``torch.float16``, as diffusers' ``torch_dtype``) or its name; ``"auto"``: float32 on the CPU, on a
        GPU the family's half precision (float16; Wan: bfloat16, the precision it was trained in)."""
        torch_device = resolve_device(str(device))
        torch_dtype = resolve_dtype(dtype, torch_device)
        family = model_family(model, motion_adapter)
        if dtype == "auto" and torch_dtype != torch.float32 and family in BACKBONES:
            torch_dtype = BACKBONES[family].half_dtype
        pipe = load_pipeline(cls, model, torch_dtype=torch_dtype, motion_adapter=motion_adapter)
        pipe.to(torch_device)
        if pipe.backbone.offloads_text_encoder and torch_device.type != "cpu":
            pipe.text_encoder.to("cpu")  # on the GPU only while it encodes (Wan's UMT5-XXL: 10.6 GiB)
        return pipe

    @property
    def model_name(self) -> str:
        return str(getattr(self.config, "_name_or_path", "") or TINY_RANDOM)

    @property
    def motion_adapter_name(self) -> str | None:
        """The motion adapter this pipeline was loaded with (``--motion-adapter``), if any."""
        return getattr(self.config, "_motion_adapter", None) or None

    @property
    def denoiser(self) -> torch.nn.Module:
        """The noise (or velocity) predictor: the ``unet``, or Wan's ``transformer``."""
        return self.unet if getattr(self, "unet", None) is not None else self.transformer

    @property
    def backbone(self) -> Backbone:
        """This model's family (:mod:`pipelines.motion_transfer.backbones`), from its denoiser's class."""
        return backbone_of(self.denoiser)

    @property
    def sampler(self) -> DDIMSampler | FlowMatchSampler:
        """The deterministic sampler of :attr:`scheduler` (DDIM, or flow-matching Euler), and its inversion."""
        cached = getattr(self, "_sampler", None)
        if cached is None or cached.scheduler is not self.scheduler:
            cached = self._sampler = sampler_for(self.scheduler)
        return cached

    @sampler.setter
    def sampler(self, sampler: DDIMSampler | FlowMatchSampler) -> None:
        """A sampler of this pipeline's own :attr:`scheduler`, made beforehand (e.g. outside a fake-tensor mode)."""
        if sampler.scheduler is not self.scheduler:
            raise ValueError("the sampler must drive this pipeline's scheduler")
        self._sampler = sampler

    def sampling_timesteps(self, num_inference_steps: int) -> list:
        """The sampling timesteps, noisiest first (ints for DDIM, floats σ·T for flow matching)."""
        return self.sampler.timesteps(num_inference_steps)

    def default_config(self) -> SMAConfig:
        """The defaults for this pipeline's model (its family's and its own preset applied, the recorded
        layers read off its architecture)."""
        return self.with_feature_layers(
            SMAConfig.for_model(self.model_name, family=self.backbone.name, motion_adapter=self.motion_adapter_name)
        )

    def with_feature_layers(self, config: SMAConfig) -> SMAConfig:
        """``config``, its ``feature_layers`` derived from this model's architecture when it names none
        (:meth:`~pipelines.motion_transfer.backbones.base.Backbone.default_feature_layers`: DMT's decoder block 1, Wan's
        middle block)."""
        if config.feature_layers is not None:
            return config
        return config.replace(feature_layers=self.backbone.default_feature_layers(self.denoiser))

    def feature_recorder(self, config: SMAConfig, stop_after_last: bool = True, frames: int | None = None) -> FeatureRecorder:
        """Hooks on ``config.feature_layers`` of the denoiser, their outputs as ``(B, F, C, H, W)`` (``F``:
        latent frames for a model whose VAE packs frames in time; ``frames``: those of one temporal window)."""
        return FeatureRecorder(
            self.denoiser, config.feature_layers, frames or self.backbone.feature_frames(self, config),
            stop_after_last=stop_after_last, to_frames=self.backbone.feature_reshaper(self, config),
        )

    # ------------------------------------------------------------------------------ long clips and subjects
    def temporal_windows(self, config: SMAConfig) -> list[tuple[int, int]]:
        """The latent-frame windows ``[(start, stop), ...]`` a ``config`` run samples in
        (:func:`sma_guidance.windows.temporal_windows`): one, the whole clip, when it fits ``config.window``;
        else windows of the window's latent frames overlapping by ``config.overlap_frames`` (in latent frames:
        Wan packs 4 frames in one)."""
        total = self.backbone.latent_shape(self, config)[2]
        if not config.windowed:
            return [(0, total)]
        window = self.backbone.latent_shape(self, config.replace(num_frames=config.window))[2]
        groups = self.backbone.latent_frame_groups(self.vae, config.num_frames)
        per_latent = max(stop - start for start, stop in groups)  # frames packed in one latent frame
        overlap = min(window - 1, config.overlap_frames // per_latent)
        return temporal_windows(total, window, overlap)

    def window_frames(self, config: SMAConfig, windows: list[tuple[int, int]]) -> list[list[int]]:
        """The video frames ``[start, stop)`` each latent-frame window holds (what a run's JSON records)."""
        groups = self.backbone.latent_frame_groups(self.vae, config.num_frames)
        return [[groups[start][0], groups[stop - 1][1]] for start, stop in windows]

    @contextlib.contextmanager
    def in_windows(self, windows: list[tuple[int, int]]) -> Iterator[None]:
        """Inside the block, :meth:`model_prediction` on the whole clip's latents predicts window by window and
        cross-fades the overlaps (:func:`sma_guidance.windows.blend_windows`): the inversion and every sampling
        step see the model only at its native length, and hold one window's activations at a time."""
        saved = getattr(self, "_windows", None)
        self._windows = windows if len(windows) > 1 else None
        try:
            yield
        finally:
            self._windows = saved

    def _latent_subject(self, subject: torch.Tensor | None, config: SMAConfig) -> torch.Tensor | None:
        """The subject mask :meth:`subject_pixels` gives, pooled over the frames each latent frame packs
        (``(F', H, W)``), on the pipeline's device; ``None`` stays ``None``."""
        if subject is None:
            return None
        return pool_frames(subject, self.backbone.latent_frame_groups(self.vae, config.num_frames)).to(self.device)

    def subject_pixels(self, video: VideoInput, mask: MaskInput, config: SMAConfig, source_size: tuple[int, int]) -> torch.Tensor | None:
        """The subject mask ``(F, H, W)`` in [0, 1] at the run's frames and size, or ``None`` without one:
        ``mask`` (a path, array or tensor), else ``config.mask`` / ``config.mask_box``. A mask with one frame
        holds for every frame; one per run frame is taken as it is; any other count is matched to the frames
        the run picked from ``video`` (``source_size``: its frame size ``(H, W)``)."""
        if mask is None:
            mask = config.mask
        if mask is None and config.mask_box is None:
            return None
        positions, count = None, None
        if isinstance(video, (str, os.PathLike)):
            positions, count = source_positions(video, config.num_frames, config.start, config.duration)
        elif isinstance(video, (np.ndarray, torch.Tensor)):
            count = len(video)
            positions = selected_indices(count, DEFAULT_FPS, config.num_frames, config.start, config.duration)
        return subject_mask(mask, config.mask_box, source_size=source_size, num_frames=config.num_frames,
                            height=config.height, width=config.width, positions=positions, source_frames=count)

    def repaint_scene(self, frames: torch.Tensor, prompt: str, config: SMAConfig,
                      subject: torch.Tensor | None = None) -> torch.Tensor:
        """A new scene's input: frames ``(F, 3, H, W)`` in [-1, 1] with all but the subject repainted in the
        background colour the model draws for ``prompt`` (:mod:`sma_guidance.scene`). The subject is
        ``subject`` ``(F, H, W)`` (a mask, 1 on it), or without one what stands off each frame's border colour
        and does not stand still (:func:`~sma_guidance.scene.subject_alpha`: a plain background; a
        :class:`UserAdvice` says when the clip's is not). The colour is the border of
        one :meth:`generate` sample of ``prompt`` (seed ``config.seed``), drawn without restart rounds: on the
        shapes model closer to the named background than with the preset's two rounds, at a third of the cost
        (``python -m pipelines.bench.scene_colors``; pipelines/bench/RESULTS.md, "New scenes")."""
        if subject is None:
            subject = subject_alpha(frames)
            share = plain_share(subject)
            if share < PLAIN_BACKGROUND_SHARE:
                warnings.warn(NOT_PLAIN_BACKGROUND.format(share=share), UserAdvice, stacklevel=2)
        # A long clip's colour is drawn at the window's length, the model's native clip.
        drawn = self.generate(prompt, negative_prompt=config.negative_prompt, num_frames=config.window_frames,
                              height=config.height, width=config.width, seed=config.seed, restarts=0, output_type="pt")
        color = clip_border_color(drawn.frames[0].float().cpu() * 2 - 1)
        return repaint_background(frames, subject.to(frames.device), color.to(frames.device))

    # ------------------------------------------------------------------------------ helpers
    def _progress(self, total: int, desc: str) -> tqdm:
        """diffusers' :meth:`progress_bar` (so ``set_progress_bar_config``, e.g. ``disable=True``, holds),
        labelled with the stage."""
        bar = self.progress_bar(total=total)
        if "desc" not in getattr(self, "_progress_bar_config", {}):
            bar.set_description(desc, refresh=False)
        return bar

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Text embedding ``(1, L, D)`` of ``prompt`` (as the model's family encodes it)."""
        with self.text_encoder_on_device():
            return self.backbone.encode_prompt(self, prompt)

    @contextlib.contextmanager
    def text_encoder_on_device(self) -> Iterator[None]:
        """The text encoder on the pipeline's device inside the block (blocks may nest: it moves once).
        For a family with a large encoder (Wan's UMT5-XXL) on a GPU it goes back to the CPU afterwards,
        so the guided loop does not hold it."""
        device = self.device
        moves = self.backbone.offloads_text_encoder and device.type != "cpu" and not getattr(self, "_encoding", False)
        if moves:
            self.text_encoder.to(device)
            self._encoding = True
        try:
            yield
        finally:
            if moves:
                self._encoding = False
                self.text_encoder.to("cpu")
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    def prepare_video(self, video: VideoInput, config: SMAConfig) -> tuple[torch.Tensor, float]:
        frames, fps, _ = self._prepare_video(video, config)
        return frames, fps

    def _prepare_video(self, video: VideoInput, config: SMAConfig) -> tuple[torch.Tensor, float, tuple[int, int]]:
        """Frames ``(F, 3, H, W)`` in [-1, 1] at the configured size and count, and the fps that keeps
        the selected part's duration. The part ``[config.start, config.start + config.duration)`` is
        resampled uniformly in time (a file is streamed, keeping only those frames; arrays and tensors
        count as 8 fps); each frame is scaled to cover ``height x width`` with its aspect ratio kept,
        then centre-cropped. A :class:`~sma_guidance.video_io.Clip` is that part already read: it is only
        resized."""
        if isinstance(video, Clip):
            array, fps = video
        elif isinstance(video, (torch.Tensor, np.ndarray)):
            if isinstance(video, torch.Tensor):
                frames = video.detach().float()
                if frames.ndim != 4 or frames.shape[1] != 3:
                    raise UserError(f"a video tensor must be (F, 3, H, W) in [-1, 1], got shape {tuple(frames.shape)}")
                array = ((frames.permute(0, 2, 3, 1).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
            else:
                array = video
                if array.ndim != 4 or array.shape[-1] != 3:
                    raise UserError(f"a video array must be (F, H, W, 3) uint8, got shape {array.shape}")
            if len(array) < 3:
                raise UserError(f"the video needs at least 3 frames, got {len(array)}")
            array, fps = select_frames(array, DEFAULT_FPS, config.num_frames, config.start, config.duration)
        else:
            array, fps = read_clip(video, config.num_frames, config.start, config.duration)
        return resize_and_crop(array, config.height, config.width), fps, tuple(array.shape[1:3])

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor, batch_size: int = 1) -> torch.Tensor:
        """VAE latents ``(1, C, F', h, w)`` (scaled or normalized as the family's VAE wants) of frames
        ``(F, 3, H, W)``, ``batch_size`` frames per call of a per-frame VAE; the posterior mean, so that
        the latent, and the inversion cached from it, are deterministic."""
        return self.backbone.encode_video(self, frames, batch_size)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch_size: int = 1) -> torch.Tensor:
        """Frames ``(1, F, 3, H, W)`` in [0, 1] from latents ``(1, C, F', h, w)``."""
        return self.backbone.decode_latents(self, latents, batch_size)

    @contextlib.contextmanager
    def speed_options(self, config: SMAConfig) -> Iterator[None]:
        """Apply ``config.attention`` and ``config.vae_tiling`` to the models inside the block and
        restore what was there before on exit (so one loaded pipeline serves runs with other settings).
        The attention kernel is always set; tiling is only switched on, so a caller's own
        ``pipe.vae.enable_tiling()`` still holds with ``vae_tiling=False``."""
        processor = self.backbone.attention_processor(config)
        # None: the family's models keep their own attention (Wan's applies rotary embeddings)
        models = [self.denoiser, self.vae] if processor is not None else []
        saved = [model.attn_processors for model in models]
        tiling = bool(getattr(self.vae, "use_tiling", False))
        try:
            for model in models:
                model.set_attn_processor(processor)
            if config.vae_tiling:  # off leaves a pipe.vae.enable_tiling() of the caller's in place
                self.vae.enable_tiling()
            yield
        finally:
            for model, processors in zip(models, saved):
                model.set_attn_processor(processors)
            if tiling:
                self.vae.enable_tiling()
            else:
                self.vae.disable_tiling()

    def _postprocess(self, latents: torch.Tensor, output_type: str, vae_batch_size: int = 1) -> Any:
        """Latents as ``output_type``: "latent" as they are, "pt" frames ``(1, F, 3, H, W)``, "np"
        frames ``(1, F, H, W, 3)``, both in [0, 1]."""
        if output_type == "latent":
            return latents
        video = self.decode_latents(latents, vae_batch_size)
        return video.permute(0, 1, 3, 4, 2).cpu().numpy() if output_type == "np" else video

    @staticmethod
    def initial_latent(
        inverted: torch.Tensor, noise: torch.Tensor, downsample_factor: int = 4, low_pass_grid: int | None = None
    ) -> torch.Tensor:
        """DMT's initial latent (:func:`sma_guidance.dmt.initial_latent`): ``inverted``'s low spatial
        frequencies plus ``noise``'s high ones, both ``(B, C, F, h, w)``."""
        return initial_latent(inverted, noise, downsample_factor, low_pass_grid)

    def model_prediction(self, latents: torch.Tensor, t: int | float, embedding: torch.Tensor) -> torch.Tensor:
        """The denoiser's prediction ``(B, C, F, h, w)`` (noise, or flow velocity) for latents
        ``(B, C, F, h, w)`` and one text embedding ``(B, L, D)`` per video, called as its family calls it; the
        whole clip's latents inside :meth:`in_windows`, window by window, cross-faded."""
        windows = getattr(self, "_windows", None)
        if windows and latents.shape[2] == windows[-1][1]:
            parts = [self.backbone.unet_call(self.denoiser, latents[:, :, start:stop], t, embedding)
                     for start, stop in windows]
            return blend_windows(parts, windows, latents.shape[2])
        return self.backbone.unet_call(self.denoiser, latents, t, embedding)

    def invert(
        self, frames: torch.Tensor, source_embedding: torch.Tensor, config: SMAConfig, timesteps: list[int]
    ) -> tuple[dict[int, torch.Tensor], bool]:
        """Inverted latents ``{t: (1, C, F, h, w)}`` at ``timesteps`` (DDIM inversion, or the flow ODE run
        towards noise), from the cache when possible.
        Returns the latents and whether they came from the cache."""
        cache = InversionCache(config.resolved_cache_dir()) if config.inversion_cache else None
        key = None
        if cache is not None:
            key = inversion_cache_key(
                frames,
                model_fingerprint(self.denoiser, self.vae, self.text_encoder),
                model=self.model_name,
                family=self.backbone.name,
                motion_adapter=self.motion_adapter_name,
                scheduler=public_config(self.scheduler.config),
                source_prompt=config.source_prompt,
                inversion_steps=config.inversion_steps,
                num_inference_steps=config.num_inference_steps,
                size=(config.height, config.width),
                num_frames=config.num_frames,
                dtype=str(self.denoiser.dtype),
                **({"windows": getattr(self, "_windows", None)} if getattr(self, "_windows", None) else {}),
            )
            cached = cache.load(key, self.device)
            if cached is not None and set(timesteps) <= set(cached):
                return {t: cached[t].float() for t in timesteps}, True
        latents = self.encode_video(frames, config.vae_batch_size)
        inverted = self.sampler.invert(
            self.model_prediction,
            latents,
            source_embedding,
            config.inversion_steps,
            timesteps,
            progress=lambda total: self._progress(total, f"{self.sampler.name} inversion"),
        )
        inverted = {t: x.float() for t, x in inverted.items()}
        if cache is not None and key is not None:
            cache.save(key, inverted)
        return inverted, False

    # ------------------------------------------------------------------------------ guidance
    def guidance_objective(
        self,
        latents: torch.Tensor,
        t: int,
        embedding: torch.Tensor,
        reference: dict[str, torch.Tensor],
        recorder: FeatureRecorder,
        config: SMAConfig,
        mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Eq. 19 summed over the recorded layers, for ``latents`` ``(1, C, F, h, w)`` at timestep ``t``
        (restricted to the subject ``mask`` ``(F, H, W)`` when one is given).

        Returns the total and its DMT / global / local parts (each summed over layers). The forward
        stops after the last recorded layer.
        """
        features = recorder.run(self.model_prediction, latents, t, embedding)
        return self.objective_of_features(reference, features, config, mask)

    #: Eq. 19 of recorded features (:func:`.optimization.objective_of_features`).
    objective_of_features = staticmethod(optimization.objective_of_features)

    def loss_scale(self, config: SMAConfig) -> LossScale:
        """The loss scale of a run's backward passes: ``config.loss_scaling`` from ``config.loss_scale`` on a
        float16 denoiser; none in float32 or bfloat16 (float32's exponent range: nothing underflows)."""
        return LossScale.for_run(config.loss_scaling, config.loss_scale, self.denoiser.dtype)

    @contextlib.contextmanager
    def guidance_backward(self, config: SMAConfig) -> Iterator[None]:
        """The state of every guidance backward: frozen UNet weights (no weight gradients) and the
        configured activation checkpointing."""
        units = checkpoint_units(self.denoiser, config.activation_checkpointing, config.feature_layers)
        with frozen(self.denoiser), activation_checkpointing(self.denoiser, units):
            yield

    def optimize_latent(
        self,
        latents: torch.Tensor,
        t: int,
        reference_latents: torch.Tensor,
        source_embedding: torch.Tensor,
        target_embedding: torch.Tensor,
        learning_rate: float,
        config: SMAConfig,
        recorder: FeatureRecorder,
        on_iteration: Callable[[dict[str, float]], None] | None = None,
        loss_scale: LossScale | None = None,
        mask: torch.Tensor | None = None,
        windows: list[tuple[int, int]] | None = None,
    ) -> tuple[torch.Tensor, list[dict[str, float]]]:
        """Run ``config.optimization_steps`` Adam steps on ``latents`` at timestep ``t`` (against the subject
        ``mask`` ``(F, H, W)``'s motion only, when one is given).

        Reference features of ``reference_latents`` (the inversion at ``t``, source prompt) are computed
        once, without gradients. On a float16 denoiser the objective is backpropagated with a loss scale
        (:mod:`sma_guidance.precision`; ``loss_scale`` carries it across the steps of a run, default: a
        fresh one of ``config``'s), and Adam steps on the true gradient. With temporal ``windows`` (latent
        frames), each window's slice is held to its own slice of the reference and the objective is the sum
        over windows (:func:`.optimization.optimize_latent`). Returns the optimized latents (detached) and
        the per-iteration losses (with the loss scale used, when one is).
        """
        spans = windows or [(0, latents.shape[2])]
        objectives = []
        for start, stop in spans:
            with torch.no_grad():
                reference = recorder.run(self.model_prediction, reference_latents[:, :, start:stop], t, source_embedding)
            part_mask = None if mask is None else mask[start:stop]
            objectives.append(lambda x, reference=reference, part_mask=part_mask: self.guidance_objective(
                x, t, target_embedding, reference, recorder, config, part_mask))
        with self.guidance_backward(config):
            return optimization.optimize_latent(
                objectives, latents, learning_rate, config.optimization_steps, loss_scale or self.loss_scale(config),
                on_iteration, windows=spans,
            )

    # ------------------------------------------------------------------------------ fine-tuning
    def _train_adapter(self, frames: torch.Tensor, source_embedding: torch.Tensor, config: SMAConfig) -> MotionAdapter:
        advise_on_source_prompt(config)
        return self.backbone.train_adapter(self, self.encode_video(frames, config.vae_batch_size), source_embedding, config,
                                           progress=lambda total: self._progress(total, "Motion fine-tune"))

    def train_motion(
        self, video: VideoInput, source_prompt: str | None = None, config: SMAConfig | None = None, **config_overrides: Any
    ) -> MotionAdapter:
        """Fine-tune the temporal attention on ``video``'s motion (VMC + latent SMA) and return the
        adapter; the pipeline's own weights are left unchanged. Reuse it with ``pipe(..., adapter=...)``
        or save it with ``adapter.save(path)``. Settings as for ``__call__`` (``train_steps``, ...)."""
        config = self._resolve_config(config, dict(source_prompt=source_prompt), config_overrides)
        frames, _ = self.prepare_video(video, config)
        with self.speed_options(config):
            return self._train_adapter(frames, self.encode_prompt(config.source_prompt), config)

    def _resolve_config(
        self, config: SMAConfig | None, explicit: dict[str, Any], overrides: dict[str, Any]
    ) -> SMAConfig:
        unknown = sorted(set(overrides) - set(SMAConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown argument(s) {', '.join(unknown)}; see SMAConfig for the settings")
        chosen = config is not None or "inversion_steps" in overrides or explicit.get("inversion_steps") is not None
        config = self.with_feature_layers((config or self.default_config()).replace(**explicit, **overrides).validate())
        self.backbone.check(self, config)
        self.sampler.check_eta(config.eta)
        if chosen:
            self.sampler.check(config.inversion_steps, config.num_inference_steps)
            return config
        return self.fit_inversion_steps(config)  # passes the check by construction

    def fit_inversion_steps(self, config: SMAConfig) -> SMAConfig:
        """``config`` with an inversion step count that passes through its sampling timesteps: its own
        when it does, else the closest that does (e.g. the ``tiny-random`` preset's 50 with ``--steps 4``
        becomes 40). For a count the user did not choose; a chosen one that cannot work stays an error."""
        try:
            self.sampler.check(config.inversion_steps, config.num_inference_steps)
            return config
        except UserError:
            count = self.sampler.fitting_inversion_steps(config.inversion_steps, config.num_inference_steps)
            return config.replace(inversion_steps=count).validate()

    # ------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def denoise_step(
        self, latents: torch.Tensor, t: int, embeddings: torch.Tensor, guidance_scale: float, eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None, guidance_rescale: float = 0.0,
    ) -> torch.Tensor:
        """One step with classifier-free guidance (rescaled by ``guidance_rescale``,
        :func:`~sma_guidance.guidance.classifier_free_guidance`): deterministic (DDIM with η = 0, or
        flow-matching Euler), or DDIM with η > 0 and fresh noise from ``generator`` (or one generator per
        item). ``embeddings`` is ``[negative, target]`` ``(2, L, D)``, or for B latents the B negative
        embeddings, then the B targets. The sampler's timesteps must be set (:meth:`sampling_timesteps`)."""
        prediction = self.model_prediction(torch.cat([latents, latents]), t, embeddings).float()
        uncond, cond = prediction.chunk(2)
        guided = classifier_free_guidance(uncond, cond, guidance_scale, guidance_rescale)
        return self.sampler.step(guided, t, latents, eta, generator)

    @torch.no_grad()
    def sampling_step(
        self, latents: torch.Tensor, i: int, timesteps: list, embeddings: torch.Tensor, restarts: int = 0, **step: Any,
    ) -> torch.Tensor:
        """Step ``i`` of a sampling loop over ``timesteps``: :meth:`denoise_step` from ``timesteps[i]``
        (``step``: its ``guidance_scale``, ``eta``, ``generator``, ``guidance_rescale``), then ``restarts``
        rounds of re-noising back to ``timesteps[i]`` with noise from ``step["generator"]`` and denoising
        again (DMT's restart sampling; none after the last step, which ends at the clean sample)."""
        t = timesteps[i]
        latents = self.denoise_step(latents, t, embeddings, **step)
        for _ in range(restarts if i + 1 < len(timesteps) else 0):
            latents = self.renoise(latents, timesteps[i + 1], t, step.get("generator"))
            latents = self.denoise_step(latents, t, embeddings, **step)
        return latents

    @torch.no_grad()
    def generate(
        self,
        prompt: str | list[str],
        negative_prompt: str | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | list[int] | None = None,
        eta: float | None = None,
        guidance_rescale: float | None = None,
        restarts: int | None = None,
        output_type: str = "np",
    ) -> SMAPipelineOutput:
        """Plain text-to-video sampling from random noise: useful to see what the model makes of a prompt
        alone. Classifier-free guidance at every step, DDIM with η (or a flow-matching model's Euler
        step), then ``restarts`` rounds of re-noising to the step's timestep and denoising again.

        The sampler settings default to the model's ``generate_*`` preset values where it has them
        (:meth:`SMAConfig.for_generate`; the shapes model's: η = 1, guidance 5, 2 restarts), else to
        ``__call__``'s (``num_inference_steps``, ``guidance_scale``, ``eta``, ``guidance_rescale``;
        ``restarts`` 0); the other arguments default as in ``__call__``. The output's ``config`` holds
        the settings used.

        A list of prompts is sampled as one batch, with one seed per prompt (``seed`` a list of the same
        length; an int or None: that seed, or the preset's, plus the prompt's index): each video is the
        one ``generate(prompt[i], seed=seed[i])`` makes, up to the rounding of batched kernels. Frames are
        ``(B, F, H, W, 3)`` (``"np"``) or ``(B, F, 3, H, W)`` (``"pt"``) for B prompts; the output's
        ``config["seed"]`` is then the list of seeds."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise UserError("generate needs at least one prompt")
        seeds = list(seed) if isinstance(seed, (list, tuple)) else None
        if seeds is not None and len(seeds) != len(prompts):
            raise UserError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one seed per prompt")
        config = self._resolve_config(
            None,
            dict(
                negative_prompt=negative_prompt,
                num_frames=num_frames,
                height=height,
                width=width,
                seed=seeds[0] if seeds else seed,
                generate_restarts=restarts,
            ),
            {},
        ).for_generate()
        # Checked under their own names: an error names the argument the caller passed.
        config = config.replace(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta,
                                guidance_rescale=guidance_rescale).validate()
        self.sampler.check_eta(config.eta)
        if seeds is None:
            seeds = [config.seed + i for i in range(len(prompts))]
        for other in seeds[1:]:  # the first was checked with the config
            SMAConfig(seed=other).validate()
        timesteps = self.sampling_timesteps(config.num_inference_steps)
        with self.text_encoder_on_device():
            negative = self.encode_prompt(config.negative_prompt)
            embeddings = torch.cat([negative.expand(len(prompts), -1, -1), *map(self.encode_prompt, prompts)])
        shape = self.backbone.latent_shape(self, config)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        latents = torch.cat([torch.randn(shape, generator=g) for g in generators]).to(self.device)
        noise_from = generators[0] if len(generators) == 1 else generators
        with self.speed_options(config):
            step = dict(guidance_scale=config.guidance_scale, eta=config.eta, generator=noise_from,
                        guidance_rescale=config.guidance_rescale)
            for i in self._progress_iter(range(len(timesteps)), "Sampling"):
                latents = self.sampling_step(latents, i, timesteps, embeddings, config.generate_restarts, **step)
            videos = [self._postprocess(one, output_type, config.vae_batch_size) for one in latents.split(1)]
        frames = np.concatenate(videos) if output_type == "np" else torch.cat(videos)
        record = config.to_dict()
        if len(prompts) > 1:
            record["seed"] = seeds
        return SMAPipelineOutput(frames=frames, config=record, fps=config.fps or 8.0,
                                 sampler=self.sampler.describe(config.num_inference_steps))

    def _progress_iter(self, iterable: Any, desc: str) -> Any:
        with self._progress(len(iterable), desc) as bar:
            for item in iterable:
                yield item
                bar.update()

    def renoise(self, latents: torch.Tensor, t_from: int, t_to: int,
                generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
        """Sample q(x_{t_to} | x_{t_from}) for t_to > t_from: the forward process over that interval (the
        noise from ``generator``, or with one generator per batch item, each item's from its own)."""
        return self.sampler.renoise(latents, t_from, t_to, generator)

    def __call__(
        self,
        video: VideoInput,
        prompt: str,
        source_prompt: str | None = None,
        negative_prompt: str | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        optimization_steps: int | None = None,
        lambda_global: float | None = None,
        lambda_local: float | None = None,
        levels: int | None = None,
        delta: float | None = None,
        seed: int | None = None,
        mode: str | None = None,
        adapter: str | MotionAdapter | None = None,
        mask: MaskInput = None,
        config: SMAConfig | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        **config_overrides: Any,
    ) -> SMAPipelineOutput | tuple:
        """Generate a video with ``video``'s motion and ``prompt``'s appearance.

        Every argument left as ``None`` takes its value from ``config`` (default: this model's
        :class:`~sma_guidance.config.SMAConfig`, i.e. DMT's published settings for Zeroscope).

        Args:
            video: the motion source: a path to a video file (mp4, gif, ...) or a folder of images,
                a uint8 array ``(F, H, W, 3)``, or a tensor ``(F, 3, H, W)`` in [-1, 1].
            prompt: the target prompt: what the output shows.
            source_prompt: describes the input; conditions the inversion and the reference features (default "").
            negative_prompt: unconditional branch of classifier-free guidance (default DMT's).
            num_frames: frames resampled from the input (default 24).
            start, duration (keyword overrides): the part of the input used, in seconds: ``[start, start +
                duration)`` (default 0 and ``None``, the whole clip); arrays and tensors count as 8 fps.
            height, width: output size, multiples of 8 (default 320 x 576).
            num_inference_steps: sampling steps, DDIM or (Wan) flow-matching Euler (default 50).
            guidance_scale: classifier-free guidance scale (default 10).
            optimization_steps: Adam steps on the latent before each guided step (default 10).
            lambda_global: weight of the Haar-wavelet global motion term λg (default 0.4; 0 = DMT).
            lambda_local: weight of the FFT local motion term λl (default 0.2; 0 = DMT).
            levels: Haar decomposition levels (default: ⌈log₂ T⌉ for T residual frames, the paper's: 3 for 8 frames).
            delta: exponent δ of the low-frequency weights (default 0.05).
            seed: seed of every random draw (default 0).
            mode: ``"zero-shot"`` (default: latent optimization while sampling), ``"fine-tune"`` (train
                the temporal attention on the clip for ``train_steps``, default 400, then sample without
                guidance) or ``"both"`` (the adapted model with zero-shot guidance).
            adapter: a :class:`MotionAdapter` or the path of a saved one, applied for this call (no
                training then, in any mode).
            mask: whose motion to transfer: white (or true, or 1) on the subject; a path (an image for every
                frame, a video or an image folder with one per frame), or an array / tensor ``(F, H, W)`` or
                ``(H, W)`` over the input's frames (resampled to the run's size and frames). DMT's term then
                pools the features over the mask, SMA's terms weight the residuals by it, and the initial
                latent keeps the inversion inside it and draws the rest afresh, so the prompt fills it.
                ``mask_box=(x0, y0, x1, y1)`` (pixels of the input) is a box instead.
            config: a full :class:`SMAConfig` to start from.
            output_type: ``"np"`` (default), ``"pt"`` or ``"latent"``.
            return_dict: return a :class:`SMAPipelineOutput` (default) rather than a tuple.
            **config_overrides: any other :class:`SMAConfig` field, e.g. ``guidance_fraction=0.4``,
                ``learning_rate_start=0.007``, ``learning_rate_end=0.004``, ``restart_sampling=True``, ``eta=0.0``, ``guidance_rescale=0.0``,
                ``inversion_steps=999``, ``feature_layers=(...)``, ``feature_normalization="ref-rms"``,
                ``downsample_factor=4``, ``low_pass_grid=None``, ``inversion_cache=True``, ``cache_dir=None``,
                ``new_scene=True`` (the prompt sets the background too: :meth:`repaint_scene` before the inversion),
                ``window`` / ``overlap`` (clips longer than ``window`` frames, the family's native clip, are
                sampled in windows overlapping by ``overlap``, default a quarter of the window), ``mask_box``, the fine-tune
                settings ``train_steps=400``, ``train_learning_rate=1e-4``, ``train_weight_decay=1e-2``,
                ``train_max_grad_norm=1.0``, ``train_lambda_global=0.4``, ``train_lambda_local=0.2``,
                ``residual="signed"``, ``trainable_modules="vmc"``, ``gradient_checkpointing=True``, and the
                memory / speed options ``attention="sdpa"``, ``activation_checkpointing="blocks"`` ("off" in
                the small models' presets),
                ``vae_batch_size=1``, ``vae_tiling=False``.

        Returns:
            :class:`SMAPipelineOutput` with ``.frames``, ``.loss_history``, ``.config``, ``.fps``, ``.timings``.
        """
        # 1. check inputs, resolve the settings
        self.check_inputs(video, prompt, output_type)
        explicit = dict(
            source_prompt=source_prompt,
            negative_prompt=negative_prompt,
            num_frames=num_frames,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            optimization_steps=optimization_steps,
            lambda_global=lambda_global,
            lambda_local=lambda_local,
            levels=levels,
            delta=delta,
            seed=seed,
            mode=mode,
            adapter=str(adapter) if isinstance(adapter, (str, os.PathLike)) else None,
            mask=str(mask) if isinstance(mask, (str, os.PathLike)) else None,
        )
        config = self._resolve_config(config, explicit, config_overrides)
        if not isinstance(adapter, MotionAdapter):
            adapter = MotionAdapter.load(config.adapter) if config.adapter else None
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        # 2. read the clip and the subject's mask, repaint a new scene's background, plan the temporal windows
        frames, fps, source_size = self._prepare_video(video, config)
        fps = config.fps or fps
        subject_frames = self.subject_pixels(video, mask, config, source_size)
        subject = self._latent_subject(subject_frames, config)
        if config.new_scene:
            clock_scene = time.perf_counter()
            frames = self.repaint_scene(frames, prompt, config, subject_frames)
            timings["new_scene"] = time.perf_counter() - clock_scene
        windows = self.temporal_windows(config)
        timesteps = self.sampling_timesteps(config.num_inference_steps)

        # 3. encode the prompts (the text encoder moves on, and off, once for the three)
        with self.text_encoder_on_device():
            negative, target, source = (
                self.encode_prompt(text) for text in (config.negative_prompt, prompt, config.source_prompt)
            )
        timings["prepare"] = time.perf_counter() - clock - timings.get("new_scene", 0.0)
        advise_on_source_prompt(config)

        loss_history: list[dict[str, Any]] = []
        with self.speed_options(config):
            # 4. fine-tune the motion (modes fine-tune and both, without a given adapter)
            if adapter is None and config.trains:
                clock = time.perf_counter()
                adapter = self._train_adapter(frames, source, config)
                timings["fine_tune"] = time.perf_counter() - clock
            with applied_adapter(self.denoiser, adapter, self.model_name, family=self.backbone.name), \
                    self.in_windows(windows):
                # 5. invert the clip
                clock = time.perf_counter()
                guided = timesteps[: config.num_guided_steps]
                # Keep the latents a guided run of this config would need even when this run needs fewer
                # (fine-tune mode, no optimization): the cached inversion then serves every mode.
                span = timesteps[: max(config.num_guided_steps, round(config.guidance_fraction * len(timesteps)))]
                inverted, from_cache = self.invert(frames, source, config, sorted(set(span) | {timesteps[0]}))
                timings["inversion"] = time.perf_counter() - clock
                timings["inversion_cached"] = float(from_cache)

                # 6. prepare the initial latent (DMT: the inversion's low frequencies, fresh high ones; with a
                # mask, the inversion inside it only)
                generator = torch.Generator("cpu").manual_seed(config.seed)
                latents = self.prepare_latents(inverted[timesteps[0]], config, generator, mask=subject)

                # 7. denoise, optimizing the latent at the first guided steps
                learning_rates = np.linspace(config.learning_rate_start, config.learning_rate_end, max(len(guided), 1))
                cfg_embeddings = torch.cat([negative, target])
                timings["guidance"] = timings["denoise"] = 0.0
                recorder = self.feature_recorder(config, frames=windows[0][1] - windows[0][0])
                scale = self.loss_scale(config)
                with self._progress(len(timesteps), "Sampling") as bar:
                    for i, t in enumerate(timesteps):
                        if i < len(guided):
                            clock = time.perf_counter()
                            # Each window's latent is held to its own part of the input's features.
                            with recorder, torch.enable_grad():
                                latents, history = self.optimize_latent(
                                    latents, t, inverted[t], source, target, float(learning_rates[i]), config, recorder,
                                    on_iteration=lambda r: bar.set_postfix(loss=f"{r['total']:.4f}", refresh=False),
                                    loss_scale=scale, mask=subject, windows=windows,
                                )
                            loss_history.append({"step": i, "timestep": t, "learning_rate": float(learning_rates[i]),
                                                 "iterations": history})
                            timings["guidance"] += time.perf_counter() - clock
                        clock = time.perf_counter()
                        # The guided steps stay deterministic: their latents are optimized against the inversion's.
                        eta = config.eta if i >= len(guided) else 0.0
                        step = dict(guidance_scale=config.guidance_scale, eta=eta, generator=generator,
                                    guidance_rescale=config.guidance_rescale)
                        latents = self.sampling_step(latents, i, timesteps, cfg_embeddings, int(config.restart_sampling), **step)
                        timings["denoise"] += time.perf_counter() - clock
                        bar.update()

                # 8. decode
                clock = time.perf_counter()
                output = self._postprocess(latents, output_type, config.vae_batch_size)
                timings["decode"] = time.perf_counter() - clock
        self.maybe_free_model_hooks()

        result = SMAPipelineOutput(
            frames=output,
            loss_history=loss_history,
            config=config.to_dict(),
            fps=float(fps),
            timings=timings,
            adapter=adapter,
            train_loss_history=adapter.loss_history if adapter is not None else [],
            sampler=self.sampler.describe(config.num_inference_steps),
            windows=self.window_frames(config, windows),
        )
        return result if return_dict else (output, loss_history)

    def check_inputs(self, video: VideoInput, prompt: str, output_type: str) -> None:
        """Raise a :class:`UserError` on an argument that cannot work, before any work is done."""
        if video is None:
            raise UserError("no video: pass a path, a uint8 array (F, H, W, 3) or a tensor (F, 3, H, W)")
        if not isinstance(prompt, str):
            raise UserError(f"the prompt must be a string (got {type(prompt).__name__}); one video per call")
        if output_type not in ("np", "pt", "latent"):
            raise UserError(f"output_type must be np, pt or latent (got {output_type!r})")

    def prepare_latents(
        self, inverted: torch.Tensor, config: SMAConfig, generator: torch.Generator, latents: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The latent ``(1, C, F, h, w)`` sampling starts from: ``latents`` when given, else DMT's initial latent
        of the inversion ``inverted`` at the first timestep — its frequencies below ``config``'s cut-off kept,
        the rest drawn from ``generator`` (:func:`sma_guidance.dmt.initial_latent`). With a subject ``mask``
        ``(F, H, W)``: the exact inversion inside the mask grown by ``config.mask_margin`` latent cells, and
        outside it that initial latent, or fresh noise where the preset keeps the whole inversion, so that the
        rest of the frame follows the prompt."""
        if latents is not None:
            return latents.to(self.device, torch.float32)
        noise = torch.randn(inverted.shape, generator=generator).to(self.device)
        initial = self.initial_latent(inverted, noise, config.downsample_factor, config.low_pass_grid)
        if mask is None:
            return initial
        outside = noise if initial is inverted else initial
        inside = dilate(resize_mask(mask.to(inverted.device, torch.float32), tuple(inverted.shape[-2:])), config.mask_margin)
        return composite(inverted, outside, inside)


def advise_on_source_prompt(config: SMAConfig) -> None:
    """Warn (:class:`UserAdvice`) when the source prompt is empty; once per process: the warning always
    comes from this line, which Python's registry remembers."""
    if not config.source_prompt.strip():
        warnings.warn(EMPTY_SOURCE_PROMPT, UserAdvice, stacklevel=1)


__all__ = ["SMAMotionTransferPipeline", "SMAPipelineOutput"]
