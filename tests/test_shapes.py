"""The shapes world: geometry, motion senses measured on rendered pixels, captions and their parser."""

import itertools
import math
import time

import numpy as np
import pytest

from sma_guidance.errors import UserError
from sma_guidance.shapes import (
    BACKGROUNDS,
    COLORS,
    DIAGONALS,
    MOTIONS,
    SHAPES,
    ClipSpec,
    ObjectSpec,
    caption,
    centroids,
    object_mask,
    parse_prompt,
    random_caption,
    render,
    sample_clip,
    sample_clip_spec,
    shape_extents,
    trajectory,
    vocabulary,
)

FRAME_COUNTS = (8, 16)


def _single(seed, num_frames=8, **kwargs):
    """A one-object spec, its frames and the measured centroid track ``(F, 2)``."""
    spec = sample_clip_spec(np.random.default_rng(seed), num_frames=num_frames, p_two=0, **kwargs)
    frames = render(spec)
    return spec, frames, centroids(frames, COLORS[spec.objects[0].color])


def _obj(motion="right", shape="circle", color="red", **kwargs):
    """An ObjectSpec with zero motion parameters unless given (zigzag needs a stroke length)."""
    params = {"start_x": 32.0, "start_y": 32.0, "half_period": 1, **kwargs}
    return ObjectSpec(shape=shape, color=color, size=12.0, motion=motion, **params)


# ---- frames --------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
@pytest.mark.parametrize("size", (64, 32))
def test_render_shape_and_dtype(num_frames, size):
    frames, text, spec = sample_clip(np.random.default_rng(0), num_frames=num_frames, size=size)
    assert frames.shape == (num_frames, size, size, 3) and frames.dtype == np.uint8
    assert isinstance(text, str) and spec.num_frames == num_frames and spec.size == size


def test_palette_is_distinct_from_backgrounds():
    colors = np.array(list(COLORS.values()), float)
    backgrounds = np.array(list(BACKGROUNDS.values()), float)
    to_background = np.linalg.norm(colors[:, None] - backgrounds[None], axis=-1)
    between = np.linalg.norm(colors[:, None] - colors[None], axis=-1)[~np.eye(len(colors), dtype=bool)]
    assert to_background.min() >= 150 and between.min() >= 200


@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
@pytest.mark.parametrize("size", (64, 32, 128))
def test_objects_stay_fully_inside_every_frame(num_frames, size):
    rng = np.random.default_rng(1)
    for _ in range(300):
        spec = sample_clip_spec(rng, num_frames=num_frames, size=size, p_two=0.5)
        for obj in spec.objects:
            half_w, above, below = shape_extents(obj.shape, obj.size)
            x, y = trajectory(obj, num_frames).T
            lo, hi = -0.5 - 1e-9, spec.size - 0.5 + 1e-9  # float slack only
            assert (x - half_w >= lo).all() and (x + half_w <= hi).all(), obj
            assert (y - above >= lo).all() and (y + below <= hi).all(), obj


@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
def test_rendered_objects_are_never_cut_by_the_border(num_frames):
    # A cut object would fully cover pixels of the outermost rows/columns; an inside one at most
    # half-covers them (its anti-aliased rim), which object_mask does not pick up.
    for seed in range(60):
        spec, frames, track = _single(seed, num_frames)
        obj = spec.objects[0]
        mask = object_mask(frames, obj.color)
        border = mask[:, [0, -1], :].any() or mask[:, :, [0, -1]].any()
        assert not border, obj
        half_w, above, below = shape_extents(obj.shape, obj.size)
        assert not np.isnan(track).any()
        assert (track[:, 0] - half_w >= -1.5).all() and (track[:, 0] + half_w <= spec.size + 0.5).all()
        assert (track[:, 1] - above >= -1.5).all() and (track[:, 1] + below <= spec.size + 0.5).all()
        # the measured centre follows the analytic trajectory
        np.testing.assert_allclose(track, trajectory(obj, num_frames), atol=1.0)


def test_anti_aliased_edges_have_intermediate_values():
    spec = ClipSpec(objects=(_obj(shape="circle", start_x=31.3, start_y=30.6),), background="black")
    red = render(spec)[0, ..., 0]
    assert ((red > 20) & (red < 235)).sum() >= 10
    # Axis-aligned edges: coverage is the exact area, so each row through the square sums to its side
    # even when the edges fall mid-pixel.
    square = _obj(shape="square", color="white", start_x=31.75, start_y=32.0)
    rows = render(ClipSpec(objects=(square,), background="black"))[0, 28:36, :, 0].astype(float) / 255
    np.testing.assert_allclose(rows.sum(axis=1), square.size, atol=0.02)
    assert sorted(np.unique(np.round(rows[0], 2)).tolist()) == [0.0, 0.25, 0.75, 1.0]


