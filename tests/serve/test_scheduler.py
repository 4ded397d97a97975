"""The device scheduler on a fake device with known service times: earliest deadline first across members, batches
that keep the earliest deadline, requests taken out when they can no longer make it, no starvation, every answer
to its own request."""

import asyncio
import math
import os
import random
import sys
import threading
import time

import numpy as np
import pytest

from effx_serve.serve.scheduler import DeviceScheduler, Late, QueueFull, SchedulerClosed
from tests.helpers import fake_member

FAST = fake_member("fast", 0.5, {1: 2.0, 2: 3.0, 4: 5.0, 8: 9.0})
SLOW = fake_member("slow", 0.8, {1: 8.0, 2: 12.0, 4: 20.0, 8: 36.0})


def run(coroutine, loop="asyncio"):
    """The coroutine on asyncio's own loop, or on uvloop's (the one the server runs on: its timers behave differently)."""
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coroutine)
    return asyncio.run(coroutine)


def service_ms(member, size):
    return member.latency.service_ms(size)


class Device:
    """A fake device: a batch takes its member's profiled time; output = input * 2, so each answer names its request.
    `gate` (when cleared) holds every batch at its start; `log` records (member, size, start) per batch."""

    def __init__(self, fail=None):
        self.log, self.fail, self.gate = [], fail, asyncio.Event()
        self.gate.set()

    async def __call__(self, member, batch, deadline=math.inf):
        await self.gate.wait()
        self.log.append((member.name, len(batch), time.monotonic(), tuple(float(x.flat[0]) for x in batch)))
        await asyncio.sleep(service_ms(member, len(batch)) / 1000.0)
        if self.fail is not None and self.fail(member, batch):
            raise RuntimeError("the model failed")
        return batch * 2.0


def scheduler(device, lanes=1, max_queue=10_000):
    return DeviceScheduler("test", lanes, device, service_ms, max_queue=max_queue)


def running_scheduler(device, held=False, **options):
    """A started scheduler on `device`; `held`: every batch waits at the device's gate until the test opens it."""
    s = scheduler(device, **options)
    s.start()
    if held:
        device.gate.clear()
    return s


def test_every_answer_goes_to_its_own_request_with_1000_requests_in_flight():
    async def scenario():
        device = Device()
        s = running_scheduler(device, lanes=2)
        rng = np.random.default_rng(0)
        now = time.monotonic()
        requests = [(FAST if rng.random() < 0.7 else SLOW, rng.normal(size=(int(rng.integers(1, 4)), 3)).astype(np.float32),
                     now + float(rng.uniform(0.01, 2.0))) for _ in range(1000)]
        answers = await asyncio.gather(*(s.run(member, list(x), deadline) for member, x, deadline in requests))
        await s.close()
        return device, requests, answers

    device, requests, answers = run(scenario())
    for (_, inputs, _), results in zip(requests, answers, strict=True):
        assert len(results) == len(inputs)
        for x, result in zip(inputs, results, strict=True):
            np.testing.assert_array_equal(result.output, x * 2.0)
    sizes = [size for _, size, _, _ in device.log]
    assert sum(sizes) == sum(len(x) for _, x, _ in requests) and max(sizes) <= 8 and np.mean(sizes) > 2  # batches formed


def test_earliest_deadline_first_across_members():
    async def scenario():
        device = Device()
        s = running_scheduler(device, held=True)
        now = time.monotonic()
        blocker = asyncio.create_task(s.run(FAST, [np.zeros(1)], now + 10))
        await asyncio.sleep(0.01)  # the lane holds the blocker at the gate
        order = [(SLOW, 5.0), (FAST, 3.0), (SLOW, 1.0), (FAST, 4.0), (SLOW, 2.0)]
        tasks = [asyncio.create_task(s.run(member, [np.full(1, due)], now + due)) for member, due in order]
        await asyncio.sleep(0.01)
        device.gate.set()
        await asyncio.gather(blocker, *tasks)
        await s.close()
        return device.log

    log = run(scenario())
    # One lane: each batch is led by the earliest deadline waiting, and carries its member's next ones (none is bounded):
    # slow (1, 2, 5), then fast (3, 4).
    assert [(name, values) for name, _, _, values in log[1:]] == [("slow", (1.0, 2.0, 5.0)), ("fast", (3.0, 4.0))]


