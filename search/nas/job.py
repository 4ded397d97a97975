"""`effx-serve search`: start or resume a search, run its workers, show progress, write the outputs.

A new search measures its latency target T (EfficientNet-B0 at the search's scaling, unless given),
stores its settings in the study and queues the reference points. `--resume` continues (or, from another
machine on a shared database, joins) the search in the storage with the settings it was started with;
an option that would change them is refused. `--workers N` runs N worker processes on this machine.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from effx_serve.core.errors import UserError
from effx_serve.core.proc import ending_with_parent
from search.evaluators import load_evaluator
from search.nas import report as nas_report
from search.nas import storage as stores
from search.nas import verdict
from search.nas import worker as nas
from search.nas.worker import SearchConfig, WorkerSettings


def prepare(config: SearchConfig, settings: WorkerSettings, resume: bool, overrides: dict, say: Callable[[str], None]):
    """The study to run: created from `config`, or (resume) the stored one, checked against `overrides`."""
    if resume:
        study, stored = nas.load_study(settings, repair=True)
        changed = [f"{key} = {value!r} (the search has {getattr(stored, key)!r})" for key, value in overrides.items()
                   if getattr(stored, key) != value]
        if changed:
            raise UserError("a resumed search keeps its settings; these differ: " + "; ".join(changed) +
                            " (start a new search with another --out or --storage)")
        done = len(nas.counted(study.get_trials(deepcopy=False)))
        say(f"resuming the {stored.controller} search: {done} trials so far")
        return study, stored
    stores.open_storage(settings.storage, settings.journal)  # an unreachable storage is refused before T is measured
    if config.target_ms is None:
        evaluator = load_evaluator(config.evaluator)(config, settings.work_dir)
        target = float(evaluator.latency(config.spec(nas.BASELINES["efficientnet-b0"], name="efficientnet-b0")))
        config = replace(config, target_ms=target)
        say(f"latency target T = {target:.4g} ms (EfficientNet-B0 at the search's scaling, {evaluator.latency_source})")
    config.reward()  # refuse a bad target or exponent before any trial
    study = nas.create_study(settings, config)
    return study, config


def _interrupt_once(signum, frame) -> None:
    """A worker's first Ctrl-C or SIGTERM interrupts it; later ones (the search's own SIGTERM after the terminal's
    Ctrl-C) would only cut short its marking the trial in flight interrupted."""
    for ignored in (signal.SIGINT, signal.SIGTERM):
        signal.signal(ignored, signal.SIG_IGN)
    raise KeyboardInterrupt


def _worker_main(settings: WorkerSettings) -> None:
    """A spawned worker: a user error is one line on stderr and exit code 2, as in the CLI; stopped as on Ctrl-C."""
    for stopping in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stopping, _interrupt_once)
    with_search = ending_with_parent(os.getppid())  # a search killed outright takes its workers with it
    if with_search is not None:
        with_search()
    try:
        nas.run_worker(settings)
    except UserError as error:
        print(f"effx-serve search worker {settings.worker}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def run(config: SearchConfig, settings: WorkerSettings, out: Path, workers: int = 1, resume: bool = False,
        overrides: dict | None = None, say: Callable[[str], None] = print, progress: bool = True, noise_repeats: int = 3,
        max_repeats: int = 0) -> dict:
    """Run the search to its budget and write its outputs; then, with `noise_repeats` >= 2, retrain the finalists with
    more seeds (up to `max_repeats` for those level within the noise) and judge the best's margins against the seed noise
    (search/nas/verdict.py), into the same outputs."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    study, config = prepare(config, settings, resume, overrides or {}, say)
    bar = Progress(study, settings.budget_trials, enabled=progress)
    failed_workers = []
    try:
        if workers == 1:
            nas.run_worker(settings, on_trial=lambda _: bar.update())
        else:
            failed_workers = _run_processes(settings, workers, bar)
    finally:
        bar.close()
        result = nas_report.write_outputs(out, records(study, config), config)
    if failed_workers:
        raise UserError("; ".join(failed_workers))
    if noise_repeats >= 2 and result["best"] is not None:
        found = records(study, config)
        result = nas_report.write_outputs(out, found, config, verdict.judge(found, config, settings.work_dir, noise_repeats, say, max_repeats))
    return result


def _run_processes(settings: WorkerSettings, workers: int, bar: Progress) -> list[str]:
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and locks
    processes = [context.Process(target=_worker_main, args=(replace(settings, worker=f"{settings.worker}/{i}", seed_offset=i),),
                                 name=f"search-worker-{i}") for i in range(workers)]
    for process in processes:
        process.start()
    try:
        while any(p.is_alive() for p in processes):
            bar.update()
            time.sleep(1.0)
    except KeyboardInterrupt:
        for process in processes:  # Ctrl-C reached them too, a SIGTERM to the search did not: stopped either way
            if process.is_alive():
                process.terminate()
        for process in processes:  # time to mark their trials interrupted
            process.join(timeout=15)
            if process.is_alive():
                process.kill()
        raise
    for process in processes:
        process.join()
    bar.update()
    return [f"worker {p.name} exited with code {p.exitcode}" for p in processes if p.exitcode not in (0, None)]


def records(study, config: SearchConfig) -> list[nas_report.TrialRecord]:
    space = config.search_space()
    return [nas_report.record(t, space) for t in study.get_trials(deepcopy=False)]


class Progress:
    """Finished trials and the best reward so far on stderr: a tqdm bar on a terminal, one line per trial in a log."""

    def __init__(self, study, total: int | None, enabled: bool = True) -> None:
        self.study, self.total, self.enabled = study, total, enabled
        self.bar = None
        self.shown = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}  # resumed: not news
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="search", unit="trial", file=sys.stderr, dynamic_ncols=True)
        self.update()

    def update(self) -> None:
        if not self.enabled:
            return
        trials = self.study.get_trials(deepcopy=False)
        used = nas.counted([t for t in trials if t.state.is_finished()])
        done = [t for t in used if "reward" in t.user_attrs]
        best = max(done, key=lambda t: t.user_attrs["reward"], default=None)
        best_text = (f"best reward {best.user_attrs['reward']:.4f} (trial {best.number}: top-1 {100 * best.values[0]:.1f}%, "
                     f"{best.values[1]:.4g} ms)") if best else "no reward yet"
        if self.bar is not None:
            self.bar.n = len(used)
            self.bar.set_postfix_str(f"{best_text}, {len(used) - len(done)} failed", refresh=False)
            self.bar.refresh()
            return
        for trial in sorted((t for t in used if t.number not in self.shown), key=lambda t: t.number):
            self.shown.add(trial.number)
            outcome = (f"top-1 {100 * trial.values[0]:.1f}%, {trial.values[1]:.4g} ms, reward {trial.user_attrs['reward']:.4f}"
                       if "reward" in trial.user_attrs else f"failed: {trial.user_attrs.get(nas.ERROR_KEY)}")
            print(f"search [{len(used)}/{self.total or '-'}] trial {trial.number}: {outcome}; {best_text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.update()
        if self.bar is not None:
            self.bar.close()
