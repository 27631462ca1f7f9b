"""Atomic file and folder writes, so a failed stage never leaves half-written outputs.

Every write goes to ``.<name>.tmp-<pid>-<random>`` beside its destination and is renamed onto it
when complete. A process killed mid-write (SIGKILL, power loss) leaves that temporary behind; the
next write of the same destination removes the ones whose process is gone. Published files and
folders get the permissions the umask allows (0666/0777 minus the umask), like a plain ``open``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # alive, another user's
        return True
    return True


def _temp_prefix(final: Path) -> str:
    return f".{final.name}.tmp-{os.getpid()}-"


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove the temporaries of ``final`` left by killed writers (whose process is gone);
    returns what was removed. A live writer's temporary is left alone."""
    removed = []
    for leftover in Path(final).parent.glob(f".{Path(final).name}.tmp-*"):
        owner = leftover.name[len(f".{Path(final).name}.tmp-"):].split("-", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and _process_alive(int(owner)):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; on success it replaces ``final``.

    On any exception the temporary folder is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), dir=final.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would make the published folder private to its writer
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
    remove_stale_temporaries(final)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(final), dir=final.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.chmod(0o666 & ~_umask())  # mkstemp's 0600 would make the published file private to its writer
    os.replace(tmp, final)


def read_json(path: Path, produced_by: str) -> Any:
    """The json in ``path``, or one line naming the file and ``produced_by`` (the stage or tool that
    writes it: the fix is to run it again) when the file is missing, truncated or not json."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run {produced_by}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid json ({err}); delete it and run {produced_by} again") from None


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (artifact identities in manifests and fingerprints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
