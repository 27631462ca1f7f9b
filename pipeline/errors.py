"""User-facing errors: one clear line, a non-zero exit, no traceback.

Anything a user can cause (bad params, missing or malformed data files, checkpoints that
do not fit) raises :class:`UserError` with a message that names the file, the field and
the fix. Stage scripts run their body under :func:`exit_on_user_error`, which prints
that one line to stderr and exits with status 2. It does the same for the operating system's
refusals the user fixes outside the pipeline (a full disk, a read-only file system, missing
permissions: :data:`DISK_FIXES`), and prints a :class:`UserError` raised in a DataLoader worker
(which PyTorch re-raises with the worker's traceback inside the message) as its original line.
Under it SIGTERM (what `kill` and job schedulers send) raises ``SystemExit(143)``, so the atomic
writers of :mod:`pipeline.io` remove their temporaries on the way out (as they do on any
exception); SIGKILL leaves them to the next run's clean-up.
"""
from __future__ import annotations

import errno
import functools
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")

#: errno -> what the user does about it; an OSError with one of these ends a stage with one line
DISK_FIXES = {
    errno.ENOSPC: "free space on the disk being written (df -h shows what is left) and run again",
    errno.EDQUOT: "free space within your disk quota (or get a larger one) and run again",
    errno.EROFS: "the file system is mounted read-only: run in a writable copy of the repository "
                 "or remount it read-write",
    errno.EACCES: "make it (and the folder that holds it) readable and writable for this user "
                  "(ls -ld, chmod u+rwX) and run again",
    errno.EPERM: "make it (and the folder that holds it) writable for this user (ls -ld, chmod u+rwX, "
                 "chattr -i) and run again",
}

_WORKER_PREFIX = "Caught "
_WORKER_MARK = "Original Traceback"


class UserError(Exception):
    """An error caused by input the user controls; its message is the whole report."""


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def user_message(err: UserError) -> str:
    """The one line of ``err``; for one re-raised by a DataLoader worker ("Caught UserError in
    DataLoader worker process 1. Original Traceback ..."), the original line at the end of it."""
    text = str(err)
    if not (text.startswith(_WORKER_PREFIX) and _WORKER_MARK in text):
        return text
    last = text.strip().splitlines()[-1]
    for name in (type(err), UserError):
        prefix = f"{name.__module__}.{name.__qualname__}: "
        if last.startswith(prefix):
            return last[len(prefix):]
    return last


def disk_message(err: OSError) -> str | None:
    """``<file>: <reason>; <fix>`` for an OSError of :data:`DISK_FIXES` (``<reason> while writing;
    <fix>`` when the OS names no file, as for a full disk met by ``write``), else ``None``."""
    fix = DISK_FIXES.get(err.errno)
    if fix is None:
        return None
    reason = err.strerror or str(err)
    return f"{err.filename}: {reason}; {fix}" if err.filename else f"{reason} while writing; {fix}"


def _exit_with(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2) from None


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Decorate a stage's ``main``: a :class:`UserError` (or an OSError of :data:`DISK_FIXES`)
    ends the process with one line and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        in_main_thread = threading.current_thread() is threading.main_thread()
        before = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
        try:
            return main(*args, **kwargs)
        except UserError as err:
            _exit_with(user_message(err))
        except OSError as err:
            message = disk_message(err)
            if message is None:
                raise
            _exit_with(message)
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, before)

    return wrapper
