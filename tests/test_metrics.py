"""Evaluation metrics on rendered shapes-world clips: tracking, DMT motion fidelity, smoothness,
object and motion recognition, and the all-in-one ``evaluate``."""

import math

import numpy as np
import pytest

from sma_guidance import shapes
from sma_guidance.errors import UserError
from sma_guidance.metrics import (
    classify_motion,
    classify_shape,
    detect_object,
    edit_fidelity,
    evaluate,
    frame_difference,
    motion_direction_match,
    motion_fidelity,
    real_video_tracker,
    normalise_tracks,
    path_error,
    point_tracks,
    radial_profile,
    shape_features,
    shape_tracks,
    temporal_consistency,
    tracks,
)
from sma_guidance.shapes import (
    BACKGROUNDS,
    COLORS,
    MOTIONS,
    SHAPES,
    ClipSpec,
    ObjectSpec,
    render,
    sample_clip_spec,
)

LINEAR = ("left", "right", "up", "down", "diagonal")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up",
            "circle_cw": "circle_ccw", "circle_ccw": "circle_cw"}


def _clip(seed, **kwargs):
    """A single-object clip: ``(spec, frames)``."""
    spec = sample_clip_spec(np.random.default_rng(seed), p_two=0, **kwargs)
    return spec, render(spec)


def _fidelity(a, b, method="shapes"):
    """Motion fidelity of two same-size clips, on pixel tracks."""
    return motion_fidelity(tracks(a, method)[0], tracks(b, method)[0])


# ---- motion fidelity -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["shapes", "points"])
@pytest.mark.parametrize("motion", MOTIONS)
def test_identical_clips_have_fidelity_one(method, motion):
    _, frames = _clip(1, motion=motion)
    assert _fidelity(frames, frames, method) == pytest.approx(1.0)


@pytest.mark.parametrize("motion", LINEAR)
def test_time_reversed_clip_is_strongly_negative(motion):
    # Linear motions: reversing time negates every displacement. (A reversed circle also turns the
    # other way, but its per-frame directions are compared at mirrored times, so it is not -1.)
    _, frames = _clip(2, motion=motion)
    for method in ("shapes", "points"):
        assert _fidelity(frames, frames[::-1], method) < -0.8


def test_opposite_and_same_directions_across_appearance():
    _, left = _clip(3, motion="left", shape="circle", color="red", background="black")
    _, right = _clip(4, motion="right", shape="square", color="blue", background="gray")
    _, left2 = _clip(5, motion="left", shape="triangle", color="yellow", background="dark blue")
    assert _fidelity(left, right) < 0
    assert _fidelity(left, left2) > 0.8
    assert _fidelity(left, left2, "points") > 0.8


def test_fidelity_edge_cases():
    t = np.cumsum(np.ones((1, 6, 2)), axis=1)
    assert math.isnan(motion_fidelity(t, np.zeros((0, 6, 2))))
    still = np.zeros((1, 6, 2))
    assert motion_fidelity(still, still) == 1.0  # both still: they agree
    assert motion_fidelity(t, still) == 0.0  # one moves, the other does not
    gappy = t.copy()
    gappy[0, 2] = np.nan
    assert motion_fidelity(t, gappy) == pytest.approx(1.0)  # NaN frames are skipped
    # the still threshold is in track units: normalised tracks need it scaled too
    assert motion_fidelity(t, -t) == pytest.approx(-1.0)
    scaled = motion_fidelity(normalise_tracks(t, 64, 64), normalise_tracks(-t, 64, 64), still=0.25 / 64)
    assert scaled == pytest.approx(-1.0)
    with pytest.raises(UserError):
        motion_fidelity(t, np.zeros((1, 5, 2)))


# ---- trackers ------------------------------------------------------------------------------------


def test_point_tracks_recover_a_shift():
    base = np.random.default_rng(0).integers(0, 256, (72, 72, 3), dtype=np.uint8)
    frames = np.stack([np.roll(base, (k, 2 * k), axis=(0, 1)) for k in range(6)])  # dx=2, dy=1 px/frame
    tr = point_tracks(frames)
    assert len(tr) > 50
    steps = np.diff(tr, axis=1)
    assert np.nanmedian(steps, axis=(0, 1)) == pytest.approx([2, 1])
    # wrong only near the border, where the rolled image wraps but the edge padding does not
    assert np.mean(np.all(steps == [2, 1], axis=-1)) > 0.8


def test_point_tracks_skip_flat_frames():
    flat = np.full((5, 40, 40, 3), 90, np.uint8)
    assert point_tracks(flat).shape == (0, 5, 2)
    assert math.isnan(motion_fidelity(point_tracks(flat), point_tracks(flat)))


