"""Arrival schedules, trace files, the replay plan, the comparison's figures and report, and the options' errors (no server)."""

import json
import random
import statistics
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from effx_serve.cli import main
from effx_serve.cli.loadtest import pinned_params
from loadtest import compare, scenarios
from loadtest.arrivals import Arrivals, Schedule, TraceError, TraceRequest, arrival_times, parse_trace, read_trace
from loadtest.plan import LoadTest, make_plan, schedule_times
from loadtest.render import render_comparison
from loadtest.workload import Member, RequestFactory


def _gaps(times):
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def _cv(values):
    return statistics.pstdev(values) / statistics.fmean(values)


def test_poisson_arrivals_have_the_mean_rate_and_a_seed_fixes_them():
    times = arrival_times(Arrivals("poisson"), [(200.0, 50.0)], seed=1)
    assert 200 * 50 * 0.96 <= len(times) <= 200 * 50 * 1.04  # 10,000 expected; a Poisson count's sd is 100
    assert times == sorted(times) and 0 <= times[0] and times[-1] < 50
    assert _cv(_gaps(times)) == pytest.approx(1.0, abs=0.05)
    assert times == arrival_times(Arrivals("poisson"), [(200.0, 50.0)], seed=1)
    assert times != arrival_times(Arrivals("poisson"), [(200.0, 50.0)], seed=2)


@pytest.mark.parametrize("cv", [2.0, 4.0])
def test_gamma_gaps_have_the_coefficient_of_variation_asked(cv):
    times = arrival_times(Arrivals("gamma", cv), [(100.0, 400.0)], seed=3)
    gaps = _gaps(times)
    assert _cv(gaps) == pytest.approx(cv, rel=0.1)
    assert statistics.fmean(gaps) == pytest.approx(1 / 100, rel=0.1)  # the mean rate holds; only the bunching differs
    assert times == arrival_times(Arrivals("gamma", cv), [(100.0, 400.0)], seed=3)
    assert Arrivals("gamma").factor == 3.0 and Arrivals("onoff").factor == 4.0


def test_on_off_arrivals_keep_the_mean_rate_and_come_in_bursts():
    times = arrival_times(Arrivals("onoff", 4.0, burst_s=0.5), [(50.0, 600.0)], seed=4)
    assert len(times) / 600 == pytest.approx(50, rel=0.1)
    per_second = [0] * 600
    for t in times:
        per_second[int(t)] += 1
    dispersion = statistics.pvariance(per_second) / statistics.fmean(per_second)  # 1 for Poisson
    assert dispersion > 10
    poisson = [0] * 600
    for t in arrival_times(Arrivals("poisson"), [(50.0, 600.0)], seed=4):
        poisson[int(t)] += 1
    assert statistics.pvariance(poisson) / statistics.fmean(poisson) < 1.5


def test_segments_set_the_rate_of_each_step():
    for kind in ("poisson", "gamma", "onoff"):
        times = arrival_times(Arrivals(kind, None, 0.2), [(20.0, 100.0), (80.0, 100.0)], seed=5)
        first, second = sum(t < 100 for t in times), sum(t >= 100 for t in times)
        assert first / 100 == pytest.approx(20, rel=0.25) and second / 100 == pytest.approx(80, rel=0.25), kind
        assert times[-1] < 200


@pytest.mark.parametrize(("arrivals", "message"), [
    (Arrivals("bursty"), "unknown arrivals 'bursty'; known: poisson, gamma, onoff"),
    (Arrivals("poisson", 2.0), "--burstiness needs --arrivals gamma or onoff"),
    (Arrivals("gamma", 1.0), "--burstiness must be a number above 1"),
    (Arrivals("onoff", 3.0, 0.0), "--burst-seconds must be a positive number"),
])
def test_bad_arrivals_are_named(arrivals, message):
    with pytest.raises(ValueError, match=message):
        arrivals.check()


TRACE = """# arrival_ms [latency_bound_ms]
1000
1000   25.5

1250.5 10  # a comment after the figures
2000
"""


def test_a_trace_gives_times_from_its_first_request_and_its_bounds():
    assert parse_trace(TRACE, "t.txt") == [TraceRequest(0.0, None), TraceRequest(0.0, 25.5), TraceRequest(0.2505, 10.0),
                                           TraceRequest(1.0, None)]


