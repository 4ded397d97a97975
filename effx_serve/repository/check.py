"""`effx-serve check-repo`: is a model repository whole, consistent and servable? Every problem named.

Checked: the manifest against its schema; per member, config.pbtxt parsed as Triton's ModelConfig and
matching the manifest (name, backend, input and output names and dims, labels), labels.txt, the model
file's sha256, onnx.checker, and one inference in ONNX Runtime; folders Triton would load that the
manifest does not list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from effx_serve.core.errors import UserError, missing_extra
from effx_serve.core.fs import sha256_file
from effx_serve.perf.session import onnxruntime_session
from effx_serve.repository import manifest, triton_config


@dataclass(frozen=True)
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def check_repository(root: Path, run_models: bool = True) -> tuple[dict | None, list[Problem]]:
    """(the manifest when it is valid, every problem found)."""
    if not root.is_dir():
        return None, [Problem(str(root), "not a folder")]
    manifest_path = root / manifest.MANIFEST_FILE
    try:
        data = manifest.load(manifest_path)
    except UserError as error:
        return None, [Problem(str(manifest_path), str(error).removeprefix(str(manifest_path)).strip())]
    found = manifest.problems(data)  # every schema violation, not just the first
    if found:
        return None, [Problem(str(manifest_path), problem) for problem in found]
    problems: list[Problem] = []
    for name, member in data["members"].items():
        problems += _check_member(root, name, member, data, run_models)
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name not in data["members"]:
            problems.append(Problem(str(folder), "not in the manifest, but Triton would load it as a model"))
    return data, problems


def _check_member(root: Path, name: str, member: dict, data: dict, run_models: bool) -> list[Problem]:
    folder = root / name
    config_path = folder / "config.pbtxt"
    if not folder.is_dir():
        return [Problem(str(folder), "missing: the manifest lists this member")]
    found = []
    try:
        config = triton_config.parse(config_path.read_text(encoding="utf-8"), str(config_path))
    except OSError as error:
        return [Problem(str(config_path), f"cannot be read ({error.strerror})")]
    except UnicodeDecodeError:
        return [Problem(str(config_path), "is not UTF-8 text")]
    except UserError as error:
        return [Problem(str(config_path), str(error).split(": ", 1)[-1])]
    classes = len(data["dataset"]["labels"])
    expected = {
        "name": (config.name, name),
        "backend": (config.backend, data["triton_backend"]),
        "max_batch_size": (config.max_batch_size, member["model"]["max_batch_size"]),
        "input": ([(i.name, list(i.dims)) for i in config.input], [(member["model"]["input"]["name"], member["model"]["input"]["dims"])]),
        "output": ([(o.name, list(o.dims)) for o in config.output], [(member["model"]["output"]["name"], [classes])]),
    }
    for field, (got, want) in expected.items():
        if got != want:
            found.append(Problem(str(config_path), f"{field} is {got!r}, the manifest says {want!r}"))
    labels_path = folder / "labels.txt"
    try:
        labels = labels_path.read_text(encoding="utf-8").splitlines() if labels_path.is_file() else None
    except (OSError, UnicodeDecodeError):
        found.append(Problem(str(labels_path), "cannot be read as UTF-8 text"))
    else:
        if labels is None:
            found.append(Problem(str(labels_path), "missing (the classification extension needs it)"))
        elif labels != data["dataset"]["labels"]:
            found.append(Problem(str(labels_path), f"{len(labels)} labels that differ from the manifest's {classes}"))
    model_path = root / member["model"]["path"]
    if not model_path.is_file():
        return [*found, Problem(str(model_path), "missing")]
    if sha256_file(model_path) != member["model"]["sha256"]:
        found.append(Problem(str(model_path), "sha256 differs from the manifest: the file was changed or damaged"))
    if data["triton_backend"] == "python" and not (model_path.parent / "model.py").is_file():
        found.append(Problem(str(model_path.parent / "model.py"), "missing (the python backend runs it)"))
    found += _check_onnx(model_path, member, classes, run_models)
    return found


def _check_onnx(path: Path, member: dict, classes: int, run_models: bool) -> list[Problem]:
    import numpy as np

    try:
        import onnx
    except ImportError:
        return [Problem(str(path), f"not checked: {missing_extra('train', 'onnx.checker', 'onnx')}")]
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as error:  # the checker raises several unrelated types; any of them means "invalid model"
        return [Problem(str(path), f"onnx.checker: {str(error).strip().splitlines()[0]}")]
    if not run_models:
        return []
    try:
        session = onnxruntime_session(path, threads=1)
        resolution = member["resolution"]
        x = np.zeros((1, 3, resolution, resolution), np.float32)
        logits = session.run([member["model"]["output"]["name"]], {member["model"]["input"]["name"]: x})[0]
    except Exception as error:  # ONNX Runtime's errors are not one type either
        return [Problem(str(path), f"ONNX Runtime cannot run it: {str(error).strip().splitlines()[0]}")]
    if logits.shape != (1, classes) or not np.isfinite(logits).all():
        return [Problem(str(path), f"one inference gave logits of shape {logits.shape} (finite: {bool(np.isfinite(logits).all())}), expected (1, {classes})")]
    return []
