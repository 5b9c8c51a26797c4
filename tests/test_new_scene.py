"""A new scene (``--new-scene``): a start that keeps no inversion (only inside a given mask) and the preset's
recipe for it; the renderer's growing and shrinking objects and the new-scene benchmark pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import quiet_pipeline
from pipelines.bench.quality import new_scene_pairs
from sma_guidance import shapes
from sma_guidance.config import SMAConfig
from sma_guidance.errors import UserError


def test_a_new_scene_starts_from_fresh_noise_or_keeps_the_inversion_only_in_a_mask():
    pipe = quiet_pipeline("tiny-random")
    config = pipe.default_config().replace(num_frames=4, new_scene=True, mask_margin=0)  # DMT's factor-4 start
    inverted = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(inverted.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(pipe.prepare_latents(inverted, config, torch.Generator().manual_seed(3)), noise)
    keep = pipe.prepare_latents(inverted, config.replace(new_scene=False), torch.Generator().manual_seed(3))
    assert not torch.equal(keep, noise)  # keep: DMT's start, the inversion's low frequencies
    mask = torch.zeros(4, 64, 64)
    mask[:, 24:40, 24:40] = 1  # latent cells 3..4
    start = pipe.prepare_latents(inverted, config, torch.Generator().manual_seed(3), mask=mask)
    assert torch.equal(start[..., 3:5, 3:5], inverted[..., 3:5, 3:5])
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[3:5, 3:5] = False
    assert torch.equal(start[..., outside], noise[..., outside])  # fresh noise, not DMT's start


def test_a_new_scene_takes_the_presets_recipe():
    plain = SMAConfig.for_model("shapes").validate()
    scene = plain.replace(new_scene=True).validate().for_scene()
    assert (scene.mode, scene.eta, scene.learning_rate_start, scene.learning_rate_end) == ("both", 1.0, 0.06, 0.04)
    assert plain.for_scene() == plain  # keep scene: unchanged
    bare = SMAConfig(new_scene=True)
    assert bare.for_scene() == bare  # no recipe in the preset: the settings as they are
    with pytest.raises(UserError, match="new_scene_mode"):
        SMAConfig(new_scene_mode="sideways").validate()


def test_a_new_scene_run_writes_the_mode_in_its_record(tmp_path):
    from click.testing import CliRunner

    from cli import main
    from conftest import FAST_ARGS, write_moving_square

    clip = write_moving_square(tmp_path / "square.mp4")
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(main, ["run", str(clip), "--prompt", "a cat", "-o", str(out), "--new-scene", *FAST_ARGS])
    assert result.exit_code == 0, result.output
    import json

    assert json.loads(out.with_suffix(".json").read_text())["config"]["new_scene"] is True


def test_objects_grow_and_shrink_along_a_path():
    path = np.stack([np.linspace(16, 48, 5), np.full(5, 32.0)], 1)
    frames = shapes.render_path(path, "square", "red", np.linspace(8, 16, 5), "black")
    areas = frames[..., 0].astype(np.float64).sum((1, 2)) / 255  # anti-aliased coverage, red on black
    assert np.allclose(areas, np.linspace(8, 16, 5) ** 2 + 1, atol=0.2)  # size² px, + 1 from the 4 corners' ramp
    both = shapes.render_paths([(path, "square", "red", 8.0), (path[::-1], "circle", "blue", 6.0)], "black")
    assert both.shape == (5, 64, 64, 3) and (both[0, 32, 48] == shapes.COLORS["blue"]).all()
    with pytest.raises(UserError, match="one size per frame"):
        shapes.render_path(path, "square", "red", [8.0, 9.0], "black")


def test_every_new_scene_target_names_another_background():
    pairs = new_scene_pairs()
    assert len(pairs) == len(shapes.MOTIONS) + 5
    for pair in pairs:
        source, target = shapes.parse_prompt(pair.source_prompt), shapes.parse_prompt(pair.target_prompt)
        assert target["background"] is not None and target["background"] != source["background"], pair
    assert [p.target_prompt for p in new_scene_pairs()] == [p.target_prompt for p in pairs]  # seeded
    circling = next(p for p in pairs if p.path == "circling, other still")
    assert circling.reference is not None and circling.reference.shape == circling.frames.shape