def test_a_batch_never_makes_the_earliest_deadline_in_it_late():
    async def scenario():
        device = Device()
        s = running_scheduler(device, held=True)
        now = time.monotonic()
        blocker = asyncio.create_task(s.run(FAST, [np.zeros(1)], now + 10))
        await asyncio.sleep(0.01)
        # SLOW: 1 image 8 ms, 2 images 12 ms, 4 images 20 ms. The first is due in 40 ms (after the 2 ms blocker):
        # a batch of 4 would end ~22 ms in and fit, but a batch of 8 (36 ms) would not.
        tasks = [asyncio.create_task(s.run(SLOW, [np.zeros(1)], now + 0.040, hard=True))]
        tasks += [asyncio.create_task(s.run(SLOW, [np.zeros(1)], now + 1.0)) for _ in range(7)]
        await asyncio.sleep(0.005)
        device.gate.set()
        results = await asyncio.gather(blocker, *tasks, return_exceptions=True)
        await s.close()
        return device.log, results

    log, results = run(scenario())
    sizes = [size for name, size, _, _ in log if name == "slow"]
    assert sizes[0] < 8 and sum(sizes) == 8
    # The batch is made to end just in time, so the hand-back's jitter may make its answer late: then it is refused at
    # its deadline (Late), never answered late.
    first = results[1]
    assert isinstance(first, Late) or first[0].queue_ms + first[0].inference_ms < 40


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_hard_request_that_can_no_longer_make_it_leaves_the_queue_at_once_and_a_soft_one_waits(loop):
    async def scenario():
        device = Device()
        s = running_scheduler(device, held=True)
        now = time.monotonic()
        blocker = asyncio.create_task(s.run(SLOW, [np.zeros(1)], now + 10))
        await asyncio.sleep(0.01)
        hard = asyncio.create_task(s.run(FAST, [np.zeros(1)], time.monotonic() + 0.030, hard=True))
        soft = asyncio.create_task(s.run(FAST, [np.zeros(1)], time.monotonic() + 0.030))
        started = time.monotonic()
        with pytest.raises(Late):
            await hard
        left_after = time.monotonic() - started
        assert s.queued("fast") == 1  # the soft one is still queued
        device.gate.set()
        await asyncio.gather(blocker, soft)
        await s.close()
        return left_after, device.log

    left_after, log = run(scenario(), loop)
    assert 0.015 < left_after < 0.1  # at its latest start (30 ms - 2 ms of service), not when the lane freed
    assert [name for name, _, _, _ in log] == ["slow", "fast"]  # the late one never ran


def test_requests_without_a_bound_are_not_starved_by_a_stream_of_tight_ones():
    async def scenario():
        device = Device()
        s = running_scheduler(device)
        start = time.monotonic()
        patient = asyncio.create_task(s.run(SLOW, [np.zeros(1)], start + 0.1))  # no bound: a virtual deadline 100 ms out

        async def stream():
            while time.monotonic() - start < 0.4:
                asyncio.create_task(s.run(FAST, [np.zeros(1)], time.monotonic() + 0.02, hard=True))
                await asyncio.sleep(0.002)  # as fast as the lane can serve them

        streaming = asyncio.create_task(stream())
        await patient
        done = time.monotonic() - start
        await streaming
        await asyncio.sleep(0.05)
        await s.close()
        return done

    assert run(scenario()) < 0.25  # served around its virtual deadline, while the stream still ran


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_requests_already_past_their_latest_start_leave_at_once(loop):
    async def scenario():
        device = Device()
        s = running_scheduler(device, held=True)
        held = asyncio.create_task(s.run(SLOW, [np.zeros(1)], time.monotonic() + 10))
        await asyncio.sleep(0.01)
        late = [asyncio.create_task(s.run(FAST, [np.zeros(1)], time.monotonic() + 0.0005, hard=True)) for _ in range(20)]
        outcomes = await asyncio.wait_for(asyncio.gather(*late, return_exceptions=True), 1.0)
        device.gate.set()
        await held
        await s.close()
        return outcomes

    assert all(isinstance(outcome, Late) for outcome in run(scenario(), loop))


