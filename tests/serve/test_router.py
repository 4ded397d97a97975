"""The SLA router against a brute-force oracle, the online correction, and the latency profiles it reads."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from effx_serve.core.errors import UserError
from effx_serve.serve.catalog import LatencyProfile, choose_profile
from effx_serve.serve.router import Option, Sla, route, shortfall

accuracies = st.floats(0.0, 1.0, allow_nan=False)
latencies = st.floats(0.01, 100.0, allow_nan=False)
options_st = st.lists(st.tuples(accuracies, latencies), min_size=1, max_size=6).map(
    lambda rows: [Option(f"m{i}", a, t) for i, (a, t) in enumerate(rows)])
slas = st.builds(Sla, st.none() | accuracies, st.none() | latencies, st.sampled_from(["reject", "best_effort"]))


def oracle(options, sla, policy):
    """Every member checked one by one, with the contract's wording as the test."""
    feasible = [o for o in options
                if (sla.min_accuracy is None or o.accuracy >= sla.min_accuracy) and (sla.max_latency_ms is None or o.expected_ms <= sla.max_latency_ms)]
    if not feasible:
        return None
    if sla.min_accuracy is None and sla.max_latency_ms is not None or sla.min_accuracy is None and sla.max_latency_ms is None and policy == "most_accurate":
        best = max(o.accuracy for o in feasible)
        return {o.name for o in feasible if o.accuracy == best and o.expected_ms == min(p.expected_ms for p in feasible if p.accuracy == best)}
    fastest = min(o.expected_ms for o in feasible)
    return {o.name for o in feasible if o.expected_ms == fastest and o.accuracy == max(p.accuracy for p in feasible if p.expected_ms == fastest)}


@settings(max_examples=400, deadline=None)
@given(options_st, slas, st.sampled_from(["most_accurate", "fastest"]))
def test_route_matches_the_brute_force_oracle(options, sla, policy):
    decision = route(options, sla, policy)
    expected = oracle(options, sla, policy)
    if expected is not None:
        assert decision.member in expected
        assert decision.expected_to_meet and decision.nearest == ()
        return
    assert not decision.expected_to_meet
    assert sorted(o.name for o in decision.nearest) == sorted(o.name for o in options)
    least = min(shortfall(o, sla) for o in options)
    assert shortfall(decision.nearest[0], sla) == least
    assert decision.member == (decision.nearest[0].name if sla.on_miss == "best_effort" else None)


MEMBERS = [Option("b0", 0.70, 1.0), Option("b1", 0.76, 2.0), Option("b2", 0.80, 4.0), Option("b3", 0.82, 8.0)]


@pytest.mark.parametrize(("sla", "policy", "chosen"), [
    (Sla(min_accuracy=0.75), "most_accurate", "b1"),  # accuracy only: the fastest accurate enough
    (Sla(max_latency_ms=5.0), "most_accurate", "b2"),  # latency only: the most accurate fast enough
    (Sla(min_accuracy=0.75, max_latency_ms=5.0), "most_accurate", "b1"),  # both: the fastest meeting both
    (Sla(), "most_accurate", "b3"),
    (Sla(), "fastest", "b0"),
    (Sla(min_accuracy=0.9, on_miss="best_effort"), "fastest", "b3"),  # nearest by accuracy
    (Sla(max_latency_ms=0.5, on_miss="best_effort"), "fastest", "b0"),  # nearest by latency
])
def test_the_sla_table(sla, policy, chosen):
    assert route(MEMBERS, sla, policy).member == chosen


def test_a_rejection_lists_the_nearest_options_first():
    decision = route(MEMBERS, Sla(min_accuracy=0.81, max_latency_ms=3.0))
    assert decision.member is None and not decision.expected_to_meet
    # b1 misses accuracy by 6%, b2 by 1% and latency by 33%, b3 latency by 167%, b0 accuracy by 14%
    assert [o.name for o in decision.nearest] == ["b1", "b0", "b2", "b3"]


@pytest.mark.parametrize("arguments", [{"min_accuracy": 1.5}, {"min_accuracy": -1}, {"max_latency_ms": 0}, {"max_latency_ms": math.nan},
                                       {"max_latency_ms": math.inf}, {"on_miss": "maybe"}])
def test_absurd_slas_are_refused(arguments):
    with pytest.raises(UserError):
        Sla(**arguments)


def test_route_needs_options_and_a_known_policy():
    with pytest.raises(UserError, match="no member"):
        route([], Sla())
    with pytest.raises(UserError, match="policy"):
        route(MEMBERS, Sla(), "cheapest")


PROFILE = LatencyProfile("cpu-x", "onnxruntime", "measured", ((1, 1.0), (4, 2.5), (16, 8.5)), True)


@pytest.mark.parametrize(("batch", "ms"), [(1, 1.0), (2, 1.5), (4, 2.5), (10, 5.5), (16, 8.5), (20, 8.5 + 2.5), (33, 17.0 + 1.0)])
def test_service_time_interpolates_and_splits_large_batches(batch, ms):
    assert PROFILE.service_ms(batch) == pytest.approx(ms)
    assert PROFILE.service_ms(batch) == pytest.approx(ms)  # again, from the profile's own memo


def test_a_batch_below_one_is_refused_every_time_and_profiles_compare_by_their_figures():
    for _ in range(2):
        with pytest.raises(ValueError, match="batch must be >= 1"):
            PROFILE.service_ms(0)
    assert PROFILE == LatencyProfile("cpu-x", "onnxruntime", "measured", ((1, 1.0), (4, 2.5), (16, 8.5)), True)
    assert Sla(min_accuracy=0.5).kind == "accuracy" and Sla(max_latency_ms=5).kind == "latency" and Sla().kind == "none"


def _record(hardware, runtime, provenance, batch, p50):
    return {"hardware_id": hardware, "runtime": runtime, "provenance": provenance, "batch": batch, "p50_ms": p50}


def test_choose_profile_prefers_measured_records_of_this_hardware():
    records = [_record("cpu-a", "onnxruntime", "measured", 1, 0.5), _record("cpu-a", "onnxruntime", "measured", 4, 1.5),
               _record("nvidia-h200", "onnxruntime-tensorrt", "predicted", 1, 0.001),
               _record("nvidia-h200", "onnxruntime-cuda", "measured", 1, 0.2)]
    chosen = choose_profile(records, "nvidia-h200", "onnxruntime-tensorrt", "cpu-a")
    assert (chosen.runtime, chosen.provenance, chosen.matches_hardware) == ("onnxruntime-cuda", "measured", True)
    only_predicted = choose_profile(records[:3], "nvidia-h200", "onnxruntime-tensorrt", "cpu-a")
    assert only_predicted.provenance == "predicted"
    borrowed = choose_profile(records, "cpu-b", "onnxruntime", "cpu-a")
    assert borrowed.hardware_id == "cpu-a" and not borrowed.matches_hardware and borrowed.p50_ms == ((1, 0.5), (4, 1.5))
    assert "not this hardware" in borrowed.describe()
