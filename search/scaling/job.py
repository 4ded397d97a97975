"""`effx-serve lacs`: run LACS on this machine and write lacs.json, family.json and a picture.

lacs.json holds every trial (coefficients, proxy accuracy, latency, reward), the LACS winner and the
accuracy-only winner, and each decision's margin against the seed noise: with `noise_repeats` >= 2 the two best
triplets of each ranking are trained again with other seeds, and so is every other triplet whose first draw is within
the seed noise of the leader's mean (up to `max_finalists`): on first draws alone several triplets may be level, and
the two best of them may not hold the true best. The winner is the best mean, and its margin over each finalist is
judged against the pooled seed noise (search.noise); every trial's accuracy carries that noise. The reward's
finalists are also timed again side by side (in turn, `noise_repeats` rounds, at least 3), ranked with those timings,
and the timings' spread joins the margins' noise: their first timings may be minutes apart on a machine whose load
changed meanwhile. While a finalist is level with the leader, the leader and each one level with it get one more seed
(and every finalist one more timing round), up to `max_repeats`: a race that stops as soon as every margin is signal,
so a close decision is paid more seeds and a clear one none; a margin so small that seeds up to `max_repeats` could
not part it is a tie, called at once and said as inside the noise. family.json holds
every member of the LACS family (spec, phi, expected latency on this machine) and, for comparison, the accuracy-only
family built from the accuracy-only winner.
Trials are cached (proxy-training checkpoints and the latency store), so a killed run resumes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from effx_serve.core.fs import write_atomic
from effx_serve.core.plots import optional_pyplot, save_figure
from effx_serve.perf.profiler import SIDE_BY_SIDE_ROUNDS
from search.defaults import estimate_seconds
from search.noise import (
    MAX_REPEATS,
    NOISE_SIGMAS,
    Margin,
    Spread,
    difference_std,
    means_difference_std,
    pooled_std,
    seeds_at_most,
)
from search.reward import reward
from search.scaling import lacs
from search.scaling.lacs import Coefficients, Trial
from training.arch.family_file import FAMILY_VERSION
from training.arch.plan import expand
from training.arch.spec import ModelSpec
from training.errors import SpecError

FAMILY_FILE = "family.json"
MAX_FINALISTS = 4
"""Triplets a decision retrains at most: the two best first draws and those whose first draw is within the noise."""


@dataclass(frozen=True)
class LacsSettings:
    grid_step: float = 0.1
    tolerance: float = 0.1
    fine_step: float | None = 0.05
    top_k: int = 2
    w: float = lacs.MNASNET_W
    target_ms: float | None = None  # default: latency of the base scaled to phi = 1 by EfficientNet's coefficients
    phis: tuple[float, ...] = lacs.DEFAULT_PHIS
    noise_repeats: int = 3  # seeds per finalist to measure the seed noise with (0 or 1: not measured)
    max_repeats: int = MAX_REPEATS  # seeds per finalist while their margin is inside the noise (<= noise_repeats: no race)
    max_finalists: int = MAX_FINALISTS  # triplets a decision retrains: the two best and those within the noise of the leader

    @property
    def seeds_at_most(self) -> int:
        return seeds_at_most(self.noise_repeats, self.max_repeats)


def estimate_lacs(base: ModelSpec, settings: LacsSettings, train_images: int, val_images: int, epochs: int) -> tuple[int, float]:
    """(proxy runs, seconds) of a LACS run on this machine at most: every triplet trains the base scaled to phi = 1 (twice
    its FLOPs), timed here; the finalists' extra seeds included up to the race's limit (both rankings' finalists, at most
    every triplet), a fine grid's extra triplets not (they depend on the ranking)."""
    typical = lacs.scale(base, Coefficients(*lacs.EFFICIENTNET_COEFFICIENTS), 1.0)
    grid = len(lacs.coefficient_grid(settings.grid_step, tolerance=settings.tolerance))
    runs = grid + min(2 * settings.max_finalists, grid) * max(0, settings.seeds_at_most - 1)
    return runs, estimate_seconds(typical, train_images, val_images, epochs, runs)


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
        # What the triplet built at phi = 1: from a shallow base a small depth step rounds to the same blocks.
        row = lacs.member_row(lacs.scale(base, trial.coefficients, 1.0))
        say(f"  {trial.stage:6s} ({a:.3g}, {b:.3g}, {g:.3g}): {row['blocks']} blocks, {row['resolution']} px, {row['macs'] / 1e6:.1f} MMACs: "
            f"top-1 {100 * trial.accuracy:.1f}%, {trial.latency_ms:.3f} ms, reward {trial.reward:.4f}")

    trials = lacs.search(base, accuracy_of, latency_of, target, grid, settings.fine_step, settings.top_k, settings.w, report)
    spread_of = getattr(accuracy_of, "spread", None) if settings.noise_repeats >= 2 else None
    latencies_of = getattr(latency_of, "side_by_side", None) if settings.noise_repeats >= 2 else None
    decisions = {by: decide(trials, by, base, spread_of, settings.noise_repeats, reward_factor(target, settings.w), latencies_of,
                            settings.seeds_at_most, say, settings.max_finalists) for by in ("reward", "accuracy")}
    noise = pooled_std([spread for decision in decisions.values() for spread in decision.spreads.values()])
    for by, label in (("reward", "LACS"), ("accuracy", "accuracy-only")):
        say(f"{label} winner {decisions[by].winner.coefficients.astuple()} beats the runner-up {decisions[by].describe()}")
    winner, accuracy_only = decisions["reward"].winner, decisions["accuracy"].winner
    result = {"hardware": hardware_id, "base": base.to_dict(), "target_ms": target, "settings": asdict(settings),
              "accuracy_noise_std": noise, "trials": [_trial_dict(t, noise) for t in trials],
              "lacs": _trial_dict(winner, noise) | {"decision": decisions["reward"].to_dict()},
              "accuracy_only": _trial_dict(accuracy_only, noise) | {"decision": decisions["accuracy"].to_dict()}}
    write_atomic(out / "lacs.json", json.dumps(result, indent=2))
    families = {name: family_members(base, trial.coefficients, settings.phis, latency_of, f"{base.name}-{name}", say)
                for name, trial in (("lacs", winner), ("accuracy-only", accuracy_only))}
    write_family(out / FAMILY_FILE, hardware_id, winner.coefficients, families["lacs"],
                 {"coefficients": accuracy_only.coefficients.astuple(), "members": families["accuracy-only"]})
    _plot(trials, winner, accuracy_only, target, noise, out / "lacs.png")
    return result | {"families": families}


