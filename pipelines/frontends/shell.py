"""What every ``sma-guide`` command shares: a :class:`UserError` as one line ``error: ...`` with exit code 1,
and the project's advice (:class:`UserAdvice`) as one line ``warning: ...`` on stderr."""

from __future__ import annotations

import functools
import sys
import warnings
from typing import Any, Callable

import click

from sma_guidance.errors import UserAdvice, UserError

_show_warning = warnings.showwarning


def show_advice(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """A replacement for :func:`warnings.showwarning`: the project's advice as one line, other warnings
    as Python shows them."""
    if issubclass(category, UserAdvice):
        click.echo(f"warning: {message}", err=True)
    else:
        _show_warning(message, category, *args, **kwargs)


def reports_user_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Print a :class:`UserError` as one line ``error: ...`` and exit 1 (130 on Ctrl-C), no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except UserError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written", err=True)
            sys.exit(130)

    return wrapper


def note(message: str) -> None:
    """A line for the user on stderr (stdout stays for results)."""
    click.echo(message, err=True)


__all__ = ["note", "reports_user_errors", "show_advice"]
