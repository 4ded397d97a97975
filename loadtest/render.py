"""A load test's report.json dict rendered for people: report.md, report.html (inline CSS; the charts beside it) and PNG charts.

Nothing here computes a statistic; it formats what the report holds. A run that failed early has few figures,
so every key is optional and a missing figure shows as an em dash.
"""

from __future__ import annotations

import html
import io
import math
import re
from functools import partial
from pathlib import Path

from effx_serve.core import plots
from effx_serve.core.fs import write_atomic

DASH = "—"
NO_CHARTS = "PNG charts skipped: matplotlib is not installed (pip install 'effx-serve[load]')"
CSS = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-variant-numeric:tabular-nums}th{background:#f3f3f3}
th,td{border:1px solid #ccc;padding:.25rem .6rem;text-align:left;vertical-align:top}img{max-width:100%}
.verdict{font-size:1.3rem;font-weight:bold}.passed{color:#176f2c}.failed{color:#b3261e}
pre{background:#f6f6f6;padding:.6rem;white-space:pre-wrap;word-break:break-all}"""


def render(report: dict, folder: Path) -> list[str]:
    """Write report.md, report.html and (with matplotlib, when there is data) timeline.png and capacity.png; return their names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    charts, skipped = _charts(report, folder)
    blocks = _document(report, charts, skipped)
    write_atomic(folder / "report.md", _markdown(blocks).encode("utf-8"))
    write_atomic(folder / "report.html", _html(blocks).encode("utf-8"))
    return charts + ["report.md", "report.html"]


# Formatting: whatever the report holds in, text out; DASH where there is no figure.

def _number(x) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and not math.isnan(x) else None


def _fmt(x, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    value = _number(x)
    if value is None:
        return DASH
    return "∞" if math.isinf(value) else f"{value * scale:{spec}}{suffix}"  # tally's p99 is inf when failures are too many


def _ms(x) -> str:
    return _fmt(x, ".2f" if abs(_number(x) or 0) < 10 else ".1f")


_rate = partial(_fmt, spec=".1f")
_pct = partial(_fmt, spec=".1f", scale=100.0, suffix="%")


def _plain(x) -> str:
    """Counts, seconds, names, gate values: whole numbers without ".0", others to 4 significant digits, yes/no, text as is."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if x is None or x == "" or isinstance(x, float | int) and _number(x) is None:
        return DASH
    return _fmt(x, ".0f" if float(x).is_integer() else ".4g") if isinstance(x, int | float) else str(x)


def _dict(x) -> dict:
    return x if isinstance(x, dict) else {}


def _rows(x) -> list[dict]:
    return [row for row in x if isinstance(row, dict)] if isinstance(x, list) else []


def _pairs(mapping, fmt) -> str:
    """{"b0": 0.4, "b1": 0.6} -> "b0 40.0%, b1 60.0%" (with fmt=_pct)."""
    return ", ".join(f"{name} {fmt(value)}" for name, value in _dict(mapping).items()) or DASH


# The document is a list of blocks, which Markdown and HTML each render: ("h1"|"h2"|"h3"|"p"|"code", text),
# ("verdict", text, status), ("list", items), ("table", headers, rows), ("img", src, alt), ("links", [(label, href)]).

def _table(headers: list[str], rows: list[list[str]], empty: str = DASH) -> list[tuple]:
    return [("table", headers, rows)] if rows else [("p", empty)]


def _document(report: dict, charts: list[str], skipped: bool) -> list[tuple]:
    load, summary = _dict(report.get("load")), _dict(report.get("summary"))
    url = _dict(report.get("target")).get("url")
    blocks = [("h1", f"Load test: {_plain(load.get('scenario'))} against {_plain(url)}"), *_verdict(report),
              ("h2", "Command"), ("code", _plain(report.get("command"))), *_target(report), *_load(load), *_summary(summary)]
    if "timeline.png" in charts:
        blocks.append(("img", "timeline.png", "Answers and failures per second, and p99 latency, over the run"))
    if skipped:
        blocks.append(("p", NO_CHARTS))
    blocks += _errors(summary) + _classes(report) + _members(report) + _capacity(report, charts)
    blocks += [("h2", "Gates"), *_table(["gate", "threshold", "value", "passed"], [
        [_plain(g.get("name")), _plain(g.get("threshold")), _plain(g.get("value")), _plain(g.get("passed"))]
        for g in _rows(report.get("gates"))])]
    generator = _dict(summary.get("generator"))
    blocks += _server(report.get("server_metrics")) + [("h2", "Load generator"), ("table", ["figure", "value"], [
        ["send lag p99 (ms)", _ms(generator.get("lag_p99_ms"))], ["dropped arrivals", _plain(generator.get("dropped"))]])]
    versions = [[str(key), _plain(value)] for key, value in _dict(report.get("versions")).items()]
    files = [(str(label), href) for label, href in _dict(report.get("files")).items() if isinstance(href, str)]
    return blocks + [("h2", "Versions"), *_table(["component", "version"], versions),
                     ("h2", "Raw files"), ("links", files) if files else ("p", DASH)]


def _target(report: dict) -> list[tuple]:
    """The server under test: its hardware and backend (GET /v1/hardware) and its members at the start (GET /v1/models)."""
    target = _dict(report.get("target"))
    served = _dict(target.get("hardware"))
    machine, backend = _dict(served.get("hardware")), _dict(served.get("backend"))
    rows = [["family", _plain(target.get("family"))], ["ready at the start", _plain(target.get("ready"))],
            ["hardware", f"{_plain(machine.get('name'))} ({_plain(machine.get('id'))}), {_plain(machine.get('count'))} cores or devices"],
            ["backend", f"{_plain(backend.get('kind'))}, {_plain(backend.get('intra_op_threads'))} intra-op threads, "
                        f"{_plain(backend.get('concurrent_batches'))} concurrent batches"]]
    members = [[_plain(m.get("name")), _pct(m.get("accuracy")), _ms(m.get("expected_latency_ms"))] for m in _rows(target.get("members"))]
    return [("h2", "Server"), ("table", ["figure", "value"], rows),
            *_table(["member", "top-1", "expected latency at the start (ms)"], members)]


def _verdict(report: dict) -> list[tuple]:
    status, duration = report.get("status"), _number(report.get("duration_s"))
    when = ", ".join(filter(None, [report.get("started") and f"started {report['started']}",
                                   duration is not None and f"ran {_plain(duration)} s"]))
    problems = [_plain(p) for p in report.get("problems") or [] if p is not None] if isinstance(report.get("problems"), list) else []
    verdict = f"Verdict: {({'passed': 'PASSED', 'failed': 'FAILED'}).get(status, DASH)}" + (f" ({when})" if when else "")
    return [("verdict", verdict, status), ("list", problems) if problems else ("p", "No problems reported.")]


def _load(load: dict) -> list[tuple]:
    meaning = {"open": " (requests arrive at the offered rate, however long the answers take)",
               "closed": " (each user sends its next request once the previous one is answered)"}.get(load.get("mode"), "")
    line = (f"Mode: {_plain(load.get('mode'))}{meaning}; workers {_plain(load.get('workers'))}; "
            f"per-user rate {_rate(load.get('per_user_rate'))} req/s.")
    arrivals = _dict(load.get("arrivals"))
    if arrivals:  # a schedule made up front (bursty arrivals, a trace): no per-user rate
        line = (f"Mode: {_plain(load.get('mode'))}{meaning}; arrivals: {_plain(arrivals.get('described'))}; "
                f"one user replays the schedule (raw/schedule.json).")
    return [("h2", "Load"), ("p", line), *_table(["step", "users", "offered rate (req/s)", "seconds"], [
        [_plain(s.get("index")), _plain(s.get("users")), _rate(s.get("offered_rate")),
         _plain(s.get("seconds"))] for s in _rows(load.get("steps"))])]


def _summary(summary: dict) -> list[tuple]:
    latency = _dict(summary.get("latency_ms"))
    rows = [["requests", _plain(summary.get("requests"))], ["ok", _plain(summary.get("ok"))],
            ["throughput (req/s)", _rate(summary.get("throughput_rps"))], ["error rate", _pct(summary.get("error_rate"))],
            ["unfinished", _plain(summary.get("unfinished"))]]
    rows += [[f"latency {key} (ms)", _ms(latency.get(key))] for key in ("p50", "p90", "p95", "p99", "p99.9", "max", "mean")]
    return [("h2", "Summary"), ("table", ["figure", "value"], rows)]


def _errors(summary: dict) -> list[tuple]:
    errors = sorted(((str(kind), _dict(e)) for kind, e in _dict(summary.get("errors")).items()),
                    key=lambda item: -(_number(item[1].get("count")) or 0))
    total = sum(_number(e.get("count")) or 0 for _, e in errors)
    rows = [[kind, _plain(e.get("count")), _pct((_number(e.get("count")) or 0) / total if total else None), _plain(e.get("example"))]
            for kind, e in errors]
    return [("h2", "Errors by class"), *_table(["kind", "count", "share of errors", "example"], rows,
                                               "No errors." if isinstance(summary.get("errors"), dict) else DASH)]


def _classes(report: dict) -> list[tuple]:
    headers = ["class", "requests", "ok", "SLA attainment (server contract)", "end-to-end attainment", "p50 (ms)", "p99 (ms)",
               "outcomes", "members"]
    rows = [[_plain(c.get("name")), _plain(c.get("requests")), _plain(c.get("ok")), _pct(c.get("sla_attainment")),
             _pct(c.get("e2e_attainment")), _ms(_dict(c.get("latency_ms")).get("p50")), _ms(_dict(c.get("latency_ms")).get("p99")),
             _pairs(c.get("outcomes"), _plain), _pairs(c.get("members"), _pct)] for c in _rows(report.get("classes"))]
    return [("h2", "Per request class"), *_table(headers, rows)]


def _members(report: dict) -> list[tuple]:
    members = sorted((str(name), _dict(m)) for name, m in _dict(report.get("members")).items())
    return [("h2", "Member shares"), *_table(["member", "requests", "share"],
                                             [[name, _plain(m.get("requests")), _pct(m.get("share"))] for name, m in members])]


def _capacity(report: dict, charts: list[str]) -> list[tuple]:
    headers = ["step", "offered (req/s)", "throughput (req/s)", "p50 (ms)", "p99 (ms, failures counted as late)", "error rate",
               "refused by SLA", "within bound"]
    rows = [[_plain(p.get("step")), _rate(p.get("offered_rate")), _rate(p.get("throughput_rps")), _ms(p.get("p50_ms")),
             _ms(p.get("p99_ms")), _pct(p.get("error_rate")), _pct(p.get("rejected_share")), _plain(p.get("within_bound"))]
            for p in _rows(report.get("curve"))]
    blocks = [("h2", "Capacity curve"), *_table(headers, rows), ("p", _capacity_sentence(_dict(report.get("capacity"))))]
    if "capacity.png" in charts:
        blocks.append(("img", "capacity.png", "p99 latency against achieved throughput, one point per step"))
    return blocks


def _capacity_sentence(capacity: dict) -> str:
    bound, throughput = _ms(capacity.get("p99_bound_ms")), _rate(capacity.get("throughput_rps"))
    if _number(capacity.get("max_rate")) is not None and capacity.get("basis") != "throughput":
        return f"Highest offered rate with p99 <= {bound} ms: {_rate(capacity['max_rate'])} req/s (throughput {throughput} req/s)"
    if capacity.get("step") is not None:  # closed mode has no offered rate: the step (its users) is the answer
        return f"Highest step with p99 <= {bound} ms: step {_plain(capacity['step'])} (throughput {throughput} req/s)"
    return f"No step kept p99 <= {bound} ms" if capacity else DASH


def _server(metrics) -> list[tuple]:
    blocks = [("h2", "Server metrics (change over the run)")]
    if not isinstance(metrics, dict) or not metrics.get("scraped"):
        return blocks + [("p", f"not scraped: {_plain(_dict(metrics).get('reason'))}")]
    for key, title, column, fmt in (("requests", "Requests by member, endpoint and status", "requests", _plain),
                                    ("images", "Images by member", "images", _plain),
                                    ("mean_batch_size", "Mean batch size by member", "mean batch size", lambda x: _fmt(x, ".2f")),
                                    ("sla_misses", "SLA misses by class and cause", "misses", _plain),
                                    ("gc_pause_ms", "Garbage collections: time every thread was held, by generation (ms)", "ms",
                                     lambda x: _fmt(x, ".1f"))):
        blocks += [("h3", title), *_table(["series", column], [[str(k), fmt(v)] for k, v in _dict(metrics.get(key)).items()])]
    return blocks


# Charts: optional (matplotlib is an extra), drawn only when there is something to draw.

def _charts(report: dict, folder: Path) -> tuple[list[str], bool]:
    """(names of the PNGs written, whether charts were wanted but matplotlib is missing)."""
    wanted = [("timeline.png", _draw_timeline)] if _rows(report.get("timeline")) else []
    if sum(1 for _, y, _ in _curve(report) if math.isfinite(y)) >= 2:
        wanted.append(("capacity.png", _draw_capacity))
    plt = plots.optional_pyplot() if wanted else None
    if plt is None:
        return [], bool(wanted)
    for name, draw in wanted:
        fig, buffer = draw(plt, report), io.BytesIO()
        try:
            fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        finally:
            plt.close(fig)
        write_atomic(folder / name, buffer.getvalue())
    return [name for name, _ in wanted], False


def _value(row: dict, key: str) -> float:
    value = _number(row.get(key))
    return math.nan if value is None else value  # matplotlib leaves a gap at NaN


def _log_ms_axis(plt, ax, values: list[float]) -> None:
    """Latency spans decades once a step overloads the server; ticks read 1, 2, 5, 10, 20 rather than 2x10^0."""
    shown = [v for v in values if math.isfinite(v) and v > 0]
    narrow = max(shown) < 10 * min(shown)  # within a decade there may be no 1, 2 or 5 tick: label them all

    def label(v, _):
        return f"{v:g}" if v > 0 and (narrow or round(v / 10 ** math.floor(math.log10(v)), 6) in (1, 2, 5)) else ""

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(plt.FuncFormatter(label))
    ax.yaxis.set_minor_formatter(plt.FuncFormatter(label))


def _draw_timeline(plt, report: dict):
    rows = _rows(report.get("timeline"))
    t, p99 = [_value(r, "t") for r in rows], [_value(r, "p99_ms") for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    top.plot(t, [_value(r, "ok") for r in rows], color="C0", label="ok answers/s")
    top.plot(t, [_value(r, "failed") for r in rows], color="C3", label="failed/s")
    top.plot(t, [_value(r, "rejected") for r in rows], color="C2", linestyle="--", label="refused by SLA/s")
    top.set(ylabel="requests per second", title="Throughput and p99 latency per second (dotted lines: step starts)")
    bottom.plot(t, p99, color="C1", marker=".", label="p99")
    bound = _number(_dict(report.get("capacity")).get("p99_bound_ms"))
    if bound:
        bottom.axhline(bound, color="C3", linestyle="--", linewidth=1, label=f"p99 bound {_ms(bound)} ms")
    if any(v > 0 for v in p99 if math.isfinite(v)):
        _log_ms_axis(plt, bottom, p99)
    bottom.set(ylabel="p99 latency (ms)", xlabel="seconds since start")
    for ax in (top, bottom):
        for start in filter(lambda s: s is not None, map(_number, report.get("step_starts") or [])):
            ax.axvline(start, color="grey", linestyle=":", linewidth=1)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    return fig


def _curve(report: dict) -> list[tuple[float, float, dict]]:
    """(throughput, p99, row) per step with a throughput; p99 is inf where the step has none (too many failures)."""
    points = [(_number(p.get("throughput_rps")), _number(p.get("p99_ms")), p) for p in _rows(report.get("curve"))]
    return [(x, y if y is not None and y > 0 else math.inf, p) for x, y, p in points if x is not None and math.isfinite(x)]


def _draw_capacity(plt, report: dict):
    points, capacity = _curve(report), _dict(report.get("capacity"))
    bound = _number(capacity.get("p99_bound_ms"))
    drawn, over = [p for p in points if math.isfinite(p[1])], [p for p in points if math.isinf(p[1])]
    ceiling = max([y for _, y, _ in drawn] + [bound or 0]) * 1.6  # steps without a p99 go above everything, not out
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.plot([x for x, _, _ in drawn], [y for _, y, _ in drawn], "o-", color="C0", label="step (label: offered rate)")
    if over:
        ax.scatter([x for x, _, _ in over], [ceiling] * len(over), marker="^", color="C3", zorder=3, label="no p99: too many failures")
    for x, y, p in points:
        label = f"{_rate(p['offered_rate'])}/s" if _number(p.get("offered_rate")) is not None else f"step {_plain(p.get('step'))}"
        ax.annotate(label, (x, min(y, ceiling)), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if bound:
        ax.axhline(bound, color="C3", linestyle="--", label=f"p99 bound {_ms(bound)} ms")
    best = [(x, y) for x, y, p in drawn if capacity.get("step") is not None and p.get("step") == capacity.get("step")]
    if best:
        ax.scatter(*zip(*best, strict=True), s=250, facecolors="none", edgecolors="C2", linewidths=2, zorder=3,
                   label="capacity: " + _capacity_sentence(capacity).split(": ", 1)[-1])
    _log_ms_axis(plt, ax, [y for _, y, _ in drawn] + [bound or math.nan, ceiling])
    ax.set(xlabel="achieved throughput (req/s)", ylabel="p99 latency (ms, failures counted as late)",
           title="Capacity: p99 latency against achieved throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


# Renderers.

def _md(text: str) -> str:
    """Markdown-safe text: no raw HTML, emphasis or code spans from the data, "|" escaped so tables keep their columns."""
    return re.sub(r"[\\`*|]|<(?=[A-Za-z/!?])", lambda m: "\\" + m.group(), " ".join(str(text).splitlines()))


def _markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *args in blocks:
        match kind:
            case "h1" | "h2" | "h3":
                out.append("#" * int(kind[1]) + " " + _md(args[0]))
            case "verdict":
                out.append(f"**{_md(args[0])}**")
            case "p":
                out.append(_md(args[0]))
            case "code":
                fence = "`" * max(3, 1 + max(map(len, re.findall("`+", args[0])), default=0))  # longer than any run inside
                out.append(f"{fence}\n{args[0]}\n{fence}")
            case "list":
                out.append("\n".join(f"- {_md(item)}" for item in args[0]))
            case "table":
                lines = ["| " + " | ".join(map(_md, args[0])) + " |", "|" + "---|" * len(args[0])]
                out.append("\n".join(lines + ["| " + " | ".join(map(_md, row)) + " |" for row in args[1]]))
            case "img":
                out.append(f"![{_md(args[1])}]({args[0]})")
            case "links":
                out.append("\n".join(f"- [{_md(label)}](<{href}>)" for label, href in args[0]))
    return "\n\n".join(out) + "\n"


def _html(blocks: list[tuple]) -> str:
    e, body = html.escape, []
    for kind, *args in blocks:
        match kind:
            case "h1" | "h2" | "h3" | "p":
                body.append(f"<{kind}>{e(args[0])}</{kind}>")
            case "verdict":
                body.append(f'<p class="verdict {e(str(args[1]))}">{e(args[0])}</p>')
            case "code":
                body.append(f"<pre><code>{e(args[0])}</code></pre>")
            case "list" | "links":
                items = [f'<a href="{e(item[1])}">{e(item[0])}</a>' if kind == "links" else e(item) for item in args[0]]
                body.append("<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>")
            case "table":
                head = "<tr>" + "".join(f"<th>{e(h)}</th>" for h in args[0]) + "</tr>"
                rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in args[1])
                body.append(f"<table><thead>{head}</thead><tbody>{rows}</tbody></table>")
            case "img":
                body.append(f'<p><img src="{e(args[0])}" alt="{e(args[1])}"></p>')
    title = next(args[0] for kind, *args in blocks if kind == "h1")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{e(title)}</title>\n'
            f"<style>\n{CSS}\n</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


# The comparison (`effx-serve loadtest --compare`): one schedule, several phases, side by side.

COMPARISON_COLUMNS = [
    ("requests", "the requests scheduled (the same in every phase)"),
    ("attainment", "the share of all scheduled requests answered (200) within their latency bound, as the client measured "
                   "it from the intended send time"),
    ("effective accuracy", "the mean over all scheduled requests of the serving member's top-1 (GET /v1/models) when "
                           "answered within the bound, else 0"),
    ("goodput", "answers within their bound per second of schedule"),
    ("p50, p99", "client latency of the answered requests, from the intended send time"),
    ("refused 422", "no member could meet the SLA (the router's admission control)"),
    ("refused 429", "the server was at a limit, or refused early because the SLA could not be met under the load"),
    ("errors", "everything else that was not an answer: 5xx, connection errors and timeouts, malformed answers, "
               "requests the generator dropped, requests unanswered when the phase ended"),
    ("members", "which members served the answered requests"),
]


def render_comparison(report: dict, folder: Path) -> list[str]:
    """A comparison report: report.md, report.html and (with matplotlib, when a phase ran) comparison.png."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    phases = [p for p in _rows(report.get("phases")) if _number(p.get("attainment")) is not None]
    charts, skipped = [], False
    if phases:
        plt = plots.optional_pyplot()
        skipped = plt is None
        if plt is not None:
            accuracies = [a for m in _rows(_dict(report.get("target")).get("members")) if (a := _number(m.get("accuracy"))) is not None]
            fig, buffer = _draw_comparison(plt, phases, max(accuracies, default=None)), io.BytesIO()
            try:
                fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
            finally:
                plt.close(fig)
            write_atomic(folder / "comparison.png", buffer.getvalue())
            charts.append("comparison.png")
    blocks = _comparison_document(report, charts, skipped)
    write_atomic(folder / "report.md", _markdown(blocks).encode("utf-8"))
    write_atomic(folder / "report.html", _html(blocks).encode("utf-8"))
    return charts + ["report.md", "report.html"]


def _comparison_document(report: dict, charts: list[str], skipped: bool) -> list[tuple]:
    url = _dict(report.get("target")).get("url")
    blocks = [("h1", f"Load test comparison: SLA routing against pinned members at {_plain(url)}"), *_verdict(report),
              ("h2", "Command"), ("code", _plain(report.get("command"))), *_schedule(_dict(report.get("schedule"))),
              *_calibration(report)]
    phases = _rows(report.get("phases"))
    headers = ["phase", "requests", "attainment", "effective accuracy", "goodput (req/s)", "p50 (ms)", "p99 (ms)",
               "refused 422", "refused 429", "errors", "members"]
    rows = [[_plain(p.get("name")), _plain(p.get("requests")), _pooled(p, "attainment"), _pooled(p, "effective_accuracy"),
             _rate(p.get("goodput_rps")), _ms(_dict(p.get("latency_ms")).get("p50")), _ms(_dict(p.get("latency_ms")).get("p99")),
             _plain(p.get("refused_422")), _plain(p.get("refused_429")), _plain(p.get("errors")), _pairs(p.get("members"), _pct)]
            for p in phases]
    blocks += [("h2", "Comparison"), *_table(headers, rows)]
    if "comparison.png" in charts:
        blocks.append(("img", "comparison.png", "Effective accuracy against attainment, and the outcome of every request, per phase"))
    if skipped:
        blocks.append(("p", NO_CHARTS))
    blocks += [("list", [f"{name}: {meaning}" for name, meaning in COMPARISON_COLUMNS])]
    details = [[_plain(p.get("name")), _plain(p.get("url")), _plain(p.get("params")), _plain(p.get("answered")),
                _pct(p.get("answered_share")), _plain(p.get("within_bound")), _pairs(p.get("refused_429_reasons"), _plain),
                _pairs(p.get("refusal_latency_by_reason_ms"), lambda tail: _ms(_dict(tail).get("p99"))),
                _pairs(p.get("error_kinds"), _plain),
                _ms(p.get("lag_p99_ms")), _plain(p.get("idle_wait") or "idle")] for p in phases]
    blocks += [("h2", "Phases"), *_table(["phase", "server", "query added", "answered", "answered share", "within bound",
                                          "429 by reason", "refusal p99 by cause (ms)", "errors by kind", "send lag p99 (ms)", "server before the phase"], details)]
    blocks += _target(report)
    versions = [[str(key), _plain(value)] for key, value in _dict(report.get("versions")).items()]
    files = [(str(label), href) for label, href in _dict(report.get("files")).items() if isinstance(href, str)]
    return blocks + [("h2", "Versions"), *_table(["component", "version"], versions),
                     ("h2", "Raw files"), ("links", files) if files else ("p", DASH)]


def round_range(phase: dict, key: str) -> tuple[float, float] | None:
    """The lowest and highest of a comparison phase's rounds for one figure (compare.ROUND_FIGURES); None for a phase
    run once."""
    values = [value for r in _rows(phase.get("rounds")) if (value := _number(r.get(key))) is not None]
    return (min(values), max(values)) if values else None


def _pooled(phase: dict, key: str) -> str:
    """A phase's pooled share, with its rounds' range when it ran more than once."""
    spread = round_range(phase, key)
    return _pct(phase.get(key)) + (f" (rounds {_pct(spread[0])} to {_pct(spread[1])})" if spread else "")


def _schedule(schedule: dict) -> list[tuple]:
    if not schedule:
        return []
    bounds, factors = _dict(schedule.get("bounds_ms")), schedule.get("latency_bounds") or []
    factor = f"{_plain(factors[0])} to {_plain(factors[1])}" if len(factors) == 2 else DASH
    rows = [["arrivals", _plain(_dict(schedule.get("arrivals")).get("described"))], ["requests", _plain(schedule.get("requests"))],
            ["seconds", _plain(schedule.get("duration_s"))],
            ["offered rate (req/s)", _rate((_number(schedule.get("requests")) or 0) / schedule["duration_s"]
                                           if _number(schedule.get("duration_s")) else None)],
            ["latency bound", f"{factor} x the unloaded latency of a member drawn at random"],
            ["bounds from the trace", _plain(schedule.get("bounds_from_trace"))],
            ["bounds (ms): min, p50, max", ", ".join(_ms(bounds.get(k)) for k in ("min", "p50", "max"))],
            ["images", ", ".join(map(str, schedule.get("images") or [])) or DASH], ["seed", _plain(schedule.get("seed"))]]
    return [("h2", "Schedule"), ("table", ["figure", "value"], rows)]


def _calibration(report: dict) -> list[tuple]:
    calibration = _dict(report.get("calibration"))
    accuracy = {m.get("name"): m.get("accuracy") for m in _rows(_dict(report.get("target")).get("members"))}
    rows = [[str(name), _pct(accuracy.get(name)), _ms(_dict(c).get("median_ms")),
             ", ".join(_ms(x) for x in _dict(c).get("samples_ms") or [])] for name, c in _dict(calibration.get("members")).items()]
    return [("h2", "Calibration (unloaded, end to end, pinned, one request at a time)"),
            *_table(["member", "top-1", "median (ms)", "samples (ms)"], rows)]


OUTCOMES = (("within bound", "C2"), ("answered late", "C1"), ("refused 422", "C0"), ("refused 429", "C4"), ("errors", "C3"))


def _outcome_shares(phase: dict) -> list[float]:
    requests = _number(phase.get("requests")) or 0
    counts = [_number(phase.get(k)) or 0 for k in ("within_bound", "answered", "refused_422", "refused_429", "errors")]
    counts[1] -= counts[0]  # answered, but after the bound
    return [c / requests if requests else 0.0 for c in counts]


def _draw_comparison(plt, phases: list[dict], best: float | None):
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 1.2]})
    top = max([_value(p, "effective_accuracy") * 100 for p in phases] + [(best or 0) * 100])
    if best:  # every request within its bound, served by the most accurate member: the most a phase can reach
        left.plot([0, 100], [0, best * 100], color="grey", linestyle="--", linewidth=1, label=f"ceiling: the most accurate member ({_pct(best)})")
    for i, phase in enumerate(phases):  # a legend rather than labels beside the points: phases often land close together
        left.scatter([_value(phase, "attainment") * 100], [_value(phase, "effective_accuracy") * 100], s=60, color=f"C{i % 10}",
                     marker="o" if phase.get("kind") == "pinned" else "D", zorder=3, label=str(phase.get("name")))
    left.set(xlabel="attainment (% answered within the bound)", ylabel="effective accuracy (%)",
             title="Effective accuracy against attainment", xlim=(-2, 102), ylim=(0, max(top, 1) * 1.1))
    left.legend(fontsize=8, loc="upper left")
    left.grid(True, alpha=0.3)
    names = [str(p.get("name")) for p in phases]
    shares = [_outcome_shares(p) for p in phases]
    lefts = [0.0] * len(phases)
    for k, (label, colour) in enumerate(OUTCOMES):
        widths = [s[k] * 100 for s in shares]
        right.barh(names, widths, left=lefts, color=colour, label=label)
        lefts = [a + b for a, b in zip(lefts, widths, strict=True)]
    right.invert_yaxis()
    right.set(xlabel="% of the scheduled requests", title="Outcome of every request", xlim=(0, 100))
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(OUTCOMES))
    fig.tight_layout()
    return fig
