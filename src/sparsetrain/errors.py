"""Errors a user can cause (bad names, values, paths, files).

The CLI turns :class:`UserError` into a one-line message on stderr and exit code 2, before any
work starts and without touching existing outputs.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: unknown name, out-of-range value, missing or corrupt file."""
