"""The load test's parts without a server: counting, workload, judging answers, plans, the capacity rule, gates, metrics."""

import io
import json
import random

import msgpack
import numpy as np
import pytest
from PIL import Image

from effx_serve.cli.loadtest import duration
from loadtest import prom, scenarios, summary
from loadtest.plan import LoadTest, make_plan, parse_steps
from loadtest.tally import Histogram, Outcome, Tally
from loadtest.workload import Member, PlannedRequest, RequestFactory, judge, members_from_models

MEMBERS = [Member("b0", 0.30, 1.0, ((1, 0.2), (4, 0.6))), Member("b1", 0.45, 2.0, ((1, 0.5), (4, 1.5)))]


def test_histogram_percentiles_are_within_a_bucket_of_the_exact_ones():
    samples = np.random.default_rng(0).lognormal(1.0, 1.2, 20_000)
    histogram = Histogram()
    for value in samples:
        histogram.add(float(value))
    ordered = np.sort(samples)
    for q in (50, 90, 99, 99.9):
        exact = float(ordered[round(q * len(ordered) / 100) - 1])  # the q-th percentile: the sample of rank q% of n
        assert exact <= histogram.percentile(q) <= exact * 1.0101, q
    assert histogram.percentile(100) == pytest.approx(samples.max())
    assert histogram.mean() == pytest.approx(samples.mean())


def test_failures_count_as_late_in_percentiles():
    histogram = Histogram()
    for value in range(1, 100):
        histogram.add(float(value))
    assert histogram.percentile(99) <= 99.0
    assert histogram.percentile(99, late=2) == float("inf")  # 2 of 101 never answered: the p99 is unbounded
    assert Histogram().percentile(50) is None


def _outcome(kind="ok", second=100.0, ms=5.0, member="b0", cls="accuracy", attained=True):
    return Outcome(cls, second, ms, kind, member if kind == "ok" else None, attained, attained, f"{kind} detail")


def test_tallies_merge_and_survive_the_trip_to_the_master():
    a, b = Tally(), Tally()
    for tally, kinds in ((a, ["ok", "ok", "overloaded"]), (b, ["ok", "sla_rejected", "connection"])):
        for kind in kinds:
            tally.sent("accuracy")
            tally.record(_outcome(kind))
    b.lag.add(3.0)
    shipped = Tally.from_json(msgpack.unpackb(msgpack.packb(b.take().to_json()), strict_map_key=False))  # locust's wire format
    assert b.to_json() == Tally().to_json()  # take() starts afresh
    a.merge(shipped)
    counts = a.classes["accuracy"]
    assert counts.sent == 6 and dict(counts.outcomes) == {"ok": 3, "overloaded": 1, "sla_rejected": 1, "connection": 1}
    assert counts.latency.count == 3 and counts.members == {"b0": 3} and counts.attained == 3
    assert (a.seconds[100].ok, a.seconds[100].failed, a.seconds[100].rejected) == (3, 2, 1)
    assert set(a.examples) == {"overloaded", "connection"} and a.lag.count == 1


def test_every_scenario_makes_valid_requests_whose_slas_come_from_the_members():
    for scenario in scenarios.SCENARIOS.values():
        factory = RequestFactory(scenario, MEMBERS, seed=1)
        rng = random.Random(0)
        requests = [factory.next(rng) for _ in range(300)]
        classes = {r.request_class.removeprefix("batch ") for r in requests}
        assert classes == set(scenario.slas), scenario.name
        for r in requests[:40]:
            if r.min_accuracy is not None:
                assert r.min_accuracy in (0.30, 0.45)
            if r.max_latency_ms is not None:
                low, high = scenario.latency_factor
                assert any(m.expected_ms(r.images) * low <= r.max_latency_ms * 1.001 and r.max_latency_ms <= m.expected_ms(r.images) * high * 1.001
                           for m in MEMBERS)
            blobs = [r.body] if not r.batch else [__import__("base64").b64decode(i) for i in json.loads(r.body)["images"]]
            assert len(blobs) == r.images
            for blob in blobs:
                Image.open(io.BytesIO(blob)).verify()
    batch = [r for r in (RequestFactory(scenarios.get("batch"), MEMBERS).next(random.Random(i)) for i in range(5))]
    assert all(r.batch and r.images == 8 and r.path.startswith("/v1/classify/batch?") for r in batch)


