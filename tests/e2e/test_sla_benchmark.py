"""benchmarks/sla.py's figures from a load test's report (the load runs themselves take minutes: docs/serving.md)."""

import importlib.util
from pathlib import Path

import pytest

from tests.helpers import ROOT


def _sla():
    spec = importlib.util.spec_from_file_location("sla_benchmark", ROOT / "benchmarks" / "sla.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_expectations_errors_are_printed_as_quantile_bounds_from_the_servers_metrics():
    sla = _sla()
    phase = {"server_metrics": {"expectation_error_buckets": {"-0.001": 10.0, "0.0": 50.0, "0.008": 90.0, "0.016": 99.0, "+Inf": 100.0}}}
    assert sla.expectation_errors(phase) == ("expectation error (observed - expected, routing to answer) of 100 answered bounded "
                                             "requests: p50 <= 0 ms, p90 <= 8 ms, p99 <= 16 ms")
    beyond = {"server_metrics": {"expectation_error_buckets": {"0.256": 97.0, "+Inf": 100.0}}}
    assert sla.expectation_errors(beyond).endswith("p50 <= 256 ms, p90 <= 256 ms, p99 > 256 ms")
    assert sla.expectation_errors({}) == "expectation error: no answered request with a bound"
    waits = {"decode_wait_ran_buckets": {"0.001": 60.0, "0.004": 95.0, "0.008": 100.0, "+Inf": 100.0}, "decode_wait_late_buckets": {"0.008": 7.0, "+Inf": 7.0}}
    assert sla.expectation_errors({"server_metrics": phase["server_metrics"] | waits}).endswith(
        "p99 <= 16 ms; a lane's wait, observed - expected, of 100 decodings run: p50 <= 1 ms, p90 <= 4 ms, p99 <= 8 ms and "
        "7 decodings found too late: p50 <= 8 ms, p90 <= 8 ms, p99 <= 8 ms")


def test_the_garbage_collectors_pauses_are_printed_full_passes_apart():
    sla = _sla()
    phase = {"server_metrics": {"gc_collections": {"0": 40.0, "1": 4.0, "2": 1.0}, "gc_pause_ms": {"0": 20.0, "1": 4.5, "2": 1.25}}}
    assert sla.garbage_collections(phase) == "garbage collections holding every thread: 45, 25.8 ms in all (1 full, 1.2 ms)"
    assert sla.garbage_collections({}) == "garbage collections: not reported by the server"


def test_in_bound_on_the_servers_clock_counts_admitted_answers_only():
    sla = _sla()
    phase = {"server_metrics": {"routes": {"preferred": 60.0, "scaled": 30.0, "refused_overload": 500.0},
                                "sla_misses": {"latency latency": 9.0, "latency refused": 500.0}}}
    assert sla.server_attainment(phase) == 0.9
    assert sla.server_attainment({}) is None


def test_requests_admitted_then_dropped_are_reported_beside_the_in_bound_share():
    sla = _sla()
    phase = {"server_metrics": {"routes": {"preferred": 60.0, "scaled": 30.0, "refused_deadline": 10.0, "refused_overload": 500.0},
                                "sla_misses": {"latency latency": 9.0}}}
    assert sla.dropped_share(phase) == (0.1, 0.81)  # 10 of 100 admitted dropped; 81 of the 100 answered in bound
    assert sla.dropped_share({}) is None


def test_the_baseline_is_named_by_its_arguments_and_each_server_gets_its_overload_line(capsys):
    sla = _sla()
    assert sla.baseline_label(sla.BASELINE) == "routed, member costing"
    assert sla.baseline_label(["--lane-nice=0"]) == "routed, --lane-nice=0"
    assert sla.baseline_label([], Path("/tmp/old")) == "routed, code of old"
    assert sla.baseline_label(["--lane-nice=0"], Path("/tmp/old")) == "routed, code of old, --lane-nice=0"
    at_capacity = {"name": "routed", "goodput_rps": 200.0, "attainment": 0.8}
    overload = {"name": "routed", "goodput_rps": 150.0, "attainment": 0.3, "refused_429": 40, "refused_422": 0, "answered": 100, "within_bound": 90,
                "refusal_latency_ms": {"p99": 12.5}, "server_metrics": {"refusal_buckets": {"0.004": 10.0, "0.016": 40.0, "+Inf": 40.0}}}
    assert sla.overload_line(at_capacity, overload) == (0.75, 12.5)
    line = capsys.readouterr().out
    assert line.startswith("routed at capacity: goodput 200.0/s") and "goodput 150.0/s (75.0% of it)" in line
    assert "in bound nan% / 90.0% (server / client clock)" in line  # (no server metrics of answers here)
    assert "refusal p99 12.50 ms as the client saw it, <= 16 ms in the server" in line and "actual send" not in line
    sla.overload_line(at_capacity, overload | {"refusal_after_send_ms": {"p99": 4.25}})
    assert "12.50 ms as the client saw it (4.25 ms from its actual send: the rest is the generator's lag)" in capsys.readouterr().out
    causes = {"deadline": {"p50": 20.0, "p99": 31.5, "max": 33.0, "count": 7}, "overload": {"p50": 1.0, "p99": 2.25, "max": 3.0, "count": 33}}
    sla.overload_line(at_capacity, overload | {"refusal_latency_by_reason_ms": causes})
    assert "refusal p99 by cause: deadline 31.50 ms (7), overload 2.25 ms (33)" in capsys.readouterr().out
    assert sla.overload_line(at_capacity, overload | {"refusal_latency_ms": None})[1] == float("inf")


def test_a_baseline_code_folder_without_the_package_is_refused_in_one_line(tmp_path, capsys):
    sla = _sla()
    with pytest.raises(SystemExit) as stopped:
        sla.main(["--baseline-code", str(tmp_path), "--only", "cost"])
    assert stopped.value.code == 2 and f"{tmp_path} has no effx_serve/" in capsys.readouterr().err
