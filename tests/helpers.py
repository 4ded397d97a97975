"""What several test modules share: quick profiling, a tiny repository built, images, an app client, Triton, a served process."""

from __future__ import annotations

import asyncio
import contextlib
import io
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx2
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from effx_serve.core import preprocess, proc
from effx_serve.core.errors import UserError
from effx_serve.hardware import ceilings
from effx_serve.hardware.detect import DetectedHardware
from effx_serve.hardware.machine import this_machine
from effx_serve.perf import profiler
from effx_serve.perf.latency_store import LatencyStore
from effx_serve.repository.build import RepoSettings, build_repository
from effx_serve.serve.server import Server
from effx_serve.serve.settings import DispatchSettings, ServerSettings

ROOT = Path(__file__).resolve().parents[1]
"""The repository's root (the checkout)."""
QUICK = profiler.Protocol(warmup_runs=1, warmup_seconds=0.0, min_runs=3, min_seconds=0.0)
"""A profiling protocol of a few runs: repository tests check what is recorded, not how precisely."""
CPU = DetectedHardware("cpu-test", "cpu", "test CPU", "test")


def measure_quickly(monkeypatch) -> list:
    """The real profiler and ceilings with a short protocol and small sizes (precision is the benchmarks' job).

    Returns the list that gets one entry per ceilings measurement, so a test can count them.
    """
    real_time, real_measure, measured = profiler.time_calls, ceilings.measure, []
    monkeypatch.setattr(profiler, "time_calls", lambda call, protocol=None: real_time(call, QUICK))

    def small(**_):
        measured.append(1)
        return real_measure(matmul_size=128, copy_mib=4, repeats=2)

    monkeypatch.setattr(ceilings, "measure", small)
    return measured


def build(tiny_family, out, partial_of=None, **settings):
    """build-repo of the tiny family into `out` (profiled with whatever protocol the caller patched in)."""
    family, checkpoints = tiny_family
    with LatencyStore() as store:
        return build_repository(family, checkpoints, out, RepoSettings(**settings), this_machine(), store, say=lambda line: None,
                                partial_of=partial_of)


def image_bytes(fmt="JPEG", size=(64, 48), mode="RGB", seed=0) -> bytes:
    """Random pixels encoded as `fmt`: a valid image of any format and mode, quick to make."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


JPEG = image_bytes()


def make_server(repository, backend=None, **settings) -> Server:
    dispatch = settings.pop("dispatch", DispatchSettings())
    return Server(ServerSettings(repository, dispatch=dispatch, **settings), CPU, backend)


async def open_ready(server: Server) -> Server:
    """Open an in-process server (on the running event loop) and wait until every member is warm."""
    await server.open()
    while server.problem() is not None:
        await asyncio.sleep(0.02)
    return server


@contextlib.asynccontextmanager
async def ready_client(app):
    """An async client of `app` with its lifespan started, once /readyz answers 200 (the backend has loaded)."""
    async with app.router.lifespan_context(app):
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test") as http:
            while (await http.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.02)
            yield http


def ended(pids, timeout_s: float = 15.0) -> bool:
    """Whether every process in `pids` has ended within `timeout_s`: gone, or a zombie nobody reaped (a container's init
    may not reap the orphans it adopts). Reads /proc: Linux only."""
    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + timeout_s
    while any(running(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def wait_ready(client, timeout=30.0) -> None:
    """Until the app behind a TestClient says ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready: {client.get('/readyz').json()}")


def post_jpeg(client, data=JPEG, path="/v1/classify", **params):
    return client.post(path, content=data, headers={"content-type": "image/jpeg"}, params=params)


def reference_logits(repository, member, data):
    """The member's logits for `data`, computed outside the server (ONNX Runtime on the serving preprocessing)."""
    session = ort.InferenceSession(str(repository / member / "1" / "model.onnx"))
    resolution = session.get_inputs()[0].shape[2]
    x = preprocess.to_input(preprocess.decode_image(data), resolution)[None]
    return session.run(None, {session.get_inputs()[0].name: x})[0][0]


def triton_or_skip() -> None:
    """Skip (saying why) where the local tritonserver is missing or cannot start."""
    from effx_serve.repository import triton_local

    try:
        install = triton_local.find_install()
    except UserError as error:
        pytest.skip(f"no local tritonserver: {error}")
    env = {"LD_LIBRARY_PATH": str(install.libs)}
    probe = subprocess.run([str(install.binary), "--help"], capture_output=True, env=env, timeout=60)
    if probe.returncode not in (0, 1) or b"model-repository" not in probe.stdout + probe.stderr:
        pytest.skip(f"the local tritonserver cannot start here: {(probe.stderr or probe.stdout).decode(errors='replace')[-300:]}")


@contextmanager
def served(repository: Path, log_dir: Path, *flags: str, timeout_s: float = 120.0):
    """`effx-serve serve` on `repository` in its own process; yields its base URL once /readyz answers 200. One process unless
    `flags` say otherwise: these tests check one request path, whose /metrics a second worker would report a second late."""
    port = proc.free_port()
    argv = [sys.executable, "-m", "effx_serve.cli", "serve", "--repo", str(repository), "--port", str(port), "--workers", "1", *flags]
    with proc.running(argv, f"http://127.0.0.1:{port}/readyz", log_dir / f"serve-{port}.log", timeout_s):
        yield f"http://127.0.0.1:{port}"


def fake_member(name: str, accuracy: float = 0.5, p50_ms: dict[int, float] | None = None, resolution: int = 24):
    """A catalog member with a made-up profile (batch -> p50 ms) and no model file: for schedulers and routing on fake devices."""
    from effx_serve.serve.catalog import LatencyProfile, Member

    profile = LatencyProfile("cpu-test", "onnxruntime", "measured", tuple(sorted((p50_ms or {1: 1.0, 4: 3.0}).items())), True)
    return Member(name=name, family="fake", accuracy=accuracy, accuracy_provenance="measured", resolution=resolution,
                  model_path=Path("/nonexistent"), input_name="images", output_name="logits", labels=tuple(str(i) for i in range(10)),
                  latency=profile, macs=0, params=0)
