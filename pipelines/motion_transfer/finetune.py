"""Fine-tune mode: VMC-style motion distillation with latent-space SMA (paper Algorithm 1).

On the clip's clean latents v₀ and the source prompt, each training step samples a timestep t and noise
ε, forms v_t = √ᾱ_t v₀ + √(1−ᾱ_t) ε, predicts ε̂ and the Tweedie estimate v̂₀ = (v_t − √(1−ᾱ_t) ε̂)/√ᾱ_t,
and minimises

    VMC's residual alignment 1 − cos(δε̂, δε)  +  λg·global_motion_loss(δv₀, δv̂₀)  +  λl·local_motion_loss(δv₀, δv̂₀)

with δ the frame residuals — the same spectral functions as the zero-shot mode. Only the temporal
attention projections (``to_q``, ``to_k``, ``to_v``) are trained; the result is a small *motion adapter*
(those tensors alone) that can be saved as safetensors and applied to the same base model again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sma_guidance.atomic import atomic_write
from sma_guidance.errors import UserError
from sma_guidance.precision import LossScale, scaled_backward
from sma_guidance.vmc import flow_motion_distillation_terms, motion_distillation_terms, noise_from_prediction

ADAPTER_FORMAT = "sma-guide-motion-adapter/1"
# The name of the LoRA a diffusion transformer is fine-tuned or run with (diffusers' add_adapter).
LORA_NAME = "sma_guide_motion"


# ------------------------------------------------------------------------------------------ adapter
def trainable_parameter_names(unet: torch.nn.Module, pattern: str) -> list[str]:
    """Names of the parameters of every submodule whose dotted name matches ``pattern`` (re.search)."""
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise UserError(f"trainable_modules {pattern!r} is not a valid regular expression ({err})") from None
    names = [
        f"{module_name}.{param_name}"
        for module_name, module in unet.named_modules()
        if module_name and regex.search(module_name)
        for param_name, _ in module.named_parameters(recurse=False)
    ]
    if not names:
        raise UserError(f"no UNet submodule matches trainable_modules={pattern!r}; check the pattern")
    return names


def architecture_hash(unet: torch.nn.Module) -> str:
    """Hash of the UNet's public configuration: adapters only load onto the same architecture."""
    config = {k: v for k, v in dict(unet.config).items() if not str(k).startswith("_")}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class MotionAdapter:
    """The trained temporal-attention tensors of a motion fine-tune, with what they were made for."""

    tensors: dict[str, torch.Tensor]
    base_model: str
    architecture: str
    loss_history: list[dict[str, float]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    family: str = ""  # the backbone family it was trained on ("" in adapters saved before families existed)

    @property
    def is_lora(self) -> bool:
        """A LoRA of a diffusion transformer (its ``lora_A`` / ``lora_B`` tensors), not trained weights."""
        return "lora_rank" in self.settings

    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file (atomically) holding only the trained tensors plus metadata."""
        path = Path(path)
        metadata = {
            "format": ADAPTER_FORMAT,
            "base_model": self.base_model,
            "architecture": self.architecture,
            "family": self.family,
            "layers": json.dumps(sorted(self.tensors)),
            "settings": json.dumps(self.settings, default=str),
        }
        needed = sum(v.numel() * v.element_size() for v in self.tensors.values())
        with atomic_write(path, needed=needed) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.tensors.items()}, str(tmp), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MotionAdapter":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"adapter file not found: {path} — check the path or train one with --save-adapter")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception:
            raise UserError(f"{path} is not a safetensors motion adapter; pass a file written by --save-adapter") from None
        if metadata.get("format") != ADAPTER_FORMAT:
            raise UserError(f"{path} is not an sma-guide motion adapter (format {metadata.get('format')!r})")
        try:
            settings = json.loads(metadata.get("settings", "{}"))
        except ValueError:
            raise UserError(f"{path} has corrupt adapter metadata; save the adapter again with --save-adapter") from None
        return cls(
            tensors=tensors,
            base_model=metadata.get("base_model", ""),
            architecture=metadata.get("architecture", ""),
            settings=settings,
            family=metadata.get("family", ""),
        )

    def check_compatible(self, unet: torch.nn.Module, base_model: str, family: str = "") -> None:
        """Raise a :class:`UserError` unless the adapter's family (when both are known), every tensor name
        and shape match ``unet``."""
        describe = f"the adapter was trained on {self.base_model or 'another model'}, not {base_model}"
        if self.family and family and self.family != family:
            raise UserError(
                f"adapter does not fit this model: it was trained on a {self.family}-family model "
                f"({self.base_model or 'unknown'}), this is a {family}-family model ({base_model}); train one on it "
                f"with --mode fine-tune --save-adapter"
            )
        if self.architecture and self.architecture != architecture_hash(unet):
            raise UserError(f"adapter does not fit this model: {describe} (different UNet architecture)")
        if self.is_lora:
            modules = dict(unet.named_modules())
            missing = [name for name in self.settings.get("target_modules", []) if name not in modules]
            if missing:
                raise UserError(f"adapter does not fit this model: {describe} (no layer {missing[0]})")
            return
        params = dict(unet.named_parameters())
        for name, tensor in self.tensors.items():
            if name not in params:
                raise UserError(f"adapter does not fit this model: {describe} (no layer {name})")
            if tuple(params[name].shape) != tuple(tensor.shape):
                raise UserError(
                    f"adapter does not fit this model: {describe} ({name} is {tuple(tensor.shape)}, "
                    f"the model's is {tuple(params[name].shape)})"
                )


@contextlib.contextmanager
def applied_adapter(
    unet: torch.nn.Module, adapter: MotionAdapter | None, base_model: str, family: str = ""
) -> Iterator[None]:
    """Use ``adapter``'s tensors inside the block and restore the base weights after it."""
    if adapter is None:
        yield
        return
    adapter.check_compatible(unet, base_model, family)
    if adapter.is_lora:
        with _applied_lora(unet, adapter):
            yield
        return
    params = dict(unet.named_parameters())
    originals = {name: params[name].detach().clone() for name in adapter.tensors}
    with torch.no_grad():
        for name, tensor in adapter.tensors.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for name, tensor in originals.items():
                params[name].copy_(tensor)


def _lora_config(rank: int, target_modules: list[str]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, target_modules=list(target_modules), init_lora_weights=True)


@contextlib.contextmanager
def _added_lora(model: torch.nn.Module, rank: int, target_modules: list[str]) -> Iterator[None]:
    """A fresh LoRA named :data:`LORA_NAME` on ``model`` inside the block (diffusers' ``add_adapter``), removed
    after it: the base weights are never written."""
    if not hasattr(model, "add_adapter"):
        raise UserError(f"a {type(model).__name__} takes no LoRA through diffusers; fine-tune a model of another family")
    others = bool(getattr(model, "peft_config", None))  # LoRAs the caller loaded stay
    try:
        model.add_adapter(_lora_config(rank, target_modules), adapter_name=LORA_NAME)
    except ImportError:
        raise UserError("fine-tuning a diffusion transformer needs peft: pip install 'peft>=0.18'") from None
    try:
        yield
    finally:
        if others:
            model.delete_adapters(LORA_NAME)
        else:  # peft's wrappers out as well: the model's modules and state dict are the base's again
            model.unload_lora()


@contextlib.contextmanager
def _applied_lora(model: torch.nn.Module, adapter: MotionAdapter) -> Iterator[None]:
    from peft.utils import set_peft_model_state_dict

    with _added_lora(model, int(adapter.settings["lora_rank"]), adapter.settings["target_modules"]):
        result = set_peft_model_state_dict(model, adapter.tensors, adapter_name=LORA_NAME)
        unexpected = [key for key in getattr(result, "unexpected_keys", []) if "lora_" in key]
        if unexpected:
            raise UserError(f"adapter does not fit this model: its tensor {unexpected[0]} has no place in it")
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.requires_grad_(False)  # applied, not trained: no graph through it
        yield


# ------------------------------------------------------------------------------------------ training
def train_motion_adapter(
    unet: torch.nn.Module,
    alphas_cumprod: torch.Tensor,
    latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    *,
    steps: int = 400,
    learning_rate: float = 1e-4,
    weight_decay: float = 1e-2,
    max_grad_norm: float = 1.0,
    trainable_modules: str = r"temp_attentions\..*\.to_[qkv]$",
    gradient_checkpointing: bool = True,
    seed: int = 0,
    base_model: str = "",
    progress: Callable[[int], Any] | None = None,
    prediction_type: str = "epsilon",
    family: str = "",
    unet_call: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor] | None = None,
    loss_scaling: str = "dynamic",
    loss_scale: float = 2.0**16,
    **loss_settings: Any,
) -> MotionAdapter:
    """Fine-tune the temporal attention of ``unet`` on one clip and return the trained tensors.

    The UNet's weights are restored afterwards (the returned :class:`MotionAdapter` holds the result),
    and no other parameter is touched. AdamW on the trainable parameters only, gradient-norm clipping,
    fp16/bf16 autocast when the UNet is on a GPU in half precision (the trainable tensors are then kept
    in float32), and with ``gradient_checkpointing`` the model's own checkpointing where it has one —
    diffusers' UNet3DConditionModel has none, so on a GPU the activations saved for the backward pass
    are kept in host memory instead (``torch.autograd.graph.save_on_cpu``).

    Args:
        unet: a UNet3D called as ``unet(x, t, encoder_hidden_states=...)`` on ``(B, C, F, h, w)``.
        alphas_cumprod: the scheduler's ᾱ, ``(num_train_timesteps,)``.
        latents: the clip's clean latents v₀ ``(1, C, F, h, w)``, scaled by the VAE factor.
        encoder_hidden_states: the source prompt's embedding ``(1, L, D)``.
        prediction_type: what the UNet predicts, ``"epsilon"`` or ``"v_prediction"`` (the scheduler's
            setting); the objective is computed on the noise estimate either way.
        family: the backbone family, recorded in the adapter.
        unet_call: ``(latents, t, embedding) -> prediction`` as the model's family calls its UNet
            (default: ``unet(latents, t, encoder_hidden_states=embedding).sample``).
        loss_scaling, loss_scale: the loss scale of a float16 model's backward
            (:class:`~sma_guidance.precision.LossScale`); unused in float32 and bfloat16.
        **loss_settings: ``lambda_global``, ``lambda_local``, ``residual``, ``levels``,
            ``level_weights``, ``wavelet``, ``delta`` of :func:`motion_distillation_terms`.
    """
    device = latents.device
    forward = unet_call or _plain_call(unet)
    model_dtype = next(unet.parameters()).dtype
    half = model_dtype in (torch.float16, torch.bfloat16)
    if half and device.type != "cuda":
        raise UserError("fine-tuning a half-precision model needs a GPU; use --dtype float32 on the CPU")
    names = trainable_parameter_names(unet, trainable_modules)
    params = dict(unet.named_parameters())
    originals = {name: params[name].detach().clone() for name in names}
    was_requires_grad = {name: p.requires_grad for name, p in params.items()}
    was_checkpointing = bool(getattr(unet, "is_gradient_checkpointing", False))
    alphas_cumprod = alphas_cumprod.to(device=device, dtype=torch.float32)
    num_timesteps = alphas_cumprod.shape[0]
    generator = torch.Generator("cpu").manual_seed(seed)
    clean = latents.detach().float()
    history: list[dict[str, float]] = []
    bar = progress(steps) if progress else None
    stack = contextlib.ExitStack()
    checkpointing = False
    try:
        unet.requires_grad_(False)
        trainable = [params[name] for name in names]
        for param in trainable:
            param.data = param.data.float()  # float32 master weights for AdamW
            param.requires_grad_(True)
        checkpointing = gradient_checkpointing and getattr(unet, "_supports_gradient_checkpointing", False)
        if checkpointing:
            unet.enable_gradient_checkpointing()
        elif gradient_checkpointing and device.type == "cuda":
            # diffusers' UNet3DConditionModel implements no checkpointing (and we do not patch it):
            # keep the activations saved for backward in pinned host memory instead.
            stack.enter_context(torch.autograd.graph.save_on_cpu(pin_memory=True))
        optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=weight_decay)
        autocast = torch.autocast(device.type, dtype=model_dtype) if half else contextlib.nullcontext()
        scale = LossScale.for_run(loss_scaling, loss_scale, model_dtype)
        for step in range(steps):
            t = int(torch.randint(0, num_timesteps, (1,), generator=generator))
            noise = torch.randn(clean.shape, generator=generator).to(device)
            alpha_prod = alphas_cumprod[t]
            noisy = alpha_prod.sqrt() * clean + (1 - alpha_prod).sqrt() * noise

            def objective() -> dict[str, torch.Tensor]:
                with autocast:
                    output = forward(noisy.to(model_dtype), t, encoder_hidden_states)
                noise_pred = noise_from_prediction(output.float(), noisy, alpha_prod, prediction_type)
                return motion_distillation_terms(
                    *(_frames_first(x) for x in (noise_pred.float(), noise, clean, noisy)), alpha_prod, **loss_settings
                )

            record = {"step": step, "timestep": t, **_train_step(objective, trainable, optimizer, scale, max_grad_norm)}
            history.append(record)
            _advance(bar, record)
        tensors = {name: params[name].detach().to(model_dtype).clone().cpu() for name in names}
    finally:
        stack.close()
        with torch.no_grad():
            for name, tensor in originals.items():
                params[name].data = tensor
        _end_training(unet, bar, checkpointing and not was_checkpointing, was_requires_grad)
    settings = {
        "steps": steps,
        "learning_rate": learning_rate,
        "weight_decay": weight_decay,
        "max_grad_norm": max_grad_norm,
        "trainable_modules": trainable_modules,
        "seed": seed,
        "prediction_type": prediction_type,
        "loss_scaling": loss_scaling if scale.enabled else "off",
        **loss_settings,
    }
    return MotionAdapter(
        tensors=tensors,
        base_model=base_model,
        architecture=architecture_hash(unet),
        loss_history=history,
        settings=settings,
        family=family,
    )