@dataclass
class Decision:
    """A ranking's winner over the other finalists (`by` reward or accuracy), with each margin against the noise of the
    seeds and, for the reward, of the finalists' timings side by side; `runner_up` is the best of the others."""

    by: str
    winner: Trial
    runner_up: Trial | None
    margin: Margin | None
    spreads: dict[tuple, Spread]  # coefficients -> accuracy over seeds, for the finalists retrained
    timings: dict[tuple, Spread] = field(default_factory=dict)  # coefficients -> latency (ms) over side-by-side rounds
    margins: dict[tuple, Margin] = field(default_factory=dict)  # coefficients -> the winner's margin over that finalist

    def describe(self) -> str:
        if self.runner_up is None or self.margin is None:
            return "(no runner-up)"
        unit = " of reward" if self.by == "reward" else " of top-1"
        seeds = f" (means of {self.seeds} seeds each)" if self.seeds else ""
        others = f"; {len(self.spreads)} triplets were finalists" if len(self.spreads) > 2 else ""
        return f"{_key(self.runner_up)} {self.margin.describe(unit)}{seeds}{others}"

    @property
    def seeds(self) -> int | None:
        """Seeds the winner and the runner-up were each trained with (the fewer of the two); None when not retrained."""
        keys = [_key(t) for t in (self.winner, self.runner_up) if t is not None]
        return min((len(self.spreads[key].samples) for key in keys if key in self.spreads), default=None)

    @property
    def level(self) -> list[tuple]:
        """The finalists whose margin to the winner is inside the noise."""
        return [key for key, margin in self.margins.items() if margin.inside_noise]

    def to_dict(self) -> dict:
        return {"by": self.by, "runner_up": None if self.runner_up is None else list(self.runner_up.coefficients.astuple()),
                "seeds": self.seeds,
                "margin": None if self.margin is None else self.margin.to_dict(),
                "finalists": [{"coefficients": list(key), "accuracy": spread.to_dict()}
                              | ({"latency_ms": self.timings[key].to_dict()} if key in self.timings else {})
                              | ({"margin": self.margins[key].to_dict()} if key in self.margins else {})
                              for key, spread in self.spreads.items()]}


def reward_factor(target_ms: float, w: float) -> Callable[[float], float]:
    """A trial's reward per unit of accuracy at a latency: what `decide` ranks and judges rewards by."""
    return lambda latency_ms: reward(1.0, latency_ms, target_ms, w, w)


