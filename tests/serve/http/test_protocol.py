"""The HTTP connection's limits on a request's head: 431 and closed before the parser has stored much, whatever
the packets; normal requests, pipelined ones and bodies of any size pass."""

import asyncio
import socket
import threading
import time

import pytest
import uvloop
from uvicorn.config import Config
from uvicorn.server import ServerState

from effx_serve.serve.http.protocol import LimitedHttpToolsProtocol


class Transport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.written, self.closed = b"", False

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}.get(name, default)

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


async def _app(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _exchange(packets, pause_s=0.01, **limits):
    async def run():
        protocol = LimitedHttpToolsProtocol(Config(app=_app, log_level="warning"), ServerState(), {})
        for name, value in limits.items():
            setattr(protocol, name, value)
        transport = Transport()
        protocol.connection_made(transport)
        for packet in packets:
            if transport.closed:
                break
            protocol.data_received(packet)
            await asyncio.sleep(pause_s)
        protocol.connection_lost(None)
        return transport

    return asyncio.run(run())


def _request(headers=b"", body=b"abc"):
    return b"POST /echo HTTP/1.1\r\nhost: x\r\n" + headers + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def test_a_normal_request_with_a_large_body_passes():
    body = b"x" * 200_000  # far above the head limit, in the same packet as the head
    transport = _exchange([_request(body=body)])
    assert transport.written.startswith(b"HTTP/1.1 200") and transport.written.endswith(body)


def test_pipelined_requests_each_get_their_own_head_budget():
    one = _request(headers=b"x-pad: " + b"p" * 40_000 + b"\r\n")
    transport = _exchange([one, one, one])  # 3 x 40 kB heads on one connection: each under the 64 kB limit
    assert transport.written.count(b"HTTP/1.1 200") == 3


def test_a_body_after_a_pipelined_request_is_not_counted_as_its_head():
    # The first packet holds a whole request, then the next one's head and the start of its 200 kB body; the rest of
    # that body follows in pieces. None of it is head: it was answered 431 while the first request's end reset the count.
    second = _request(body=b"z" * 200_000)
    start = _request() + second[:30_000]
    rest = [second[index:index + 8192] for index in range(30_000, len(second), 8192)]
    transport = _exchange([start] + rest)
    assert transport.written.count(b"HTTP/1.1 200") == 2 and b"431" not in transport.written


def test_a_pipelined_heads_blank_line_split_between_reads_still_ends_it():
    second = _request(body=b"z" * 200_000)
    split = second.index(b"\r\n\r\n") + 3  # the first read ends inside the blank line; the body follows whole
    transport = _exchange([_request() + second[:split], second[split:]])
    assert transport.written.count(b"HTTP/1.1 200") == 2 and b"431" not in transport.written


def test_an_oversized_head_pipelined_behind_a_request_is_431():
    # The endless header begins in the packet that ends the first request, and goes on in later packets.
    transport = _exchange([_request() + b"POST /echo HTTP/1.1\r\nx-big: " + b"a" * 4096] + [b"a" * 4096] * 30)
    assert transport.written.startswith(b"HTTP/1.1 200") and transport.written.count(b"HTTP/1.1 431") == 1 and transport.closed


def test_an_oversized_head_pipelined_whole_in_one_packet_is_431():
    transport = _exchange([_request() + _request(headers=b"x-big: " + b"a" * 100_000 + b"\r\n")])
    assert transport.written.count(b"HTTP/1.1 200") == 1 and transport.written.count(b"HTTP/1.1 431") == 1 and transport.closed


@pytest.mark.parametrize("packets", [
    [_request(headers=b"x-big: " + b"a" * 100_000 + b"\r\n")],  # one packet
    [b"POST /echo HTTP/1.1\r\nx-big: "] + [b"a" * 4096] * 30,  # an endless header, 4 kB at a time, never finished
    [b"GET /" + b"u" * 70_000],  # an endless URL
])
def test_an_oversized_head_is_431_and_closed_before_it_is_parsed_whole(packets):
    transport = _exchange(packets)
    assert transport.written.startswith(b"HTTP/1.1 431") and b"65536 bytes" in transport.written and transport.closed


def test_too_many_headers_is_431():
    headers = b"".join(b"x-%d: 1\r\n" % index for index in range(150))
    transport = _exchange([_request(headers=headers)])
    assert transport.written.startswith(b"HTTP/1.1 431") and b"100 headers" in transport.written and transport.closed


def test_the_blank_line_split_across_packets_still_ends_the_head():
    request = _request(body=b"y" * 100_000)
    cut = request.index(b"\r\n\r\n") + 2
    transport = _exchange([request[:cut], request[cut:]])
    assert transport.written.startswith(b"HTTP/1.1 200")


def test_a_head_that_trickles_in_is_408_and_closed():
    transport = _exchange([b"POST /echo HTTP/1.1\r\n", b"x-a: 1\r\n", b"x-b: 2\r\n", b"x-c: 3\r\n"], 0.05, head_timeout_s=0.08)
    assert transport.written.startswith(b"HTTP/1.1 408") and b"within 0.08 s" in transport.written and transport.closed


def test_the_head_timer_starts_with_a_head_not_with_an_idle_connection():
    # Each head arrives at once; the pauses between requests on the kept-alive connection are longer than the limit.
    transport = _exchange([_request(), _request()], 0.15, head_timeout_s=0.1)
    assert transport.written.count(b"HTTP/1.1 200") == 2 and b"408" not in transport.written


def test_a_connection_that_never_sends_a_byte_closes_after_the_keep_alive():
    async def run():
        config = Config(app=_app, log_level="warning", timeout_keep_alive=0.1)
        silent, talking = Transport(), Transport()
        LimitedHttpToolsProtocol(config, ServerState(), {}).connection_made(silent)
        protocol = LimitedHttpToolsProtocol(config, ServerState(), {})
        protocol.connection_made(talking)
        protocol.data_received(b"POST /echo HTTP/1.1\r\nhost: x\r\n")  # a head on its way: the head timer's, not this
        await asyncio.sleep(0.3)
        return silent.closed, talking.closed

    assert asyncio.run(run()) == (True, False)


class _Stall(asyncio.Protocol):
    """A connection whose bytes hold the event loop for 0.3 s while it reads them, as a busy server's reads do."""

    held = threading.Event()

    def data_received(self, data):
        self.held.set()
        time.sleep(0.3)


def test_a_request_waiting_unread_when_the_keep_alive_expires_is_answered_not_dropped():
    # Under load the event loop reads a socket milliseconds after its bytes arrive. When a kept-alive connection's
    # timer falls due in that gap, uvloop runs the due timers before it next reads: closing then dropped the request
    # unanswered (the client saw "connection closed"). Here the loop is held busy past the timer while a request arrives.
    loop = uvloop.new_event_loop()
    config = Config(app=_app, log_level="warning", timeout_keep_alive=0.05)
    server = loop.run_until_complete(loop.create_server(lambda: LimitedHttpToolsProtocol(config, ServerState(), {}), "127.0.0.1", 0))
    stall = loop.run_until_complete(loop.create_server(_Stall, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(server.sockets[0].getsockname(), timeout=5) as client, \
                socket.create_connection(stall.sockets[0].getsockname(), timeout=5) as staller:
            reader = client.makefile("rb")
            for index in range(3):
                _Stall.held.clear()
                staller.sendall(b"x")  # the loop busy for 0.3 s from now; the kept-alive timer falls due meanwhile
                assert _Stall.held.wait(5)
                client.sendall(_request(body=b"n%d" % index))
                assert reader.readline().startswith(b"HTTP/1.1 200"), f"request {index} was dropped"
                while reader.readline() != b"\r\n":
                    pass
                assert reader.read(2) == b"n%d" % index
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        server.close()
        stall.close()
        loop.close()
