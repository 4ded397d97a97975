"""Everything a running server holds, built from its settings: hardware, backend, catalog, dispatcher, metrics.

Built synchronously before the HTTP app starts, so a bad repository or setting ends the command with a
one-line message; loading and warming the models then runs in the background while /healthz already
answers and /readyz says what is still loading.

With `watch_s`, the server looks at the repository's manifest that often and, when a build has swapped in
a new one, loads and warms the new members beside the serving ones, then switches to them: requests
already routed finish where they were routed, and a repository that fails to load leaves the current
one serving (/readyz says why). A member-by-member build (`build-repo --demo`) is served as it grows.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Callable
from pathlib import Path

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
RETIRE_GRACE_S = 30.0  # how long a replaced repository's members keep serving the requests routed to them


def manifest_signature(repository: Path) -> tuple[int, int, int] | None:
    """What changes when a build swaps in a new manifest (inode, mtime, size); None while there is none."""
    try:
        stat = os.stat(repository / "manifest.json")
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


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


def settle_garbage_collector() -> None:
    """Collect, then leave everything alive now out of the collector's later passes: the modules, the members' sessions
    and what start-up built stay for the process's life, and scanning them made each full pass hold every thread for
    tens of milliseconds under load (docs/serving-measurements.md). What requests create is still collected as before."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class Server:
    """The state of one serving process (no globals: tests build as many as they like)."""

    def __init__(self, settings: ServerSettings, hardware: DetectedHardware | None = None, backend: Backend | None = None):
        self.settings = settings
        self.hardware = hardware or detect()
        self._makes_backends = backend is None  # a reload needs a new backend; one handed in (tests) cannot be remade
        self.metrics = ServerMetrics()
        self._signature = manifest_signature(settings.repository)
        self.backend, self.catalog, self.dispatcher, self.notes = self._load(backend)
        self.lasting_failure: str | None = None  # a start no wait can mend (nothing reloads it): the CLI stops on it
        self.on_lasting_failure: Callable[[str], None] = lambda reason: None
        self.reload_error: str | None = None  # the last repository change that could not be served, while it stands
        self.in_flight = 0  # requests inside the app now (the event loop is the only writer)
        self._tasks: list[asyncio.Task] = []
        self._gc_timer = self.metrics.time_garbage_collections()

    def _load(self, backend: Backend | None = None) -> tuple[Backend, catalog_io.Catalog, Dispatcher, tuple[str, ...]]:
        """A backend, the repository's catalog and a dispatcher over them (nothing loaded into the backend yet)."""
        if backend is None:
            backend, latency_hardware, notes = make_backend(self.settings, self.hardware)
        else:
            latency_hardware, notes = self.hardware.id, []
        catalog = catalog_io.load(self.settings.repository, latency_hardware, backend.runtime, self.settings.family)
        dispatcher = Dispatcher(catalog, backend, self.settings.dispatch, self.metrics,
                                {"max_pixels": self.settings.max_pixels, "formats": self.settings.formats, "min_side": self.settings.min_side})
        return backend, catalog, dispatcher, tuple(notes) + catalog.notes

    def problem(self) -> str | None:
        return self.dispatcher.problem()

    async def open(self) -> None:
        for note in self.notes:
            log.warning(note)
        gc.callbacks.append(self._gc_timer)
        starting = asyncio.create_task(self._start())
        self._tasks = [starting, asyncio.create_task(self._tidy_when_idle())]
        if self.settings.watch_s > 0:
            self._tasks.append(asyncio.create_task(self._watch(starting)))

    async def started(self, timeout_s: float) -> None:
        """Return once the first start (loading and warming every member) has finished, well or not, or after `timeout_s`."""
        await asyncio.wait(self._tasks[:1], timeout=timeout_s)

    async def reload(self) -> None:
        """Serve the repository as it is now: its members are loaded and warmed beside the serving ones, then take over;
        the old ones close once the requests routed to them are answered. On failure the current members go on serving."""
        if not self._makes_backends:
            raise UserError("this server was given its backend, so it cannot make one for a new repository")
        # Reading and validating the manifest (and, for Triton, asking for its models) stays off the event loop.
        backend, catalog, dispatcher, notes = await asyncio.to_thread(self._load)
        try:
            await dispatcher.start()
        except BaseException:
            await dispatcher.close()
            raise
        old = self.dispatcher
        self.backend, self.catalog, self.dispatcher, self.notes = backend, catalog, dispatcher, notes
        self.reload_error = None
        log.info("reloaded %s: %d members%s", self.settings.repository, len(catalog.members),
                 f" ({catalog.building})" if catalog.building else "")
        await old.retire(RETIRE_GRACE_S)
        settle_garbage_collector()  # the old members' objects were frozen with the rest: unfrozen, so their cycles go

    async def _watch(self, starting: asyncio.Task) -> None:
        """Reload whenever the repository's manifest changes (after the first start has finished, well or not)."""
        await asyncio.gather(starting, return_exceptions=True)
        while True:
            await asyncio.sleep(self.settings.watch_s)
            signature = manifest_signature(self.settings.repository)
            if signature is None or signature == self._signature:
                continue
            self._signature = signature  # tried once per change: a broken repository is not reloaded in a loop
            try:
                await self.reload()
            except Exception as error:  # noqa: BLE001 - whatever the new repository's fault, the current one goes on serving
                self.reload_error = str(error)
                log.error("the changed repository %s cannot be served (the previous one goes on): %s", self.settings.repository, error)

    async def _start(self) -> None:
        while True:
            try:
                await self.dispatcher.start()
                settle_garbage_collector()
                log.info("ready: %d members on %s (%s)", len(self.catalog.members), self.hardware.id, self.backend.kind)
                return
            except UserError as error:
                log.error("startup failed: %s", error)
                if self.backend.kind != "triton":  # a model ONNX Runtime cannot load will not load later either
                    if self.settings.watch_s == 0:  # nor will a mended repository be picked up: 503s for ever would help no one
                        self.lasting_failure = str(error)
                        self.on_lasting_failure(self.lasting_failure)
                    return
                await asyncio.sleep(RETRY_START_S)  # Triton may come up later: keep trying

    async def _tidy_when_idle(self) -> None:
        """After a burst (large images, many bodies) memory returns near its idle size instead of staying at the peak:
        garbage in reference cycles (a failed request's frames) is collected now rather than at the collector's rare
        full pass, and malloc gives its free pages back. A moment with none in flight comes many times a second at
        moderate load, so this runs while serving too: a full collection holds every thread, which is why start-up objects
        are frozen (`settle_garbage_collector`: 0.5-2 ms a pass instead of 40-80 ms on the demo, docs/serving-measurements.md)."""
        while True:
            await asyncio.sleep(TIDY_EVERY_S)
            if self.in_flight == 0:
                gc.collect()
                await asyncio.to_thread(trim_free_memory)

    async def close(self) -> None:
        if self._gc_timer in gc.callbacks:
            gc.callbacks.remove(self._gc_timer)
        for task in self._tasks:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.dispatcher.close()
