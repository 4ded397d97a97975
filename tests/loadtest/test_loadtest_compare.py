"""Schedules against the real tiny server: a trace replayed at its times, and a short comparison of routing and pinning."""

import json

import pytest

from effx_serve.cli import main
from loadtest import prom
from tests.conftest import SERVED_ACCURACY
from tests.loadtest.conftest import read_report

pytestmark = pytest.mark.slow


def test_a_trace_is_replayed_at_its_times(server_url, tmp_path):
    # 24 requests over 3 s in two bursts and a trickle; every third carries its own latency bound.
    times = [0, 0, 0, 0, 5, 10, 15, 20, 500, 1000, 1000, 1000, 1000, 1001, 1002, 1003, 1500, 2000, 2200, 2400, 2600, 2800, 2900, 3000]
    lines = ["# arrival_ms latency_bound_ms", ""] + [f"{t} {500 + t}" if i % 3 == 0 else f"{t}" for i, t in enumerate(times)]
    trace = tmp_path / "trace.txt"
    trace.write_text("\n".join(lines) + "\n")
    folder = tmp_path / "replay"
    code = main(["loadtest", "--url", server_url, "--scenario", "photos", "--trace", str(trace), "--report", str(folder),
                 "--gate-error-rate", "0", "--p99-bound-ms", "5000"])
    report = read_report(folder)
    assert code == 0, report["problems"]
    assert report["load"]["arrivals"]["kind"] == "trace" and report["load"]["steps"][0]["seconds"] == 3.0
    figures = report["summary"]
    assert figures["requests"] == figures["ok"] == figures["completed"] == figures["locust_request_count"] == len(times)
    classes = {row["name"]: row["requests"] for row in report["classes"]}
    assert classes == {"latency": 8, "none": 16}  # a trace's bound turns the photo into a latency request
    counts = json.loads((folder / "raw" / "counts.json").read_text())
    results = counts["results"]
    assert [r[0] for r in results] == list(range(len(times))) and {r[1] for r in results} == {"ok"}
    lags = sorted(r[5] for r in results)
    assert lags[len(lags) // 2] < 20 and lags[-1] < 250, lags  # each sent at its time: the generator's own lateness is small
    served_ok = sum(n for series, n in report["server_metrics"]["requests"].items() if series.endswith(" 200"))
    assert served_ok == len(times)
    assert 3.0 <= report["duration_s"] < 30  # the run ended once the last answer came, not after a fixed drain
    assert "replay of trace" in (folder / "report.md").read_text()


def test_a_comparison_sends_the_same_schedule_in_every_phase(server_url, tmp_path):
    folder = tmp_path / "compare"
    code = main(["loadtest", "--url", server_url, "--compare", "--rate", "12", "--duration", "3", "--arrivals", "gamma",
                 "--burstiness", "2", "--scenario", "smoke", "--latency-bounds", "2:4", "--seed", "3",
                 "--compare-url", server_url, "--compare-label", "same server again", "--report", str(folder)])
    report = read_report(folder)
    assert code == 0, report["problems"]
    phases = {p["name"]: p for p in report["phases"]}
    assert list(phases) == ["routed", "pinned tiny-f-b0", "pinned tiny-f-b1", "same server again"]
    scheduled = report["schedule"]["requests"]
    assert scheduled > 10 and report["schedule"]["arrivals"]["described"] == "gamma gaps, coefficient of variation 2"
    calibration = report["calibration"]["members"]
    assert set(calibration) == set(SERVED_ACCURACY) and all(len(c["samples_ms"]) == 9 and c["median_ms"] > 0 for c in calibration.values())
    best = max(SERVED_ACCURACY.values())
    for name, phase in phases.items():
        assert phase["requests"] == scheduled and phase["locust_request_count"] == scheduled - phase["dropped"], name
        answered = phase["answered"] / scheduled
        assert phase["answered_share"] == pytest.approx(answered)
        assert phase["attainment"] <= answered + 1e-9, name
        assert phase["effective_accuracy"] <= phase["attainment"] * best + 1e-9, name
        assert phase["answered"] + phase["refused_422"] + phase["refused_429"] + phase["errors"] == scheduled, name
        results = json.loads((folder / phase["raw"] / "counts.json").read_text())["results"]
        assert sorted(r[0] for r in results) == list(range(scheduled)), name  # every request of the schedule, once
    for member in SERVED_ACCURACY:
        pinned = phases[f"pinned {member}"]
        assert set(pinned["members"]) <= {member} and pinned["answered"] > 0 and pinned["refused_422"] == 0
    schedule = json.loads((folder / "raw" / "schedule.json").read_text())
    assert len(schedule["requests"]) == scheduled and all(b > 0 for _, b, _ in schedule["requests"])
    for name in ("report.md", "report.html", "comparison.png", "report.json"):
        assert (folder / name).is_file(), name
    markdown = (folder / "report.md").read_text()
    assert "## Comparison" in markdown and "| pinned tiny-f-b1 |" in markdown and "PASSED" in markdown


def test_a_comparison_in_rounds_runs_every_phase_in_each_round_in_a_rotated_order(server_url, tmp_path):
    folder = tmp_path / "rounds"
    code = main(["loadtest", "--url", server_url, "--compare", "--rate", "10", "--duration", "2", "--scenario", "smoke",
                 "--compare-phases", "routed,pinned", "--compare-rounds", "2", "--report", str(folder)])
    report = read_report(folder)
    assert code == 0, report["problems"]
    scheduled = report["schedule"]["requests"]
    phases = {p["name"]: p for p in report["phases"]}
    assert list(phases) == ["routed", "pinned tiny-f-b0", "pinned tiny-f-b1"]
    for phase in phases.values():
        assert phase["requests"] == 2 * scheduled and phase["requests_per_round"] == scheduled and len(phase["rounds"]) == 2
        assert phase["answered"] + phase["refused_422"] + phase["refused_429"] + phase["errors"] == 2 * scheduled
        for raw in phase["raw"]:
            results = json.loads((folder / raw / "counts.json").read_text())["results"]
            assert sorted(r[0] for r in results) == list(range(scheduled))  # each round sends the whole schedule
    finished = {raw: (folder / raw / "counts.json").stat().st_mtime for phase in phases.values() for raw in phase["raw"]}
    assert finished["raw/r1-1-routed"] < finished["raw/r1-2-pinned-tiny-f-b0"]
    assert finished["raw/r2-2-pinned-tiny-f-b0"] < finished["raw/r2-3-pinned-tiny-f-b1"] < finished["raw/r2-1-routed"]  # round 2 starts with phase 2
    assert "(rounds " in (folder / "report.md").read_text()
    for phase in phases.values():  # the server's refusal times, summed over the rounds: one per refusal the client got
        refusals = prom.quantile_bounds(phase["server_metrics"]["refusal_buckets"])["count"]
        assert refusals == phase["refused_422"] + phase["refused_429"], phase["name"]
