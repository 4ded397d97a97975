"""The device's work on the event loop itself (`serve --execution inline`): no lanes, no queue, no thread hand-offs.

With lanes (the default, `scheduler.DeviceScheduler`) every image is decoded and run on lane threads, in deadline order
across requests; a request crosses threads twice, and the event loop and the lanes take turns at the interpreter lock.
On a CPU that costs more than the work itself: measured, one process with lanes served about half of what the simplest
server of the same HTTP stack serves (docs/serving.md). Inline, a request is decoded and run in the event loop's own
turn, in the order requests are read, and `--workers` (one per core) spreads the connections over processes.

What inline gives up is the queue. A request waits in its socket while the loop serves others: no deadline reorders
that work and no expectation sees it (the work ahead is always 0 here; the end-to-end correction learns the backlog).
Latency bounds are still judged on arrival, and a request that can no longer make its hard deadline is refused
(`Late`) rather than run late, as with lanes. Embedded backend on the CPU only: it needs a batch run in the calling thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from effx_serve.serve.catalog import Member
from effx_serve.serve.scheduler import BatchMs, ItemResult, Late, RunNow, batches_ms


class Ran:
    """A batch already run (or refused as late), as `DeviceScheduler.call_then_run` hands back a queued one."""

    def __init__(self, results: list[ItemResult] | None = None, late: Late | None = None):
        self._results, self._late = results, late

    async def result(self) -> list[ItemResult]:
        if self._late is not None:
            raise self._late
        return self._results

    def cancel(self) -> None:
        """Nothing to take back: it has run."""


class InlineScheduler:
    """`DeviceScheduler`'s calls, each run at once in the calling thread (the event loop's)."""

    lanes = 1  # the event loop
    runs_in_lanes = True  # `call_then_run` runs the batch right after the call, in the same thread

    def __init__(self, run_now: RunNow, batch_ms: BatchMs, after_ms: Callable[[], float] = lambda: 0.0,
                 on_batch: Callable[[Member, int, float], None] | None = None):
        self._run_now, self._batch_ms, self._after_ms, self._on_batch = run_now, batch_ms, after_ms, on_batch

    def start(self) -> None:
        """Nothing to start: the work runs where it is asked for."""

    async def close(self) -> None:
        """Nothing runs in between calls."""

    async def run(self, member: Member, inputs: Sequence[np.ndarray], deadline: float = math.inf, hard: bool = False) -> list[ItemResult]:
        if hard:
            self._refuse_late(member, deadline, 0.0)
        return self._batches(member, list(inputs))

    async def call(self, function: Callable[[], object], deadline: float = math.inf, expected_ms: float = 0.0, large: bool = False):
        return function()

    async def call_then_run(self, function: Callable[[], tuple[object, np.ndarray]], member: Member, deadline: float = math.inf,
                            hard: bool = False, expected_ms: float = 0.0, large: bool = False, skip_late: bool = False) -> tuple[object, Ran]:
        if skip_late:
            self._refuse_late(member, deadline, expected_ms)
        value, array = function()
        try:
            if hard:
                self._refuse_late(member, deadline, 0.0)
        except Late as late:
            return value, Ran(late=late)
        return value, Ran(self._batches(member, [array]))

    def _refuse_late(self, member: Member, deadline: float, before_ms: float) -> None:
        """Late when `before_ms` of work, a batch of one and what follows it cannot end by `deadline` from now."""
        now = time.monotonic()
        if now + (before_ms + self._batch_ms(member, 1) + self._after_ms()) / 1000.0 > deadline:
            raise Late(member.name, deadline, now)

    def _batches(self, member: Member, inputs: list[np.ndarray]) -> list[ItemResult]:
        results = []
        for start in range(0, len(inputs), member.max_batch):
            batch = np.stack(inputs[start:start + member.max_batch])
            began = time.perf_counter()
            outputs = self._run_now(member, batch)
            inference_ms = (time.perf_counter() - began) * 1000.0
            if self._on_batch is not None:
                self._on_batch(member, len(batch), inference_ms)
            results += [ItemResult(output, 0.0, inference_ms, len(batch)) for output in outputs]
        return results

    # --- what the expectations ask: nothing is ever queued here ----------------------------------------------------

    def work_ahead_ms(self, deadline: float, now: float | None = None) -> float:
        return 0.0

    def wait_ms(self, deadline: float, now: float | None = None) -> float:
        return 0.0

    def drain_s(self) -> float:
        return 1.0

    def queued(self, member: str) -> int:
        return 0

    @property
    def busy(self) -> int:
        return 0

    def cost_ms(self, member: Member, images: int) -> float:
        return batches_ms(self._batch_ms, member, images)
