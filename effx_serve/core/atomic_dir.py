"""Build a directory beside its target and swap it in, so readers see the old tree or the new one, never a mix.

On Linux the swap is one `renameat2(RENAME_EXCHANGE)`: the target path never stops existing. Elsewhere
(or on file systems without the flag) it is two renames through a backup name, and `recover` puts the
backup back if a process died between them. Staging folders of builds that were killed are removed by
the next build (`stale_staging`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from pathlib import Path

from effx_serve.core.proc import pid_alive

RENAME_EXCHANGE = 2
AT_FDCWD = -100


def replace_refusal(target: Path, marker: str, files_kept: bool = False) -> str | None:
    """Why a build must not replace `target`, or None. The swap deletes the old tree, so an existing folder may go only
    when it is empty, a previous build (it holds `marker`), or, with `files_kept`, holds nothing but files the build
    carries over."""
    if not target.exists():
        return None
    if not target.is_dir():
        return "is a file"
    resolved = target.resolve()
    if resolved.parent == resolved:
        return "is the file system's root"
    entries = sorted(path.name for path in target.iterdir())
    if not entries or (target / marker).is_file() or (files_kept and all((target / name).is_file() for name in entries)):
        return None
    return f"holds other things ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}) and no {marker}"


def begin(target: Path) -> Path:
    """Ready a build of `target`: its parent made, what killed builds left undone, and a fresh staging folder beside it.
    `target` may be '.' or '..': the staging folder is named after the resolved path's last part."""
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    return staging_dir(target)


def staging_dir(target: Path) -> Path:
    """A fresh, empty staging folder beside `target` (same file system, so the swap is a rename)."""
    path = target.with_name(f".{target.name}.build-{os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _backup(target: Path) -> Path:
    return target.with_name(f".{target.name}.old-{os.getpid()}")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with renameat2; False where the system cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def sync_tree(root: Path) -> None:
    """fsync every file and folder under `root`, so the swap can never be on disk before the data it points to."""
    for folder, _, files in os.walk(root):
        for name in [*files, "."]:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def swap_in(staging: Path, target: Path) -> None:
    """Make `staging` the new `target`; the old tree is deleted once nothing can need it."""
    target = target.resolve()  # as `begin` named the staging folder; '.' cannot be renamed onto
    sync_tree(staging)
    if not target.exists():
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old tree
        return
    backup = _backup(target)
    os.rename(target, backup)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def recover(target: Path) -> list[Path]:
    """Undo what killed builds left: restore a backup if the target is missing, remove dead builds' folders."""
    removed = []
    for kind in ("old", "build"):
        for path in sorted(target.parent.glob(f".{target.name}.{kind}-*")):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
                continue  # another build is running right now
            if kind == "old" and not target.exists():
                os.rename(path, target)
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
