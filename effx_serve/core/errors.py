"""The project's one error root: what a user can cause, shown as one line (the cause and the fix), never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """Bad input, a missing file or dependency, an unsupported choice: the message says the cause and the fix."""


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
