"""The manifest schema and its reader, and config.pbtxt generation: round trips and violations named by path."""

import copy
import json

import pytest

from effx_serve.core.errors import UserError
from effx_serve.hardware.ids import hardware_class
from effx_serve.repository import manifest, triton_config
from effx_serve.repository.triton_config import BatchingPlan

SHA = "0" * 64


def member(name="m-b0", resolution=32, classes=3):
    return {
        "phi": 0.0, "arch_hash": "0123456789abcdef", "spec": {}, "resolution": resolution, "params": 1000, "macs": 20000, "intensity": 3.5,
        "accuracy": {"top1": 0.5, "top5": 0.9, "dataset": "demo", "split": "val", "provenance": "measured"},
        "model": {"path": f"{name}/1/model.onnx", "sha256": SHA, "opset": 18, "input": {"name": "images", "dims": [3, resolution, resolution]},
                  "output": {"name": "logits", "dims": [classes]}, "max_batch_size": 16, "checkpoint_sha256": SHA},
        "latency": [{"hardware_id": "cpu-amd-epyc", "runtime": "onnxruntime", "precision": "fp32", "batch": 1, "p50_ms": 1.0,
                     "p90_ms": 1.2, "p99_ms": 1.5, "runs": 100, "spread": 0.1, "provenance": "measured"}],
    }


def valid():
    return {
        "manifest_version": 1, "created_by": "test", "triton_backend": "onnxruntime",
        "dataset": {"name": "demo", "fingerprint": "abc", "labels": ["a", "b", "c"]},
        "preprocessing": {"layout": "NCHW", "color": "RGB", "dtype": "float32", "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2],
                          "crop_fraction": 0.875, "resize": "shorter-side-bicubic-then-center-crop"},
        "families": [{"name": "m", "searched_for": "cpu-amd-epyc", "hardware_classes": ["cpu"], "members": ["m-b0"]}],
        "members": {"m-b0": member()},
    }


def test_a_valid_manifest_round_trips_through_a_file(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(valid()))
    assert manifest.read(tmp_path) == valid()
    assert manifest.read(tmp_path / "manifest.json") == valid()


def changed(path, value):
    data = copy.deepcopy(valid())
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize("path, value, message", [
    (("manifest_version",), 2, "$.manifest_version: 1 was expected"),
    (("members", "m-b0", "accuracy", "top1"), 1.5, "$.members['m-b0'].accuracy.top1: 1.5 is greater than the maximum of 1"),
    (("members", "m-b0", "latency", 0, "p50_ms"), -1, "$.members['m-b0'].latency[0].p50_ms"),
    (("members", "m-b0", "model", "opset"), 11, "$.members['m-b0'].model.opset: 11 is less than the minimum of 17"),
    (("members", "m-b0", "params"), KeyError, "'params' is a required property"),
    (("triton_backend",), "tensorflow", "$.triton_backend: 'tensorflow' is not one of"),
    (("families", 0, "hardware_classes"), ["fpga"], "$.families[0].hardware_classes[0]"),
    (("members", "m-b0", "surprise"), 1, "Additional properties are not allowed ('surprise'"),
    (("families", 0, "members"), ["m-b9"], "$.families[0].members[0]: no member named 'm-b9'"),
    (("members", "m-b0", "model", "output", "dims"), [4], "does not match the 3 labels"),
    (("members", "m-b0", "model", "input", "dims"), [3, 64, 64], "is not [3, resolution, resolution]"),
    (("members", "m-b0", "model", "path"), "other/1/model.onnx", "is not inside the member's folder"),
    (("members", "m-b0", "latency", 0, "p99_ms"), 1.1, "p50 <= p90 <= p99"),
    (("members", "m-b0", "accuracy", "top1"), float("nan"), "$.members['m-b0'].accuracy.top1: nan is not a number JSON allows"),
    (("members", "m-b0", "latency", 0, "p99_ms"), float("inf"), "$.members['m-b0'].latency[0].p99_ms: inf is not a number JSON allows"),
])
def test_violations_are_reported_with_their_path(path, value, message):
    with pytest.raises(manifest.ManifestError) as error:
        manifest.validate(changed(path, value))
    assert message in str(error.value)


