"""Atomic file writes: a result appears complete under its name, or not at all.

Missing folders on the way to an output are created here, when the file is about to be written, so
that a run stopped by a bad input (checked earlier) leaves no empty folders behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` (same suffix, so writers that pick a format by
    extension still work); move it over ``path`` when the block succeeds, delete it when it fails.
    An existing file at ``path`` is untouched until the new one is complete. Missing parent folders
    are created first and removed again (when still empty) if the write fails."""
    path = Path(path)
    created = _make_parents(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):  # another writer may have put a file there meanwhile
                folder.rmdir()
        raise


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON (values JSON cannot hold as their ``str``), atomically: the project's
    one JSON writer (run records, benchmark results). Returns the path."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
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


__all__ = ["atomic_write", "check_writable_folder"]
