"""Decoding and inference on the event loop (`serve --execution inline`): every call runs at once in the calling thread,
in batches of the member's largest; a hard deadline that cannot be met is refused, not run; the server answers
through it, on the embedded backend only."""

import asyncio
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from effx_serve.core.errors import UserError
from effx_serve.serve.http.app import create_app
from effx_serve.serve.inline import InlineScheduler
from effx_serve.serve.scheduler import Late
from effx_serve.serve.settings import DispatchSettings, ServerSettings
from tests.helpers import JPEG, fake_member, image_bytes, make_server, post_jpeg, reference_logits, wait_ready

FAST = fake_member("fast", 0.5, {1: 2.0, 2: 3.0, 4: 5.0})


def service_ms(member, size):
    return member.latency.service_ms(size)


class Model:
    """Runs a batch in the calling thread: output = input * 2 (each answer names its input); records the thread and size."""

    def __init__(self):
        self.calls = []

    def __call__(self, member, batch):
        self.calls.append((threading.current_thread().name, len(batch)))
        return batch.reshape(len(batch), -1)[:, :1] * 2.0


def test_every_call_runs_at_once_in_the_calling_thread_in_batches_of_the_members_largest():
    model, observed = Model(), []
    inline = InlineScheduler(model, service_ms, on_batch=lambda member, size, ms: observed.append((member.name, size, ms)))

    async def scenario():
        results = await inline.run(FAST, [np.full(1, float(i)) for i in range(6)])
        value, batch = await inline.call_then_run(lambda: ("decoded", np.full(1, 7.0)), FAST)
        return results, value, await batch.result(), await inline.call(lambda: 5)

    results, value, (decoded,), called = asyncio.run(scenario())
    assert [float(r.output[0]) for r in results] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert [r.batch_size for r in results] == [4, 4, 4, 4, 2, 2] and all(r.queue_ms == 0.0 for r in results)
    assert value == "decoded" and float(decoded.output[0]) == 14.0 and called == 5
    assert [(name, size) for name, size, _ in observed] == [("fast", 4), ("fast", 2), ("fast", 1)]  # each batch observed
    assert {thread for thread, _ in model.calls} == {threading.current_thread().name}  # no lane: the caller's thread
    # Nothing ever waits here, so the expectations see no work ahead; a batch still costs what the profile says.
    assert inline.wait_ms(math.inf) == inline.work_ahead_ms(math.inf) == 0.0 and inline.queued("fast") == 0
    assert inline.cost_ms(FAST, 6) == service_ms(FAST, 4) + service_ms(FAST, 2)


def test_a_hard_deadline_that_cannot_be_met_is_refused_and_not_run():
    model = Model()
    inline = InlineScheduler(model, service_ms, after_ms=lambda: 0.5)
    decoded = []

    def decode():
        decoded.append(True)
        return "decoded", np.full(1, 1.0)

    async def scenario():
        soon = time.monotonic() + 0.002  # FAST's batch of one (2 ms) and the 0.5 ms after it do not fit
        with pytest.raises(Late):
            await inline.run(FAST, [np.full(1, 1.0)], soon, hard=True)
        with pytest.raises(Late):  # too late even before decoding: the decoding is skipped
            await inline.call_then_run(decode, FAST, soon, hard=True, skip_late=True)
        assert not decoded and not model.calls
        value, batch = await inline.call_then_run(decode, FAST, soon, hard=True)  # decoded, then refused as its batch would be late
        with pytest.raises(Late):
            await batch.result()
        assert value == "decoded" and decoded and not model.calls
        late_but_soft = await inline.run(FAST, [np.full(1, 1.0)], time.monotonic() - 1.0)  # no bound: it runs, late or not
        return late_but_soft

    (result,) = asyncio.run(scenario())
    assert float(result.output[0]) == 2.0 and len(model.calls) == 1


def test_inline_execution_is_a_known_setting_for_the_embedded_backend_only():
    with pytest.raises(ValueError, match="execution"):
        DispatchSettings(execution="threads")
    with pytest.raises(UserError, match="onnxruntime backend only"):
        ServerSettings(Path("."), backend="triton", dispatch=DispatchSettings(execution="inline"))


def test_the_server_answers_single_and_batch_requests_inline_without_lanes(served_repository):
    server = make_server(served_repository, dispatch=DispatchSettings(execution="inline"))
    with TestClient(create_app(server)) as client:
        wait_ready(client)
        assert isinstance(server.dispatcher.device, InlineScheduler)
        assert not [t for t in threading.enumerate() if "lane" in t.name]
        answer = post_jpeg(client, member="tiny-f-b1").json()
        assert answer["predictions"][0]["index"] == int(np.argmax(reference_logits(served_repository, "tiny-f-b1", JPEG)))
        assert answer["timing"]["queue_ms"] == 0.0 and answer["timing"]["inference_ms"] > 0 and answer["expected"]["wait_ms"] == 0.0
        files = [("images", (f"{i}.png", image_bytes("PNG", seed=i), "image/png")) for i in range(3)]
        batch = client.post("/v1/classify/batch", files=files)
        assert batch.status_code == 200 and len(batch.json()["results"]) == 3
        impossible = post_jpeg(client, max_latency_ms=0.01)  # no member makes it, even at rest
        assert impossible.status_code == 422 and "no member can meet" in impossible.json()["detail"]