def test_shape_tracks_follow_each_object():
    spec = ClipSpec((ObjectSpec("circle", "red", 12, "right", 15, 45, vx=3),
                     ObjectSpec("square", "cyan", 16, "down", 45, 12, vy=2)), "gray", num_frames=8)
    tr = shape_tracks(render(spec))
    assert tr.shape == (2, 8, 2)
    expected = {tuple(np.round(t[0])): t for t in tr}
    np.testing.assert_allclose(expected[(45.0, 12.0)][-1], [45, 26], atol=0.2)  # larger object first
    np.testing.assert_allclose(tr[1][-1], [15 + 21, 45], atol=0.2)


def test_auto_tracker_choice():
    _, frames = _clip(6)
    assert tracks(frames)[1] == "shapes"
    noise = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    assert tracks(noise)[1] == real_video_tracker() in ("klt", "points")  # klt with the eval extra installed
    with pytest.raises(UserError):
        tracks(frames, "cotracker")


# ---- smoothness ----------------------------------------------------------------------------------


def test_temporal_consistency_and_frame_difference():
    _, frames = _clip(7)
    static = np.repeat(frames[:1], 6, axis=0)
    assert temporal_consistency(static) == pytest.approx(1.0)
    assert frame_difference(static) == 0.0
    assert temporal_consistency(np.full((4, 8, 8, 3), 17, np.uint8)) == 1.0
    rng = np.random.default_rng(0)
    scores = []
    for sigma in (5, 20, 60):
        noisy = np.clip(static + rng.normal(0, sigma, static.shape), 0, 255).astype(np.uint8)
        scores.append(temporal_consistency(noisy))
    assert 1.0 > scores[0] > scores[1] > scores[2]
    assert frame_difference(frames) > 0


# ---- object and motion recognition ---------------------------------------------------------------


def test_detect_object_on_random_clips():
    hits, seen = 0, set()
    for seed in range(200):
        spec, frames = _clip(seed)
        obj = spec.objects[0]
        seen.add((obj.color, obj.shape, spec.background))
        found = detect_object(frames)
        hits += found is not None and (found["color"], found["shape"]) == (obj.color, obj.shape)
    assert {c for c, _, _ in seen} == set(COLORS) and {s for _, s, _ in seen} == set(SHAPES)
    assert {b for _, _, b in seen} == set(BACKGROUNDS)
    assert hits >= 0.95 * 200  # measured: 200/200


@pytest.mark.parametrize("frame_size", [64, 32])
def test_detect_shape_at_every_size(frame_size):
    # every object size 10-24 (at 64 px, scaled like sample_clip_spec), off-grid positions
    rng = np.random.default_rng(frame_size)
    for shape in SHAPES:
        for size in range(10, 25):
            px = float(round(size * frame_size / 64))
            centre = frame_size / 2 + rng.uniform(-2, 2, 2)
            color, bg = list(COLORS)[size % 7], list(BACKGROUNDS)[size % 3]
            spec = ClipSpec((ObjectSpec(shape, color, px, "right", *centre, vx=rng.uniform(0.3, 1.5)),), bg,
                            num_frames=4, size=frame_size)
            found = detect_object(render(spec))
            assert (found["color"], found["shape"]) == (color, shape), (size, shape)


def _turned(shape: str, size: float, centre, angle: float, frame_size: int = 64) -> np.ndarray:
    """Anti-aliased coverage ``(H, W)`` of the renderer's shape turned by ``angle`` (radians) about ``centre``."""
    grid = np.arange(frame_size, dtype=np.float64)
    dx, dy = grid[None, :] - centre[0], grid[:, None] - centre[1]
    cos, sin = math.cos(angle), math.sin(angle)
    return np.clip(0.5 - shapes._sdf(shape, size, cos * dx + sin * dy, cos * dy - sin * dx), 0.0, 1.0)


@pytest.mark.parametrize("frame_size", [64, 32])
def test_classify_shape_at_any_orientation(frame_size):
    # The model draws squares a few degrees off axis; a bounding-box fill ratio read them as circles or
    # triangles (a square turned by 15° fills 1 / (1 + sin 30°) = 2/3 of its box, a triangle's range).
    rng = np.random.default_rng(frame_size)
    for shape in SHAPES:
        for size in range(10, 25, 2):
            centre = frame_size / 2 + rng.uniform(-2, 2, 2)
            weights = _turned(shape, size * frame_size / 64, centre, rng.uniform(0, 2 * math.pi), frame_size)
            assert classify_shape(weights) == shape, (shape, size)
    square = _turned("square", 20, (32, 32), math.radians(15))
    assert square.sum() / (np.ptp(np.nonzero(square > 0.5)[0]) + 1) ** 2 < 0.75  # what fooled the fill ratio


