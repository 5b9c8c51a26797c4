"""Spectral Motion Alignment (SMA) guidance: the math and utilities.

Pure functions (losses, residuals, metrics), feature recording with forward hooks, the shared
configuration and video I/O. The diffusers pipelines live in the sibling package ``pipelines``.
"""

from .errors import UserError

__all__ = ["UserError"]