def decide(trials: Sequence[Trial], by: str, base: ModelSpec, spread_of, repeats: int, latency_factor: Callable[[float], float],
           latencies_of=None, max_repeats: int = 0, say: Callable[[str], None] | None = None,
           max_finalists: int = MAX_FINALISTS) -> Decision:
    """The best trial by `by` among finalists. Without `spread_of`, the two best first draws. With it, the two best are
    retrained over `repeats` seeds and ranked by their means, and every other trial whose first draw is not clearly
    behind the leader's mean (within 2 std of the seed noise) joins them, up to `max_finalists`: the first draws alone
    may have left the true best out. With `latencies_of` (a reward ranking), the finalists are timed again side by side
    (MeasuredLatency.side_by_side) and ranked with those means. While a finalist is level with the leader (its margin
    inside the noise) and the leader has fewer than `max_repeats` seeds, the leader and each finalist level with it get
    one more (and, with timings, every finalist one more round side by side), as long as seeds up to `max_repeats` could
    part them (`Margin.could_part`): a margin too small for that is a tie, called at once. `latency_factor(latency_ms)` is the reward
    of a trial per unit of accuracy."""
    order = lacs.ranked(trials, by)
    if len(order) < 2:
        return Decision(by, order[0], None, None, {})
    specs = {_key(t): lacs.scale(base, t.coefficients, 1.0) for t in order}
    finalists = order[:2]
    timed = latencies_of is not None and by == "reward"
    rounds = max(repeats, SIDE_BY_SIDE_ROUNDS)
    spreads: dict[tuple, Spread] = {}
    timings: dict[tuple, Spread] = {}
    while True:
        keys = [_key(t) for t in finalists]
        if spread_of is not None:
            spreads |= {key: spread_of(specs[key], repeats) for key in keys if key not in spreads}
        if timed and list(timings) != keys:  # a finalist joined: all of them timed afresh, in the same rounds
            timings = dict(zip(keys, latencies_of([specs[key] for key in keys], rounds), strict=True))
        decision = _judged(by, finalists, spreads, timings, latency_factor)
        if not spreads:
            return decision
        joining = [t for t in order if t not in finalists and not _clearly_behind(decision, t, spreads, latency_factor)]
        joining = joining[:max(0, max_finalists - len(finalists))]
        if joining:
            if say is not None:
                say(f"  {by}: {', '.join(str(_key(t)) for t in joining)} within the seed noise of the leader "
                    f"{_key(decision.winner)} on a first draw: finalist(s) as well")
            finalists = finalists + joining
            continue
        leader = _key(decision.winner)
        seeds = len(spreads[leader].samples)
        racing = [key for key in decision.level if decision.margins[key].could_part(seeds, max_repeats)]
        if not racing or seeds >= max_repeats:
            if say is not None and decision.level and seeds < max_repeats:
                say(f"  {by} finalists: {leader} over {decision.describe()}; seeds up to {max_repeats} each would not part "
                    "them: a tie, called now")
            return decision
        if say is not None:
            level = ("the runner-up" if racing == [_key(decision.runner_up)] else
                     f"the {len(racing)} finalists level with it" if len(racing) > 1 else f"{racing[0]}, level with it")
            say(f"  {by} finalists: {leader} over {decision.describe()}; a seed more each for it and {level} "
                f"({seeds + 1} of at most {max_repeats})")
        for key in (leader, *racing):
            spreads[key] = spread_of(specs[key], len(spreads[key].samples) + 1)
        if timed:
            more = latencies_of([specs[key] for key in keys], 1)
            timings = {key: Spread(timings[key].samples + extra.samples) for key, extra in zip(keys, more, strict=True)}
            rounds += 1


def _judged(by: str, finalists: Sequence[Trial], spreads: dict[tuple, Spread], timings: dict[tuple, Spread],
            latency_factor: Callable[[float], float]) -> Decision:
    """The finalists ranked by the means of their seeds and timings where measured, and the winner's margin over each
    against their noise."""
    if spreads or timings:
        finalists = lacs.ranked([_remeasured(t, spreads.get(_key(t)), timings.get(_key(t)), latency_factor) for t in finalists], by)
    winner, *others = finalists
    noise = pooled_std(list(spreads.values()))
    margins = {_key(other): _margin(by, winner, other, noise, spreads, timings, latency_factor) for other in others}
    return Decision(by, winner, others[0], margins[_key(others[0])], spreads, timings, margins)


def _key(trial: Trial) -> tuple:
    return trial.coefficients.astuple()


