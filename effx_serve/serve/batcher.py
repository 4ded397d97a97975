"""Dynamic micro-batching for one member: a bounded queue, workers that form batches, futures per request.

A worker takes what is queued (up to `max_batch`); when that is less than a full batch it waits up to
`max_wait_ms` for more, then runs the batch. At low load a request waits at most `max_wait_ms`; under
load batches fill while the previous one runs, so throughput rises without any extra wait. Each
request's items are enqueued all or none: when the queue cannot take them, `QueueFull` says when to
retry, and nothing of the request is left behind. Each answer goes to its own future, so results can
never be crossed between requests; a request whose client went away is dropped before its batch runs.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from effx_serve.serve.errors import Overloaded, Unavailable

RunBatch = Callable[[np.ndarray], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class ItemResult:
    output: np.ndarray  # this item's row of the batch output
    queue_ms: float  # enqueued -> its batch started
    inference_ms: float  # the batch's run time
    batch_size: int


class QueueFull(Overloaded):
    def __init__(self, member: str, capacity: int, retry_after_s: float):
        super().__init__(f"member {member} has {capacity} images queued, its limit; retry in {retry_after_s:.1f} s", retry_after_s)
        self.member = member


class BatcherClosed(Unavailable):
    """The member's batcher is shutting down."""


@dataclass
class _Item:
    input: np.ndarray
    future: asyncio.Future
    enqueued: float


class MicroBatcher:
    def __init__(self, name: str, run: RunBatch, max_batch: int, max_wait_ms: float, max_queue: int, workers: int = 1,
                 on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1 or max_queue < 1 or workers < 1 or max_wait_ms < 0:
            raise ValueError("max_batch, max_queue and workers must be >= 1 and max_wait_ms >= 0")
        self.name, self.max_batch, self.max_queue, self.workers = name, max_batch, max_queue, workers
        self._run, self._max_wait_s, self._on_batch = run, max_wait_ms / 1000.0, on_batch
        self._items: deque[_Item] = deque()
        self._arrived = asyncio.Event()
        self._running: list[int] = []  # sizes of the batches running now
        self._tasks: list[asyncio.Task] = []
        self._closed = False

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"batcher-{self.name}-{i}") for i in range(self.workers)]

    @property
    def queued(self) -> int:
        return len(self._items)

    @property
    def running(self) -> int:
        return sum(self._running)

    async def submit(self, inputs: Sequence[np.ndarray], retry_after_s: float = 1.0) -> list[ItemResult]:
        """Run every input (each one item, shape = the model's input without the batch axis); results in order."""
        if self._closed:
            raise BatcherClosed(f"member {self.name} is shutting down")
        if len(self._items) + len(inputs) > self.max_queue:
            raise QueueFull(self.name, self.max_queue, retry_after_s)
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        items = [_Item(np.asarray(x), loop.create_future(), now) for x in inputs]
        self._items.extend(items)
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        except BaseException:
            for item in items:  # the caller is gone or one item failed: the rest need not run
                item.future.cancel()
            raise

    def expected_ms(self, service_ms: Callable[[int], float], count: int = 1) -> float:
        """Profiled time until a request of `count` images submitted now is answered: the full batches
        ahead of its last image, half of what is running (on average it is half done) when every worker
        is busy, the batch its last image runs in, and the wait for company when a worker is idle."""
        total = len(self._items) + count
        full_ahead = (total - 1) // self.max_batch
        last = total - full_ahead * self.max_batch
        busy = len(self._running)
        running = sum(service_ms(size) for size in self._running) / 2.0 if busy >= self.workers else 0.0
        idle_wait = self._max_wait_s * 1000.0 if busy < self.workers and last < self.max_batch else 0.0
        return (full_ahead * service_ms(self.max_batch) + running) / self.workers + service_ms(last) + idle_wait

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._items:
            item = self._items.popleft()
            if not item.future.done():
                item.future.set_exception(BatcherClosed(f"member {self.name} is shutting down"))

    async def _next_batch(self) -> list[_Item]:
        while not self._items:
            self._arrived.clear()
            await self._arrived.wait()
        batch = self._take([])
        deadline = time.perf_counter() + self._max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            if not self._items:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take(batch)
        return batch

    def _take(self, batch: list[_Item]) -> list[_Item]:
        while self._items and len(batch) < self.max_batch:
            item = self._items.popleft()
            if not item.future.done():  # cancelled: its client went away
                batch.append(item)
        return batch

    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            size = len(batch)
            self._running.append(size)
            started = time.perf_counter()
            try:
                outputs = await self._run(np.stack([item.input for item in batch]))
                if len(outputs) != size:
                    raise RuntimeError(f"member {self.name} returned {len(outputs)} outputs for a batch of {size}")
            except asyncio.CancelledError:
                for item in batch:
                    item.future.cancel()
                raise
            except Exception as error:  # noqa: BLE001 - the failure belongs to the requests of this batch
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            finally:
                self._running.remove(size)
            inference_ms = (time.perf_counter() - started) * 1000.0
            for index, item in enumerate(batch):
                if not item.future.done():
                    item.future.set_result(ItemResult(outputs[index], (started - item.enqueued) * 1000.0, inference_ms, size))
            if self._on_batch is not None:
                self._on_batch(size, inference_ms)


def retry_after_s(expected_ms: float) -> int:
    """Whole seconds for Retry-After: the time to drain what is queued, at least one."""
    return max(1, math.ceil(expected_ms / 1000.0))