@pytest.mark.parametrize(("text", "message"), [
    ("0\nabc\n", "trace {} line 2: arrival_ms 'abc' is not a number"),
    ("0\n5 fast\n", "trace {} line 2: latency_bound_ms 'fast' is not a number"),
    ("-5\n", "trace {} line 1: arrival_ms -5 is negative"),
    ("10\n\n# gap\n5\n", "trace {} line 4: arrival_ms 5 is before the previous request's 10; times must not decrease"),
    ("", "trace {} holds no requests"),
    ("# only a comment\n\n", "trace {} holds no requests"),
    ("1 2 3\n", "trace {} line 1: expected 'arrival_ms [latency_bound_ms]', got 3 fields"),
    ("nan\n", "trace {} line 1: arrival_ms 'nan' is not a finite number"),
    ("0 0\n", "trace {} line 1: latency_bound_ms 0 must be positive"),
    ("0 -1\n", "trace {} line 1: latency_bound_ms -1 must be positive"),
])
def test_bad_traces_are_one_line_errors_naming_file_and_line(tmp_path, text, message):
    path = tmp_path / "trace.txt"
    path.write_text(text)
    with pytest.raises(TraceError) as caught:
        read_trace(path)
    assert str(caught.value).startswith(message.format(path)) and "\n" not in str(caught.value)


def test_a_missing_or_unreadable_trace_is_named(tmp_path):
    with pytest.raises(TraceError, match=f"trace {tmp_path / 'nope.txt'}: no such file"):
        read_trace(tmp_path / "nope.txt")
    with pytest.raises(TraceError, match="cannot be read"):
        read_trace(tmp_path)  # a folder
    (tmp_path / "t.txt").write_text("0\n500\n1500\n")
    assert [r.at_s for r in read_trace(tmp_path / "t.txt", duration_s=1.0)] == [0.0, 0.5]  # --duration cuts a trace


def test_replay_plans_and_their_schedules():
    plan = make_plan(LoadTest("u", rate=40, steps=2, duration_s=10, arrivals=Arrivals("gamma", 2.0)))
    assert plan.replay and plan.mode == "open" and [(s.users, s.offered_rate, s.seconds) for s in plan.steps] == [(1, 20, 5), (1, 40, 5)]
    trace = tuple(parse_trace(TRACE, "t"))
    traced = LoadTest("u", trace=trace, trace_path="t")
    plan = make_plan(traced)
    assert plan.replay and [(s.offered_rate, s.seconds) for s in plan.steps] == [(4.0, 1.0)]
    assert schedule_times(traced, plan) == ([0.0, 0.0, 0.2505, 1.0], [None, 25.5, 10.0, None])
    poisson = make_plan(LoadTest("u", rate=40, duration_s=10), replay=True)  # a comparison replays Poisson arrivals too
    assert poisson.replay and not make_plan(LoadTest("u", rate=40)).replay


@pytest.mark.parametrize(("test", "message"), [
    (LoadTest("u", arrivals=Arrivals("gamma")), "--arrivals gamma needs --rate"),
    (LoadTest("u", users=3, arrivals=Arrivals("onoff")), "does not go with --users"),
    (LoadTest("u", rate=5, workers=2, arrivals=Arrivals("gamma")), "does not go with --workers"),
    (LoadTest("u", rate=5, trace=(TraceRequest(0.0),)), "give --trace or --rate, not both"),
    (LoadTest("u", steps=2, trace=(TraceRequest(0.0),)), "--trace sets the arrival times: it does not go with --steps"),
    (LoadTest("u", trace=(TraceRequest(0.0),), arrivals=Arrivals("gamma")), "it does not go with --arrivals"),
    (LoadTest("u", rate=5, arrivals=Arrivals("poisson", 2.0)), "--burstiness needs --arrivals gamma or onoff"),
])
def test_bad_replay_plans_are_named(test, message):
    with pytest.raises(ValueError, match=message):
        make_plan(test)


