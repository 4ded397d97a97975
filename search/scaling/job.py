"""`effx-serve lacs`: run LACS on this machine and write lacs.json, family.json and a picture.

lacs.json holds every trial (coefficients, proxy accuracy, latency, reward), the LACS winner and the
accuracy-only winner; family.json holds every member of the LACS family (spec, phi, expected latency on
this machine) and, for comparison, the accuracy-only family built from the accuracy-only winner.
Trials are cached (proxy-training checkpoints and the latency store), so a killed run resumes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from effx_serve.core.fs import write_atomic
from effx_serve.core.plots import optional_pyplot, save_figure
from search.scaling import lacs
from search.scaling.lacs import Coefficients, Trial
from training.arch.family_file import FAMILY_VERSION
from training.arch.plan import expand
from training.arch.spec import ModelSpec
from training.errors import SpecError


@dataclass(frozen=True)
class LacsSettings:
    grid_step: float = 0.1
    tolerance: float = 0.1
    fine_step: float | None = 0.05
    top_k: int = 2
    w: float = lacs.MNASNET_W
    target_ms: float | None = None  # default: latency of the base scaled to phi = 1 by EfficientNet's coefficients
    phis: tuple[float, ...] = lacs.DEFAULT_PHIS


def run(base: ModelSpec, out: Path, accuracy_of: Callable[[ModelSpec], float], latency_of: Callable[[ModelSpec], float],
        hardware_id: str, settings: LacsSettings = LacsSettings(), say: Callable[[str], None] = print) -> dict:
    if out.exists() and not out.is_dir():
        raise SpecError(f"--out {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    target = settings.target_ms or latency_of(lacs.scale(base, Coefficients(*lacs.EFFICIENTNET_COEFFICIENTS), 1.0))
    grid = lacs.coefficient_grid(settings.grid_step, tolerance=settings.tolerance)
    say(f"LACS on {hardware_id}: {len(grid)} triplets on a {settings.grid_step} grid, target {target:.3f} ms, w = {settings.w}")

    def report(trial: Trial) -> None:
        a, b, g = trial.coefficients.astuple()
        say(f"  {trial.stage:6s} ({a:.3g}, {b:.3g}, {g:.3g}): top-1 {100 * trial.accuracy:.1f}%, {trial.latency_ms:.3f} ms, reward {trial.reward:.4f}")

    trials = lacs.search(base, accuracy_of, latency_of, target, grid, settings.fine_step, settings.top_k, settings.w, report)
    winner, accuracy_only = lacs.best(trials), lacs.best(trials, "accuracy")
    result = {"hardware": hardware_id, "base": base.to_dict(), "target_ms": target, "settings": asdict(settings),
              "trials": [_trial_dict(t) for t in trials], "lacs": _trial_dict(winner), "accuracy_only": _trial_dict(accuracy_only)}
    write_atomic(out / "lacs.json", json.dumps(result, indent=2))
    families = {name: _family(base, trial.coefficients, settings.phis, latency_of, f"{base.name}-{name}")
                for name, trial in (("lacs", winner), ("accuracy-only", accuracy_only))}
    family_file = {"family_version": FAMILY_VERSION, "hardware": hardware_id, "coefficients": winner.coefficients.astuple(),
                   "members": families["lacs"], "accuracy_only": {"coefficients": accuracy_only.coefficients.astuple(),
                                                                    "members": families["accuracy-only"]}}
    write_atomic(out / "family.json", json.dumps(family_file, indent=2))
    _plot(trials, winner, accuracy_only, target, out / "lacs.png")
    return result | {"families": families}


def _trial_dict(trial: Trial) -> dict:
    return {"coefficients": list(trial.coefficients.astuple()), "accuracy": trial.accuracy, "latency_ms": trial.latency_ms,
            "reward": trial.reward, "stage": trial.stage}


def _family(base: ModelSpec, coefficients: Coefficients, phis: Sequence[float], latency_of, prefix: str) -> list[dict]:
    members = []
    for member, phi in zip(lacs.family(base, coefficients, phis, prefix), phis, strict=True):
        plan = expand(member)
        members.append({"name": member.name, "phi": phi, "spec": member.to_dict(), "params": plan.params, "macs": plan.macs,
                        "expected_latency_ms": latency_of(member)})
    return members


def _plot(trials: Sequence[Trial], winner: Trial, accuracy_only: Trial, target_ms: float, path: Path) -> None:
    plt = optional_pyplot()
    if plt is None:  # no matplotlib: the picture is optional (the plot extra)
        return
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter([t.latency_ms for t in trials], [100 * t.accuracy for t in trials], c=["C0" if t.stage == "coarse" else "C2" for t in trials],
               s=18, alpha=0.7, label="triplets (phi = 1): coarse blue, fine green")
    for trial, label, marker in ((winner, "LACS winner", "*"), (accuracy_only, "accuracy-only winner", "D")):
        a, b, g = trial.coefficients.astuple()
        ax.scatter([trial.latency_ms], [100 * trial.accuracy], marker=marker, s=140, edgecolor="black", label=f"{label} ({a:g}, {b:g}, {g:g})")
    ax.axvline(target_ms, color="grey", linestyle=":", label=f"target {target_ms:.3g} ms")
    ax.set_xlabel("latency on this machine (ms, p50)")
    ax.set_ylabel("proxy top-1 (%)")
    ax.set_title("LACS: accuracy vs latency of each (alpha, beta, gamma) at phi = 1")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(plt, fig, path)
