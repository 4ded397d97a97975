"""Start the tritonserver binary that the nvidia-pytriton package ships, on a model repository.

That build has only the Python backend, so it serves repositories built with `--triton-backend python`.
It is how the tests and benchmarks here exercise a real Triton without Docker; production uses the
official Triton container (see docs/serving.md). The Python backend needs a stub matching this Python
(shipped per version beside the binary) in its backend folder, and the stub's interpreter must find
numpy and onnxruntime: both are arranged here, in a private backend folder and through PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from effx_serve.core import proc
from effx_serve.core.errors import UserError, needs_extra


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backends: Path  # the shipped backends folder (python/ without a stub)
    stub: Path  # triton_python_backend_stub for this Python version
    libs: Path  # shared libraries the binary links against


def find_install() -> TritonInstall:
    """The pytriton tritonserver for this Python, or a UserError saying what is missing."""
    with needs_extra("triton", "a local tritonserver"):
        import pytriton
    root = Path(pytriton.__file__).parent
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(root / "tritonserver" / "bin" / "tritonserver", root / "tritonserver" / "backends",
                            root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub", root.parent / "nvidia_pytriton.libs")
    for path in (install.binary, install.backends / "python", install.stub):
        if not path.exists():
            raise UserError(f"the nvidia-pytriton install has no {path} (Python {version} may not be supported by it)")
    return install


@dataclass
class RunningTriton:
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    log: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@contextmanager
def serve(repository: Path, timeout_s: float = 120.0):
    """Run tritonserver on `repository` until the block ends; yields a RunningTriton once it is ready."""
    install = find_install()
    with tempfile.TemporaryDirectory(prefix="effx-triton-") as work:
        work = Path(work)
        backends = work / "backends"
        shutil.copytree(install.backends, backends, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(install.stub, backends / "python" / "triton_python_backend_stub")
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(install.libs), env.get("LD_LIBRARY_PATH", "")) if p)
        # The stub embeds libpython and takes its environment from the first python3 on PATH: make it ours,
        # so the models see the numpy and onnxruntime installed here.
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        http, grpc, metrics = proc.free_port(), proc.free_port(), proc.free_port()
        # tritonserver runs in `work`, so a relative repository path would point into it
        argv = [str(install.binary), f"--model-repository={Path(repository).resolve()}", f"--backend-directory={backends}", f"--http-port={http}",
                f"--grpc-port={grpc}", f"--metrics-port={metrics}", "--allow-metrics=false", "--exit-timeout-secs=10",
                f"--cache-directory={work / 'caches'}"]
        log = work / "tritonserver.log"
        with proc.running(argv, f"http://127.0.0.1:{http}/v2/health/ready", log, timeout_s, env, work) as process:
            yield RunningTriton(process, http, grpc, log)