def test_a_trace_bound_makes_a_latency_sla_and_leaves_other_draws_alone():
    factory = RequestFactory(scenarios.get("mixed"), [Member("b0", 0.3, 1.0), Member("b1", 0.5, 2.0)])
    plain = [factory.next(random.Random(i)) for i in range(50)]
    assert plain == [factory.next(random.Random(i), None) for i in range(50)]  # no bound: the draws of before
    bounded = [factory.next(random.Random(i), 7.5) for i in range(50)]
    assert all(r.max_latency_ms == 7.5 and "max_latency_ms=7.5" in r.path for r in bounded)
    assert {r.request_class.removeprefix("batch ") for r in bounded} == {"latency", "both"}


def test_a_fixed_schedule_survives_its_file_and_makes_its_requests():
    schedule = Schedule([0.0, 0.5], [12.3456, None], [1, 0], [("image/jpeg", b"a"), ("image/png", b"b")])
    again = Schedule.from_json(schedule.to_json())
    assert again == schedule and again.fixed and len(again) == 2
    first = again.request(0, "member=b0&on_miss=best_effort")
    assert first.path == "/v1/classify?top_k=1&max_latency_ms=12.346&member=b0&on_miss=best_effort"
    assert (first.body, first.content_type, first.max_latency_ms, first.request_class) == (b"b", "image/png", 12.3456, "latency")
    assert again.request(1).path == "/v1/classify?top_k=1"
    assert not Schedule.from_json(Schedule([1.0], [None]).to_json()).fixed


def test_calibration_sends_each_member_pinned_one_at_a_time_and_drops_the_warm_ups():
    blobs = [("image/jpeg", b"j"), ("image/png", b"p")]
    schedule = Schedule.from_json(compare.calibration_schedule(["b0", "b1"], blobs, [1, 0, 1], count=3, warmup=1).to_json())
    assert schedule.sequential and len(schedule) == 8 and schedule.images == [1, 0, 1, 1, 1, 0, 1, 1]
    assert [schedule.request(i).path for i in (0, 4)] == ["/v1/classify?top_k=1&member=b0", "/v1/classify?top_k=1&member=b1"]
    results = [[i, "ok", 200, float(i), "b0" if i < 4 else "b1"] for i in range(8)]
    assert compare.calibration_samples(results, ["b0", "b1"], count=3, warmup=1) == {"b0": [1.0, 2.0, 3.0], "b1": [5.0, 6.0, 7.0]}
    results[6] = [6, "overloaded", 429, 1.0, None]
    with pytest.raises(compare.CalibrationError, match=r"calibrating member b1: .*\(overloaded, status 429\)"):
        compare.calibration_samples(results, ["b0", "b1"], count=3, warmup=1)
    with pytest.raises(compare.CalibrationError, match="no answer"):
        compare.calibration_samples(results[:3], ["b0", "b1"], count=3, warmup=1)


def test_comparison_draws_are_fixed_by_the_seed_and_trace_bounds_win():
    draws = compare.draw(500, [1.0, 3.0], 2, (1.5, 3.0), seed=7)
    assert draws == compare.draw(500, [1.0, 3.0], 2, (1.5, 3.0), seed=7) != compare.draw(500, [1.0, 3.0], 2, (1.5, 3.0), seed=8)
    assert all(1.5 <= f <= 3.0 for f in draws.factors) and set(draws.members) == {0, 1}
    assert 0.65 < draws.images.count(1) / 500 < 0.85  # weights 1:3
    bounds = compare.latency_bounds(compare.Draws([0, 0], [0, 1], [2.0, 1.5]), [None, 9.0], [4.0, 10.0])
    assert bounds == [8.0, 9.0]
    assert compare.parse_bounds("1.5:3") == (1.5, 3.0) and compare.parse_bounds("2") == (2.0, 2.0)
    for bad in ("3:1.5", "x:2", "0:2", "1:inf", ""):
        with pytest.raises(ValueError, match="LOW"):
            compare.parse_bounds(bad)
    phases = compare.make_phases("http://a", ["b0", "b1"], compare.Comparison(other_url="http://b", other_label="old"))
    assert [(p.name, p.url, p.params) for p in phases] == [
        ("routed", "http://a", "on_miss=reject"), ("pinned b0", "http://a", "member=b0&on_miss=best_effort"),
        ("pinned b1", "http://a", "member=b1&on_miss=best_effort"), ("old", "http://b", "on_miss=reject")]
    only_routed = compare.make_phases("http://a", ["b0"], compare.Comparison(other_url="http://b", phases=("routed", "other")))
    assert [p.name for p in only_routed] == ["routed", "other server"]


