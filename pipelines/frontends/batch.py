"""Jobs of ``sma-guide batch``: a JSON-lines file, one motion transfer per line.

Each line is an object with ``input`` and ``prompt``, an optional ``output``, and any option of the
single-video command by its long name (``"optimization-steps": 5``, ``"side-by-side": true``,
``"restart": false`` for ``--no-restart``). Relative paths are read relative to the jobs file's folder,
so a jobs file can travel with its clips. Every line is checked before any job runs.

A job is *finished* when its run record (``OUTPUT.json``, written after the video) exists and
describes the same input, prompt and settings; finished jobs are skipped, so a batch that stopped
(crash, pre-emption, Ctrl-C) resumes where it was. Jobs are dealt round-robin to the processes of an
``accelerate launch`` (one per GPU); without it there is one process and the jobs run one by one.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from sma_guidance.config import DERIVED_FROM_MODEL
from sma_guidance.errors import UserError

from ..motion_transfer import run

# Options that name files: resolved relative to the jobs file.
PATH_OPTIONS = ("output", "config", "adapter", "save-adapter", "cache-dir", "mask")
# The device comes from the launcher's process; a job cannot pick one.
LAUNCHER_OPTIONS = ("device",)


@dataclass
class Job:
    """One line of the jobs file: ``line`` (1-based), the input, the prompt and the run command's
    keyword arguments (click parameter names, values converted)."""

    line: int
    input: Path
    prompt: str
    options: dict[str, Any] = field(default_factory=dict)


def option_table(command: click.Command) -> dict[str, click.Parameter]:
    """Long option name (without ``--``) → the command's parameter, including ``no-X`` of flag pairs."""
    table: dict[str, click.Parameter] = {}
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        for name in (*param.opts, *param.secondary_opts):
            if name.startswith("--"):
                table[name[2:]] = param
    return table


def _convert(name: str, value: Any, param: click.Option, line: int) -> Any:
    if param.is_flag or param.secondary_opts:
        if not isinstance(value, bool):
            raise UserError(f"line {line}: {name!r} takes true or false (got {value!r})")
        return (not value) if f"--{name}" in param.secondary_opts else value
    if value is None:
        return None
    try:
        return param.type.convert(value, param, None)
    except click.BadParameter as err:
        raise UserError(f"line {line}: {name!r}: {err.message}") from None


def read_jobs(path: Path, command: click.Command) -> list[Job]:
    """Parse and check every line of ``path`` against ``command``'s options (blank lines and lines
    starting with ``#`` are skipped)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"jobs file not found: {path} — check the path") from None
    except OSError as err:
        raise UserError(f"cannot read jobs file {path}: {err}") from None
    table = option_table(command)
    base = path.resolve().parent
    jobs = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            entry = json.loads(raw)
        except ValueError as err:
            raise UserError(f"{path} line {number} is not JSON ({err.msg}); write one JSON object per line") from None
        if not isinstance(entry, dict):
            raise UserError(f"{path} line {number} must be a JSON object with input and prompt")
        missing = [key for key in ("input", "prompt") if not isinstance(entry.get(key), str)]
        if missing:
            raise UserError(f"{path} line {number}: {missing[0]!r} is missing (a string is required)")
        options: dict[str, Any] = {}
        for name, value in entry.items():
            if name in ("input", "prompt"):
                continue
            if name in LAUNCHER_OPTIONS:
                raise UserError(f"{path} line {number}: {name!r} is set by the launcher; pass --device to batch instead")
            param = table.get(name)
            if param is None or name in ("help", "quiet"):
                raise UserError(
                    f"{path} line {number}: unknown option {name!r}; use the long names of `sma-guide run --help` "
                    f"without the dashes, e.g. \"optimization-steps\""
                )
            if param.name in options:
                raise UserError(f"{path} line {number}: {name!r} repeats an option given on the same line")
            if name in PATH_OPTIONS and isinstance(value, str):
                value = str(base / value)
            options[param.name] = _convert(name, value, param, number)
        jobs.append(Job(line=number, input=base / entry["input"], prompt=entry["prompt"], options=options))
    if not jobs:
        raise UserError(f"{path} holds no jobs; write one JSON object per line with input and prompt")
    return jobs


def assigned(jobs: list[Job], process_index: int, num_processes: int) -> list[Job]:
    """This process's share: every ``num_processes``-th job from ``process_index`` (round robin, so
    that long and short jobs mix)."""
    return jobs[process_index::num_processes]


def is_finished(record_path: Path, job: Job, config: dict[str, Any]) -> bool:
    """Whether ``record_path`` records this very job (input, prompt and settings; not the device)."""
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or not Path(str(record.get("output", ""))).exists():
        return False
    recorded = dict(record.get("config") or {})
    wanted = dict(config)
    # A setting left to the model (None) is recorded as what the model gave, which the job cannot know
    # before loading it: any recorded value fits.
    unset = [name for name in DERIVED_FROM_MODEL if wanted.get(name) is None]
    for settings in (recorded, wanted):
        for name in ("device", *unset):
            settings.pop(name, None)
    return record.get("prompt") == job.prompt and record.get("input") == str(job.input) and recorded == wanted


def run_batch(jobs_path: Path, command: click.Command, device: str, quiet: bool) -> tuple[int, int, int, int]:
    """Run this process's jobs of ``jobs_path`` (checked against ``command``'s options) with
    :func:`run.transfer`, skipping finished ones; a failing job is reported and the others go on.
    Returns (done, already finished, failed, this process's job count)."""
    import torch
    from accelerate import PartialState
    from tqdm.auto import tqdm

    jobs = read_jobs(jobs_path, command)
    outputs: dict[Path, int] = {}
    for job in jobs:
        output = (job.options.get("output") or run.default_output(job.input)).resolve()
        if output in outputs:
            raise UserError(f"{jobs_path}: lines {outputs[output]} and {job.line} both write {output}; give each an \"output\"")
        outputs[output] = job.line
    # Without CUDA, accelerate forms its process group on the CPU (gloo) only when told so.
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    if state.num_processes > 1 or state.device.type == "cuda":
        device = str(state.device)
    mine = assigned(jobs, state.process_index, state.num_processes)
    who = f"process {state.process_index + 1}/{state.num_processes}: " if state.num_processes > 1 else ""
    pipelines: dict[tuple[str | None, ...], Any] = {}
    done = skipped = failed = 0
    for job in tqdm(mine, desc=f"{who}jobs", disable=quiet):
        options = dict(job.options)
        run_args = {name: options.pop(name, None) for name in ("output", "config_file", "save_adapter")}
        side_by_side = bool(options.pop("side_by_side", False))
        strip = bool(options.pop("strip", False))
        flags = {**options, "device": device}
        output = run_args["output"] or run.default_output(job.input)
        try:
            config = run.build_config(run_args["config_file"], flags)
            if is_finished(run.record_path(output), job, config.to_dict()):
                skipped += 1
                continue
            run.transfer(job.input, job.prompt, output, run_args["config_file"], run_args["save_adapter"], side_by_side,
                         True, flags, pipelines, strip=strip)
            done += 1
            if not quiet:
                tqdm.write(f"{who}line {job.line}: wrote {output}")
        except UserError as err:
            failed += 1
            tqdm.write(f"{who}line {job.line}: error: {err}", file=sys.stderr)
    click.echo(f"{who}{done} done, {skipped} already finished, {failed} failed of {len(mine)} job(s)")
    return done, skipped, failed, len(mine)


__all__ = ["Job", "assigned", "is_finished", "option_table", "read_jobs", "run_batch"]
