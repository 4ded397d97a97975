"""The project's one error root: what a user can cause, shown as one line (the cause and the fix), never a traceback."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

# A place that cannot be written (read-only, full, no permission): the machine's to change, not the input's.
PLACE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})


class UserError(Exception):
    """Bad input, a missing file or dependency, an unsupported choice: the message says the cause and the fix."""


def place_error(error: BaseException) -> OSError | None:
    """The OSError in `error`'s chain (itself, or what it was raised from or while handling) saying that a place cannot be
    written, if any: a job that meets one stops, rather than blaming its input (a search, its candidate)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in PLACE_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def missing_extra(extra: str, what: str, module: str | None = None) -> UserError:
    """The error for a feature whose optional dependencies (an extra of the effx-serve distribution) are not installed."""
    missing = f" ({module} is missing)" if module else ""
    return UserError(f"{what} needs the {extra} extra{missing}: pip install 'effx-serve[{extra}]'")


@contextmanager
def needs_extra(extra: str, what: str) -> Iterator[None]:
    """Turn an ImportError inside the block into `missing_extra`: `with needs_extra("train", "export"): import torch`."""
    try:
        yield
    except ImportError as error:
        raise missing_extra(extra, what, error.name) from None
