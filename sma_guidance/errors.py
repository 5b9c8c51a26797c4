"""Errors and warnings a user can act on.

A :class:`UserError` carries one line that says what was wrong and what to do. The CLI prints it
without a traceback and exits with a non-zero code; Python callers can catch it. A
:class:`UserAdvice` is a Python warning of the same kind for a run that goes on: one line saying what
weakens it and what to pass instead (the CLI prints it as ``warning: ...``; Python shows it once).
"""


class UserError(ValueError):
    """A problem with the user's input or settings, described in one actionable line."""


class UserAdvice(UserWarning):
    """A setting that works but weakens the result, described in one actionable line."""
