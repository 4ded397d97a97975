"""The HTTP/1.1 connection: uvicorn's httptools protocol with limits on a request's head, enforced as its bytes arrive.

The parser keeps a header (and uvicorn the URL) by appending each piece that arrives, so the cost of an endless
header grows with the square of its size, on the event loop; a 48 MB header took 5 s of CPU. Here the bytes
before the blank line that ends a head are counted as they arrive, and the header lines when parsed: past either
limit the client gets 431 and the connection closes, before the parser has stored much. Where a head begins is
the parser's to say (a read may end one request and begin the next): a head that begins inside a read is counted
from what the parser hands over, and every read that begins inside a head is counted before it is parsed. A head must also arrive
whole within a time limit from its first byte (408 and closed), so clients trickling headers cannot hold
connections open for ever.

A new connection that sends nothing is idle too: it closes after the same keep-alive time, so silent connections
cannot pile up until the server runs out of file descriptors. An idle kept-alive connection is closed when its timer
falls due, unless a request's bytes are already waiting in
its socket: a busy event loop reads milliseconds after they arrive, and uvloop runs due timers before it next reads,
so closing then dropped a request unanswered (the client saw "connection closed", a few per minute at twice the
capacity, more the shorter `--keep-alive-s`).
"""

from __future__ import annotations

import json
import select

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # request line and headers; browsers and proxies stay well under it
MAX_HEADERS = 100
HEAD_TIMEOUT_S = 10.0  # from a head's first byte to its blank line: a client trickling its headers is cut off
_END_OF_HEAD = b"\r\n\r\n"
_STATUS_LINES = {408: b"HTTP/1.1 408 Request Timeout\r\n", 431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n"}


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = MAX_HEAD_BYTES
    max_headers = MAX_HEADERS
    head_timeout_s = HEAD_TIMEOUT_S

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes, self._tail, self._in_head, self._header_count = 0, b"", True, 0
        self._head_timer, self._head_began_in_read = None, False
        # uvicorn arms the keep-alive timer only after an answer; a connection's first bytes stop it (data_received).
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def data_received(self, data: bytes) -> None:
        self._head_began_in_read = False
        if self._in_head:  # this read begins inside a head (or before one): count it up to the head's end
            if self._head_timer is None:  # the head's first bytes: it has head_timeout_s to arrive whole
                self._head_timer = self.loop.call_later(self.head_timeout_s, self._refuse, f"the request's headers did not arrive within "
                                                        f"{self.head_timeout_s:g} s", 408)
            seen = self._tail + data  # the blank line may span two packets
            end = seen.find(_END_OF_HEAD)
            self._head_bytes += (len(data) if end < 0 else max(0, end + len(_END_OF_HEAD) - len(self._tail)))
            self._tail = seen[-3:]
            if self._head_bytes > self.max_head_bytes:
                return self._refuse(f"the request line and headers are more than {self.max_head_bytes} bytes")
        if not self.transport.is_closing():
            super().data_received(data)
            if self._head_began_in_read:  # the next read's scan needs this one's end: the blank line may span the two
                self._tail = data[-3:]

    def _count_parsed(self, size: int) -> None:
        """A head that began inside this read was not counted before parsing: count what the parser hands over."""
        if self._head_began_in_read:
            self._head_bytes += size
            if self._head_bytes > self.max_head_bytes:
                self._refuse(f"the request line and headers are more than {self.max_head_bytes} bytes")

    def on_url(self, url: bytes) -> None:
        self._count_parsed(len(url))
        if not self.transport.is_closing():
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_headers:
            return self._refuse(f"more than {self.max_headers} headers")
        self._count_parsed(len(name) + len(value) + 4)  # "name: value\r\n"
        if not self.transport.is_closing():
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        if self.transport.is_closing():  # refused while its headers were parsed: the app never sees it
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.transport.is_closing():
            return
        super().on_message_complete()
        # The next request on this connection; its head may begin in the rest of this read.
        self._head_bytes, self._tail, self._in_head, self._head_began_in_read = 0, b"", True, True

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing() and _unread(self.transport):  # read it: data_received stops this timer
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
            return
        super().timeout_keep_alive_handler()

    def _refuse(self, why: str, status: int = 431) -> None:
        self._stop_head_timer()
        if self.transport.is_closing():
            return
        body = json.dumps({"detail": f"{why}; send a smaller request" if status == 431 else why}).encode()
        self.transport.write(_STATUS_LINES[status] + b"content-type: application/json\r\nconnection: close\r\n"
                             b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.transport.close()


def _unread(transport) -> bool:
    """Whether the connection's socket has bytes (or its end) waiting to be read; False where there is no socket."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def limited_protocol(head_timeout_s: float = HEAD_TIMEOUT_S) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for uvicorn's `http` option, with this head timeout."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"head_timeout_s": head_timeout_s})
