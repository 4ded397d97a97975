"""What the load-test modules that run against a real server share."""

import json
from pathlib import Path

import pytest

from tests.helpers import served


@pytest.fixture(scope="module")
def server_url(served_repository, tmp_path_factory):
    """`effx-serve serve` on the tiny repository (embedded ONNX Runtime), in its own process."""
    with served(served_repository, tmp_path_factory.mktemp("serve")) as url:
        yield url


def read_report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())
