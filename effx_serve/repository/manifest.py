"""manifest.json: the contract between a built model repository and the router.

`effx_serve/repository/schemas/manifest.schema.json` is the schema (JSON Schema 2020-12); `validate` checks a
manifest against it and against the rules a schema cannot say (families name existing members, the
label count matches every output, percentiles are ordered), and reports the first violation with its
path, e.g. ``$.members['b0'].accuracy.top1: 1.5 is greater than the maximum of 1``.
"""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from effx_serve.core.errors import UserError
from effx_serve.core.fs import read_json

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1


class ManifestError(UserError):
    """A manifest that cannot be read or does not follow the schema."""


@cache
def schema() -> dict:
    return json.loads(resources.files("effx_serve.repository").joinpath("schemas/manifest.schema.json").read_text(encoding="utf-8"))


def _path(parts) -> str:
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f"['{part}']" if not str(part).isidentifier() else f".{part}"
                         for part in parts)


def _non_finite(data: Any, parts: tuple = ()) -> list[str]:
    """Python reads NaN and Infinity as JSON numbers, and every bound in a schema lets NaN through."""
    if isinstance(data, float) and not math.isfinite(data):
        return [f"{_path(parts)}: {data} is not a number JSON allows"]
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    return [problem for key, value in items for problem in _non_finite(value, (*parts, key))]


def problems(data: Any) -> list[str]:
    """Every violation, each as '<json path>: <message>', schema violations first (in document order)."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema())
    found = [f"{_path(error.absolute_path)}: {error.message}"
             for error in sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])]
    found += _non_finite(data)
    if found:
        return found
    members = data["members"]
    for index, family in enumerate(data["families"]):
        for position, name in enumerate(family["members"]):
            if name not in members:
                found.append(f"$.families[{index}].members[{position}]: no member named {name!r} in $.members")
    classes = len(data["dataset"]["labels"])
    for name, member in members.items():
        where = _path(["members", name])
        if member["model"]["output"]["dims"] != [classes]:
            found.append(f"{where}.model.output.dims: {member['model']['output']['dims']} does not match the {classes} labels")
        if member["model"]["input"]["dims"] != [3, member["resolution"], member["resolution"]]:
            found.append(f"{where}.model.input.dims: {member['model']['input']['dims']} is not [3, resolution, resolution]")
        if not member["model"]["path"].startswith(f"{name}/"):
            found.append(f"{where}.model.path: {member['model']['path']!r} is not inside the member's folder {name}/")
        for index, record in enumerate(member["latency"]):
            if not record["p50_ms"] <= record["p90_ms"] <= record["p99_ms"]:
                found.append(f"{where}.latency[{index}]: percentiles must satisfy p50 <= p90 <= p99")
    return found


def validate(data: Any, where: str = MANIFEST_FILE) -> dict:
    """`data` itself when it is a valid manifest; else a ManifestError naming the first violation and its path."""
    found = problems(data)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ManifestError(f"{where}: {found[0]}{more}")
    return data


def _path_of(repository: str | Path) -> Path:
    path = Path(repository)
    return path / MANIFEST_FILE if path.is_dir() else path


def load(repository: str | Path) -> Any:
    """The parsed, not yet validated, manifest of a repository folder (or of a manifest file given directly)."""
    path = _path_of(repository)
    if not path.exists():
        raise ManifestError(f"{path} does not exist; build a repository with 'effx-serve build-repo'")
    return read_json(path, error=ManifestError)


def read(repository: str | Path) -> dict:
    """The validated manifest of a repository folder (or of a manifest file given directly)."""
    return validate(load(repository), str(_path_of(repository)))


