"""The search's shared storage on a real PostgreSQL server: what many machines run (docs/search.md).

Each worker is its own `effx-serve search --storage postgresql+psycopg://...` process, as on separate
machines: the first starts the search, the others join it with `--resume`. The stub evaluator logs what
it trains, so "no trial evaluated twice" is checked against the evaluator, not only against Optuna.
The server is started by the `postgres_server` fixture (conftest.py), or the tests skip saying what to install.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from effx_serve.cli import main
from effx_serve.core.errors import UserError
from search.nas import job as nas_job
from search.nas import storage
from search.nas import worker as nas
from search.nas.worker import WorkerSettings
from tests.helpers import ROOT
from tests.search.nas.postgres_server import free_port

STUB = "tests.search.nas.nas_stubs:StubEvaluator"


def _cli(out: Path, url: str, budget: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "effx_serve.cli", "search", "--out", str(out), "--storage", url, "--budget-trials", str(budget),
            "--evaluator", STUB, "--resolution", "32", "--width", "0.25", "--population", "4", *extra]


def _evaluations(log: Path) -> list[tuple[int, int]]:
    """(pid, trial number) of every evaluation the stub started, in order; its spec names are trial-<number>-<hash>."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [(int(pid), int(name.split("-")[1])) for pid, name in (line.split() for line in lines)]


def _wait_for(condition, timeout: float, what: str, processes=()) -> None:
    deadline = time.time() + timeout
    while not condition():
        for process in processes:
            assert process.poll() is None, f"{what}: a worker exited early ({process.returncode}): {process.stderr.read()}"
        assert time.time() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


def _kill(*processes) -> None:
    for process in processes:
        if process and process.poll() is None:
            process.kill()


def _records(url: str, tmp_path: Path) -> tuple[list, dict]:
    """The search's trials in the database, as the outputs record them (state: complete, interrupted, skipped, ...), and by number."""
    study, config = nas.load_study(WorkerSettings(storage=url, journal=tmp_path / "unused.journal", work_dir=tmp_path))
    return nas_job.records(study, config), {t.number: t for t in study.get_trials(deepcopy=False)}


def _finish(process: subprocess.Popen, timeout: float = 120) -> dict:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return json.loads(out)


def _check_no_trial_evaluated_twice(log: Path, records: list, trials: dict) -> None:
    numbers = [number for _, number in _evaluations(log)]
    assert len(numbers) == len(set(numbers))  # the evaluator never saw a trial twice
    trained = {r.number for r in records if r.state == "complete" and r.duplicate_of is None}
    assert trained <= set(numbers)  # every completed, non-reused trial was trained by the evaluator, once
    # An architecture is trained again only by a trial started before the first one finished (the documented race).
    by_arch = defaultdict(list)
    for number in trained:
        by_arch[trials[number].user_attrs["arch_hash"]].append(trials[number])
    for same in by_arch.values():
        same.sort(key=lambda t: t.datetime_start)
        for earlier, later in zip(same, same[1:], strict=False):
            assert later.datetime_start < earlier.datetime_complete, (earlier.number, later.number)


