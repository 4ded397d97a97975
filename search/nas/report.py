"""What a search leaves in its output folder, read back from the study's storage at any time.

- `trials.csv`: one row per trial (every controller writes the same record);
- `pareto.json` / `pareto.png`: the accuracy-latency Pareto front of the completed trials;
- `best-spec.json`: the architecture with the best reward, at the search's scaling: a spec file for
  `effx-serve lacs --base` (and so for `build-family` and `build-repo`);
- `search.json`: the settings, the counts, the best trial, the reference points, the front and every trial.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from effx_serve.core.fs import write_atomic
from effx_serve.core.plots import optional_pyplot, save_figure
from search.nas import storage as stores
from search.nas.space import SearchSpace
from search.nas.worker import ERROR_KEY, SKIPPED_KEY, SearchConfig


@dataclass(frozen=True)
class TrialRecord:
    number: int
    state: str  # complete, failed, interrupted, skipped, running, queued
    role: str  # search, or baseline:<name>
    accuracy: float | None
    latency_ms: float | None
    reward: float | None
    params: int | None
    macs: int | None
    hash: str | None
    arch_hash: str | None
    duplicate_of: int | None
    latency_source: str | None
    worker: str | None
    seconds: float | None
    note: str  # the error, or why it was interrupted or skipped
    point: dict | None


def record(trial, space: SearchSpace) -> TrialRecord:
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    state = {TrialState.COMPLETE: "complete", TrialState.RUNNING: "running", TrialState.WAITING: "queued"}.get(trial.state, "failed")
    if state == "failed" and SKIPPED_KEY in attrs:
        state = "skipped"
    elif state == "failed" and stores.INTERRUPTED_KEY in attrs:
        state = "interrupted"
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete and trial.datetime_start else None
    try:
        point = space.from_params(trial.params)
    except Exception:  # a trial interrupted before its decisions were stored
        point = None
    values = trial.values if trial.state == TrialState.COMPLETE else None
    return TrialRecord(trial.number, state, attrs.get("role", "search"), values[0] if values else None, values[1] if values else None,
                       attrs.get("reward"), attrs.get("params"), attrs.get("macs"), attrs.get("hash"), attrs.get("arch_hash"),
                       attrs.get("duplicate_of"), attrs.get("latency_source"), attrs.get("worker"), seconds,
                       attrs.get(ERROR_KEY) or attrs.get(stores.INTERRUPTED_KEY) or attrs.get(SKIPPED_KEY) or "", point)


def pareto_front(records: list[TrialRecord]) -> list[TrialRecord]:
    """Completed trials no other completed trial beats on both accuracy (higher) and latency (lower); by latency."""
    done = _unique(r for r in records if r.state == "complete")

    def dominated(r: TrialRecord) -> bool:
        return any(o.accuracy >= r.accuracy and o.latency_ms <= r.latency_ms and (o.accuracy, o.latency_ms) != (r.accuracy, r.latency_ms)
                   for o in done)

    return sorted((r for r in done if not dominated(r)), key=lambda r: r.latency_ms)


def _unique(records) -> list[TrialRecord]:
    """One record per architecture (a reused result is not a second point)."""
    return [r for r in records if r.duplicate_of is None]


def ranked(records: list[TrialRecord]) -> list[TrialRecord]:
    """The completed architectures, best reward first (the faster first on a tie)."""
    return sorted(_unique(r for r in records if r.state == "complete"), key=lambda r: (r.reward, -r.latency_ms), reverse=True)


def best(records: list[TrialRecord]) -> TrialRecord | None:
    done = ranked(records)
    return done[0] if done else None


def summary(records: list[TrialRecord], config: SearchConfig, noise: dict | None = None) -> dict:
    states = {}
    for r in records:
        states[r.state] = states.get(r.state, 0) + 1
    winner = best(records)
    return {"config": config.to_dict(), "trials": len(records), "states": states,
            "best": asdict(winner) if winner else None,
            "baselines": [asdict(r) for r in records if r.role.startswith("baseline:") and r.state == "complete"],
            "pareto_front": [asdict(r) for r in pareto_front(records)], "noise": noise, "records": [asdict(r) for r in records]}


def write_outputs(out: Path, records: list[TrialRecord], config: SearchConfig, noise: dict | None = None) -> dict:
    """Every output file; `noise`: the seed-noise verdict (search/nas/verdict.py) when it was measured."""
    result = summary(records, config, noise)
    write_atomic(out / "search.json", json.dumps(result, indent=2))
    write_atomic(out / "pareto.json", json.dumps({"hardware": config.hardware_id, "objectives": ["accuracy (max)", "latency_ms (min)"],
                                                  "front": result["pareto_front"]}, indent=2))
    write_atomic(out / "trials.csv", trial_table(records))
    winner = best(records)
    if winner is not None:
        spec = config.spec(winner.point, name=f"searched-{config.hardware_id}-{winner.hash[:8]}")
        write_atomic(out / "best-spec.json", json.dumps(spec.to_dict(), indent=2))
    plot_front(records, config, out / "pareto.png", (noise or {}).get("accuracy_std"))
    return result


TABLE_COLUMNS = ("number", "state", "role", "accuracy", "latency_ms", "reward", "params", "macs", "hash", "duplicate_of", "worker",
                 "seconds", "note")


def trial_table(records: list[TrialRecord]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    for r in sorted(records, key=lambda r: r.number):
        row = asdict(r)
        writer.writerow(["" if row[c] is None else (f"{row[c]:.6g}" if isinstance(row[c], float) else row[c]) for c in TABLE_COLUMNS])
    return buffer.getvalue()


def plot_front(records: list[TrialRecord], config: SearchConfig, path: Path, noise: float | None = None) -> None:
    done = [r for r in records if r.state == "complete"]
    if not done:
        return
    plt = optional_pyplot()
    if plt is None:  # no matplotlib: the picture is optional (the plot extra)
        return
    front, winner = pareto_front(records), best(records)
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.errorbar([r.latency_ms for r in done], [100 * r.accuracy for r in done], yerr=None if noise is None else 100 * noise, fmt="o",
                markersize=4, color="0.6", capsize=2, label="trials" + ("" if noise is None else f" (bars: seed noise +-{100 * noise:.1f} pts)"))
    ax.step([r.latency_ms for r in front], [100 * r.accuracy for r in front], where="post", color="C0", label="Pareto front")
    ax.scatter([r.latency_ms for r in front], [100 * r.accuracy for r in front], s=28, color="C0")
    for r in done:
        if r.role.startswith("baseline:"):
            ax.scatter([r.latency_ms], [100 * r.accuracy], marker="D", s=70, edgecolor="black", label=r.role.split(":", 1)[1])
    if winner:
        ax.scatter([winner.latency_ms], [100 * winner.accuracy], marker="*", s=220, color="C3", edgecolor="black",
                   label=f"best reward (trial {winner.number})")
    if config.target_ms:
        ax.axvline(config.target_ms, color="grey", linestyle=":", label=f"target T = {config.target_ms:.3g} ms")
    ax.set_xlabel(f"latency on {config.hardware_id} (ms)")
    ax.set_ylabel("proxy top-1 (%)")
    ax.set_title(f"search ({config.controller}): accuracy vs latency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(plt, fig, path)
