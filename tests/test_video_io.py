"""Tests for sma_guidance.video_io on small synthetic clips (a white square moving on black)."""

import json
import math
import os
import tracemalloc
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from sma_guidance import video_io
from sma_guidance.atomic import write_json as write_run_record
from sma_guidance.errors import UserError
from sma_guidance.video_io import (
    check_output_path,
    export_to_video,
    frame_strip,
    load_video,
    read_clip,
    read_frames,
    resample_frames,
    resize_and_crop,
    save_image,
    side_by_side,
    to_uint8,
)


def moving_square(num_frames=10, height=48, width=64, size=12):
    """uint8 (F, H, W, 3): a white square stepping right by 4 px per frame."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        frames[i, 18 : 18 + size, 4 * i : 4 * i + size] = 255
    return frames


def square_column(frame):
    """Left edge of the white square: the first column holding a bright pixel."""
    return int(np.argmax(frame.max(axis=(0, 2)) > 127))


NOISE = np.random.default_rng(0).bytes(4096)


def no_temp_files(directory):
    return not [p for p in os.listdir(directory) if ".tmp-" in p]


# ---------------------------------------------------------------- reading


def test_mp4_round_trip(tmp_path):
    clip = moving_square()
    path = export_to_video(clip, tmp_path / "clip.mp4", fps=12)
    frames, fps = read_frames(path)
    assert frames.shape == clip.shape and frames.dtype == np.uint8
    assert fps == pytest.approx(12.0)
    assert np.abs(frames.astype(int) - clip).mean() < 8
    assert no_temp_files(tmp_path)


def test_mp4_odd_size_is_padded_to_even(tmp_path):
    clip = moving_square(height=47, width=63)
    frames, _ = read_frames(export_to_video(clip, tmp_path / "odd.mp4"))
    assert frames.shape == (10, 48, 64, 3)
    assert np.abs(frames[:, :47, :63].astype(int) - clip).mean() < 8


def test_gif_round_trip(tmp_path):
    clip = moving_square()
    path = export_to_video(clip, tmp_path / "clip.gif", fps=10)
    frames, fps = read_frames(path)
    assert frames.shape == clip.shape
    assert np.abs(frames.astype(int) - clip).mean() < 2
    assert fps == pytest.approx(10.0)
    assert iio.immeta(path)["loop"] == 0


def test_gif_rgba_frames_and_per_frame_durations(tmp_path):
    images = []
    for i in range(4):
        rgba = np.zeros((20, 30, 4), np.uint8)
        rgba[5:15, 5 * i : 5 * i + 5] = 255
        images.append(Image.fromarray(rgba, "RGBA"))
    path = tmp_path / "alpha.gif"
    images[0].save(  # disposal=2: each frame starts from a cleared canvas
        path, save_all=True, append_images=images[1:], duration=[100, 200, 100, 200], loop=0,
        disposal=2,
    )
    frames, fps = read_frames(path)
    assert frames.shape == (4, 20, 30, 3)
    assert [square_column(f) for f in frames] == [0, 5, 10, 15]
    assert fps == pytest.approx(1000 / 150)


def test_image_dir_natural_order_and_mode_conversion(tmp_path):
    clip = moving_square(num_frames=12)
    for i, frame in enumerate(clip):
        image = Image.fromarray(frame)
        image = image.convert("L") if i == 3 else image.convert("RGBA") if i == 4 else image
        image.save(tmp_path / f"frame_{i}.png")  # frame_2 < frame_10 only under natural sort
    (tmp_path / "notes.txt").write_text("not a frame")
    frames, fps = read_frames(tmp_path)
    assert frames.shape == clip.shape
    assert [square_column(f) for f in frames] == [4 * i for i in range(12)]
    assert np.array_equal(frames, clip)
    assert fps == video_io.DEFAULT_FPS


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.mp4", "not found"),
        (lambda d: _write_bytes(d / "text.mp4", b"hello, I am text\n"), "could not read"),
        (lambda d: _write_bytes(d / "noise.mp4", NOISE), "could not read"),
        (lambda d: _write_bytes(d / "empty.gif", b""), "could not read"),
        (lambda d: _mkdir(d / "empty"), "no images"),
        (lambda d: _write_bytes(_mkdir(d / "junk") / "a.txt", b"x").parent, "no images"),
    ],
)
@pytest.mark.parametrize("reader", [read_frames, video_io.check_readable])
def test_read_errors_are_one_line_user_errors(tmp_path, make, message, reader):
    with pytest.raises(UserError, match=message) as info:
        reader(make(tmp_path))
    assert "\n" not in str(info.value)


def test_check_readable_passes_a_real_clip_and_folder(tmp_path):
    video_io.check_readable(export_to_video(moving_square(num_frames=4), tmp_path / "clip.mp4"))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "0.png")
    video_io.check_readable(tmp_path)


def test_too_few_frames(tmp_path):
    path = export_to_video(moving_square(num_frames=2), tmp_path / "short.gif")
    with pytest.raises(UserError, match="needs at least 3 frames, got 2"):
        read_frames(path)


def test_image_dir_with_mixed_sizes(tmp_path):
    for i, (h, w) in enumerate([(48, 64), (48, 64), (40, 64)]):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(UserError, match="differ in size") as info:
        read_frames(tmp_path)
    assert "\n" not in str(info.value)


def _write_bytes(path, data):
    path.write_bytes(data)
    return path


def _mkdir(path):
    path.mkdir()
    return path


# ---------------------------------------------------------------- preprocessing


def test_resample_downsamples_by_nearest_uniform_index():
    frames = np.arange(10)
    assert resample_frames(frames, 4).tolist() == [0, 3, 6, 9]
    assert resample_frames(frames, 5).tolist() == [0, 2, 4, 7, 9]  # 0, 2.25, 4.5, 6.75, 9


def test_resample_repeats_frames_of_short_clips():
    # linspace(0, 2, 8) = 0, .29, .57, .86, 1.14, 1.43, 1.71, 2
    assert resample_frames(np.arange(3), 8).tolist() == [0, 0, 1, 1, 1, 1, 2, 2]
    assert resample_frames(np.arange(3), 1).tolist() == [0]
    with pytest.raises(UserError):
        resample_frames(np.arange(3), 0)


def test_resize_and_crop_shape_and_range():
    out = resize_and_crop(moving_square(), 32, 40)
    assert out.shape == (10, 3, 32, 40) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    assert out.min() == -1 and out.max() == 1


def test_resize_and_crop_keeps_constant_color():
    frames = np.full((3, 100, 200, 3), (10, 128, 250), np.uint8)
    out = resize_and_crop(frames, 64, 64)
    expected = torch.tensor([10, 128, 250]).float() / 127.5 - 1
    assert torch.allclose(out, expected.view(1, 3, 1, 1).expand_as(out), atol=1e-5)


def test_resize_and_crop_covers_then_center_crops():
    # 100x200: red left band and blue right band, each 40 px wide; green middle.
    frames = np.zeros((3, 100, 200, 3), np.uint8)
    frames[:, :, :40] = (255, 0, 0)
    frames[:, :, 40:160] = (0, 255, 0)
    frames[:, :, 160:] = (0, 0, 255)
    # Scaled to 64x128 (bands end at column 25.6 and start at 102.4); columns 32..95 are kept.
    out = resize_and_crop(frames, 64, 64)
    assert out.shape == (3, 3, 64, 64)
    green = torch.tensor([-1.0, 1.0, -1.0]).view(1, 3, 1, 1)
    assert torch.allclose(out, green.expand_as(out), atol=1e-3)  # bands cropped, not squeezed


def test_resize_and_crop_upscales_without_stretching():
    frames = np.zeros((3, 10, 10, 3), np.uint8)
    frames[:, :, 5:] = 255
    out = resize_and_crop(frames, 20, 40)  # covers as 40x40, keeps rows 10..29
    assert out.shape == (3, 3, 20, 40)
    assert (out[..., :18] < 0).all() and (out[..., 22:] > 0).all()


def test_load_video(tmp_path):
    path = export_to_video(moving_square(), tmp_path / "clip.gif", fps=10)
    video, fps = load_video(path, num_frames=5, height=32, width=32)
    assert video.shape == (5, 3, 32, 32)
    assert video.min() >= -1 and video.max() <= 1
    assert fps == pytest.approx(10 * 5 / 10)  # same duration as the source


# ---------------------------------------------------------------- writing


def test_to_uint8_layouts_and_clamping():
    clip = moving_square(num_frames=3)
    unit = clip.astype(np.float32) / 255
    assert np.array_equal(to_uint8(unit), clip)
    assert np.array_equal(to_uint8(torch.from_numpy(unit).permute(0, 3, 1, 2)), clip)
    assert np.array_equal(to_uint8(torch.from_numpy(clip)), clip)
    assert to_uint8(np.full((1, 4, 4, 3), 2.0)).max() == 255
    assert to_uint8(np.full((1, 3, 4, 4), -1.0)).max() == 0
    with pytest.raises(ValueError):
        to_uint8(np.zeros((4, 4, 3)))


def test_export_accepts_list_of_frames(tmp_path):
    clip = moving_square()
    path = export_to_video([Image.fromarray(f) for f in clip], tmp_path / "list.gif")
    assert read_frames(path)[0].shape == clip.shape


def test_export_is_atomic_on_failure(tmp_path, monkeypatch):
    output = tmp_path / "out.mp4"
    output.write_bytes(b"previous result")

    def failing_writer(video, path, fps):
        path.write_bytes(b"half a video")  # the encoder got partway before dying
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(video_io, "_write", failing_writer)
    with pytest.raises(UserError, match="could not write"):
        export_to_video(moving_square(), output)
    assert output.read_bytes() == b"previous result"
    assert no_temp_files(tmp_path)


def test_export_replaces_existing_output(tmp_path):
    output = tmp_path / "out.mp4"
    output.write_bytes(b"previous result")
    assert export_to_video(moving_square(), output) == str(output)
    assert read_frames(output)[0].shape == (10, 48, 64, 3)
    assert no_temp_files(tmp_path)


def test_check_output_path_accepts_a_fresh_file(tmp_path):
    assert check_output_path(tmp_path / "out.mp4", tmp_path / "in.mp4") == tmp_path / "out.mp4"
    assert not (tmp_path / "out.mp4").exists()


def test_check_output_path_refuses_the_input(tmp_path, monkeypatch):
    export_to_video(moving_square(), tmp_path / "clip.mp4")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    for spelling in ["clip.mp4", "./clip.mp4", "sub/../clip.mp4", str(tmp_path / "clip.mp4")]:
        with pytest.raises(UserError, match="is the input"):
            check_output_path(spelling, "clip.mp4")
    os.link("clip.mp4", "hardlink.mp4")
    with pytest.raises(UserError, match="is the input"):
        check_output_path("hardlink.mp4", "clip.mp4")


@pytest.mark.parametrize(
    "name, message",
    [("out.avi", "unsupported output format"), ("out", "unsupported output format"),
     ("missing/out.avi", "unsupported output format")],
)
def test_check_output_path_errors(tmp_path, name, message):
    with pytest.raises(UserError, match=message) as info:
        check_output_path(tmp_path / name)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "missing").exists()


def test_check_output_path_accepts_missing_folders_and_creates_nothing(tmp_path):
    output = tmp_path / "new" / "deeper" / "out.mp4"
    assert check_output_path(output) == output
    assert list(tmp_path.iterdir()) == []


def test_check_output_path_refuses_a_folder_under_a_file(tmp_path):
    (tmp_path / "notes").write_text("a file, not a folder\n")
    with pytest.raises(UserError, match="is a file") as info:
        check_output_path(tmp_path / "notes" / "sub" / "out.mp4")
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_writers_create_missing_folders(tmp_path):
    clip = moving_square()
    video = export_to_video(clip, tmp_path / "a" / "b" / "out.mp4", fps=12)
    assert read_frames(video)[0].shape == clip.shape
    picture = save_image(frame_strip(clip), tmp_path / "c" / "d" / "strip.png")
    assert iio.imread(picture).shape == frame_strip(clip).shape
    record = write_run_record(tmp_path / "e" / "f" / "run.json", {"fps": 12})
    assert json.loads(record.read_text()) == {"fps": 12}
    assert no_temp_files(tmp_path / "a" / "b") and no_temp_files(tmp_path / "c" / "d")


def test_a_failed_write_removes_the_folders_it_made(tmp_path, monkeypatch):
    (tmp_path / "kept").mkdir()

    def failing_writer(video, path, fps):
        path.write_bytes(b"half a video")
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(video_io, "_write", failing_writer)
    with pytest.raises(UserError, match="could not write"):
        export_to_video(moving_square(), tmp_path / "kept" / "new" / "deeper" / "out.mp4")
    assert list((tmp_path / "kept").iterdir()) == []  # the existing folder stays, the new ones go


def test_check_output_path_refuses_a_directory(tmp_path):
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(UserError, match="is a directory"):
        check_output_path(tmp_path / "dir.mp4")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions"
)
def test_check_output_path_refuses_read_only_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(UserError, match="not writable"):
            check_output_path(locked / "out.mp4")
    finally:
        locked.chmod(0o755)


def test_side_by_side_matches_frames_and_height():
    first = moving_square(num_frames=10, height=48, width=64)
    second = moving_square(num_frames=5, height=24, width=40)
    out = side_by_side(first, second)
    assert out.shape == (10, 48, 64 + 80, 3) and out.dtype == np.uint8
    assert np.array_equal(out[:, :, :64], first)
    assert side_by_side(first).shape == first.shape


def test_frame_strip_lays_clips_in_rows_and_frames_in_columns(tmp_path):
    from sma_guidance.video_io import frame_strip, save_image

    rng = np.random.default_rng(0)
    top = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    bottom = rng.integers(0, 256, (8, 6, 5, 3), dtype=np.uint8)  # resampled to 4 frames: 0, 2, 5, 7
    image = frame_strip(top, bottom, scale=2, gap=1)
    assert image.shape == (2 * 12 + 1, 4 * 10 + 3, 3)
    for j in range(4):
        left = j * 11
        np.testing.assert_array_equal(image[0:12:2, left:left + 10:2], top[j])
        np.testing.assert_array_equal(image[13:25:2, left:left + 10:2], bottom[[0, 2, 5, 7][j]])
    assert (image[12] == 255).all() and (image[:, 10] == 255).all()  # the gaps
    assert frame_strip(top, frames=2).shape == (6, 2 * 5 + 2, 3)
    path = save_image(image, tmp_path / "strip.png")
    import imageio.v3 as iio

    np.testing.assert_array_equal(iio.imread(path), image)
    with pytest.raises(UserError, match=r"\.png"):
        save_image(image, tmp_path / "strip.jpg")


# ---------------------------------------------------------------- selecting a part (--start, --duration)

BITS = 12  # frame indices up to 4095, one 16 x 16 block per bit


def numbered_frames(count, first=0):
    """uint8 (count, 64, 64, 3): frame i shows first + i in binary, white blocks for ones (codec-proof)."""
    frames = np.zeros((count, 64, 64, 3), np.uint8)
    for i in range(count):
        for bit in range(BITS):
            if (first + i) >> bit & 1:
                row, col = divmod(bit, 4)
                frames[i, 16 * row : 16 * row + 16, 16 * col : 16 * col + 16] = 255
    return frames


def frame_numbers(frames):
    """The indices that :func:`numbered_frames` drew, read back from decoded frames."""
    blocks = frames.mean(axis=-1).reshape(len(frames), 4, 16, 4, 16).mean(axis=(2, 4)).reshape(len(frames), 16)
    return [sum(1 << bit for bit in range(BITS) if block[bit] > 127) for block in blocks]


def expected_part(count, fps, num_frames, start, duration):
    """The source indices to keep, computed directly: the frames whose time i / fps lies in the
    window, then num_frames of them spread evenly (nearest, first and last kept)."""
    end = math.inf if duration is None else start + duration
    part = [i for i in range(count) if start - 1e-9 <= i / fps < end - 1e-9]
    return [part[round(k * (len(part) - 1) / (num_frames - 1))] for k in range(num_frames)], len(part)


def write_numbered(tmp_path, kind, count, fps):
    """A numbered clip as .mp4, .gif or a folder of PNGs (read at the default 8 fps)."""
    frames = numbered_frames(count)
    if kind == "folder":
        folder = tmp_path / "frames"
        folder.mkdir()
        for i, frame in enumerate(frames):
            iio.imwrite(folder / f"frame_{i}.png", frame)
        return folder, video_io.DEFAULT_FPS
    return Path(export_to_video(frames, tmp_path / f"clip.{kind}", fps=fps)), fps


@pytest.mark.parametrize("kind", ["mp4", "gif", "folder"])
@pytest.mark.parametrize("start, duration, num_frames", [
    (0.0, None, 8), (1.0, 2.0, 8), (0.3, 1.05, 5), (2.5, None, 12), (3.65, 10.0, 4),
])
def test_read_clip_keeps_the_frames_of_the_selected_part(tmp_path, kind, start, duration, num_frames):
    path, fps = write_numbered(tmp_path, kind, 40, 10.0)
    if kind == "folder" and start > 40 / fps:
        pytest.skip("the folder's 8 fps clip ends before this start")
    frames, out_fps = read_clip(path, num_frames, start=start, duration=duration)
    expected, part_count = expected_part(40, fps, num_frames, start, duration)
    assert frames.shape == (num_frames, 64, 64, 3)
    assert frame_numbers(frames) == expected
    assert out_fps == pytest.approx(fps * num_frames / part_count)  # the part's duration is kept


def test_an_image_folder_reads_only_the_chosen_images(tmp_path):
    folder, fps = write_numbered(tmp_path, "folder", 40, None)
    expected, _ = expected_part(40, fps, 4, 1.0, 2.0)
    for i in set(range(40)) - set(expected):
        (folder / f"frame_{i}.png").write_bytes(NOISE)  # unreadable, but never opened
    frames, _ = read_clip(folder, 4, start=1.0, duration=2.0)
    assert frame_numbers(frames) == expected
    with pytest.raises(UserError, match="could not read image"):
        read_frames(folder)


def test_select_frames_in_memory_matches_read_clip(tmp_path):
    clip = numbered_frames(40)
    frames, fps = video_io.select_frames(clip, 10.0, 6, start=0.3, duration=1.05)
    expected, part_count = expected_part(40, 10.0, 6, 0.3, 1.05)
    assert frame_numbers(frames) == expected and fps == pytest.approx(10.0 * 6 / part_count)


def test_a_container_longer_than_its_video_is_counted_by_decoding(tmp_path):
    """An audio track outlasting the video makes the container claim 5 s; the 3 s of video decide."""
    import subprocess

    import imageio_ffmpeg

    video = export_to_video(numbered_frames(30), tmp_path / "video.mp4", fps=10)
    path = tmp_path / "with_audio.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", video, "-f", "lavfi", "-i",
                    "anullsrc=r=8000:cl=mono", "-t", "5", "-c:v", "copy", "-c:a", "aac", str(path)], check=True)
    assert video_io._FfmpegSource(path).count == 50  # what the container states
    frames, fps = read_clip(path, 5)
    assert frame_numbers(frames) == expected_part(30, 10.0, 5, 0.0, None)[0]
    assert fps == pytest.approx(10.0 * 5 / 30)
    frames, _ = read_clip(path, 4, start=2.0, duration=2.0)  # the stated end lies beyond the video's
    assert frame_numbers(frames) == expected_part(30, 10.0, 4, 2.0, 2.0)[0]
    with pytest.raises(UserError, match=r"beyond the end of .* lasts 3 s \(30 frames at 10 fps\)"):
        read_clip(path, 4, start=4.0)


@pytest.mark.parametrize("start, duration, message", [
    (5.0, None, r"--start 5 is beyond the end of .*clip.mp4, which lasts 4 s \(40 frames at 10 fps\)"),
    (4.0, 1.0, "beyond the end"),
    (3.9, None, "selects 1 frame"),
    (1.0, 0.15, "selects 2 frame"),
])
def test_a_bad_selection_is_one_line(tmp_path, start, duration, message):
    path, _ = write_numbered(tmp_path, "mp4", 40, 10.0)
    with pytest.raises(UserError, match=message) as info:
        read_clip(path, 8, start=start, duration=duration)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def long_and_short_clips(tmp_path_factory):
    """A 3000-frame (2 minutes at 25 fps) and a 50-frame numbered 64x64 clip."""
    root = tmp_path_factory.mktemp("long")
    return (export_to_video(numbered_frames(3000), root / "long.mp4", fps=25),
            export_to_video(numbered_frames(50, first=1500), root / "short.mp4", fps=25))


def peak_traced_bytes(function):
    """Peak bytes Python and numpy allocated while ``function`` ran, and its result."""
    tracemalloc.start()
    try:
        result = function()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_reading_a_part_of_a_long_clip_holds_only_the_kept_frames(long_and_short_clips):
    long, short = long_and_short_clips
    read_clip(short, 8)  # one-time costs (imports, caches) are not the reader's to hold
    peak_long, (frames, fps) = peak_traced_bytes(lambda: read_clip(long, 8, start=60.0, duration=2.0))
    assert frame_numbers(frames) == expected_part(3000, 25.0, 8, 60.0, 2.0)[0]
    assert fps == pytest.approx(25.0 * 8 / 50)
    peak_short, (same, _) = peak_traced_bytes(lambda: read_clip(short, 8))
    assert frame_numbers(same) == frame_numbers(frames)  # the same 2 s, so the same work to keep
    whole_clip = 3000 * 64 * 64 * 3
    # 1500 frames are decoded before the part starts: none of them may stay in memory.
    assert peak_long < peak_short + 64 * 64 * 3 * 4, (peak_long, peak_short)
    assert peak_long < whole_clip / 20
