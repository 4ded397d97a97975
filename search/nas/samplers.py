"""Our own controllers as Optuna samplers: each proposes a whole point per trial from the study's history.

Their state is derived from the trials in the storage (the population, the policy's updates), so a
resumed search continues where it stopped and workers on other machines learn from each other's trials.
Randomness is seeded per trial number.
"""

from __future__ import annotations

import random
from typing import Any

from optuna.distributions import CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

from effx_serve.core.errors import UserError
from search.nas.space import SearchSpace, point_hash

REWARD_KEY = "reward"


def scored_trials(study) -> list:
    """Completed trials with a reward, in the order they completed (the order a controller learns them in)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if REWARD_KEY in t.user_attrs]
    return sorted(done, key=lambda t: (t.datetime_complete, t.number))


def seen_hashes(study) -> set[str]:
    return {t.user_attrs["hash"] for t in study.get_trials(deepcopy=False) if "hash" in t.user_attrs}


class PointSampler(BaseSampler):
    """A controller that proposes a whole point per trial; Optuna stores its decisions as the trial's params."""

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        self.space, self.seed = space, seed

    def infer_relative_search_space(self, study, trial) -> dict[str, CategoricalDistribution]:
        return {name: CategoricalDistribution(list(options)) for name, options in self.space.decisions()}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        if not search_space or "fixed_params" in trial.system_attrs:  # an enqueued point (a baseline): nothing to propose
            return {}
        return self.space.to_params(self.propose(study, trial))

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        # Only a decision outside the space reaches here, which `suggest_point` never asks for.
        return random.Random(f"{self.seed}-{trial.number}-{param_name}").choice(param_distribution.choices)

    def rng(self, trial) -> random.Random:
        return random.Random(f"{self.seed}-{trial.number}")

    def propose(self, study, trial) -> dict:
        raise NotImplementedError

    def fresh(self, make, seen: set[str], tries: int = 50) -> dict:
        """`make()` until it gives a point not tried yet (or `tries` run out: the space is nearly exhausted)."""
        point = make()
        for _ in range(tries):
            if point_hash(point) not in seen:
                break
            point = make()
        return point


class RegularizedEvolution(PointSampler):
    """Aging evolution: the population is the `population` most recently completed trials; random points until it fills."""

    def __init__(self, space: SearchSpace, seed: int = 0, population: int = 16, sample_size: int = 4) -> None:
        super().__init__(space, seed)
        if not 2 <= sample_size <= population:
            raise UserError(f"evolution needs 2 <= sample size <= population, got {sample_size} and {population}")
        self.population, self.sample_size = population, sample_size

    def propose(self, study, trial) -> dict:
        rng = self.rng(trial)
        done, seen = scored_trials(study), seen_hashes(study)
        if len(done) < self.population:
            return self.fresh(lambda: self.space.sample(rng), seen)
        contenders = rng.sample(done[-self.population:], self.sample_size)
        parent = max(contenders, key=lambda t: t.user_attrs[REWARD_KEY])
        parent_point = self.space.from_params(parent.params)
        return self.fresh(lambda: self.space.mutate(parent_point, rng), seen)
