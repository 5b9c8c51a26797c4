"""The deterministic samplers the pipeline core runs, and their inversions.

The core (guided loop, inversion cache, DMT's initial latent) only needs a few operations of a sampler:
its timesteps, one deterministic step, the inversion that keeps the latents at those timesteps, the
forward process between two noise levels (DMT's restart sampling) and what the model is called with.
Two samplers provide them (DDIM also takes a stochastic step, η > 0, for the unguided steps):

- :class:`DDIMSampler` — DDIM (η = 0) on a noise-prediction model's ᾱ schedule (Zeroscope, AnimateDiff),
  inverted with diffusers' ``DDIMInverseScheduler``;
- :class:`FlowMatchSampler` — the Euler solver of a flow-matching model's ODE ``dx/dσ = v`` on the
  scheduler's shifted sigmas (Wan 2.1), inverted by the same Euler ODE run from the clean latent
  towards noise.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from sma_guidance.errors import UserError

from pipelines.motion_transfer.inversion import check_timesteps_covered, ddim_invert, inversion_timesteps, public_config

ModelFn = Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]  # (latents, t, embedding) -> output
Progress = Callable[[int], object] | None


def standard_normal(shape: tuple[int, ...], generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """float32 N(0, 1) noise of ``shape`` ``(B, ...)`` on the CPU, from ``generator``; from a list of B
    generators, item b's noise is the one its generator alone would draw for a batch of one, so a batch
    samples what its items sampled one by one do."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generator])
    return torch.randn(shape, generator=generator, dtype=torch.float32)


