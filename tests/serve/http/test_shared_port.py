"""A worker's share of the port: one connection taken per turn of its event loop, served as uvicorn serves its own, left
to the others while it cannot serve, and nothing taken once it shuts down."""

import errno
import os
import socket
import threading
import time

import httpx2
import uvicorn

from effx_serve.serve.http.protocol import limited_protocol
from effx_serve.serve.http.shared_port import ASIDE_S, DEFER_S, PAUSE_S, SharedPortServer
from effx_serve.serve.workers import ConnectionCounts


async def _hello(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


def _listener() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener


def _server(listener, counts: ConnectionCounts | None = None, can_serve=lambda: True) -> SharedPortServer:
    return SharedPortServer(uvicorn.Config(_hello, lifespan="off", log_level="warning", http=limited_protocol()), listener, counts,
                            can_serve)


def _counts(folder, workers: int = 2) -> list[ConnectionCounts]:
    """Each worker's view of the shared counts (two mappings of one file, as two processes have)."""
    ConnectionCounts.create(folder, workers)
    return [ConnectionCounts(folder, index) for index in range(workers)]


class _Loop:
    """What `_take_one` asks of its event loop, recorded."""

    def __init__(self) -> None:
        self.tasks, self.calls = [], []

    def create_task(self, coroutine):
        coroutine.close()  # not run: only counted
        self.tasks.append(coroutine)
        return _Task()

    def remove_reader(self, fd):
        self.calls.append(("remove_reader", fd))

    def add_reader(self, fd, callback):
        self.calls.append(("add_reader", fd))

    def call_later(self, delay, callback):
        self.calls.append(("call_later", delay))
        self.later = callback


class _Task:
    def add_done_callback(self, callback) -> None:
        pass


def test_one_connection_is_taken_per_turn_and_the_rest_wait_for_the_next_turn_or_another_worker():
    with _listener() as listener:
        server, loop = _server(listener), _Loop()
        server._loop = loop
        listener.setblocking(False)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        time.sleep(0.1)
        server._take_one()
        assert len(loop.tasks) == 1
        left = [listener.accept()[0] for _ in range(2)]  # two still waiting: another worker may take them
        server._take_one()  # none left: nothing taken, nothing raised
        assert len(loop.tasks) == 1
        for connection in (*clients, *left):
            connection.close()


def test_an_accept_failure_pauses_taking_connections_instead_of_spinning():
    class Exhausted:
        def fileno(self):
            return 99

        def accept(self):
            raise OSError(errno.EMFILE, "Too many open files")

    server, loop = _server(Exhausted()), _Loop()
    server._loop = loop
    server._take_one()
    assert loop.calls == [("remove_reader", 99), ("call_later", PAUSE_S)]
    loop.later()
    assert loop.calls[-1] == ("add_reader", 99)
    server.should_exit = True  # shutting down meanwhile: the pause does not start taking connections again
    loop.later()
    assert loop.calls[-1] == ("add_reader", 99) and len(loop.calls) == 3


def test_workers_see_each_others_open_connections_and_absent_ones_take_none(tmp_path):
    first, second, third = _counts(tmp_path, 3)
    assert not first.more_than_another()  # none takes connections yet
    first.set(0)
    second.set(0)
    first.add(2)
    assert first.more_than_another() and not second.more_than_another()
    second.set(ConnectionCounts.ABSENT)  # stopped (or dead: the supervisor marks it)
    assert not first.more_than_another() and third.more_than_another()


def test_a_worker_holding_more_connections_leaves_a_new_one_to_another_for_a_moment_then_takes_it(tmp_path):
    mine, other = _counts(tmp_path)
    mine.set(3)
    other.set(1)
    with _listener() as listener:
        server, loop = _server(listener, mine), _Loop()
        server._loop = loop
        listener.setblocking(False)
        client = socket.create_connection(listener.getsockname())
        time.sleep(0.1)
        server._take_one()  # the other worker holds fewer: left to it
        assert loop.tasks == [] and loop.calls == [("remove_reader", listener.fileno()), ("call_later", DEFER_S)]
        loop.later()
        server._take_one()  # it did not take it in time: taken here
        assert len(loop.tasks) == 1
        client.close()


def test_a_worker_that_cannot_serve_leaves_connections_to_one_that_takes_them_and_takes_them_when_none_does(tmp_path):
    mine, other = _counts(tmp_path)
    mine.set(0)
    other.set(0)
    ready = [False]  # its start failed: it waits for a mended repository, answering 503
    with _listener() as listener:
        server, loop = _server(listener, mine, lambda: ready[0]), _Loop()
        server._loop = loop
        listener.setblocking(False)
        client = socket.create_connection(listener.getsockname())
        time.sleep(0.1)
        server._take_one()  # the other worker takes connections: left to it, and marked so the other defers to it no more
        assert loop.tasks == [] and loop.calls == [("remove_reader", listener.fileno()), ("call_later", ASIDE_S)]
        assert not mine.taking() and not other.more_than_another() and not other.another_taking()
        mine.add(1)  # a connection it held from before closes meanwhile, and another opens: its count goes on
        assert mine.count() == ConnectionCounts.ABSENT + 1
        other.set(ConnectionCounts.ABSENT)  # the other worker died: a 503 naming the cause beats no answer
        loop.later()
        server._take_one()
        assert len(loop.tasks) == 1 and mine.taking() and mine.count() == 1  # the one it held (the new one counts once made)
        client.close()


def test_connections_taken_one_at_a_time_are_served_counted_and_shutdown_stops_taking_them(tmp_path):
    mine, other = _counts(tmp_path)
    with _listener() as listener:
        server = _server(socket.socket(fileno=os.dup(listener.fileno())), mine)  # this worker's copy of the shared socket
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        with httpx2.Client() as one, httpx2.Client() as two:
            assert [one.get(url).text, two.get(url).text, one.get(url).text] == ["hello"] * 3
            assert mine.count() == 2 and other.count(0) == 2  # two connections open, seen by the other worker too
        for _ in range(100):  # closed by the clients: counted down as the server sees them go
            if mine.count() == 0:
                break
            time.sleep(0.02)
        assert mine.count() == 0
        server.should_exit = True
        thread.join(10)
        assert not thread.is_alive()
        assert mine.count() == ConnectionCounts.ABSENT  # stopped: none is left to it any more
        assert server.listener.fileno() == -1  # its copy closed: once every worker's is, new connections are refused
        late = socket.create_connection(listener.getsockname())  # the other workers' copies still take it
        listener.setblocking(False)
        assert listener.accept()[0]
        late.close()
