"""User-facing errors: one clear line, a non-zero exit, no traceback.

Anything a user can cause (bad params, missing or malformed data files, checkpoints that
do not fit) raises :class:`UserError` with a message that names the file, the field and
the fix. Stage scripts run their body under :func:`exit_on_user_error`, which prints
that one line to stderr and exits with status 2.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """An error caused by input the user controls; its message is the whole report."""


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Decorate a stage's ``main``: a :class:`UserError` ends the process with one line."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
