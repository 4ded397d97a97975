"""The micro-batcher under concurrency: every answer matched to its own request, bounded batches and queues."""

import asyncio
import random

import numpy as np
import pytest

from effx_serve.serve.batcher import BatcherClosed, MicroBatcher, QueueFull


def run(coroutine):
    return asyncio.run(coroutine)


class Recorder:
    """A fake model: output = input * 2 (so each answer identifies its request), random run times."""

    def __init__(self, seed=0, fail_when=None):
        self.sizes, self.random, self.fail_when = [], random.Random(seed), fail_when

    async def __call__(self, batch):
        self.sizes.append(len(batch))
        await asyncio.sleep(self.random.uniform(0.0, 0.003))
        if self.fail_when is not None and self.fail_when(batch):
            raise RuntimeError("model failed")
        return batch * 2.0


def gate():
    """A fake model that holds every batch until `release` is set; `seen` records the batch sizes it got."""
    release, seen = asyncio.Event(), []

    async def blocked(batch):
        seen.append(len(batch))
        await release.wait()
        return batch

    return release, seen, blocked


def test_every_answer_goes_to_its_own_request_under_concurrency():
    async def scenario():
        model = Recorder()
        batcher = MicroBatcher("m", model, max_batch=8, max_wait_ms=1.0, max_queue=10_000)
        batcher.start()
        rng = np.random.default_rng(0)
        requests = [rng.normal(size=(int(rng.integers(1, 5)), 3)).astype(np.float32) for _ in range(400)]

        async def one(inputs):
            await asyncio.sleep(float(rng.uniform(0, 0.02)))
            return await batcher.submit(list(inputs))

        answers = await asyncio.gather(*(one(r) for r in requests))
        await batcher.close()
        return model, requests, answers

    model, requests, answers = run(scenario())
    for inputs, results in zip(requests, answers, strict=True):
        assert len(results) == len(inputs)
        for x, result in zip(inputs, results, strict=True):
            np.testing.assert_array_equal(result.output, x * 2.0)
            assert 1 <= result.batch_size <= 8 and result.queue_ms >= 0 and result.inference_ms > 0
    assert max(model.sizes) == 8 and sum(model.sizes) == sum(len(r) for r in requests)
    assert np.mean(model.sizes) > 2  # batches actually formed


def test_a_full_queue_refuses_the_whole_request_and_keeps_nothing_of_it():
    async def scenario():
        release, _, blocked = gate()
        batcher = MicroBatcher("m", blocked, max_batch=2, max_wait_ms=0.0, max_queue=4)
        batcher.start()
        first = asyncio.create_task(batcher.submit([np.zeros(1)] * 2))  # taken by the worker, which blocks
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(batcher.submit([np.ones(1)] * 3))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as refused:
            await batcher.submit([np.ones(1)] * 2, retry_after_s=3.0)
        assert batcher.queued == 3 and refused.value.retry_after_s == 3.0
        release.set()
        results = await asyncio.gather(first, queued)
        await batcher.close()
        return results

    first, queued = run(scenario())
    assert len(first) == 2 and len(queued) == 3


def test_a_failing_batch_fails_only_its_requests():
    async def scenario():
        batcher = MicroBatcher("m", Recorder(fail_when=lambda b: bool((b < 0).any())), max_batch=1, max_wait_ms=0.0, max_queue=100)
        batcher.start()
        good, bad = await asyncio.gather(batcher.submit([np.ones(2)]), batcher.submit([-np.ones(2)]), return_exceptions=True)
        after = await batcher.submit([np.ones(2)])
        await batcher.close()
        return good, bad, after

    good, bad, after = run(scenario())
    np.testing.assert_array_equal(good[0].output, np.full(2, 2.0))
    assert isinstance(bad, RuntimeError)
    assert len(after) == 1  # the worker survived the failure


def test_cancelled_requests_are_dropped_and_close_fails_what_is_left():
    async def scenario():
        release, seen, blocked = gate()
        batcher = MicroBatcher("m", blocked, max_batch=4, max_wait_ms=0.0, max_queue=100)
        batcher.start()
        running = asyncio.create_task(batcher.submit([np.zeros(1)]))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(batcher.submit([np.ones(1)] * 2))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client went away while queued
        kept = asyncio.create_task(batcher.submit([np.ones(1)]))
        await asyncio.sleep(0.01)
        release.set()
        await running
        await kept
        waiting = asyncio.create_task(batcher.submit([np.ones(1)]))
        release.clear()
        await asyncio.sleep(0.01)
        queued_late = asyncio.create_task(batcher.submit([np.ones(1)]))
        await asyncio.sleep(0.01)
        await batcher.close()
        results = await asyncio.gather(waiting, queued_late, return_exceptions=True)
        return seen, results

    seen, results = run(scenario())
    assert seen[:2] == [1, 1]  # the cancelled request's two images never ran
    assert all(isinstance(r, (BatcherClosed, asyncio.CancelledError)) for r in results)


def test_expected_time_counts_the_queue_ahead():
    async def scenario():
        release, _, blocked = gate()
        batcher = MicroBatcher("m", blocked, max_batch=4, max_wait_ms=2.0, max_queue=100)
        service = {1: 1.0, 2: 1.5, 3: 2.0, 4: 2.5}.get
        idle = batcher.expected_ms(service)
        batcher.start()
        running = asyncio.create_task(batcher.submit([np.zeros(1)] * 4))
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(batcher.submit([np.zeros(1)] * 5))
        await asyncio.sleep(0.001)
        busy = batcher.expected_ms(service)
        release.set()
        await asyncio.gather(running, queued)
        await batcher.close()
        return idle, busy

    idle, busy = run(scenario())
    assert idle == pytest.approx(1.0 + 2.0)  # its own batch of one plus the wait for company
    # running batch of 4 half done (1.25) + one full batch ahead (2.5) + its own batch of 2 (1.5)
    assert busy == pytest.approx(1.25 + 2.5 + 1.5)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        MicroBatcher("m", Recorder(), max_batch=0, max_wait_ms=0, max_queue=1)
