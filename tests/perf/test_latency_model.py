import json

import numpy as np
import pytest

from effx_serve.core.errors import UserError
from effx_serve.hardware.table import VENDOR_HARDWARE
from effx_serve.perf import latency_model
from effx_serve.perf.latency_model import FEATURES, OPERATOR_CLASSES, LatencyModel, features, fit, nnls, operator_class
from effx_serve.perf.roofline import analyze
from search.nas.space import random_specs
from training.arch.plan import expand
from training.arch.presets import PRESETS

V100 = VENDOR_HARDWARE["nvidia-v100"]


def test_nnls_matches_the_unconstrained_solution_when_it_is_positive_and_clips_otherwise():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.1, 1.0, (40, 4))
    truth = np.array([0.5, 2.0, 0.0, 1.5])
    x = nnls(a, a @ truth)
    assert np.allclose(x, truth, atol=1e-9)
    # A target that pulls coefficients negative: the answer satisfies the optimality (KKT) conditions.
    for seed in range(20):
        b = a @ np.random.default_rng(seed).normal(size=4) + rng.normal(0, 0.1, 40)
        x = nnls(a, b)
        gradient = a.T @ (b - a @ x)
        assert x.min() >= 0
        assert np.all(gradient[x == 0] <= 1e-9) and np.allclose(gradient[x > 0], 0, atol=1e-9)


def test_every_layer_falls_into_one_operator_class():
    spec = PRESETS["efficientnet-x-b0"]
    classes = {operator_class(layer) for layer in expand(spec).layers()}
    assert classes <= set(OPERATOR_CLASSES) and {"conv1x1", "conv", "dwconv", "se", "fc", "memory"} <= classes


def test_features_with_unit_coefficients_reproduce_the_ideal_roofline():
    spec = PRESETS["efficientnet-b0"]
    row = features(spec, V100, batch=8)
    unit = np.array([1.0 if name in OPERATOR_CLASSES else 0.0 for name in FEATURES])
    assert row @ unit == pytest.approx(analyze(spec, V100, 8).predicted_ms / 1e3, rel=1e-9)
    assert row[FEATURES.index("operators")] == len(expand(spec).layers()) and row[-1] == 1.0


def test_the_fit_recovers_known_efficiencies_and_overheads_from_synthetic_measurements():
    """Latencies generated from known E per class and known overheads, with 3% noise: the fit finds them."""
    specs = random_specs(40, seed=3, resolutions=(64, 128, 224))
    rows = np.array([features(spec, V100, batch) for spec in specs for batch in (1, 16)])
    truth = dict(conv1x1=1 / 0.6, conv=1 / 0.8, dwconv=1 / 0.1, se=1 / 0.02, fc=1 / 0.5, memory=1 / 0.7, operators=4e-6, call=50e-6)
    vector = np.array([truth[name] for name in FEATURES])
    measured = rows @ vector * np.random.default_rng(1).uniform(0.97, 1.03, len(rows))
    coefficients = fit(rows, measured)
    errors = latency_model.relative_errors(rows @ coefficients, measured)
    assert np.median(errors) < 0.02
    share = (rows * vector).sum(axis=0) / (rows @ vector).sum()
    assert (share > 0.1).sum() >= 2
    for name, part in zip(FEATURES, share, strict=True):  # every term that carries a tenth of the time is found
        if part > 0.1:
            assert coefficients[FEATURES.index(name)] == pytest.approx(truth[name], rel=0.1), name
    # Without noise the answer is exact.
    assert np.allclose(fit(rows, rows @ vector), vector, rtol=1e-6)


def test_cross_validated_errors_are_out_of_sample_and_flops_only_is_worse_on_roofline_data():
    specs = random_specs(30, seed=4)
    rows = np.array([features(spec, V100, 1) for spec in specs])
    flops = np.array([2.0 * expand(spec).macs for spec in specs])
    vector = np.array([1.5, 1.2, 10.0, 50.0, 2.0, 1.4, 5e-6, 20e-6])
    measured = rows @ vector
    assert np.median(latency_model.cross_validated_errors(rows, measured)) < 1e-6
    flops_only = latency_model.cross_validated_errors(latency_model.flops_rows(flops), measured, fitter=latency_model.fit_relative)
    assert np.median(flops_only) > 0.05


def test_fit_refuses_too_few_or_non_positive_measurements():
    rows = np.ones((3, len(FEATURES)))
    with pytest.raises(UserError, match="at least 8 measurements"):
        fit(rows, np.ones(3))
    with pytest.raises(UserError, match="must be positive"):
        fit(np.ones((10, len(FEATURES))), np.zeros(10))


def test_save_load_predict_and_bad_files():
    model = LatencyModel("nvidia-v100", "onnxruntime", "fp32", {name: 1.0 if name in OPERATOR_CLASSES else 0.0 for name in FEATURES})
    path = latency_model.save(model)
    loaded = latency_model.load("nvidia-v100", "onnxruntime")
    assert loaded == model and loaded.efficiencies["dwconv"] == 1.0
    spec = PRESETS["efficientnet-b0"]
    assert loaded.predict_seconds(spec, V100, 4) * 1e3 == pytest.approx(analyze(spec, V100, 4).predicted_ms)
    with pytest.raises(UserError, match="calibrated on nvidia-v100"):
        loaded.predict_seconds(spec, VENDOR_HARDWARE["nvidia-a100"], 1)
    assert latency_model.load("nvidia-a100", "onnxruntime") is None
    path.write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        latency_model.load("nvidia-v100", "onnxruntime")
    path.write_text(json.dumps(model.to_dict() | {"coefficients": {"conv": -1}}))
    with pytest.raises(UserError, match="non-negative"):
        latency_model.load("nvidia-v100", "onnxruntime")
    path.write_text(json.dumps(model.to_dict() | {"model_version": 99}))
    with pytest.raises(UserError, match="calibrate"):
        latency_model.load("nvidia-v100", "onnxruntime")