def train_lora_adapter(
    transformer: torch.nn.Module,
    sigmas: torch.Tensor,
    latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    *,
    target_modules: list[str],
    rank: int = 16,
    steps: int = 400,
    learning_rate: float = 1e-4,
    weight_decay: float = 1e-2,
    max_grad_norm: float = 1.0,
    gradient_checkpointing: bool = True,
    seed: int = 0,
    base_model: str = "",
    family: str = "",
    num_train_timesteps: int = 1000,
    unet_call: Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int], Any] | None = None,
    loss_scaling: str = "dynamic",
    loss_scale: float = 2.0**16,
    **loss_settings: Any,
) -> MotionAdapter:
    """Fine-tune a flow-matching diffusion transformer (Wan) on one clip through a LoRA of ``rank`` on
    ``target_modules`` (diffusers' ``add_adapter``; peft underneath), and return the LoRA tensors alone.

    Each step draws σ from ``sigmas`` (the scheduler's training sigmas), forms x_σ = (1 − σ)·x₀ + σ·ε,
    predicts the velocity at timestep σ·``num_train_timesteps`` and minimises
    :func:`~sma_guidance.vmc.flow_motion_distillation_terms` (VMC's residual alignment on ε̂ = x_σ + (1 − σ)·v̂,
    SMA's terms on x̂₀ = x_σ − σ·v̂). AdamW on the LoRA weights only, gradient-norm clipping, the model's
    own gradient checkpointing when asked; the transformer is left as it was (the LoRA is removed).

    Args:
        latents: the clip's clean latents x₀ ``(1, C, F, h, w)`` as the VAE gives them.
        encoder_hidden_states: the source prompt's embedding ``(1, L, D)``.
        unet_call: ``(latents, t, embedding) -> velocity`` as the family calls its transformer.
        **loss_settings: ``lambda_global``, ``lambda_local``, ``residual``, ``levels``, ``level_weights``,
            ``wavelet``, ``delta`` of the objective.
    """
    from peft.utils import get_peft_model_state_dict

    device = latents.device
    model_dtype = next(transformer.parameters()).dtype
    half = model_dtype in (torch.float16, torch.bfloat16)
    if half and device.type != "cuda":
        raise UserError("fine-tuning a half-precision model needs a GPU; use --dtype float32 on the CPU")
    forward = unet_call or _plain_call(transformer)
    was_requires_grad = {name: p.requires_grad for name, p in transformer.named_parameters()}
    was_checkpointing = bool(getattr(transformer, "is_gradient_checkpointing", False))
    generator = torch.Generator("cpu").manual_seed(seed)
    clean = latents.detach().float()
    sigmas = sigmas.float().cpu()
    history: list[dict[str, float]] = []
    bar = progress(steps) if progress else None
    checkpointing = gradient_checkpointing and getattr(transformer, "_supports_gradient_checkpointing", False)
    transformer.requires_grad_(False)
    try:
        with _added_lora(transformer, rank, target_modules):
            trainable = [p for name, p in transformer.named_parameters() if "lora_" in name]
            for param in trainable:
                param.data = param.data.float()  # float32 master weights for AdamW
                param.requires_grad_(True)
            if checkpointing:
                transformer.enable_gradient_checkpointing()
            optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=weight_decay)
            autocast = torch.autocast(device.type, dtype=model_dtype) if half else contextlib.nullcontext()
            scale = LossScale.for_run(loss_scaling, loss_scale, model_dtype)
            for step in range(steps):
                sigma = float(sigmas[int(torch.randint(0, len(sigmas), (1,), generator=generator))])
                noise = torch.randn(clean.shape, generator=generator).to(device)
                noisy = (1 - sigma) * clean + sigma * noise

                def objective() -> dict[str, torch.Tensor]:
                    with autocast:
                        velocity = forward(noisy.to(model_dtype), sigma * num_train_timesteps, encoder_hidden_states)
                    return flow_motion_distillation_terms(
                        *(_frames_first(x) for x in (velocity.float(), noise, clean, noisy)), sigma, **loss_settings
                    )

                record = {"step": step, "sigma": sigma, **_train_step(objective, trainable, optimizer, scale, max_grad_norm)}
                history.append(record)
                _advance(bar, record)
            tensors = {name: tensor.detach().clone().cpu()
                       for name, tensor in get_peft_model_state_dict(transformer, adapter_name=LORA_NAME).items()}
    finally:
        _end_training(transformer, bar, checkpointing and not was_checkpointing, was_requires_grad)
    settings = {
        "steps": steps,
        "learning_rate": learning_rate,
        "weight_decay": weight_decay,
        "max_grad_norm": max_grad_norm,
        "lora_rank": rank,
        "target_modules": list(target_modules),
        "seed": seed,
        "prediction_type": "flow",
        "loss_scaling": loss_scaling if scale.enabled else "off",
        **loss_settings,
    }
    return MotionAdapter(tensors=tensors, base_model=base_model, architecture=architecture_hash(transformer),
                         loss_history=history, settings=settings, family=family)


