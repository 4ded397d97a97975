"""One scheduler per device: every member's batches, earliest deadline first, on a fixed number of lanes.

A device is what one set of work competes for: the host CPU's cores (where the embedded backend runs every
member, and where images are decoded), one GPU, or a Triton server. Its scheduler holds the work waiting for
it, per member, ordered by deadline, and runs `lanes` items at once; so it knows, in milliseconds, the work
queued and running for every member, and an expected completion can count all of it.

Each lane is a thread that takes its next item itself when it frees (under a lock shared with the event loop,
which only queues work and settles answers), so a busy loop never leaves a lane idle. It takes the item with
the earliest deadline: a CPU job (an image to decode), or the head
request of a member, batched with that member's next requests as long as the batch does not make the
earliest deadline in it late. CPU jobs marked large (decoding a large image) run on at most lanes - 1 lanes at once,
so light work always finds a lane and memory for decoded pixels stays bounded. A request with a hard deadline (the client's bound) that can no longer make it
is never run silently late: it leaves the queue with `Late` (its caller moves it to a faster member or
answers at once), at the latest moment it could still have started with its headroom (1 + `headroom` times its
expected run must fit before its deadline), or when a lane would take it too late.
Requests without a bound carry a virtual deadline, so they wait behind tighter ones but never starve.
On an in-process backend, the lane that decodes an image queues its batch itself, or runs it at once when earliest
deadline first would run it next anyway (`call_then_run`): between decoding and inference a request never waits for the
event loop, which under load is busy with other requests' HTTP. Under a backlog (decodings waiting longer than they
take) a batch of requests without a latency bound first lets the decodings of its member's next images run, while their
virtual deadlines allow: batches of several images instead of one each, which cost less per image (`_feeds_first`).
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from effx_serve.core.errors import UserError
from effx_serve.core.proc import lower_thread_priority
from effx_serve.serve.backends.base import BackendLate
from effx_serve.serve.catalog import Member
from effx_serve.serve.errors import Overloaded, Unavailable

# Runs a batch; the deadline is the latest start of its earliest hard request (math.inf: none), for backends that can drop
# a request that waited too long on their side (Triton's per-request queue timeout: a batch that leaves Triton's queue
# after it would run late).
log = logging.getLogger(__name__)
RunBatch = Callable[[Member, np.ndarray, float], Awaitable[np.ndarray]]
CANCELLED = object()  # the outcome of a job whose batch was cancelled (the scheduler closing)
RunNow = Callable[[Member, np.ndarray], np.ndarray]  # runs a batch in the calling thread (an in-process backend)
BatchMs = Callable[[Member, int], float]  # expected run time of a batch of n images of a member, corrected
WaitObserver = Callable[[float, float, bool], None]  # a CPU job's (expected, observed) wait for a lane in ms, and whether it was then late


@dataclass(frozen=True)
class ItemResult:
    output: np.ndarray  # this image's row of the batch output
    queue_ms: float  # submitted -> its batch started
    inference_ms: float  # the batch's run time
    batch_size: int


class QueueFull(Overloaded):
    def __init__(self, member: str, capacity: int, retry_after_s: float):
        super().__init__(f"member {member} has {capacity} images queued, its limit; retry in {retry_after_s:.1f} s", retry_after_s)
        self.member = member


class SchedulerClosed(Unavailable):
    """The device's scheduler is shutting down."""


class Late(Exception):
    """A request with a hard deadline that can no longer make it on its member: taken out of the queue unrun."""

    def __init__(self, member: str, deadline: float, now: float):
        super().__init__(f"member {member} can no longer answer within the deadline ({1000 * (deadline - now):.1f} ms left)")
        self.member = member


