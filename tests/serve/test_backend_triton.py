"""The Triton backend against the real tritonserver that nvidia-pytriton ships, on a python-backend repository."""

import asyncio
import contextlib
import math
import time
from unittest import mock

import numpy as np
import pytest

from effx_serve.core import proc
from effx_serve.core.errors import UserError
from effx_serve.repository import manifest, triton_config, triton_local
from effx_serve.serve import catalog
from effx_serve.serve.backends.base import BackendLate, BackendUnavailable
from effx_serve.serve.backends.triton import TritonBackend
from effx_serve.serve.errors import Overloaded
from tests.helpers import build, measure_quickly, triton_or_skip


@pytest.fixture(scope="module")
def members(tiny_family, tmp_path_factory):
    """The members of a python-backend repository of the tiny family (the only backend the local tritonserver has)."""
    triton_or_skip()
    out = tmp_path_factory.mktemp("triton-repo") / "model_repository"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EFFX_CACHE_DIR", str(out.parent / "cache"))
        measure_quickly(mp)
        build(tiny_family, out, backend="python", batches=(1, 4))
    data = manifest.read(out)
    loaded = catalog.load(out, data["target_hardware"], "onnxruntime")
    return list(loaded.members.values())


@pytest.fixture(scope="module")
def triton(members):
    with triton_local.serve(members[0].model_path.parents[2]) as server:
        yield server


def expected_logits(member, batch):
    from effx_serve.perf.session import onnxruntime_session

    return onnxruntime_session(member.model_path, threads=1).run([member.output_name], {member.input_name: batch})[0]


def images(member, n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, member.resolution, member.resolution)).astype(np.float32)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_answers_as_onnxruntime_does(members, triton, protocol):
    url = triton.http_url if protocol == "http" else triton.grpc_url

    async def scenario():
        backend = TritonBackend(url, protocol, runtime="onnxruntime", ready_timeout_s=30, poll_interval_s=0.2)
        assert backend.problem() == "not started"
        await backend.start(members)
        try:
            assert backend.problem() is None
            for member in members:
                for n in (1, 3):
                    batch = images(member, n, seed=n)
                    got = await backend.infer(member, batch)
                    assert got.shape == (n, len(member.labels))
                    np.testing.assert_allclose(got, expected_logits(member, batch), rtol=1e-4, atol=1e-4)
            # Concurrent batches, as the device scheduler sends them (lanes at once).
            member = members[0]
            batches = [images(member, 2, seed=10 + i) for i in range(backend.lanes)]
            answers = await asyncio.gather(*(backend.infer(member, b) for b in batches))
            for batch, got in zip(batches, answers, strict=True):
                np.testing.assert_allclose(got, expected_logits(member, batch), rtol=1e-4, atol=1e-4)
            await asyncio.sleep(0.5)  # a few polls have read the statistics of those requests
            for member in members:
                delay = backend.queue_delay_ms(member)
                assert isinstance(delay, float) and math.isfinite(delay) and delay >= 0
            assert backend.describe() == {"kind": "triton", "url": url, "protocol": protocol, "runtime": "onnxruntime", "healthy": True,
                                          "problem": None, "lanes": 4}
        finally:
            await backend.close()
        assert backend.problem() == "not started"

    asyncio.run(scenario())


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_batch_whose_deadline_passes_in_tritons_queue_is_dropped_as_late_not_as_a_failure(members, triton, protocol):
    """The repository's queue policy lets the router set each request's timeout: one with no time left is rejected by
    Triton from its queue, the backend stays healthy, and the next request with time to spare (or none set) runs."""
    url = triton.http_url if protocol == "http" else triton.grpc_url
    member = members[0]

    async def scenario():
        backend = TritonBackend(url, protocol, runtime="onnxruntime", ready_timeout_s=30, poll_interval_s=0.2)
        await backend.start(members)
        try:
            batch = images(member, 2)
            with pytest.raises(BackendLate):
                # Sent with a 1 us budget: Triton holds it in its batching queue longer than that, then rejects it.
                await backend.infer(member, batch, time.monotonic() + 1e-6)
            assert backend.problem() is None
            np.testing.assert_allclose(await backend.infer(member, batch, time.monotonic() + 10.0), expected_logits(member, batch),
                                       rtol=1e-4, atol=1e-4)
            await backend.infer(member, batch)
        finally:
            await backend.close()

    asyncio.run(scenario())


