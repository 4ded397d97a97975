"""Everything a running server holds, built from its settings: hardware, backend, catalog, dispatcher, metrics.

Built synchronously before the HTTP app starts, so a bad repository or setting ends the command with a
one-line message; loading and warming the models then runs in the background while /healthz already
answers and /readyz says what is still loading.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from effx_serve import catalog as catalog_io
from effx_serve.backends import BACKENDS, Backend, OnnxRuntimeBackend, available_cpus
from effx_serve.dispatch import Dispatcher, DispatchSettings
from effx_serve.errors import UserError
from effx_serve.hardware import DetectedHardware, detect
from effx_serve.serve_metrics import ServerMetrics

log = logging.getLogger("effx_serve.server")

SERVING_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
RETRY_START_S = 5.0


@dataclass(frozen=True)
class ServerSettings:
    repository: Path
    backend: str = "onnxruntime"
    triton_url: str = "127.0.0.1:8000"
    triton_protocol: str = "http"
    triton_ready_timeout_s: float = 60.0
    family: str | None = None  # None: the family of the detected hardware class
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    max_body_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000
    min_side: int = 8
    max_images: int = 64  # per batch request
    max_in_flight: int = 256  # requests inside the server at once (bodies read, decoding, queued): bounds memory
    formats: tuple[str, ...] = SERVING_FORMATS

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend '{self.backend}' (known: {', '.join(BACKENDS)})")
        for name in ("max_body_bytes", "max_pixels", "min_side", "max_images", "max_in_flight"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1")
        if self.dispatch.max_queue < self.max_images:
            raise UserError(f"the queue limit ({self.dispatch.max_queue} images) must hold a whole batch request ({self.max_images} images)")


def host_cpu_id() -> str:
    from effx_serve.ceilings import cpu_hardware_id, cpu_model_name

    return cpu_hardware_id(cpu_model_name())


def make_backend(settings: ServerSettings, hardware: DetectedHardware) -> tuple[Backend, str, list[str]]:
    """The backend, the hardware id whose latency records describe it, and notes on what actually serves."""
    if settings.backend == "triton":
        from effx_serve.backend_triton import TritonBackend

        runtime = "onnxruntime" if hardware.hw_class == "cpu" else "onnxruntime-tensorrt"
        backend = TritonBackend(settings.triton_url, settings.triton_protocol, runtime, ready_timeout_s=settings.triton_ready_timeout_s)
        return backend, hardware.id, []
    backend = OnnxRuntimeBackend(hardware.hw_class)
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
        self.dispatcher = Dispatcher(self.catalog, backend, settings.dispatch, self.metrics)
        self.decoder = ThreadPoolExecutor(available_cpus(), thread_name_prefix="decode")
        self.startup_error: str | None = None
        self.in_flight = 0  # requests inside the app now (the event loop is the only writer)
        self._starting: asyncio.Task | None = None

    def problem(self) -> str | None:
        if self.startup_error is not None:
            return f"startup failed: {self.startup_error}"
        return self.dispatcher.problem()

    async def open(self) -> None:
        for note in self.notes:
            log.warning(note)
        self._starting = asyncio.create_task(self._start())

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

    async def close(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        await self.dispatcher.close()
        self.decoder.shutdown(wait=False, cancel_futures=True)
