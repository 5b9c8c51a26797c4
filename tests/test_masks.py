"""Subject masks: the mask-weighted objective, reading and fitting masks, the initial latent, and the
CLI / Python surface (``--mask``, ``--mask-box``, ``mask=``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from conftest import FAST_ARGS, moving_square_frames, quiet_pipeline, write_moving_square
from sma_guidance import masks
from sma_guidance.config import SMAConfig
from sma_guidance.dmt import dmt_loss, sma_objective_terms
from sma_guidance.errors import UserError
from sma_guidance.video_io import export_to_video, resize_and_crop, save_image


def features(seed: int, shape=(2, 6, 5, 8, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------------------- the objective


def test_masked_dmt_is_dmt_of_the_features_inside_a_box_mask():
    # Independent: a box mask's weighted mean is the plain mean of the cropped features.
    ref, pred = features(0), features(1)
    mask = torch.zeros(6, 8, 8, dtype=torch.float64)
    mask[:, 2:5, 1:7] = 1
    cropped = dmt_loss(ref[..., 2:5, 1:7], pred[..., 2:5, 1:7])
    assert torch.allclose(dmt_loss(ref, pred, mask), cropped, atol=1e-12)
    assert not torch.allclose(dmt_loss(ref, pred), cropped)


def test_an_all_ones_mask_changes_nothing():
    ref, pred = features(2), features(3)
    ones = torch.ones(6, 8, 8, dtype=torch.float64)
    plain = sma_objective_terms(ref, pred)
    masked = sma_objective_terms(ref, pred, mask=ones)
    for key in plain:
        assert torch.allclose(plain[key], masked[key], atol=1e-12), key


def test_what_happens_outside_the_subject_does_not_count():
    # A subject moving right; the features anywhere it never is are replaced by noise: the masked objective
    # (every term) is unchanged, the unmasked one is not.
    mask = torch.zeros(6, 8, 8, dtype=torch.float64)
    for t in range(6):
        mask[t, 2:4, t : t + 2] = 1
    ref, pred = features(4), features(5)
    elsewhere = pred.clone()
    never = (mask.amax(0) == 0).expand_as(pred)
    elsewhere[never] = features(6)[never]
    before = sma_objective_terms(ref, pred, mask=mask)
    after = sma_objective_terms(ref, elsewhere, mask=mask)
    for key in before:
        assert torch.allclose(before[key], after[key], atol=1e-12), key
    assert not torch.allclose(sma_objective_terms(ref, pred)["total"], sma_objective_terms(ref, elsewhere)["total"])


def test_residual_weights_cover_the_subject_in_either_frame():
    mask = torch.zeros(3, 1, 4)
    mask[0, 0, 0], mask[1, 0, 2], mask[2, 0, 3] = 1, 1, 1
    assert masks.residual_weights(mask).tolist() == [[[1, 0, 1, 0]], [[0, 0, 1, 1]]]


# ----------------------------------------------------------------------------------------- reading and fitting


def test_mask_array_accepts_the_usual_encodings():
    base = np.zeros((2, 4, 4), np.uint8)
    base[:, 1:3, 1:3] = 255
    expected = (base > 0).astype(np.float32)
    for variant in (base, base > 0, base / 255.0, torch.from_numpy(base), np.repeat(base[..., None], 3, -1)):
        assert np.array_equal(masks.mask_array(variant), expected)
    assert masks.mask_array(base[0]).shape == (1, 4, 4)
    with pytest.raises(UserError, match="must be"):
        masks.mask_array(np.zeros(5))


def test_mask_frames_follow_the_frames_the_run_picks():
    sequence = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((10, 2, 2), np.float32)
    picked = np.array([0, 3, 6, 9])
    assert masks.select_mask_frames(sequence[:1], 4).shape == (4, 2, 2)
    assert np.array_equal(masks.select_mask_frames(sequence[:4], 4), sequence[:4])  # one per run frame
    assert masks.select_mask_frames(sequence, 4, picked, 10)[:, 0, 0].tolist() == [0, 3, 6, 9]
    # a mask sequence of another length is matched by position in the clip: 5 masks for 10 frames
    assert masks.select_mask_frames(sequence[:5], 4, picked, 10)[:, 0, 0].tolist() == [0, 1, 3, 4]


def test_fit_mask_crops_as_the_input_is_cropped():
    rng = np.random.default_rng(0)
    image = (rng.random((3, 30, 50, 3)) > 0.5).astype(np.uint8) * 255
    expected = (resize_and_crop(image, 16, 16)[:, 0] + 1) / 2  # the input's own cover-and-crop
    fitted = masks.fit_mask(image[..., 0] / 255.0, (30, 50), 16, 16)
    assert torch.allclose(fitted, expected, atol=1e-5)
    # a mask at another size is stretched to the input's first: the same picture at half size
    half = masks.fit_mask(image[:, ::2, ::2, 0] / 255.0, (30, 50), 16, 16)
    assert half.shape == (3, 16, 16) and (half - expected).abs().mean() < 0.2


def test_box_mask_in_input_pixels():
    box = masks.box_mask((1, 2, 3.5, 4), height=5, width=6)[0]
    assert box[2:4, 1:3].min() == 1 and box[2:4, 3].tolist() == [0.5, 0.5]
    assert box.sum() == pytest.approx(2.5 * 2)
    with pytest.raises(UserError, match="empty"):
        masks.box_mask((3, 2, 1, 4), 5, 6)
    with pytest.raises(UserError, match="outside"):
        masks.box_mask((10, 10, 20, 20), 5, 6)


@pytest.mark.parametrize("value, message", [(0.0, "is empty"), (1.0, "whole frame")])
def test_empty_or_full_masks_are_refused(value, message):
    with pytest.raises(UserError, match=message):
        masks.check_mask(torch.full((2, 4, 4), value))


def test_initial_latent_keeps_the_inversion_around_the_subject_only():
    pipe = quiet_pipeline("tiny-random")
    config = pipe.default_config().replace(low_pass_grid=64, mask_margin=1)  # the whole inversion: outside is noise
    inverted = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(3, 64, 64)
    mask[:, 24:40, 24:40] = 1  # latent cells 3..4, grown by one: 2..5
    start = pipe.prepare_latents(inverted, config, torch.Generator().manual_seed(7), mask=mask)
    noise = torch.randn(inverted.shape, generator=torch.Generator().manual_seed(7))
    assert torch.equal(start[..., 2:6, 2:6], inverted[..., 2:6, 2:6])
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[2:6, 2:6] = False
    assert torch.equal(start[..., outside], noise[..., outside])
    assert torch.equal(pipe.prepare_latents(inverted, config, torch.Generator().manual_seed(7)), inverted)


# ----------------------------------------------------------------------------------------- surfaces


def square_mask(num_frames: int = 10, size: int = 64) -> np.ndarray:
    return moving_square_frames(num_frames, size)[..., 0] > 0


def test_python_mask_restricts_the_objective(tmp_path):
    pipe = quiet_pipeline("tiny-random")
    video = moving_square_frames(10)
    settings = dict(num_frames=4, num_inference_steps=4, inversion_steps=4, optimization_steps=1,
                    restart_sampling=False, inversion_cache=False)
    plain = pipe(video, "a cat", **settings)
    masked = pipe(video, "a cat", mask=square_mask(), **settings)
    boxed = pipe(video, "a cat", mask_box=(0, 24, 64, 40), **settings)
    assert masked.frames.shape == plain.frames.shape
    first = [out.loss_history[0]["iterations"][0]["dmt"] for out in (plain, masked, boxed)]
    assert len(set(first)) == 3  # three different objectives
    assert boxed.config["mask_box"] == [0, 24, 64, 40]


def test_cli_mask_file_video_and_box(tmp_path):
    clip = write_moving_square(tmp_path / "in.mp4")
    mask_video = export_to_video(np.repeat(square_mask()[..., None], 3, -1).astype(np.uint8) * 255, tmp_path / "mask.mp4")
    still = tmp_path / "mask.png"
    save_image(np.repeat((square_mask()[0, ::2, ::2, None] * 255).astype(np.uint8), 3, -1), still)  # half size
    for extra in (["--mask", mask_video], ["--mask", still], ["--mask-box", "0,20,40,44"]):
        out = tmp_path / f"out{len(list(tmp_path.glob('out*.mp4')))}.mp4"
        result = CliRunner().invoke(main, [str(clip), "--prompt", "a cat", "-o", str(out), *FAST_ARGS, *map(str, extra)])
        assert result.exit_code == 0, result.output
        record = json.loads(out.with_suffix(".json").read_text())
        key = "mask" if extra[0] == "--mask" else "mask_box"
        assert record["config"][key] is not None


@pytest.mark.parametrize("kind, expected", [
    ("empty", "is empty"), ("white", "whole frame"), ("missing", "not found"), ("both", "not both"), ("box", "four numbers"),
])
def test_cli_bad_masks_are_one_line(tmp_path, kind, expected):
    clip = write_moving_square(tmp_path / "in.mp4")
    empty, white = tmp_path / "empty.png", tmp_path / "white.png"
    save_image(np.zeros((64, 64, 3), np.uint8), empty)
    save_image(np.full((64, 64, 3), 255, np.uint8), white)
    extra = {"empty": ["--mask", empty], "white": ["--mask", white], "missing": ["--mask", tmp_path / "nope.png"],
             "both": ["--mask", white, "--mask-box", "1,1,9,9"], "box": ["--mask-box", "1,2,3"]}[kind]
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(main, [str(clip), "--prompt", "a cat", "-o", str(out), *FAST_ARGS, *map(str, extra)])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.output
    assert not out.exists()


def test_config_validates_mask_settings():
    with pytest.raises(UserError, match="not both"):
        SMAConfig(mask="m.png", mask_box=(0, 0, 1, 1)).validate()
    with pytest.raises(UserError, match="mask_margin"):
        SMAConfig(mask_margin=-1).validate()
    assert SMAConfig.from_dict(SMAConfig(mask_box=(1, 2, 3, 4)).to_dict()).mask_box == (1, 2, 3, 4)