def _end_training(model: torch.nn.Module, bar: Any, stop_checkpointing: bool, was_requires_grad: dict[str, bool]) -> None:
    """What every fine-tune undoes at its end, finished or not: the progress bar closed, the checkpointing it
    switched on switched off, each parameter's ``requires_grad`` as it was (a parameter the run added, a LoRA
    still loaded, frozen) and no gradient left behind."""
    if bar is not None and hasattr(bar, "close"):
        bar.close()
    if stop_checkpointing:
        model.disable_gradient_checkpointing()
    for name, param in model.named_parameters():
        param.requires_grad_(was_requires_grad.get(name, False))
        param.grad = None


def _train_step(objective: Callable[[], dict[str, torch.Tensor]], trainable: list[torch.Tensor],
                optimizer: torch.optim.Optimizer, scale: LossScale, max_grad_norm: float) -> dict[str, float]:
    """One optimizer step on ``trainable`` down ``objective()["total"]``: a float16 model's gradients are
    scaled through its backward and divided back on the float32 master weights, so clipping and the
    optimizer see the true gradient. Returns the terms (and the loss scale used, when one is)."""
    terms = scaled_backward(objective, trainable, scale)
    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    record = {key: float(value.detach()) for key, value in terms.items()}
    if scale.enabled:
        record["loss_scale"] = scale.last
    return record


