"""Reading, resampling, resizing and writing video clips.

Everything a user can get wrong here (a missing file, a file that is not a video, a clip too short,
an output path that would overwrite the input) is reported as a one-line :class:`UserError`;
exceptions from imageio/ffmpeg never escape :func:`read_frames`.

Conventions: clips on disk and in numpy are ``uint8 (F, H, W, 3)`` RGB; clips fed to the model are
``float32 (F, 3, H, W)`` tensors in ``[-1, 1]``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .atomic import atomic_write, check_writable_folder
from .errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
OUTPUT_EXTENSIONS = (".mp4", ".gif", ".webm")

DEFAULT_FPS = 8.0
MIN_FRAMES = 3
# A decoded clip beyond this would exhaust RAM long before it is useful for motion transfer.
MAX_DECODED_BYTES = 4 * 1024**3


# --------------------------------------------------------------------------------------------
# reading


def read_frames(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read every frame of a video file or a directory of images.

    Args:
        path: a video file (anything imageio/ffmpeg decodes, GIFs included) or a directory of
            images (``IMAGE_EXTENSIONS``), ordered naturally (``frame2`` before ``frame10``).

    Returns:
        ``(frames, fps)``: uint8 ``(F, H, W, 3)`` RGB with ``F >= 3``, and the clip's frame rate
        (``DEFAULT_FPS`` when the file does not say, and always for image directories).

    Raises:
        UserError: the path is missing, unreadable, not a video, holds no images, mixes image
            sizes, or has fewer than 3 frames.
    """
    path = _existing(path)
    with _decoding(path):
        source = _open_source(path)
        frames = _collect_frames(path, source.frames())
    _check_same_size(path, frames, source.names(range(len(frames))))
    if len(frames) < MIN_FRAMES:
        raise UserError(
            f"input video {path} needs at least {MIN_FRAMES} frames, got {len(frames)} "
            "— use a longer clip"
        )
    return np.stack(frames), source.fps


def check_readable(path: str | os.PathLike) -> None:
    """Open ``path``'s reader, which reads a video's metadata (or lists a folder's images), and raise the
    one-line :class:`UserError` of :func:`read_frames` if that fails: junk is refused before the slower
    work (a model's family detection and loading) that reading the clip itself has to wait for."""
    path = _existing(path)
    with _decoding(path):
        _open_source(path)


class Clip(NamedTuple):
    """The part of an input that a run uses, decoded: uint8 frames ``(F, H, W, 3)`` and the frame rate at
    which they last as long as that part. :func:`read_clip` returns one; the pipeline takes one as it is
    (no second decode, no reselection)."""

    frames: np.ndarray
    fps: float


def read_clip(
    path: str | os.PathLike, num_frames: int, start: float = 0.0, duration: float | None = None
) -> Clip:
    """The part ``[start, start + duration)`` of a clip, resampled to ``num_frames`` frames, streamed.

    The clip's frame count and rate come from its metadata first (frame ``i`` is at ``i / fps``
    seconds from the first); :func:`selected_indices` then names the source frames that will be
    used, and the decoder keeps only those while it runs (and stops after the last one), so memory
    holds the kept frames, never the clip. Image directories read only the chosen images. When a
    video's container misstates its frame count, the count found by decoding is used instead (a
    second pass, still streaming).

    Args:
        path: as for :func:`read_frames`.
        num_frames: frames returned, ``>= 1``.
        start: seconds skipped at the clip's beginning, ``>= 0``.
        duration: seconds used from ``start`` on (``None``: to the end), ``> 0``.

    Returns:
        a :class:`Clip` ``(frames, fps)``: uint8 ``(num_frames, H, W, 3)``, and the frame rate at which
        they last as long as the selected part (``source_fps * num_frames / selected_count``).

    Raises:
        UserError: as :func:`read_frames`, and when ``start`` lies beyond the clip's end or the
            part holds fewer than 3 frames.
    """
    path = _existing(path)
    with _decoding(path):
        source = _open_source(path)
        # A container's duration spans all its streams, so it may overstate the video (found while
        # decoding, see _read_selection) but not understate it: a selection it rules out is refused now.
        if source.count is None:
            source.count_frames()
        frames = _read_selection(path, source, num_frames, start, duration)
    return Clip(frames, source.fps * num_frames / _part_length(source.count, source.fps, start, duration))