def test_phase_figures_count_every_scheduled_request():
    bounds = [10.0] * 11
    results = [[0, "ok", 200, 5.0, "b0"], [1, "ok", 200, 9.0, "b1"], [2, "ok", 200, 11.0, "b1"],  # the last one late
               [3, "sla_rejected", 422, 1.0, None], [4, "overloaded", 429, 1.0, None, 0.2, "limit"],
               [5, "server_error", 500, 2.0, None], [10, "sla_refused", 429, 1.0, None, 0.1, "overload"],
               [6, "connection", 0, 30000.0, None], [7, "dropped", 0, 0.0, None], [8, "ok", 200, 3.0, "b0"]]  # 9: unanswered
    figures = compare.phase_figures(results, bounds, seconds=2.0, accuracy={"b0": 0.5, "b1": 0.7})
    assert figures["requests"] == 11 and figures["answered"] == 4 and figures["within_bound"] == 3
    assert figures["attainment"] == pytest.approx(3 / 11) and figures["answered_share"] == pytest.approx(4 / 11)
    assert figures["effective_accuracy"] == pytest.approx((0.5 + 0.7 + 0.5) / 11) and figures["goodput_rps"] == pytest.approx(1.5)
    assert (figures["refused_422"], figures["refused_429"], figures["errors"]) == (1, 2, 4)
    assert figures["refused_429_reasons"] == {"limit": 1, "overload": 1}
    assert figures["error_kinds"] == {"server_error": 1, "connection": 1, "dropped": 1, "unfinished": 1}
    assert figures["members"] == {"b0": 0.5, "b1": 0.5} and figures["latency_ms"]["p50"] == 5.0 and figures["latency_ms"]["p99"] == 11.0
    assert figures["refusal_latency_ms"] == {"p50": 1.0, "p99": 1.0, "max": 1.0}  # 422 and 429s, however the server refused
    assert figures["refusal_latency_by_reason_ms"] == {"limit": {"p50": 1.0, "p99": 1.0, "max": 1.0, "count": 1},
                                                       "overload": {"p50": 1.0, "p99": 1.0, "max": 1.0, "count": 1},
                                                       "unmeetable (422)": {"p50": 1.0, "p99": 1.0, "max": 1.0, "count": 1}}
    # without the send lag, where the generator recorded one (the 422's row has none)
    assert figures["refusal_after_send_ms"] == {"p50": pytest.approx(0.8), "p99": pytest.approx(0.9), "max": pytest.approx(0.9)}
    assert compare.phase_figures([], bounds, 2.0, {})["attainment"] == 0.0


def test_refusal_latency_is_split_by_cause_so_late_drops_do_not_hide_in_quick_refusals():
    results = [[i, "sla_refused", 429, 0.5 + i / 100, None, 0.1, "overload"] for i in range(98)]
    results += [[98, "sla_refused", 429, 30.0, None, 0.1, "deadline"], [99, "sla_refused", 429, 40.0, None, 0.1, "deadline"]]
    figures = compare.phase_figures(results, [50.0] * 100, seconds=1.0, accuracy={})
    assert figures["refusal_latency_ms"]["p99"] == 30.0  # two late drops in a hundred refusals set the p99
    split = figures["refusal_latency_by_reason_ms"]
    assert split["overload"] == {"p50": pytest.approx(0.98), "p99": pytest.approx(1.47), "max": pytest.approx(1.47), "count": 98}
    assert split["deadline"] == {"p50": 30.0, "p99": 40.0, "max": 40.0, "count": 2}


def test_rounds_rotate_the_phase_order_so_each_phase_runs_early_and_late():
    assert compare.turns(1, 3) == [(0, 0), (0, 1), (0, 2)]
    assert compare.turns(3, 3) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (1, 0), (2, 2), (2, 0), (2, 1)]
    assert compare.turns(2, 4)[4:] == [(1, 1), (1, 2), (1, 3), (1, 0)]


