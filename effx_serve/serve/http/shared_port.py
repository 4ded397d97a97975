"""A worker's share of the port (`serve --workers N`): uvicorn taking one connection at a time from the socket every
worker shares, and leaving it to a worker that holds fewer.

uvloop (libuv) accepts every connection waiting when the shared socket becomes readable, so the worker whose event
loop wakes first takes a whole burst of them, and a keep-alive client's connections stay where they landed. With
two workers on 2 cores, a load generator opening its 8 or 32 connections at once sometimes left one worker with most
of them and the machine at 1.3 of its cores (docs/serving-measurements.md). Here a worker takes one connection per turn of its
event loop, and only when no other worker holds fewer open connections (`workers.ConnectionCounts`); else it waits
DEFER_S for that one to take it, then takes it itself (that worker may be stuck or busy for longer). A worker that cannot
serve now (its start failed, and it waits for a mended repository) leaves new connections to the others while one of them
takes connections, instead of answering 503 to clients another worker could serve.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

import uvicorn

from effx_serve.serve.workers import ConnectionCounts

log = logging.getLogger(__name__)
PAUSE_S = 0.1  # after an accept failure other than "another worker took it" (too many open files): no busy loop
DEFER_S = 0.002  # how long a worker holding more connections than another leaves a new one to it
ASIDE_S = 0.2  # how often a worker standing aside (it cannot serve) looks again


class SharedPortServer(uvicorn.Server):
    """uvicorn on `listener`, a listening socket other processes accept from too."""

    def __init__(self, config: uvicorn.Config, listener: socket.socket, counts: ConnectionCounts | None = None,
                 can_serve: Callable[[], bool] = lambda: True):
        super().__init__(config)
        self.listener, self.counts, self.can_serve = listener, counts, can_serve
        self._deferred = False  # the last turn left a connection to a worker holding fewer: take the next one regardless
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the app's startup (its members loaded and warm) first, and no listener of uvicorn's
        if not self.started:
            return
        self._loop = asyncio.get_running_loop()
        self.listener.setblocking(False)
        if self.counts is not None:
            self.counts.set(0)
        self._loop.add_reader(self.listener.fileno(), self._take_one)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.listener.fileno())  # the other workers go on taking connections
            if self.counts is not None:
                self.counts.set(ConnectionCounts.ABSENT)
        self.listener.close()  # once every process has, new connections are refused rather than reset in a backlog
        await super().shutdown(sockets)

    def _protocol(self) -> asyncio.Protocol:
        # As uvicorn's startup makes its protocols (the same class, state and app state), counted while open.
        protocol = self.config.http_protocol_class(config=self.config, server_state=self.server_state, app_state=self.lifespan.state)
        if self.counts is not None:
            self.counts.add(1)
            lost = protocol.connection_lost

            def connection_lost(error: Exception | None) -> None:
                self.counts.add(-1)
                lost(error)

            protocol.connection_lost = connection_lost
        return protocol

    def _take_one(self) -> None:
        if self.counts is not None:
            aside = not self.can_serve() and self.counts.another_taking()
            self.counts.stand_aside(aside)
            if aside:
                self._loop.remove_reader(self.listener.fileno())
                self._loop.call_later(ASIDE_S, self._resume)
                return
        if self.counts is not None and not self._deferred and self.counts.more_than_another():
            self._deferred = True
            self._loop.remove_reader(self.listener.fileno())
            self._loop.call_later(DEFER_S, self._resume)
            return
        self._deferred = False
        try:
            connection, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return  # another worker took it
        except OSError as error:
            log.warning("could not accept a connection (%s); trying again in %.1f s", error.strerror or error, PAUSE_S)
            self._loop.remove_reader(self.listener.fileno())
            self._loop.call_later(PAUSE_S, self._resume)
            return
        connection.setblocking(False)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = self._loop.create_task(self._connect(connection))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    def _resume(self) -> None:
        if not self.should_exit:
            self._loop.add_reader(self.listener.fileno(), self._take_one)

    async def _connect(self, connection: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocol, connection)
        except OSError:  # the client went away before its transport was made
            connection.close()
