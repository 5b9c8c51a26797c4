"""The "shapes world": procedural clips of coloured shapes in motion, with captions.

Used to train a small text-to-video model and to benchmark motion transfer, so every clip is fully
described by a :class:`ClipSpec` and every caption can be parsed back (:func:`parse_prompt`).

Conventions
-----------
* Frames are ``(F, size, size, 3)`` uint8 RGB. Image coordinates: ``x`` to the right, ``y`` DOWN;
  pixel ``(row i, column j)`` is centred at ``(x=j, y=i)`` and covers ``[j-0.5, j+0.5]``, so the
  visible frame spans ``[-0.5, size-0.5]`` on both axes.
* An object's position is its centre: the disc/square centre, the triangle's centroid (which is
  also where :func:`centroids` finds it). Triangles are equilateral with the apex up.
* Circular motion: ``x = cx + r cos(θ)``, ``y = cy - r sin(θ)`` with ``θ = start_angle +
  angular_speed * t``. The minus sign makes θ the usual angle *as seen on screen* (counterclockwise
  from the right), so ``angular_speed > 0`` is counterclockwise on screen and ``< 0`` is clockwise:
  a clockwise object at the top of its circle moves right. In y-down pixel offsets ``(dx, dy)`` from
  the centre, the cross product ``dx₀·dy₁ - dy₀·dx₁`` of successive offsets is positive for
  on-screen clockwise motion.
* "bouncing" is a ball dropping onto the floor: constant velocity with ``vy > 0`` (downwards, 3–7
  px/frame) and a small horizontal drift ``|vx| <= vy/2``; it reflects off the bottom border exactly
  once, between 30% and 70% of the clip, and never touches another border. On screen: down, bounce,
  up, with at least two frames on each side of the bounce.
* "zigzag": steady horizontal progress plus a vertical triangle wave whose straight strokes last
  ``half_period`` frames each: at least three strokes per clip, and 2–4 frames per stroke when the
  clip allows (always 2 at 8 frames).
* Object sizes and circle radii are given for 64-px frames and scale with ``size / 64``; speeds are
  px/frame (2–5) but are capped so the object stays fully inside the frame for the whole clip.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .errors import UserError

SHAPES = ("circle", "square", "triangle")

# Corners of the RGB cube: pairwise distances >= 255, and >= 150 from every background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "dark blue": (10, 20, 80),
}

MOTION_PHRASES: dict[str, str] = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "diagonal": "moving diagonally",
    "circle_cw": "moving in a circle clockwise",
    "circle_ccw": "moving in a circle counterclockwise",
    "zigzag": "moving in a zigzag",
    "bouncing": "bouncing",
}
MOTIONS = tuple(MOTION_PHRASES)

DIAGONALS = ("up_left", "up_right", "down_left", "down_right")

_LINEAR = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_SIZE_RANGE = (10, 24)  # px at size 64
_SPEED_RANGE = (2.0, 5.0)  # px/frame
_BOUNCE_SPEED_RANGE = (3.0, 7.0)  # px/frame, vertical: a lively bounce reads as one
_RADIUS_RANGE = (8.0, 16.0)  # px at size 64
_ZIGZAG_AMPLITUDE = (6.0, 12.0)  # peak-to-peak px at size 64
_MARGIN = 0.5  # keep the anti-aliased rim inside the frame too
_MIN_FRAMES, _MIN_SIZE = 4, 32


@dataclass(frozen=True)
class ObjectSpec:
    """One object and its complete motion; unused motion parameters stay 0.

    Attributes:
        shape, color, motion: keys of SHAPES, COLORS, MOTIONS.
        size: px; circle diameter, square side, or triangle side.
        start_x, start_y: centre at frame 0.
        vx, vy: px/frame (linear motions, zigzag's horizontal speed, bouncing's initial velocity).
        center_x, center_y, radius, start_angle, angular_speed: circular motion; angles in radians,
            angular_speed per frame, positive = counterclockwise on screen (see module docstring).
        amplitude: zigzag peak-to-peak height, signed: > 0 means the first stroke goes down.
        half_period: zigzag frames per straight stroke.
        floor_y: bouncing: the centre's y when touching the bottom border.
        variant: "diagonal": one of DIAGONALS; "zigzag": "left"/"right"; else "".
    """

    shape: str
    color: str
    size: float
    motion: str
    start_x: float
    start_y: float
    vx: float = 0.0
    vy: float = 0.0
    center_x: float = 0.0
    center_y: float = 0.0
    radius: float = 0.0
    start_angle: float = 0.0
    angular_speed: float = 0.0
    amplitude: float = 0.0
    half_period: int = 0
    floor_y: float = 0.0
    variant: str = ""

    def __post_init__(self):
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("color", self.color, COLORS)
        _check_choice("motion", self.motion, MOTIONS)
        if not self.size > 0:
            raise UserError(f"object size must be positive, got {self.size}")
        if self.motion == "zigzag" and self.half_period < 1:
            raise UserError(f"zigzag half_period must be >= 1 frame, got {self.half_period}")


@dataclass(frozen=True)
class ClipSpec:
    """A whole clip: objects drawn in order (later ones on top) over a plain background."""

    objects: tuple[ObjectSpec, ...]
    background: str
    num_frames: int = 8
    size: int = 64

    def __post_init__(self):
        _check_choice("background", self.background, BACKGROUNDS)
        if not self.objects:
            raise UserError("a clip needs at least one object")
        _check_frames_and_size(self.num_frames, self.size)


def _check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}; choose one of {', '.join(map(repr, choices))}")


def _check_frames_and_size(num_frames: int, size: int) -> None:
    if int(num_frames) != num_frames or num_frames < _MIN_FRAMES:
        raise UserError(f"num_frames must be an integer >= {_MIN_FRAMES}, got {num_frames}")
    if int(size) != size or size < _MIN_SIZE:
        raise UserError(f"size must be an integer >= {_MIN_SIZE} px, got {size}")


def _check_probability(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise UserError(f"{name} must be a probability in [0, 1], got {p}")


# ---- geometry ------------------------------------------------------------------------------------


def shape_extents(shape: str, size: float) -> tuple[float, float, float]:
    """``(half_width, above, below)``: how far the shape reaches from its centre (px, y down)."""
    if shape == "triangle":
        inradius = size / (2 * math.sqrt(3))  # centroid to the bottom edge; apex is 2x as far
        return size / 2, 2 * inradius, inradius
    return size / 2, size / 2, size / 2


def centre_bounds(shape: str, size: float, frame: int) -> tuple[float, float, float, float]:
    """``(x_lo, x_hi, y_lo, y_hi)``: where the centre may be for the object to be fully inside."""
    half_w, above, below = shape_extents(shape, size)
    lo, hi = -0.5 + _MARGIN, frame - 0.5 - _MARGIN
    return lo + half_w, hi - half_w, lo + above, hi - below


def _triangle_wave(t: np.ndarray, half_period: int) -> np.ndarray:
    """0 → 1 → 0 → ... with a straight stroke every ``half_period`` frames; ``t`` any shape."""
    phase = np.mod(t / half_period, 2.0)
    return 1.0 - np.abs(phase - 1.0)


def trajectory(obj: ObjectSpec, num_frames: int) -> np.ndarray:
    """Centre ``(x, y)`` of ``obj`` per frame: float64 ``(num_frames, 2)``, y down."""
    t = np.arange(num_frames, dtype=np.float64)
    if obj.motion in ("circle_cw", "circle_ccw"):
        theta = obj.start_angle + obj.angular_speed * t
        # minus: θ is measured counterclockwise on screen while pixel y grows downwards
        x, y = obj.center_x + obj.radius * np.cos(theta), obj.center_y - obj.radius * np.sin(theta)
        return np.stack([x, y], 1)
    x = obj.start_x + obj.vx * t
    if obj.motion == "zigzag":
        y = obj.start_y + obj.amplitude * _triangle_wave(t, obj.half_period)
    elif obj.motion == "bouncing":
        y = obj.floor_y - np.abs(obj.floor_y - (obj.start_y + obj.vy * t))  # one reflection at the floor
    else:
        y = obj.start_y + obj.vy * t
    return np.stack([x, y], 1)


def _sdf(shape: str, size: float, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Signed distance (px, < 0 inside) to the shape centred at the origin; broadcasts dx, dy."""
    half = size / 2
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - half
    if shape == "square":
        qx, qy = np.abs(dx) - half, np.abs(dy) - half
        outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
        return outside + np.minimum(np.maximum(qx, qy), 0)
    # Upright triangle as the intersection of three half-planes at the inradius from the centroid;
    # the max of plane distances is exact along edges, which is all the 1-px coverage ramp needs.
    inradius = size / (2 * math.sqrt(3))
    slanted = 0.5 * math.sqrt(3) * np.abs(dx) - 0.5 * dy  # the two upper edges, mirrored in x
    return np.maximum(dy, slanted) - inradius


