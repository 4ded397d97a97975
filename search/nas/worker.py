"""One search worker: ask the controller for a point, evaluate it, record the trial; until the budget is spent.

Any number of workers (processes here, or machines) run this loop on one study. The study holds the
search's settings (`SearchConfig`), so every worker evaluates the same way. Trial numbers come from the
storage, so no trial is run twice; a point that was already evaluated is not trained again (its result
is reused and the trial says from where). The budget in trials is exact across workers: a trial counts
when it is finished or still alive, and a worker whose new trial falls past the budget records it as
skipped. An evaluator error fails that trial only; the search goes on.
"""

from __future__ import annotations

import math
import os
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from effx_serve.core.errors import UserError, place_error
from search.evaluators import load_evaluator
from search.nas import storage as stores
from search.nas.controllers import make_sampler
from search.nas.samplers import REWARD_KEY
from search.nas.space import B0_POINT, X_B0_POINT, SearchSpace, decode, point_hash
from search.reward import MNASNET_W, Reward
from training.arch.plan import expand

STUDY_NAME = "effx-search"
CONFIG_KEY = "effx:config"
SKIPPED_KEY = "skipped"
ERROR_KEY = "error"
BASELINES = {"efficientnet-b0": B0_POINT, "efficientnet-x-b0": X_B0_POINT}


@dataclass(frozen=True)
class SearchConfig:
    """What a search is: the same for every worker and every resume (kept in the study)."""

    controller: str = "evolution"
    space: dict = field(default_factory=lambda: SearchSpace().to_dict())
    seed: int = 0
    population: int = 16  # evolution's aging population and NSGA-II's generation size
    sample_size: int = 4  # evolution's tournament
    rl_update: str = "reinforce"  # or "ppo"
    target_ms: float | None = None  # T; None: the latency of EfficientNet-B0 at the search's scaling, measured at the start
    alpha: float = MNASNET_W
    beta: float = MNASNET_W
    # the scaling every candidate is built and trained at (the paper searches at B0's; a CPU needs smaller)
    width: float = 1.0
    depth: float = 1.0
    resolution: int = 224
    num_classes: int = 1000
    # proxy training
    data: str | None = None
    epochs: int = 5
    subset_stride: int = 1
    batch_size: int = 64
    # latency
    latency: str = "measured"  # or "predicted"
    runtime: str = ""  # "": this machine's default (effx_serve.perf.measure.default_runtime)
    latency_batch: int = 1
    hardware_id: str = ""
    evaluator: str = "search.evaluators:ProxyEvaluator"
    baselines: bool = True  # evaluate EfficientNet-B0 and X-B0 first, as reference points

    def search_space(self) -> SearchSpace:
        return SearchSpace.from_dict(self.space)

    def reward(self) -> Reward:
        return Reward(self.target_ms, self.alpha, self.beta)

    def spec(self, point: dict, space: SearchSpace | None = None, name: str | None = None):
        spec = decode(point, space or SearchSpace(), width=self.width, depth=self.depth, resolution=self.resolution,
                      num_classes=self.num_classes)
        return spec.with_(name=name) if name else spec

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SearchConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class WorkerSettings:
    """How one worker runs (not part of the search: may differ between workers and resumes)."""

    storage: str | None
    journal: Path  # the default storage when `storage` is None
    work_dir: Path  # proxy-training checkpoints
    budget_trials: int | None = None
    deadline: float | None = None  # epoch seconds; no new trial is started that would not finish by then
    stale_after_s: float = 60.0  # a RUNNING trial without a heartbeat this long was lost with its worker
    max_failures_in_row: int = 5  # evaluator failures in a row that stop the worker (it is broken, not the candidate)
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    seed_offset: int = 0  # added to the Optuna samplers' seed: workers must not draw alike

    @property
    def heartbeat_s(self) -> float:
        return min(10.0, self.stale_after_s / 4)  # several beats within the grace, so a live trial is never taken for lost


def sampler_for(config: SearchConfig, seed_offset: int = 0):
    """The controller of `config`; our own controllers seed per trial number, so only Optuna's take the worker's offset."""
    offset = seed_offset if config.controller in ("nsga2", "tpe") else 0
    try:
        return make_sampler(config.controller, config.search_space(), config.seed + offset, config.population, config.sample_size,
                            config.rl_update)
    except ValueError as error:  # Optuna's own checks (e.g. an NSGA-II population below 2)
        raise UserError(f"controller {config.controller}: {error}") from None


def load_study(settings: WorkerSettings, repair: bool = False):
    """The study in the storage with this worker's sampler, and the settings it holds."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = stores.open_storage(settings.storage, settings.journal, repair)
    try:
        stored = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    except KeyError:
        raise UserError(f"no search in {settings.storage or settings.journal}: start one without --resume") from None
    config = SearchConfig.from_dict(stored.user_attrs[CONFIG_KEY])
    return optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=sampler_for(config, settings.seed_offset)), config


def create_study(settings: WorkerSettings, config: SearchConfig):
    """A new study holding `config`, with the reference points queued first when they are points of the space."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler_for(config)  # refuse bad controller settings before they are stored in a study
    storage = stores.open_storage(settings.storage, settings.journal, repair=True)
    try:
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, directions=["maximize", "minimize"])
    except optuna.exceptions.DuplicatedStudyError:
        raise UserError(f"{settings.storage or settings.journal} already holds a search: pass --resume to continue or join it") from None
    study.set_user_attr(CONFIG_KEY, config.to_dict())
    space = config.search_space()
    if config.baselines:
        for name, point in BASELINES.items():
            if space.contains(point):
                study.enqueue_trial(space.to_params(point), user_attrs={"role": f"baseline:{name}"})
    return study


