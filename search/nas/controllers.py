"""The controllers a search can use, by name; all are Optuna samplers over one study with one trial record.

- `rl`: the paper's (MnasNet's) controller: a recurrent policy that makes the per-stage decisions one
  after the other, trained by policy gradient on the reward (`search.nas.rl`).
- `evolution`: regularized (aging) evolution, Real et al. 2019: tournament selection in the most recent
  `population` trials, one mutation per child (`search.nas.samplers`).
- `nsga2`, `tpe`: Optuna's multi-objective NSGA-II and TPE on (accuracy, latency) directly.

Nothing is imported until a controller is asked for, so the CLI (and a serving install) stays light.
"""

from __future__ import annotations

from effx_serve.core.errors import UserError
from search.nas.space import SearchSpace

CONTROLLERS = ("rl", "evolution", "nsga2", "tpe")


def make_sampler(controller: str, space: SearchSpace, seed: int = 0, population: int = 16, sample_size: int = 4,
                 rl_update: str = "reinforce"):
    from optuna.samplers import NSGAIISampler, TPESampler

    from search.nas.samplers import RegularizedEvolution

    if controller == "rl":
        from search.nas.rl import PolicyGradientSampler

        return PolicyGradientSampler(space, seed, update=rl_update)
    if controller == "evolution":
        return RegularizedEvolution(space, seed, population, sample_size)
    if controller == "nsga2":
        return NSGAIISampler(population_size=population, seed=seed)
    if controller == "tpe":
        # constant_liar: workers running in parallel see each other's in-flight trials, so they spread out.
        return TPESampler(seed=seed, multivariate=True, constant_liar=True)
    raise UserError(f"unknown controller '{controller}' (known: {', '.join(CONTROLLERS)})")
