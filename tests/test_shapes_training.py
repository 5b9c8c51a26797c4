"""The shapes model's training script: optimizer groups, checkpoint and resume (two tiny steps)."""

import json

import numpy as np
import torch

from pipelines import shapes_training
from sma_guidance import shapes


def _pool(count=4, frames=8):
    rng = np.random.default_rng(0)
    specs = [shapes.sample_clip_spec(rng, num_frames=frames) for _ in range(count)]
    return torch.randn(count, 4, frames, 16, 16), specs


def test_temporal_layers_get_their_own_learning_rate_and_training_resumes(tmp_path, monkeypatch):
    components = shapes_training.build_shapes_components(seed=0)
    unet = components["unet"]
    latents, specs = _pool()
    seen = []
    original_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append([(len(g["params"]), g["lr"]) for g in self.param_groups])
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    log = {}
    shapes_training.train_unet(components, latents, specs, tmp_path, steps=2, minutes=None, seed=0, log=log,
                               batch_size=2, temporal_lr_scale=4.0)
    temporal = [n for n, _ in unet.named_parameters() if "temp_" in n or n.startswith("transformer_in.")]
    assert temporal and any("temp_convs" in n for n in temporal) and any("temp_attentions" in n for n in temporal)
    total = sum(1 for _ in unet.parameters()) + sum(1 for _ in components["text_encoder"].parameters())
    (rest, rest_lr), (temporal_count, temporal_lr) = seen[-1]
    assert temporal_count == len(temporal) and rest + temporal_count == total
    assert temporal_lr == 4.0 * rest_lr > 0

    state = torch.load(tmp_path / "unet.pt", weights_only=False)
    assert state["step"] == 2 and log["unet_steps"] == 2
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    shapes_training.train_unet(components, latents, specs, tmp_path, steps=3, minutes=None, seed=0, log=log,
                               batch_size=2, temporal_lr_scale=4.0)
    assert torch.load(tmp_path / "unet.pt", weights_only=False)["step"] == 3 and len(seen) == 3
    assert any(not torch.equal(before[n], p) for n, p in unet.named_parameters())
    json.dumps(log)  # the log stays writable as JSON