def test_a_flood_beyond_tritons_queue_is_refused_for_the_load_and_the_backend_stays_up(members, triton):
    """More requests at once than a model's queue holds (gRPC sends them all): the ones beyond it are refused as the load
    (429 `limit`), as are any that outwait the default queue timeout on a slow machine; none marks the backend down."""
    member = members[-1]

    async def scenario():
        backend = TritonBackend(triton.grpc_url, "grpc", runtime="onnxruntime", ready_timeout_s=30, poll_interval_s=0.2)
        await backend.start(members)
        try:
            batch = images(member, 1)
            outcomes = await asyncio.gather(*(backend.infer(member, batch) for _ in range(2 * triton_config.MAX_QUEUE_SIZE)),
                                            return_exceptions=True)
            problem = backend.problem()
            after = await backend.infer(member, batch)
            return outcomes, problem, after
        finally:
            await backend.close()

    outcomes, problem, after = asyncio.run(scenario())
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(o, Overloaded) and o.reason == "limit" for o in refused), {type(o).__name__: str(o) for o in refused}
    assert any("queue for" in str(o) and "is full" in str(o) for o in refused)
    assert problem is None and after.shape == (1, len(member.labels))


class FakeClient:
    """Triton's client as the backend calls it: records each infer's keyword arguments, then raises `error` or answers."""

    def __init__(self, error=None):
        self.error, self.calls = error, []

    async def infer(self, *args, **kwargs):
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return mock.MagicMock(as_numpy=lambda name: np.zeros((1, 10), np.float32))


FAKE_MEMBER = mock.MagicMock(input_name="images", output_name="logits")
FAKE_MEMBER.name = "m"


def started_on(client):
    """A Triton backend as if started, its client `client` (nothing listens at its URL)."""
    backend = TritonBackend("127.0.0.1:1", "grpc", runtime="onnxruntime")
    backend._client, backend._module, backend._problem = client, mock.MagicMock(), None
    return backend


def test_a_bounded_batch_goes_first_with_its_time_as_tritons_timeout_and_an_unbounded_one_after_without():
    client = FakeClient()

    async def scenario():
        backend = started_on(client)
        await backend.infer(FAKE_MEMBER, np.zeros((1, 3, 8, 8), np.float32), time.monotonic() + 0.05)
        await backend.infer(FAKE_MEMBER, np.zeros((1, 3, 8, 8), np.float32))

    asyncio.run(scenario())
    (bounded, unbounded) = client.calls
    assert bounded["priority"] == 1 and 0 < bounded["timeout"] <= 50_000  # microseconds: the 50 ms it has left
    assert unbounded["priority"] == 2 and unbounded["timeout"] is None  # Triton's default queue timeout applies


@pytest.mark.parametrize("message", ["Exceeds maximum queue size", "Request timeout expired"])
def test_tritons_queue_policy_refusing_a_batch_without_a_bound_is_the_load_not_a_failure(message):
    """What a full queue or the default queue timeout answers (no per-request timeout set) is a 429 for that batch alone;
    any other error still marks the backend down."""

    async def outcome(error):
        backend = started_on(FakeClient(error))
        with pytest.raises(Exception) as raised:
            await backend.infer(FAKE_MEMBER, np.zeros((1, 3, 8, 8), np.float32))
        return raised.value, backend.problem()

    refused, problem = asyncio.run(outcome(RuntimeError(message)))
    assert isinstance(refused, Overloaded) and refused.reason == "limit" and problem is None
    failed, problem = asyncio.run(outcome(RuntimeError("model crashed")))
    assert isinstance(failed, BackendUnavailable) and "model crashed" in problem


def test_the_repository_configs_carry_the_routers_queue_policy(members):
    from effx_serve.repository import triton_config

    config = triton_config.parse((members[0].model_path.parents[1] / "config.pbtxt").read_text())
    batching = config.dynamic_batching
    assert batching.priority_levels == 2 and batching.default_priority_level == 2
    policy = batching.default_queue_policy
    assert policy.allow_timeout_override and policy.default_timeout_microseconds > 0 and policy.max_queue_size > 0
    assert policy.timeout_action == policy.REJECT


