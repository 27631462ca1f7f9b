"""Atomic file and folder writes, so a failed stage never leaves half-written outputs.

Every write goes to ``.<name>.tmp-<pid>-<random>`` beside its destination and is renamed onto it
when complete. A process killed mid-write (SIGKILL, power loss) leaves that temporary behind; the
next write of the same destination removes the ones whose process is gone. Published files and
folders get the permissions the umask allows (0666/0777 minus the umask), like a plain ``open``.

No writer replaces the working directory, a folder above it or a git repository's root. A command's
``--out`` folder (:func:`command_output_dir`) is stricter: it replaces only an empty folder or, with
``--overwrite``, one holding the marker file the command writes into each of its output folders, and
never an export folder or a folder holding the command's inputs.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
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


def protected_reason(path: Path) -> str | None:
    """Why no writer may ever replace or remove ``path`` (the working directory, a folder above it,
    a git repository's root), or None when it is an ordinary path."""
    resolved, cwd = Path(path).resolve(), Path.cwd().resolve()
    if resolved == cwd:
        return "is the working directory"
    if resolved in cwd.parents:
        return "is a folder above the working directory"
    if (resolved / ".git").exists():
        return "is a git repository's root"
    return None


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the ones created, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except BaseException:
        _remove_empty(missing)
        raise
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the ``folders`` (deepest first) that are still empty, e.g. parents made for a failed write."""
    for folder in folders:
        with suppress(OSError):
            folder.rmdir()


def _swap_in(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` onto ``final``: a previous ``final`` is moved aside first and put back if the
    rename fails, so a failed swap loses nothing; it is removed once ``tmp`` is in place."""
    old = None
    if final.is_symlink() or final.exists():
        old = final.parent / f"{_temp_prefix(final)}old-{os.urandom(4).hex()}"
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None and old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:
        with suppress(OSError):
            old.unlink()


@contextmanager
def atomic_dir(final: Path, guard: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; on success it replaces ``final``.

    ``guard(final)``, when given, may refuse the destination (raise): it is called before anything is
    written and again just before the swap. The working directory, a folder above it and a git
    repository's root are always refused (UserError). On any exception the temporary folder is
    removed and ``final`` is left as it was.
    """
    final = Path(final)
    if guard is not None:
        guard(final)
    reason = protected_reason(final)
    if reason:
        raise UserError(f"{final}: {reason}; an output is written to a folder of its own, never over this one")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), dir=final.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would make the published folder private to its writer
        yield tmp
        if guard is not None:
            guard(final)
        _swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _place_problem(out: Path, inputs: Sequence[Path]) -> str | None:
    """Why ``out``'s place rules it out as a command's output folder (the reason and the fix), or None."""
    reason = protected_reason(out)
    if reason:
        return f"{reason}; give a new folder of its own"
    for given in inputs:
        if out.resolve() == Path(given).resolve() or out.resolve() in Path(given).resolve().parents:
            return f"contains the input {given}; give a folder outside the inputs"
    if out.is_symlink():
        return "is a symbolic link; give a new folder (the link is left as it is)"
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        where = "" if existing == out else f"{existing} "
        return f"{where}is a file, not a folder; give a new folder path"
    return None


def _contents_problem(out: Path, overwrite: bool, marker: str) -> str | None:
    """Why the folder ``out`` (when it exists) may not be replaced by a command's output, or None."""
    if not out.is_dir() or not any(out.iterdir()):
        return None
    if (out / "manifest.json").exists():
        return "is an export folder (has manifest.json); give a new folder of its own"
    if not overwrite:
        return ("exists and is not empty; give a new or empty folder, or pass --overwrite to replace this "
                "command's earlier output")
    if not (out / marker).is_file():
        return (f"has no {marker} file: this command did not write it, and --overwrite replaces only folders it "
                "wrote; give a new or empty folder")
    return None


def claim_output_dir(out: Path, overwrite: bool, inputs: Sequence[Path], marker: str, option: str = "--out") -> None:
    """Refuse, in one line naming ``option``, an output folder a command must not write: the working
    directory or a folder above it, a git repository's root, an export folder, a folder holding one of
    the ``inputs``, a file or a path under one, and a non-empty folder, unless ``overwrite`` and the
    folder holds the ``marker`` file the command writes into every output folder of its own."""
    problem = _place_problem(Path(out), inputs) or _contents_problem(Path(out), overwrite, marker)
    if problem:
        raise UserError(f"{option} {out}: {problem}")


@contextmanager
def command_output_dir(out: Path, overwrite: bool, inputs: Sequence[Path], marker: str, record: dict[str, Any],
                       option: str = "--out") -> Iterator[Path]:
    """:func:`atomic_dir` for a command's output folder: checked by :func:`claim_output_dir` (before
    writing and again before the swap), with ``marker`` holding ``record`` (json) in it. A failure
    also removes the parent folders made for it; an OSError while writing (read-only file system, no
    permission, no such place) ends in one line naming ``option``."""
    out = Path(out)
    guard = functools.partial(claim_output_dir, overwrite=overwrite, inputs=inputs, marker=marker, option=option)
    guard(out)
    created: list[Path] = []
    try:
        created = _make_parents(out.parent)
        with atomic_dir(out, guard=guard) as tmp:
            (tmp / marker).write_text(json.dumps(record) + "\n")
            yield tmp
    except BaseException as err:
        _remove_empty(created)
        if isinstance(err, OSError):
            raise UserError(f"{option} {out}: cannot write there ({err.strerror or err}); give a folder you can "
                            "write to") from None
        raise


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
