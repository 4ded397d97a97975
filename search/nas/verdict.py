"""Whether a search's conclusions are more than the proxy's seed noise.

Each trial's top-1 is one short training run. After the search, the best trial by reward, the runner-up (the next
architecture by reward) and every baseline are trained again with seeds 1..repeats-1 (an evaluator that can:
`accuracy_spread(spec, repeats) -> Spread`). Their deviations pool into one seed-noise estimate (the std of one
proxy top-1), and each comparison of the best with another finalist says whether its top-1 margin (of the means)
is more than 2 standard deviations of the difference of those means. While a comparison is inside the noise, the best
and each finalist it is level with get one more seed, up to `max_repeats` each (a race: clear comparisons stop it at
once, and so do margins too small for seeds up to the limit to part: `Margin.could_part`). Where latency is measured, the finalists are also timed side by side (in turn, every round), and each comparison
gives the best's latency over the other's per round.
"""

from __future__ import annotations

from collections.abc import Callable

from effx_serve.perf.profiler import SIDE_BY_SIDE_ROUNDS
from search.evaluators import load_evaluator
from search.nas.report import TrialRecord, best, ranked
from search.nas.worker import SearchConfig
from search.noise import Margin, Spread, means_difference_std, pooled_std


def judge(records: list[TrialRecord], config: SearchConfig, work_dir, repeats: int, say: Callable[[str], None] = print,
          max_repeats: int = 0, winner: TrialRecord | None = None) -> dict:
    """{"repeats", "accuracy_std", "finalists": [{number, role, samples...}], "comparisons": [{other, margin...}]}; the
    noise is None (and nothing retrained) with repeats < 2 or an evaluator without accuracy_spread. `winner`: the trial
    to judge against the others (default: the best by reward)."""
    label, winner = ("best", best(records)) if winner is None else ("judged", winner)
    empty = {"repeats": repeats, "accuracy_std": None, "finalists": [], "comparisons": []}
    if winner is None or repeats < 2:
        return empty
    evaluator = load_evaluator(config.evaluator)(config, work_dir)
    spread_of = getattr(evaluator, "accuracy_spread", None)
    if spread_of is None:
        say(f"seed noise not measured: the evaluator {config.evaluator} has no accuracy_spread")
        return empty
    done = [r for r in ranked(records) if r.point is not None]
    runner_up = next((r for r in done if r.arch_hash != winner.arch_hash and not r.role.startswith("baseline:")), None)
    finalists = [winner] + [r for r in done if r is not winner and (r is runner_up or r.role.startswith("baseline:"))]
    space = config.search_space()
    say(f"measuring the seed noise: {len(finalists)} finalists x {repeats} seeds")
    specs = {r.number: config.spec(r.point, space) for r in finalists}
    spreads = {number: spread_of(spec, repeats) for number, spec in specs.items()}
    while True:
        noise = pooled_std(list(spreads.values()))
        margins = {other.number: _margin(spreads[winner.number], spreads[other.number], noise) for other in finalists[1:]}
        seeds = len(spreads[winner.number].samples)
        level = [number for number, margin in margins.items() if margin.inside_noise]
        racing = [number for number in level if margins[number].could_part(seeds, max_repeats)]
        if not racing or seeds >= max_repeats:
            if level and seeds < max_repeats:
                say(f"the {label} (trial {winner.number}) is level with trial(s) {', '.join(map(str, level))} within the seed noise, "
                    f"by less than seeds up to {max_repeats} each could part: a tie, called now")
            break
        say(f"the {label} (trial {winner.number}) is level with trial(s) {', '.join(map(str, racing))} within the seed noise: "
            f"a seed more each ({seeds + 1} of at most {max_repeats})")
        for number in (winner.number, *racing):
            spreads[number] = spread_of(specs[number], len(spreads[number].samples) + 1)
    timings = _side_by_side(evaluator, specs, repeats)
    comparisons = []
    for other in finalists[1:]:
        margin = margins[other.number]
        name = other.role.split(":", 1)[1] if other.role.startswith("baseline:") else f"runner-up (trial {other.number})"
        ratio = _ratio(timings, winner.number, other.number)
        latency = "" if ratio is None else (f"; latency {ratio.mean:.3f}x theirs +- {ratio.std:.3f} "
                                            f"({len(ratio.samples)} rounds side by side)")
        say(f"{label} (trial {winner.number}) over {name}: top-1 {margin.describe(' of top-1')}{latency}")
        comparisons.append({"best": winner.number, "other": other.number, "other_role": other.role} | margin.to_dict()
                           | ({"latency_ratio": ratio.to_dict()} if ratio is not None else {}))
    return {"repeats": repeats, "accuracy_std": noise,
            "finalists": [{"number": r.number, "role": r.role} | spreads[r.number].to_dict() for r in finalists],
            "comparisons": comparisons}


def _margin(ours: Spread, theirs: Spread, noise: float | None) -> Margin:
    """Our mean top-1 over theirs, against the noise of a difference of means of that many seeds."""
    return Margin(ours.mean - theirs.mean, None if noise is None else means_difference_std(noise, len(ours.samples), len(theirs.samples)))


def _side_by_side(evaluator, specs: dict, repeats: int) -> dict:
    """Each finalist's latency (ms) over rounds timed in turn with the others, by trial number; {} where the evaluator
    cannot (no `latency_spread`, or latency predicted rather than measured)."""
    latency_spread = getattr(evaluator, "latency_spread", None)
    spreads = latency_spread(list(specs.values()), max(repeats, SIDE_BY_SIDE_ROUNDS)) if latency_spread is not None else None
    return dict(zip(specs, spreads, strict=True)) if spreads is not None else {}


def _ratio(timings: dict, ours: int, theirs: int) -> Spread | None:
    """Our latency over theirs, round by round (both timed under the same conditions in each)."""
    if ours not in timings or theirs not in timings:
        return None
    return Spread(tuple(a / b for a, b in zip(timings[ours].samples, timings[theirs].samples, strict=True)))
