"""The published motion-fidelity formulas (DMT's released score, DiTFlow's variant, ours), each checked
against an independent computation on the same tracks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sma_guidance.errors import UserError
from sma_guidance.metrics import FORMULAS, evaluate, fidelity, motion_fidelity, normalise_tracks, shape_tracks
from sma_guidance.shapes import ClipSpec, ObjectSpec, render


def released_dmt_score(output_tracks: np.ndarray, input_tracks: np.ndarray) -> float:
    """DMT's motion_fidelity_score.py written out with numpy: unit displacements, mean cosine over frames,
    minus the identity, max over input tracks, mean over output tracks."""
    def unit(tracks):
        d = tracks[:, 1:] - tracks[:, :-1]
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    similarity = np.einsum("ntc,mtc->nmt", unit(output_tracks), unit(input_tracks)).mean(-1)
    if similarity.shape[0] == similarity.shape[1]:
        similarity = similarity - np.eye(similarity.shape[0])
    return float(similarity.max(axis=1).mean())


def random_walks(count: int, frames: int, seed: int) -> np.ndarray:
    steps = np.random.default_rng(seed).normal(size=(count, frames - 1, 2)) + 0.5
    return np.concatenate([np.zeros((count, 1, 2)), np.cumsum(steps, axis=1)], axis=1)


@pytest.mark.parametrize("outputs, inputs", [(6, 6), (4, 7)])
def test_dmt_matches_the_released_formula(outputs, inputs):
    out, inp = random_walks(outputs, 9, 0), random_walks(inputs, 9, 1)
    assert fidelity(inp, out, "dmt") == pytest.approx(released_dmt_score(out, inp), abs=1e-12)


def test_symmetric_is_motion_fidelity_and_averages_both_directions():
    out, inp = random_walks(5, 8, 2), random_walks(3, 8, 3)
    cos = np.einsum("ntc,mtc->nmt", *(d / np.linalg.norm(d, axis=-1, keepdims=True)
                                      for d in (np.diff(out, axis=1), np.diff(inp, axis=1)))).mean(-1)
    expected = 0.5 * (cos.max(axis=1).mean() + cos.max(axis=0).mean())
    assert fidelity(inp, out, "symmetric") == pytest.approx(expected, abs=1e-12)
    assert fidelity(inp, out, "symmetric") == pytest.approx(motion_fidelity(inp, out), abs=1e-12)


def test_the_identity_keeps_a_track_from_matching_its_own_grid_point():
    # three points moving in three different directions, scored against themselves
    tracks = np.stack([np.outer(np.arange(6.0), direction) for direction in ((1, 0), (0, 1), (-1, 0))])
    assert fidelity(tracks, tracks, "symmetric") == pytest.approx(1.0)
    # each may only match another point: right vs down 0, down vs right 0, left vs right/down: 0 and -1
    assert fidelity(tracks, tracks, "dmt") == pytest.approx(0.0)
    assert fidelity(tracks, tracks, "dmt", same_grid=False) == pytest.approx(1.0)  # tracks not paired by a grid


def test_static_points_are_counted_not_nan():
    moving = random_walks(2, 6, 4)
    still = np.repeat(moving[:, :1], 6, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        assert math.isnan(released_dmt_score(still, moving))  # the released code: 0 / 0
    assert fidelity(moving, still, "dmt") == 0.0  # one still, one moving: no evidence either way
    assert fidelity(still, still, "symmetric") == 1.0  # both still: they agree
    with pytest.raises(UserError, match="formula"):
        fidelity(moving, moving, "cotracker")


def test_ditflow_cuts_the_clips_to_the_shorter_one():
    obj = ObjectSpec("circle", "red", 12, "right", 10, 32, vx=3)
    short = render(ClipSpec((obj,), "black", num_frames=8))
    long = render(ClipSpec((obj,), "black", num_frames=14))  # the same motion, 6 frames more
    result = evaluate(short, long)
    assert set(FORMULAS) <= {key.removeprefix("motion_fidelity_") for key in result}
    cut = [normalise_tracks(shape_tracks(clip[:8]), 64, 64) for clip in (short, long)]
    expected = fidelity(cut[0], cut[1], "dmt", same_grid=False)  # one object each: no grid pairing
    assert expected == pytest.approx(released_dmt_score(cut[1], cut[0]) + 1)  # the released code's −I, undone
    assert result["motion_fidelity_ditflow"] == pytest.approx(expected)
    assert result["motion_fidelity"] == result["motion_fidelity_symmetric"] and result["formula"] == "symmetric"


def test_paired_scores_each_track_against_the_same_query_point():
    inp = random_walks(5, 8, 5)
    out = inp.copy()
    out[2] = inp[2, ::-1] - inp[2, ::-1][0]  # one point played backwards
    # independent: per pair, mean cosine of the displacements (no still frames here), mean over pairs
    d_in, d_out = np.diff(inp, axis=1), np.diff(out, axis=1)
    cos = (d_in * d_out).sum(-1) / (np.linalg.norm(d_in, axis=-1) * np.linalg.norm(d_out, axis=-1))
    assert fidelity(inp, out, "paired") == pytest.approx(cos.mean(-1).mean(), abs=1e-12)
    lines = np.stack([np.outer(np.arange(8.0), d) for d in ((1, 0), (0, 1), (1, 1))])  # constant velocities
    assert fidelity(lines, lines[:, ::-1], "paired") == pytest.approx(-1.0)  # played backwards
    # the maximum over other tracks finds a 0 for two reversed points (perpendicular ones), -0.707 for the third
    assert fidelity(lines, lines[:, ::-1], "symmetric") == pytest.approx(-math.sqrt(2) / 6)
    assert fidelity(inp, inp, "paired") == pytest.approx(1.0)
    assert math.isnan(fidelity(inp, out, "paired", same_grid=False))  # object tracks are not paired
    assert math.isnan(fidelity(inp, out[:4], "paired"))


def test_paired_leaves_out_frames_where_both_points_are_still():
    moving = np.stack([np.outer(np.arange(6.0), (1, 0)), np.zeros((6, 2))])  # one point moving, one static
    still = np.repeat(moving[:, :1], 6, axis=1)
    assert fidelity(moving, moving, "paired") == pytest.approx(1.0)  # the static point does not count
    assert fidelity(moving, still, "paired") == 0.0  # a frozen copy: the moving point stopped
    assert fidelity(moving, still, "symmetric") > 0.4  # ours for objects: the static point agrees with it
    assert math.isnan(fidelity(still, still, "paired"))  # no motion on either side: nothing to score


def naive_correlation(a: np.ndarray, b: np.ndarray, still: float, both_still: float) -> np.ndarray:
    """track_correlation's definition, one pair and one frame at a time."""
    result = np.full((len(a), len(b)), np.nan)
    for i in range(len(a)):
        for j in range(len(b)):
            values = []
            for t in range(a.shape[1] - 1):
                da, db = a[i, t + 1] - a[i, t], b[j, t + 1] - b[j, t]
                if np.isnan(da).any() or np.isnan(db).any():
                    continue
                moving_a, moving_b = np.linalg.norm(da) >= still, np.linalg.norm(db) >= still
                if moving_a and moving_b:
                    values.append(da @ db / (np.linalg.norm(da) * np.linalg.norm(db)))
                elif moving_a or moving_b:
                    values.append(0.0)
                elif not math.isnan(both_still):
                    values.append(both_still)
            if values:
                result[i, j] = np.mean(values)
    return result


@pytest.mark.parametrize("both_still", [1.0, math.nan])
def test_the_matrix_products_match_the_frame_by_frame_definition(both_still):
    from sma_guidance.metrics import paired_correlation, track_correlation

    a, b = random_walks(5, 9, 4), random_walks(5, 9, 5)
    a[1, 3:6] = a[1, 3]  # still stretches, on one side and on both
    b[1, 4:7] = b[1, 4]
    b[2] = b[2, :1]  # a point that never moves
    a[3, 5:] = np.nan  # lost from frame 5
    b[4, :] = np.nan  # never tracked
    expected = naive_correlation(a, b, 0.25, both_still)
    got = track_correlation(a, b, 0.25, both_still)
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    assert np.allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], atol=1e-12)
    diagonal = paired_correlation(a, b, 0.25, both_still)
    assert np.allclose(diagonal, np.diag(expected), atol=1e-12, equal_nan=True)