def test_a_phase_run_in_rounds_is_pooled_over_every_request_with_each_rounds_figures_beside(tmp_path):
    bounds, accuracy = [10.0, 10.0], {"b0": 0.5}
    first = [[0, "ok", 200, 5.0, "b0"], [1, "ok", 200, 15.0, "b0"]]  # one late
    second = [[0, "ok", 200, 5.0, "b0"], [1, "ok", 200, 6.0, "b0"]]
    metrics = [{"routes": {"preferred": 2.0}, "sla_misses": {"latency latency": 1.0}, "requests": {}, "images": {"b0": 2.0}},
               {"routes": {"preferred": 1.0, "scaled": 1.0}, "sla_misses": {}, "requests": {}, "images": {"b0": 2.0}}]
    rounds = [{"name": "routed", "raw": f"raw/r{i + 1}-1-routed", "lag_p99_ms": lag, "locust_request_count": 2, "idle_wait": None,
               "server_metrics": m, **compare.phase_figures(r, bounds, 1.0, accuracy)}
              for i, (r, lag, m) in enumerate(zip((first, second), (3.0, 7.0), metrics, strict=True))]
    figures = compare.pooled(rounds, [first, second], bounds, 1.0, accuracy)
    assert figures["requests"] == 4 and figures["requests_per_round"] == 2 and figures["within_bound"] == 3
    assert figures["attainment"] == pytest.approx(0.75) and figures["goodput_rps"] == pytest.approx(1.5)
    assert [r["attainment"] for r in figures["rounds"]] == [0.5, 1.0] and figures["raw"] == ["raw/r1-1-routed", "raw/r2-1-routed"]
    assert figures["lag_p99_ms"] == 7.0 and figures["locust_request_count"] == 4
    assert figures["server_metrics"]["routes"] == {"preferred": 3.0, "scaled": 1.0} and figures["server_metrics"]["images"] == {"b0": 4.0}
    assert compare.pooled(rounds[:1], [first], bounds, 1.0, accuracy) is rounds[0]  # one round: its own figures
    render_comparison({**COMPARISON, "phases": [figures]}, tmp_path)
    assert "| routed | 4 | 75.0% (rounds 50.0% to 100.0%) | 37.5% (rounds 25.0% to 50.0%) |" in (tmp_path / "report.md").read_text()


COMPARISON = {
    "mode": "compare", "status": "passed", "problems": [], "command": "effx-serve loadtest --compare --rate 50",
    "target": {"url": "http://127.0.0.1:8000", "ready": True, "members": [{"name": "b0", "accuracy": 0.5}, {"name": "b1", "accuracy": 0.7}]},
    "schedule": {"arrivals": {"described": "Poisson"}, "requests": 100, "duration_s": 2.0, "latency_bounds": [1.5, 3.0],
                 "bounds_ms": {"min": 3.0, "p50": 6.0, "max": 12.0}, "images": ["image/jpeg"], "seed": 0, "bounds_from_trace": 0},
    "calibration": {"members": {"b0": {"median_ms": 2.5, "samples_ms": [2.4, 2.5, 2.6]}, "b1": {"median_ms": 5.0, "samples_ms": [5.0]}}},
    "phases": [
        {"name": "routed", "kind": "routed", "url": "http://127.0.0.1:8000", "params": "on_miss=reject", "requests": 100, "answered": 95,
         "answered_share": 0.95, "within_bound": 90, "attainment": 0.9, "effective_accuracy": 0.55, "goodput_rps": 45.0,
         "latency_ms": {"p50": 3.2, "p99": 11.0}, "refused_422": 3, "refused_429": 1, "errors": 1, "error_kinds": {"connection": 1},
         "members": {"b0": 0.6, "b1": 0.4}, "refused_429_reasons": {"overload": 1},
         "refusal_latency_by_reason_ms": {"overload": {"p50": 1.5, "p99": 1.5, "max": 1.5, "count": 1},
                                          "unmeetable (422)": {"p50": 0.5, "p99": 0.75, "max": 0.75, "count": 3}}},
        {"name": "pinned b1", "kind": "pinned", "requests": 100, "answered": 100, "answered_share": 1.0, "within_bound": 40,
         "attainment": 0.4, "effective_accuracy": 0.28, "goodput_rps": 20.0, "latency_ms": {"p50": 14.0, "p99": 80.0},
         "refused_422": 0, "refused_429": 0, "errors": 0, "error_kinds": {}, "members": {"b1": 1.0}}],
    "files": {"report.json": "report.json", "schedule.json": "raw/schedule.json"},
}