def test_latency_budgets_follow_the_profiled_batch_curve():
    assert MEMBERS[0].expected_ms(1) == 0.2 and MEMBERS[0].expected_ms(4) == 0.6 and MEMBERS[0].expected_ms(2) == pytest.approx(1 / 3)
    assert Member("x", 0.5, 2.0).expected_ms(8) == 2.0  # no profile: the server's figure


def test_members_come_from_the_default_family_of_v1_models():
    models = {"default_family": "f", "families": {"f": ["b0"], "g": ["c0"]},
              "members": [{"name": "b0", "accuracy": 0.3, "expected_latency_ms": 1.0, "profile": [{"batch": 1, "p50_ms": 0.2}]},
                          {"name": "c0", "accuracy": 0.9, "expected_latency_ms": 9.0}]}
    assert members_from_models(models) == [Member("b0", 0.3, 1.0, ((1, 0.2),))]


SINGLE = PlannedRequest("latency", "/v1/classify?x", b"", "image/jpeg", 1, None, 5.0)
BATCH = PlannedRequest("batch none", "/v1/classify/batch?x", b"", "application/json", 2, None, None)
ANSWER = {"member": "b0", "sla": {"met": True}, "predictions": [{"label": "a"}]}


@pytest.mark.parametrize(("request_", "status", "body", "ms", "kind"), [
    (SINGLE, 200, ANSWER, 4.0, "ok"),
    (SINGLE, 0, b"", 4.0, "connection"),
    (SINGLE, 429, b"queue full", 4.0, "overloaded"),
    (SINGLE, 429, {"detail": "queue full", "reason": "limit"}, 4.0, "overloaded"),
    (SINGLE, 429, {"detail": "not within 5 ms under this load", "reason": "overload"}, 4.0, "sla_refused"),  # an SLA refusal, not an error
    (SINGLE, 429, {"detail": "could no longer make its bound", "reason": "deadline"}, 4.0, "sla_refused"),
    (SINGLE, 503, b"not ready", 4.0, "server_error"),
    (SINGLE, 500, b"Internal Server Error", 4.0, "server_error"),
    (SINGLE, 422, {"detail": "no member", "options": []}, 4.0, "sla_rejected"),
    (SINGLE, 422, {"detail": "top_k too large"}, 4.0, "client_error"),
    (SINGLE, 400, {"detail": "bad image"}, 4.0, "client_error"),
    (SINGLE, 200, b"<html>", 4.0, "bad_answer"),
    (SINGLE, 200, {"member": "b0"}, 4.0, "bad_answer"),
    (BATCH, 200, ANSWER | {"results": [{"predictions": [1]}]}, 4.0, "bad_answer"),  # one result for two images
    (BATCH, 200, ANSWER | {"results": [{"predictions": [1]}] * 2}, 4.0, "ok"),
])
def test_judging_answers(request_, status, body, ms, kind):
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    assert judge(request_, status, raw, ms, "refused" if status == 0 else None).kind == kind


def test_attainment_server_side_and_end_to_end():
    assert judge(SINGLE, 200, json.dumps(ANSWER).encode(), 4.0) .attained_e2e is True
    late = judge(SINGLE, 200, json.dumps(ANSWER).encode(), 6.0)  # the server met its bound, HTTP and decoding took it over
    assert late.attained and not late.attained_e2e
    missed = judge(SINGLE, 200, json.dumps(ANSWER | {"sla": {"met": False}}).encode(), 1.0)
    assert not missed.attained and not missed.attained_e2e


