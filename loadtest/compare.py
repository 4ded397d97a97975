"""`effx-serve loadtest --compare`: one schedule sent several times, to show what SLA routing buys over pinning one member.

The schedule (arrival times, and per request an image and a latency bound) is made once. Bounds are a factor drawn
from --latency-bounds times the client-measured unloaded end-to-end latency of a member drawn at random, measured
just before (a few sequential requests per member, pinned; the median). Then it is sent, open loop, in phases:

- routed: max_latency_ms = the bound, on_miss=reject (the router picks the member, or refuses);
- pinned NAME, one per member of the default family: member=NAME, the same bound, on_miss=best_effort, so the
  pinned member serves every request however late;
- optionally the routed phase again against another server (--compare-url), e.g. another scheduler.

Every phase is one locust run replaying the same schedule file. Per phase: attainment (the share of all scheduled
requests answered 200 within their bound as the client measured it, from the intended send time), effective
accuracy (the mean over all scheduled requests of the serving member's top-1 when answered within the bound, else 0),
goodput (answers within bound per second of schedule), latency, refusals, errors and member shares.

With --compare-rounds N every phase runs N times, round r starting with phase r (the order rotates), since a shared
machine's speed drifts over minutes: a phase's figures are then pooled over its rounds, and each round's attainment
and effective accuracy are kept beside them, so a margin can be read against the spread between rounds.
"""

from __future__ import annotations

import http.client
import json
import math
import random
import re
import statistics
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from effx_serve.core.photos import synthetic_photo
from loadtest import prom, render, runner, scenarios
from loadtest.arrivals import Schedule, trace_seconds
from loadtest.plan import LoadTest, Plan, Step, make_plan, schedule_times
from loadtest.tally import ERRORS, OK, SLA_REFUSED, SLA_REJECTED, Tally
from loadtest.workload import VARIANTS

PHASE_KINDS = ("routed", "pinned", "other")
IDLE_WAIT_S = 60.0  # before a phase, how long to wait for the server's queues to empty (the last phase's stragglers)


@dataclass(frozen=True)
class Comparison:
    latency_bounds: tuple[float, float] = (1.5, 3.0)  # a request's bound: a factor in this range x a member's unloaded latency
    other_url: str | None = None  # the routed phase once more against this server
    other_label: str = "other server"
    calibration_requests: int = 9  # per member, after 2 warm-up requests
    phases: tuple[str, ...] = PHASE_KINDS  # which kinds of phase run (the routed one always does)
    rounds: int = 1  # every phase this many times, each round in another order, so that drift hits every phase alike


@dataclass(frozen=True)
class Phase:
    name: str
    kind: str  # "routed", "pinned" or "other"
    url: str
    params: str  # added to every request's query
    member: str | None = None


def make_phases(url: str, members: list[str], comparison: Comparison) -> list[Phase]:
    phases = [Phase("routed", "routed", url, "on_miss=reject")]
    if "pinned" in comparison.phases:
        phases += [Phase(f"pinned {name}", "pinned", url, urlencode({"member": name, "on_miss": "best_effort"}), name) for name in members]
    if comparison.other_url and "other" in comparison.phases:
        phases.append(Phase(comparison.other_label, "other", comparison.other_url, "on_miss=reject"))
    return phases


def parse_bounds(text: str) -> tuple[float, float]:
    """'1.5:3' -> (1.5, 3.0): the range of the factor a request's latency bound is drawn from."""
    low, sep, high = text.partition(":")
    try:
        bounds = (float(low), float(high if sep else low))
    except ValueError:
        raise ValueError(f"expected LOW:HIGH factors such as 1.5:3, got '{text}'") from None
    if not all(0 < b < math.inf for b in bounds) or bounds[0] > bounds[1]:
        raise ValueError(f"expected positive factors LOW <= HIGH such as 1.5:3, got '{text}'")
    return bounds


# The schedule: what every phase sends.

def images(scenario_name: str, seed: int) -> tuple[list[tuple[str, bytes]], list[float]]:
    """The scenario's image kinds (single images only), VARIANTS pictures each, and each picture's weight."""
    scenario = scenarios.get(scenario_name)
    blobs, weights = [], []
    for kind, weight in scenario.images.items():
        for variant in range(VARIANTS):
            blobs.append((kind.content_type, synthetic_photo(kind.width, kind.height, kind.format, seed * 1000 + variant)))
            weights.append(weight / VARIANTS)
    return blobs, weights