def test_second_object_is_composited_over_the_first():
    below = _obj(shape="square", color="red", start_x=30.0, start_y=30.0)
    above = _obj(shape="square", color="green", start_x=34.0, start_y=34.0)
    frame = render(ClipSpec(objects=(below, above), background="gray"))[0]
    assert tuple(frame[32, 32]) == COLORS["green"]
    assert tuple(frame[26, 26]) == COLORS["red"]
    assert tuple(frame[5, 5]) == BACKGROUNDS["gray"]


# ---- motions, measured on rendered frames ---------------------------------------------------------


@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
@pytest.mark.parametrize(
    "motion,unit", [("left", (-1, 0)), ("right", (1, 0)), ("up", (0, -1)), ("down", (0, 1))]
)
def test_linear_motion_direction_matches_name(motion, unit, num_frames):
    for seed in range(8):
        _, _, track = _single(seed, num_frames, motion=motion)
        steps = np.diff(track, axis=0)
        along = steps @ np.array(unit, float)
        across = steps @ np.array(unit[::-1], float)
        assert (along > 1.0).all(), (motion, along)  # >= 2 px/frame, minus measurement noise
        total = track[-1] - track[0]
        assert abs(total @ np.array(unit[::-1], float)) < 1.0 < 10 * abs(total @ np.array(unit, float))
        assert np.abs(across).max() < 1.0


@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
def test_diagonal_direction_matches_recorded_variant(num_frames):
    seen = set()
    for seed in range(24):
        spec, _, track = _single(seed, num_frames, motion="diagonal")
        variant = spec.objects[0].variant
        seen.add(variant)
        dx, dy = track[-1] - track[0]
        assert np.sign(dx) == (1 if variant.endswith("right") else -1)
        assert np.sign(dy) == (1 if variant.startswith("down") else -1)  # y points down
        assert abs(abs(dx) - abs(dy)) < 0.15 * abs(dx)
    assert seen == set(DIAGONALS)


def test_clockwise_at_the_top_of_the_circle_moves_right():
    # Screen-space facts, independent of any angle convention: a clockwise object at the top of its
    # circle moves right, at the right-hand side it moves down.
    def first_step(motion, start_angle, speed):
        obj = _obj(motion=motion, center_x=32.0, center_y=32.0, radius=12.0, start_angle=start_angle,
                   angular_speed=speed)
        frames = render(ClipSpec(objects=(obj,), background="black"))
        track = centroids(frames, COLORS["red"])
        return track[0], track[1] - track[0]

    top, step = first_step("circle_cw", math.pi / 2, -0.3)
    assert top[1] < 32 - 10 and step[0] > 2  # at the top (small y), moving right
    right, step = first_step("circle_cw", 0.0, -0.3)
    assert right[0] > 32 + 10 and step[1] > 2  # at the right, moving down (y grows downwards)
    top, step = first_step("circle_ccw", math.pi / 2, 0.3)
    assert top[1] < 32 - 10 and step[0] < -2  # counterclockwise: at the top, moving left


@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
def test_circle_rotation_sense_on_screen(num_frames):
    for seed in range(8):
        for motion, screen_sign in (("circle_cw", 1), ("circle_ccw", -1)):
            spec, _, track = _single(seed, num_frames, motion=motion)
            obj = spec.objects[0]
            assert np.sign(obj.angular_speed) == -screen_sign  # documented: > 0 is counterclockwise
            off = track - (obj.center_x, obj.center_y)
            # In y-down pixel offsets this cross product is > 0 for on-screen clockwise motion.
            cross = off[:-1, 0] * off[1:, 1] - off[:-1, 1] * off[1:, 0]
            assert (np.sign(cross) == screen_sign).all(), (motion, cross)
            # 180–360 degrees over the clip
            angle = np.unwrap(np.arctan2(-off[:, 1], off[:, 0]))
            assert math.pi - 0.25 < abs(angle[-1] - angle[0]) < 2 * math.pi + 0.25
            radius = np.linalg.norm(off, axis=1)
            assert np.allclose(radius, obj.radius, atol=1.0) and 8 - 1e-9 <= obj.radius <= 16 + 1e-9