def test_plans_open_and_closed():
    open_ = make_plan(LoadTest("u", rate=120, steps=4, duration_s=40))
    assert open_.mode == "open" and [s.users for s in open_.steps] == [3, 6, 9, 12]
    assert [s.offered_rate for s in open_.steps] == pytest.approx([30, 60, 90, 120]) and open_.per_user_rate == pytest.approx(10)
    assert {s.seconds for s in open_.steps} == {10}
    closed = make_plan(LoadTest("u", users=10, steps=3, duration_s=9))
    assert closed.mode == "closed" and [s.users for s in closed.steps] == [3, 7, 10] and closed.per_user_rate == 0
    assert [s.users for s in make_plan(LoadTest("u")).steps] == [8]
    assert make_plan(LoadTest("u", rate=0.5)).steps[0].users == 1


@pytest.mark.parametrize(("test", "message"), [
    (LoadTest("u", users=2, rate=3), "not both"),
    (LoadTest("u", rate=10, steps=0), "--steps"),
    (LoadTest("u", users=2, steps=3), "at least as many --users"),
    (LoadTest("u", rate=float("nan")), "--rate"),
    (LoadTest("u", duration_s=0), "--duration"),
])
def test_bad_plans_are_named(test, message):
    with pytest.raises(ValueError, match=message):
        make_plan(test)


def test_locust_step_option():
    assert parse_steps("2:5, 4:7.5") == [(2, 5.0), (4, 7.5)] and parse_steps("") == []
    for bad in ("2", "x:1", "2:0", "-1:3"):
        with pytest.raises(ValueError, match="--effx-steps"):
            parse_steps(bad)


def test_unknown_scenario_lists_the_known_ones():
    with pytest.raises(scenarios.UnknownScenario, match="known: mixed, smoke"):
        scenarios.get("nope")


def _stepped_tally(failures_per_step):
    """Three 10-second steps from t=1000 at 10, 20, 30 answers/s (5 ms), with failures spread over each step."""
    tally = Tally()
    for step, failures in enumerate(failures_per_step):
        for second in range(10):
            t = 1000 + step * 10 + second
            for _ in range(10 * (step + 1)):
                tally.sent("none")
                tally.record(_outcome(second=t + 0.5, ms=5.0 + step, cls="none"))
            if second >= 2 and failures:
                for _ in range(failures):
                    tally.sent("none")
                    tally.record(_outcome("overloaded", second=t + 0.5, cls="none"))
    windows = [summary.Window(i, i + 1, 10.0 * (i + 1), 1000 + 10 * i, 1010 + 10 * i) for i in range(3)]
    return tally, windows


def test_capacity_is_the_last_step_of_the_unbroken_run_within_the_bound():
    tally, windows = _stepped_tally([0, 0, 1])  # 1 failure in 31 a second: 3% late
    points = summary.curve(tally, windows, p99_bound_ms=50)
    assert [p["within_bound"] for p in points] == [True, True, False]
    assert points[0]["throughput_rps"] == pytest.approx(10) and points[1]["throughput_rps"] == pytest.approx(20)
    assert points[2]["p99_ms"] is None and points[2]["error_rate"] == pytest.approx(1 / 31)
    assert summary.capacity(points, 50) == {"p99_bound_ms": 50, "step": 1, "max_rate": 20.0, "throughput_rps": pytest.approx(20),
                                            "basis": "offered rate"}
    assert summary.capacity(summary.curve(tally, windows, p99_bound_ms=5.5), 5.5)["max_rate"] == 10.0  # step 1 answers in 6 ms
    broken_first, w = _stepped_tally([1, 0, 0])
    assert summary.capacity(summary.curve(broken_first, w, 50), 50)["max_rate"] is None


