"""Unguided sampling equals diffusers' own pipelines: a folder saved by diffusers' pipeline class of each
family, sampled by ``pipe.generate`` and by that diffusers pipeline from the same seeded CPU generator,
prompt, negative prompt, guidance scale and step count, on the family's documented sampler.

- Zeroscope: ``TextToVideoSDPipeline`` as saved (Zeroscope's DDIM).
- AnimateDiff: ``AnimateDiffPipeline`` on AnimateDiff's sampler — DDIM on *linear* betas, no x̂₀ clipping,
  leading timesteps with offset 1 (guoyww/AnimateDiff's inference configs) — whether the folder was saved
  with SD 1.5's PNDM scheduler (as ``AnimateDiffPipeline`` keeps it) or is an SD 1.5 base plus a separate
  ``MotionAdapter``.
- Wan: ``WanPipeline`` run as our sampler deliberately differs from the shipped UniPC: Euler on the UniPC's
  own flow sigmas (a ``FlowMatchEulerDiscreteScheduler`` given those sigmas), prompts padded to the same length.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    AnimateDiffPipeline,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    MotionAdapter,
    TextToVideoSDPipeline,
    UniPCMultistepScheduler,
    WanPipeline,
)

from conftest import quiet_pipeline
from diffusers_layouts import save_animatediff, save_sd15_base_and_adapter, save_text_to_video_sd, save_wan
from pipelines.motion_transfer.hub import quiet_loading

PROMPT, NEGATIVE = "a red circle moving right", "blurry"
SAMPLING = dict(num_inference_steps=4, guidance_scale=7.5)
# float32 on a CPU: the two pipelines run the same kernels in the same order up to batching (ours runs the
# two CFG branches as one batch), so they agree to a few units in the last place; a wrong sampler is off
# by a large part of the pixel range.
TOLERANCE = 1e-4


def _ours(folder, motion_adapter=None, frames=8):
    pipe = quiet_pipeline(str(folder), dtype="float32", motion_adapter=motion_adapter and str(motion_adapter))
    out = pipe.generate(PROMPT, negative_prompt=NEGATIVE, num_frames=frames, height=64, width=64, seed=0, eta=0.0,
                        restarts=0, guidance_rescale=0.0, **SAMPLING)
    return pipe, out.frames[0]


def _theirs(pipe, frames=8, **extra):
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, negative_prompt=NEGATIVE, num_frames=frames, height=64, width=64, output_type="np",
               generator=torch.Generator("cpu").manual_seed(0), **SAMPLING, **extra)
    return np.asarray(out.frames[0])


def _animatediff_sampler(config) -> DDIMScheduler:
    """AnimateDiff's documented sampler, made from a checkpoint's scheduler configuration as diffusers'
    AnimateDiff docs make it (with AnimateDiff's own leading spacing)."""
    return DDIMScheduler.from_config(config, beta_schedule="linear", clip_sample=False, steps_offset=1,
                                     timestep_spacing="leading", set_alpha_to_one=False)


def _assert_same(ours, theirs):
    assert ours.shape == theirs.shape
    assert float(np.abs(ours).max()) > 0 and float(ours.std()) > 0.01  # a real video, not a blank one
    difference = float(np.abs(ours - theirs).max())
    assert difference < TOLERANCE, f"max difference {difference:.3g}"


def test_zeroscope_folder_samples_as_text_to_video_sd_pipeline(tmp_path):
    folder = save_text_to_video_sd(tmp_path / "t2v")
    pipe, ours = _ours(folder)
    assert pipe.backbone.name == "zeroscope"
    with quiet_loading():
        theirs = _theirs(TextToVideoSDPipeline.from_pretrained(folder))
    _assert_same(ours, theirs)


def test_saved_animatediff_folder_samples_as_animatediff_pipeline_on_its_sampler(tmp_path):
    folder = save_animatediff(tmp_path / "ad")  # saved with SD 1.5's PNDM scheduler
    pipe, ours = _ours(folder)
    with quiet_loading():
        reference = AnimateDiffPipeline.from_pretrained(folder)
    reference.scheduler = _animatediff_sampler(reference.scheduler.config)
    # The registered scheduler is the one that samples: it says what ran.
    assert pipe.scheduler.config.beta_schedule == "linear" and pipe.scheduler.config.clip_sample is False
    _assert_same(ours, _theirs(reference))


def test_sd15_base_plus_motion_adapter_samples_as_animatediff_pipeline_on_its_sampler(tmp_path):
    base, adapter = save_sd15_base_and_adapter(tmp_path / "sd")
    pipe, ours = _ours(base, motion_adapter=adapter)
    assert pipe.backbone.name == "animatediff"
    with quiet_loading():
        reference = AnimateDiffPipeline.from_pretrained(base, motion_adapter=MotionAdapter.from_pretrained(adapter))
    reference.scheduler = _animatediff_sampler(reference.scheduler.config)
    config = pipe.scheduler.config
    assert (config.beta_schedule, config.clip_sample, config.steps_offset, config.timestep_spacing) == (
        "linear", False, 1, "leading")
    _assert_same(ours, _theirs(reference))


class _EulerOnUniPCSigmas(FlowMatchEulerDiscreteScheduler):
    """diffusers' flow-matching Euler scheduler on the sigmas the shipped UniPC scheduler would use."""

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        unipc = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
        unipc.set_timesteps(num_inference_steps)
        super().set_timesteps(sigmas=unipc.sigmas[:-1].tolist(), device=device)  # shift 1: already shifted


def test_wan_folder_samples_as_wan_pipeline_run_as_euler_on_the_unipc_sigmas(tmp_path):
    folder = save_wan(tmp_path / "wan")
    pipe, ours = _ours(folder, frames=9)
    with quiet_loading():
        reference = WanPipeline.from_pretrained(folder)
    reference.scheduler = _EulerOnUniPCSigmas(shift=1.0)
    reference.scheduler.set_timesteps(SAMPLING["num_inference_steps"])
    expected = [float(t) for t in reference.scheduler.timesteps]
    assert pipe.sampling_timesteps(SAMPLING["num_inference_steps"]) == pytest.approx(expected, rel=1e-6)
    # WanPipeline pads prompts to max_sequence_length; ours to the tokenizer's length (UMT5's: 512, both).
    length = min(512, pipe.tokenizer.model_max_length)
    _assert_same(ours, _theirs(reference, frames=9, max_sequence_length=length))
