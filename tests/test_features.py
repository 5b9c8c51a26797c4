"""FeatureRecorder: shapes, clean removal, early stop, and the default DMT layers on a UNet3D."""

import pytest
import torch

from pipelines.motion_transfer.backbones.zeroscope import build_tiny_random
from sma_guidance.config import DMT_FEATURE_LAYERS
from sma_guidance.errors import UserError
from sma_guidance.features import FeatureRecorder

FRAMES = 5


@pytest.fixture(scope="module")
def unet():
    return build_tiny_random(seed=0)["unet"]


@pytest.fixture()
def unet_inputs():
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, FRAMES, 8, 8, generator=generator)
    embedding = torch.randn(1, 77, 32, generator=generator)
    return latents, embedding


def _forward(unet, latents, embedding):
    return unet(latents, 500, encoder_hidden_states=embedding).sample


def test_records_default_layers_with_frames_split(unet, unet_inputs):
    latents, embedding = unet_inputs
    with FeatureRecorder(unet, DMT_FEATURE_LAYERS, num_frames=FRAMES) as recorder:
        features = recorder.run(_forward, unet, latents, embedding)
    assert list(features) == list(DMT_FEATURE_LAYERS)
    modules = dict(unet.named_modules())
    conv2 = modules["up_blocks.1.resnets.1.conv2"]
    # decoder block 1 works at 4x4 (latent 8, bottom 2x2 upsampled once); its upsampler doubles that.
    assert features["up_blocks.1.resnets.1.conv2"].shape == (1, FRAMES, conv2.out_channels, 4, 4)
    assert features["up_blocks.1.temp_convs.1"].shape == (1, FRAMES, conv2.out_channels, 4, 4)
    assert features["up_blocks.1.upsamplers.0"].shape == (1, FRAMES, conv2.out_channels, 8, 8)


def test_reshape_matches_batch_frame_layout(unet, unet_inputs):
    latents, embedding = unet_inputs
    raw = {}
    handle = dict(unet.named_modules())["up_blocks.1.temp_convs.1"].register_forward_hook(
        lambda module, args, output: raw.setdefault("out", output)
    )
    try:
        with FeatureRecorder(unet, ["up_blocks.1.temp_convs.1"], num_frames=FRAMES) as recorder:
            features = recorder.run(_forward, unet, latents, embedding)
    finally:
        handle.remove()
    recorded = features["up_blocks.1.temp_convs.1"]
    for frame in range(FRAMES):
        torch.testing.assert_close(recorded[0, frame], raw["out"][frame])


def test_hooks_removed_on_exit_even_after_error(unet, unet_inputs):
    latents, embedding = unet_inputs
    modules = dict(unet.named_modules())
    before = {name: len(modules[name]._forward_hooks) for name in DMT_FEATURE_LAYERS}
    recorder = FeatureRecorder(unet, DMT_FEATURE_LAYERS, num_frames=FRAMES)
    with pytest.raises(RuntimeError, match="boom"):
        with recorder:
            assert all(len(modules[name]._forward_hooks) == before[name] + 1 for name in DMT_FEATURE_LAYERS)
            raise RuntimeError("boom")
    assert {name: len(modules[name]._forward_hooks) for name in DMT_FEATURE_LAYERS} == before
    _forward(unet, latents, embedding)
    assert recorder.features == {}
    with pytest.raises(RuntimeError, match="inside `with recorder:`"):
        recorder.run(_forward, unet, latents, embedding)


def test_early_stop_equals_full_forward_and_skips_the_rest(unet, unet_inputs):
    latents, embedding = unet_inputs
    with FeatureRecorder(unet, DMT_FEATURE_LAYERS, num_frames=FRAMES) as recorder:
        full = recorder.run(_forward, unet, latents, embedding)
    calls = []
    handle = unet.conv_out.register_forward_hook(lambda *args: calls.append(1))
    later_block = unet.up_blocks[2].register_forward_hook(lambda *args: calls.append(2))
    try:
        with FeatureRecorder(unet, DMT_FEATURE_LAYERS, num_frames=FRAMES, stop_after_last=True) as recorder:
            early = recorder.run(_forward, unet, latents, embedding)
    finally:
        handle.remove()
        later_block.remove()
    assert calls == []  # neither the last up block nor the output conv ran
    for name in DMT_FEATURE_LAYERS:
        torch.testing.assert_close(early[name], full[name], rtol=0, atol=0)


def test_gradients_flow_through_recorded_features(unet, unet_inputs):
    latents, embedding = unet_inputs
    latents = latents.clone().requires_grad_(True)
    with FeatureRecorder(unet, DMT_FEATURE_LAYERS, num_frames=FRAMES, stop_after_last=True) as recorder:
        features = recorder.run(_forward, unet, latents, embedding)
    sum(f.pow(2).mean() for f in features.values()).backward()
    assert latents.grad is not None and torch.isfinite(latents.grad).all() and latents.grad.abs().sum() > 0


def test_unknown_or_repeated_layer_is_a_user_error(unet):
    with pytest.raises(UserError, match="not a submodule"):
        FeatureRecorder(unet, ["up_blocks.9.nothing"], num_frames=FRAMES)
    with pytest.raises(UserError, match="more than once"):
        FeatureRecorder(unet, ["up_blocks.1.temp_convs.1"] * 2, num_frames=FRAMES)
