"""Errors a user can act on.

A :class:`UserError` carries one line that says what was wrong and what to do. The CLI prints it
without a traceback and exits with a non-zero code; Python callers can catch it.
"""


class UserError(ValueError):
    """A problem with the user's input or settings, described in one actionable line."""
