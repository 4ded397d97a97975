"""Where a search keeps its trials: Optuna storage that survives kill -9 and that many workers share.

The default is a journal file (an append-only log of JSON lines, written under a lock and fsync'd) in the
output folder: it needs no server and serves every worker process on one machine. Many machines share
an RDB URL instead (`postgresql+psycopg://...` with the `postgres` extra, `mysql+pymysql://...`);
`sqlite:///file.db` works on one machine.

A trial that is RUNNING carries a heartbeat (a timestamp the evaluating worker refreshes); any worker
marks a RUNNING trial whose heartbeat stopped as failed ("interrupted"), so a killed worker loses at most
the trial it was evaluating and never blocks the budget.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

from effx_serve.core.errors import UserError

HEARTBEAT_KEY = "effx:heartbeat"
INTERRUPTED_KEY = "interrupted"


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]+@", r"//\1:***@", url)


def open_storage(url: str | None, default_journal: Path, repair: bool = False):
    """The storage at `url` (an RDB URL, or a journal file path), or the journal file `default_journal`.

    `repair` drops a journal's half-written last line; only a process that knows no other writer is
    running (the one that starts the workers) may do it.
    """
    import optuna

    target = url or str(default_journal)
    if "://" not in target:
        return _journal(Path(target), repair)
    try:
        return optuna.storages.RDBStorage(target, engine_kwargs={"pool_pre_ping": True})
    except ImportError as error:
        raise UserError(_missing_driver(target, error)) from None
    except Exception as error:  # SQLAlchemy's many connection errors: name the cause, never a traceback
        cause = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"storage {_redact(target)} cannot be reached: {cause}") from None


def _missing_driver(url: str, error: ImportError) -> str:
    """Which driver a URL needs and how to install it (Optuna wraps the driver's own ImportError, which names it)."""
    cause = error
    while cause is not None and not getattr(cause, "name", None):
        cause = cause.__cause__ or cause.__context__
    driver = f"the database driver {cause.name}" if cause is not None else "a database driver"
    hint = ("pip install 'effx-serve[postgres]' (psycopg 3) and give postgresql+psycopg://user:password@host:port/db"
            if url.startswith("postgresql") else "install it")
    return f"storage {_redact(url)} needs {driver}, which is not installed: {hint}"


def _journal(path: Path, repair: bool):
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    if path.is_dir():
        raise UserError(f"storage {path} is a folder; give a journal file path or a database URL")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if repair:
            repair_journal(path)
        # A lock left by a killed writer is broken after 30 s instead of blocking every worker for ever.
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path), grace_period=30)))
    except OSError as error:
        raise UserError(f"storage {path} cannot be opened: {error.strerror or error}") from None


def repair_journal(path: Path) -> bool:
    """Drop a half-written last line (a writer killed mid-append); Optuna would refuse every later line."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return False
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())
    return True


class Heartbeat:
    """Refreshes a RUNNING trial's heartbeat every `interval_s` from a thread, while the trial is evaluated."""

    def __init__(self, storage, trial_id: int, interval_s: float) -> None:
        self.storage, self.trial_id, self.interval_s = storage, trial_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT_KEY, time.time())
            except Exception:  # a storage hiccup must not kill the evaluation; the next beat retries
                pass
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def last_alive(trial) -> float:
    """When a RUNNING trial last showed life (epoch seconds): its heartbeat, else its start."""
    started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    return max(float(trial.system_attrs.get(HEARTBEAT_KEY, 0.0)), started)


def is_stale(trial, stale_after_s: float, now: float | None = None) -> bool:
    return (now or time.time()) - last_alive(trial) > stale_after_s


def fail_stale_trials(study, stale_after_s: float) -> list[int]:
    """Mark RUNNING trials without a heartbeat for `stale_after_s` as failed (interrupted); their numbers."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    failed = []
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(trial, stale_after_s, now):
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_KEY,
                                               f"no heartbeat for {now - last_alive(trial):.0f} s (its worker was killed or lost)")
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            failed.append(trial.number)
        except UpdateFinishedTrialError:  # finished meanwhile, or another worker got there first
            pass
    return failed