class DDIMSampler:
    """DDIM on a ``DDIMScheduler`` (ε- or v-prediction): deterministic (η = 0) unless a step asks for η > 0."""

    name = "DDIM"

    def __init__(self, scheduler: DDIMScheduler) -> None:
        self.scheduler = scheduler

    def timesteps(self, num_inference_steps: int) -> list[int]:
        """The sampling timesteps, noisiest first."""
        self.scheduler.set_timesteps(num_inference_steps)
        return [int(t) for t in self.scheduler.timesteps]

    def describe(self, num_inference_steps: int) -> dict:
        """What samples and inverts, for a run's record: the scheduler's class and settings (betas, spacing,
        offset, clipping, prediction type) and the sampling timesteps."""
        return {"sampler": self.name, "scheduler": type(self.scheduler).__name__, "inversion": "DDIMInverseScheduler",
                "config": public_config(self.scheduler.config), "timesteps": self.timesteps(num_inference_steps)}

    def check(self, inversion_steps: int, num_inference_steps: int) -> None:
        """A one-line :class:`UserError` when the inversion would skip a sampling timestep."""
        check_timesteps_covered(dict(self.scheduler.config), inversion_steps, self.timesteps(num_inference_steps))

    def fitting_inversion_steps(self, preferred: int, num_inference_steps: int) -> int:
        """The inversion step count closest to ``preferred`` (the larger one on a tie: more accurate)
        whose DDIM grid passes through every sampling timestep."""
        needed = set(self.timesteps(num_inference_steps))
        config = dict(self.scheduler.config)
        most = int(config.get("num_train_timesteps", 1000))
        for distance in range(most):
            for count in (preferred + distance, preferred - distance):
                if 1 <= count <= most and needed <= set(inversion_timesteps(config, count).tolist()):
                    return count
        return most - 1  # 999 passes through every timestep of a leading/trailing grid

    def step(self, model_output: torch.Tensor, t: int, latents: torch.Tensor, eta: float = 0.0,
             generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """One DDIM step from ``t`` to the next sampling timestep (``timesteps`` must have been set);
        ``eta`` > 0 adds ``eta``·σ_t of fresh noise drawn from ``generator`` (DDIM paper, eq. 12 and 16),
        or, given one generator per batch item, each item's noise from its own."""
        if not eta:
            return self.scheduler.step(model_output, t, latents).prev_sample
        noise = standard_normal(latents.shape, generator).to(latents.device, latents.dtype)
        return self.scheduler.step(model_output, t, latents, eta=eta, variance_noise=noise).prev_sample

    def check_eta(self, eta: float) -> None:
        """Any η in [0, 1] is a DDIM sampler."""

    def renoise(self, latents: torch.Tensor, t_from: int, t_to: int,
                generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
        """A draw of q(x_{t_to} | x_{t_from}) for ``t_to`` > ``t_from``: the forward process over that
        interval (the noise from ``generator``, or each item's from its own: :func:`standard_normal`)."""
        alphas = self.scheduler.alphas_cumprod
        ratio = float(alphas[t_to] / alphas[t_from])
        noise = standard_normal(latents.shape, generator).to(latents.device)
        return ratio**0.5 * latents + (1 - ratio) ** 0.5 * noise

    def invert(self, model: ModelFn, latents: torch.Tensor, embedding: torch.Tensor, inversion_steps: int,
               keep: Iterable[int], progress: Progress = None) -> dict[int, torch.Tensor]:
        """``{t: x_t}`` of a ``inversion_steps``-step DDIM inversion of clean ``latents`` ``(B, C, F, h, w)``."""
        return ddim_invert(lambda x, t, encoder_hidden_states: _Sample(model(x, t, encoder_hidden_states)),
                           dict(self.scheduler.config), latents, embedding, inversion_steps, keep, progress)

    def inversion_steps_run(self, inversion_steps: int, t_max: float) -> int:
        """How many model calls the inversion makes to reach ``t_max``."""
        return sum(1 for t in inversion_timesteps(dict(self.scheduler.config), inversion_steps).tolist() if t <= t_max)


class FlowMatchSampler:
    """The Euler solver of a rectified-flow model's ODE on diffusers' shifted flow sigmas.

    The model predicts the velocity ``v = ε − x₀`` of ``x_σ = (1 − σ) x₀ + σ ε``, so ``dx/dσ = v``. The
    sigmas are those of diffusers' ``UniPCMultistepScheduler(use_flow_sigmas=True)``, Wan's Hub
    scheduler: ``s_i = 1 − (i/n)(1 − 1/T)``, ``σ_i = shift·s_i / (1 + (shift − 1)·s_i)`` for ``i < n``
    (σ_0 nudged just below 1), and ``σ_n = 0``; the model is called with ``t = σ·T``. An ``m``-step inversion uses the
    same formula with ``m`` steps, so when ``m`` is a multiple of ``n`` it passes through every
    sampling sigma exactly.
    """

    name = "flow-matching Euler"

    def __init__(self, scheduler: FlowMatchEulerDiscreteScheduler) -> None:
        self.scheduler = scheduler
        self.shift = float(scheduler.config.get("shift", 1.0))
        self.num_train_timesteps = int(scheduler.config.get("num_train_timesteps", 1000))
        self._sigmas_of: dict[float, tuple[float, float]] = {}  # sampling timestep -> (σ, next σ)

    def sigmas(self, steps: int) -> list[float]:
        """``steps + 1`` sigmas from the noisiest down to 0 (``i / steps`` is computed first, so that a
        multiple of ``steps`` reproduces these sigmas bit for bit)."""
        span = 1 - 1 / self.num_train_timesteps
        unshifted = [1 - (i / steps) * span for i in range(steps)]
        sigmas = [self.shift * s / (1 + (self.shift - 1) * s) for s in unshifted]
        if abs(sigmas[0] - 1) < 1e-6:
            sigmas[0] -= 1e-6  # as diffusers' UniPC (Wan's scheduler): the first sigma stays below 1
        return sigmas + [0.0]

    def timesteps(self, num_inference_steps: int) -> list[float]:
        sigmas = self.sigmas(num_inference_steps)
        timesteps = [sigma * self.num_train_timesteps for sigma in sigmas[:-1]]
        self._sigmas_of = dict(zip(timesteps, zip(sigmas, sigmas[1:])))  # one Euler step moves to the next σ
        return timesteps

    def describe(self, num_inference_steps: int) -> dict:
        """What samples and inverts, for a run's record: Euler on these shifted flow sigmas (the
        registered scheduler's class and settings, the shift) and the sampling timesteps σ·T."""
        return {"sampler": self.name, "scheduler": type(self.scheduler).__name__, "inversion": "the same Euler ODE, upwards",
                "config": public_config(self.scheduler.config), "shift": self.shift,
                "sigmas": self.sigmas(num_inference_steps), "timesteps": self.timesteps(num_inference_steps)}

    def fitting_inversion_steps(self, preferred: int, num_inference_steps: int) -> int:
        """The multiple of ``num_inference_steps`` closest to ``preferred`` (the larger on a tie)."""
        multiples = range(num_inference_steps, self.num_train_timesteps + 1, num_inference_steps)
        return min(multiples, key=lambda count: (abs(count - preferred), -count))

    def check(self, inversion_steps: int, num_inference_steps: int) -> None:
        if inversion_steps % num_inference_steps:
            raise UserError(
                f"inversion_steps={inversion_steps} does not pass through the {num_inference_steps} sampling steps of "
                f"this flow-matching model; use a multiple of num_inference_steps (e.g. {num_inference_steps})"
            )

    def step(self, model_output: torch.Tensor, t: float, latents: torch.Tensor, eta: float = 0.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """One Euler step from ``t`` to the next sampling sigma: ``x + (σ_next − σ) v``. The ODE has no
        ``eta``: only 0 is accepted."""
        self.check_eta(eta)
        if t not in self._sigmas_of:
            raise RuntimeError(f"t={t} is not a sampling timestep; call timesteps(n) first")
        sigma, sigma_next = self._sigmas_of[t]
        return latents + (sigma_next - sigma) * model_output.to(latents.dtype)

    def check_eta(self, eta: float) -> None:
        """A one-line :class:`UserError` for η > 0: the ODE has no stochastic step."""
        if eta:
            raise UserError(f"eta={eta} needs a DDIM model; a flow-matching model's Euler sampler is deterministic: use eta 0")

    def renoise(self, latents: torch.Tensor, t_from: float, t_to: float,
                generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
        """A draw of x_{σ_b} given x_{σ_a} (σ_b > σ_a) under ``x_σ = (1 − σ) x₀ + σ ε``: scale by
        ``(1 − σ_b)/(1 − σ_a)`` and add the noise that brings the variance of ε's share to σ_b²."""
        sigma_a, sigma_b = t_from / self.num_train_timesteps, t_to / self.num_train_timesteps
        scale = (1 - sigma_b) / (1 - sigma_a)
        extra = max(sigma_b**2 - (scale * sigma_a) ** 2, 0.0) ** 0.5
        noise = standard_normal(latents.shape, generator).to(latents.device)
        return scale * latents + extra * noise

    @torch.no_grad()
    def invert(self, model: ModelFn, latents: torch.Tensor, embedding: torch.Tensor, inversion_steps: int,
               keep: Iterable[float], progress: Progress = None) -> dict[float, torch.Tensor]:
        """``{t: x_t}`` for the sampling timesteps ``keep``: the Euler ODE run from the clean
        ``latents`` ``(B, C, F, h, w)`` (σ = 0) up the ``inversion_steps`` sigmas, each step using the
        velocity at the point it starts from: ``x_{σ'} = x_σ + (σ' − σ) v(x_σ, σ)``."""
        keep = sorted(set(keep))
        scale = self.num_train_timesteps
        sigmas = self.sigmas(inversion_steps)[::-1]  # 0 first
        # The inversion stops at the noisiest timestep kept: later steps would be wasted. Timesteps are
        # compared as computed (σ·T of the same σ): an m-step grid reproduces an n-step one's sigmas exactly.
        steps = []
        for sigma, sigma_next in zip(sigmas, sigmas[1:]):
            steps.append((sigma, sigma_next))
            if sigma_next * scale >= keep[-1]:
                break
        bar = progress(len(steps)) if progress else None
        kept: dict[float, torch.Tensor] = {}
        sample = latents
        for sigma, sigma_next in steps:
            velocity = model(sample, sigma * scale, embedding)
            sample = sample + (sigma_next - sigma) * velocity.to(sample.dtype)
            if sigma_next * scale in keep:
                kept[sigma_next * scale] = sample.clone()
            if bar is not None:
                bar.update(1)
        if bar is not None and hasattr(bar, "close"):
            bar.close()
        missing = [t for t in keep if t not in kept]
        if missing:
            raise UserError(
                f"the {inversion_steps}-step inversion does not pass through t={missing[0]:.3f}; use a multiple of "
                f"num_inference_steps for inversion_steps"
            )
        return kept

    def inversion_steps_run(self, inversion_steps: int, t_max: float) -> int:
        return sum(1 for sigma in self.sigmas(inversion_steps)[:-1] if sigma * self.num_train_timesteps <= t_max)


def sampler_for(scheduler: object) -> DDIMSampler | FlowMatchSampler:
    """The sampler that runs ``scheduler`` (the pipeline registers a DDIM or a flow-matching Euler one)."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return FlowMatchSampler(scheduler)
    if isinstance(scheduler, DDIMScheduler):
        return DDIMSampler(scheduler)
    raise UserError(f"no sampler for a {type(scheduler).__name__}; the pipeline runs DDIM or flow-matching Euler")


class _Sample:
    """Lets a plain function stand in for a UNet in :func:`ddim_invert` (which reads ``.sample``)."""

    def __init__(self, sample: torch.Tensor) -> None:
        self.sample = sample


__all__ = ["DDIMSampler", "FlowMatchSampler", "sampler_for"]