def test_a_full_queue_refuses_the_whole_request_and_keeps_nothing_of_it():
    async def scenario():
        device = Device()
        s = running_scheduler(device, held=True, max_queue=4)
        first = asyncio.create_task(s.run(FAST, [np.zeros(1)] * 2))  # taken by the lane, held at the gate
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(s.run(FAST, [np.ones(1)] * 3))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as refused:
            await s.run(FAST, [np.ones(1)] * 2)
        assert s.queued("fast") == 3 and refused.value.retry_after_s >= 1.0 and refused.value.reason == "limit"
        device.gate.set()
        await asyncio.gather(first, queued)
        await s.close()

    run(scenario())


def test_a_failing_batch_fails_only_its_requests():
    async def scenario():
        device = Device(fail=lambda member, batch: (batch < 0).any())
        s = running_scheduler(device)
        good, bad = s.run(FAST, [np.ones(1)]), s.run(SLOW, [-np.ones(1)])
        results = await asyncio.gather(good, bad, return_exceptions=True)
        await s.close()
        return results

    good, bad = run(scenario())
    assert good[0].output[0] == 2.0 and isinstance(bad, RuntimeError)


def test_cancelled_requests_are_dropped_and_close_fails_what_is_left():
    async def scenario():
        device = Device()
        s = running_scheduler(device, held=True)
        held = asyncio.create_task(s.run(FAST, [np.zeros(1)]))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(s.run(SLOW, [np.zeros(1)] * 3))
        left = asyncio.create_task(s.run(FAST, [np.zeros(1)]))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        queued_after_cancel = s.queued("slow")
        await s.close()
        return queued_after_cancel, await asyncio.gather(held, left, return_exceptions=True)

    queued_after_cancel, (held, left) = run(scenario())
    assert queued_after_cancel == 0
    assert isinstance(held, asyncio.CancelledError) and isinstance(left, SchedulerClosed)


def test_the_work_ahead_counts_every_member_due_earlier_and_what_runs():
    async def scenario():
        device = Device()
        s = running_scheduler(device, held=True, lanes=2)
        now = time.monotonic()
        held = [asyncio.create_task(s.run(member, [np.zeros(1)], now + 10)) for member in (SLOW, FAST)]  # both lanes taken
        await asyncio.sleep(0.01)
        queued = [asyncio.create_task(s.run(FAST, [np.zeros(1)] * 5, now + 1.0)),
                  asyncio.create_task(s.run(SLOW, [np.zeros(1)] * 3, now + 2.0))]
        await asyncio.sleep(0.01)
        figures = (s.work_ahead_ms(now + 0.5), s.work_ahead_ms(now + 1.5), s.work_ahead_ms(now + 3.0), s.wait_ms(now + 3.0))
        device.gate.set()
        await asyncio.gather(*held, *queued)
        await s.close()
        return figures

    before_fast, with_fast, everything, wait = run(scenario())
    assert before_fast == 0.0  # the held batches have run past their expected time: nothing left of them is counted
    assert with_fast == pytest.approx(before_fast + FAST.latency.service_ms(5), abs=0.5)
    assert everything == pytest.approx(with_fast + SLOW.latency.service_ms(3), abs=0.5)
    assert wait == pytest.approx(everything / 2, abs=0.5)


def test_cpu_jobs_and_batches_share_the_lanes_in_deadline_order():
    async def scenario():
        device = Device()
        s = running_scheduler(device, held=True)
        now = time.monotonic()
        held = asyncio.create_task(s.run(FAST, [np.zeros(1)], now + 10))
        await asyncio.sleep(0.01)
        decoded = []
        late_batch = asyncio.create_task(s.run(SLOW, [np.zeros(1)], now + 2.0))
        early_job = asyncio.create_task(s.call(lambda: decoded.append(time.monotonic()) or 7, now + 1.0, expected_ms=1.0))
        await asyncio.sleep(0.01)
        device.gate.set()
        value = await early_job
        await asyncio.gather(held, late_batch)
        await s.close()
        return value, decoded[0], device.log[-1]

    value, decoded_at, (name, _, slow_started, _) = run(scenario())
    assert value == 7 and name == "slow" and decoded_at < slow_started  # the CPU job, due first, ran before the slow batch


