"""loadtest.render: report.json's dict as report.md, report.html and PNG charts."""

import copy
import os
import re
import sys
from html.parser import HTMLParser

import pytest

from loadtest.render import render

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SKIP_LINE = "PNG charts skipped: matplotlib is not installed (pip install 'effx-serve[load]')"

REPORT = {
    "status": "passed",
    "problems": [],
    "command": "effx-serve loadtest --url http://127.0.0.1:8000 --scenario mixed --rates 50,100,150,200 --step-seconds 10",
    "started": "2026-11-21T10:00:00+00:00",
    "duration_s": 40.3,
    "target": {"url": "http://127.0.0.1:8000", "ready": True, "family": "demo-x-lacs",
               "hardware": {"device": "cpu", "cores": 2},
               "members": [{"name": "b0", "accuracy": 0.31, "expected_latency_ms": 0.4},
                           {"name": "b1", "accuracy": 0.37, "expected_latency_ms": 0.9}]},
    "load": {"scenario": "mixed", "mode": "open", "workers": 0, "per_user_rate": 10.0,
             "steps": [{"index": i, "users": 5 * (i + 1), "offered_rate": 50.0 * (i + 1) - 0.2,
                        "seconds": 10.0} for i in range(4)]},
    "summary": {"requests": 4986, "ok": 4931, "throughput_rps": 122.4, "error_rate": 0.011, "unfinished": 2,
                "latency_ms": {"p50": 1.234, "p90": 4.5, "p95": 8.91, "p99": 12.34, "p99.9": 210.0, "max": 388.2, "mean": 3.3},
                "errors": {"overloaded": {"count": 40, "example": "429 queue full"},
                           "server_error": {"count": 10, "example": "500 Internal Server Error"},
                           "connection": {"count": 5, "example": "ConnectionResetError: [Errno 104]"}},
                "generator": {"lag_p99_ms": 0.4, "dropped": 0}},
    "classes": [{"name": "accuracy", "requests": 2000, "ok": 1990, "sla_attainment": 0.995, "e2e_attainment": 0.5,
                 "latency_ms": {"p50": 1.1, "p99": 11.0}, "outcomes": {"ok": 1990, "sla_rejected": 10},
                 "members": {"b0": 0.4, "b1": 0.6}},
                {"name": "latency", "requests": 2986, "ok": 2941, "sla_attainment": 0.97, "e2e_attainment": 0.93,
                 "latency_ms": {"p50": 1.3, "p99": 14.2}, "outcomes": {"ok": 2941, "overloaded": 40, "server_error": 5},
                 "members": {"b0": 1.0}}],
    "members": {"b0": {"requests": 3737, "share": 0.758}, "b1": {"requests": 1194, "share": 0.242}},
    "curve": [{"step": 0, "offered_rate": 49.8, "throughput_rps": 49.7, "p50_ms": 1.1, "p99_ms": 3.2, "error_rate": 0.0, "within_bound": True},
              {"step": 1, "offered_rate": 99.8, "throughput_rps": 99.5, "p50_ms": 1.2, "p99_ms": 6.4, "error_rate": 0.0, "within_bound": True},
              {"step": 2, "offered_rate": 150.0, "throughput_rps": 149.0, "p50_ms": 1.9, "p99_ms": 41.0, "error_rate": 0.002,
               "within_bound": True},
              {"step": 3, "offered_rate": 199.8, "throughput_rps": 180.1, "p50_ms": 80.0, "p99_ms": None, "error_rate": 0.05,
               "rejected_share": 0.1, "within_bound": False}],
    "capacity": {"p99_bound_ms": 50.0, "max_rate": 150.0, "throughput_rps": 149.0, "step": 2},
    "gates": [{"name": "error rate", "threshold": "<= 0.02", "value": 0.011, "passed": True},
              {"name": "p99 latency ms", "threshold": "<= 10", "value": 12.34, "passed": False}],
    "server_metrics": {"scraped": True, "reason": None, "requests": {"b0 classify 200": 3737.0, "b1 classify 200": 1194.0},
                       "images": {"b0": 3737.0, "b1": 1194.0}, "mean_batch_size": {"b0": 1.3, "b1": 1.05},
                       "sla_misses": {"latency rejected": 4.0}, "gc_pause_ms": {"0": 12.25, "2": 1.5}},
    "versions": {"effx_serve": "0.1.0", "locust": "2.47.0", "python": "3.11.7", "platform": "Linux-6.1-x86_64", "cores": 2,
                 "git_commit": "abc1234"},
    "timeline": [{"t": float(s), "ok": 50 + 5 * (s // 10) * 10, "failed": 5 if s >= 30 else 0, "p99_ms": 2.0 + s if s % 7 else None}
                 for s in range(40)],
    "step_starts": [0.0, 10.0, 20.0, 30.0],
    "files": {"report.json": "report.json", "locust stats": "raw/locust_stats.csv", "tally": "raw/tally.json"},
}
MINIMAL_FAILED = {"status": "failed", "problems": ["server unreachable: connection refused"], "command": "x"}


def _report(**changes) -> dict:
    report = copy.deepcopy(REPORT)
    report.update(changes)
    return report


def _text(folder, name):
    return (folder / name).read_text(encoding="utf-8")


class TagChecker(HTMLParser):
    """Checks that every opened element is closed in order and counts table tags."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.counts, self.errors = [], {}, []

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        self.counts["/" + tag] = self.counts.get("/" + tag, 0) + 1
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def _table_column_counts(markdown: str) -> list[set[int]]:
    """For each Markdown table, the set of column counts of its rows (one element when no row is broken)."""
    tables, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            current.append(len(re.split(r"(?<!\\)\|", line)) - 2)
        elif current:
            tables.append(set(current))
            current = []
    return tables


def test_full_report_writes_four_files_and_no_temporaries(tmp_path):
    names = render(REPORT, tmp_path)
    assert sorted(names) == ["capacity.png", "report.html", "report.md", "timeline.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_markdown_holds_verdict_classes_members_capacity_and_gates(tmp_path):
    render(REPORT, tmp_path)
    md = _text(tmp_path, "report.md")
    assert md.startswith("# Load test: mixed against http://127.0.0.1:8000\n")
    assert "**Verdict: PASSED (started 2026-11-21T10:00:00+00:00, ran 40.3 s)**" in md
    assert "| accuracy | 2000 | 1990 | 99.5% | 50.0% | 1.10 | 11.0 | ok 1990, sla_rejected 10 | b0 40.0%, b1 60.0% |" in md
    assert "| latency | 2986 | 2941 | 97.0% | 93.0% | 1.30 | 14.2 |" in md
    assert "| b0 | 3737 | 75.8% |" in md and "| b1 | 1194 | 24.2% |" in md
    assert "Highest offered rate with p99 <= 50.0 ms: 150.0 req/s (throughput 149.0 req/s)" in md
    assert "| error rate | <= 0.02 | 0.011 | yes |" in md and "| p99 latency ms | <= 10 | 12.34 | no |" in md
    assert "| 3 | 199.8 | 180.1 | 80.0 | — | 5.0% | 10.0% | no |" in md  # the overloaded step: no p99
    assert "| overloaded | 40 | 72.7% | 429 queue full |" in md  # share of the 55 errors
    assert "| b0 | 1.30 |" in md and "| latency rejected | 4 |" in md and "| 2 | 1.5 |" in md
    assert "- [locust stats](<raw/locust_stats.csv>)" in md
    assert "![" in md and "(timeline.png)" in md and "(capacity.png)" in md


def test_sections_come_in_order(tmp_path):
    render(REPORT, tmp_path)
    md = _text(tmp_path, "report.md")
    order = ["# Load test", "**Verdict", "## Command", "## Load", "## Summary", "## Errors by class", "## Per request class",
             "## Member shares", "## Capacity curve", "## Gates", "## Server metrics", "## Load generator", "## Versions",
             "## Raw files"]
    positions = [md.index(heading) for heading in order]
    assert positions == sorted(positions)


def test_numbers_are_formatted_by_kind(tmp_path):
    render(REPORT, tmp_path)
    md = _text(tmp_path, "report.md")
    # ms: two decimals below 10, one above; rates one decimal; shares as percentages
    for row in ("| latency p50 (ms) | 1.23 |", "| latency p95 (ms) | 8.91 |", "| latency p99 (ms) | 12.3 |",
                "| latency p99.9 (ms) | 210.0 |", "| throughput (req/s) | 122.4 |", "| error rate | 1.1% |",
                "| unfinished | 2 |", "| send lag p99 (ms) | 0.40 |", "| dropped arrivals | 0 |"):
        assert row in md


@pytest.mark.parametrize(("capacity", "sentence"), [
    ({"p99_bound_ms": 5.0, "max_rate": None, "throughput_rps": None, "step": None}, "No step kept p99 <= 5.00 ms"),
    ({"p99_bound_ms": 20.0, "max_rate": 99.8, "throughput_rps": 99.5, "step": 1},
     "Highest offered rate with p99 <= 20.0 ms: 99.8 req/s (throughput 99.5 req/s)"),
    ({"p99_bound_ms": 50.0, "max_rate": None, "throughput_rps": 149.0, "step": 2},  # closed mode: no offered rate
     "Highest step with p99 <= 50.0 ms: step 2 (throughput 149.0 req/s)"),
])
def test_capacity_sentence(tmp_path, capacity, sentence):
    render(_report(capacity=capacity), tmp_path)
    md = _text(tmp_path, "report.md")
    assert sentence in md and md.count("p99 <= ") == 1


def test_html_is_well_formed_and_self_contained(tmp_path):
    render(REPORT, tmp_path)
    page = _text(tmp_path, "report.html")
    checker = TagChecker()
    checker.feed(page)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    for tag in ("table", "tr", "td", "th"):
        assert checker.counts[tag] == checker.counts["/" + tag] > 0
    assert '<img src="timeline.png"' in page and '<img src="capacity.png"' in page
    assert "<script" not in page and "<link" not in page and 'src="http' not in page
    assert "<style>" in page and "Verdict: PASSED" in page


def test_html_escapes_injected_markup(tmp_path):
    report = _report(status="failed", problems=["bad <script>alert(1)</script> answer"])
    report["summary"]["errors"]["bad_answer"] = {"count": 1, "example": "<script>alert(2)</script>"}
    render(report, tmp_path)
    page = _text(tmp_path, "report.html")
    assert "<script" not in page
    assert "bad &lt;script&gt;alert(1)&lt;/script&gt; answer" in page and "&lt;script&gt;alert(2)" in page
    assert '<p class="verdict failed">Verdict: FAILED' in page
    md = _text(tmp_path, "report.md")
    assert not re.search(r"(?<!\\)<script", md) and "- bad \\<script>alert(1)\\</script> answer" in md


def test_pngs_are_real_pictures(tmp_path):
    render(REPORT, tmp_path)
    for name in ("timeline.png", "capacity.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1024


def test_one_curve_point_draws_no_capacity_chart(tmp_path):
    names = render(_report(curve=REPORT["curve"][:1]), tmp_path)
    assert "capacity.png" not in names and not (tmp_path / "capacity.png").exists()
    assert (tmp_path / "timeline.png").exists()
    assert "capacity.png" not in _text(tmp_path, "report.html")


def test_empty_timeline_draws_no_timeline_chart(tmp_path):
    names = render(_report(timeline=[]), tmp_path)
    assert "timeline.png" not in names and not (tmp_path / "timeline.png").exists()
    assert "timeline.png" not in _text(tmp_path, "report.md")


def test_minimal_failed_report_renders_problem_and_dashes(tmp_path):
    names = render(MINIMAL_FAILED, tmp_path)
    assert names == ["report.md", "report.html"]
    md, page = _text(tmp_path, "report.md"), _text(tmp_path, "report.html")
    assert md.startswith("# Load test: — against —\n")
    assert "**Verdict: FAILED**" in md and "- server unreachable: connection refused" in md
    assert "| requests | — |" in md and "| latency p99 (ms) | — |" in md and "not scraped: —" in md
    assert "<li>server unreachable: connection refused</li>" in page and "<td>—</td>" in page
    assert SKIP_LINE not in md  # nothing to draw, so nothing was skipped
    checker = TagChecker()
    checker.feed(page)
    assert checker.errors == [] and checker.stack == []


def test_without_matplotlib_no_png_and_skip_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    names = render(REPORT, tmp_path)
    assert names == ["report.md", "report.html"]
    assert not list(tmp_path.glob("*.png"))
    md, page = _text(tmp_path, "report.md"), _text(tmp_path, "report.html")
    assert SKIP_LINE in md and SKIP_LINE.replace("'", "&#x27;") in page
    assert "<img" not in page and "](timeline.png)" not in md


def test_pipe_in_values_keeps_markdown_columns(tmp_path):
    report = _report()
    report["summary"]["errors"]["client_error"] = {"count": 1, "example": "400 field a|b invalid"}
    report["classes"][0]["name"] = "accuracy|latency"
    report["versions"]["platform"] = "weird\\|name"
    render(report, tmp_path)
    md = _text(tmp_path, "report.md")
    assert "400 field a\\|b invalid" in md and "accuracy\\|latency" in md
    tables = _table_column_counts(md)
    assert len(tables) >= 10 and all(len(counts) == 1 for counts in tables)


def test_server_metrics_not_scraped_shows_reason(tmp_path):
    render(_report(server_metrics={"scraped": False, "reason": "GET /metrics: 404"}), tmp_path)
    assert "not scraped: GET /metrics: 404" in _text(tmp_path, "report.md")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    (tmp_path / "report.md").write_text("old")

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)  # what effx_serve.core.fs.write_atomic renames with
    with pytest.raises(OSError, match="disk full"):
        render(MINIMAL_FAILED, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
    assert _text(tmp_path, "report.md") == "old"