def test_totals_classes_members_and_gates():
    tally, windows = _stepped_tally([0, 0, 1])
    tally.sent("latency")  # one request never finished
    totals = summary.totals(tally, 30.0)
    assert totals["requests"] == 600 + 8 + 1 and totals["unfinished"] == 1 and totals["ok"] == 600
    assert totals["throughput_rps"] == pytest.approx(20) and totals["error_rate"] == pytest.approx((8 + 1) / 609)  # unfinished: an error
    assert totals["errors"]["overloaded"] == {"count": 8, "example": "overloaded detail"}
    rows = summary.classes(tally)
    assert [r["name"] for r in rows] == ["latency", "none"] and rows[1]["members"] == {"b0": 1.0}
    assert summary.members(tally) == {"b0": {"requests": 600, "share": 1.0}}
    capacity = summary.capacity(summary.curve(tally, windows, 50), 50)
    gates = summary.Gates(max_error_rate=0.05, max_p99_ms=7.5, min_sla_attainment=0.99, min_capacity_rps=25)
    results = {g["name"]: g["passed"] for g in summary.check_gates(gates, totals, rows, capacity)}
    assert results == {"error rate": True, "p99 latency (ms)": True, "SLA attainment: latency": False, "capacity (req/s)": False}
    assert not summary.check_gates(summary.Gates(min_sla_attainment=0.5), totals, [], None)[1]["passed"]  # no SLA class ran


BEFORE = """# TYPE effx_requests_total counter
effx_requests_total{endpoint="classify",member="b0",status="200"} 5.0
# TYPE effx_batch_size histogram
effx_batch_size_bucket{le="+Inf",member="b0"} 4.0
effx_batch_size_count{member="b0"} 4.0
effx_batch_size_sum{member="b0"} 5.0
"""
AFTER = """# TYPE effx_requests_total counter
effx_requests_total{endpoint="classify",member="b0",status="200"} 15.0
effx_requests_total{endpoint="classify",member="none",status="422"} 2.0
# TYPE effx_images_total counter
effx_images_total{member="b0"} 10.0
# TYPE effx_batch_size histogram
effx_batch_size_bucket{le="+Inf",member="b0"} 9.0
effx_batch_size_count{member="b0"} 9.0
effx_batch_size_sum{member="b0"} 15.0
# TYPE effx_sla_misses_total counter
effx_sla_misses_total{cause="rejected",sla="latency"} 2.0
# TYPE effx_routes_total counter
effx_routes_total{outcome="scaled"} 3.0
# TYPE effx_late_stage_total counter
effx_late_stage_total{stage="after"} 2.0
# TYPE effx_refusal_seconds histogram
effx_refusal_seconds_bucket{le="0.001",reason="overload"} 90.0
effx_refusal_seconds_bucket{le="0.002",reason="overload"} 99.0
effx_refusal_seconds_bucket{le="0.004",reason="overload"} 100.0
effx_refusal_seconds_bucket{le="+Inf",reason="overload"} 100.0
effx_refusal_seconds_bucket{le="0.001",reason="sla"} 0.0
effx_refusal_seconds_bucket{le="0.002",reason="sla"} 0.0
effx_refusal_seconds_bucket{le="0.004",reason="sla"} 0.0
effx_refusal_seconds_bucket{le="+Inf",reason="sla"} 1.0
# TYPE effx_expectation_error_seconds histogram
effx_expectation_error_seconds_bucket{le="0.0",load="shared"} 6.0
effx_expectation_error_seconds_bucket{le="0.008",load="shared"} 9.0
effx_expectation_error_seconds_bucket{le="+Inf",load="shared"} 10.0
effx_expectation_error_seconds_bucket{le="0.0",load="alone"} 2.0
effx_expectation_error_seconds_bucket{le="0.008",load="alone"} 2.0
effx_expectation_error_seconds_bucket{le="+Inf",load="alone"} 2.0
# TYPE effx_decode_wait_error_seconds histogram
effx_decode_wait_error_seconds_bucket{le="0.001",outcome="ran"} 5.0
effx_decode_wait_error_seconds_bucket{le="+Inf",outcome="ran"} 6.0
effx_decode_wait_error_seconds_bucket{le="0.001",outcome="late"} 0.0
effx_decode_wait_error_seconds_bucket{le="+Inf",outcome="late"} 3.0
# TYPE effx_gc_pause_seconds histogram
effx_gc_pause_seconds_count{generation="0"} 40.0
effx_gc_pause_seconds_sum{generation="0"} 0.02
effx_gc_pause_seconds_count{generation="2"} 1.0
effx_gc_pause_seconds_sum{generation="2"} 0.05
"""


