"""Checkpoints: tensors in safetensors, everything else in JSON. Written atomically, read without pickle.

A checkpoint is a pair in the output directory:

- ``<stem>.json``: the entry point. Spec, data fingerprint, recipe, epoch, global step, metrics history,
  RNG states, the optimizer's scalar state, format and torch versions, and the name and sha256 of...
- ``<stem>.e<epoch>.safetensors``: every tensor, named ``model/<name>``, ``ema/<name>`` and
  ``optimizer/<parameter name>/<state key>`` (e.g. ``optimizer/fc.weight/square_avg``).

Stems: ``checkpoint-last`` (every epoch, resumable), ``best`` (highest EMA top-1 so far) and ``final``
(the end of the run); the last two hold weights only.

Why the tensor file name carries the epoch: the JSON is published last with an atomic rename, and it
names its tensor file. If the tensor file kept one fixed name, replacing it would break the *previous*
pair for the moment between the two renames. With a new name per save, a kill at any moment leaves the
previous JSON pointing at its own, untouched tensor file. Superseded tensor files and stray temporary
files are removed after the next successful save.

Every file is written by effx_serve.core.fs.write_atomic (a temporary file beside it, fsync'd, renamed over
the target, the directory fsync'd), so a power cut cannot reorder the two renames either.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from effx_serve.core.fs import write_atomic
from training.arch.spec import ModelSpec
from training.errors import SpecError

FORMAT_VERSION = 1
STEMS = {"last": "checkpoint-last", "best": "best", "final": "final"}
SECTIONS = ("model", "ema", "optimizer")


def json_path(out_dir: str | os.PathLike, kind: str) -> Path:
    """Where the JSON of checkpoint `kind` (last, best, final) lives in `out_dir`."""
    return Path(out_dir) / f"{STEMS[kind]}.json"


def existing(out_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint JSON files present in `out_dir`."""
    return [path for kind in STEMS if (path := json_path(out_dir, kind)).exists()]


# --- writing ------------------------------------------------------------------------------

def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    # A private contiguous copy: safetensors refuses shared or strided (channels_last) storage.
    return tensor.detach().to("cpu", copy=True).contiguous()