@dataclass(frozen=True)
class Draws:
    """Per request, drawn once for a seed: its image, the member whose latency its bound scales, and the factor."""

    images: list[int]
    members: list[int]
    factors: list[float]


def draw(count: int, weights: list[float], members: int, bounds: tuple[float, float], seed: int) -> Draws:
    rng = random.Random(f"compare-{seed}")
    picks = rng.choices(range(len(weights)), weights=weights, k=count)
    return Draws(picks, [rng.randrange(members) for _ in range(count)], [rng.uniform(*bounds) for _ in range(count)])


def latency_bounds(draws: Draws, given: list[float | None], unloaded_ms: list[float]) -> list[float]:
    """A trace's bound where it gives one, else the drawn factor x the drawn member's unloaded latency (ms, 3 decimals)."""
    return [b if b is not None else round(f * unloaded_ms[m], 3) for b, f, m in zip(given, draws.factors, draws.members, strict=True)]


# Calibration: each member's unloaded end-to-end latency, as this client sees it.

class CalibrationError(RuntimeError):
    pass


def calibration_schedule(members: list[str], blobs: list[tuple[str, bytes]], images: list[int], count: int, warmup: int = 2) -> Schedule:
    """Per member, `warmup` + `count` pinned requests, sent one at a time (each after the last answer and a pause)."""
    rows = [(name, images[i % len(images)]) for name in members for i in range(warmup + count)]
    return Schedule([0.0] * len(rows), [None] * len(rows), [image for _, image in rows], blobs,
                    [urlencode({"member": name}) for name, _ in rows], sequential=True)


def calibration_samples(results: list[list], members: list[str], count: int, warmup: int = 2) -> dict[str, list[float]]:
    """The calibration's latencies (ms) per member, warm-ups left out; a CalibrationError when any request failed."""
    by_index = {r[0]: r for r in results}
    samples: dict[str, list[float]] = {}
    for m, name in enumerate(members):
        samples[name] = []
        for i in range(warmup + count):
            row = by_index.get(m * (warmup + count) + i)
            if row is None or row[1] != OK:
                raise CalibrationError(f"calibrating member {name}: a pinned request at rest was not answered "
                                       f"({'no answer' if row is None else f'{row[1]}, status {row[2]}'})")
            if i >= warmup:
                samples[name].append(row[3])
    return samples


