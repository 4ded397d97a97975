"""Everything a running server holds, built from its settings: hardware, backend, catalog, dispatcher, metrics.

Built synchronously before the HTTP app starts, so a bad repository or setting ends the command with a
one-line message; loading and warming the models then runs in the background while /healthz already
answers and /readyz says what is still loading.
"""

from __future__ import annotations

import asyncio
import gc
import logging

from effx_serve.core.errors import UserError
from effx_serve.core.proc import trim_free_memory
from effx_serve.hardware.detect import DetectedHardware, detect
from effx_serve.hardware.ids import host_cpu_id
from effx_serve.serve import catalog as catalog_io
from effx_serve.serve.backends.base import Backend, ThreadSettings
from effx_serve.serve.backends.onnxruntime import OnnxRuntimeBackend
from effx_serve.serve.dispatch import Dispatcher
from effx_serve.serve.metrics import ServerMetrics
from effx_serve.serve.settings import ServerSettings

log = logging.getLogger(__name__)

RETRY_START_S = 5.0
TIDY_EVERY_S = 5.0  # how often an idle server gives free memory back to the OS


def make_backend(settings: ServerSettings, hardware: DetectedHardware) -> tuple[Backend, str, list[str]]:
    """The backend, the hardware id whose latency records describe it, and notes on what actually serves."""
    if settings.backend == "triton":
        from effx_serve.serve.backends.triton import TritonBackend

        runtime = "onnxruntime" if hardware.hw_class == "cpu" else "onnxruntime-tensorrt"
        backend = TritonBackend(settings.triton_url, settings.triton_protocol, runtime, ready_timeout_s=settings.triton_ready_timeout_s)
        return backend, hardware.id, []
    backend = OnnxRuntimeBackend(hardware.hw_class, ThreadSettings.fit(settings.dispatch.cpu_lanes))
    notes = []
    latency_hardware = hardware.id
    if hardware.hw_class != "cpu" and backend.runtime == "onnxruntime":
        latency_hardware = host_cpu_id()
        what = "neither ONNX Runtime nor Triton executes on a TPU" if hardware.hw_class == "tpu" else \
            "the installed onnxruntime has no CUDA provider (install onnxruntime-gpu)"
        notes.append(f"{hardware.id} detected, but {what}: the {hardware.hw_class} family is served by ONNX Runtime on the host CPU "
                     f"({latency_hardware}), with that CPU's latency records")
    return backend, latency_hardware, notes


class Server:
    """The state of one serving process (no globals: tests build as many as they like)."""

    def __init__(self, settings: ServerSettings, hardware: DetectedHardware | None = None, backend: Backend | None = None):
        self.settings = settings
        self.hardware = hardware or detect()
        if backend is None:
            backend, latency_hardware, notes = make_backend(settings, self.hardware)
        else:
            latency_hardware, notes = self.hardware.id, []
        self.backend = backend
        self.catalog = catalog_io.load(settings.repository, latency_hardware, backend.runtime, settings.family)
        self.notes = tuple(notes) + self.catalog.notes
        self.metrics = ServerMetrics()
        self.dispatcher = Dispatcher(self.catalog, backend, settings.dispatch, self.metrics,
                                     {"max_pixels": settings.max_pixels, "formats": settings.formats, "min_side": settings.min_side})
        self.startup_error: str | None = None
        self.in_flight = 0  # requests inside the app now (the event loop is the only writer)
        self._starting: asyncio.Task | None = None
        self._tidying: asyncio.Task | None = None

    def problem(self) -> str | None:
        if self.startup_error is not None:
            return f"startup failed: {self.startup_error}"
        return self.dispatcher.problem()

    async def open(self) -> None:
        for note in self.notes:
            log.warning(note)
        self._starting = asyncio.create_task(self._start())
        self._tidying = asyncio.create_task(self._tidy_when_idle())

    async def _start(self) -> None:
        while True:
            try:
                await self.dispatcher.start()
                self.startup_error = None
                log.info("ready: %d members on %s (%s)", len(self.catalog.members), self.hardware.id, self.backend.kind)
                return
            except UserError as error:
                self.startup_error = str(error)
                log.error("startup failed: %s", error)
                if self.backend.kind != "triton":  # a model ONNX Runtime cannot load will not load later either
                    return
                await asyncio.sleep(RETRY_START_S)  # Triton may come up later: keep trying

    async def _tidy_when_idle(self) -> None:
        """After a burst (large images, many bodies) memory returns near its idle size instead of staying at the peak:
        garbage in reference cycles (a failed request's frames) is collected now rather than at the collector's rare
        full pass, and malloc gives its free pages back."""
        while True:
            await asyncio.sleep(TIDY_EVERY_S)
            if self.in_flight == 0:
                gc.collect()
                await asyncio.to_thread(trim_free_memory)

    async def close(self) -> None:
        for task in (self._starting, self._tidying):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.dispatcher.close()
