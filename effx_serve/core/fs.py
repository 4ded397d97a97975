"""Files: where effx-serve keeps its caches, one durable atomic writer, one JSON reader, sha256 of a file.

Every file the project writes goes through `replacing` (or `write_atomic`, built on it): the content is
written to a temporary file beside the target, fsync'd, renamed over the target, and the folder fsync'd,
so readers see the old file or the new one, and a crash or power cut cannot leave half of one (nor a
rename on disk before the data it points to). Whole folders are swapped in by `atomic_dir`.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from effx_serve.core.errors import UserError
from effx_serve.core.proc import pid_alive


def cache_dir() -> Path:
    """$EFFX_CACHE_DIR, else $XDG_CACHE_HOME/effx-serve, else ~/.cache/effx-serve (created on demand)."""
    root = os.environ.get("EFFX_CACHE_DIR")
    if root:
        path = Path(root)
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "effx-serve"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cache folder {path} cannot be created ({error.strerror}); set EFFX_CACHE_DIR to a writable folder") from None
    return path


def fsync_dir(directory: Path) -> None:
    """fsync a folder, so a rename inside it is on disk (some file systems cannot; the file fsyncs still hold)."""
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write the new content into (by any writer: ours, torch's, matplotlib's).

    When the block ends without an error the file is fsync'd and renamed over `path`, and the folder fsync'd;
    on an error (or an interrupt) it is removed and `path` is left as it was. The temporary name is
    `.<name>.<pid>.<random>.tmp`, so writers that choose a format by suffix must be told it; those of writers killed
    (SIGKILL) before they could remove theirs are removed here.
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # a rename would put a file in place of a device, pipe or socket
        kind = "a folder" if path.is_dir() else "not a regular file (a device, pipe or socket)"
        raise UserError(f"{path} is {kind}; write to a file path instead")
    remove_left_by_dead_writers(path, ".tmp")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; what we write is read by others (Triton, a server)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove_left_by_dead_writers(path: Path, suffix: str) -> None:
    """Remove what writers of `path` that are gone (killed) left beside it: `.<name>.<pid>.<anything><suffix>`, files or
    folders, whose process no longer runs."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*{suffix}"):
        pid = stale.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


@contextmanager
def held(folder: Path, what: str) -> Iterator[None]:
    """`folder` (made if missing) locked for this process while the block writes into it: UserError when another holds it.
    The lock (flock on `folder/.lock`) goes with the process, however it ends."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise UserError(f"{folder} is in use by another {what} ({holder}); wait for it to end, or choose another folder") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        yield


def _write_all(handle, data: bytes) -> None:
    """Write `data` fully (a separate function so tests can inject a failure mid-write)."""
    handle.write(data)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Replace `path` with `data` (text as UTF-8) so that readers see the old or the new content, never a mix."""
    with replacing(path) as tmp, open(tmp, "wb") as handle:
        _write_all(handle, data.encode() if isinstance(data, str) else data)


def read_json(path: str | os.PathLike, what: str = "", error: type[UserError] = UserError) -> Any:
    """The parsed JSON at `path`; else `error("<what> <path> cannot be read: <cause>")` or "... is not JSON: <cause>"."""
    where = f"{what} {path}" if what else str(path)
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as cause:
        raise error(f"{where} cannot be read: {getattr(cause, 'strerror', None) or cause}") from None
    except ValueError as cause:
        raise error(f"{where} is not JSON: {cause}") from None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
