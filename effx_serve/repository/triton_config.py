"""config.pbtxt for one family member: built as Triton's own ModelConfig protobuf, so it is valid by construction.

Everything a served member needs is decided here from its latency profile (batch -> p50 ms on the target):

- `max_batch_size`: the largest profiled batch (the server never forms a batch it has no figure for);
- dynamic batching: `preferred_batch_size` = the profiled batch with the highest throughput, and a queue
  delay of half the batch-1 service time (clamped to 50 us .. 5 ms): at low load a request waits at most
  half of its own service time for company, at high load batches fill before the delay runs out;
- instance group: CPU targets one instance with ONNX Runtime's intra-op threads set to the cores; GPU
  targets two instances per GPU, so one instance's copies overlap the other's compute (small models);
- TensorRT (fp16) as the GPU execution accelerator of the ONNX Runtime backend, for GPU targets;
- a queue policy for the router's deadlines: two priority levels (the router sends requests with a latency
  bound at 1, the others at 2, the default), a per-request timeout the router sets from each request's remaining
  time (`allow_timeout_override`) over a default of DEFAULT_TIMEOUT_US for other clients, requests timed out in
  the queue rejected rather than run late, and a bounded queue (MAX_QUEUE_SIZE requests);
- warm-up with one zero batch, so the first real request does not pay for session initialisation;
- version policy: serve the latest version only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from effx_serve.core.errors import UserError
from effx_serve.perf.session import CPU_THREADS

BACKENDS = ("onnxruntime", "python")
MIN_QUEUE_DELAY_US = 50
MAX_QUEUE_DELAY_US = 5_000
PRIORITY_LEVELS = 2  # 1: requests with a latency bound; 2: the rest (and other clients')
DEFAULT_TIMEOUT_US = 5_000_000  # a request waiting longer in Triton's queue is rejected (the router sets its own per request)
MAX_QUEUE_SIZE = 256  # requests waiting per model; more are rejected at once instead of queueing without end


@dataclass(frozen=True)
class BatchingPlan:
    max_batch_size: int
    preferred_batch_size: int
    max_queue_delay_us: int

    @classmethod
    def from_profile(cls, p50_ms: Mapping[int, float]) -> BatchingPlan:
        """From measured p50 service times per batch size (batch 1 must be among them)."""
        if 1 not in p50_ms:
            raise UserError("a batching plan needs the batch-1 latency; profile batch 1")
        best = max(p50_ms, key=lambda batch: (batch / p50_ms[batch], -batch))
        delay = round(500 * p50_ms[1])  # half the batch-1 time, in microseconds
        return cls(max(p50_ms), best, min(MAX_QUEUE_DELAY_US, max(MIN_QUEUE_DELAY_US, delay)))


def _proto():
    from tritonclient.grpc import model_config_pb2  # imported when a config is written: grpc takes a while to import

    return model_config_pb2


def model_config(name: str, backend: str, resolution: int, classes: int, batching: BatchingPlan, hardware_class: str,
                 cpu_instances: int, input_name: str, output_name: str):
    """The ModelConfig message of one member: on a CPU, `cpu_instances` instances (one per core) of one intra-op thread
    each, the session the profiles measured and the embedded backend serves (`perf.session`)."""
    if backend not in BACKENDS:
        raise UserError(f"unknown Triton backend '{backend}' (known: {', '.join(BACKENDS)})")
    pb = _proto()
    config = pb.ModelConfig(name=name, backend=backend, max_batch_size=batching.max_batch_size)
    config.version_policy.latest.num_versions = 1
    config.input.add(name=input_name, data_type=pb.TYPE_FP32, format=pb.ModelInput.FORMAT_NCHW, dims=[3, resolution, resolution])
    config.output.add(name=output_name, data_type=pb.TYPE_FP32, dims=[classes], label_filename="labels.txt")
    config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    if batching.preferred_batch_size > 1:
        config.dynamic_batching.preferred_batch_size.append(batching.preferred_batch_size)
    config.dynamic_batching.priority_levels = PRIORITY_LEVELS
    config.dynamic_batching.default_priority_level = PRIORITY_LEVELS
    policy = config.dynamic_batching.default_queue_policy
    policy.timeout_action = pb.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = DEFAULT_TIMEOUT_US
    policy.allow_timeout_override = True
    policy.max_queue_size = MAX_QUEUE_SIZE
    if hardware_class == "gpu":
        config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_GPU, count=2)
        if backend == "onnxruntime":
            accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            accelerator.parameters["precision_mode"] = "FP16"
            accelerator.parameters["max_workspace_size_bytes"] = str(1 << 30)
    else:
        config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=cpu_instances)
    config.parameters["intra_op_thread_count"].string_value = str(CPU_THREADS)
    warmup = config.model_warmup.add(name="zeros", batch_size=1)
    warmup.inputs[input_name].data_type = pb.TYPE_FP32
    warmup.inputs[input_name].dims.extend([3, resolution, resolution])
    warmup.inputs[input_name].zero_data = True
    return config


def render(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse(text: str, where: str = "config.pbtxt"):
    """A ModelConfig from protobuf text; a UserError naming the line for anything Triton would reject as unparsable."""
    from google.protobuf import text_format

    pb = _proto()
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as error:
        raise UserError(f"{where}: {error}") from None
