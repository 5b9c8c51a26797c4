"""One source of truth for every default: the CLI, the Python call and the saved JSON all read
:class:`SMAConfig`.

The defaults are DMT's published configuration for Zeroscope (``configs/guidance_config.yaml`` and
``configs/preprocess_config.yaml`` of Yatim et al.) plus the SMA paper's spectral weights
(λg = 0.4, λl = 0.2, δ = 0.05, Haar). Other model families (AnimateDiff, Wan) override some of them in
:data:`FAMILY_PRESETS` (native size, guidance scale, trained modules), and single models can carry a
*preset* on top (their native size, say); see :data:`MODEL_PRESETS`. What follows from a loaded model's
architecture — the recorded layers when none are named — is derived by the pipeline and recorded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from .errors import UserError

DEFAULT_MODEL = "cerspense/zeroscope_v2_576w"

# DMT's negative prompt (guidance_config.yaml).
DMT_NEGATIVE_PROMPT = "bad quality, distortions, unrealistic, distorted image, watermark, signature"

# DMT records decoder block 1 of the UNet3D: the resnet's pre-residual output (its conv2), the
# temporal convolution after it, and the block's upsampler. These are its published names for
# Zeroscope; a run that names no layers (feature_layers None) takes what the model family's rule reads off
# the loaded architecture (pipelines.motion_transfer.backbones: Backbone.default_feature_layers), which gives exactly
# these on Zeroscope's UNet, their counterparts on AnimateDiff's (the motion module in the place of the
# temporal convolution) and the middle block of a Wan transformer.
DMT_FEATURE_LAYERS = (
    "up_blocks.1.resnets.1.conv2",
    "up_blocks.1.temp_convs.1",
    "up_blocks.1.upsamplers.0",
)

# Fields whose None means "derived from the loaded model" (the run's record holds what was derived).
DERIVED_FROM_MODEL = ("feature_layers",)

FEATURE_NORMALIZATIONS = ("none", "ref-rms")
MODES = ("zero-shot", "fine-tune", "both")
RESIDUALS = ("signed", "abs")
DTYPES = ("auto", "float32", "float16", "bfloat16")
ATTENTIONS = ("sdpa", "classic")
CHECKPOINTING = ("off", "blocks", "layers")
LOSS_SCALINGS = ("dynamic", "static", "off")  # sma_guidance.precision


@dataclass
class SMAConfig:
    """Every setting of a zero-shot SMA motion transfer run, with its default."""

    # Model and hardware.
    model: str = DEFAULT_MODEL
    # AnimateDiff: a diffusers MotionAdapter (Hub id or folder) turning ``model``, an SD 1.5 image
    # model, into a UNetMotionModel; None for a video model (Zeroscope, a saved AnimateDiff folder).
    motion_adapter: str | None = None
    device: str = "auto"  # "auto": cuda when available, else cpu
    dtype: str = "auto"  # "auto": float16 on cuda, float32 on cpu

    # Input video: frames are resampled uniformly in time to num_frames, scaled to cover
    # height x width (aspect ratio kept) and centre-cropped.
    num_frames: int = 24
    height: int = 320
    width: int = 576
    # The part of the input used, in seconds from its first frame: [start, start + duration), None = to
    # the end. Only the frames the resampling keeps are decoded, so a long clip costs no more memory.
    start: float = 0.0
    duration: float | None = None
    # Clips longer than the model's native window are sampled in overlapping temporal windows of `window`
    # frames (None: the whole clip at once; the family presets set their native window), consecutive ones
    # sharing `overlap` frames (None: a quarter of the window), cross-faded at every step (FreeNoise).
    window: int | None = None
    overlap: int | None = None

    # Prompts. The source prompt conditions the inversion and the reference features.
    source_prompt: str = ""
    negative_prompt: str = DMT_NEGATIVE_PROMPT

    # Sampling (DDIM, eta = 0).
    num_inference_steps: int = 50
    guidance_scale: float = 10.0
    seed: int = 0
    restart_sampling: bool = True  # DMT: re-noise one step and denoise again after every step
    # DDIM's eta for the steps after the guided ones (every step of plain text-to-video sampling):
    # 0 is deterministic DDIM, which follows the inversion (DMT); 1 draws fresh noise at each step as
    # DDPM does, which lets a small model correct its own errors (the shapes model's corners).
    eta: float = 0.0
    # Lin et al.'s rescale of classifier-free guidance (diffusers' guidance_rescale; 0 = plain CFG):
    # pulls the guided prediction back to the conditional one's spread, which keeps a high guidance
    # scale from tinting the frames (sma_guidance.guidance.classifier_free_guidance). Every step.
    guidance_rescale: float = 0.0
    # Plain text-to-video sampling (pipe.generate, `sma-guide bench appearance`) starts from pure noise,
    # where nothing holds the layout but the model: a small model can need another sampler there than
    # the one that follows an inversion (the shapes model: its model card, "Sampling from pure noise"). Each
    # None takes the setting above.
    generate_num_inference_steps: int | None = None
    generate_guidance_scale: float | None = None
    generate_eta: float | None = None
    generate_guidance_rescale: float | None = None
    # Restart rounds after every step but the last of pipe.generate: re-noise the latent back to the
    # step's timestep and denoise it again (DMT's restart sampling, repeated), which lets the model redo
    # a step whose mistakes it can now see. Each round is one more model call per step.
    generate_restarts: int = 0
    # DMT's initial latent keeps the inverted latent's spatial frequencies below a cut-off and draws the
    # rest afresh. DMT states the cut-off as a downsampling factor of the latent (4: Zeroscope's 40x72
    # latents keep a 10x18 grid). low_pass_grid states it as the low-frequency grid itself (cells along
    # the latent's shorter side), which means the same layout detail at any latent size; when set it
    # takes precedence over downsample_factor. A grid at least the latent's size keeps the inversion whole.
    downsample_factor: int = 4
    low_pass_grid: int | None = None

    # DDIM inversion: DMT inverts with 999 steps; the sampling timesteps must be a subset of the
    # inversion timesteps (a multiple of num_inference_steps, or 999).
    inversion_steps: int = 999
    inversion_cache: bool = True
    cache_dir: str | None = None  # None: $SMA_GUIDE_CACHE or ~/.cache/sma-guide

    # Latent optimization (DMT): Adam on the latent before each of the first guidance_fraction
    # of the steps, learning rate linear from learning_rate_start to learning_rate_end.
    guidance_fraction: float = 0.4
    optimization_steps: int = 10
    learning_rate_start: float = 0.007
    learning_rate_end: float = 0.004
    # None: derived from the loaded model (DMT's decoder block 1, or Wan's middle block; see above) and
    # recorded in the run's configuration.
    feature_layers: tuple[str, ...] | None = None
    # "ref-rms" divides both feature maps of a layer by the reference's RMS before the spectral terms: an
    # L1 term's gradient does not depend on the features' magnitude while DMT's cosine's falls as
    # 1/magnitude, so with raw features lambda_global pulled 0.03-0.27 of DMT's gradient depending on layer
    # and model, and 0.08-0.21 with this (`sma-guide bench terms`, pipelines/bench/RESULTS.md, "What λ means at full size");
    # "none" is the paper's objective as published.
    feature_normalization: str = "ref-rms"

    # Spectral Motion Alignment (paper eq. 19): lambda_global = lambda_local = 0 is plain DMT.
    lambda_global: float = 0.4
    lambda_local: float = 0.2
    levels: int | None = None  # None: ceil(log2(residual frames)), the paper's (3 for 8 frames, 4 for 16)
    level_weights: tuple[float, ...] | None = None  # levels + 1 entries, approximation first
    wavelet: str = "haar"
    delta: float = 0.05

    # Mode: "zero-shot" (latent optimization while sampling), "fine-tune" (train the temporal
    # attention on the clip, then sample), or "both" (the adapted model with zero-shot guidance).
    mode: str = "zero-shot"
    adapter: str | None = None  # a saved motion adapter to apply (skips training in every mode)
    # Whose motion to transfer: a mask file (image, video or image folder, white on the subject) or a box
    # X0, Y0, X1, Y1 in the input's pixels. DMT's term pools over it, SMA's terms weight the residuals by
    # it, and the initial latent keeps the inversion only inside it.
    mask: str | None = None
    mask_box: tuple[float, float, float, float] | None = None
    # Latent cells around the mask where the initial latent still keeps the inversion: a subject's latent
    # reaches past its outline, and cut at the outline the model loses it (pipelines/bench/RESULTS.md, "Subject
    # masks": 0 cells lost the masked object on the shapes model, 2 kept it).
    mask_margin: int = 2
    # New scene: the prompt sets the background too. Before the inversion, the clip's background (all but
    # the subject: the mask, or what stands off a plain background) is repainted with the colour the model
    # draws for the prompt (sma_guidance/scene.py; pipelines/bench/RESULTS.md, "New scenes").
    new_scene: bool = False

    # Fine-tune (VMC's published recipe + SMA on latent-frame residuals, paper Algorithm 1): VMC's 400
    # steps (SMA: 400-500) on its trainable set.
    train_steps: int = 400
    train_learning_rate: float = 1e-4
    train_weight_decay: float = 1e-2
    train_max_grad_norm: float = 1.0
    train_lambda_global: float = 0.4
    train_lambda_local: float = 0.2
    residual: str = "signed"  # "abs": |δ| as in the official SMA code
    # What the fine-tune trains: a named set of the model family's (pipelines.motion_transfer.backbones:
    # Backbone.trainable_sets) or a regular expression over the denoiser's submodule names. "vmc": VMC's
    # recipe, the temporal attentions' query / key / value projections (AnimateDiff: its motion modules');
    # "vmc+transformer_in" (ours, Zeroscope family): also the UNet3D's input temporal transformer.
    trainable_modules: str = "vmc"
    # A diffusion transformer (Wan) is fine-tuned through a LoRA of this rank on those projections
    # (diffusers' add_adapter, peft); the UNet families train the projections themselves.
    lora_rank: int = 16
    gradient_checkpointing: bool = True

    # Half precision (sma_guidance.precision): on a float16 denoiser the guidance and the fine-tune
    # backpropagate loss * loss_scale and divide the gradient back (the objective's gradient underflows
    # float16 otherwise); "dynamic" halves the scale and recomputes on an overflow and doubles it after 10
    # clean backwards, "static" only halves, "off" scales nothing. Not used in float32 or bfloat16.
    loss_scaling: str = "dynamic"
    loss_scale: float = 65536.0

    # Memory and speed (measured in pipelines/bench/RESULTS.md, "What the memory and speed options cost"); none changes the result
    # beyond float rounding.
    # "sdpa": PyTorch's fused scaled_dot_product_attention (flash / memory-efficient kernels on GPUs);
    # "classic": diffusers' explicit softmax(QK^T)V, which materializes the attention matrix.
    attention: str = "sdpa"
    # Recompute activations in the guidance backward instead of keeping them: "blocks" (each UNet
    # block) or "layers" (each resnet / transformer inside them; least memory, most time). "blocks"
    # is what brings Zeroscope's 24 x 320 x 576 run under 16 GB (`sma-guide bench memory`: 17.9 GiB
    # off, 10.9 blocks, 7.0 layers in float16); small models turn it off in their presets.
    activation_checkpointing: str = "blocks"
    vae_batch_size: int = 1  # frames per VAE encode/decode call (1: "VAE slicing", least memory)
    vae_tiling: bool = False  # VAE in overlapping tiles: for frames larger than the VAE's tile size

    # Output.
    fps: float | None = None  # None: the input's frame rate

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_model(cls, model: str, family: str | None = None, **overrides: Any) -> "SMAConfig":
        """Defaults for ``model``: its family's preset (:data:`FAMILY_PRESETS`; ``None``: the
        defaults above, Zeroscope's), then the model's own preset (:func:`preset_name`), then
        ``overrides``."""
        values = dict(FAMILY_PRESETS.get(family or "", {}))
        values.update(MODEL_PRESETS.get(preset_name(model), {}))
        values.update(overrides)
        values["model"] = model
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SMAConfig":
        """Build from a mapping (e.g. a saved JSON); unknown keys are a :class:`UserError`."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserError(
                f"unknown configuration key(s) {', '.join(unknown)}; valid keys are the fields of SMAConfig "
                f"(see `sma-guide --help`)"
            )
        values = dict(values)
        for key in ("feature_layers", "level_weights", "mask_box"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    @staticmethod
    def read_file(path: str | os.PathLike) -> dict[str, Any]:
        """The settings in a JSON file: a bare mapping of fields, or a saved run (its ``"config"``)."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UserError(f"config file not found: {path} — check the path") from None
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read config file {path}: {err} — it must be a JSON object") from None
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            data = data["config"]
        if not isinstance(data, dict):
            raise UserError(f"config file {path} must hold a JSON object of SMAConfig fields")
        SMAConfig.from_dict(data)  # unknown keys fail here, with the file named by the caller's message
        return data

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "SMAConfig":
        return cls.from_dict(cls.read_file(path))

    def replace(self, **changes: Any) -> "SMAConfig":
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("feature_layers", "level_weights", "mask_box"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data

    # ------------------------------------------------------------------ derived values
    def for_generate(self) -> "SMAConfig":
        """What :meth:`~pipelines.SMAMotionTransferPipeline.generate` samples with: this configuration
        with each ``generate_*`` sampler setting that is set in place of the transfer's."""
        return self.replace(
            num_inference_steps=self.generate_num_inference_steps, guidance_scale=self.generate_guidance_scale,
            eta=self.generate_eta, guidance_rescale=self.generate_guidance_rescale,
        )

    @property
    def num_guided_steps(self) -> int:
        """How many of the first sampling steps are preceded by latent optimization (none in
        ``fine-tune`` mode, which samples the adapted model without guidance)."""
        if self.mode == "fine-tune" or self.optimization_steps == 0:
            return 0
        return min(self.num_inference_steps, int(round(self.guidance_fraction * self.num_inference_steps)))

    @property
    def spectral_settings(self) -> dict[str, Any]:
        """The spectral terms' shape settings, shared by the zero-shot and fine-tune objectives."""
        return {"levels": self.levels, "level_weights": self.level_weights, "wavelet": self.wavelet, "delta": self.delta}

    @property
    def overlap_frames(self) -> int:
        """Frames shared by consecutive windows: ``overlap``, or a quarter of the window."""
        return self.overlap if self.overlap is not None else (self.window or self.num_frames) // 4

    @property
    def windowed(self) -> bool:
        """Whether the clip is longer than the window, so it is sampled in several."""
        return self.window is not None and self.num_frames > self.window

    @property
    def window_frames(self) -> int:
        """Frames the model sees at once: the window's, or the clip's when it fits."""
        return self.window if self.windowed else self.num_frames

    @property
    def trains(self) -> bool:
        """Whether a run with this configuration fine-tunes the model first."""
        return self.mode in ("fine-tune", "both") and self.adapter is None

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        env = os.environ.get("SMA_GUIDE_CACHE")
        if env:
            return Path(env).expanduser()
        return Path.home() / ".cache" / "sma-guide"

    # ------------------------------------------------------------------ validation
    def validate(self) -> "SMAConfig":
        """Raise a one-line :class:`UserError` on the first invalid setting; return ``self``."""
        positive_ints = ("num_frames", "height", "width", "num_inference_steps", "inversion_steps", "downsample_factor")
        for name in positive_ints:
            _require_int(name, getattr(self, name), minimum=1)
        _require_int("optimization_steps", self.optimization_steps, minimum=0)
        if self.low_pass_grid is not None:
            _require_int("low_pass_grid", self.low_pass_grid, minimum=1)
        _require_int("seed", self.seed, minimum=0)
        if self.num_frames < 3:
            raise UserError(f"num_frames must be at least 3 (got {self.num_frames}): motion needs two frame residuals")
        for name in ("height", "width"):
            if getattr(self, name) % 8:
                value = getattr(self, name)
                raise UserError(
                    f"{name} must be a multiple of 8 (got {value}); try {max(8, round(value / 8) * 8)}"
                )
        for name in ("learning_rate_start", "learning_rate_end", "delta"):
            _require_float(name, getattr(self, name), positive=True)
        for name in ("guidance_scale", "lambda_global", "lambda_local"):
            _require_float(name, getattr(self, name), positive=False)
        _require_unit_interval("guidance_fraction", self.guidance_fraction)
        _require_unit_interval("eta", self.eta, "0 (deterministic DDIM)", "1 (DDPM-like)")
        _require_unit_interval("guidance_rescale", self.guidance_rescale, "0 (plain guidance)")
        if self.generate_num_inference_steps is not None:
            _require_int("generate_num_inference_steps", self.generate_num_inference_steps, minimum=1)
            if self.generate_num_inference_steps > 1000:
                raise UserError("generate_num_inference_steps must be at most 1000 (the model's timesteps)")
        if self.generate_guidance_scale is not None:
            _require_float("generate_guidance_scale", self.generate_guidance_scale, positive=False)
        if self.generate_eta is not None:
            _require_unit_interval("generate_eta", self.generate_eta, "0 (deterministic DDIM)", "1 (DDPM-like)")
        if self.generate_guidance_rescale is not None:
            _require_unit_interval("generate_guidance_rescale", self.generate_guidance_rescale, "0 (plain guidance)")
        _require_int("generate_restarts", self.generate_restarts, minimum=0)
        if self.fps is not None:
            _require_float("fps", self.fps, positive=True)
        _require_float("start", self.start, positive=False)
        if self.duration is not None:
            _require_float("duration", self.duration, positive=True)
        if self.inversion_steps > 1000 or self.num_inference_steps > 1000:
            raise UserError("inversion_steps and num_inference_steps must be at most 1000 (the model's timesteps)")
        if self.feature_layers is not None and not self.feature_layers:
            raise UserError("feature_layers is empty; name at least one UNet submodule to record, or leave it unset "
                            "for the model's default")
        if self.feature_normalization not in FEATURE_NORMALIZATIONS:
            raise UserError(
                f"feature_normalization must be one of {', '.join(FEATURE_NORMALIZATIONS)} "
                f"(got {self.feature_normalization!r})"
            )
        if self.mode not in MODES:
            raise UserError(f"mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        if self.residual not in RESIDUALS:
            raise UserError(f"residual must be one of {', '.join(RESIDUALS)} (got {self.residual!r})")
        _require_int("train_steps", self.train_steps, minimum=1)
        _require_int("lora_rank", self.lora_rank, minimum=1)
        try:
            re.compile(self.trainable_modules)
        except re.error as err:
            raise UserError(f"trainable_modules is not a valid regular expression ({err}); fix the pattern") from None
        for name in ("train_learning_rate", "train_max_grad_norm"):
            _require_float(name, getattr(self, name), positive=True)
        for name in ("train_weight_decay", "train_lambda_global", "train_lambda_local"):
            _require_float(name, getattr(self, name), positive=False)
        if self.dtype not in DTYPES:
            raise UserError(f"dtype must be one of {', '.join(DTYPES)} (got {self.dtype!r})")
        if self.attention not in ATTENTIONS:
            raise UserError(f"attention must be one of {', '.join(ATTENTIONS)} (got {self.attention!r})")
        if self.activation_checkpointing not in CHECKPOINTING:
            raise UserError(
                f"activation_checkpointing must be one of {', '.join(CHECKPOINTING)} (got {self.activation_checkpointing!r})"
            )
        if self.loss_scaling not in LOSS_SCALINGS:
            raise UserError(f"loss_scaling must be one of {', '.join(LOSS_SCALINGS)} (got {self.loss_scaling!r})")
        _require_float("loss_scale", self.loss_scale, positive=True)
        _require_int("vae_batch_size", self.vae_batch_size, minimum=1)
        if not isinstance(self.vae_tiling, bool):
            raise UserError(f"vae_tiling must be true or false (got {self.vae_tiling!r})")
        self._validate_windows()
        if self.mask is not None and self.mask_box is not None:
            raise UserError("give the subject as a mask file or as a box, not both (--mask or --mask-box)")
        _require_int("mask_margin", self.mask_margin, minimum=0)
        if self.mask_box is not None:
            if len(self.mask_box) != 4:
                raise UserError(f"mask_box is X0,Y0,X1,Y1 in pixels of the input (4 numbers), got {len(self.mask_box)}")
            for value in self.mask_box:
                _require_float("mask_box", value, positive=False)
        self._validate_levels()
        return self

    def _validate_windows(self) -> None:
        if self.window is not None:
            _require_int("window", self.window, minimum=3)
        if self.overlap is not None:
            _require_int("overlap", self.overlap, minimum=0)
        if self.windowed:
            if self.overlap_frames >= self.window:
                raise UserError(
                    f"overlap must be below the window ({self.window} frames), got {self.overlap_frames}; "
                    f"try --overlap {self.window // 4}"
                )
            if self.trains:
                raise UserError(
                    f"the fine-tune trains on one window of {self.window} frames and the clip has {self.num_frames}; "
                    f"pass --frames {self.window} or fewer, or --mode zero-shot (which samples in windows)"
                )

    def _validate_levels(self) -> None:
        from .spectral import max_wavelet_level

        frames = self.window_frames  # the wavelet runs over one window's residuals
        try:
            deepest = max_wavelet_level(frames - 1, self.wavelet)
        except ValueError as err:
            raise UserError(f"unknown wavelet {self.wavelet!r}: {err}") from None
        if self.levels is not None:
            _require_int("levels", self.levels, minimum=1)
            if self.levels > deepest:
                raise UserError(
                    f"--levels {self.levels} is too deep for {frames} frames "
                    f"({frames - 1} residuals allow at most {deepest}); pass --levels {deepest} or fewer"
                )
        levels = self.levels or deepest
        if self.level_weights is not None:
            if len(self.level_weights) != levels + 1:
                raise UserError(
                    f"level_weights needs {levels + 1} entries (approximation first, then {levels} detail "
                    f"levels), got {len(self.level_weights)}"
                )
            for weight in self.level_weights:
                _require_float("level_weights", weight, positive=False)


def _require_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} must be a whole number (got {value!r})")
    if value < minimum:
        what = "positive" if minimum == 1 else f"at least {minimum}"
        raise UserError(f"{name} must be {what} (got {value})")


def _require_float(name: str, value: Any, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name} must be a number (got {value!r})")
    if not math.isfinite(value):
        raise UserError(f"{name} must be a finite number (got {value})")
    if positive and value <= 0:
        raise UserError(f"{name} must be positive (got {value})")
    if not positive and value < 0:
        raise UserError(f"{name} must not be negative (got {value})")


def _require_unit_interval(name: str, value: Any, low: str = "0", high: str = "1") -> None:
    """``value`` a number in [0, 1]; ``low`` and ``high`` name the ends in the error."""
    _require_float(name, value, positive=False)  # also rejects NaN, negatives and non-numbers
    if value > 1:
        raise UserError(f"{name} must be between {low} and {high} (got {value})")


# Per-family overrides of the defaults above (the family is detected from the model's own
# model_index.json, see pipelines/motion_transfer/backbones). Zeroscope uses the defaults as they are.
FAMILY_PRESETS: dict[str, dict[str, Any]] = {
    # Longer clips go in windows of the family's native clip: Zeroscope's 24 frames.
    "zeroscope": {"window": 24},
    "animatediff": {
        "window": 16,
        # AnimateDiff's native clip: 16 frames of 512 x 512 (its motion modules were trained on 16).
        "num_frames": 16,
        "height": 512,
        "width": 512,
        "guidance_scale": 7.5,  # diffusers' AnimateDiffPipeline default (DMT's 10 was tuned on Zeroscope)
    },
    "wan": {
        # Wan 2.1's native clip: 81 frames (4k + 1: 21 latent frames) of 480 x 832; estimated to fit a 24 GB
        # card with block checkpointing (pipelines/bench/RESULTS.md, "Wan 2.1": 13.8 GiB at 49 or 81 frames, the peak being the
        # prompt encoding while UMT5-XXL is on the GPU).
        "num_frames": 81,
        "window": 81,
        "height": 480,
        "width": 832,
        "guidance_scale": 5.0,  # WanPipeline's default
        # The flow ODE is inverted on the sampler's own sigmas (any multiple of the sampling steps).
        "inversion_steps": 50,
        # DMT's restart sampling was tuned on Zeroscope's DDIM; the Euler ODE runs as it is.
        "restart_sampling": False,
    },
}

# Per-model overrides of the defaults above (after the family's). Zeroscope uses the defaults as they are.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # A tiny random model built in code: its output is noise; it exists for tests and smoke runs.
    "tiny-random": {
        "num_frames": 8,
        "height": 64,
        "width": 64,
        # A smoke model answers in seconds: 20 steps (8 guided, DMT's 10 Adam steps each) keep every stage
        # of a run while the CLI's default run stays under 30 s on 2 CPU cores.
        "num_inference_steps": 20,
        "inversion_steps": 20,
        "activation_checkpointing": "off",
    },
    # A tiny random Wan (transformer, causal 3-D VAE, UMT5, flow matching) built in code, for tests.
    "tiny-random-wan": {
        "num_frames": 17,
        "height": 64,
        "width": 64,
        "activation_checkpointing": "off",
    },
    # The bundled model trained on the shapes world (pipelines/training/shapes_training.py); its own
    # vocabulary has no words for DMT's negative prompt.
    "shapes": {
        "num_frames": 8,
        "window": 8,  # the clips it was trained on
        "height": 64,
        "width": 64,
        "negative_prompt": "",
        "num_inference_steps": 25,
        "inversion_steps": 25,
        "guidance_scale": 7.5,
        "restart_sampling": False,
        # DMT's 4x low-pass leaves a 4x4 grid of a 16x16 latent, which erases a small object's place;
        # measured on the quick benchmark (pipelines/bench/RESULTS.md): the whole inversion (16 cells) transfers motion best.
        "low_pass_grid": 16,
        # DMT's optimization budget (10 steps); fewer starved the guidance (RESULTS.md). VMC's 300 fine-tune
        # steps are cut to 60 so that the benchmark fits an hour on 2 CPU cores.
        "optimization_steps": 10,
        # DMT's learning rates (0.007 -> 0.004) move this model's objects the right way but not as far as
        # the input's (path error; RESULTS.md, "Learning rate of the guidance"): 1.7x theirs follows the path, 3-6x loses objects.
        "learning_rate_start": 0.012,
        "learning_rate_end": 0.007,
        "train_steps": 60,
        # The benchmark's fine-tune rows were measured training the input temporal transformer too (ours,
        # before VMC's set became the default); VMC's set alone is not yet measured on this model.
        "trainable_modules": "vmc+transformer_in",
        # A few MiB of activations: recomputing them would only cost time.
        "activation_checkpointing": "off",
        # Text-to-video from pure noise (pipe.generate): the transfer's DDIM draws a twin, a split-off
        # fragment or a gap in a third of the clips; DDPM-like steps with two restart rounds each let the
        # model redo the layout until it is one object. Chosen on seeds 2000-3026 (the model card, "Sampling from
        # pure noise"): one clean object 64 -> 100 % of 81 held-out clips, backgrounds 95 -> 83 %, 3x calls.
        "generate_eta": 1.0,
        "generate_guidance_scale": 5.0,
        "generate_restarts": 2,
    },
    # A tiny random AnimateDiff (UNetMotionModel) built in code, for tests and smoke runs.
    "tiny-random-animatediff": {
        "num_frames": 8,
        "height": 64,
        "width": 64,
        "inversion_steps": 50,
        "activation_checkpointing": "off",
    },
}

# A model folder may name its preset in this file ({"preset": "shapes"}), so that it gets its defaults
# when loaded by path; pipelines.training.shapes_training writes it next to the weights.
PRESET_FILE = "sma_preset.json"

def preset_name(model: str) -> str:
    """The :data:`MODEL_PRESETS` entry of ``model``'s defaults: its name, or for a model folder loaded by
    path, the preset its :data:`PRESET_FILE` names (e.g. a retrained shapes model)."""
    marker = Path(model).expanduser() / PRESET_FILE
    if model in MODEL_PRESETS or not marker.is_file():
        return model
    try:
        name = str(json.loads(marker.read_text())["preset"])
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f'{marker} should read {{"preset": NAME}} ({error}); fix or delete it') from error
    if name not in MODEL_PRESETS:
        raise UserError(f"{marker} names an unknown preset {name!r}; use one of {', '.join(MODEL_PRESETS)}")
    return name


__all__ = [
    "DEFAULT_MODEL",
    "DERIVED_FROM_MODEL",
    "DMT_FEATURE_LAYERS",
    "DMT_NEGATIVE_PROMPT",
    "FAMILY_PRESETS",
    "MODEL_PRESETS",
    "PRESET_FILE",
    "SMAConfig",
    "preset_name",
]
