"""Detection with faked tool output, environments and device files."""

import json

import pytest

from effx_serve.cli import main
from effx_serve.hardware.detect import detect
from effx_serve.hardware.ids import nvidia_id, tpu_id

XEON = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480C CPU @ 2.00GHz\nflags\t\t: fpu sse4_2 avx2 avx512f amx_bf16 fma\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\n"


def fake_run(outputs):
    return lambda argv: outputs.get(argv[0])


def no_files(_path):
    return False


def no_modules(_name):
    return None


def probe(env=None, outputs=None, cpuinfo=XEON, exists=no_files, find_spec=no_modules):
    return detect(env=env or {}, run=fake_run(outputs or {}), cpuinfo=cpuinfo, exists=exists, find_spec=find_spec, use_nvml=False)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("NVIDIA H200", "nvidia-h200"),
        ("NVIDIA H100 80GB HBM3", "nvidia-h100"),
        ("Tesla V100-SXM2-16GB", "nvidia-v100"),
        ("NVIDIA A100-SXM4-80GB", "nvidia-a100"),
        ("NVIDIA A10G", "nvidia-a10g"),
        ("NVIDIA L4", "nvidia-l4"),
        ("NVIDIA GeForce RTX 4090", "nvidia-rtx-4090"),
    ],
)
def test_nvidia_names_map_to_ids(name, expected):
    assert nvidia_id(name) == expected


@pytest.mark.parametrize("kind, expected", [("v3-8", "tpu-v3"), ("v2-32", "tpu-v2"), ("v4-8", "tpu-v4"), ("v5litepod-16", "tpu-v5e"), ("v5p-8", "tpu-v5p"), ("v4i", "tpu-v4i"), ("gpu", None), ("", None)])
def test_tpu_types_map_to_ids(kind, expected):
    assert tpu_id(kind) == expected


def test_gpu_from_nvidia_smi():
    smi = "NVIDIA H200, 143771, 9.0\nNVIDIA H200, 143771, 9.0\n"
    found = probe(outputs={"nvidia-smi": smi})
    assert (found.id, found.hw_class, found.source, found.count) == ("nvidia-h200", "gpu", "nvidia-smi", 2)
    assert found.memory_bytes == 143771 * 2**20 and found.compute_capability == "9.0"


def test_gpu_from_old_nvidia_smi_without_compute_cap():
    found = probe(outputs={"nvidia-smi": "Tesla V100-SXM2-16GB, 16160, [N/A]\n"})
    assert found.id == "nvidia-v100" and found.compute_capability is None


def test_broken_nvidia_smi_falls_through_to_the_cpu():
    assert probe(outputs={"nvidia-smi": ""}).hw_class == "cpu"


def test_tpu_from_environment():
    found = probe(env={"TPU_ACCELERATOR_TYPE": "v3-8"})
    assert (found.id, found.hw_class, found.source) == ("tpu-v3", "tpu", "env:TPU_ACCELERATOR_TYPE")


def test_tpu_from_device_files_without_a_generation():
    found = probe(exists=lambda path: path == "/dev/accel0")
    assert found.id == "tpu-unknown" and found.source == "device:/dev/accel0" and found.notes


def test_tpu_from_libtpu():
    found = probe(find_spec=lambda name: object() if name == "libtpu" else None)
    assert found.hw_class == "tpu" and found.source == "libtpu"


def test_gpu_wins_over_tpu_environment():
    assert probe(env={"TPU_ACCELERATOR_TYPE": "v3-8"}, outputs={"nvidia-smi": "NVIDIA L4, 23034, 8.9\n"}).id == "nvidia-l4"


def test_cpu_model_and_flags():
    found = probe()
    assert found.id == "cpu-intel-xeon-platinum-8480c" and found.hw_class == "cpu" and found.source == "cpuinfo"
    assert set(found.cpu_flags) == {"sse4_2", "avx2", "avx512f", "amx_bf16", "fma"}


def test_arm_cpu_without_model_name():
    found = probe(cpuinfo=GRAVITON)
    assert found.hw_class == "cpu" and found.id.startswith("cpu-") and "sve" in found.cpu_flags


def test_hardware_command_json(capsys):
    assert main(["hardware", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert {"id", "class", "name", "source"} <= set(found)
    assert found["class"] in ("gpu", "tpu", "cpu")