def _advance(bar: Any, record: dict[str, float]) -> None:
    if bar is not None:
        bar.set_postfix(loss=f"{record['total']:.4f}", refresh=False)
        bar.update(1)


@torch.no_grad()
def evaluate_motion_objective(
    unet: torch.nn.Module,
    alphas_cumprod: torch.Tensor,
    latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    timesteps: tuple[int, ...] = (50, 150, 300, 450, 600, 750, 900),
    seed: int = 1234,
    prediction_type: str = "epsilon",
    unet_call: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor] | None = None,
    **loss_settings: Any,
) -> dict[str, float]:
    """The fine-tune objective averaged over fixed ``timesteps`` with seeded noise: a deterministic
    yardstick to compare a model before and after training (training itself samples t at random)."""
    device = latents.device
    dtype = next(unet.parameters()).dtype
    generator = torch.Generator("cpu").manual_seed(seed)
    clean = latents.float()
    alphas_cumprod = alphas_cumprod.to(device=device, dtype=torch.float32)
    sums: dict[str, float] = {}
    for t in timesteps:
        noise = torch.randn(clean.shape, generator=generator).to(device)
        alpha_prod = alphas_cumprod[t]
        noisy = alpha_prod.sqrt() * clean + (1 - alpha_prod).sqrt() * noise
        output = (unet_call or _plain_call(unet))(noisy.to(dtype), t, encoder_hidden_states).float()
        noise_pred = noise_from_prediction(output, noisy, alpha_prod, prediction_type)
        terms = motion_distillation_terms(
            *(_frames_first(x) for x in (noise_pred, noise, clean, noisy)), alpha_prod, **loss_settings
        )
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value) / len(timesteps)
    return sums


def _plain_call(unet: torch.nn.Module) -> Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]:
    """A UNet3D's call: ``unet(latents, t, encoder_hidden_states=embedding).sample``."""
    return lambda latents, t, embedding: unet(latents, t, encoder_hidden_states=embedding).sample


def _frames_first(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, F, H, W)`` UNet layout → ``(B, F, C, H, W)`` loss layout."""
    return x.permute(0, 2, 1, 3, 4)


__all__ = [
    "MotionAdapter",
    "applied_adapter",
    "architecture_hash",
    "evaluate_motion_objective",
    "train_lora_adapter",
    "train_motion_adapter",
    "trainable_parameter_names",
]
