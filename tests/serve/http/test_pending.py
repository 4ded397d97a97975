"""Before the first member exists the port answers (503 with Retry-After and what is building, 200 on /healthz), the
real app takes over with its lifespan once it is ready, a failed start is reported, and a shutdown while waiting
stops the wait."""

import asyncio
import threading
from contextlib import asynccontextmanager

import httpx2
from fastapi import FastAPI

from effx_serve.core.errors import UserError
from effx_serve.serve.http.pending import RETRY_AFTER_S, PendingApp


def real_app(events: list) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        events.append("open")
        yield
        events.append("close")

    app = FastAPI(lifespan=lifespan)

    @app.get("/v1/models")
    async def models():
        return {"members": ["b0"]}

    return app


async def _until(condition, seconds=5.0):
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


class Lifespan:
    """Drives an ASGI app's lifespan as a server would."""

    def __init__(self, app):
        self.inbox, self.sent = asyncio.Queue(), []
        self.task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, self.inbox.get, self._send))

    async def _send(self, message):
        self.sent.append(message["type"])

    async def start(self):
        await self.inbox.put({"type": "lifespan.startup"})
        await _until(lambda: "lifespan.startup.complete" in self.sent)

    async def stop(self):
        await self.inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(self.task, 5)
        assert self.sent[-1] == "lifespan.shutdown.complete"


async def _opened(start):
    """A PendingApp on `start`, its lifespan started; and the list its failures are reported to."""
    app, failures = PendingApp(start, "b0"), []
    app.on_failure = failures.append
    lifespan = Lifespan(app)
    await lifespan.start()
    return app, failures, lifespan


def test_answers_503_while_waiting_then_the_real_app_serves():
    async def scenario():
        ready, events = threading.Event(), []
        app = PendingApp(lambda stop: ready.wait(5) and real_app(events), "the demo build is training its first member (b0)")
        lifespan = Lifespan(app)
        await lifespan.start()
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://test") as client:
            waiting = await client.post("/v1/classify", content=b"\xff\xd8 not yet")
            assert waiting.status_code == 503 and waiting.headers["retry-after"] == str(RETRY_AFTER_S)
            assert "training its first member (b0)" in waiting.json()["detail"] and "retry later" in waiting.json()["detail"]
            live = await client.get("/healthz")
            assert live.status_code == 200 and live.json() == {"status": "live", "ready": False}
            ready.set()
            await _until(lambda: events == ["open"])  # the real app's lifespan ran when it took over
            served = await client.get("/v1/models")
            assert served.status_code == 200 and served.json() == {"members": ["b0"]}
        await lifespan.stop()
        assert events == ["open", "close"] and app.error is None

    asyncio.run(scenario())


def test_a_failed_start_is_kept_answered_and_reported():
    def start(stop):
        raise UserError("the demo build stopped (exit 3) before its first member was ready")

    async def scenario():
        app, failures, lifespan = await _opened(start)
        await _until(lambda: failures)
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://test") as client:
            answer = await client.get("/readyz")
        assert answer.status_code == 503 and "could not start: the demo build stopped (exit 3)" in answer.json()["detail"]
        await lifespan.stop()
        assert failures == [app.error] and isinstance(app.error, UserError)

    asyncio.run(scenario())


def test_a_shutdown_while_waiting_stops_the_wait_and_reports_nothing():
    stopped = []

    def start(stop):
        stopped.append(stop.wait(5))  # True: told to stop, well before the 5 s
        raise UserError("stopped before the demo build's first member was ready")

    async def scenario():
        app, failures, lifespan = await _opened(start)
        await lifespan.stop()
        await _until(lambda: stopped)
        assert stopped == [True] and failures == [] and app.error is None

    asyncio.run(scenario())
