"""A new scene (``--new-scene``): the clip's background repainted, before the inversion, in the colour the
model draws for the prompt (:mod:`sma_guidance.scene`); the renderer's growing and shrinking objects and the
new-scene benchmark pairs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conftest import quiet_pipeline
from pipelines.bench.quality import new_scene_pairs
from sma_guidance import scene, shapes
from sma_guidance.errors import UserAdvice, UserError


def _tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(F, H, W, 3)`` -> the pipeline's ``(F, 3, H, W)`` in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_the_subject_is_what_stands_off_the_plain_background_and_only_the_rest_is_repainted():
    path = np.stack([np.linspace(16, 48, 4), np.full(4, 30.0)], 1)
    frames = shapes.render_path(path, "square", "red", 12.0, "dark blue")
    alpha = scene.subject_alpha(_tensor(frames))
    assert alpha.shape == (4, 64, 64)
    inside = (frames == shapes.COLORS["red"]).all(-1)  # the square's fully covered pixels
    outside = (frames == shapes.BACKGROUNDS["dark blue"]).all(-1)
    assert inside.sum() > 4 * 100 and (alpha[torch.from_numpy(inside)] == 1).all()
    assert (alpha[torch.from_numpy(outside)] == 0).all()
    rim = ~inside & ~outside  # anti-aliased outline: a share by its distance from the background
    distance = np.abs(frames.astype(np.float64) - shapes.BACKGROUNDS["dark blue"]).max(-1)
    expected = np.clip((distance - 15) / 30, 0, 1)
    assert np.allclose(alpha.numpy()[rim], expected[rim], atol=1e-4)
    assert scene.plain_share(alpha) == pytest.approx(outside.mean() + (rim & (distance <= 15)).mean(), abs=1e-9)
    assert torch.allclose(scene.border_color(_tensor(frames)), _tensor(frames)[:, :, 0, 0], atol=1e-6)

    gray = torch.tensor(shapes.BACKGROUNDS["gray"], dtype=torch.float32) / 127.5 - 1
    painted = scene.repaint_background(_tensor(frames), alpha, gray)
    back = ((painted + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    assert (back[outside] == shapes.BACKGROUNDS["gray"]).all()
    assert (back[inside] == shapes.COLORS["red"]).all()
    noisy = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert scene.plain_share(scene.subject_alpha(noisy)) < 0.2  # a textured clip is not plain


def test_an_object_that_stands_still_through_the_clip_is_scenery_unless_nothing_moves():
    t = np.linspace(0.0, 1.0, 6)
    moving = (np.stack([14 + 30 * t, np.full(6, 20.0)], 1), "circle", "yellow", 12.0)
    still = (np.tile([[48.0, 48.0]], (6, 1)), "triangle", "red", 12.0)
    frames = _tensor(shapes.render_paths([moving, still], "black"))
    alpha = scene.subject_alpha(frames)
    alone = scene.subject_alpha(_tensor(shapes.render_paths([moving], "black")))
    assert torch.equal(alpha, alone)  # the still triangle is repainted with the background
    assert scene.still_pixels(frames)[44:52, 44:52].any() and not scene.still_pixels(frames)[:, :40].any()
    only_still = _tensor(shapes.render_paths([still], "black"))
    assert (scene.subject_alpha(only_still)[:, 48, 48] == 1).all()  # nothing moves: what is there is kept


def test_components_are_the_8_connected_regions():
    from sma_guidance.metrics import _component_labels

    mask = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(1)) > 0.55
    labels = scene.components(mask)
    assert torch.equal(labels > 0, mask)
    for frame in range(3):
        expected, _ = _component_labels(mask[frame].numpy())  # flood fill, labelled in another order
        pairs = set(zip(labels[frame][mask[frame]].tolist(), expected[mask[frame].numpy()].tolist()))
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})  # the same partition
    assert not set(labels[0].unique().tolist()) & set(labels[1].unique().tolist()) - {0}  # unique across frames


def test_a_new_scene_is_painted_in_the_border_colour_of_the_models_own_sample():
    pipe = quiet_pipeline("tiny-random")
    config = pipe.default_config().replace(num_frames=4, height=32, width=32, seed=5, new_scene=True)
    frames = _tensor(shapes.render_path(np.stack([np.linspace(20, 40, 4), np.full(4, 32.0)], 1), "circle",
                                        "yellow", 14.0, "black"))
    frames = torch.nn.functional.interpolate(frames, size=(config.height, config.width), mode="nearest")
    drawn = pipe.generate("a cat on grass", num_frames=4, height=config.height, width=config.width, seed=5,
                          restarts=0).frames[0]  # (F, H, W, 3) in [0, 1]
    ring = np.concatenate([drawn[:, :2].reshape(4, -1, 3), drawn[:, -2:].reshape(4, -1, 3),
                           drawn[:, 2:-2, :2].reshape(4, -1, 3), drawn[:, 2:-2, -2:].reshape(4, -1, 3)], 1)
    color = np.median(np.median(ring, axis=1), axis=0) * 2 - 1  # torch's median: the lower middle value
    painted = pipe.repaint_scene(frames, "a cat on grass", config)
    background = (frames == -1).all(1)  # black
    assert np.allclose(painted.permute(0, 2, 3, 1)[background].numpy(), color, atol=0.02)
    subject = ((frames + 1) * 127.5 - torch.tensor(shapes.COLORS["yellow"])[:, None, None]).abs().amax(1) < 1
    assert torch.equal(painted.permute(0, 2, 3, 1)[subject], frames.permute(0, 2, 3, 1)[subject])

    mask = torch.zeros(4, config.height, config.width)
    mask[:, :8] = 1  # a given subject: only the rest is repainted
    given = pipe.repaint_scene(frames, "a cat on grass", config, subject=mask)
    assert torch.equal(given[:, :, :8], frames[:, :, :8])
    assert np.allclose(given[:, :, 8:].permute(0, 2, 3, 1).numpy(), color, atol=0.02)

    noisy = torch.rand(4, 3, config.height, config.width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.repaint_scene(noisy, "a cat on grass", config)
    assert any(issubclass(w.category, UserAdvice) and "--mask" in str(w.message) for w in caught)


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


def test_the_colour_benchmark_measures_the_colour_the_repaint_takes():
    from pipelines.bench.scene_colors import drawn_color

    pipe = quiet_pipeline("tiny-random")
    config = pipe.default_config().replace(num_frames=4, height=32, width=32, seed=9)
    frames = -torch.ones(4, 3, config.height, config.width)  # all background
    painted = pipe.repaint_scene(frames, "a dog in snow", config)
    measured = drawn_color(pipe, "a dog in snow", seed=9, restarts=0, num_frames=4, height=32, width=32)
    assert np.allclose((painted[0, :, 0, 0].numpy() + 1) * 127.5, measured, atol=1e-3)