def _connection(url: str, timeout_s: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return kind(parts.netloc, timeout=timeout_s)


def warm_up(url: str, members: list[str], blobs: list[tuple[str, bytes]], count: int = 3, timeout_s: float = 30.0) -> None:
    """A few pinned requests per member, one at a time, so a server's first answers (cold caches) fall in no phase."""
    connection = _connection(url, timeout_s)
    try:
        for name in members:
            path = f"/v1/classify?{urlencode({'top_k': 1, 'member': name})}"
            for i in range(count):
                content_type, body = blobs[i % len(blobs)]
                try:
                    connection.request("POST", path, body=body, headers={"content-type": content_type})
                    answer = connection.getresponse()
                    data = answer.read()
                except (OSError, http.client.HTTPException) as error:
                    raise CalibrationError(f"warming member {name} up at {url}: {error!r}") from None
                if answer.status != 200:
                    raise CalibrationError(f"warming member {name} up at {url}: answered {answer.status} {data[:200].decode(errors='replace')}")
    finally:
        connection.close()


def wait_idle(url: str, timeout_s: float = IDLE_WAIT_S) -> str | None:
    """None once the server's members have nothing queued (GET /v1/models), else why the wait ended without it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=10) as answer:
                queued = sum(int(m.get("queued", 0)) for m in json.load(answer)["members"])
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as error:
            return f"could not read the queues: {error!r}"
        if queued == 0:
            return None
        if time.monotonic() >= deadline:
            return f"{queued} requests still queued after {timeout_s:g} s"
        time.sleep(0.25)


# Figures of one phase, from the per-request outcomes the locustfile recorded.

def _rank(ordered: list[float], q: float) -> float | None:
    return ordered[max(0, math.ceil(q * len(ordered) / 100 - 1e-9) - 1)] if ordered else None


def _tail(values) -> dict:
    """p50, p99 and max of `values` (None each when there are none)."""
    ordered = sorted(values)
    return {"p50": _rank(ordered, 50), "p99": _rank(ordered, 99), "max": ordered[-1] if ordered else None}


UNMEETABLE = "unmeetable (422)"


def _reason(result: list) -> str:
    """A 429's reason, as the server gave it (the answer's `reason`)."""
    return str(result[6]) if len(result) > 6 and result[6] else "no reason given"


def phase_figures(results: list[list], bounds: list[float], seconds: float | None, accuracy: dict[str, float]) -> dict:
    """Attainment, effective accuracy, goodput, latency, refusals, errors and member shares over ALL scheduled requests.

    `results` holds [index, outcome kind, status, latency ms, member, send lag ms, a 429's reason] per finished request
    (the last two optional); a request without one (still unanswered when the phase ended) counts as an error.
    """
    scheduled = len(bounds)
    kinds = Counter(r[1] for r in results)
    answered = [r for r in results if r[1] == OK]
    within = [r for r in answered if r[3] <= bounds[r[0]]]
    unfinished = scheduled - len({r[0] for r in results})
    error_kinds = {kind: kinds[kind] for kind in ERRORS if kind != "overloaded" and kinds[kind]}
    if unfinished:
        error_kinds["unfinished"] = unfinished
    served = Counter(r[4] for r in answered)
    reasons = Counter(_reason(r) for r in results if r[1] in ("overloaded", SLA_REFUSED))
    refused = [r for r in results if r[1] in (SLA_REJECTED, SLA_REFUSED) or (r[1] == "overloaded" and r[2] == 429)]
    by_reason: dict[str, list[float]] = {}
    for r in refused:
        by_reason.setdefault(UNMEETABLE if r[1] == SLA_REJECTED else _reason(r), []).append(r[3])
    return {
        "requests": scheduled, "answered": len(answered), "answered_share": len(answered) / scheduled if scheduled else None,
        "within_bound": len(within), "attainment": len(within) / scheduled if scheduled else None,
        "effective_accuracy": sum(accuracy.get(r[4], 0.0) for r in within) / scheduled if scheduled else None,
        "goodput_rps": len(within) / seconds if seconds else None,
        "latency_ms": _tail(r[3] for r in answered),
        "refused_422": kinds[SLA_REJECTED], "refused_429": kinds["overloaded"] + kinds[SLA_REFUSED],
        "refused_429_reasons": dict(sorted(reasons.items())),
        "refusal_latency_ms": _tail(r[3] for r in refused),
        # Per cause: a refusal at admission (429 overload, 422) comes at once; a drop (429 deadline) when the request could no
        # longer make its deadline, so late in its bound by nature.
        "refusal_latency_by_reason_ms": {reason: _tail(ms) | {"count": len(ms)} for reason, ms in sorted(by_reason.items())},
        # From the request's actual send: without the generator's own lag (its overload, not the server's), where it was recorded.
        "refusal_after_send_ms": _tail(r[3] - r[5] for r in refused if len(r) > 5 and r[5] is not None),
        "errors": sum(error_kinds.values()),
        "error_kinds": error_kinds, "members": {m: n / len(answered) for m, n in sorted(served.items())},
        "member_requests": dict(sorted(served.items())), "unknown_members": sorted(set(served) - set(accuracy)),
    }


def turns(rounds: int, phases: int) -> list[tuple[int, int]]:
    """(round, phase index) in the order they run: round r starts with phase r mod the phases, then the others in turn."""
    return [(turn, (turn + k) % phases) for turn in range(rounds) for k in range(phases)]


def _slug(index: int, name: str) -> str:
    return f"{index + 1}-" + re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def _run_phase(test: LoadTest, plan: Plan, phase: Phase, slug: str, raw: Path, schedule_file: Path, bounds: list[float],
               seconds: float | None, accuracy: dict[str, float], progress) -> tuple[dict, list[str], list[list]]:
    """One phase once: its figures, its problems and every request's outcome (the locustfile's rows)."""
    folder = raw / slug
    folder.mkdir()
    figures: dict = {"name": phase.name, "kind": phase.kind, "url": phase.url, "params": phase.params, "member": phase.member,
                     "raw": f"raw/{folder.name}"}
    figures["idle_wait"] = wait_idle(phase.url)
    before, _ = prom.scrape(phase.url)
    problems = runner.run_locust(replace(test, url=phase.url), plan, folder, progress, schedule_file, phase.params)
    after, _ = prom.scrape(phase.url)
    if before and after:
        try:
            figures["server_metrics"] = prom.delta(before, after)
        except (ValueError, KeyError):
            pass
    try:
        counts = json.loads((folder / "counts.json").read_text())
    except (OSError, ValueError):
        return figures, problems + [f"the load generator wrote no counts (see {figures['raw']}/locust.log)"], []
    tally = Tally.from_json(counts["tally"])
    results = counts.get("results", [])
    figures |= phase_figures(results, bounds, seconds, accuracy)
    figures |= {"lag_p99_ms": tally.lag.percentile(99), "dropped": figures["error_kinds"].get("dropped", 0),
                "examples": dict(tally.examples), "locust_request_count": runner.locust_request_count(folder)}
    if "setup" in tally.examples:
        problems.append(f"the load generator could not start: {tally.examples['setup']}")
    elif figures["answered"] + figures["refused_422"] + figures["refused_429"] == 0:
        problems.append(f"no request was answered ({', '.join(f'{k} {n}' for k, n in figures['error_kinds'].items()) or 'none sent'})")
    if figures["unknown_members"]:
        problems.append(f"served by members not in GET /v1/models: {', '.join(figures['unknown_members'])} (counted at accuracy 0)")
    return figures, problems, results


ROUND_FIGURES = ("attainment", "effective_accuracy", "goodput_rps")


def pooled(rounds: list[dict], results: list[list[list]], bounds: list[float], seconds: float | None, accuracy: dict[str, float]) -> dict:
    """One phase's figures over all its rounds: every request of every round counted once (round r's request i as
    request r x len(bounds) + i), each round's own attainment, effective accuracy and goodput kept under `rounds`."""
    if len(rounds) == 1:
        return rounds[0]
    count = len(bounds)
    rows = [[r * count + row[0], *row[1:]] for r, round_results in enumerate(results) for row in round_results]
    figures = {**rounds[0], **phase_figures(rows, bounds * len(rounds), seconds and seconds * len(rounds), accuracy)}
    figures["requests_per_round"] = count
    figures["rounds"] = [{"raw": f.get("raw"), **{k: f.get(k) for k in ROUND_FIGURES}} for f in rounds]
    figures["raw"] = [f.get("raw") for f in rounds]
    figures["lag_p99_ms"] = max((f["lag_p99_ms"] for f in rounds if f.get("lag_p99_ms") is not None), default=None)
    figures["locust_request_count"] = sum(f.get("locust_request_count") or 0 for f in rounds)
    figures["idle_wait"] = next((f["idle_wait"] for f in rounds if f.get("idle_wait")), None)
    metrics = [f["server_metrics"] for f in rounds if "server_metrics" in f]
    if len(metrics) == len(rounds):
        summed = ("requests", "images", "sla_misses", "routes", "late_stage", "gc_collections", "gc_pause_ms", "refusal_buckets",
                  "expectation_error_buckets", "decode_wait_ran_buckets", "decode_wait_late_buckets")
        figures["server_metrics"] = {key: _summed([m.get(key, {}) for m in metrics]) for key in summed}
    else:
        figures.pop("server_metrics", None)
    return figures