def source_positions(
    path: str | os.PathLike, num_frames: int, start: float = 0.0, duration: float | None = None
) -> tuple[np.ndarray, int]:
    """Which source frames :func:`read_clip` keeps, without decoding them: ``(indices, count)``, the
    indices ``(num_frames,)`` and the clip's frame count (from its metadata; counted when it states none).
    What a per-frame companion of the clip (a subject mask) is matched against."""
    path = _existing(path)
    with _decoding(path):
        source = _open_source(path)
        if source.count is None:
            source.count_frames()
    return selected_indices(source.count, source.fps, num_frames, start, duration, str(path)), source.count


def selected_indices(
    count: int, fps: float, num_frames: int, start: float = 0.0, duration: float | None = None,
    name: str = "the clip",
) -> np.ndarray:
    """Source frame indices kept from a clip of ``count`` frames at ``fps``: the frames whose time
    ``i / fps`` lies in ``[start, start + duration)``, resampled uniformly as :func:`resample_frames`.

    Returns:
        int64 ``(num_frames,)``, non-decreasing.

    Raises:
        UserError: ``start`` is at or beyond the clip's end, or the part holds fewer than 3 frames.
    """
    first, stop = selection_range(count, fps, start, duration, name)
    if stop - first < MIN_FRAMES:
        if start == 0 and duration is None:
            raise UserError(
                f"input video {name} needs at least {MIN_FRAMES} frames, got {count} — use a longer clip"
            )
        part = f"--start {start:g}" + ("" if duration is None else f" --duration {duration:g}")
        raise UserError(
            f"{part} selects {stop - first} frame(s) of {name} ({fps:g} fps); at least {MIN_FRAMES} are "
            "needed — select a longer part"
        )
    return first + np.round(np.linspace(0, stop - first - 1, num_frames)).astype(np.int64)


def selection_range(
    count: int, fps: float, start: float = 0.0, duration: float | None = None, name: str = "the clip"
) -> tuple[int, int]:
    """``(first, stop)``: the source frames ``first <= i < stop`` whose time ``i / fps`` lies in
    ``[start, start + duration)`` (``duration`` ``None``: to the end), clipped to the clip."""
    # Rounding before ceil: 0.3 s at 10 fps is frame 3, not 3.0000000000000004 -> 4.
    first = math.ceil(round(start * fps, 6))
    stop = count if duration is None else min(count, math.ceil(round((start + duration) * fps, 6)))
    if first >= count:
        raise UserError(
            f"--start {start:g} is beyond the end of {name}, which lasts {count / fps:.3g} s ({count} frames "
            f"at {fps:g} fps) — choose a start below {count / fps:.3g}"
        )
    return first, stop


def select_frames(
    frames: np.ndarray, fps: float, num_frames: int, start: float = 0.0, duration: float | None = None
) -> tuple[np.ndarray, float]:
    """:func:`read_clip` for a clip already in memory: ``(F, ...)`` -> ``(num_frames, ...)`` and the
    fps that keeps the selected part's duration."""
    index = selected_indices(len(frames), fps, num_frames, start, duration, "the video")
    return frames[index], fps * num_frames / _part_length(len(frames), fps, start, duration)


def _part_length(count: int, fps: float, start: float, duration: float | None) -> int:
    """How many source frames the part ``[start, start + duration)`` holds."""
    first, stop = selection_range(count, fps, start, duration)
    return stop - first


def _read_selection(
    path: Path, source: "_Source", num_frames: int, start: float, duration: float | None
) -> np.ndarray:
    """Decode ``source`` once, keeping only the frames :func:`selected_indices` names; a second pass
    when decoding finds another frame count than the container stated. Returns uint8 (N, H, W, 3)."""
    for _ in range(2):
        index = selected_indices(source.count, source.fps, num_frames, start, duration, str(path))
        wanted = sorted(set(index.tolist()))
        stated, count = not source.exact, source.count
        # A stop taken from a stated frame count is only known once the decoder reaches the end.
        stop_from_count = stated and selection_range(count, source.fps, start, duration)[1] == count
        kept = source.pick(wanted, read_to_end=stop_from_count)
        if not source.exact or source.count == count and len(kept) == len(wanted):
            break  # stopped after the last wanted frame, or the stated count was right
    missing = [i for i in wanted if i not in kept]
    if missing:
        raise UserError(f"could not read frame {missing[0]} of {path}: the decoder ended early — re-encode the clip")
    _check_same_size(path, [kept[i] for i in wanted], source.names(wanted))
    return np.stack([kept[i] for i in index.tolist()])


