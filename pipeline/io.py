"""Atomic file and folder writes, so a failed stage never leaves half-written outputs."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; on success it replaces ``final``.

    On any exception the temporary folder is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would make the published folder private to its writer
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.is_symlink() or final.is_file():
        final.unlink()
    elif final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


@contextmanager
def atomic_file(final: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``final``; on success it is renamed onto ``final``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def write_json(path: Path, data: Any, indent: int | None = 2) -> None:
    """Write ``data`` as json atomically."""
    with atomic_file(Path(path)) as handle:
        json.dump(data, handle, indent=indent)
        handle.write("\n")


@contextmanager
def working_dir(folder: Path) -> Iterator[None]:
    """Run a block with ``folder`` as the working directory (the stage scripts use paths relative
    to the repository root), then return to the previous one."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)