def _published_weights(path: Path) -> str | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))["weights"]["file"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_checkpoint(out_dir: str | os.PathLike, kind: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write checkpoint `kind` to `out_dir`: tensors first, then the JSON naming them. Returns the JSON path.

    `meta` must be JSON-serialisable and hold at least `epoch`; `tensors` are keyed `<section>/<name>`.
    """
    out = Path(out_dir)
    stem = STEMS[kind]
    target = json_path(out, kind)
    previous = _published_weights(target)
    name = f"{stem}.e{int(meta['epoch']):04d}.safetensors"
    for attempt in range(1, 1000):  # never overwrite the tensor file the published JSON names
        if name != previous:
            break
        name = f"{stem}.e{int(meta['epoch']):04d}.{attempt}.safetensors"
    data = save_safetensors({key: _cpu_copy(t) for key, t in tensors.items()},
                            metadata={"format": "pt", "effx_format_version": str(FORMAT_VERSION), "kind": kind})
    write_atomic(out / name, data)
    record = dict(meta)
    record.update(
        format_version=FORMAT_VERSION,
        kind=kind,
        torch_version=torch.__version__,
        saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        weights={"file": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
    )
    write_atomic(target, (json.dumps(_finite_only(record), indent=1, allow_nan=False) + "\n").encode())
    _remove_superseded(out, stem, keep=name)
    return target


def _finite_only(value: Any) -> Any:
    """NaN and infinities (a diverged loss) become null: strict JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_only(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_only(item) for item in value]
    return value


def _remove_superseded(out: Path, stem: str, keep: str) -> None:
    """Tensor files of older saves and temporaries left by killed writers (only this stem's)."""
    for path in list(out.glob(f"{stem}.e*.safetensors")) + list(out.glob(f".{stem}.*.tmp")):
        if path.name != keep:
            with suppress(OSError):
                path.unlink()


# --- reading ------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A verified checkpoint: its JSON record and its tensors, split by section."""

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def spec(self) -> ModelSpec:
        try:
            return ModelSpec.from_dict(self.meta["spec"])
        except KeyError:
            raise SpecError(f"checkpoint {self.path} has no model spec; the file is corrupt") from None
        except SpecError as error:
            raise SpecError(f"checkpoint {self.path}: {error}") from None

    def section(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of one section (model, ema, optimizer), with the section prefix removed."""
        prefix = f"{name}/"
        found = {key[len(prefix):]: tensor for key, tensor in self.tensors.items() if key.startswith(prefix)}
        if not found and name != "optimizer":
            raise SpecError(f"checkpoint {self.path} has no '{name}' tensors; the file is corrupt or not a training checkpoint")
        return found


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's JSON metadata (spec, recipe, epoch, metrics ...), checked, without reading its tensors."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"{path} is a directory; give a checkpoint JSON such as {path / 'final.json'}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"no checkpoint at {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"checkpoint {path} cannot be read: {getattr(error, 'strerror', None) or error}") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as error:
        raise SpecError(f"checkpoint {path} is not valid JSON ({error}); it is corrupt") from None
    if not isinstance(meta, dict):
        raise SpecError(f"checkpoint {path} is not a JSON object; it is corrupt")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise SpecError(f"checkpoint {path} has format version {version!r}; this version reads {FORMAT_VERSION}")
    return meta


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and verify a checkpoint JSON and its tensor file. Never unpickles anything."""
    path = Path(path)
    meta = read_meta(path)
    weights = meta.get("weights")
    if not isinstance(weights, dict) or not isinstance(weights.get("file"), str) or not isinstance(weights.get("sha256"), str):
        raise SpecError(f"checkpoint {path} does not name its tensor file and sha256; it is corrupt")
    name = weights["file"]
    if Path(name).name != name or name in ("", ".", ".."):
        raise SpecError(f"checkpoint {path} names tensor file {name!r}, which is not a plain file name")
    tensor_path = path.parent / name
    try:
        data = tensor_path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"checkpoint {path} names {name}, which is missing from {path.parent}; the checkpoint is incomplete") from None
    except OSError as error:
        raise SpecError(f"checkpoint tensors {tensor_path} cannot be read: {error.strerror}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != weights["sha256"]:
        raise SpecError(
            f"checkpoint tensors {tensor_path} do not match the sha256 recorded in {path.name} "
            f"({digest[:12]}... != {weights['sha256'][:12]}...): the file is corrupt or was replaced"
        )
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError) as error:
        raise SpecError(f"checkpoint tensors {tensor_path} are not a valid safetensors file: {error}") from None
    return Checkpoint(path=path, meta=meta, tensors=tensors)


def check_compatible(checkpoint: Checkpoint, spec: ModelSpec, data_fingerprint: str, allow_data_change: bool = False) -> None:
    """SpecError if the checkpoint was trained with another model, or (unless allowed) on other data."""
    saved = checkpoint.spec
    if saved != spec:
        mine, theirs = saved.to_dict(), spec.to_dict()
        changed = [f"{key}: {mine[key]!r} -> {theirs.get(key)!r}" for key in mine if key != "name" and mine[key] != theirs.get(key)]
        raise SpecError(
            f"checkpoint {checkpoint.path} was trained with a different model ({'; '.join(changed)}); "
            "resume with the model it was trained with, or choose another output directory"
        )
    saved_data = checkpoint.meta.get("data_fingerprint")
    if saved_data != data_fingerprint and not allow_data_change:
        raise SpecError(
            f"the data set changed since checkpoint {checkpoint.path} (fingerprint {saved_data} -> {data_fingerprint}); "
            "point at the original data, or pass --allow-data-change to continue on the new data"
        )


def load_weights(path: str | os.PathLike, which: str = "ema") -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """(spec, state_dict) for building and exporting a trained model.

    `path` is a checkpoint JSON or a training output directory (then its ``final.json``, or while the
    run is unfinished its ``checkpoint-last.json``; pass ``best.json`` explicitly for the best epoch).
    `which` is "ema" (the averaged weights, the ones evaluated as the run's result) or "model".
    """
    if which not in ("ema", "model"):
        raise SpecError(f"which weights: 'ema' or 'model', got {which!r}")
    path = Path(path)
    if path.is_dir():
        candidates = [json_path(path, "final"), json_path(path, "last")]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise SpecError(f"{path} holds no checkpoint (looked for {', '.join(c.name for c in candidates)})")
        path = found
    checkpoint = read_checkpoint(path)
    return checkpoint.spec, checkpoint.section(which)


# --- optimizer state ------------------------------------------------------------------------


def optimizer_param_names(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> list[str]:
    """The model's name for each optimizer parameter, in the optimizer's state_dict index order."""
    names = {id(p): name for name, p in model.named_parameters()}
    try:
        return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    except KeyError:
        raise ValueError("the optimizer holds a parameter that is not the model's") from None


def flatten_optimizer(optimizer: torch.optim.Optimizer, names: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors keyed <param name>/<state key>, JSON part: param_groups without params, scalar state).

    Stored under the ``optimizer/`` section; `restore_optimizer` takes that section back.
    """
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{names[index]}/{key}"] = value
            else:
                scalars.setdefault(names[index], {})[key] = value
    groups = [{key: value for key, value in group.items() if key != "params"} for group in state["param_groups"]]
    return tensors, {"class": type(optimizer).__name__, "param_groups": groups, "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, names: list[str], tensors: dict[str, torch.Tensor], saved: dict[str, Any],
                      where: Path | str = "checkpoint") -> None:
    """Load what `flatten_optimizer` wrote into a freshly built `optimizer` over the same model."""
    if saved.get("class") != type(optimizer).__name__:
        raise SpecError(f"{where} holds {saved.get('class')} state but the recipe builds {type(optimizer).__name__}")
    template = optimizer.state_dict()
    if len(saved.get("param_groups", [])) != len(template["param_groups"]):
        raise SpecError(f"{where}: optimizer parameter groups do not match this model")
    groups = [dict(old, params=new["params"]) for old, new in zip(saved["param_groups"], template["param_groups"], strict=True)]
    index = {name: i for i, name in enumerate(names)}
    state: dict[int, dict[str, Any]] = {}
    entries = [(*key.rsplit("/", 1), value) for key, value in tensors.items()]
    entries += [(name, key, value) for name, values in saved.get("scalars", {}).items() for key, value in values.items()]
    for name, key, value in entries:
        if name not in index:
            raise SpecError(f"{where} has optimizer state for parameter {name!r}, which this model does not have")
        state.setdefault(index[name], {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})
