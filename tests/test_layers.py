"""The layout's rules, checked: import-linter's contracts (pyproject.toml) hold and fail on a violating import, no
module imports another package's private names, and ruff is clean everywhere."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

PACKAGES = ("effx_serve", "training", "search", "loadtest")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the packages under `root` (they shadow the installed ones), with the project's contracts."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_violating_import_breaks_the_contracts_that_forbid_it(tmp_path):
    for name in (*PACKAGES, "pyproject.toml"):
        source = ROOT / name
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, tmp_path / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if source.is_dir() else {}))
    with open(tmp_path / "effx_serve" / "core" / "fs.py", "a") as module:  # the base reaching up into serving
        module.write("\n\ndef _late():\n    import effx_serve.serve.server  # noqa: F401\n")
    with open(tmp_path / "effx_serve" / "serve" / "router.py", "a") as module:  # torch on the serving path, hidden in a function
        module.write("\n\ndef _late():\n    import torch  # noqa: F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "effx_serve.core.fs -> effx_serve.serve.server" in result.stdout
    assert "effx_serve.serve.router -> torch" in result.stdout
    assert "Layers: each package imports only the ones below it" in result.stdout and "BROKEN" in result.stdout


def _private_imports(path: Path) -> list[str]:
    """`from X import _name` where X is a module of ours outside the importing file's own package."""
    own = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in (*PACKAGES, "tests"):
            package = node.module if (ROOT / node.module.replace(".", "/")).is_dir() else node.module.rpartition(".")[0]
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__") and package != own:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {alias.name}")
    return found


def test_no_module_imports_another_packages_private_names():
    files = [p for folder in (*PACKAGES, "tests", "benchmarks") for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts]
    assert [hit for path in files for hit in _private_imports(path)] == []


def test_ruff_is_clean_on_every_package():
    result = subprocess.run([str(Path(sys.executable).with_name("ruff")), "check", *PACKAGES, "tests", "benchmarks"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