def test_the_comparison_report_has_the_table_and_the_chart(tmp_path):
    names = render_comparison(COMPARISON, tmp_path)
    assert sorted(names) == ["comparison.png", "report.html", "report.md"]
    assert (tmp_path / "comparison.png").read_bytes().startswith(b"\x89PNG")
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# Load test comparison: SLA routing against pinned members at http://127.0.0.1:8000")
    assert "| routed | 100 | 90.0% | 55.0% | 45.0 | 3.20 | 11.0 | 3 | 1 | 1 | b0 60.0%, b1 40.0% |" in md
    assert "| pinned b1 | 100 | 40.0% | 28.0% | 20.0 | 14.0 | 80.0 | 0 | 0 | 0 | b1 100.0% |" in md
    assert "| b0 | 50.0% | 2.50 | 2.40, 2.50, 2.60 |" in md and "1.5 to 3 x the unloaded latency" in md
    assert "attainment: the share of all scheduled requests" in md
    assert "| overload 1 | overload 1.50, unmeetable (422) 0.75 | connection 1 |" in md  # the refusals' p99 by cause, per phase
    render_comparison({"status": "failed", "problems": ["cannot connect"], "mode": "compare"}, tmp_path / "failed")
    assert "cannot connect" in (tmp_path / "failed" / "report.md").read_text()


