"""The Triton backend: every batch becomes one inference request to a Triton Inference Server.

Triton holds the models (the repository's config.pbtxt files), so start() only waits until the server
and every member are ready. A background poll then watches the server's health and reads its
statistics, because Triton queues requests on its own (dynamic batching) and the router must add that
queue time to its expected latencies. A failed request marks the backend unhealthy at once (the app
answers 503); the next poll that finds Triton ready again restores it. Triton's queue policy refusing a
request (its queue full, or a queue timeout) is the load, not a failure: that request alone is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import numpy as np

from effx_serve.core.errors import UserError
from effx_serve.repository import triton_config
from effx_serve.serve.backends.base import BackendLate, BackendUnavailable
from effx_serve.serve.catalog import Member
from effx_serve.serve.errors import Overloaded

PROTOCOLS = ("http", "grpc")
CALL_TIMEOUT_S = 5.0  # health and statistics calls: a hung server must not stall the poll
QUEUE_FULL = "Exceeds maximum queue size"  # Triton's answer when a model's queue is at its max_queue_size (gRPC: UNAVAILABLE)
MAX_RECONNECT_BACKOFF_MS = 1000  # gRPC: retry a lost server soon, so recovery is seen within a poll or two


class TritonBackend:
    kind = "triton"
    on_host_cpu = False  # its own device: a Triton server (its queue time is read from its statistics)

    def __init__(self, url: str, protocol: str = "http", runtime: str = "onnxruntime", ready_timeout_s: float = 60,
                 lanes: int = 4, poll_interval_s: float = 1.0):
        if protocol not in PROTOCOLS:
            raise UserError(f"unknown Triton protocol '{protocol}'; use one of: {', '.join(PROTOCOLS)}")
        if "://" in url:
            raise UserError(f"give the Triton URL as host:port, without a scheme, not '{url}'")
        if ready_timeout_s <= 0 or poll_interval_s <= 0 or lanes < 1:
            raise UserError("ready_timeout_s and poll_interval_s must be > 0 and lanes >= 1")
        self.url, self.protocol, self.runtime = url, protocol, runtime
        self.ready_timeout_s, self.lanes, self.poll_interval_s = ready_timeout_s, lanes, poll_interval_s
        self._client = None
        self._module = None  # tritonclient.http or tritonclient.grpc: InferInput and InferRequestedOutput
        self._members: list[Member] = []
        self._problem: str | None = "not started"
        self._failures = 0  # counts failed requests, so a poll begun before a failure does not clear it
        self._stats: dict[str, tuple[int, int]] = {}  # member -> (queue count, queue ns) at the last poll
        self._queue_ms: dict[str, float] = {}
        self._poll: asyncio.Task | None = None

    def _connect(self):
        # The clients bind to the running event loop, so they are made in start(), not in __init__.
        if self.protocol == "http":
            import tritonclient.http as module
            import tritonclient.http.aio as aio

            return module, aio.InferenceServerClient(self.url)
        import tritonclient.grpc as module
        import tritonclient.grpc.aio as aio

        keepalive = module.KeepAliveOptions()
        options = [("grpc.max_send_message_length", module.MAX_GRPC_MESSAGE_SIZE),
                   ("grpc.max_receive_message_length", module.MAX_GRPC_MESSAGE_SIZE),
                   ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms), ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
                   ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
                   ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
                   ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS)]  # the client's defaults, but for the backoff
        return module, aio.InferenceServerClient(self.url, channel_args=options)

    @staticmethod
    def _cause(error: BaseException) -> str:
        """The cause in a few words: the OS error of a refused connection, Triton's message, or the exception."""
        if isinstance(error, asyncio.TimeoutError):
            return "no answer in time"
        os_error = getattr(error, "os_error", None)  # aiohttp's connection errors wrap the OSError
        if isinstance(error, ConnectionRefusedError) or isinstance(os_error, ConnectionRefusedError):
            return "connection refused"
        message = error.message() if callable(getattr(error, "message", None)) else str(error)
        return message or type(error).__name__

    @staticmethod
    def _unreachable(error: BaseException) -> bool:
        """A connection that failed (rather than a server that answered with an error)."""
        if isinstance(error, (OSError, asyncio.TimeoutError)):  # aiohttp's connection errors are OSErrors
            return True
        status = error.status() if callable(getattr(error, "status", None)) else None
        return status in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")

    async def _call(self, coroutine):
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that arrives as its call
        # completes, and the poller, cancelled by close(), would then run (and close() wait) forever.
        async with asyncio.timeout(CALL_TIMEOUT_S):
            return await coroutine

    async def _not_ready(self) -> str | None:
        """None when the server and every member are ready, else what is not."""
        if not await self._call(self._client.is_server_ready()):
            return "the server is not ready"
        for member in self._members:
            if not await self._call(self._client.is_model_ready(member.name)):
                return f"model {member.name} is not ready"
        return None

    async def start(self, members: list[Member]) -> None:
        self._members = list(members)
        self._module, self._client = self._connect()
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            try:
                cause = await self._not_ready()
                if cause is None:
                    await self._read_statistics()  # the baseline the first poll's deltas start from
                    break
            except Exception as error:  # noqa: BLE001 - any failure to answer means not ready yet
                cause = self._cause(error)
            if time.monotonic() >= deadline:
                await self.close()
                raise UserError(f"Triton at {self.url} was not ready after {self.ready_timeout_s:g} s: {cause}")
            await asyncio.sleep(min(0.25, self.poll_interval_s))
        self._problem = None
        self._poll = asyncio.create_task(self._watch(), name=f"triton-poll-{self.url}")

    async def _read_statistics(self) -> None:
        for member in self._members:
            if self.protocol == "grpc":
                stats = await self._call(self._client.get_inference_statistics(member.name, as_json=True))
            else:
                stats = await self._call(self._client.get_inference_statistics(member.name))
            count = ns = 0
            for version in stats.get("model_stats", []):  # gRPC's JSON writes int64 as strings and leaves zeros out
                queue = version.get("inference_stats", {}).get("queue", {})
                count, ns = count + int(queue.get("count", 0)), ns + int(queue.get("ns", 0))
            last = self._stats.get(member.name)
            if last is not None:
                new = count - last[0]
                self._queue_ms[member.name] = (ns - last[1]) / new / 1e6 if new > 0 else 0.0
            self._stats[member.name] = (count, ns)

    async def _watch(self) -> None:
        while self._poll is not None:  # close() clears it: the loop ends even if a cancellation were lost
            await asyncio.sleep(self.poll_interval_s)
            failures = self._failures
            try:
                problem = None if await self._call(self._client.is_server_ready()) else f"Triton at {self.url} is not ready"
                if problem is None:
                    await self._read_statistics()
            except Exception as error:  # noqa: BLE001 - whatever the cause, the server cannot serve now
                problem = f"Triton at {self.url} is unreachable: {self._cause(error)}"
            if problem is not None or failures == self._failures:
                self._problem = problem

    async def infer(self, member: Member, batch: np.ndarray, deadline: float = math.inf) -> np.ndarray:
        if self._client is None:
            raise BackendUnavailable(f"the Triton backend ({self.url}) is not started")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        tensor = self._module.InferInput(member.input_name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        # A request with a hard deadline goes first (priority 1) and may wait in Triton's queue only for the time it has left.
        timeout_us = max(1, int((deadline - time.monotonic()) * 1e6)) if math.isfinite(deadline) else None
        try:
            result = await self._client.infer(member.name, [tensor], outputs=[self._module.InferRequestedOutput(member.output_name)],
                                              priority=1 if timeout_us else 2, timeout=timeout_us)
            logits = result.as_numpy(member.output_name)
            if logits is None:
                raise ValueError(f"the answer has no output {member.output_name}")
        except Exception as error:  # noqa: BLE001 - connection, protocol and server errors all mean Triton cannot serve
            # Triton's queue policy at work is the load, not a failure: the backend stays healthy for every other request.
            if _timed_out(error):
                if timeout_us is not None:
                    raise BackendLate(f"Triton dropped {member.name}'s batch: its deadline passed in the queue") from error
                raise Overloaded(f"Triton dropped {member.name}'s batch after its default queue timeout "
                                 f"({triton_config.DEFAULT_TIMEOUT_US / 1e6:g} s): it is overloaded; retry later", 1.0) from error
            if QUEUE_FULL in self._cause(error):
                raise Overloaded(f"Triton's queue for {member.name} is full ({triton_config.MAX_QUEUE_SIZE} requests); retry later", 1.0) from error
            self._failures += 1
            self._problem = f"Triton at {self.url} {'is unreachable' if self._unreachable(error) else 'failed'}: {self._cause(error)}"
            raise BackendUnavailable(f"Triton at {self.url} could not run {member.name}: {self._cause(error)}") from error
        return logits

    def problem(self) -> str | None:
        return self._problem

    def queue_delay_ms(self, member: Member) -> float:
        return self._queue_ms.get(member.name, 0.0)

    def describe(self) -> dict:
        return {"kind": self.kind, "url": self.url, "protocol": self.protocol, "runtime": self.runtime,
                "healthy": self._problem is None, "problem": self._problem, "lanes": self.lanes}

    async def close(self) -> None:
        if self._poll is not None:
            poll, self._poll = self._poll, None
            poll.cancel()
            await asyncio.wait({poll}, timeout=CALL_TIMEOUT_S + self.poll_interval_s)
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.close()
        self._problem = "not started"


def _timed_out(error: BaseException) -> bool:
    """Triton's answer to a request that timed out in its queue (the queue policy's REJECT), over HTTP or gRPC."""
    message = (error.message() if callable(getattr(error, "message", None)) else str(error)).lower()
    return "timeout" in message or "timed out" in message or "deadline" in message