def test_metrics_delta():
    change = prom.delta(BEFORE, AFTER)
    assert change["requests"] == {"b0 classify 200": 10.0, "none classify 422": 2.0}
    assert change["images"] == {"b0": 10.0} and change["mean_batch_size"] == {"b0": 2.0}
    assert change["sla_misses"] == {"latency rejected": 2.0} and change["routes"] == {"scaled": 3.0}
    assert change["late_stage"] == {"after": 2.0}
    assert change["gc_collections"] == {"0": 40.0, "2": 1.0} and change["gc_pause_ms"] == pytest.approx({"0": 20.0, "2": 50.0})
    # 101 refusals over both reasons: half within 1 ms, the 99th percentile in the 4 ms bucket (the sla one beyond 10 s)
    assert change["refusal_buckets"] == {"0.001": 90.0, "0.002": 99.0, "0.004": 100.0, "+Inf": 101.0}
    assert prom.quantile_bounds(change["refusal_buckets"]) == {"count": 101, "p50_le_ms": 1.0, "p99_le_ms": 4.0}
    assert prom.quantile_bounds({"0.001": 1.0, "+Inf": 10.0}) == {"count": 10, "p50_le_ms": None, "p99_le_ms": None}
    assert prom.quantile_bounds(prom.delta(AFTER, AFTER)["refusal_buckets"]) == {"count": 0}
    # The expectations' errors over both loads: 8 of 12 at or before the expected time, 11 within 8 ms late
    assert change["expectation_error_buckets"] == {"0.0": 8.0, "0.008": 11.0, "+Inf": 12.0}
    assert prom.quantile_bounds(change["expectation_error_buckets"], (0.5, 0.9)) == {"count": 12, "p50_le_ms": 0.0, "p90_le_ms": 8.0}
    # The decodings' waits for a lane, apart by outcome: 5 of the 6 run within 1 ms of their expected wait, the 3 late ones beyond
    assert change["decode_wait_ran_buckets"] == {"0.001": 5.0, "+Inf": 6.0} and change["decode_wait_late_buckets"] == {"0.001": 0.0, "+Inf": 3.0}


def test_durations():
    assert [duration(t) for t in ("30", "45s", "2m", "1h30m", "1.5m")] == [30, 45, 120, 5400, 90]
    for bad in ("", "x", "0", "3d"):
        with pytest.raises(Exception, match="duration|longer than zero"):
            duration(bad)


def test_sla_rejections_are_shown_per_step_but_not_counted_as_late():
    tally, windows = _stepped_tally([0, 0, 0])
    for second in range(1002, 1010):
        tally.sent("latency")
        tally.record(_outcome("sla_rejected" if second % 2 else "sla_refused", second=second + 0.5, cls="latency"))
    first = summary.curve(tally, windows, p99_bound_ms=50)[0]
    assert first["within_bound"] and first["error_rate"] == 0 and first["rejected_share"] == pytest.approx(8 / 88)
    totals = summary.totals(tally, 30.0)
    assert totals["sla_rejected"] == 8 and totals["sla_refused_429"] == 4 and totals["errors"] == {} and totals["error_rate"] == 0


def test_throughput_counts_answers_when_they_arrive():
    """An overloaded open-loop step: requests sent at 10/s but answered 3 s late still count where they arrived."""
    tally = Tally()
    for second in range(1000, 1010):
        for _ in range(10):
            tally.sent("none")
            tally.record(_outcome(second=second + 0.5, ms=3000.0, cls="none"))
    window = summary.Window(0, 1, 10.0, 1000, 1010)
    point = summary.curve(tally, [window], p99_bound_ms=5000)[0]
    assert point["throughput_rps"] == pytest.approx(10 * 7 / 8)  # of seconds 1002..1009, answers arrive in 1003..1009
    assert summary.timeline(tally, 1000, 1013)[3]["ok"] == 10
