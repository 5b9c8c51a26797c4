"""The run: a configuration and an input clip to files — the output video, its record and what was asked
beside it. ``sma-guide run``, each job of ``sma-guide batch`` and the web page all call :func:`transfer`.

Every default comes from :class:`sma_guidance.config.SMAConfig`, overridden in turn by the model family's
preset (detected from the model's ``model_index.json``), the model's preset, a ``--config`` file and the
flags (:func:`build_config`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sma_guidance.atomic import check_writable_folder, write_json
from sma_guidance.config import SMAConfig
from sma_guidance.errors import UserError

# CLI flag -> SMAConfig field, for the flags whose names differ from the field.
FLAG_FIELDS = {
    "frames": "num_frames",
    "steps": "num_inference_steps",
}


@dataclass
class Written:
    """The files a run wrote: the video, its record (written last) and the extras that were asked for."""

    output: Path
    record: Path
    comparison: Path | None = None
    strip: Path | None = None
    adapter: Path | None = None


def default_output(input_path: Path) -> Path:
    base = input_path.name if input_path.is_dir() else input_path.stem
    return input_path.parent / f"{base or 'output'}.sma.mp4"


def comparison_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.side_by_side{output.suffix}")


def strip_path(output: Path) -> Path:
    return output.with_name(output.stem + ".strip.png")


def record_path(output: Path) -> Path:
    return output.with_suffix(".json")


def transfer(
    input_path: Path,
    prompt: str,
    output: Path | None,
    config_file: Path | None,
    save_adapter: Path | None,
    side_by_side: bool,
    quiet: bool,
    flags: dict[str, Any],
    pipelines: dict[tuple[str | None, ...], Any] | None = None,
    strip: bool = False,
    on_note: Callable[[str], None] | None = None,
) -> Written:
    """One run, config to files — what ``sma-guide run``, each job of ``batch`` and the web page do:
    checks, the model, the run, the files (the record last). ``pipelines`` caches loaded models by (model,
    motion adapter, device, dtype) across calls; ``on_note`` hears what the user should know (a fitted
    inversion count) unless ``quiet``."""
    # Checks that need no library first: a typo is reported at once, not after seconds of imports (torch;
    # build_config's family detection imports diffusers).
    if not prompt.strip():
        raise UserError("the prompt is empty; describe what the output should show")
    if not input_path.exists():
        raise UserError(f"input not found: {input_path} — check the path")
    from sma_guidance.video_io import check_output_path, check_readable, read_clip

    check_readable(input_path)  # junk is refused before build_config imports diffusers
    config = build_config(config_file, flags)
    # Decoded once, before the (slow) model load so that a bad part of the clip fails at once; read again
    # only when the loaded model's family asks for another part (a family its folder did not tell).
    selection = (config.num_frames, config.start, config.duration)
    clip = read_clip(input_path, *selection)
    subject = (config.height, config.width, config.mask, config.mask_box)  # what the mask was checked at
    mask = subject_frames(input_path, config, clip.frames.shape[1:3])
    output = check_output_path(output or default_output(input_path), input_path)
    record = check_output_path_record(record_path(output), input_path)
    comparison = check_output_path(comparison_path(output), input_path) if side_by_side else None
    picture = strip_path(output) if strip else None
    if config.adapter:
        from .finetune import MotionAdapter

        MotionAdapter.load(config.adapter)  # a missing or foreign file fails before the model loads
    if save_adapter is not None:
        check_adapter_path(save_adapter, config, input_path, output)

    from .pipeline_sma import SMAMotionTransferPipeline

    key = (config.model, config.motion_adapter, config.device, config.dtype)
    pipe = pipelines.get(key) if pipelines is not None else None
    if pipe is None:
        pipe = SMAMotionTransferPipeline.load(
            config.model, device=config.device, dtype=config.dtype, motion_adapter=config.motion_adapter
        )
        if pipelines is not None:
            pipelines[key] = pipe
    config = build_config(config_file, flags, family=pipe.backbone.name)  # the loaded model's family decides
    if (config.num_frames, config.start, config.duration) != selection:
        clip = read_clip(input_path, config.num_frames, config.start, config.duration)
    if (config.num_frames, config.start, config.duration) != selection or \
            (config.height, config.width, config.mask, config.mask_box) != subject:
        mask = subject_frames(input_path, config, clip.frames.shape[1:3])
    if not chosen("inversion_steps", config_file, flags):
        fitted = pipe.fit_inversion_steps(config)
        if fitted.inversion_steps != config.inversion_steps and not quiet and on_note is not None:
            on_note(f"note: {fitted.inversion_steps} inversion steps (the preset's {config.inversion_steps} do not pass "
                    f"through the {config.num_inference_steps} sampling steps)")
        config = fitted
    pipe.set_progress_bar_config(disable=quiet)
    try:
        result = pipe(video=clip, prompt=prompt, config=config, mask=mask)
    except Exception as error:
        if is_out_of_memory(error):
            raise UserError(out_of_memory_message(pipe, config)) from None
        raise
    written_files: list[Path] = []
    try:
        _write_outputs(pipe, clip, config, result, output, comparison, picture, save_adapter, written_files)
        # Written last: a record beside the output means the run finished (batch skips such jobs).
        write_json(record, _run_record(input_path, written_files[0], prompt, pipe, config, result, save_adapter))
    except BaseException:
        for path in written_files:  # a run that could not write everything leaves nothing (a full disk)
            path.unlink(missing_ok=True)
        raise
    return Written(written_files[0], record, comparison, picture, save_adapter)


def _write_outputs(pipe: Any, clip: Any, config: SMAConfig, result: Any, output: Path, comparison: Path | None,
                   picture: Path | None, save_adapter: Path | None, written: list[Path]) -> None:
    """The run's files but the record, each appended to ``written`` once complete (the output first)."""
    from sma_guidance.video_io import export_to_video, frame_strip, save_image, side_by_side as stack

    written.append(Path(export_to_video(result.frames[0], output, fps=result.fps)))
    if save_adapter is not None:
        result.adapter.save(save_adapter)
        written.append(Path(save_adapter))
    if comparison is not None or picture is not None:
        frames, _ = pipe.prepare_video(clip, config)  # resized only, not decoded again
        shown = (frames.permute(0, 2, 3, 1) + 1) / 2
        if comparison is not None:
            written.append(Path(export_to_video(stack(shown, result.frames[0]), comparison, fps=result.fps)))
        if picture is not None:
            scale = max(1, 256 // max(config.height, config.width))  # small clips: pixels a person can see
            written.append(Path(save_image(frame_strip(shown, result.frames[0], scale=scale), picture)))


def is_out_of_memory(error: BaseException) -> bool:
    """A GPU out-of-memory error: CUDA's (``torch.OutOfMemoryError``) or MPS's (a RuntimeError saying so)."""
    import torch

    out_of_memory = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(error, out_of_memory) or (isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def out_of_memory_message(pipe: Any, config: SMAConfig) -> str:
    """One line for a run that ran out of GPU memory: the estimate for this model and size, what was free,
    and the flags that lower it. The allocator's cache is emptied first, so the next run (the page's, a
    batch's next job) starts clean."""
    import torch

    device = pipe.device
    free = ""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
        available, total = torch.cuda.mem_get_info(device)
        free = f"; {available / 2**30:.1f} of {total / 2**30:.1f} GiB free on {device} now"
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
    try:
        from .memory_estimate import estimate_memory

        estimate = estimate_memory(config.model, config, pipe.dtype, (config.activation_checkpointing,))
        peak = estimate["checkpointing"][config.activation_checkpointing]["peak_bytes"]
        size = f"{peak / 2**30:.1f} GiB" if peak >= 2**30 else f"{peak / 2**20:.0f} MiB"
        needs = f"needs about {size} (estimate)"
    except Exception:  # noqa: BLE001 — a model the estimator cannot rebuild: say so, keep the advice
        needs = "could not be estimated (sma-guide bench memory)"
    return (f"out of GPU memory: {config.model} at {config.num_frames} frames of {config.height}x{config.width} "
            f"{needs}{free}; lower it with --activation-checkpointing layers, fewer --frames, --vae-tiling, "
            "--vae-batch-size 1 (the inversion cache is kept; nothing was written)")


def _run_record(input_path: Path, output: Path, prompt: str, pipe: Any, config: SMAConfig, result: Any,
                save_adapter: Path | None) -> dict[str, Any]:
    return {
        "input": str(input_path),
        "output": str(output),
        "prompt": prompt,
        "fps": result.fps,
        "family": pipe.backbone.name,
        "config": result.config,
        "sampler": result.sampler,
        "loss_history": result.loss_history,
        "timings": result.timings,
        "windows": result.windows,
        "adapter": str(save_adapter or config.adapter or "") or None,
        "train_loss_history": result.train_loss_history,
    }


def build_config(config_file: Path | None, flags: dict[str, Any], family: str | None = None) -> SMAConfig:
    """Defaults ← the model family's preset ← the model's preset ← ``--config`` file ← flags, validated.
    The family is detected from the model's ``model_index.json`` unless given (a loaded pipeline's)."""
    file_values = SMAConfig.read_file(config_file) if config_file is not None else {}
    fields = {FLAG_FIELDS.get(name, name): value for name, value in flags.items() if value is not None}
    for name in ("cache_dir", "adapter", "mask"):
        if name in fields:
            fields[name] = str(fields[name])
    if fields.get("mask_box") is not None:
        fields["mask_box"] = parse_box(fields["mask_box"])
    if isinstance(fields.get("feature_layers"), str):
        fields["feature_layers"] = tuple(name.strip() for name in fields["feature_layers"].split(",") if name.strip())
    model = fields.pop("model", None) or file_values.pop("model", None) or SMAConfig().model
    file_values.pop("model", None)
    if family is None:
        from .backbones import model_family

        family = model_family(model, fields.get("motion_adapter") or file_values.get("motion_adapter"))
    return SMAConfig.for_model(model, family=family, **file_values).replace(**fields).validate()


def parse_box(value: Any) -> tuple[float, ...]:
    """``"X0,Y0,X1,Y1"`` (or ``"[X0, Y0, X1, Y1]"``, or four numbers: a batch job's list) -> four numbers, or a
    one-line :class:`UserError`."""
    parts = value.strip().strip("[]()").split(",") if isinstance(value, str) else list(value)
    try:
        values = tuple(float(part) for part in parts)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4:
        raise UserError(f"--mask-box {value!r} must be four numbers X0,Y0,X1,Y1 in pixels of the input, e.g. 10,20,40,50")
    return values


def subject_frames(input_path: Path, config: SMAConfig, source_size: tuple[int, int]) -> Any:
    """The ``--mask`` file's masks matched to the frames the run picks from ``input_path`` (``None`` without
    one), checked at the run's size with ``--mask-box`` too: a bad mask fails before the model loads."""
    if config.mask is None and config.mask_box is None:
        return None
    from sma_guidance.masks import read_mask, select_mask_frames, subject_mask
    from sma_guidance.video_io import source_positions

    frames = None
    if config.mask is not None:
        positions, count = source_positions(input_path, config.num_frames, config.start, config.duration)
        frames = select_mask_frames(read_mask(config.mask), config.num_frames, positions, count)
    subject_mask(frames, config.mask_box, source_size=source_size, num_frames=config.num_frames,
                 height=config.height, width=config.width)
    return frames


def chosen(field: str, config_file: Path | None, flags: dict[str, Any]) -> bool:
    """Whether the user set ``field`` (a flag or the ``--config`` file), not a preset."""
    flag = next((name for name, target in FLAG_FIELDS.items() if target == field), field)
    if flags.get(flag) is not None:
        return True
    return config_file is not None and field in SMAConfig.read_file(config_file)


def check_adapter_path(path: Path, config: SMAConfig, input_path: Path, output: Path) -> None:
    """``--save-adapter`` needs something to save and a writable ``.safetensors`` path."""
    if not config.trains:
        raise UserError("--save-adapter needs a training run: use --mode fine-tune or --mode both (without --adapter)")
    if path.suffix != ".safetensors":
        raise UserError(f"--save-adapter {path} must end in .safetensors")
    if path.is_dir():
        raise UserError(f"--save-adapter {path} is a directory; give a file name ending in .safetensors")
    check_writable_folder(path, "--save-adapter")
    for other in (input_path, output):
        if path.resolve() == other.resolve():
            raise UserError(f"--save-adapter {path} would overwrite {other}; choose another path")


def check_output_path_record(path: Path, input_path: Path) -> Path:
    """The JSON beside the output must not clobber the input either."""
    if path.exists() and input_path.exists() and os.path.samefile(path, input_path):
        raise UserError(f"the run record {path} would overwrite the input; choose another -o")
    return path


def check_json_path(json_path: Path, protected: tuple[Path, ...] = (), flag: str = "--json") -> None:
    """A JSON output must be a file name whose folder exists or can be created (it is created when the
    JSON is written) and must not replace one of ``protected``."""
    if json_path.is_dir():
        raise UserError(f"cannot write {flag} {json_path}: it is a folder; give a file name")
    check_writable_folder(json_path, flag)
    if any(json_path.resolve() == p.resolve() for p in protected):
        raise UserError(f"{flag} {json_path} would overwrite a video; choose another path")


__all__ = [
    "FLAG_FIELDS",
    "Written",
    "build_config",
    "check_adapter_path",
    "check_json_path",
    "check_output_path_record",
    "chosen",
    "comparison_path",
    "default_output",
    "record_path",
    "strip_path",
    "transfer",
]