def _margin(by: str, ours: Trial, theirs: Trial, noise: float | None, spreads: dict[tuple, Spread], timings: dict[tuple, Spread],
            latency_factor: Callable[[float], float]) -> Margin:
    """Our value over theirs. Each is a mean of its seeds (one draw without spreads); the reward is accuracy times a
    latency factor, so its seed noise is the accuracy's scaled by that factor, and its timing noise that of the factor."""
    draws = [len(spreads[_key(t)].samples) if _key(t) in spreads else 1 for t in (ours, theirs)]
    scales = [latency_factor(t.latency_ms) for t in (ours, theirs)] if by == "reward" else None
    value = ours.reward - theirs.reward if by == "reward" else ours.accuracy - theirs.accuracy
    if noise is None:
        return Margin(value, None)
    return Margin(value, difference_std(means_difference_std(noise, *draws, scales=scales), _timing_noise(ours, theirs, timings, latency_factor)))


def _clearly_behind(decision: Decision, trial: Trial, spreads: dict[tuple, Spread], latency_factor: Callable[[float], float]) -> bool:
    """Whether `trial`'s first draw is more than 2 std of the seed noise below the leader's mean."""
    margin = _margin(decision.by, decision.winner, trial, pooled_std(list(spreads.values())), spreads, {}, latency_factor)
    return margin.noise is not None and margin.value > NOISE_SIGMAS * margin.noise


def _remeasured(trial: Trial, accuracy: Spread | None, latency: Spread | None, latency_factor: Callable[[float], float]) -> Trial:
    """`trial` with the mean of its seeds and of its side-by-side timings where measured, and the reward they make."""
    top1 = accuracy.mean if accuracy is not None else trial.accuracy
    latency_ms = latency.mean if latency is not None else trial.latency_ms
    return Trial(trial.coefficients, top1, latency_ms, top1 * latency_factor(latency_ms), trial.stage)


def _timing_noise(winner: Trial, runner_up: Trial, timings: dict[tuple, Spread], latency_factor: Callable[[float], float]) -> float:
    """The std of the mean reward difference from the timings alone: the rounds are paired (each timed both under the same
    conditions), so it is the spread of the per-round differences over sqrt(rounds); 0 without timings."""
    pairs = [timings.get(_key(t)) for t in (winner, runner_up)]
    if any(p is None for p in pairs) or len(pairs[0].samples) < 2:
        return 0.0
    differences = Spread(tuple(winner.accuracy * latency_factor(a) - runner_up.accuracy * latency_factor(b)
                               for a, b in zip(pairs[0].samples, pairs[1].samples, strict=True)))
    return differences.std / math.sqrt(len(differences.samples))


def _trial_dict(trial: Trial, noise: float | None = None) -> dict:
    return {"coefficients": list(trial.coefficients.astuple()), "accuracy": trial.accuracy, "accuracy_std": noise,
            "latency_ms": trial.latency_ms, "reward": trial.reward, "stage": trial.stage}


def write_family(path: Path, hardware_id: str, coefficients: Coefficients, members: list[dict], accuracy_only: dict | None = None) -> None:
    """family.json (training.arch.family_file's format), written atomically."""
    data = {"family_version": FAMILY_VERSION, "hardware": hardware_id, "coefficients": coefficients.astuple(), "members": members}
    write_atomic(path, json.dumps(data | ({"accuracy_only": accuracy_only} if accuracy_only else {}), indent=2))


def family_members(base: ModelSpec, coefficients: Coefficients, phis: Sequence[float], latency_of, prefix: str, say) -> list[dict]:
    """The members at `phis`; an invalid one and those after it are left out and said, instead of failing after the search."""
    specs, problem = lacs.valid_family(base, coefficients, phis, prefix)
    if problem:
        say(f"left out of the family from {problem}")
    members = []
    for member, phi in zip(specs, phis, strict=False):
        plan = expand(member)
        members.append({"name": member.name, "phi": phi, "spec": member.to_dict(), "params": plan.params, "macs": plan.macs,
                        "expected_latency_ms": latency_of(member)})
    return members


def _plot(trials: Sequence[Trial], winner: Trial, accuracy_only: Trial, target_ms: float, noise: float | None, path: Path) -> None:
    plt = optional_pyplot()
    if plt is None:  # no matplotlib: the picture is optional (the plot extra)
        return
    fig, ax = plt.subplots(figsize=(7, 5))
    label = "triplets (phi = 1): coarse blue, fine green" + ("" if noise is None else f"; bars: seed noise +-{100 * noise:.1f} pts")
    for stage, colour in (("coarse", "C0"), ("fine", "C2")):
        chosen = [t for t in trials if t.stage == stage]
        if chosen:
            ax.errorbar([t.latency_ms for t in chosen], [100 * t.accuracy for t in chosen], yerr=None if noise is None else 100 * noise,
                        fmt="o", color=colour, markersize=4, alpha=0.7, capsize=2, label=label if stage == "coarse" else None)
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