@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
def test_zigzag_progresses_horizontally_and_alternates_vertically(num_frames):
    for seed in range(10):
        spec, _, track = _single(seed, num_frames, motion="zigzag")
        obj = spec.objects[0]
        dx, dy = np.diff(track, axis=0).T
        assert (np.sign(dx) == (1 if obj.variant == "right" else -1)).all() and (np.abs(dx) > 1).all()
        # strokes of half_period frames, first one down when amplitude > 0
        stroke = np.arange(num_frames - 1) // obj.half_period
        expected = np.sign(obj.amplitude) * np.where(stroke % 2 == 0, 1, -1)
        assert (np.sign(dy) == expected).all() and (np.abs(dy) > 1).all(), (dy, obj)
        assert (np.diff(np.sign(dy)) != 0).sum() >= 2
        if num_frames == 8:
            assert obj.half_period == 2


@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
def test_bouncing_reflects_off_the_floor_once(num_frames):
    for seed in range(10):
        spec, _, track = _single(seed, num_frames, motion="bouncing")
        obj = spec.objects[0]
        dx, dy = np.diff(track, axis=0).T
        assert obj.vy > 0 and abs(obj.vx) <= obj.vy / 2 + 1e-9
        clear = dy[np.abs(dy) > 1.0]  # the step that contains the bounce can be near 0
        assert clear[0] > 0 and clear[-1] < 0  # falls, then rises
        assert (np.diff(np.sign(clear)) != 0).sum() == 1  # exactly one reflection
        # the reflection keeps the speed: first and last steps are mirror images vertically
        assert abs(dy[0] + dy[-1]) < 1.0 and abs(dx[0] - dx[-1]) < 1.0
        # it reaches the floor: the lowest frame's bottom is within half a step of the border
        _, _, below = shape_extents(obj.shape, obj.size)
        assert track[:, 1].max() + below >= spec.size - 1.5 - obj.vy / 2
        # at least two steps on each side of the bounce
        bounce_step = np.argmax(dy < -1.0)
        assert 2 <= bounce_step <= num_frames - 3


# ---- sampling ------------------------------------------------------------------------------------


def test_determinism():
    a = sample_clip(np.random.default_rng(42), p_two=0.5)
    b = sample_clip(np.random.default_rng(42), p_two=0.5)
    c = sample_clip(np.random.default_rng(43), p_two=0.5)
    assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
    assert a[2] != c[2]


def test_forced_choices_are_respected():
    rng = np.random.default_rng(3)
    for motion, shape, color, background in itertools.product(MOTIONS, SHAPES, COLORS, BACKGROUNDS):
        spec = sample_clip_spec(rng, p_two=0.5, motion=motion, shape=shape, color=color,
                                background=background)
        first = spec.objects[0]
        assert (first.motion, first.shape, first.color, spec.background) == (motion, shape, color, background)


@pytest.mark.parametrize(
    "kwargs",
    [{"motion": "spin"}, {"shape": "star"}, {"color": "purple"}, {"background": "white"},
     {"num_frames": 2}, {"size": 16}, {"p_two": 1.5}],
)
def test_bad_choices_raise_user_error(kwargs):
    with pytest.raises(UserError):
        sample_clip_spec(np.random.default_rng(0), **kwargs)


def test_two_object_clips_have_distinct_colors_and_pairs():
    rng = np.random.default_rng(4)
    counts = [len(sample_clip_spec(rng).objects) for _ in range(1000)]
    assert 0.15 < counts.count(2) / len(counts) < 0.25  # p_two = 0.2
    for _ in range(200):
        spec = sample_clip_spec(rng, p_two=1.0, color="red")
        first, second = spec.objects
        assert second.color != first.color
        assert (second.color, second.shape) != (first.color, first.shape)
        assert " and " in caption(spec)


# ---- captions ------------------------------------------------------------------------------------


def test_caption_templates():
    one = ClipSpec(objects=(_obj("circle_cw", "triangle", "cyan"),), background="dark blue")
    assert caption(one) == "a cyan triangle moving in a circle clockwise on a dark blue background"
    assert caption(one, drop_motion=True) == "a cyan triangle on a dark blue background"
    assert caption(one, drop_background=True) == "a cyan triangle moving in a circle clockwise"
    assert caption(one, drop_motion=True, drop_background=True) == "a cyan triangle"
    two = ClipSpec(objects=(_obj("left", "circle", "red"), _obj("bouncing", "square", "blue")),
                   background="gray")
    assert caption(two) == "a red circle moving left and a blue square bouncing on a gray background"
    assert caption(two, drop_motion=True) == "a red circle and a blue square on a gray background"