class _Source:
    """A clip's frames, decoded lazily. ``count`` (``None`` when unknown) and ``fps`` come from
    metadata; ``exact`` says whether ``count`` was counted rather than stated by a container."""

    def __init__(self, path: Path, count: int | None, fps: float, exact: bool) -> None:
        self.path, self.count, self.fps, self.exact = path, count, fps, exact

    def frames(self) -> Iterator[np.ndarray]:
        """Every frame in order, as decoded (any dtype and channel layout)."""
        raise NotImplementedError

    def names(self, indices: Iterable[int]) -> list[str]:
        """How error messages name these frames."""
        return [f"frame {i}" for i in indices]

    def count_frames(self) -> None:
        """Decode to the end (keeping nothing) to learn the true frame count."""
        self.count, self.exact = sum(1 for _ in self.frames()), True

    def pick(self, wanted: list[int], read_to_end: bool = False) -> dict[int, np.ndarray]:
        """Frames ``wanted`` (sorted) as RGB uint8, decoding in order and dropping the rest; stops
        after the last one unless ``read_to_end``, where the decoder's frame count replaces ``count``."""
        kept: dict[int, np.ndarray] = {}
        budget = _FrameBudget(self.path, _KEPT_ADVICE)
        targets, last, seen = set(wanted), wanted[-1], 0
        frames = self.frames()
        try:
            for i, frame in enumerate(frames):
                seen = i + 1
                if i in targets:
                    kept[i] = budget.add(_to_rgb(frame))
                if i >= last and not read_to_end:
                    return kept
        finally:
            frames.close()  # ends the decoder (an ffmpeg subprocess) when we stop early
        self.count, self.exact = seen, True
        return kept


class _FfmpegSource(_Source):
    """A video file through imageio-ffmpeg directly: it probes the content rather than trusting the
    suffix, and closing its generator reliably ends the ffmpeg subprocess (imageio's v3 wrapper
    leaves the reader open)."""

    def __init__(self, path: Path) -> None:
        stream = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        try:
            meta = next(stream)
        finally:
            stream.close()
        fps, seconds = meta.get("fps"), meta.get("duration")
        fps = float(fps) if _positive_number(fps) else DEFAULT_FPS
        count = round(seconds * fps) if _positive_number(seconds) else None
        super().__init__(path, count, fps, exact=False)

    def frames(self) -> Iterator[np.ndarray]:
        stream = imageio_ffmpeg.read_frames(str(self.path), pix_fmt="rgb24")
        try:
            width, height = next(stream)["size"]  # size after ffmpeg auto-rotates phone videos
            for buffer in stream:
                yield np.frombuffer(buffer, np.uint8).reshape(height, width, 3)
        finally:
            stream.close()


class _PillowSource(_Source):
    """A GIF (or animated image) through Pillow; palette and RGBA frames come out as RGB."""

    def __init__(self, path: Path) -> None:
        with Image.open(path) as image:
            count = getattr(image, "n_frames", 1)
            # GIF frames each carry their own delay (ms); 0 means "unspecified" to most players. The
            # clip is taken as evenly timed at their mean, for the selection as for the output fps.
            durations = []
            for i in range(count):
                image.seek(i)
                durations.append(image.info.get("duration") or 0)
        durations = [d for d in durations if isinstance(d, (int, float)) and d > 0]
        fps = 1000.0 / float(np.mean(durations)) if durations else DEFAULT_FPS
        super().__init__(path, count, fps, exact=True)

    def frames(self) -> Iterator[np.ndarray]:
        with iio.imopen(self.path, "r", plugin="pillow") as file:
            yield from file.iter()


