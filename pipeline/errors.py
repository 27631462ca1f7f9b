"""User-facing errors: one clear line, a non-zero exit, no traceback.

Anything a user can cause (bad params, missing or malformed data files, checkpoints that
do not fit) raises :class:`UserError` with a message that names the file, the field and
the fix. Stage scripts run their body under :func:`exit_on_user_error`, which prints
that one line to stderr and exits with status 2. Under it SIGTERM (what `kill` and job
schedulers send) raises ``SystemExit(143)``, so the atomic writers of :mod:`pipeline.io` remove
their temporaries on the way out; SIGKILL leaves them to the next run's clean-up.
"""
from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """An error caused by input the user controls; its message is the whole report."""


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Decorate a stage's ``main``: a :class:`UserError` ends the process with one line."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        in_main_thread = threading.current_thread() is threading.main_thread()
        before = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, before)

    return wrapper
