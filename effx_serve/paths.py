"""Where effx-serve keeps its caches, and small file helpers."""

import hashlib
import os
from pathlib import Path

from effx_serve.errors import UserError


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


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` (text or bytes) to `path` so that readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