class _FolderSource(_Source):
    """A directory of images in natural order, at ``DEFAULT_FPS``; only the picked images are read."""

    def __init__(self, path: Path) -> None:
        self.files = sorted(
            (p for p in path.iterdir()
             if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")),
            key=_natural_key,
        )
        if not self.files:
            raise UserError(
                f"no images found in {path} — put frames there as {'/'.join(IMAGE_EXTENSIONS)} files"
            )
        super().__init__(path, len(self.files), DEFAULT_FPS, exact=True)

    def frames(self) -> Iterator[np.ndarray]:
        return (_read_image(p) for p in self.files)

    def names(self, indices: Iterable[int]) -> list[str]:
        return [self.files[i].name for i in indices]

    def pick(self, wanted: list[int], read_to_end: bool = False) -> dict[int, np.ndarray]:
        budget = _FrameBudget(self.path, _KEPT_ADVICE)
        return {i: budget.add(_to_rgb(_read_image(self.files[i]))) for i in wanted}


def _open_source(path: Path) -> _Source:
    """The reader for ``path``: image folder, Pillow (GIFs, images) or ffmpeg (everything else)."""
    if path.is_dir():
        return _FolderSource(path)
    if path.suffix.lower() == ".gif" or path.suffix.lower() in IMAGE_EXTENSIONS:
        return _PillowSource(path)
    return _FfmpegSource(path)


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"input video not found: {path} — check the path")
    return path


@contextlib.contextmanager
def _decoding(path: Path) -> Iterator[None]:
    """Turn a decoder's exception into a one-line :class:`UserError`."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # decoders raise OSError, ValueError, struct.error, ... for junk
        raise UserError(
            f"could not read {path} as a video ({_first_line(exc)}) — "
            f"use a {'/'.join(VIDEO_EXTENSIONS)} file or a directory of images"
        ) from exc


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


_KEPT_ADVICE = "use fewer --frames or a smaller clip"


class _FrameBudget:
    """Counts the bytes of the frames kept, stopping before RAM runs out."""

    def __init__(self, path: Path, advice: str = "trim it to a few seconds, e.g. ffmpeg -i in.mp4 -t 4 out.mp4") -> None:
        self.path, self.advice, self.total = path, advice, 0

    def add(self, frame: np.ndarray) -> np.ndarray:
        self.total += frame.nbytes
        if self.total > MAX_DECODED_BYTES:
            raise UserError(
                f"input video {self.path} is too long to load (over {MAX_DECODED_BYTES >> 30} GiB "
                f"decoded) — {self.advice}"
            )
        return frame


def _collect_frames(path: Path, frames: Iterable[np.ndarray]) -> list[np.ndarray]:
    """Convert frames to RGB uint8 while decoding, stopping before RAM runs out."""
    budget = _FrameBudget(path)
    return [budget.add(_to_rgb(frame)) for frame in frames]


def _read_image(path: Path) -> np.ndarray:
    """One image file as an array, with EXIF rotation applied (phone photos rely on it)."""
    try:
        return iio.imread(path, plugin="pillow", index=0, rotate=True)
    except Exception as exc:
        raise UserError(
            f"could not read image {path} ({_first_line(exc)}) — remove or replace that file"
        ) from exc


def _natural_key(path: Path) -> list:
    """Sort key where digit runs compare as numbers, so ``frame2`` < ``frame10``."""
    parts = re.split(r"(\d+)", path.name.lower())
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts]


def _check_same_size(path: Path, frames: list[np.ndarray], names: list[str]) -> None:
    """Frames must stack into one array; name the first one that does not fit."""
    h, w = frames[0].shape[:2] if frames else (0, 0)
    for frame, name in zip(frames, names):
        if frame.shape[:2] != (h, w):
            raise UserError(
                f"frames in {path} differ in size: {names[0]} is {w}x{h} but {name} is "
                f"{frame.shape[1]}x{frame.shape[0]} — resize them all to one size"
            )


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """Any decoded image (H, W), (H, W, 1|2|3|4), any dtype -> uint8 (H, W, 3).

    Transparent pixels are composited over black: their stored colour is often garbage.
    """
    image = _to_uint8_range(np.asarray(image))
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"unsupported image shape {image.shape}")
    if image.shape[-1] in (2, 4):  # gray+alpha or RGBA
        alpha = image[..., -1:].astype(np.float32) / 255.0
        image = np.round(image[..., :-1] * alpha).astype(np.uint8)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image)


def _to_uint8_range(image: np.ndarray) -> np.ndarray:
    """Map 16-bit / float / bool images onto uint8 so every source ends up comparable."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.integer):
        top = 65535 if image.dtype == np.uint16 or image.max(initial=0) > 255 else 255
        return np.round(np.clip(image, 0, top) * (255.0 / top)).astype(np.uint8)
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception message, short enough for a one-line error."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 120 else line[:117] + "..."


