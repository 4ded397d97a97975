"""What a backend is: the interface the dispatcher runs batches through, its error, and thread sizing.

A backend loads every member, warms it up, runs float32 NCHW batches into logits, and says whether it
is healthy. The embedded ONNX Runtime backend (backends.onnxruntime, the default) runs in this process;
the Triton backend (backends.triton) sends the batches to a Triton Inference Server. Neither imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from effx_serve.core.proc import available_cpus
from effx_serve.perf.session import CPU_THREADS
from effx_serve.serve.catalog import Member
from effx_serve.serve.errors import Unavailable

BACKENDS = ("onnxruntime", "triton")


class BackendUnavailable(Unavailable):
    """The backend cannot serve now (not started, or its server is down); the message names the cause."""


class BackendLate(Exception):
    """A backend dropped a batch because its deadline passed on its side (Triton's queue timeout): not a failure."""


class Backend(Protocol):
    kind: str  # onnxruntime | triton
    runtime: str  # the runtime name of the latency records that describe it
    lanes: int  # batches that may run at once (the device scheduler's lanes)
    on_host_cpu: bool  # inference runs on the cores that decode images: one scheduler for both

    async def start(self, members: list[Member]) -> None: ...

    async def infer(self, member: Member, batch: np.ndarray, deadline: float = math.inf) -> np.ndarray:
        """The logits of `batch`; `deadline` (time.monotonic(), math.inf: none) is when its earliest hard request must have
        started to be answered in time: a backend with a queue of its own drops the batch rather than start it later."""

    # An in-process backend also offers run_now(member, batch) -> logits, the same in the calling thread: the device
    # scheduler's lane threads call it directly instead of going through the event loop.

    def problem(self) -> str | None:
        """None when healthy, else why not (for /readyz and 503 answers)."""

    def queue_delay_ms(self, member: Member) -> float:
        """Queueing the backend adds that the router cannot see (Triton's own queue); 0 in-process."""

    def describe(self) -> dict: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ThreadSettings:
    """ONNX Runtime threads on the host CPU: one intra-op thread per session, as the profiles are measured
    (perf.session.CPU_THREADS), and as many batches at once as there are cores. The device scheduler's lanes
    are those cores, shared by decoding and inference, so together they never oversubscribe them."""

    intra_op: int
    concurrent_batches: int

    @classmethod
    def fit(cls, cpus: int | None = None) -> ThreadSettings:
        return cls(CPU_THREADS, max(1, cpus or available_cpus()))
