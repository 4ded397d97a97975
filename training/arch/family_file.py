"""family.json: the members of a scaled family (spec and phi each) and the coefficients that made them.

Written by `effx-serve lacs` (search.scaling.job), read by `build-family` (training the members) and by
`build-repo` (exporting them), so the format lives here, below both.
"""

from __future__ import annotations

from pathlib import Path

from effx_serve.core.fs import read_json
from training.arch.spec import ModelSpec
from training.errors import SpecError

FAMILY_VERSION = 1


def read_family(path: Path) -> dict:
    """family.json, checked: a clear error for a missing, unreadable or malformed file."""
    data = read_json(path, "family file", SpecError)
    if not isinstance(data, dict) or data.get("family_version") != FAMILY_VERSION or not isinstance(data.get("members"), list):
        raise SpecError(f"family file {path} is not a version-{FAMILY_VERSION} family (made by 'effx-serve lacs')")
    if not isinstance(data.get("hardware"), str):
        raise SpecError(f"family file {path} names no hardware it was searched for (\"hardware\": an id such as cpu-amd-epyc)")
    for index, member in enumerate(data["members"]):
        try:
            ModelSpec.from_dict(member["spec"])
        except (KeyError, TypeError) as error:
            raise SpecError(f"family file {path}: member {index} has no spec ({error})") from None
        phi = member.get("phi", 0.0)
        if isinstance(phi, bool) or not isinstance(phi, int | float):
            raise SpecError(f"family file {path}: member {index} has phi {phi!r}; a number is expected")
    return data