def test_shape_features_are_turn_invariant_ripples():
    for angle in (0.0, 0.4, 1.3):
        triangle, square = shape_features(_turned("square", 20, (31.3, 30.6), angle))
        assert abs(square - 1) < 0.1 and triangle < 0.1
        triangle, square = shape_features(_turned("triangle", 20, (31.3, 30.6), angle))
        assert abs(triangle - 1) < 0.1 and square < 0.1
    assert max(shape_features(_turned("circle", 20, (31.3, 30.6), 0.0))) < 0.05
    assert all(math.isnan(v) for v in shape_features(np.zeros((64, 64))))


def test_radial_profile_reaches_the_edge():
    # A disc of radius 9 reaches 9 px every way; a square of half-side 8 reaches 8 px along its axes and
    # 8√2 along its diagonals (the integral of anti-aliased coverage lands on the edge to a fraction of a px).
    disc = radial_profile(_turned("circle", 18, (30.4, 33.2), 0.0), rays=8)
    assert np.allclose(disc, 9, atol=0.15)
    square = radial_profile(_turned("square", 16, (30.0, 33.0), 0.0), rays=8)
    assert np.allclose(square[0::2], 8, atol=0.15) and np.allclose(square[1::2], 8 * math.sqrt(2), atol=0.3)


def test_classify_shape_reads_the_largest_blob():
    # A second, smaller blob of the same colour (the model sometimes draws a twin) must not move the
    # centroid between the two and turn a square into something else.
    weights = np.maximum(_turned("square", 20, (20, 20), 0.2), _turned("circle", 9, (48, 46), 0.0))
    assert classify_shape(weights) == "square"
    assert classify_shape(np.maximum(_turned("triangle", 20, (44, 40), 0.0), _turned("square", 10, (12, 12), 0.0))) == "triangle"


@pytest.mark.parametrize("motion", MOTIONS)
def test_classify_motion_per_motion(motion):
    # measured at 30 seeds, 8 frames of 64 px and of 32 px: 100 % for every motion
    for frame_size in (64, 32):
        hits = matches = 0
        for seed in range(30):
            _, frames = _clip(seed, motion=motion, size=frame_size)
            cents = detect_object(frames)["centroids"]
            hits += classify_motion(cents) == motion
            matches += motion_direction_match(cents, motion)
            if motion in OPPOSITE:
                assert not motion_direction_match(cents, OPPOSITE[motion])
        assert hits >= 0.9 * 30, (frame_size, hits)
        assert matches >= 0.9 * 30, (frame_size, matches)


def test_screen_rotation_convention():
    # angular_speed > 0 is counterclockwise on screen (shapes.py)
    for omega, expected in ((0.6, "circle_ccw"), (-0.6, "circle_cw")):
        spec = ClipSpec((ObjectSpec("circle", "white", 10, "circle_ccw" if omega > 0 else "circle_cw", 0, 0,
                                    center_x=32, center_y=32, radius=14, angular_speed=omega),), "black")
        assert classify_motion(detect_object(render(spec))["centroids"]) == expected


def test_classify_motion_needs_a_moving_object():
    assert classify_motion(np.full((8, 2), 20.0)) is None
    assert classify_motion(np.full((8, 2), np.nan)) is None
    assert not motion_direction_match(np.full((8, 2), 20.0), "left")
    with pytest.raises(UserError):
        motion_direction_match(np.zeros((8, 2)), "sideways")


def test_edit_fidelity():
    _, frames = _clip(8, shape="triangle", color="green", motion="up")
    result = edit_fidelity(frames, "a green triangle moving up")
    assert result["color_match"] and result["shape_match"] and result["both"]
    result = edit_fidelity(frames, "a green square")
    assert result["color_match"] and not result["shape_match"] and not result["both"]
    with pytest.raises(UserError):
        edit_fidelity(frames, "a car driving in a forest")


# ---- path error ----------------------------------------------------------------------------------


def test_path_error_sees_the_distance_that_fidelity_does_not():
    t = np.linspace(0.0, 1.0, 8)
    path = np.stack([10 + 34 * t, np.full(8, 52.0)], 1)[None]
    half = np.stack([15 + 17 * t, np.full(8, 40.0)], 1)[None]  # same direction, half as far, elsewhere
    assert motion_fidelity(path, half) == pytest.approx(1.0)
    # Displacements from the first frame differ by 17 t px in x: the mean over the 8 frames is 17 · mean(t).
    assert path_error(path, half) == pytest.approx(17 * t.mean())
    assert path_error(path, path + [5.0, -3.0]) == pytest.approx(0.0)  # only the path counts, not where it starts


