"""What a backend is: the interface the dispatcher runs batches through, its error, and thread sizing.

A backend loads every member, warms it up, runs float32 NCHW batches into logits, and says whether it
is healthy. The embedded ONNX Runtime backend (backends.onnxruntime, the default) runs in this process;
the Triton backend (backends.triton) sends the batches to a Triton Inference Server. Neither imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from effx_serve.core.proc import available_cpus
from effx_serve.serve.catalog import Member
from effx_serve.serve.errors import Unavailable

BACKENDS = ("onnxruntime", "triton")


class BackendUnavailable(Unavailable):
    """The backend cannot serve now (not started, or its server is down); the message names the cause."""


class Backend(Protocol):
    kind: str  # onnxruntime | triton
    runtime: str  # the runtime name of the latency records that describe it
    workers_per_member: int  # batches of one member that may run at once

    async def start(self, members: list[Member]) -> None: ...

    async def infer(self, member: Member, batch: np.ndarray) -> np.ndarray: ...

    def problem(self) -> str | None:
        """None when healthy, else why not (for /readyz and 503 answers)."""

    def queue_delay_ms(self, member: Member) -> float:
        """Queueing the backend adds that the router cannot see (Triton's own queue); 0 in-process."""

    def describe(self) -> dict: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ThreadSettings:
    """ONNX Runtime threads fitted to the machine.

    Half the cores go to each session's intra-op pool and as many batches run at once as that leaves
    cores for, so inference never oversubscribes; decoding, HTTP and the event loop share the cores
    between batches.
    """

    intra_op: int
    concurrent_batches: int

    @classmethod
    def fit(cls, cpus: int | None = None) -> ThreadSettings:
        cpus = cpus or available_cpus()
        intra = max(1, min(8, cpus // 2))
        return cls(intra, max(1, cpus // intra))