def test_large_cpu_jobs_leave_a_lane_for_the_rest():
    async def scenario():
        s = running_scheduler(Device(), lanes=2)
        release, events = threading.Event(), []

        def large(name):
            events.append(("start", name))
            release.wait(10)
            events.append(("end", name))

        now = time.monotonic()
        larges = [asyncio.create_task(s.call(lambda n=n: large(n), now + 0.1 * n, expected_ms=500, large=True)) for n in range(2)]
        await asyncio.sleep(0.1)
        light = await asyncio.wait_for(s.call(lambda: events.append(("light",)) or 1, now + 5.0, expected_ms=1), 5)  # due last, served first
        release.set()
        await asyncio.gather(*larges)
        await s.close()
        return light, events

    light, events = run(scenario())
    assert light == 1
    assert events == [("start", 0), ("light",), ("end", 0), ("start", 1), ("end", 1)]  # one large at a time on two lanes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a nice value per thread is Linux's")
def test_the_lanes_run_below_the_event_loops_priority_by_lane_nice():
    def nice():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    async def scenario(lane_nice):
        s = DeviceScheduler("test", 1, Device(), service_ms, lane_nice=lane_nice)
        s.start()
        lane = await s.call(nice, time.monotonic() + 5.0, expected_ms=1.0)
        await s.close()
        return lane

    loop = nice()
    assert run(scenario(4)) == min(19, loop + 4)
    assert run(scenario(0)) == loop
    assert nice() == loop


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        DeviceScheduler("x", 0, Device(), service_ms)
    with pytest.raises(ValueError):
        DeviceScheduler("x", 1, Device(), service_ms, max_queue=0)


def test_random_deadlines_are_served_in_order_on_one_lane():
    async def scenario():
        device = Device()
        s = running_scheduler(device, held=True)
        now = time.monotonic()
        held = asyncio.create_task(s.run(FAST, [np.zeros(1)], now + 100))
        await asyncio.sleep(0.01)
        dues = random.Random(3).sample(range(1, 60), 12)
        tasks = [asyncio.create_task(s.run(fake, [np.full(1, due)], now + due)) for due in dues
                 for fake in [fake_member(f"m{due}", p50_ms={1: 0.2})]]
        await asyncio.sleep(0.01)
        device.gate.set()
        await asyncio.gather(held, *tasks)
        await s.close()
        return dues, device.log

    dues, log = run(scenario())
    assert [name for name, _, _, _ in log[1:]] == [f"m{due}" for due in sorted(dues)]


class InThreadDevice:
    """A device whose batches run in the calling lane (as the embedded backend's): output = input * 2; `threads` records
    where each batch ran, `fail` makes every batch fail."""

    def __init__(self, fail=False):
        self.threads, self.fail = [], fail

    def __call__(self, member, batch):
        self.threads.append(threading.current_thread().name)
        time.sleep(service_ms(member, len(batch)) / 1000.0)
        if self.fail:
            raise RuntimeError("the model failed")
        return batch * 2.0

    async def run_batch(self, member, batch, deadline=math.inf):
        raise AssertionError("an in-thread device runs batches with run_now")


def in_thread_scheduler(device, observed=None, lanes=1, waits=None, headroom=0.0):
    s = DeviceScheduler("test", lanes, device.run_batch, service_ms, on_batch=None if observed is None else lambda *a: observed.append(a),
                        run_now=device, on_wait=None if waits is None else lambda *a: waits.append(a), headroom=headroom)
    s.start()
    return s


def decoding(value):
    """A CPU job as `call_then_run` takes it: (its value, the model input), recording the lane it ran on."""
    def job():
        return (value, threading.current_thread().name), np.full(1, float(value))
    return job


