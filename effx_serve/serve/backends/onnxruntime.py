"""The embedded backend: every member in an ONNX Runtime session of this process, batches on a thread pool."""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort

from effx_serve.core.errors import UserError
from effx_serve.perf.session import onnxruntime_session
from effx_serve.serve.backends.base import BackendUnavailable, ThreadSettings
from effx_serve.serve.catalog import Member


def onnxruntime_runtime(hardware_class: str) -> tuple[str, list[str]]:
    """The runtime name and ONNX Runtime providers used on this hardware class with the installed onnxruntime."""
    available = ort.get_available_providers()
    if hardware_class == "gpu" and "CUDAExecutionProvider" in available:
        return "onnxruntime-cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return "onnxruntime", ["CPUExecutionProvider"]


GPU_LANES = 2  # batches in flight on one GPU: one runs while the next one's input is copied


class OnnxRuntimeBackend:
    kind = "onnxruntime"

    def __init__(self, hardware_class: str, threads: ThreadSettings | None = None):
        self.runtime, self._providers = onnxruntime_runtime(hardware_class)
        self.threads = threads or ThreadSettings.fit()
        self.on_host_cpu = self.runtime == "onnxruntime"
        self.lanes = self.threads.concurrent_batches if self.on_host_cpu else GPU_LANES
        self._executor: ThreadPoolExecutor | None = None  # made in start(): a backend built only for session() holds no threads
        self._sessions: dict[str, object] = {}
        self._loaded = False

    def session(self, member: Member):
        """A new ONNX Runtime session of `member` with this backend's options (not warmed up)."""
        session = onnxruntime_session(member.model_path, self._providers, self.threads.intra_op)
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
        self._executor = self._executor or ThreadPoolExecutor(self.lanes, thread_name_prefix="onnxruntime")
        loop = asyncio.get_running_loop()
        for member in members:
            await loop.run_in_executor(self._executor, self._load, member)
        self._loaded = True

    async def infer(self, member: Member, batch: np.ndarray, deadline: float = math.inf) -> np.ndarray:
        """The logits of `batch` (the deadline is not used: a batch that started here runs to its end)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.run_now, member, batch)

    def run_now(self, member: Member, batch: np.ndarray) -> np.ndarray:
        """The logits of `batch`, computed in the calling thread (the device scheduler's lanes are threads)."""
        session = self._sessions.get(member.name)
        if session is None:
            raise BackendUnavailable(f"member {member.name} is not loaded yet")
        (logits,) = session.run([member.output_name], {member.input_name: batch})
        return logits

    def problem(self) -> str | None:
        return None if self._loaded else "loading and warming up the models"

    def queue_delay_ms(self, member: Member) -> float:
        return 0.0

    def describe(self) -> dict:
        return {"kind": self.kind, "runtime": self.runtime, "providers": self._providers,
                "intra_op_threads": self.threads.intra_op, "lanes": self.lanes}

    async def close(self) -> None:
        self._sessions.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
