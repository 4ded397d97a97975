"""A LACS run's decisions replayed from the draws it recorded, under this checkout's race: the winner, on how many seeds,
and the proxy runs the race takes, beside what the run itself took. No training: the replay hands out the run's own
seeds and timings, in the order it took them, so a change to the race is measured on real draws in a second.

    .venv/bin/python benchmarks/race_replay.py runs/demo/lacs/lacs.json

The replay stops with an error where this checkout's race would need a seed the run did not train.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from effx_serve.cli.common import run_script
from effx_serve.core.errors import UserError
from effx_serve.core.fs import read_json
from search.noise import Spread, seeds_at_most
from search.scaling import lacs
from search.scaling.job import decide, reward_factor
from search.scaling.lacs import Coefficients, Trial
from training.arch.spec import ModelSpec


class Recorded:
    """The run's draws per triplet: every seed's top-1 (both rankings' finalists pooled) and its last side-by-side timings."""

    def __init__(self, result: dict) -> None:
        self.base = ModelSpec.from_dict(result["base"])
        self.accuracy: dict[tuple, tuple] = {}
        self.timings: dict[tuple, tuple] = {}
        for key in ("lacs", "accuracy_only"):
            for finalist in result[key]["decision"]["finalists"]:
                triplet, samples = tuple(finalist["coefficients"]), tuple(finalist["accuracy"]["samples"])
                self.accuracy[triplet] = max(self.accuracy.get(triplet, ()), samples, key=len)
                if "latency_ms" in finalist:
                    self.timings[triplet] = tuple(finalist["latency_ms"]["samples"])
        self.asked: dict[tuple, int] = {}  # triplet -> the most seeds the replay asked for
        self._timed: dict[tuple, int] = {}

    def _triplet(self, spec: ModelSpec) -> tuple:
        return next(t for t in self.accuracy if lacs.scale(self.base, Coefficients(*t), 1.0) == spec)

    def spread(self, spec: ModelSpec, repeats: int) -> Spread:
        triplet = self._triplet(spec)
        if repeats > len(self.accuracy[triplet]):
            raise SystemExit(f"the race asks for {repeats} seeds of {triplet}; the run trained {len(self.accuracy[triplet])}")
        self.asked[triplet] = max(self.asked.get(triplet, 0), repeats)
        return Spread(self.accuracy[triplet][:repeats])

    def side_by_side(self, specs: list[ModelSpec], rounds: int) -> list[Spread]:
        """The first `rounds` timings of each (a fresh set of finalists) or, one round at a time, the next."""
        spreads = []
        for spec in specs:
            triplet = self._triplet(spec)
            start = self._timed.get(triplet, 0) if rounds == 1 else 0
            if start + rounds > len(self.timings[triplet]):
                raise SystemExit(f"the race asks for {start + rounds} timing rounds of {triplet}; the run took {len(self.timings[triplet])}")
            self._timed[triplet] = start + rounds
            spreads.append(Spread(self.timings[triplet][start:start + rounds]))
        return spreads


def extra_runs(seeds: dict[tuple, int]) -> int:
    """Proxy runs beyond each triplet's first draw (seed 0, the grid's own run)."""
    return sum(count - 1 for count in seeds.values())


def replay(result: dict, say=print) -> dict:
    settings, target = result["settings"], result["target_ms"]
    recorded = Recorded(result)
    trials = [Trial(Coefficients(*t["coefficients"]), t["accuracy"], t["latency_ms"], t["reward"], t["stage"]) for t in result["trials"]]

    most = seeds_at_most(settings["noise_repeats"], settings["max_repeats"])
    figures = {}
    for by, key in (("reward", "lacs"), ("accuracy", "accuracy_only")):
        decision = decide(trials, by, recorded.base, recorded.spread, settings["noise_repeats"], reward_factor(target, settings["w"]),
                          recorded.side_by_side if recorded.timings else None, most, say, settings["max_finalists"])
        ran = result[key]["decision"]
        figures[by] = {"winner": list(decision.winner.coefficients.astuple()), "seeds": decision.seeds, "describe": decision.describe(),
                       "run_winner": result[key]["coefficients"], "run_seeds": ran["seeds"]}
    figures["proxy_runs"] = extra_runs(recorded.asked)
    figures["run_proxy_runs"] = extra_runs({t: len(s) for t, s in recorded.accuracy.items()})
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lacs_json", type=Path, help="a LACS run's lacs.json (e.g. runs/demo/lacs/lacs.json)")
    args = parser.parse_args(argv)
    result = read_json(args.lacs_json, "lacs.json")
    missing = [key for key in ("settings", "target_ms", "trials", "lacs", "accuracy_only") if not isinstance(result, dict) or key not in result]
    if missing:
        raise UserError(f"{args.lacs_json} is not a LACS run's lacs.json (no {', '.join(missing)})")
    figures = replay(result)
    for by in ("reward", "accuracy"):
        f = figures[by]
        print(f"{by}: this race picks {tuple(f['winner'])} on {f['seeds']} seeds (the run: {tuple(f['run_winner'])} on {f['run_seeds']}); "
              f"it beats the runner-up {f['describe']}")
    print(f"proxy runs beyond the grid's first draws: {figures['proxy_runs']} (the run: {figures['run_proxy_runs']})")
    return 0


if __name__ == "__main__":
    run_script(main)