def test_reading_a_missing_or_broken_manifest(tmp_path):
    with pytest.raises(UserError, match="does not exist; build a repository"):
        manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text("[1,")
    with pytest.raises(UserError, match="is not JSON"):
        manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match="cannot be read"):
        manifest.read(tmp_path)


def test_every_problem_is_listed():
    data = changed(("members", "m-b0", "accuracy", "top1"), 2)
    data["triton_backend"] = "x"
    assert len(manifest.problems(data)) == 2
    with pytest.raises(manifest.ManifestError, match=r"\(and 1 more\)"):
        manifest.validate(data)


@pytest.mark.parametrize("hardware_id, expected", [("cpu-amd-epyc", "cpu"), ("nvidia-h200", "gpu"), ("tpu-v3", "tpu")])
def test_hardware_class(hardware_id, expected):
    assert hardware_class(hardware_id) == expected


# --- config.pbtxt ------------------------------------------------------------------------------


def test_batching_plan_from_a_profile():
    plan = BatchingPlan.from_profile({1: 1.0, 4: 2.0, 16: 10.0})  # 1000, 2000, 1600 images/s
    assert plan == BatchingPlan(max_batch_size=16, preferred_batch_size=4, max_queue_delay_us=500)
    assert BatchingPlan.from_profile({1: 0.01}).max_queue_delay_us == triton_config.MIN_QUEUE_DELAY_US
    assert BatchingPlan.from_profile({1: 100.0}).max_queue_delay_us == triton_config.MAX_QUEUE_DELAY_US
    with pytest.raises(UserError, match="batch-1"):
        BatchingPlan.from_profile({4: 1.0})


@pytest.mark.parametrize("hardware_class, backend", [("cpu", "onnxruntime"), ("gpu", "onnxruntime"), ("gpu", "python"), ("cpu", "python")])
def test_config_round_trips_through_text(hardware_class, backend):
    plan = BatchingPlan(16, 4, 300)
    config = triton_config.model_config("m-b0", backend, 48, 10, plan, hardware_class, 3, "images", "logits")
    parsed = triton_config.parse(triton_config.render(config))
    assert parsed == config
    assert parsed.max_batch_size == 16 and list(parsed.dynamic_batching.preferred_batch_size) == [4]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 300
    assert list(parsed.input[0].dims) == [3, 48, 48] and list(parsed.output[0].dims) == [10]
    assert parsed.instance_group[0].kind == (parsed.instance_group[0].KIND_GPU if hardware_class == "gpu" else parsed.instance_group[0].KIND_CPU)
    assert parsed.instance_group[0].count == (2 if hardware_class == "gpu" else 3)  # on a CPU one per core (3 given)
    assert parsed.parameters["intra_op_thread_count"].string_value == "1"  # as the profiles and the embedded backend
    accelerators = [a.name for a in parsed.optimization.execution_accelerators.gpu_execution_accelerator]
    assert accelerators == (["tensorrt"] if (hardware_class, backend) == ("gpu", "onnxruntime") else [])
    assert parsed.version_policy.latest.num_versions == 1 and parsed.model_warmup[0].batch_size == 1


def test_a_malformed_config_is_named():
    with pytest.raises(UserError, match=r"m/config.pbtxt: .*2:"):
        triton_config.parse('name: "m"\nmax_batch_size: "lots"\n', "m/config.pbtxt")
    with pytest.raises(UserError, match="unknown Triton backend"):
        triton_config.model_config("m", "tensorflow", 48, 10, BatchingPlan(1, 1, 50), "cpu", 1, "images", "logits")
