"""The one way the project opens an ONNX model in ONNX Runtime: profiling, repository checks and serving.

All of them get the same session options, so a latency profiled here describes the session that serves:
sequential execution, every graph optimisation, one inter-op thread, `threads` intra-op threads, and no
spinning (a spinning pool keeps its cores busy between runs, stealing them from decoding and from the
other members' sessions on a small machine; with one intra-op thread, as profiles on a CPU use, there is
no pool and nothing changes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import onnxruntime as ort

from effx_serve.core.errors import UserError
from effx_serve.core.proc import available_cpus

# On a CPU every session has one intra-op thread, in profiles and in the server: on small shared hosts a second
# thread makes latency both noisier and less predictable (docs/profiling.md), and a server scales out with one
# batch per core instead, so a profiled latency is the latency that serves.
CPU_THREADS = 1


def session_options(threads: int | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cpus()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def onnxruntime_session(path: str | os.PathLike, providers: str | Sequence[str] = "CPUExecutionProvider",
                        threads: int | None = None) -> ort.InferenceSession:
    """A session of the model at `path` on `providers` (in order of preference); UserError naming what is wrong."""
    providers = [providers] if isinstance(providers, str) else list(providers)
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        raise UserError(f"ONNX Runtime execution provider {', '.join(missing)} is not available here (available: {', '.join(available)})")
    if not os.path.isfile(path):
        raise UserError(f"ONNX model {path} does not exist")
    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=providers)
    except Exception as error:  # noqa: BLE001 - ORT raises its own types for unreadable models
        raise UserError(f"ONNX model {path} cannot be loaded by ONNX Runtime: {str(error).strip().splitlines()[0]}") from None
