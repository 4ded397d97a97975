"""ONNX export of any spec with a dynamic batch dimension, checked against PyTorch."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from effx_serve.core.fs import replacing
from training.errors import SpecError

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18  # what the dynamo exporter emits natively


@dataclass(frozen=True)
class ExportCheck:
    batch: int
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def export_onnx(model: nn.Module, path: str | os.PathLike, resolution: int, opset: int = DEFAULT_OPSET) -> Path:
    """Write `model` (NCHW float32 in, logits out, batch dynamic) to `path` atomically."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"ONNX output path {path} is a directory; give a file name such as {path / 'model.onnx'}")
    if opset < DEFAULT_OPSET:
        raise SpecError(f"opset {opset} is too old: the exporter writes opset {DEFAULT_OPSET} or later")
    if opset > onnx.defs.onnx_opset_version():
        raise SpecError(f"opset {opset} is newer than this onnx {onnx.__version__} knows (at most {onnx.defs.onnx_opset_version()})")
    model = model.eval()
    example = torch.randn(2, 3, resolution, resolution)
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            # The exporter logs one warning per torchvision op it cannot register; torchvision is optional here.
            logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
            torch.onnx.export(model, (example,), tmp, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                              dynamo=True, external_data=False, dynamic_shapes={"x": {0: batch}}, verbose=False)
            written = _opset_of(tmp)
            if written != opset:  # the exporter falls back to its own opset when it cannot convert, and says so only in a log
                raise SpecError(f"the exporter could not write opset {opset} (it wrote {written}); use --opset {DEFAULT_OPSET}")
    except OSError as error:  # the folder cannot be made or written, the disk is full: the target is as it was
        raise SpecError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def _opset_of(path: str | os.PathLike) -> int | None:
    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def check_onnx(path: str | os.PathLike, model: nn.Module, resolution: int, batches=(1, 3), tolerance: float = 1e-4, seed: int = 0) -> list[ExportCheck]:
    """Max |ONNX Runtime - PyTorch| on random fp32 input, per batch size (proves the batch is dynamic)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    model = model.eval()
    checks = []
    for batch in batches:
        x = torch.randn(batch, 3, resolution, resolution, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        checks.append(ExportCheck(batch, float(np.abs(got - expected).max()), tolerance))
    return checks