@dataclass(eq=False)
class Job:
    """Work waiting for the device: one image of a request for one member, or a CPU function (member None)."""

    member: Member | None
    input: np.ndarray | None
    deadline: float  # time.monotonic() seconds; the order of the queue
    hard: bool  # the client's bound: leave the queue (Late) rather than run late (a CPU job: only one with a `then` batch)
    future: asyncio.Future
    seq: int
    expected_ms: float = 0.0  # CPU jobs: their expected run time (member jobs are costed per batch)
    call: Callable[[], object] | None = None  # CPU jobs: what a lane runs
    large: bool = False  # CPU jobs: decoding a large image (at most lanes - 1 run at once)
    then: Job | None = None  # CPU jobs of `call_then_run`: the batch of one that follows, queued or run by the lane itself
    submitted: float = field(default_factory=time.monotonic)
    expected_wait_ms: float | None = None  # CPU jobs, when the scheduler has a wait observer: the wait expected at submission
    waited_ms: float | None = None  # CPU jobs: how long it waited for a lane (set when a lane took it, or found it late)

    @property
    def key(self) -> tuple[float, int]:
        return (self.deadline, self.seq)


class _Queue:
    """The jobs of one member (or the CPU jobs), sorted by deadline."""

    def __init__(self) -> None:
        self.keys: list[tuple[float, int]] = []
        self.jobs: list[Job] = []

    def add(self, job: Job) -> None:
        index = bisect.bisect(self.keys, job.key)
        self.keys.insert(index, job.key)
        self.jobs.insert(index, job)

    def remove(self, job: Job) -> bool:
        index = bisect.bisect_left(self.keys, job.key)
        if index < len(self.jobs) and self.jobs[index] is job:
            del self.keys[index], self.jobs[index]
            return True
        return False

    def ahead(self, deadline: float) -> int:
        """How many jobs are due no later than `deadline`."""
        return bisect.bisect(self.keys, (deadline, math.inf))