def test_two_workers_share_one_study_on_postgresql(tmp_path, postgres_url):
    """Two processes, as on two machines: the trial budget is exact and no trial is evaluated twice."""
    log = tmp_path / "evaluations.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EFFX_STUB_LOG": str(log), "EFFX_STUB_SLEEP": "0.5"}
    first = subprocess.Popen(_cli(tmp_path / "a", postgres_url, 16, "--json"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    second = None
    try:
        _wait_for(lambda: _evaluations(log), 60, "the first worker's first trial", [first])  # the search exists: join it
        second = subprocess.Popen(_cli(tmp_path / "b", postgres_url, 16, "--resume", "--json"), env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        results = [_finish(first), _finish(second)]
    finally:
        _kill(first, second)
    records, trials = _records(postgres_url, tmp_path)
    states = [r.state for r in records]
    assert states.count("complete") == 16 and set(states) <= {"complete", "skipped"}  # exact; a trial past the budget is skipped
    for result in results:  # each worker returns once every counted trial is finished, so both outputs hold all 16
        assert result["states"]["complete"] == 16
    assert len({r.worker for r in records if r.state == "complete"}) == 2  # both took trials
    assert {pid for pid, _ in _evaluations(log)} == {first.pid, second.pid}
    _check_no_trial_evaluated_twice(log, records, trials)


def test_kill_9_of_a_worker_is_recovered_by_the_other(tmp_path, postgres_url):
    """A worker killed mid-trial loses that trial only: the other marks it interrupted (no heartbeat) and finishes the budget."""
    log = tmp_path / "evaluations.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EFFX_STUB_LOG": str(log)}
    # The victim's trials take 3 s, so the kill lands in one even on a loaded machine; the survivor's take 0.3 s.
    victim = subprocess.Popen(_cli(tmp_path / "a", postgres_url, 12, "--stale-after", "2"), env={**env, "EFFX_STUB_SLEEP": "3"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    survivor = None
    try:
        _wait_for(lambda: _evaluations(log), 60, "the first worker's first trial", [victim])
        survivor = subprocess.Popen(_cli(tmp_path / "b", postgres_url, 12, "--resume", "--stale-after", "2", "--json"),
                                    env={**env, "EFFX_STUB_SLEEP": "0.3"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: any(pid == survivor.pid for pid, _ in _evaluations(log)), 60, "the second worker's first trial", [victim, survivor])
        started = sum(pid == victim.pid for pid, _ in _evaluations(log))
        _wait_for(lambda: sum(pid == victim.pid for pid, _ in _evaluations(log)) > started, 30, "the victim's next trial", [victim, survivor])
        in_flight = [number for pid, number in _evaluations(log) if pid == victim.pid][-1]
        _wait_for(lambda: storage.HEARTBEAT_KEY in _records(postgres_url, tmp_path)[1][in_flight].system_attrs, 30,
                  "the victim's first heartbeat", [victim, survivor])
        victim.send_signal(signal.SIGKILL)  # mid-evaluation, beating: its trial has seconds to go
        victim.wait()
        result = _finish(survivor)
    finally:
        _kill(victim, survivor)
    records, trials = _records(postgres_url, tmp_path)
    states = [r.state for r in records]
    assert states.count("complete") == 12 and set(states) <= {"complete", "interrupted", "skipped"}  # the budget is still exact
    lost = [r for r in records if r.state == "interrupted"]
    assert [r.number for r in lost] == [in_flight] and "no heartbeat" in lost[0].note  # exactly the trial in flight
    assert storage.HEARTBEAT_KEY in trials[in_flight].system_attrs  # it was beating until the kill
    assert result["states"]["complete"] == 12
    assert f"{socket.gethostname()}:{survivor.pid}" in {r.worker for r in records if r.state == "complete"}
    _check_no_trial_evaluated_twice(log, records, trials)


def test_a_bad_postgresql_url_names_the_cause_without_the_password(tmp_path, capsys, monkeypatch, postgres_server):
    monkeypatch.syspath_prepend(str(ROOT))
    cases = [(postgres_server.url("effx_test_1", password="secret", port=free_port()), "Connection refused"),
             (postgres_server.url("no_such_db", password="secret"), 'database "no_such_db" does not exist')]
    for url, cause in cases:
        assert main(["search", "--out", str(tmp_path / "s"), "--storage", url, "--budget-trials", "3", "--evaluator", STUB]) == 2
        err = capsys.readouterr().err
        assert f"storage {url.replace(':secret@', ':***@')} cannot be reached" in err and cause in err, err
        assert "secret" not in err and "Traceback" not in err and err.count("\n") == 1, err


def test_a_postgresql_url_without_its_driver_names_the_extra(tmp_path, monkeypatch):
    for module in ("psycopg", "psycopg2"):  # SQLAlchemy 2.1 reads postgresql:// with psycopg 3, 2.0 with psycopg2
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(UserError) as error:
        storage.open_storage("postgresql://me:secret@db.example:5432/effx", tmp_path / "unused.journal")
    message = str(error.value)
    assert message.startswith("storage postgresql://me:***@db.example:5432/effx needs the database driver psycopg")
    assert "pip install 'effx-serve[postgres]'" in message and "postgresql+psycopg://" in message and "secret" not in message