def test_a_decoded_input_runs_on_the_lane_that_decoded_it_when_nothing_else_would_run_first():
    async def scenario():
        device, observed = InThreadDevice(), []
        s = in_thread_scheduler(device, observed)
        value, batch = await s.call_then_run(decoding(3), FAST, time.monotonic() + 1.0, hard=True)
        results = await batch.result()
        await s.close()
        return value, results, device.threads, observed

    (value, decoded_on), results, threads, observed = run(scenario())
    assert value == 3 and threads == [decoded_on]  # decoded and run on the same lane, without the event loop between
    (result,) = results
    assert float(result.output[0]) == 6.0 and result.batch_size == 1 and result.inference_ms >= service_ms(FAST, 1) - 0.5
    assert [(member.name, size) for member, size, _ in observed] == [("fast", 1)]  # the batch is observed as any other


def test_a_decoded_input_that_would_not_run_next_is_queued_by_its_lane_and_batched():
    async def scenario():
        device = InThreadDevice()
        s = in_thread_scheduler(device)
        now = time.monotonic()
        gate = threading.Event()
        # The lane is busy until the gate opens; meanwhile a request of FAST queues: the decoded one joins its batch.
        blocker = asyncio.create_task(s.call(lambda: gate.wait(5), now + 0.001))
        await asyncio.sleep(0.01)
        partner = asyncio.create_task(s.run(FAST, [np.full(1, 5.0)], now + 0.5))
        decoded = asyncio.create_task(s.call_then_run(decoding(1), FAST, now + 0.2))
        await asyncio.sleep(0.01)
        gate.set()
        _, batch = await decoded
        results = await asyncio.gather(batch.result(), partner, blocker)
        # Too late for a hard deadline once decoded: Late, as from the queue (the caller moves the request or refuses it).
        _, late = await s.call_then_run(decoding(2), SLOW, time.monotonic() + 0.004, hard=True)
        with pytest.raises(Late):
            await late.result()
        await s.close()
        return results

    (mine,), (partners,), _ = run(scenario())
    assert float(mine.output[0]) == 2.0 and float(partners.output[0]) == 10.0 and mine.batch_size == partners.batch_size == 2


def _backlog(deadlines_s, expected_ms, hard=False):
    """Decodings of FAST queued behind a CPU job that holds the only lane for 30 ms (longer than each is expected to
    take: a backlog), each due `deadlines_s` after the start, then run: the batch size each request was answered in."""
    async def scenario():
        s, gate, now = in_thread_scheduler(InThreadDevice()), threading.Event(), time.monotonic()
        blocker = asyncio.create_task(s.call(lambda: gate.wait(5), now))
        await asyncio.sleep(0.005)
        decoded = [asyncio.create_task(s.call_then_run(decoding(i), FAST, now + due, hard=hard, expected_ms=expected_ms))
                   for i, due in enumerate(deadlines_s)]
        await asyncio.sleep(0.03)
        gate.set()
        sizes = []
        for task in decoded:
            _, batch = await task
            (result,) = await batch.result()
            sizes.append(result.batch_size)
        await blocker
        await s.close()
        return sizes

    return run(scenario())


def test_under_a_backlog_a_batch_without_a_bound_waits_for_the_decodings_of_its_member_behind_it():
    assert _backlog([1.0] * 4, expected_ms=1.0) == [4, 4, 4, 4]  # one batch of four instead of four of one
    # Without the time for another decoding before the first request's (virtual) deadline, each runs once decoded.
    assert _backlog([0.045, 1.0], expected_ms=20.0) == [1, 1]
    # Requests with a latency bound run as earliest deadline first says, backlog or not.
    assert _backlog([1.0] * 4, expected_ms=1.0, hard=True) == [1, 1, 1, 1]