class DeviceScheduler:
    def __init__(self, name: str, lanes: int, run_batch: RunBatch, batch_ms: BatchMs, max_queue: int = 256,
                 after_ms: Callable[[], float] = lambda: 0.0, on_batch: Callable[[Member, int, float], None] | None = None,
                 run_now: RunNow | None = None, lane_nice: int = 0, on_wait: WaitObserver | None = None, headroom: float = 0.0):
        if lanes < 1 or max_queue < 1:
            raise ValueError("lanes and max_queue must be at least 1")
        self.name, self.lanes, self.max_queue = name, lanes, max_queue
        self._run_batch, self._run_now, self._batch_ms = run_batch, run_now, batch_ms
        self._lane_nice = lane_nice  # nice levels below the event loop's (`_lane`)
        self.headroom = headroom  # a hard job starts only with 1 + this times its expected run time left before its deadline
        self._after_ms = after_ms  # what follows the batch before the answer is out (the hand-back, serialising): counted against deadlines
        self._on_batch = on_batch
        self._on_wait = on_wait  # told, on the event loop, how long each CPU job waited for a lane against its expected wait
        self._members: dict[str, _Queue] = {}
        self._cpu = _Queue()
        self._running: dict[int, tuple[Member | None, int, float, float]] = {}  # lane -> (member, images, started, expected ms)
        self._large_running = 0
        self._large_limit = max(1, lanes - 1)
        # The queues are shared by the event loop (submitting, cancelling, expiring) and the lane threads (taking work).
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: asyncio.Handle | None = None  # fires when the first hard request can no longer start in time
        self._watch_at = math.inf  # when (time.monotonic()); uvloop's handles do not say
        self._threads: list[threading.Thread] = []
        self._calls: dict[int, concurrent.futures.Future] = {}  # lane -> its batch on an asynchronous backend, running
        self._sequence = itertools.count()
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the lanes: one thread each, taking the next work itself as soon as it is free (a lane that waited for
        the event loop between jobs would sit idle whenever the loop is busy with HTTP)."""
        self._loop = asyncio.get_running_loop()
        self._threads = [threading.Thread(target=self._lane, args=(lane,), name=f"{self.name}-lane-{lane}", daemon=True)
                         for lane in range(self.lanes)]
        for thread in self._threads:
            thread.start()

    async def close(self) -> None:
        with self._arrived:
            self._closed = True
            self._arrived.notify_all()
            left = [(job, queue) for queue in (self._cpu, *self._members.values()) for job in queue.jobs]
            for job, queue in left:
                queue.remove(job)
        if self._watch is not None:
            self._watch.cancel()
        for call in list(self._calls.values()):  # a batch on an asynchronous backend is cancelled, as its requests are
            call.cancel()
        for job, _ in left:
            if not job.future.done():
                job.future.set_exception(SchedulerClosed(f"the {self.name} scheduler is shutting down"))
        await asyncio.to_thread(self._join, 10.0)  # the work running finishes (its answers may still go out)

    def _join(self, timeout_s: float) -> None:
        until = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, until - time.monotonic()))

    # --- what callers do -------------------------------------------------------------------------------------

    async def run(self, member: Member, inputs: Sequence[np.ndarray], deadline: float = math.inf, hard: bool = False) -> list[ItemResult]:
        """Run every input (one image each, the model's input without the batch axis) on `member`; results in order.

        QueueFull when the member's queue cannot take them all (nothing is queued then); Late when `hard` and the
        deadline can no longer be met on this member (the request's images that had not run never will).
        """
        queue = self._members.setdefault(member.name, _Queue())
        if len(queue.jobs) + len(inputs) > self.max_queue:
            raise QueueFull(member.name, self.max_queue, self.drain_s())
        jobs = [self._submit(Job(member, x, deadline, hard, self._future(), next(self._sequence)), queue) for x in inputs]
        if hard:
            self._arm(self._latest_start(jobs[0]))
        return await self._wait(jobs, queue)

    async def call(self, function: Callable[[], object], deadline: float = math.inf, expected_ms: float = 0.0, large: bool = False):
        """Run a CPU function (decoding an image) on a lane of this device, in deadline order with everything else;
        `large` ones on at most lanes - 1 lanes at once."""
        job = self._submit(Job(None, None, deadline, False, self._future(), next(self._sequence), expected_ms, function, large), self._cpu)
        (result,) = await self._wait([job], self._cpu)
        return result

    async def call_then_run(self, function: Callable[[], tuple[object, np.ndarray]], member: Member, deadline: float = math.inf,
                            hard: bool = False, expected_ms: float = 0.0, large: bool = False, skip_late: bool = False) -> tuple[object, Queued]:
        """`call` for a function that returns (value, input), whose input then goes on to `member` from the lane itself,
        without a trip through the event loop (under load the loop is busy with other requests' HTTP, and a decoded
        request waiting for it is work no expectation sees): run at once on that lane when earliest deadline first would
        run it next anyway (nothing queued is due sooner, no request of `member` waits to be batched with it), else queued
        as `run` queues it. (value, the batch: await `result()` as `run`'s, or `cancel()` it). `function`'s own error is
        raised as by `call`. `skip_late`: Late instead of `function` run when a lane is free too late for the batch to make
        `deadline` after it (the request refuses rather than run late: its CPU goes to requests that can still make theirs).
        Needs a backend that runs batches in the lanes' threads."""
        if self._run_now is None:
            raise ValueError(f"the {self.name} scheduler has no in-thread backend to run a batch right after a call")
        batch = Queued(self, Job(member, None, deadline, hard, self._future(), next(self._sequence)), self._members.setdefault(member.name, _Queue()))
        job = Job(None, None, deadline, skip_late, self._future(), next(self._sequence), expected_ms, function, large, batch.job)
        self._submit(job, self._cpu)
        try:
            (value,) = await self._wait([job], self._cpu)
        except BaseException:
            batch.cancel()
            raise
        if hard and not batch.job.future.done():
            self._arm(self._latest_start(batch.job))
        return value, batch

    def work_ahead_ms(self, deadline: float, now: float | None = None) -> float:
        """The device's work that runs before something due at `deadline`, in lane-milliseconds: what is running
        (its expected remainder) and every queued job due no later, its batches costed as they would form."""
        now = time.monotonic() if now is None else now
        with self._lock:
            total = sum(max(0.0, expected - 1000.0 * (now - started)) for _, _, started, expected in self._running.values())
            total += sum(job.expected_ms for job in self._cpu.jobs[: self._cpu.ahead(deadline)])
            for queue in self._members.values():
                images = queue.ahead(deadline)
                if images:
                    total += self.cost_ms(queue.jobs[0].member, images)
        return total

    def wait_ms(self, deadline: float, now: float | None = None) -> float:
        """Expected wait, before a lane starts something due at `deadline`: the work ahead spread over the lanes."""
        return self.work_ahead_ms(deadline, now) / self.lanes

    def drain_s(self) -> float:
        """When the work now queued and running should be done: a Retry-After for requests refused for the load."""
        return max(1.0, self.work_ahead_ms(math.inf) / self.lanes / 1000.0)

    def queued(self, member: str) -> int:
        queue = self._members.get(member)
        return len(queue.jobs) if queue else 0

    @property
    def runs_in_lanes(self) -> bool:
        """Whether batches run in the lanes' own threads (an in-process backend), so `call_then_run` can run one."""
        return self._run_now is not None

    @property
    def busy(self) -> int:
        return len(self._running)

    # --- the queue -------------------------------------------------------------------------------------------

    def _future(self) -> asyncio.Future:
        if self._closed:
            raise SchedulerClosed(f"the {self.name} scheduler is shutting down")
        return asyncio.get_running_loop().create_future()

    def _submit(self, job: Job, queue: _Queue) -> Job:
        if job.member is None and self._on_wait is not None:
            job.expected_wait_ms = self.wait_ms(job.deadline)
        with self._arrived:
            queue.add(job)
            self._arrived.notify()
        return job

    async def _wait(self, jobs: list[Job], queue: _Queue) -> list:
        try:
            if len(jobs) == 1:  # most requests: gather's own future and callbacks would cost the event loop more than the wait
                return [await jobs[0].future]
            return list(await asyncio.gather(*(job.future for job in jobs)))
        except BaseException:  # the caller went away, or one image failed or was late: the rest need not run
            for job in jobs:
                if job.future.done() and not job.future.cancelled():
                    job.future.exception()  # retrieved: a second Late of the same request is not logged as lost
                job.future.cancel()
                self._forget(job, queue)
            raise

    def _forget(self, job: Job, queue: _Queue) -> None:
        with self._lock:
            queue.remove(job)

    def cost_ms(self, member: Member, images: int) -> float:
        """Expected run time of `images` of a member queued together: full batches, then the rest."""
        full, rest = divmod(images, member.max_batch)
        return full * self._batch_ms(member, member.max_batch) + (self._batch_ms(member, rest) if rest else 0.0)

    def _latest_start(self, job: Job) -> float:
        """The latest a hard job can start for its request to be answered in time: its batch of one (after a CPU job's own
        expected run, for the batch that follows it), with the headroom, then what follows the batch."""
        batch = job if job.member is not None else job.then
        return job.deadline - ((job.expected_ms + self._batch_ms(batch.member, 1)) * (1.0 + self.headroom) + self._after_ms()) / 1000.0

    def _arm(self, when: float) -> None:
        """Wake at `when` (time.monotonic()) to take out hard requests that can no longer start in time, unless already due sooner."""
        if self._watch is not None and self._watch_at <= when + 1e-4:
            return
        if self._watch is not None:
            self._watch.cancel()
        self._watch_at = when
        self._watch = asyncio.get_running_loop().call_later(max(0.0, when - time.monotonic()), self._expire)

    def _expire(self) -> None:
        """Take out every hard request past its latest start (each member's first hard ones: later deadlines start later),
        then wait for the next one."""
        self._watch, self._watch_at = None, math.inf
        now, following, late = time.monotonic(), math.inf, []
        with self._lock:
            for queue in self._members.values():
                for job in list(queue.jobs):
                    if not job.hard or job.future.done():
                        continue
                    latest = self._latest_start(job)
                    if latest > now:
                        following = min(following, latest)
                        break
                    queue.remove(job)
                    late.append(job)
        self._settle(late, [Late(job.member.name, job.deadline, now) for job in late])
        if following < math.inf:
            self._arm(following)

    def _head(self) -> tuple[Job, _Queue] | None:
        best: tuple[Job, _Queue] | None = None
        for queue in (self._cpu, *self._members.values()):
            while queue.jobs and queue.jobs[0].future.done():  # cancelled or expired while queued
                queue.remove(queue.jobs[0])
            first = self._first_cpu_job() if queue is self._cpu else (queue.jobs[0] if queue.jobs else None)
            if first is not None and (best is None or first.key < best[0].key):
                best = (first, queue)
        return best

    def _first_cpu_job(self) -> Job | None:
        """The earliest CPU job a free lane may take: a large one only while fewer than lanes - 1 large ones run."""
        if self._large_running < self._large_limit:
            return self._cpu.jobs[0] if self._cpu.jobs else None
        return next((job for job in self._cpu.jobs if not job.large and not job.future.done()), None)

    def _take(self) -> tuple[Member | None, list[Job]] | None:
        """The next work for a free lane (the lock held): a CPU job, or a batch of one member led by the earliest deadline."""
        while True:
            head = self._head()
            if head is None:
                return None
            first, queue = head
            now = time.monotonic()
            if first.member is None:
                first.waited_ms = (now - first.submitted) * 1000.0
            if first.hard and self._latest_start(first) < now:  # a lane is free, but too late for it: its work would be wasted
                queue.remove(first)
                self._post([first], [Late((first.member or first.then.member).name, first.deadline, now)])
                continue
            if first.member is None:
                queue.remove(first)
                return None, [first]
            following = self._feeds_first(first.member, queue.jobs, now)
            if following is not None:
                self._cpu.remove(following)
                following.waited_ms = (now - following.submitted) * 1000.0
                return None, [following]
            batch: list[Job] = []
            due = math.inf  # the earliest hard deadline in the batch
            for job in queue.jobs:
                if len(batch) == job.member.max_batch:
                    break
                if job.future.done():
                    continue
                due = min(due, job.deadline) if job.hard else due
                if batch and now + (self._batch_ms(job.member, len(batch) + 1) + self._after_ms()) / 1000.0 > due:
                    break  # one more image would make the earliest hard deadline in the batch late
                batch.append(job)
            for job in batch:
                queue.remove(job)
            return first.member, batch

    def _feeds_first(self, member: Member, queued: list[Job], now: float) -> Job | None:
        """Under a backlog, the next CPU job, when a batch of `member` (from `queued`) should wait for it: none of the
        batch's requests has a latency bound (a bound's request runs as soon as earliest deadline first says: that is what
        its SLA rests on), the job prepares another image of the same member and would run next after the batch anyway,
        it has itself waited at least its expected run (decodings queue: the lanes are the limit, and one decoding more
        before the batch costs little beside that wait), the batch is not full, and after it the batch still starts in
        time for every deadline in it. One batch of several images then runs instead of several of one, at a lower cost
        per image (the profiles say how much lower): under a backlog, throughput. None: the batch runs now."""
        following = self._first_cpu_job()  # the cheap tests first: this runs whenever a lane takes a batch
        if following is None or following.then is None or following.then.member is not member:
            return None
        if (now - following.submitted) * 1000.0 < following.expected_ms:  # no backlog: the batch runs now
            return None
        images = [job for job in queued[:member.max_batch] if not job.future.done()]
        if not images or len(images) >= member.max_batch or any(job.hard for job in images):
            return None
        if following.hard and self._latest_start(following) < now:  # too late to be worth decoding: `_take` drops it
            return None
        others = (queue for name, queue in self._members.items() if name != member.name and queue.jobs)
        if any(queue.jobs[0].key < following.key for queue in others):  # another member's batch is due first
            return None
        ends = now + (following.expected_ms + self._batch_ms(member, len(images) + 1) + self._after_ms()) / 1000.0
        return following if ends <= min(job.deadline for job in images) else None

    # --- the lanes (threads) ------------------------------------------------------------------------------------

    def _post(self, jobs: list[Job], outcomes: list, first: Callable[[], None] | None = None) -> None:
        """Settle the futures of `jobs` with their `outcomes` on the event loop (asyncio futures are not thread-safe), in
        one wake-up of it, after calling `first` there; nothing if the loop is gone."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits for the answers any more
            self._loop.call_soon_threadsafe(self._settle, jobs, outcomes, first)

    def _lane(self, lane: int) -> None:
        # Below the event loop's priority: with every core busy, its short turns (an answer written, a refusal, a request
        # routed) go first instead of waiting out a lane's time slice, a wait no expectation can predict (docs/serving-measurements.md).
        lower_thread_priority(self._lane_nice)
        while True:
            with self._arrived:
                work = None
                while work is None and not self._closed:
                    try:
                        work = self._take()
                    except Exception:  # a bug must not take a lane away for good: say so and go on
                        log.exception("the %s scheduler's lane %d could not take work", self.name, lane)
                    if work is None:
                        self._arrived.wait(0.5)
                if work is None:
                    return
                member, jobs = work
                started = time.monotonic()
                self._running[lane] = (member, len(jobs), started, jobs[0].expected_ms if member is None else self._batch_ms(member, len(jobs)))
                large = member is None and jobs[0].large
                self._large_running += large
            try:
                if member is None:
                    self._call(lane, jobs[0])
                else:
                    self._run(lane, member, jobs, started)
            finally:
                with self._lock:
                    self._running.pop(lane, None)
                    self._large_running -= large
                    if large:
                        self._arrived.notify()  # a large job that waited for this one may run now
                # An idle lane must not keep its last job alive: its outcome (an error's traceback) can hold a decoded image.
                work = member = jobs = None

    def _call(self, lane: int, job: Job) -> None:
        try:
            outcome = job.call()
        except UserError as error:  # the input's fault, its message says all: without its traceback, whose frames (a
            outcome = error.with_traceback(None)  # decoded image) would stay alive in a reference cycle until a full GC
        except Exception as error:  # noqa: BLE001 - the failure belongs to the caller
            outcome = error
        if job.then is None or isinstance(outcome, BaseException):
            self._post([job], [outcome])
            return
        value, array = outcome
        batch_outcome, observed = self._then(lane, job.then, array)
        if batch_outcome is None:  # queued (or its request gone): a lane settles it when it runs
            self._post([job], [value])
        else:
            self._post([job, job.then], [value, batch_outcome], first=observed)

    def _then(self, lane: int, batch: Job, array: np.ndarray) -> tuple[object, Callable[[], None] | None]:
        """A `call_then_run`'s batch of one, from the lane that prepared its input: run here and now when earliest deadline
        first would run it next anyway, else queued. (its outcome to settle: its result, an error, Late or QueueFull, and the
        batch's observer), or (None, None) when queued or no longer wanted."""
        member = batch.member
        with self._arrived:
            queue = self._members[member.name]
            head, now, expected = self._head(), time.monotonic(), self._batch_ms(member, 1)
            if batch.future.done():
                return None, None
            if batch.hard and now + (expected * (1.0 + self.headroom) + self._after_ms()) / 1000.0 > batch.deadline:
                return Late(member.name, batch.deadline, now), None
            full = len(queue.jobs) >= self.max_queue
            here = not full and not queue.jobs and (head is None or head[0].key > batch.key) and self._feeds_first(member, [batch], now) is None
            if here:
                self._running[lane] = (member, 1, now, expected)
            elif not full:
                batch.input, batch.submitted = array, now
                queue.add(batch)
                self._arrived.notify()
                return None, None
        if full:
            return QueueFull(member.name, self.max_queue, self.drain_s()), None
        try:
            outputs = self._run_now(member, array[None])
            if len(outputs) != 1:
                raise RuntimeError(f"member {member.name} returned {len(outputs)} outputs for a batch of 1")
        except Exception as error:  # noqa: BLE001 - the failure belongs to the request
            return error, None
        inference_ms = (time.monotonic() - now) * 1000.0
        observed = None if self._on_batch is None else functools.partial(self._on_batch, member, 1, inference_ms)
        return ItemResult(outputs[0], 0.0, inference_ms, 1), observed

    def _run(self, lane: int, member: Member, jobs: list[Job], started: float) -> None:
        size = len(jobs)
        try:
            due = min((self._latest_start(job) for job in jobs if job.hard), default=math.inf)
            batch = np.stack([job.input for job in jobs])
            if self._run_now is not None:
                outputs = self._run_now(member, batch)
            else:  # an asynchronous backend (Triton): its call runs on the event loop, this lane waits for it
                self._calls[lane] = call = asyncio.run_coroutine_threadsafe(self._run_batch(member, batch, due), self._loop)
                try:
                    outputs = self._result_in_time(call, member, jobs)
                finally:
                    self._calls.pop(lane, None)
            if len(outputs) != size:
                raise RuntimeError(f"member {member.name} returned {len(outputs)} outputs for a batch of {size}")
        except concurrent.futures.CancelledError:  # the scheduler is closing
            self._post(jobs, [CANCELLED] * size)
            return
        except BackendLate:  # the backend dropped it, too late on its side: the requests leave as if from our queue
            now = time.monotonic()
            self._post(jobs, [Late(member.name, job.deadline, now) for job in jobs])
            return
        except Exception as error:  # noqa: BLE001 - the failure belongs to the requests of this batch
            self._post(jobs, [error] * size)
            return
        inference_ms = (time.monotonic() - started) * 1000.0
        observed = None if self._on_batch is None else functools.partial(self._on_batch, member, size, inference_ms)
        self._post(jobs, [ItemResult(output, (started - job.submitted) * 1000.0, inference_ms, size) for job, output in zip(jobs, outputs, strict=True)],
                   first=observed)

    def _result_in_time(self, call: concurrent.futures.Future, member: Member, jobs: list[Job]) -> np.ndarray:
        """An asynchronous backend's outputs for `jobs`. Each hard request still waiting when its answer could no longer
        be out in time leaves then (Late), as if from this queue: the backend's own queue timeout may come much later
        (a local tritonserver under a mixed load rejected batches up to 0.5 s after theirs, holding 50 ms bounds that long).
        The rest wait for the outputs; with none left, the call is cancelled (CancelledError)."""
        for job in sorted((job for job in jobs if job.hard), key=lambda job: job.deadline):
            try:
                return call.result(timeout=max(0.0, job.deadline - self._after_ms() / 1000.0 - time.monotonic()))
            except TimeoutError:
                self._post([job], [Late(member.name, job.deadline, time.monotonic())])
        if all(job.hard for job in jobs):
            call.cancel()
            raise concurrent.futures.CancelledError
        return call.result()

    def _settle(self, jobs: list[Job], outcomes: list, first: Callable[[], None] | None = None) -> None:
        """On the event loop: each job's future gets its outcome (a result, an exception, or CANCELLED), unless its caller
        went away or it was late already; then the wait observer hears of each CPU job's wait for a lane."""
        if first is not None:
            first()
        for job, outcome in zip(jobs, outcomes, strict=True):
            if job.future.done():
                continue
            if outcome is CANCELLED:
                job.future.cancel()
            elif isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if job.waited_ms is not None and job.expected_wait_ms is not None:
                self._on_wait(job.expected_wait_ms, job.waited_ms, isinstance(outcome, Late))


class Queued:
    """The batch of one a lane runs or queues after preparing its input (`DeviceScheduler.call_then_run`)."""

    def __init__(self, scheduler: DeviceScheduler, job: Job, queue: _Queue):
        self.scheduler, self.job, self.queue = scheduler, job, queue

    async def result(self) -> list[ItemResult]:
        """As `DeviceScheduler.run`'s: the results, or Late, QueueFull or the batch's error."""
        return await self.scheduler._wait([self.job], self.queue)

    def cancel(self) -> None:
        """Not wanted any more (its request failed or went away): dropped from the queue if it is there, never run after."""
        self.job.future.cancel()
        self.scheduler._forget(self.job, self.queue)
