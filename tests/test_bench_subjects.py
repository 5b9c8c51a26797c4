"""The scoring of `sma-guide bench masks` and `sma-guide bench windows` on outputs whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.bench import long_clips, subjects
from sma_guidance.shapes import ClipSpec, render


@pytest.mark.parametrize("index", [0, 1])
def test_an_output_showing_one_object_follows_it_and_not_the_other(index):
    case = subjects.cases()[0]  # right / left: opposite motions
    alone = ClipSpec((case.spec.objects[index],), "black", case.spec.num_frames, case.spec.size)
    scores = subjects.score(case, render(alone) / 255.0)
    this, other = ("first", "second") if index == 0 else ("second", "first")
    assert scores["objects"] == 1
    assert scores[f"fidelity_{this}"] > 0.99 and scores[f"path_error_{this}"] < 0.01
    assert scores[f"fidelity_{other}"] < -0.9 and scores[f"path_error_{other}"] > 0.2


def test_cases_are_two_objects_apart_moving_differently():
    for case in subjects.cases():
        first, second = (subjects.object_mask(case, i) for i in (0, 1))
        assert not (first & second).any()  # never overlapping: each mask holds one object
        moves = [np.diff(subjects.track(case, i)[0], axis=0).mean(0) for i in (0, 1)]
        assert np.dot(*moves) <= 0  # opposite or crossing directions


def test_by_subject_pairs_each_masked_run_with_the_unmasked_one():
    def record(condition, first, second):
        return {"case": "c", "condition": condition, "fidelity_first": first, "fidelity_second": second,
                "path_error_first": 1 - first, "path_error_second": 1 - second}

    rows = subjects.by_subject([record("mask on the first", 0.9, -0.9), record("mask on the second", -0.8, 0.8),
                                record("no mask", 1.0, -1.0)])
    assert rows["masked"]["fidelity_subject"] == [0.9, 0.8] and rows["masked"]["fidelity_other"] == [-0.9, -0.8]
    assert rows["unmasked"]["fidelity_subject"] == [1.0, -1.0] and rows["unmasked"]["fidelity_other"] == [-1.0, 1.0]


def test_jump_ratio_finds_a_seam():
    steady = np.stack([np.arange(10.0), np.zeros(10)], 1)
    assert long_clips.jump_ratio(steady) == pytest.approx(1.0)
    seam = steady.copy()
    seam[5:, 0] += 3  # a 4-px step among 1-px ones
    assert long_clips.jump_ratio(seam) == pytest.approx(4.0)
    assert math.isnan(long_clips.jump_ratio(np.full((4, 2), np.nan)))


def test_the_input_itself_scores_as_a_perfect_long_transfer():
    for clip in long_clips.clips():
        scores = long_clips.score(clip, clip.frames / 255.0)
        assert scores["fidelity"] > 0.99 and scores["path_error"] < 0.01 and scores["jump_ratio"] < 1.2
        assert len(clip.frames) in (24, 40)