def _coverage_along(shape: str, size, centres: np.ndarray, frame_size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of ``shape`` centred at ``centres`` ``(F, 2)``, of ``size`` px (one, or
    one per frame ``(F,)``: an object growing or shrinking): float32 ``(F, frame_size, frame_size)``.
    ``clip(0.5 - sdf, 0, 1)``: a linear ramp one pixel wide across each edge, which is the exact area
    fraction for axis-aligned edges."""
    centres = np.asarray(centres, np.float32)
    size = np.asarray(size, np.float32)
    if size.ndim == 1:
        size = size[:, None, None]
    grid = np.arange(frame_size, dtype=np.float32)
    dx = grid[None, None, :] - centres[:, 0, None, None]
    dy = grid[None, :, None] - centres[:, 1, None, None]
    return np.clip(0.5 - _sdf(shape, size, dx, dy), 0.0, 1.0)


def coverage(obj: ObjectSpec, num_frames: int, size: int) -> np.ndarray:
    """Anti-aliased coverage of ``obj`` in [0, 1] along its trajectory: float32 ``(num_frames, size, size)``."""
    return _coverage_along(obj.shape, obj.size, trajectory(obj, num_frames), size)


def _draw(background: str, layers: list[tuple[np.ndarray, str]]) -> np.ndarray:
    """Composite ``(coverage (F, H, W), colour name)`` layers in order ("over") on a plain background:
    uint8 ``(F, H, W, 3)``."""
    shape = (*layers[0][0].shape, 3)
    image = np.broadcast_to(np.asarray(BACKGROUNDS[background], np.float32), shape).copy()
    for alpha, color in layers:
        image += alpha[..., None] * (np.asarray(COLORS[color], np.float32) - image)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def render(spec: ClipSpec) -> np.ndarray:
    """Draw ``spec``: uint8 ``(num_frames, size, size, 3)`` RGB, objects composited in order."""
    return _draw(spec.background, [(coverage(obj, spec.num_frames, spec.size), obj.color) for obj in spec.objects])


def render_path(path, shape: str, color: str, size, background: str, frame_size: int = 64) -> np.ndarray:
    """Draw one object along any centre path ``(F, 2)`` (pixels ``(x, y)``, y down), including paths
    the world's motions never make (a spiral, an S-curve, stop-and-go), at ``size`` px or one size per frame
    (growing, shrinking): uint8 ``(F, frame_size, frame_size, 3)``, anti-aliased as :func:`render`."""
    return render_paths([(path, shape, color, size)], background, frame_size)


def render_paths(objects, background: str, frame_size: int = 64) -> np.ndarray:
    """Draw several objects, each ``(path (F, 2), shape, color, size or sizes (F,))`` as :func:`render_path`,
    composited in order: uint8 ``(F, frame_size, frame_size, 3)``."""
    _check_choice("background", background, BACKGROUNDS)
    layers = []
    for path, shape, color, size in objects:
        _check_choice("shape", shape, SHAPES)
        _check_choice("color", color, COLORS)
        centres = np.asarray(path, np.float32)
        if centres.ndim != 2 or centres.shape[1] != 2 or len(centres) < 2:
            raise UserError(f"a path must be (frames >= 2, 2) pixel positions, got shape {centres.shape}")
        sizes = np.asarray(size, np.float32)
        if sizes.ndim == 1 and len(sizes) != len(centres):
            raise UserError(f"one size per frame: {len(sizes)} sizes for a {len(centres)}-frame path")
        layers.append((_coverage_along(shape, sizes, centres, frame_size), color))
    if len({len(alpha) for alpha, _ in layers}) != 1:
        raise UserError("every path of one clip needs the same number of frames")
    return _draw(background, layers)


# ---- sampling ------------------------------------------------------------------------------------


def _capped_uniform(rng: np.random.Generator, low: float, high: float, cap: float) -> float:
    """Uniform in ``[low, high]`` with both ends capped at ``cap`` (so space limits win)."""
    return float(rng.uniform(min(low, cap), min(high, cap)))


def _start(rng: np.random.Generator, lo: float, hi: float, travel: float) -> float:
    """A start coordinate in ``[lo, hi]`` from which moving by ``travel`` stays in ``[lo, hi]``."""
    low, high = lo - min(travel, 0.0), hi - max(travel, 0.0)
    return float(rng.uniform(low, max(low, high)))  # max: a speed capped to the span rounds past it


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _sample_motion(rng: np.random.Generator, motion: str, bounds, num_frames: int, scale: float) -> dict:
    """ObjectSpec keyword arguments for ``motion`` that keep the centre within ``bounds``."""
    x_lo, x_hi, y_lo, y_hi = bounds
    span_x, span_y, steps = x_hi - x_lo, y_hi - y_lo, num_frames - 1

    if motion in _LINEAR:
        ux, uy = _LINEAR[motion]
        speed = _capped_uniform(rng, *_SPEED_RANGE, (span_x if ux else span_y) / steps)
        vx, vy = ux * speed, uy * speed
        return {"vx": vx, "vy": vy, "start_x": _start(rng, x_lo, x_hi, vx * steps),
                "start_y": _start(rng, y_lo, y_hi, vy * steps)}

    if motion == "diagonal":
        variant = DIAGONALS[rng.integers(len(DIAGONALS))]
        # speed is along the path, so each component is speed / sqrt(2)
        speed = _capped_uniform(rng, *_SPEED_RANGE, math.sqrt(2) * min(span_x, span_y) / steps)
        vx = speed / math.sqrt(2) * (1 if variant.endswith("right") else -1)
        vy = speed / math.sqrt(2) * (1 if variant.startswith("down") else -1)
        return {"vx": vx, "vy": vy, "variant": variant, "start_x": _start(rng, x_lo, x_hi, vx * steps),
                "start_y": _start(rng, y_lo, y_hi, vy * steps)}

    if motion in ("circle_cw", "circle_ccw"):
        r_cap = min(span_x, span_y) / 2
        radius = _capped_uniform(rng, _RADIUS_RANGE[0] * scale, _RADIUS_RANGE[1] * scale, r_cap)
        cx = float(rng.uniform(x_lo + radius, x_hi - radius))
        cy = float(rng.uniform(y_lo + radius, y_hi - radius))
        start_angle = float(rng.uniform(0, 2 * math.pi))
        sweep = float(rng.uniform(math.pi, 2 * math.pi))  # 180–360° between the first and last frame
        omega = sweep / steps * (1.0 if motion == "circle_ccw" else -1.0)
        return {"center_x": cx, "center_y": cy, "radius": radius, "start_angle": start_angle,
                "angular_speed": omega, "start_x": cx + radius * math.cos(start_angle),
                "start_y": cy - radius * math.sin(start_angle)}

    if motion == "zigzag":
        direction = "right" if rng.random() < 0.5 else "left"
        vx = _capped_uniform(rng, *_SPEED_RANGE, span_x / steps) * (1 if direction == "right" else -1)
        # >= 3 strokes per clip; strokes of 1 frame look like jitter, so prefer 2+ when there is room
        longest = max(1, min(4, steps // 3))
        half_period = int(rng.integers(min(2, longest), longest + 1))
        low, high = _ZIGZAG_AMPLITUDE[0] * scale, _ZIGZAG_AMPLITUDE[1] * scale
        amplitude = _sign(rng) * _capped_uniform(rng, low, high, span_y)
        return {"vx": vx, "amplitude": amplitude, "half_period": half_period, "variant": direction,
                "start_x": _start(rng, x_lo, x_hi, vx * steps), "start_y": _start(rng, y_lo, y_hi, amplitude)}

    # bouncing: fall, hit the floor once mid-clip, rise; never far enough to touch the ceiling
    t_bounce = float(rng.uniform(0.3, 0.7)) * steps
    vy = _capped_uniform(rng, *_BOUNCE_SPEED_RANGE, span_y / max(t_bounce, steps - t_bounce))
    vx = _sign(rng) * _capped_uniform(rng, 0.0, vy / 2, span_x / steps)
    return {"vx": vx, "vy": vy, "floor_y": y_hi, "start_y": y_hi - vy * t_bounce,
            "start_x": _start(rng, x_lo, x_hi, vx * steps)}


def _sample_object(rng, num_frames: int, size: int, motion, shape, color) -> ObjectSpec:
    """One random object; ``motion``, ``shape``, ``color`` force a choice where not None."""
    scale = size / 64
    motion = MOTIONS[rng.integers(len(MOTIONS))] if motion is None else motion
    shape = SHAPES[rng.integers(len(SHAPES))] if shape is None else shape
    color = list(COLORS)[rng.integers(len(COLORS))] if color is None else color
    obj_size = float(round(rng.integers(_SIZE_RANGE[0], _SIZE_RANGE[1] + 1) * scale))
    bounds = centre_bounds(shape, obj_size, size)
    params = _sample_motion(rng, motion, bounds, num_frames, scale)
    return ObjectSpec(shape=shape, color=color, size=obj_size, motion=motion, **params)


def sample_clip_spec(
    rng: np.random.Generator,
    num_frames: int = 8,
    size: int = 64,
    p_two: float = 0.2,
    motion: str | None = None,
    shape: str | None = None,
    color: str | None = None,
    background: str | None = None,
) -> ClipSpec:
    """A random clip of one object (two with probability ``p_two``).

    ``motion``, ``shape`` and ``color`` force the FIRST object's choice, ``background`` the clip's;
    a second object is always random, with a colour different from the first (so its
    (colour, shape) pair differs too). Pass ``p_two=0`` for single-object clips.
    """
    _check_frames_and_size(num_frames, size)
    _check_probability("p_two", p_two)
    for what, value, choices in (("motion", motion, MOTIONS), ("shape", shape, SHAPES),
                                 ("color", color, COLORS), ("background", background, BACKGROUNDS)):
        if value is not None:
            _check_choice(what, value, choices)
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))] if background is None else background
    first = _sample_object(rng, num_frames, size, motion, shape, color)
    objects = [first]
    if rng.random() < p_two:
        other_colors = [c for c in COLORS if c != first.color]
        second_color = other_colors[rng.integers(len(other_colors))]
        objects.append(_sample_object(rng, num_frames, size, None, None, second_color))
    return ClipSpec(objects=tuple(objects), background=background, num_frames=num_frames, size=size)


# ---- captions ------------------------------------------------------------------------------------


def caption(spec: ClipSpec, drop_motion: bool = False, drop_background: bool = False) -> str:
    """``"a red circle moving left and a blue square bouncing on a gray background"``.

    ``drop_motion`` removes every motion phrase, ``drop_background`` the ``" on a ... background"``.
    """
    parts = []
    for obj in spec.objects:
        words = f"a {obj.color} {obj.shape}"
        parts.append(words if drop_motion else f"{words} {MOTION_PHRASES[obj.motion]}")
    text = " and ".join(parts)
    return text if drop_background else f"{text} on a {spec.background} background"


def random_caption(spec: ClipSpec, rng: np.random.Generator, p_drop_motion: float = 0.3,
                   p_drop_background: float = 0.2) -> str:
    """:func:`caption` with the motion / background dropped at random, so appearance-only prompts
    are in the training distribution. Always draws two numbers from ``rng``."""
    _check_probability("p_drop_motion", p_drop_motion)
    _check_probability("p_drop_background", p_drop_background)
    drop_motion, drop_background = rng.random(2) < (p_drop_motion, p_drop_background)
    return caption(spec, bool(drop_motion), bool(drop_background))


def sample_clip(rng: np.random.Generator, p_drop_motion: float = 0.3, p_drop_background: float = 0.2,
                **spec_kwargs) -> tuple[np.ndarray, str, ClipSpec]:
    """``(frames, caption, spec)``: a random spec (``spec_kwargs`` go to :func:`sample_clip_spec`),
    its rendering and a :func:`random_caption`."""
    spec = sample_clip_spec(rng, **spec_kwargs)
    return render(spec), random_caption(spec, rng, p_drop_motion, p_drop_background), spec


def vocabulary() -> list[str]:
    """Every word any caption can contain, sorted (for a word-level tokenizer)."""
    phrases = ["a", "and", "on", "background", *COLORS, *SHAPES, *BACKGROUNDS, *MOTION_PHRASES.values()]
    return sorted({word for phrase in phrases for word in phrase.split()})


# Longest first, so a phrase that extends another always wins the prefix match.
_MOTION_BY_PHRASE = sorted(((p, m) for m, p in MOTION_PHRASES.items()), key=lambda pm: -len(pm[0]))
_OBJECT_RE = re.compile(rf"\b({'|'.join(COLORS)})\s+({'|'.join(SHAPES)})\b")
_BACKGROUND_RE = re.compile(rf"\bon\s+an?\s+({'|'.join(BACKGROUNDS)})\s+background\b")


def parse_prompt(text: str) -> dict:
    """What a prompt asks of its FIRST object: ``{"color", "shape", "motion", "background"}``.

    ``motion`` is a MOTIONS key or None when no motion phrase follows the object; ``background``
    a BACKGROUNDS key or None. Inverts :func:`caption` exactly; tolerant of case, extra spaces and
    a trailing period. Raises UserError when no "<color> <shape>" pair is named.
    """
    norm = " ".join(text.lower().replace(".", " ").split())
    match = _OBJECT_RE.search(norm)
    if match is None:
        raise UserError(f"prompt {text!r} names no '<color> <shape>' (colors: {', '.join(COLORS)}; "
                        f"shapes: {', '.join(SHAPES)})")
    rest = norm[match.end():].lstrip()
    motion = next((m for p, m in _MOTION_BY_PHRASE if rest == p or rest.startswith(p + " ")), None)
    background = _BACKGROUND_RE.search(norm)
    return {"color": match.group(1), "shape": match.group(2), "motion": motion,
            "background": background.group(1) if background else None}


# ---- measurement ---------------------------------------------------------------------------------


def object_mask(frames: np.ndarray, color_rgb, tol: float = 60) -> np.ndarray:
    """Pixels within Euclidean RGB distance ``tol`` of ``color_rgb`` (RGB triple or COLORS name).

    Args:
        frames: uint8 ``(F, H, W, 3)`` (any leading shape works).
    Returns:
        bool ``(F, H, W)``.
    """
    rgb = COLORS[color_rgb] if isinstance(color_rgb, str) else color_rgb
    diff = frames.astype(np.int32) - np.asarray(rgb, np.int32)
    return np.einsum("...c,...c->...", diff, diff) <= tol * tol


def centroids(frames: np.ndarray, color_rgb, tol: float = 60) -> np.ndarray:
    """Mean ``(x, y)`` of :func:`object_mask` pixels per frame: float64 ``(F, 2)``, NaN where absent."""
    mask = object_mask(frames, color_rgb, tol)
    count = mask.sum(axis=(1, 2)).astype(np.float64)
    xs = mask.sum(axis=1) @ np.arange(mask.shape[2])
    ys = mask.sum(axis=2) @ np.arange(mask.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([xs / count, ys / count], 1)


__all__ = [
    "BACKGROUNDS", "COLORS", "DIAGONALS", "MOTIONS", "MOTION_PHRASES", "SHAPES",
    "ClipSpec", "ObjectSpec", "caption", "centre_bounds", "centroids", "coverage", "object_mask",
    "parse_prompt", "random_caption", "render", "render_path", "render_paths", "sample_clip", "sample_clip_spec", "shape_extents",
    "trajectory", "vocabulary",
]
