"""Inference backends behind the router: what runs a batch of one member.

A backend loads every member, warms it up, runs float32 NCHW batches into logits, and says whether it
is healthy. The embedded ONNX Runtime backend (the default) runs in this process; the Triton backend
(backend_triton.py) sends the batches to a Triton Inference Server. Neither imports torch.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from effx_serve.catalog import Member
from effx_serve.errors import UserError

BACKENDS = ("onnxruntime", "triton")


class BackendUnavailable(Exception):
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


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadSettings:
    """ONNX Runtime threads fitted to the machine.

    Half the cores go to each session's intra-op pool and as many batches run at once as that leaves
    cores for, so inference never oversubscribes; decoding, HTTP and the event loop share the cores
    between batches. Spinning is off: on small machines a spinning pool steals the cores decoding needs.
    """

    intra_op: int
    concurrent_batches: int

    @classmethod
    def fit(cls, cpus: int | None = None) -> ThreadSettings:
        cpus = cpus or available_cpus()
        intra = max(1, min(8, cpus // 2))
        return cls(intra, max(1, cpus // intra))


def onnxruntime_runtime(hardware_class: str) -> tuple[str, list[str]]:
    """The runtime name and ONNX Runtime providers used on this hardware class with the installed onnxruntime."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if hardware_class == "gpu" and "CUDAExecutionProvider" in available:
        return "onnxruntime-cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return "onnxruntime", ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    kind = "onnxruntime"
    workers_per_member = 1

    def __init__(self, hardware_class: str, threads: ThreadSettings | None = None):
        self.runtime, self._providers = onnxruntime_runtime(hardware_class)
        self.threads = threads or ThreadSettings.fit()
        self._executor: ThreadPoolExecutor | None = None  # made in start(): a backend built only for session() holds no threads
        self._sessions: dict[str, object] = {}
        self._loaded = False

    def session(self, member: Member):
        """A new ONNX Runtime session of `member` with this backend's options (not warmed up)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads.intra_op
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(member.model_path), options, providers=self._providers)
        except Exception as error:  # noqa: BLE001 - ORT raises its own types for unreadable models
            raise UserError(f"{member.model_path} cannot be loaded by ONNX Runtime: {error}; run 'effx-serve check-repo'") from None
        names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if member.input_name not in names[0] or member.output_name not in names[1]:
            raise UserError(f"{member.model_path} has inputs {names[0]} and outputs {names[1]}, not the manifest's "
                            f"{member.input_name} -> {member.output_name}; rebuild the repository")
        return session

    def _load(self, member: Member) -> None:
        session = self.session(member)
        for batch in sorted({1, member.max_batch}):  # warm-up: first runs allocate, later ones are representative
            zeros = np.zeros((batch, 3, member.resolution, member.resolution), np.float32)
            session.run([member.output_name], {member.input_name: zeros})
        self._sessions[member.name] = session

    async def start(self, members: list[Member]) -> None:
        self._executor = self._executor or ThreadPoolExecutor(self.threads.concurrent_batches, thread_name_prefix="onnxruntime")
        loop = asyncio.get_running_loop()
        for member in members:
            await loop.run_in_executor(self._executor, self._load, member)
        self._loaded = True

    async def infer(self, member: Member, batch: np.ndarray) -> np.ndarray:
        session = self._sessions.get(member.name)
        if session is None:
            raise BackendUnavailable(f"member {member.name} is not loaded yet")
        loop = asyncio.get_running_loop()
        (logits,) = await loop.run_in_executor(self._executor, session.run, [member.output_name], {member.input_name: batch})
        return logits

    def problem(self) -> str | None:
        return None if self._loaded else "loading and warming up the models"

    def queue_delay_ms(self, member: Member) -> float:
        return 0.0

    def describe(self) -> dict:
        return {"kind": self.kind, "runtime": self.runtime, "providers": self._providers,
                "intra_op_threads": self.threads.intra_op, "concurrent_batches": self.threads.concurrent_batches}

    async def close(self) -> None:
        self._sessions.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