# --------------------------------------------------------------------------------------------
# preprocessing


def resample_frames(frames: np.ndarray, num_frames: int) -> np.ndarray:
    """Pick ``num_frames`` frames spread uniformly over the clip (nearest index).

    Indices are ``round(linspace(0, F - 1, num_frames))``: the first and last frames are always
    kept; a clip shorter than ``num_frames`` repeats frames instead of failing.

    Args:
        frames: ``(F, ...)`` with ``F >= 1``.
        num_frames: output length, ``>= 1``.

    Returns:
        ``(num_frames, ...)``, same dtype.
    """
    if num_frames < 1:
        raise UserError(f"number of frames must be at least 1, got {num_frames} — raise it")
    if len(frames) == 0:
        raise ValueError("cannot resample an empty clip")
    index = np.round(np.linspace(0, len(frames) - 1, num_frames)).astype(np.int64)
    return frames[index]


def resize_and_crop(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Resize a clip to cover ``height x width``, then center-crop; scale to ``[-1, 1]``.

    Aspect-ratio policy: the frame is scaled (preserving its aspect ratio) by the smallest factor
    that makes it COVER the target, then the excess is center-cropped. Nothing is stretched and
    nothing is padded; when the aspect ratios differ, the borders of the relatively longer side
    are cut off (e.g. a 16:9 clip to a square loses its left and right edges).

    Args:
        frames: uint8 ``(F, H, W, 3)``.
        height, width: target size in pixels.

    Returns:
        float32 ``(F, 3, height, width)`` in ``[-1, 1]``.
    """
    if height < 1 or width < 1:
        raise UserError(f"video size must be positive, got {width}x{height} — fix the size")
    # astype copies, so read-only inputs (e.g. decoded buffers) are fine for torch.
    video = torch.from_numpy(np.asarray(frames).astype(np.float32)).permute(0, 3, 1, 2)
    return (cover_and_crop(video, height, width) / 127.5 - 1.0).clamp_(-1.0, 1.0).contiguous()


def cover_and_crop(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Float frames ``(F, C, H, W)`` scaled, aspect ratio kept, by the smallest factor that makes them cover
    ``height x width`` (bilinear, antialiased), then centre-cropped: ``(F, C, height, width)``. The policy of
    :func:`resize_and_crop`, shared by everything that must line up with the input (a subject mask)."""
    src_h, src_w = video.shape[-2:]
    scale = max(height / src_h, width / src_w)
    # max() guards against rounding just below the target on the covering side.
    new_h, new_w = max(height, round(src_h * scale)), max(width, round(src_w * scale))
    if (new_h, new_w) != (src_h, src_w):
        # antialias only changes the result when downscaling, where it prevents aliasing.
        video = F.interpolate(
            video, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return video[:, :, top : top + height, left : left + width]


def load_video(
    path: str | os.PathLike, num_frames: int, height: int, width: int, start: float = 0.0,
    duration: float | None = None,
) -> tuple[torch.Tensor, float]:
    """Read the part ``[start, start + duration)`` of a clip (:func:`read_clip`), resampled and resized
    for the model.

    Returns:
        ``(video, fps)``: float32 ``(num_frames, 3, height, width)`` in ``[-1, 1]``, and the frame
        rate at which the resampled clip lasts as long as the selected part
        (``source_fps * num_frames / selected_count``), so an output written at that rate moves at the
        source's speed.
    """
    frames, fps = read_clip(path, num_frames, start, duration)
    return resize_and_crop(frames, height, width), fps


# --------------------------------------------------------------------------------------------
# writing


def to_uint8(frames) -> np.ndarray:
    """Any clip -> uint8 ``(F, H, W, 3)``.

    Args:
        frames: torch tensor or numpy array, ``(F, H, W, 3)`` or ``(F, 3, H, W)``; float in
            ``[0, 1]`` (clamped) or uint8. Channels-last wins when both layouts fit.
    """
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        frames = (frames if frames.dtype == torch.uint8 else frames.float()).numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or 3 not in (frames.shape[-1], frames.shape[1]):
        raise ValueError(f"expected (F, H, W, 3) or (F, 3, H, W), got shape {frames.shape}")
    if frames.shape[-1] != 3:
        frames = frames.transpose(0, 2, 3, 1)
    if frames.dtype != np.uint8:
        if not np.issubdtype(frames.dtype, np.floating):
            raise ValueError(f"expected float in [0, 1] or uint8, got {frames.dtype}")
        frames = np.round(np.clip(np.nan_to_num(frames), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(frames)


def export_to_video(frames, output_path: str | os.PathLike, fps: float = DEFAULT_FPS) -> str:
    """Write a clip to ``.mp4`` (H.264), ``.gif`` (loops forever) or ``.webm`` (VP9), atomically.

    The clip goes to a hidden temporary file next to the output (``.<name>.tmp-<random><suffix>``,
    keeping the suffix so the encoder is picked by extension) and is moved over the output only
    once complete, so an interrupted or failed write never leaves a truncated file nor touches an
    existing one.

    MP4/WebM use yuv420p for compatibility with every player, which needs even sizes: odd
    heights/widths get one replicated edge row/column rather than being rescaled by imageio
    (``macro_block_size=1`` turns its rescaling off). GIFs use one 256-colour palette per frame,
    and Pillow merges identical consecutive frames into one longer frame (playback is unchanged,
    the frame count read back is not).

    Args:
        frames: anything :func:`to_uint8` accepts, or a list of ``(H, W, 3)`` arrays / PIL images.
        output_path: destination; see :func:`check_output_path`.
        fps: playback rate.

    Returns:
        The output path as a string.
    """
    path = check_output_path(output_path)
    fps = _positive_fps(fps)
    video = to_uint8(_stack(frames))
    try:
        with atomic_write(path, needed=video.nbytes // 20) as tmp:  # H.264 / VP9 / GIF: well under 1/20 of the raw frames
            _write(video, tmp, fps)
    except Exception as exc:
        if not isinstance(exc, UserError):
            raise UserError(
                f"could not write {path} ({_first_line(exc)}) — check free disk space and "
                "permissions"
            ) from exc
        raise
    return str(path)


def _positive_fps(fps) -> float:
    """fps as a finite positive float (numpy/torch scalars welcome)."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"fps must be a positive number, got {fps} — fix the fps")
    return value


def _stack(frames) -> np.ndarray | torch.Tensor:
    """Lists of frames (diffusers' output style) -> one array; arrays pass through."""
    if not isinstance(frames, (list, tuple)):
        return frames
    return np.stack([np.asarray(f.convert("RGB") if hasattr(f, "convert") else f) for f in frames])


def _write(video: np.ndarray, path: Path, fps: float) -> None:
    """Encode uint8 (F, H, W, 3) to ``path``, choosing the encoder from its suffix."""
    suffix = path.suffix.lower()
    if suffix == ".gif":
        # GIF delays are whole centiseconds; loop=0 means forever.
        iio.imwrite(path, video, plugin="pillow", duration=1000.0 / fps, loop=0)
        return
    codec, params = {
        ".mp4": ("libx264", ["-crf", "12", "-preset", "medium", "-movflags", "+faststart"]),
        ".webm": ("libvpx-vp9", ["-crf", "24", "-b:v", "0", "-deadline", "good", "-row-mt", "1"]),
    }[suffix]
    iio.imwrite(
        path, _pad_to_even(video), plugin="FFMPEG", fps=fps, codec=codec, quality=None,
        pixelformat="yuv420p", macro_block_size=1, output_params=params,
        ffmpeg_log_level="error",
    )


def _pad_to_even(video: np.ndarray) -> np.ndarray:
    """uint8 (F, H, W, 3) -> (F, H', W', 3) with even H', W' by replicating the last row/col."""
    pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2
    if not (pad_h or pad_w):
        return video
    return np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def check_output_path(
    output_path: str | os.PathLike, input_path: str | os.PathLike | None = None
) -> Path:
    """Validate where a clip will be written, before any expensive work. Creates nothing: a missing
    folder is created by the write itself (:func:`~sma_guidance.atomic.atomic_write`).

    Raises:
        UserError: the output is the input file (however spelled), is a directory, has an
            unsupported extension, or its folder cannot be created or written to.

    Returns:
        The output path (user ``~`` expanded).
    """
    out = Path(output_path).expanduser()
    if input_path is not None and _same_file(out, Path(input_path).expanduser()):
        raise UserError(
            f"output path {out} is the input video — choose a different output file"
        )
    if out.is_dir():
        raise UserError(f"output path {out} is a directory — give a file name such as out.mp4")
    if out.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise UserError(
            f"unsupported output format '{out.suffix or '(none)'}' for {out} — "
            f"use one of {', '.join(OUTPUT_EXTENSIONS)}"
        )
    check_writable_folder(out)
    return out


def _same_file(a: Path, b: Path) -> bool:
    """True when two paths name one file: same resolved path, or same inode (hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# comparison clips


def side_by_side(*videos) -> np.ndarray:
    """Concatenate clips left to right, e.g. ``(input | output)``.

    Every clip is matched to the first: frame counts via :func:`resample_frames`, heights by
    resizing with the aspect ratio kept (widths may then differ).

    Args:
        videos: anything :func:`to_uint8` accepts, typically uint8 ``(F, H, W, 3)``.

    Returns:
        uint8 ``(F0, H0, sum of widths, 3)``.
    """
    if not videos:
        raise ValueError("side_by_side needs at least one video")
    clips = [to_uint8(v) for v in videos]
    num_frames, height = clips[0].shape[:2]
    return np.concatenate(
        [_resize_height(resample_frames(c, num_frames), height) for c in clips], axis=2
    )


def _resize_height(video: np.ndarray, height: int) -> np.ndarray:
    """uint8 (F, H, W, 3) -> uint8 (F, height, W * height / H, 3), aspect ratio kept."""
    src_h, src_w = video.shape[1:3]
    if src_h == height:
        return video
    width = max(1, round(src_w * height / src_h))
    x = torch.from_numpy(video.astype(np.float32)).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def frame_strip(*videos, scale: int = 1, gap: int = 2, frames: int | None = None) -> np.ndarray:
    """One picture of whole clips: a row per clip (e.g. input over output), frames left to right.

    Every clip is matched to the first as in :func:`side_by_side` (frame count, height); ``frames``
    keeps that many frames spread evenly over the clip (default all); ``scale`` enlarges each pixel
    (nearest neighbour, so small clips stay sharp); ``gap`` white pixels separate the frames.

    Returns:
        uint8 ``(rows · H · scale + gaps, columns · W · scale + gaps, 3)``.
    """
    if not videos:
        raise ValueError("frame_strip needs at least one video")
    if scale < 1 or gap < 0:
        raise ValueError(f"scale must be >= 1 and gap >= 0, got {scale} and {gap}")
    clips = [to_uint8(v) for v in videos]
    count, height = clips[0].shape[:2]
    if frames is not None:
        clips[0] = resample_frames(clips[0], frames)
        count = frames
    rows = [_resize_height(resample_frames(c, count), height) for c in clips]
    rows = [r.repeat(scale, axis=1).repeat(scale, axis=2) for r in rows]
    width = max(r.shape[2] for r in rows)
    cell_h, cell_w = rows[0].shape[1], width
    image = np.full((len(rows) * cell_h + (len(rows) - 1) * gap, count * cell_w + (count - 1) * gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, frame in enumerate(row):
            top, left = i * (cell_h + gap), j * (cell_w + gap)
            image[top:top + frame.shape[0], left:left + frame.shape[1]] = frame
    return image


def save_image(image: np.ndarray, output_path: str | os.PathLike) -> str:
    """Write a uint8 ``(H, W, 3)`` picture (``.png``), atomically; nothing is left on failure."""
    path = Path(output_path).expanduser()
    if path.suffix.lower() != ".png":
        raise UserError(f"a picture must be written as .png, got {path}")
    check_writable_folder(path)
    with atomic_write(path, needed=np.asarray(image).nbytes) as tmp:
        iio.imwrite(tmp, np.ascontiguousarray(image), extension=".png")
    return str(path)
