"""Atomic file writes: a result appears complete under its name, or not at all.

Missing folders on the way to an output are created here, when the file is about to be written, so
that a run stopped by a bad input (checked earlier) leaves no empty folders behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` (same suffix, so writers that pick a format by
    extension still work); move it over ``path`` when the block succeeds, delete it when it fails.
    An existing file at ``path`` is untouched until the new one is complete. Missing parent folders
    are created first and removed again (when still empty) if the write fails. A full disk (ENOSPC) is a
    :class:`UserError` naming ``path``, the space ``needed`` (bytes, when the caller knows it) and what is free."""
    path = Path(path)
    created = _make_parents(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):  # another writer may have put a file there meanwhile
                folder.rmdir()
        if is_disk_full(error):
            raise UserError(disk_full_message(path, needed)) from None
        raise


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps: video encoders re-raise) is a full disk or quota (ENOSPC, EDQUOT)."""
    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def disk_full_message(path: str | os.PathLike, needed: int | None = None) -> str:
    """One line for a write that found the disk full: the path, the space it needs, what is free."""
    path = Path(path)
    folder = next((p for p in (path.parent, *path.parents) if p.exists()), Path("."))
    try:
        free = f"; {_size(shutil.disk_usage(folder).free)} free there"
    except OSError:
        free = ""
    wants = f" (about {_size(needed)} needed{free})" if needed else f" ({free[2:]})" if free else ""
    return f"no space left on the device to write {path}{wants}: free some space, or write elsewhere; nothing was kept"


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON (values JSON cannot hold as their ``str``), atomically: the project's
    one JSON writer (run records, benchmark results). Returns the path."""
    path = Path(path)
    text = json.dumps(data, indent=2, default=str) + "\n"
    with atomic_write(path, needed=len(text.encode())) as tmp:
        tmp.write_text(text)
    return path


def _missing_folders(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, deepest first."""
    missing = []
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _make_parents(path: Path) -> list[Path]:
    """Create the missing folders above ``path``; return those created, deepest first."""
    missing = _missing_folders(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return missing


def check_writable_folder(path: str | os.PathLike, what: str = "output") -> Path:
    """Check, creating nothing, that the folder of ``path`` exists and is writable or can be created.

    A missing folder is fine when its nearest existing ancestor is a writable folder (it is created
    when the file is written, see :func:`atomic_write`). Returns that nearest existing ancestor.

    Raises:
        UserError: the ancestor is a file, or not writable.
    """
    missing = _missing_folders(Path(path).expanduser())
    nearest = missing[-1].parent if missing else Path(path).expanduser().parent
    if not nearest.is_dir():
        raise UserError(f"cannot create the folder of {what} {path}: {nearest} is a file — choose another path")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise UserError(
            f"output directory is not writable: {nearest} — choose another location for {what} {path} or fix "
            "its permissions"
        )
    return nearest


__all__ = ["atomic_write", "check_writable_folder", "disk_full_message", "is_disk_full", "write_json"]