def test_a_batch_that_fails_after_decoding_gives_its_error_and_a_failed_decoding_runs_nothing():
    async def scenario():
        device = InThreadDevice(fail=True)
        s = in_thread_scheduler(device)
        _, batch = await s.call_then_run(decoding(1), FAST)
        with pytest.raises(RuntimeError, match="model failed"):
            await batch.result()

        def unreadable():
            raise ValueError("not an image")

        with pytest.raises(ValueError, match="not an image"):
            await s.call_then_run(unreadable, FAST)
        await asyncio.sleep(0.01)
        ran = len(device.threads)
        await s.close()
        plain = running_scheduler(Device())
        with pytest.raises(ValueError, match="in-thread"):
            await plain.call_then_run(decoding(1), FAST)
        await plain.close()
        return ran, s.queued("fast")

    ran, queued = run(scenario())
    assert ran == 1 and queued == 0  # only the first request's batch ran


def test_a_decoding_that_could_no_longer_finish_in_time_is_skipped_when_asked():
    async def scenario():
        s = in_thread_scheduler(InThreadDevice())
        gate, ran = threading.Event(), []

        def decode(value):
            def job():
                ran.append(value)
                return value, np.full(1, float(value))
            return job

        blocker = asyncio.create_task(s.call(lambda: gate.wait(5), time.monotonic()))
        await asyncio.sleep(0.01)
        due = time.monotonic() + 0.05  # the lane frees after 0.1 s: too late for 10 ms of decoding and FAST's 2 ms batch
        skipped = asyncio.create_task(s.call_then_run(decode(1), FAST, due, hard=True, expected_ms=10.0, skip_late=True))
        decoded_anyway = asyncio.create_task(s.call_then_run(decode(2), FAST, due, hard=True, expected_ms=10.0))
        in_time = asyncio.create_task(s.call_then_run(decode(3), FAST, time.monotonic() + 1.0, hard=True, expected_ms=10.0, skip_late=True))
        await asyncio.sleep(0.1)
        gate.set()
        with pytest.raises(Late):
            await skipped
        _, late_batch = await decoded_anyway
        with pytest.raises(Late):  # decoded, then found too late for its batch (the old way: the decoding was wasted)
            await late_batch.result()
        _, batch = await in_time
        (result,) = await batch.result()
        await blocker
        await s.close()
        return ran, float(result.output[0])

    ran, output = run(scenario())
    assert ran == [2, 3] and output == 6.0  # the skipped decoding never ran; the one with time left did, and its batch


@pytest.mark.parametrize("headroom", [0.0, 4.0])
def test_with_headroom_a_decoding_that_would_only_just_fit_is_refused_at_once_instead(headroom):
    async def scenario():
        s = in_thread_scheduler(InThreadDevice(), headroom=headroom)
        gate = threading.Event()
        blocker = asyncio.create_task(s.call(lambda: gate.wait(5), time.monotonic() + 1.0))
        await asyncio.sleep(0.01)
        # The lane frees in about 50 ms, leaving about 50 ms: 10 ms of decoding and FAST's 2 ms batch fit, 5 x that does not.
        due = time.monotonic() + 0.1
        job = asyncio.create_task(s.call_then_run(decoding(1), FAST, due, hard=True, expected_ms=10.0, skip_late=True))
        await asyncio.sleep(0.05)
        gate.set()
        await blocker
        try:
            _, batch = await job
            (result,) = await batch.result()
            outcome = float(result.output[0])
        except Late:
            outcome = "late"
        await s.close()
        return outcome

    assert run(scenario()) == (2.0 if headroom == 0.0 else "late")


def test_each_decodings_wait_for_a_lane_is_reported_with_the_wait_expected_when_it_was_queued():
    async def scenario():
        waits, gate = [], threading.Event()
        s = in_thread_scheduler(InThreadDevice(), waits=waits)
        blocker = asyncio.create_task(s.call(lambda: gate.wait(5), time.monotonic() + 1.0, expected_ms=30.0))
        await asyncio.sleep(0.01)
        due = time.monotonic() + 0.05  # the lane frees after 0.1 s: too late for this one's 10 ms decoding and 2 ms batch
        late = asyncio.create_task(s.call_then_run(decoding(1), FAST, due, hard=True, expected_ms=10.0, skip_late=True))
        runs = asyncio.create_task(s.call(lambda: None, time.monotonic() + 1.0, expected_ms=5.0))  # behind the late one's 10 ms
        await asyncio.sleep(0.1)
        gate.set()
        await asyncio.gather(blocker, runs)
        with pytest.raises(Late):
            await late
        await s.close()
        return waits

    waits = run(scenario())
    assert len(waits) == 3 and waits[0][0] == 0.0 and not waits[0][2]  # the blocker: an idle lane
    (late_expected, late_waited, late), (expected, waited, was_late) = waits[1:]
    assert late and not was_late
    assert late_expected <= 20.0 and late_waited >= 85.0  # expected: the blocker's 30 ms less the 10 ms or more it had run
    assert expected == pytest.approx(late_expected + 10.0, abs=1.0) and waited >= 85.0