def _summed(counters: list[dict]) -> dict:
    total: Counter = Counter()
    for counter in counters:
        total.update(counter)
    return dict(total)


def _target(url: str, test: LoadTest) -> tuple[dict, list[str]]:
    target: dict = {"url": url, "ready": False}
    return target, runner.preflight(replace(test, url=url), target)


def _bounds_figures(bounds: list[float]) -> dict:
    ordered = sorted(bounds)
    return {"min": ordered[0], "p50": _rank(ordered, 50), "max": ordered[-1]} if ordered else {}


def run(test: LoadTest, comparison: Comparison, report_dir: Path, command: str, progress=lambda done, total: None) -> dict:
    """Calibrate, make the schedule, run every phase, and write the comparison report; returns it ("status": pass or fail)."""
    test = replace(test, url=test.url.rstrip("/"))
    comparison = replace(comparison, other_url=comparison.other_url and comparison.other_url.rstrip("/"))
    staging = runner.open_report(report_dir)
    raw = staging / "raw"
    started = time.time()
    problems: list[str] = []
    report: dict = {"mode": "compare", "target": {"url": test.url, "ready": False}, "phases": []}
    try:
        _compare(test, comparison, raw, report, problems, progress)
    except KeyboardInterrupt:
        problems.append("interrupted (Ctrl-C or SIGTERM): the report covers the phases run until then")
    report |= {"command": command, "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
               "duration_s": time.time() - started, "versions": runner.versions(),
               "status": "failed" if problems else "passed", "problems": problems}
    runner.close_report(report, staging, report_dir, render.render_comparison)
    return report


