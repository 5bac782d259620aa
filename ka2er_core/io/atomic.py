"""Atomic writes: a temporary file (or folder) beside the target, renamed into place on success.

A failed write leaves nothing behind: no temporary file or folder, none of the folders it created
on the way, and the target, if it existed, untouched. A file system that refuses the write (disk
full, no permission, a file where a folder must be) raises
:class:`~ka2er_core.errors.UnwritableFileError` naming the path: one line, no traceback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Optional

from ..errors import UnwritableFileError


def full_suffix(path: Path) -> str:
    """The extension a reader dispatches on: ``.seg.nrrd``, ``.nii.gz``, ``.nrrd``, ``.nii``..."""
    name = path.name.lower()
    for suffix in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def current_umask() -> int:
    """The process's umask. Read from ``/proc/self/status`` where the system has it: setting the
    umask to read it, as elsewhere, changes it for every thread for a moment, and a file another
    thread makes meanwhile (a server writing while it trains) would be writable by everyone."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        umask = os.umask(0o077)  # the brief window errs towards private files
        os.umask(umask)
    return umask


_UMASK_LOCK = threading.Lock()


def normal_mode(path: os.PathLike | str, folder: bool = False) -> None:
    """Give ``path`` the mode a plain ``open`` or ``mkdir`` would have given it (0666 or 0777 less
    the umask): ``mkstemp`` and ``mkdtemp`` make theirs private (0600, 0700), and a bundle the user
    saved must be readable by whom the user's umask allows (a server under a service account)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def file_above(path: Path) -> Optional[Path]:
    """The nearest ancestor of ``path`` that exists and is not a folder (None if there is none)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output(path: os.PathLike | str, *, field: Optional[str] = None, folder: bool) -> Path:
    """Refuse, before any work is done, an output ``path`` that cannot be written: one under a
    file, a file where a ``folder`` is wanted (or the reverse), or one in a folder this process may
    not write into. ``field`` names the option it came from. Returns ``path``."""
    path = Path(path)
    blocking = file_above(path)
    if blocking is not None:
        raise UnwritableFileError(f"cannot write under {blocking}: it is a file, not a folder",
                                  path=path, field=field)
    if path.exists() and path.is_dir() != folder:
        wanted, found = ("a folder", "a file") if folder else ("a file", "a folder")
        raise UnwritableFileError(f"expected {wanted}, found {found}", path=path, field=field)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise UnwritableFileError(f"cannot write into {existing} (permission denied)", path=path,
                                  field=field)
    return path


def write_failure(path: Path, error: OSError) -> UnwritableFileError:
    """The one-line error of a failed write of ``path``: the file system's reason, or the file
    that stands where a folder must be."""
    blocking = file_above(path)
    if blocking is not None:
        return UnwritableFileError(f"cannot write under {blocking}: it is a file, not a folder",
                                   path=path)
    return UnwritableFileError(f"cannot write ({error.strerror or error})", path=path)


def make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the folders created, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def remove_folders(created: list[Path]) -> None:
    """Remove the folders :func:`make_folders` created, innermost first, if they are still empty."""
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def atomic_write(path: os.PathLike | str):
    """Yield a temporary path with the same extension; on success replace ``path`` with it.

    On any exception the temporary file and the folders made for it are removed and ``path`` (if it
    existed) is untouched, so a failed save never leaves a half-written file; a failure of the file
    system becomes :class:`~ka2er_core.errors.UnwritableFileError`.
    """
    path = Path(path)
    if path.is_dir():
        raise UnwritableFileError("expected a file, found a folder", path=path)
    created: list[Path] = []
    try:
        created = make_folders(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{full_suffix(path)}",
                                   dir=path.parent)
        os.close(fd)
    except OSError as error:
        remove_folders(created)
        raise write_failure(path, error) from None
    try:
        yield Path(tmp)
        normal_mode(tmp)  # mkstemp (and some writers) make it private
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        remove_folders(created)
        if isinstance(error, OSError) and not isinstance(error, UnwritableFileError):
            raise write_failure(path, error) from None
        raise


def in_place_of(path: Path, staging: Path, out: Path) -> Path:
    """The path under ``out`` that ``path`` under ``staging`` stands for (``path`` itself if it is
    not under ``staging``): errors name it, since the temporary folder is gone when they are read."""
    if staging not in (path, *path.parents):
        return path
    return out / path.relative_to(staging)


@contextlib.contextmanager
def folder_written_whole(out: os.PathLike | str):
    """Yield an empty temporary sibling folder of ``out``; on success it becomes ``out`` (replacing
    an existing folder), on failure it is removed and ``out`` is untouched. A failure of the file
    system becomes :class:`~ka2er_core.errors.UnwritableFileError` naming the file under ``out``
    that was being written (or ``out`` itself when that is not known)."""
    out = Path(out)
    created: list[Path] = []
    try:
        created = make_folders(out.parent)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        normal_mode(staging, folder=True)  # mkdtemp makes it private
    except OSError as error:
        remove_folders(created)
        raise write_failure(out, error) from None
    previous = staging.with_suffix(".old")
    try:
        yield staging
        if out.exists():
            os.rename(out, previous)
        try:
            os.rename(staging, out)
        except OSError:
            if previous.exists():
                os.rename(previous, out)
            raise
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        remove_folders(created)
        if isinstance(error, UnwritableFileError):
            where = out if error.path is None else in_place_of(Path(error.path), staging, out)
            raise UnwritableFileError(error.problem, path=where, field=error.field) from None
        if isinstance(error, OSError):
            failed = Path(error.filename) if isinstance(error.filename, str) else out
            raise write_failure(in_place_of(failed, staging, out), error) from None
        raise
    shutil.rmtree(previous, ignore_errors=True)