def _error(capsys, argv) -> str:
    """The one-line error of `effx-serve loadtest ARGV` (argparse's, or the command's)."""
    try:
        code = main(["loadtest", "--url", "http://127.0.0.1:9", "--report", "unused", *argv])
    except SystemExit as stop:
        code = stop.code
    assert code == 2, argv
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(("argv", "message"), [
    (["--compare", "--rate", "5", "--latency-bounds", "3:1"], "argument --latency-bounds: expected positive factors LOW <= HIGH"),
    (["--compare", "--rate", "5", "--latency-bounds", "fast"], "argument --latency-bounds: expected LOW:HIGH factors"),
    (["--arrivals", "bursty", "--rate", "5"], "argument --arrivals: invalid choice: 'bursty'"),
    (["--arrivals", "gamma", "--rate", "5", "--burstiness", "0.5"], "argument --burstiness: must be above 1"),
    (["--trace", "t.txt", "--rate", "5"], "argument --rate: not allowed with argument --trace"),
    (["--trace", "t.txt", "--users", "5"], "argument --users: not allowed with argument --trace"),
    (["--compare-url", "host:1"], "argument --compare-url: expected the server's URL"),
    (["--latency-bounds", "1:2", "--rate", "5"], "effx-serve: error: --latency-bounds needs --compare"),
    (["--compare-url", "http://x", "--rate", "5"], "effx-serve: error: --compare-url needs --compare"),
    (["--compare", "--compare-label", "old", "--rate", "5"], "--compare-label names the --compare-url phase"),
    (["--compare"], "--compare needs --rate (with --arrivals) or --trace"),
    (["--compare", "--rate", "5", "--gate-p99-ms", "5"], "--gate-p99-ms does not apply to --compare"),
    (["--compare", "--rate", "5", "--compare-phases", "routed,all"], "argument --compare-phases: expected phase kinds among routed,pinned,other"),
    (["--compare-phases", "routed", "--rate", "5"], "effx-serve: error: --compare-phases needs --compare"),
    (["--compare-rounds", "2", "--rate", "5"], "effx-serve: error: --compare-rounds needs --compare"),
    (["--compare", "--rate", "5", "--compare-rounds", "0"], "argument --compare-rounds"),
    (["--compare", "--rate", "5", "--member", "b0"], "--member pins every request; --compare pins each member"),
    (["--max-latency-ms", "50", "--users", "2"], "--max-latency-ms bounds the requests pinned by --member; give --member too"),
    (["--max-latency-ms", "50", "--member", "b0", "--scenario", "latency"], "scenario latency draws its own (use photos or accuracy)"),
    (["--max-latency-ms", "0", "--member", "b0"], "argument --max-latency-ms"),
    (["--compare", "--rate", "5", "--workers", "2"], "--compare is replayed by one locust process"),
    (["--rate", "5", "--workers", "100000"], "effx-serve: error: --workers 100000 is more than this machine's"),
    (["--arrivals", "gamma"], "effx-serve: error: --arrivals gamma needs --rate"),
    (["--arrivals", "onoff", "--users", "3"], "--arrivals onoff is an open-loop schedule: it does not go with --users"),
    (["--burstiness", "2", "--rate", "5"], "--burstiness needs --arrivals gamma or onoff"),
    (["--burst-seconds", "2", "--arrivals", "gamma", "--rate", "5"], "--burst-seconds needs --arrivals onoff"),
    (["--trace", "missing.txt"], "effx-serve: error: trace missing.txt: no such file"),
    (["--trace", "{bad}"], "effx-serve: error: trace {bad} line 2: arrival_ms 'x' is not a number"),
    (["--trace", "{bad}", "--steps", "2"], "effx-serve: error: trace {bad} line 2"),
    (["--trace", "{good}", "--steps", "2"], "--trace sets the arrival times: it does not go with --steps"),
    (["--trace", "{far}"], "trace {far} line 2: arrival_ms 1e300 is more than a week after the first request's 0"),
    (["--rate", "1e9"], "argument --rate: must be above 0 and at most 100,000"),
    (["--rate", "nan"], "argument --rate: must be above 0"),
    (["--rate", "100000", "--arrivals", "gamma", "--duration", "1h"], "is 360,000,000 requests to schedule up front, more than 5,000,000"),
    (["--rate", "5", "--duration", "999999h"], "argument --duration: must be longer than zero and at most a week"),
    (["--url", "http://127.0.0.1:abc"], "argument --url: expected the server's URL"),
    (["--url", "http://a b:8000"], "argument --url: expected the server's URL"),
    (["--url", "http://127.0.0.1:99999"], "argument --url: expected the server's URL"),
    (["--master-port", "70000"], "argument --master-port: must be from 1 to 65535"),
])
def test_bad_options_are_one_line_errors_before_anything_runs(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    Path("bad.txt").write_text("0\nx\n")
    Path("good.txt").write_text("0\n10\n")
    Path("far.txt").write_text("0\n1e300\n")
    paths = {name: str(tmp_path / f"{name[1:-1]}.txt") for name in ("{bad}", "{good}", "{far}")}
    argv = [paths.get(a, a) for a in argv]
    assert message.format(bad=paths["{bad}"], far=paths["{far}"]) in _error(capsys, argv)
    assert not Path("unused").exists()


def test_json_schedule_file_lists_every_request(tmp_path):
    text = Schedule([0.0, 0.1, 0.2], [None, 5.0, None]).to_json()
    assert json.loads(text) == {"requests": [[0.0, None, None], [0.1, 5.0, None], [0.2, None, None]], "images": []}


def test_a_pinned_member_goes_into_every_request_of_a_plain_run():
    from effx_serve.cli import build_parser
    from loadtest.runner import locust_argv

    args = build_parser().parse_args(["loadtest", "--url", "http://h:1", "--users", "4", "--member", "b0", "--report", "r"])
    assert args.member == "b0"
    test = LoadTest(url="http://h:1", users=4, params=pinned_params(args))
    argv = locust_argv(test, make_plan(test), Path("raw"), None)
    assert argv[argv.index("--effx-params") + 1] == "member=b0"


def test_a_bound_for_the_pinned_member_goes_into_every_request_answered_late_rather_than_refused():
    from effx_serve.cli import build_parser

    args = build_parser().parse_args(["loadtest", "--url", "http://h:1", "--scenario", "photos", "--member", "b0",
                                      "--max-latency-ms", "1000", "--report", "r"])
    assert parse_qs(pinned_params(args)) == {"member": ["b0"], "max_latency_ms": ["1000"], "on_miss": ["best_effort"]}