def test_queue_delay_is_read_from_triton_statistics(members, triton):
    """Many concurrent requests queue in Triton: the polled average is a finite, non-negative number of ms."""
    member = members[-1]

    async def scenario():
        backend = TritonBackend(triton.http_url, "http", runtime="onnxruntime", ready_timeout_s=30, poll_interval_s=0.2)
        await backend.start(members)
        try:
            assert backend.queue_delay_ms(member) == 0.0  # nothing seen yet
            # 12, not more: on a loaded 2-core machine 24 batches of 4 outlasted Triton's 5 s default queue timeout
            await asyncio.gather(*(backend.infer(member, images(member, 4, seed=i)) for i in range(12)))
            await asyncio.sleep(0.5)
            delay = backend.queue_delay_ms(member)
            assert math.isfinite(delay) and delay >= 0
            seen = backend._stats[member.name][0]  # the queue count the poll read covers the requests sent
            assert seen >= 12
        finally:
            await backend.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_nothing_listening_times_out_with_the_url(members, protocol):
    url = f"127.0.0.1:{proc.free_port()}"

    async def scenario():
        backend = TritonBackend(url, protocol, runtime="onnxruntime", ready_timeout_s=1.5)
        started = asyncio.get_running_loop().time()
        with pytest.raises(UserError, match=rf"Triton at {url} was not ready after 1.5 s: ") as caught:
            await backend.start(members)
        assert asyncio.get_running_loop().time() - started < 8
        assert backend.problem() == "not started"
        return str(caught.value)

    message = asyncio.run(scenario())
    if protocol == "http":
        assert message.endswith("connection refused")


def test_an_unknown_member_is_not_ready(members, triton):
    from dataclasses import replace

    ghost = replace(members[0], name="no-such-model")

    async def scenario():
        backend = TritonBackend(triton.http_url, "http", runtime="onnxruntime", ready_timeout_s=1)
        with pytest.raises(UserError, match="model no-such-model is not ready"):
            await backend.start([*members, ghost])

    asyncio.run(scenario())


def test_bad_arguments():
    with pytest.raises(UserError, match="unknown Triton protocol 'rest'"):
        TritonBackend("127.0.0.1:8000", "rest", runtime="onnxruntime")
    with pytest.raises(UserError, match="without a scheme"):
        TritonBackend("http://127.0.0.1:8000", "http", runtime="onnxruntime")
    with pytest.raises(UserError, match="must be > 0"):
        TritonBackend("127.0.0.1:8000", "http", runtime="onnxruntime", ready_timeout_s=0)

    async def before_start():
        backend = TritonBackend("127.0.0.1:8000", "grpc", runtime="onnxruntime")
        with pytest.raises(BackendUnavailable, match="not started"):
            await backend.infer(None, np.zeros((1, 3, 8, 8), np.float32))
        await backend.close()  # closing what never started is harmless

    asyncio.run(before_start())


async def _until(condition, timeout_s):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_stopped_then_back(members, monkeypatch, protocol):
    """Triton stops: requests fail with BackendUnavailable naming its URL and the backend reports a problem.
    A new tritonserver on the same ports (triton_local picks free ports; here it is handed the old ones): it recovers."""
    repository = members[0].model_path.parents[2]
    member = members[0]
    batch = images(member, 2)

    async def scenario():
        first_server = contextlib.ExitStack()  # closed midway: that is Triton stopping
        first = first_server.enter_context(triton_local.serve(repository))
        url = first.http_url if protocol == "http" else first.grpc_url
        backend = TritonBackend(url, protocol, runtime="onnxruntime", ready_timeout_s=30, poll_interval_s=0.2)
        try:
            await backend.start(members)
            await backend.infer(member, batch)
            first_server.close()
            with pytest.raises(BackendUnavailable, match=f"Triton at {url} could not run {member.name}: "):
                await backend.infer(member, batch)
            assert backend.problem() is not None and url in backend.problem()
            await asyncio.sleep(0.6)  # polls while Triton is down keep the problem
            assert backend.problem().startswith(f"Triton at {url} is unreachable: ")
            assert backend.describe()["healthy"] is False

            ports = iter([first.http_port, first.grpc_port, proc.free_port()])
            monkeypatch.setattr(proc, "free_port", lambda: next(ports))
            with triton_local.serve(repository):
                assert await _until(lambda: backend.problem() is None, 15), backend.problem()
                np.testing.assert_allclose(await backend.infer(member, batch), expected_logits(member, batch), rtol=1e-4, atol=1e-4)
        finally:
            first_server.close()
            await backend.close()

    asyncio.run(scenario())


def test_close_ends_the_poller_even_when_it_is_cancelled_as_a_poll_completes(members, triton):
    """close() cancels the statistics poller; a cancellation that lands as a poll's call completes must not be lost
    (asyncio.wait_for on Python 3.11 could swallow it, and close() then waited forever). Polling back to back makes
    that moment likely; every close() must return."""

    async def scenario():
        for _ in range(30):
            backend = TritonBackend(triton.http_url, "http", runtime="onnxruntime", ready_timeout_s=30, poll_interval_s=0.001)
            await backend.start(members)
            await asyncio.sleep(0.02)
            async with asyncio.timeout(10):
                await backend.close()
            assert backend.problem() == "not started"

    asyncio.run(scenario())
