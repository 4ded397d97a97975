"""The calibrated latency model: per-layer roofline times scaled by per-operator efficiencies E.

For each layer l the ideal roofline time is t_l = max(W_l / C_max, Q_l / b) (E = 1). Layers fall into
operator classes (1x1 conv, k x k conv, depthwise conv, squeeze-excite, classifier, memory-only ops), and a
class c runs at its own efficiency E_c, so

    latency = sum_c (1 / E_c) * sum_{l in c} t_l  +  t_op * (number of operators)  +  t_0

with t_op the per-operator dispatch cost and t_0 the per-call overhead. The model is linear in
(1/E_c, t_op, t_0), all non-negative, so non-negative least squares on measured latencies finds them;
rows are divided by the measured latency and reweighted (IRLS), so the fit minimises absolute *relative*
error, which is what the error targets count. One model per (hardware id, runtime, precision), saved as JSON in the cache.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from effx_serve.core.errors import UserError
from effx_serve.core.fs import cache_dir, write_atomic
from effx_serve.hardware.table import PRECISION_BYTES, Hardware
from effx_serve.perf.roofline import analyze, layer_traffic
from training.arch.plan import Layer, expand
from training.arch.spec import ModelSpec

OPERATOR_CLASSES = ("conv1x1", "conv", "dwconv", "se", "fc", "memory")
FEATURES = (*OPERATOR_CLASSES, "operators", "call")
MODEL_VERSION = 1


def operator_class(layer: Layer) -> str:
    if layer.kind == "conv":
        return "conv1x1" if layer.kernel == 1 else "conv"
    if layer.kind in ("se_reduce", "se_expand", "scale"):
        return "se"
    return {"dwconv": "dwconv", "fc": "fc"}.get(layer.kind, "memory")


def features(spec: ModelSpec, hardware: Hardware, batch: int, precision: str = "fp32", resolution: int | None = None) -> np.ndarray:
    """The model's feature row: ideal roofline seconds per operator class, operator count, 1."""
    peak, element_bytes = hardware.peak_for(precision), PRECISION_BYTES[precision]
    row = dict.fromkeys(FEATURES, 0.0)
    layers = expand(spec, resolution).layers()
    for layer in layers:
        flops, moved = layer_traffic(layer, batch, element_bytes)
        row[operator_class(layer)] += max(flops / peak, moved / hardware.bandwidth)
    row["operators"] = float(len(layers))
    row["call"] = 1.0
    return np.array([row[name] for name in FEATURES])


def nnls(a: np.ndarray, b: np.ndarray, iterations: int = 500) -> np.ndarray:
    """Non-negative least squares, min |a x - b| with x >= 0 (Lawson-Hanson active set)."""
    rows, cols = a.shape
    x = np.zeros(cols)
    passive = np.zeros(cols, dtype=bool)
    for _ in range(iterations):
        gradient = a.T @ (b - a @ x)
        candidates = ~passive & (gradient > 1e-12 * max(1.0, np.abs(gradient).max()))
        if not candidates.any():
            break
        passive[np.argmax(np.where(candidates, gradient, -np.inf))] = True
        while True:
            z = np.zeros(cols)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            # Step back to the boundary and drop the variables that hit zero.
            blocking = passive & (z <= 0)
            alpha = np.min(x[blocking] / (x[blocking] - z[blocking]))
            x = x + alpha * (z - x)
            passive &= x > 1e-15
            x[~passive] = 0.0
    return x


def relative_errors(predicted, measured) -> np.ndarray:
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    return np.abs(predicted - measured) / measured


def error_summary(errors) -> dict:
    errors = np.asarray(errors, float)
    return {"median": float(np.median(errors)), "p90": float(np.percentile(errors, 90)), "max": float(errors.max()), "n": int(errors.size)}


