"""Write a file or folder under a temporary name and rename it into place, so a destination is never
half-written: an interrupted or failed write leaves either nothing or the previous version."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ladd_jax.errors import LaddError


def check_writable_destination(dst: Path, overwrite: bool) -> None:
    """Fails early, before any work, when `dst` cannot be written."""
    if dst.exists() and not overwrite:
        raise LaddError(f"destination {dst} already exists: remove it or pass --overwrite")
    parent = dst.absolute().parent
    if not parent.is_dir():
        raise LaddError(f"cannot write {dst}: folder {parent} does not exist; create it first")
    try:
        _probe(parent)
    except OSError as e:
        raise LaddError(
            f"cannot write {dst}: folder {parent} is not writable ({e.strerror}); choose another destination"
        ) from None


def _probe(folder: Path) -> None:
    """Makes and removes a file in `folder` (OSError where none can be made). By trying, as os.access says yes to root
    where no file can be made (/proc, a read-only mount); a unique name, as the processes of one run probe the same
    folder."""
    with tempfile.NamedTemporaryFile(dir=folder):
        pass


def make_writable_folder(folder: str | Path, what: str, flag: str = "--out") -> Path:
    """`folder`, created if it is not there and checked writable; one clear error (naming it as `what`, the fix as
    `flag`) where it cannot be."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _probe(folder)
    except OSError as e:
        raise LaddError(f"cannot write {what} {folder} ({e.strerror}); choose another {flag}") from None
    return folder


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike, overwrite: bool = False, is_dir: bool = True) -> Iterator[Path]:
    """Yields a temporary sibling path to write; on success it replaces `dst`, on failure it is removed."""
    dst = Path(dst)
    check_writable_destination(dst, overwrite)
    parent = dst.absolute().parent
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{dst.name}.tmp-", dir=parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if dst.exists():
            # Move the old version aside first so that no moment exists with a partial destination.
            old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
            os.replace(dst, old)
            os.replace(tmp, dst)
            _remove(old)
        else:
            os.replace(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
