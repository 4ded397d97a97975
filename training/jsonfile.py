"""Reading a user's JSON file with one-line errors that name the file and the cause."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.errors import SpecError


def read_json(path: str | Path, what: str) -> Any:
    """The parsed JSON at `path`; a SpecError "<what> <path> cannot be read / is not JSON: <cause>" otherwise."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as error:
        raise SpecError(f"{what} {path} cannot be read: {error.strerror}") from None
    except ValueError as error:
        raise SpecError(f"{what} {path} is not JSON: {error}") from None