@dataclass(frozen=True)
class LatencyModel:
    hardware_id: str
    runtime: str
    precision: str
    coefficients: dict[str, float]  # per feature; 1/E for operator classes, seconds for operators and call
    fit: dict = field(default_factory=dict)  # in-sample and cross-validated errors, sample count
    calibration: dict = field(default_factory=dict)  # what was measured: specs, resolutions, batches, protocol
    created_at: float = field(default_factory=time.time)

    @property
    def efficiencies(self) -> dict[str, float | None]:
        """E per operator class (None: the fit gave the class no time of its own)."""
        return {c: (1.0 / self.coefficients[c] if self.coefficients[c] > 0 else None) for c in OPERATOR_CLASSES}

    def predict_seconds(self, spec: ModelSpec, hardware: Hardware, batch: int, resolution: int | None = None) -> float:
        if hardware.id != self.hardware_id:
            raise UserError(f"this latency model was calibrated on {self.hardware_id}, not {hardware.id}")
        return float(features(spec, hardware, batch, self.precision, resolution) @ self._vector())

    def _vector(self) -> np.ndarray:
        return np.array([self.coefficients[name] for name in FEATURES])

    def to_dict(self) -> dict:
        return {"model_version": MODEL_VERSION, **asdict(self), "efficiencies": self.efficiencies}

    @classmethod
    def from_dict(cls, data: dict) -> LatencyModel:
        if data.get("model_version") != MODEL_VERSION:
            raise UserError(f"latency model version {data.get('model_version')} is not {MODEL_VERSION}; run 'effx-serve calibrate' again")
        coefficients = data.get("coefficients", {})
        if set(coefficients) != set(FEATURES) or not all(isinstance(v, int | float) and v >= 0 for v in coefficients.values()):
            raise UserError(f"latency model coefficients must be non-negative numbers for {', '.join(FEATURES)}")
        return cls(data["hardware_id"], data["runtime"], data["precision"], dict(coefficients),
                   data.get("fit", {}), data.get("calibration", {}), data.get("created_at", 0.0))


def fit_relative(rows: np.ndarray, measured_seconds: np.ndarray, iterations: int = 0) -> np.ndarray:
    """Coefficients c >= 0 of rows @ c ~ measured, by non-negative least squares on relative error.

    `iterations` > 0 reweights each row by 1 / |its relative error| that many times (IRLS), which turns squared
    error into absolute error, so a few noisy measurements (a shared machine has them) pull the fit less.
    """
    rows, measured_seconds = np.asarray(rows, float), np.asarray(measured_seconds, float)
    if (measured_seconds <= 0).any():
        raise UserError("measured latencies must be positive")
    relative = rows / measured_seconds[:, None]
    weights = np.ones(len(rows))
    for _ in range(iterations + 1):
        weighted = relative * np.sqrt(weights)[:, None]
        # Scale columns to unit size so the solver's tolerances mean the same for seconds and counts.
        scale = np.linalg.norm(weighted, axis=0)
        scale[scale == 0] = 1.0
        coefficients = nnls(weighted / scale, np.sqrt(weights)) / scale
        weights = 1.0 / np.maximum(np.abs(relative @ coefficients - 1.0), 0.02)
    return coefficients


def fit(rows: np.ndarray, measured_seconds: np.ndarray, iterations: int = 10) -> np.ndarray:
    """The latency model's coefficients: `fit_relative` with IRLS, minimising mean absolute relative error."""
    if len(rows) < len(FEATURES):
        raise UserError(f"a latency model needs at least {len(FEATURES)} measurements to fit, got {len(rows)}")
    return fit_relative(rows, measured_seconds, iterations)


def flops_rows(flops) -> np.ndarray:
    """Feature rows of the FLOPs-only baseline, latency = a * FLOPs + b."""
    return np.column_stack([np.asarray(flops, float), np.ones(len(flops))])


def cross_validated_errors(rows: np.ndarray, measured_seconds: np.ndarray, folds: int = 5, seed: int = 0,
                           fitter=fit) -> np.ndarray:
    """Relative error of each sample predicted by `fitter` fitted without its fold."""
    order = np.random.default_rng(seed).permutation(len(rows))
    errors = np.empty(len(rows))
    for fold in range(folds):
        held = order[fold::folds]
        kept = np.setdiff1d(order, held)
        coefficients = fitter(rows[kept], measured_seconds[kept])
        errors[held] = relative_errors(rows[held] @ coefficients, measured_seconds[held])
    return errors


def model_path(hardware_id: str, runtime: str, precision: str) -> Path:
    return cache_dir() / "latency-models" / f"{hardware_id}--{runtime}--{precision}.json"


def save(model: LatencyModel) -> Path:
    path = model_path(model.hardware_id, model.runtime, model.precision)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(model.to_dict(), indent=2))
    return path


def load(hardware_id: str, runtime: str, precision: str = "fp32") -> LatencyModel | None:
    """The calibrated model for this hardware and runtime, or None where none was calibrated."""
    path = model_path(hardware_id, runtime, precision)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"latency model {path} is unreadable ({error}); run 'effx-serve calibrate' again") from None
    return LatencyModel.from_dict(data)


def predictor(machine, runtime: str, precision: str = "fp32"):
    """(predict(spec, batch, resolution) -> ms, source): this machine's calibrated model, else the ideal roofline (E = 1)."""
    calibrated = load(machine.hardware_id, runtime, precision)
    if calibrated is not None:
        return (lambda spec, batch, res: 1e3 * calibrated.predict_seconds(spec, machine.hardware, batch, res)), "calibrated"
    return (lambda spec, batch, res: analyze(spec, machine.hardware, batch, precision, res).predicted_ms), "roofline (uncalibrated)"
