"""The HTTP server before its app exists: while the demo build trains the first member, every request is answered
(503 with Retry-After, saying what is being built) instead of refused at the TCP level; then the real app takes over.

`PendingApp(start)` is an ASGI app. It completes the server's start at once, runs `start()` (blocking: it waits for
the first member and returns the real app) in a thread, enters that app's lifespan, and from then on hands it every
request. `/healthz` answers 200 throughout (the process is alive); everything else 503 until the switch. When
`start` fails, the error is kept (`error`): requests get it as their 503 detail and `on_failure` is called (the CLI
stops the server with it, then reports the error). At shutdown the wait is told to stop and the real app's lifespan is closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

log = logging.getLogger(__name__)
RETRY_AFTER_S = 10


class PendingApp:
    def __init__(self, start: Callable[[threading.Event], object], waiting_for: str) -> None:
        self._start, self._waiting_for = start, waiting_for
        self.on_failure: Callable[[BaseException], None] = lambda error: None
        self._stop = threading.Event()  # set at shutdown: `start` polls it and gives up
        self._app = None
        self._lifespan: AbstractAsyncContextManager | None = None
        self._error: BaseException | None = None
        self._since = time.monotonic()

    @property
    def error(self) -> BaseException | None:
        """Why the real app could not start (None while waiting, or once it serves)."""
        return self._error

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._serve_lifespan(receive, send)
        elif self._app is not None:
            await self._app(scope, receive, send)
        elif scope["type"] == "http":
            await self._answer_pending(scope, send)

    async def _serve_lifespan(self, receive: Callable[[], Awaitable[dict]], send) -> None:
        await receive()  # lifespan.startup
        switch = asyncio.create_task(self._switch())
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        self._stop.set()
        switch.cancel()
        try:
            await switch
        except asyncio.CancelledError:
            pass
        if self._lifespan is not None:
            await self._lifespan.__aexit__(None, None, None)
        await send({"type": "lifespan.shutdown.complete"})

    async def _switch(self) -> None:
        try:
            app = await asyncio.to_thread(self._start, self._stop)
            lifespan = app.router.lifespan_context(app)
            await lifespan.__aenter__()
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001 - kept for the 503s and handed to on_failure
            if not self._stop.is_set():
                self._error = error
                log.error("the server could not start: %s", error)
                self.on_failure(error)
            return
        self._lifespan, self._app = lifespan, app

    async def _answer_pending(self, scope, send) -> None:
        if scope["path"] == "/healthz":
            status, body, headers = 200, {"status": "live", "ready": False}, []
        else:
            waited = time.monotonic() - self._since
            detail = (f"the server could not start: {self._error}" if self._error is not None
                      else f"not ready: {self._waiting_for} ({waited:.0f} s so far); retry later")
            status, body, headers = 503, {"detail": detail}, [(b"retry-after", str(RETRY_AFTER_S).encode())]
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *headers]})
        await send({"type": "http.response.body", "body": payload})
