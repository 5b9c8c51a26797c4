"""A new scene (``--new-scene``): the subject found in the input (the box around what moves), the inversion
kept only there, the rest of the frame drawn afresh; the renderer's growing and shrinking objects and the
new-scene benchmark pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import moving_square_frames, quiet_pipeline
from pipelines.bench.quality import new_scene_pairs
from sma_guidance import masks, shapes
from sma_guidance.errors import UserError


def test_the_subject_box_is_the_box_around_what_moves():
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    for n in range(4):
        frames[n, 10:16, 4 + 6 * n:10 + 6 * n] = 255  # a 6 px square stepping 6 px right
    boxes = masks.moving_subject_boxes(frames)
    for n in range(4):
        expected = np.zeros((32, 32), np.float32)
        expected[10:16, 4 + 6 * n:10 + 6 * n] = 1  # the median is the black background: the square itself
        assert np.array_equal(boxes[n], expected)


def test_a_frame_where_nothing_moves_takes_the_union_and_nothing_moving_is_an_error():
    frames = np.zeros((5, 16, 16, 3), np.uint8)
    frames[1, 2:5, 2:5] = 200
    frames[3, 8:12, 9:13] = 200
    boxes = masks.moving_subject_boxes(frames)
    union = np.maximum(boxes[1], boxes[3])
    assert np.array_equal(boxes[0], union) and np.array_equal(boxes[2], union) and boxes[1].sum() == 9
    with pytest.raises(UserError, match="nothing moving"):
        masks.moving_subject_boxes(np.zeros((3, 8, 8, 3), np.uint8))
    noise = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(UserError, match="moving camera"):
        masks.moving_subject_boxes(noise)


def test_a_new_scene_keeps_the_inversion_only_on_the_subject():
    pipe = quiet_pipeline("tiny-random")
    config = pipe.default_config().replace(num_frames=4, new_scene=True, mask_margin=0)  # DMT's factor-4 start
    video = moving_square_frames(4)
    frames, _ = pipe.prepare_video(video, config)
    subject = pipe.prepare_mask(video, None, config, (64, 64), frames)
    shown = ((frames.permute(0, 2, 3, 1) + 1) * 127.5).round().numpy()
    assert torch.equal(subject.cpu(), torch.from_numpy(masks.moving_subject_boxes(shown)))
    inverted = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    start = pipe.prepare_latents(inverted, config, torch.Generator().manual_seed(3), mask=subject)
    noise = torch.randn(inverted.shape, generator=torch.Generator().manual_seed(3))
    cells = masks.resize_mask(subject.float(), (8, 8))
    outside, inside = cells == 0, cells == 1
    assert inside.any() and outside.any()
    for frame in range(4):  # fresh noise outside even though the preset's start keeps low frequencies
        assert torch.equal(start[0, :, frame][:, outside[frame]], noise[0, :, frame][:, outside[frame]])
        assert torch.equal(start[0, :, frame][:, inside[frame]], inverted[0, :, frame][:, inside[frame]])
    kept = pipe.prepare_latents(inverted, config.replace(new_scene=False), torch.Generator().manual_seed(3), mask=subject)
    assert not torch.equal(kept[0, :, 0][:, outside[0]], noise[0, :, 0][:, outside[0]])  # keep: DMT's start there
    assert pipe.prepare_mask(video, None, config.replace(new_scene=False), (64, 64), frames) is None


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
