"""Calibrate the latency model on this machine: measure a set of specs over batch sizes, fit E per operator class.

Measurements go through the latency store, so a re-run (or a run interrupted and started again) only times
what is missing; the fitted model is saved per (hardware id, runtime, precision).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from effx_serve.hardware.machine import Machine
from effx_serve.perf import latency_model
from effx_serve.perf.latency_model import LatencyModel, error_summary
from effx_serve.perf.latency_store import LatencyStore
from effx_serve.perf.measure import measure_spec
from effx_serve.perf.profiler import DEFAULT_PROTOCOL, Protocol
from training.arch.plan import expand
from training.arch.spec import ModelSpec


@dataclass(frozen=True)
class Sample:
    name: str
    resolution: int
    batch: int
    measured_s: float
    features: np.ndarray
    flops: float


def measure_samples(specs: Sequence[ModelSpec], batches: Sequence[int], runtime: str, machine: Machine, store: LatencyStore,
                    precision: str = "fp32", protocol: Protocol = DEFAULT_PROTOCOL,
                    progress: Callable[[str], None] | None = None) -> list[Sample]:
    samples = []
    for index, spec in enumerate(specs, 1):
        for batch in batches:
            record, cached = measure_spec(spec, spec.resolution, batch, runtime, machine, store, precision, protocol)
            row = latency_model.features(spec, machine.hardware, batch, precision)
            flops = 2.0 * expand(spec).macs * batch
            samples.append(Sample(spec.name, spec.resolution, batch, record.p50_ms / 1e3, row, flops))
            if progress:
                progress(f"[{index}/{len(specs)}] {spec.name} r{spec.resolution} b{batch}: {record.p50_ms:.3f} ms"
                         + (" (cached)" if cached else ""))
    return samples


def fit_samples(samples: Sequence[Sample], machine: Machine, runtime: str, precision: str = "fp32", calibration: dict | None = None) -> LatencyModel:
    rows = np.array([s.features for s in samples])
    measured = np.array([s.measured_s for s in samples])
    coefficients = latency_model.fit(rows, measured)
    fit = {"in_sample": error_summary(latency_model.relative_errors(rows @ coefficients, measured))}
    # Cross-validation needs every fold's training part to be a full fit; small calibrations report in-sample only.
    if len(samples) >= 2 * len(latency_model.FEATURES):
        fit["cross_validated"] = error_summary(latency_model.cross_validated_errors(rows, measured))
        flops = latency_model.flops_rows([s.flops for s in samples])
        fit["flops_only_cross_validated"] = error_summary(
            latency_model.cross_validated_errors(flops, measured, fitter=latency_model.fit_relative))
    return LatencyModel(machine.hardware_id, runtime, precision, dict(zip(latency_model.FEATURES, map(float, coefficients), strict=True)),
                        fit, calibration or {})