def _compare(test: LoadTest, comparison: Comparison, raw: Path, report: dict, problems: list[str], progress) -> None:
    try:
        plan = make_plan(test, replay=True)
        blobs, weights = images(test.scenario, test.seed)
    except ValueError as error:
        problems.append(str(error))
        return
    times, given = schedule_times(test, plan)
    seconds = trace_seconds(list(test.trace)) if test.trace is not None else sum(s.seconds for s in plan.steps)
    report["schedule"] = {"arrivals": runner.arrivals_report(test), "rate": test.rate, "duration_s": seconds,
                          "steps": [{"offered_rate": s.offered_rate, "seconds": s.seconds} for s in plan.steps],
                          "requests": len(times), "latency_bounds": list(comparison.latency_bounds),
                          "bounds_from_trace": sum(b is not None for b in given), "scenario": test.scenario,
                          "images": sorted({kind for kind, _ in blobs}), "seed": test.seed}
    target, found = _target(test.url, test)
    report["target"] = target
    problems += found
    other = None
    if comparison.other_url and not found:
        other, found = _target(comparison.other_url, test)
        report["other_target"] = other
        problems += [f"{comparison.other_label} ({comparison.other_url}): {p}" for p in found]
    if problems:
        return
    if not times:
        problems.append("the schedule holds no request (raise --rate or --duration)")
        return
    members = [m["name"] for m in target["members"]]
    draws = draw(len(times), weights, len(members), comparison.latency_bounds, test.seed)
    count = comparison.calibration_requests
    calibration = calibration_schedule(members, blobs, draws.images[:count], count)  # the first requests' images: the mix
    (raw / "0-calibration").mkdir()
    (raw / "calibration.json").write_text(calibration.to_json())
    cal_plan = Plan("open", 0.0, [Step(1, None, len(calibration) * 0.1 + 1)], replay=True)
    found = runner.run_locust(test, cal_plan, raw / "0-calibration", lambda done, total: None, raw / "calibration.json")
    try:
        if found:
            raise CalibrationError("; ".join(found))
        counts = json.loads((raw / "0-calibration" / "counts.json").read_text())
        samples = calibration_samples(counts.get("results", []), members, count)
        if other is not None:  # warm the other server up too (not measured: the bounds are the schedule's)
            warm_up(comparison.other_url, [m["name"] for m in other["members"]], blobs, 3, test.request_timeout_s)
    except (OSError, ValueError) as error:
        problems.append(f"calibration: the load generator wrote no counts (see raw/0-calibration/locust.log): {error}")
        return
    except CalibrationError as error:
        problems.append(str(error))
        return
    unloaded = [statistics.median(samples[name]) for name in members]
    report["calibration"] = {"requests_per_member": comparison.calibration_requests,
                             "members": {name: {"median_ms": ms, "samples_ms": samples[name]} for name, ms in zip(members, unloaded, strict=True)}}
    bounds = latency_bounds(draws, given, unloaded)
    report["schedule"]["bounds_ms"] = _bounds_figures(bounds)
    schedule_file = raw / "schedule.json"
    schedule_file.write_text(Schedule(times, bounds, draws.images, blobs).to_json())
    accuracy = {"main": {m["name"]: m["accuracy"] for m in target["members"]},
                "other": {m["name"]: m["accuracy"] for m in (other or {}).get("members", [])}}
    phases = make_phases(test.url, members, comparison)
    planned = round(sum(s.seconds for s in plan.steps) + runner.DRAIN_S)
    total = len(phases) * comparison.rounds * planned
    runs: dict[int, list[tuple[dict, list[list]]]] = {i: [] for i in range(len(phases))}
    try:
        for done_runs, (turn, index) in enumerate(turns(comparison.rounds, len(phases))):
            phase = phases[index]
            slug = _slug(index, phase.name) if comparison.rounds == 1 else f"r{turn + 1}-{_slug(index, phase.name)}"

            def step(done: int, _total: int, offset: int = done_runs * planned) -> None:
                progress(min(offset + done, total), total)

            figures, found, results = _run_phase(test, plan, phase, slug, raw, schedule_file, bounds, seconds,
                                                 accuracy["other" if phase.kind == "other" else "main"], step)
            runs[index].append((figures, results))
            problems += [f"phase {phase.name}" + (f", round {turn + 1}" if comparison.rounds > 1 else "") + f": {p}" for p in found]
            if any("interrupted" in p for p in found):
                break
    finally:  # the phases run so far, each pooled over its rounds, in the phases' order
        for index, phase in enumerate(phases):
            if runs[index]:
                report["phases"].append(pooled([f for f, _ in runs[index]], [r for _, r in runs[index]], bounds, seconds,
                                               accuracy["other" if phase.kind == "other" else "main"]))