def test_a_backend_with_its_own_queue_is_told_the_latest_start_of_the_batchs_earliest_hard_request():
    """Triton drops a batch still in its queue at the time it is given: that must be when the batch could still run in
    time (its run, with the headroom, and what follows it), not the deadline itself."""
    seen = []

    async def device(member, batch, deadline=math.inf):
        seen.append(deadline)
        return batch * 2.0

    async def scenario():
        s = DeviceScheduler("test", 1, device, service_ms, headroom=0.5, after_ms=lambda: 1.0)
        s.start()
        now = time.monotonic()
        await s.run(FAST, [np.zeros(1)], now + 1.0, hard=True)
        await s.run(FAST, [np.zeros(1)], now + 1.0)
        await s.close()
        return now

    now = run(scenario())
    assert seen[0] == pytest.approx(now + 1.0 - (2.0 * 1.5 + 1.0) / 1000.0) and seen[1] == math.inf


def test_a_batch_the_backend_drops_as_late_leaves_as_late_and_the_lane_goes_on():
    from effx_serve.serve.backends.base import BackendLate

    async def device(member, batch, deadline=math.inf):
        if math.isfinite(deadline):
            raise BackendLate("its deadline passed in the backend's queue")
        return batch * 2.0

    async def scenario():
        s = DeviceScheduler("test", 1, device, service_ms)
        s.start()
        now = time.monotonic()
        with pytest.raises(Late):
            await s.run(FAST, [np.zeros(1)], now + 1.0, hard=True)
        (after,) = await s.run(FAST, [np.ones(1)], now + 1.0)
        await s.close()
        return after

    assert float(run(scenario()).output[0]) == 2.0


def test_a_hard_request_leaves_as_late_at_its_deadline_while_the_backend_still_holds_its_batch():
    """Triton rejects a batch whose queue timeout passed only when it next looks at its queue (about every 0.5 s while
    its instances are busy): a 50 ms bound was held 0.5 s. The hard request leaves at its deadline; a request without a
    bound in the same batch gets its answer when the backend gives it; a batch of hard requests alone is cancelled."""
    calls = []

    async def device(member, batch, deadline=math.inf):
        calls.append("started")
        try:
            await asyncio.sleep(0.5)  # its instances busy: the batch waits in the backend's queue
        except asyncio.CancelledError:
            calls.append("cancelled")
            raise
        return batch * 2.0

    async def scenario():
        s = DeviceScheduler("test", 1, device, service_ms, after_ms=lambda: 1.0)
        s.start()
        device_gate = time.monotonic()
        bounded = asyncio.ensure_future(s.run(FAST, [np.zeros(1)], device_gate + 0.05, hard=True))
        unbounded = asyncio.ensure_future(s.run(FAST, [np.ones(1)], device_gate + 1.0))
        with pytest.raises(Late):
            await bounded
        late_after = time.monotonic() - device_gate
        (answer,) = await unbounded
        alone = time.monotonic()
        with pytest.raises(Late):
            await s.run(FAST, [np.zeros(1)], alone + 0.05, hard=True)
        alone_after = time.monotonic() - alone
        await asyncio.sleep(0.05)
        await s.close()
        return late_after, float(answer.output[0]), alone_after

    late_after, answer, alone_after = run(scenario())
    assert late_after < 0.2 and answer == 2.0 and alone_after < 0.2
    assert calls == ["started", "started", "cancelled"]  # one batch of both, then the hard one alone, cancelled at its deadline
