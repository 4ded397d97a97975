"""`effx-serve profile`, `calibrate` and `latency`, and the spec-level measurement under them."""

import json

import pytest

from effx_serve.cli import main
from effx_serve.core.errors import UserError
from effx_serve.hardware.machine import this_machine
from effx_serve.perf.latency_store import LatencyStore
from effx_serve.perf.measure import measure_spec, onnx_file
from training.arch.presets import get_preset

TINY = get_preset("efficientnet-b0", width=0.25, depth=0.25, resolution=32, num_classes=10)


def test_measure_spec_exports_once_and_never_measures_twice(quick_ceilings):
    machine = this_machine()
    with LatencyStore() as store:
        first, cached = measure_spec(TINY, 32, 2, "onnxruntime", machine, store)
        exported = onnx_file(TINY, 32).stat().st_mtime_ns
        again, cached_again = measure_spec(TINY, 32, 2, "onnxruntime", machine, store)
        other_batch, _ = measure_spec(TINY, 32, 1, "onnxruntime", machine, store)
        eager, _ = measure_spec(TINY, 32, 2, "torch", machine, store)
    assert (cached, cached_again) == (False, True) and again == first
    assert onnx_file(TINY, 32).stat().st_mtime_ns == exported  # the export was reused
    assert first.key.hardware_id == machine.hardware_id and first.key.runtime == "onnxruntime" and other_batch.key.batch == 1
    assert eager.key.runtime == "torch" and eager.details["device"] == "cpu"


def test_measure_spec_bad_input(quick_ceilings):
    machine = this_machine()
    with LatencyStore() as store:
        with pytest.raises(UserError, match="unknown runtime 'tensorflow'"):
            measure_spec(TINY, 32, 1, "tensorflow", machine, store)
        with pytest.raises(UserError, match="use --runtime torch for bf16"):
            measure_spec(TINY, 32, 1, "onnxruntime", machine, store, precision="bf16")
        with pytest.raises(UserError, match="CUDAExecutionProvider is not available"):
            measure_spec(TINY, 32, 1, "onnxruntime-cuda", machine, store)


def test_profile_command_reports_measured_predicted_rates_and_efficiency(quick_ceilings, tmp_path, capsys):
    plot = tmp_path / "latency.png"
    assert main(["profile", TINY.to_json(), "--batch", "1,2", "--json", "--plot", str(plot)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in rows] == [1, 2] and plot.stat().st_size > 0
    for row in rows:
        assert 0 < row["measured_ms"] <= row["p99_ms"] and row["predicted_ms"] > 0
        assert row["predicted_by"] == "roofline (uncalibrated)"  # nothing calibrated in this fresh cache
        # (the quick ceilings of this test are far below the real ones, so E and the fractions are not bounded by 1 here)
        assert row["efficiency"] > 0 and row["peak_fraction"] > 0 and row["bandwidth_fraction"] > 0
        assert row["flops_per_s"] == pytest.approx(row["peak_fraction"] * this_machine().hardware.peak["fp32"])
    assert main(["profile", TINY.to_json(), "--batch", "1"]) == 0
    text = capsys.readouterr().out
    assert "pred ms" in text and "cached" in text and "%peak" in text


def test_calibrate_then_profile_uses_the_calibrated_model(quick_ceilings, capsys):
    assert main(["calibrate", "--specs", "4", "--resolutions", "32", "--batch", "1,2", "--json"]) == 0
    model = json.loads(capsys.readouterr().out)
    assert model["fit"]["in_sample"]["n"] == 8 and set(model["efficiencies"]) >= {"conv1x1", "dwconv"}
    assert main(["profile", TINY.to_json(), "--batch", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["predicted_by"] == "calibrated"


def test_latency_command_lists_the_published_records(capsys):
    assert main(["latency", "--hardware", "tpu-v3", "--model", "efficientnet-x-b0", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["provenance"], r["p50_ms"]) for r in rows] == [("published", 8.71)]


@pytest.mark.parametrize(("option", "message"), [("--hardware", "no latency records of hardware 'nosuch'; the store has "),
                                                 ("--model", "no latency records of model 'nosuch'")])
def test_a_hardware_or_model_the_store_has_never_seen_is_named(option, message, capsys):
    assert main(["latency", option, "nosuch"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["profile", "efficientnet-b0", "--batch", "0"], "every value must be at least 1"),
    (["profile", "efficientnet-b0", "--batch", "1,x"], "comma-separated whole numbers"),
    (["profile", "efficientnet-b0", "--runtime", "tensorflow"], "invalid choice"),
    (["calibrate", "--specs", "0"], "must be from 1 to 1000"),
    (["calibrate", "--specs", "5000"], "must be from 1 to 1000"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_calibrate_with_too_few_measurements_is_a_clear_error(quick_ceilings, capsys):
    assert main(["calibrate", "--specs", "1", "--resolutions", "32", "--batch", "1"]) == 2
    assert "at least 8 measurements" in capsys.readouterr().err