def test_parse_prompt_inverts_caption_exhaustively():
    for color, shape, motion, background in itertools.product(COLORS, SHAPES, MOTIONS, BACKGROUNDS):
        spec = ClipSpec(objects=(_obj(motion, shape, color),), background=background)
        for drop_motion, drop_background in itertools.product((False, True), repeat=2):
            parsed = parse_prompt(caption(spec, drop_motion, drop_background))
            assert parsed == {
                "color": color,
                "shape": shape,
                "motion": None if drop_motion else motion,
                "background": None if drop_background else background,
            }


def test_parse_prompt_reads_the_first_of_two_objects_and_is_tolerant():
    rng = np.random.default_rng(5)
    for _ in range(300):
        spec = sample_clip_spec(rng, p_two=1.0)
        first = spec.objects[0]
        for drop_motion, drop_background in itertools.product((False, True), repeat=2):
            parsed = parse_prompt(caption(spec, drop_motion, drop_background))
            assert (parsed["color"], parsed["shape"]) == (first.color, first.shape)
            assert parsed["motion"] == (None if drop_motion else first.motion)
            assert parsed["background"] == (None if drop_background else spec.background)
    assert parse_prompt("  A Red  Circle moving in a circle clockwise on a Dark Blue background. ") == {
        "color": "red", "shape": "circle", "motion": "circle_cw", "background": "dark blue"}
    with pytest.raises(UserError):
        parse_prompt("a purple blob moving left")


def test_vocabulary_is_closed_and_tight():
    vocab = vocabulary()
    assert vocab == sorted(set(vocab)) and "the" not in vocab
    rng = np.random.default_rng(6)
    used = set()
    for _ in range(2000):
        used.update(random_caption(sample_clip_spec(rng), rng).split())
    assert used <= set(vocab)
    assert used == set(vocab)  # every word can actually occur


def test_random_caption_drop_rates():
    rng = np.random.default_rng(7)
    spec = sample_clip_spec(rng, p_two=0)
    texts = [random_caption(spec, rng) for _ in range(2000)]
    no_motion = np.mean([parse_prompt(t)["motion"] is None for t in texts])
    no_background = np.mean([parse_prompt(t)["background"] is None for t in texts])
    assert abs(no_motion - 0.3) < 0.04 and abs(no_background - 0.2) < 0.04
    assert {random_caption(spec, rng, 0.0, 0.0) for _ in range(20)} == {caption(spec)}


# ---- measurement and speed -----------------------------------------------------------------------


def test_object_mask_and_centroids():
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    frames[0, 2:6, 4:10] = COLORS["yellow"]
    frames[2, 10:12, 0:2] = (230, 240, 20)  # within tolerance of yellow
    mask = object_mask(frames, "yellow")
    assert mask.shape == (3, 16, 16) and mask.dtype == bool and mask[0].sum() == 24
    track = centroids(frames, COLORS["yellow"])
    np.testing.assert_allclose(track[0], (6.5, 3.5))
    assert np.isnan(track[1]).all()
    np.testing.assert_allclose(track[2], (0.5, 10.5))


def test_rendering_is_fast():
    rng = np.random.default_rng(8)
    render(sample_clip_spec(rng))  # warm-up
    start = time.perf_counter()
    for _ in range(200):
        render(sample_clip_spec(rng))
    assert time.perf_counter() - start < 2.0


def test_every_caption_word_is_one_token():
    """Merges added for one word must not split another (``r i`` from "right" once split "triangle")."""
    from pipelines.motion_transfer.backbones.tokenizers import build_word_tokenizer

    tokenizer = build_word_tokenizer(vocabulary(), max_length=24)
    for word in vocabulary():
        assert tokenizer.convert_ids_to_tokens(tokenizer(word).input_ids[1:-1]) == [word + "</w>"], word
    text = "a cyan triangle moving in a circle counterclockwise on a dark blue background"
    assert len(tokenizer(text).input_ids) == len(text.split()) + 2


def test_render_path_draws_any_path_as_render_draws_a_motion():
    from sma_guidance.shapes import render_path

    rng = np.random.default_rng(11)
    for _ in range(5):
        spec = sample_clip_spec(rng, p_two=0)
        obj = spec.objects[0]
        np.testing.assert_array_equal(
            render_path(trajectory(obj, spec.num_frames), obj.shape, obj.color, obj.size, spec.background), render(spec)
        )
    with pytest.raises(UserError, match="path"):
        render_path(np.zeros((3, 3)), "circle", "red", 10, "black")