def test_path_error_matches_each_input_track_to_its_best_output_track():
    t = np.linspace(0.0, 1.0, 6)
    right = np.stack([10 + 20 * t, np.full(6, 10.0)], 1)
    down = np.stack([np.full(6, 40.0), 10 + 30 * t], 1)
    # Output: the right-moving track (2 px short at the end) and the down-moving one, in the other order.
    outputs = np.stack([down, np.stack([10 + 18 * t, np.full(6, 10.0)], 1)])
    expected = np.mean([(2 * t).mean(), 0.0])
    assert path_error(np.stack([right, down]), outputs) == pytest.approx(expected)
    gappy = outputs.copy()
    gappy[1, 2] = np.nan  # a lost frame is skipped, not counted as an error
    assert path_error(np.stack([right, down]), gappy) == pytest.approx(np.mean([(2 * np.delete(t, 2)).mean(), 0.0]))
    assert math.isnan(path_error(np.zeros((0, 6, 2)), outputs))


# ---- evaluate ------------------------------------------------------------------------------------

BASE_KEYS = {"tracker", "formula", "motion_fidelity", "motion_fidelity_dmt", "motion_fidelity_ditflow",
             "motion_fidelity_symmetric", "motion_fidelity_paired", "path_error", "input_tracks", "output_tracks", "temporal_consistency",
             "frame_difference", "grid", "foreground_box"}


def test_evaluate_all_keys_and_mismatched_sizes():
    _, source = _clip(9, motion="right", shape="square", color="red")
    _, output = _clip(10, motion="right", shape="circle", color="blue", num_frames=16, size=48, background="gray")
    result = evaluate(source, output, prompt="a blue circle moving right on a gray background")
    assert set(result) == BASE_KEYS | {"detected_color", "detected_shape", "color_match", "shape_match",
                                       "background", "background_match", "motion", "detected_motion", "motion_match"}
    assert result["background"] == "gray" and result["background_match"] is True
    assert evaluate(source, output, prompt="a blue circle on a black background")["background_match"] is False
    assert result["tracker"] == "shapes" and result["motion_fidelity"] > 0.8
    assert result["color_match"] and result["shape_match"] and result["motion_match"]
    assert result["detected_motion"] == "right"
    points = evaluate(source, output, method="points")
    assert set(points) == BASE_KEYS and points["tracker"] == "points" and points["motion_fidelity"] > 0.8
    as_float = evaluate(source / 255.0, output.astype(np.float32) / 255.0)  # model outputs: floats in [0, 1]
    assert as_float["motion_fidelity"] == pytest.approx(result["motion_fidelity"])


def test_evaluate_prompt_without_motion_or_unparseable():
    _, frames = _clip(11)
    assert "motion_match" not in evaluate(frames, frames, prompt="a red circle")
    assert "background_match" not in evaluate(frames, frames, prompt="a red circle")  # nothing asked of it
    assert "color_match" in evaluate(frames, frames, prompt="a red circle")
    assert set(evaluate(frames, frames, prompt="a car driving in a forest")) == BASE_KEYS


def test_evaluate_rejects_bad_input():
    _, frames = _clip(12)
    with pytest.raises(UserError):
        evaluate(frames, frames[..., 0])
    with pytest.raises(UserError):
        evaluate(frames, frames, method="optical-flow")


def test_background_match_checks_borders_and_inside():
    from sma_guidance.metrics import background_match

    rng = np.random.default_rng(3)
    for background in shapes.BACKGROUNDS:
        clip = shapes.render(shapes.sample_clip_spec(rng, p_two=0, background=background))
        assert background_match(clip, background)
        assert not background_match(clip, "black" if background != "black" else "gray")
        tinted = clip.copy()
        tinted[:, :3] = tinted[:, -3:] = tinted[:, :, :3] = tinted[:, :, -3:] = (95, 75, 120)  # purple borders
        assert not background_match(tinted, background)
    with pytest.raises(UserError, match="unknown background"):
        background_match(clip, "pink")


def test_single_clean_object_rejects_a_second_blob_and_stray_pixels():
    from sma_guidance.metrics import single_clean_object

    rng = np.random.default_rng(4)
    assert all(single_clean_object(shapes.render(shapes.sample_clip_spec(rng, p_two=0))) for _ in range(20))
    spec = shapes.ClipSpec(
        objects=(shapes.ObjectSpec("square", "red", 12, "right", start_x=15, start_y=20, vx=2),), background="black"
    )
    clip = shapes.render(spec)
    assert single_clean_object(clip)
    twin = clip.copy()
    twin[:, 50:56, 50:56] = (255, 0, 0)  # the same colour, apart: two objects
    assert not single_clean_object(twin)
    stray = clip.copy()
    stray[3, 40:43, 40:43] = (0, 255, 0)  # nine solid pixels of another colour in one frame
    assert not single_clean_object(stray)
    assert not single_clean_object(np.zeros_like(clip))