def counted(trials) -> list:
    """The trials that use the budget: finished ones and live ones, not those interrupted or skipped."""
    from optuna.trial import TrialState

    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.RUNNING)
            or (t.state == TrialState.FAIL and ERROR_KEY in t.user_attrs)]


def suggest_point(trial, space: SearchSpace) -> dict:
    return space.from_params({name: trial.suggest_categorical(name, list(options)) for name, options in space.decisions()})


def run_worker(settings: WorkerSettings, on_trial: Callable[[object], None] | None = None) -> int:
    """Run trials until the budget or the deadline; returns how many this worker finished."""
    from optuna.trial import TrialState
    study, config = load_study(settings)
    space, reward = config.search_space(), config.reward()
    evaluator = load_evaluator(config.evaluator)(config, settings.work_dir)
    durations: list[float] = []
    failures_in_row = finished = 0
    while True:
        stores.fail_stale_trials(study, settings.stale_after_s)
        if settings.deadline and time.time() + (statistics.median(durations) if durations else 0) > settings.deadline:
            return finished
        if settings.budget_trials is not None:
            used = counted(study.get_trials(deepcopy=False))
            if len(used) >= settings.budget_trials:
                if all(t.state.is_finished() for t in used):
                    return finished
                time.sleep(min(1.0, settings.heartbeat_s))  # the last trials run elsewhere: done, or found lost and re-run
                continue
        trial = study.ask()
        earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
        if settings.budget_trials is not None and len(counted(earlier)) >= settings.budget_trials:
            trial.set_user_attr(SKIPPED_KEY, "over budget: another worker started the last trial first")
            study.tell(trial, state=TrialState.FAIL)
            return finished
        started = time.perf_counter()
        outcome = _evaluate(study, trial, space, config, reward, evaluator, settings)
        durations.append(time.perf_counter() - started)
        finished += 1
        failures_in_row = failures_in_row + 1 if outcome.state == TrialState.FAIL else 0
        if on_trial:
            on_trial(outcome)
        if failures_in_row >= settings.max_failures_in_row:
            raise UserError(f"the evaluator failed on {failures_in_row} candidates in a row; the last: {outcome.user_attrs.get(ERROR_KEY)}")


def _evaluate(study, trial, space: SearchSpace, config: SearchConfig, reward: Reward, evaluator, settings: WorkerSettings):
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    point = suggest_point(trial, space)
    digest = point_hash(point)
    spec = config.spec(point, name=f"trial-{trial.number}-{digest[:8]}")
    architecture = spec.arch_hash()
    trial.set_user_attr("hash", digest)
    trial.set_user_attr("worker", settings.worker)
    trial.set_user_attr("arch_hash", architecture)
    # Points that build the same network (a repeat rounded away at a small depth) are one architecture: reuse, do not retrain.
    earlier = next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.user_attrs.get("arch_hash") == architecture and t.number != trial.number), None)
    if earlier is not None:
        for key in ("params", "macs", "latency_source", REWARD_KEY):
            trial.set_user_attr(key, earlier.user_attrs[key])
        trial.set_user_attr("duplicate_of", earlier.user_attrs.get("duplicate_of", earlier.number))
        study.tell(trial, earlier.values)
        return study._storage.get_trial(trial._trial_id)
    plan = expand(spec)
    trial.set_user_attr("params", plan.params)
    trial.set_user_attr("macs", plan.macs)
    try:
        with stores.Heartbeat(study._storage, trial._trial_id, settings.heartbeat_s):
            latency_ms = float(evaluator.latency(spec))
            accuracy = float(evaluator.accuracy(spec))
            if not (0 <= accuracy <= 1 and math.isfinite(latency_ms) and latency_ms > 0):
                raise ValueError(f"the evaluator returned accuracy {accuracy} and latency {latency_ms} ms (need [0, 1] and > 0)")
            value = reward(accuracy, latency_ms)
    except (KeyboardInterrupt, SystemExit):
        trial.set_user_attr(stores.INTERRUPTED_KEY, "stopped by the user")
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as error:  # this candidate failed (the evaluator's bug or the candidate's): record it, go on
        if place_error(error) is not None:  # a full or read-only disk fails every candidate: stop, and run it again on --resume
            trial.set_user_attr(stores.INTERRUPTED_KEY, f"stopped: {error}"[:500])
            study.tell(trial, state=TrialState.FAIL)
            raise UserError(f"trial {trial.number} stopped: {error}; mend that, then run the same command with --resume "
                            "(this trial runs again)") from None
        trial.set_user_attr(ERROR_KEY, f"{type(error).__name__}: {error}"[:500])
        study.tell(trial, state=TrialState.FAIL)
        return study._storage.get_trial(trial._trial_id)
    try:
        trial.set_user_attr("latency_source", evaluator.latency_source)
        trial.set_user_attr(REWARD_KEY, value)
        study.tell(trial, [accuracy, latency_ms])
    except (UpdateFinishedTrialError, ValueError):  # another worker took it for lost (a stall longer than --stale-after)
        pass
    return study._storage.get_trial(trial._trial_id)
