import json

import pytest

from effx_serve.cli import main
from effx_serve.core.errors import UserError
from effx_serve.hardware import ceilings, ids
from effx_serve.hardware.ceilings import get_hardware
from effx_serve.hardware.table import VENDOR_HARDWARE, Hardware
from effx_serve.perf.roofline import analyze, layer_traffic
from training.arch.plan import Layer
from training.arch.presets import PRESETS
from training.arch.spec import spec_from_stage_strings


def test_one_conv_layer_worked_by_hand():
    # 3x3 conv, 16 -> 32 channels, 8x8 -> 8x8, stride 1, BatchNorm after it; batch 2, fp16 (2 bytes).
    layer = Layer("conv", "conv", 16, 32, 3, 1, 8, 8, params=16 * 32 * 9, bn_params=2 * 32)
    assert layer.macs == 8 * 8 * 32 * 16 * 9 == 294_912
    flops, moved = layer_traffic(layer, batch=2, element_bytes=2)
    assert flops == 2 * 294_912 * 2 == 1_179_648
    # weights 4,608 + folded BN bias 32, once; per image input 16*64 = 1,024 and output 32*64 = 2,048.
    assert moved == 2 * (4_608 + 32 + 2 * (1_024 + 2_048)) == 21_568
    hardware = Hardware("toy", "toy", "gpu", {"fp16": 100e9}, 1e9, "test")  # ridge 100 FLOP/B
    spec = spec_from_stage_strings(["r1_k3_s11_e1_i16_o16"], resolution=32)
    result = analyze(spec, hardware, batch=2, precision="fp16")
    # I = 1,179,648 / 21,568 = 54.7 FLOP/B < ridge 100: memory bound at 54.7 GFLOP/s.
    intensity = 1_179_648 / 21_568
    assert intensity == pytest.approx(54.69, abs=0.01)
    assert min(intensity * 1e9, 100e9) == pytest.approx(54.69e9, rel=1e-3)
    assert result.ridge == 100


def test_depthwise_intensity_is_about_k_squared_over_two():
    big = 10_000
    layer = Layer("dw", "dwconv", 64, 64, 3, 1, big, big, params=64 * 9, bn_params=128)
    flops, moved = layer_traffic(layer, batch=1, element_bytes=1)
    macs_per_element = flops / 2 / moved  # 1-byte elements
    assert macs_per_element == pytest.approx(9 / 2, rel=0.01)  # the facts' I ~ K^2/2, whatever C


def test_whole_model_sums_its_layers_and_latency_follows_the_roof():
    result = analyze(PRESETS["efficientnet-b0"], VENDOR_HARDWARE["tpu-v3"], batch=8, precision="bf16")
    assert result.flops == pytest.approx(sum(p.flops for p in result.layers))
    assert result.bytes == pytest.approx(sum(p.bytes for p in result.layers))
    assert result.flops == pytest.approx(2 * result.macs * 8)
    assert result.intensity == pytest.approx(result.flops / result.bytes)
    hw = VENDOR_HARDWARE["tpu-v3"]
    assert result.whole_model_ms == pytest.approx(1e3 * result.flops / min(result.intensity * hw.bandwidth, 123e12))
    assert result.predicted_ms >= result.whole_model_ms * 0.99  # per-layer sum can only be slower
    slower = analyze(PRESETS["efficientnet-b0"], hw, batch=8, precision="bf16", efficiency=0.5)
    assert slower.predicted_ms > result.predicted_ms


@pytest.mark.parametrize("hardware, precision, ridge", [("nvidia-v100", "fp16", 139), ("tpu-v3", "bf16", 137), ("nvidia-h200", "bf16", 206)])
def test_ridge_points_from_vendor_figures(hardware, precision, ridge):
    assert VENDOR_HARDWARE[hardware].ridge(precision) == pytest.approx(ridge, abs=1)


def test_all_named_accelerators_are_in_the_table():
    assert set(VENDOR_HARDWARE) == {"nvidia-v100", "nvidia-a100", "nvidia-h100", "nvidia-h200", "tpu-v2", "tpu-v3", "tpu-v4i"}


@pytest.mark.parametrize("batch", [1, 128])
def test_x_b0_has_at_least_two_and_a_half_times_the_intensity_of_b0(batch):
    hw = VENDOR_HARDWARE["nvidia-h200"]
    b0 = analyze(PRESETS["efficientnet-b0"], hw, batch, "bf16")
    x = analyze(PRESETS["efficientnet-x-b0"], hw, batch, "bf16")
    assert x.intensity >= 2.5 * b0.intensity


def test_bad_precision_batch_and_hardware_are_clear_errors():
    with pytest.raises(UserError, match="no fp32 peak figure; choose one of bf16"):
        analyze(PRESETS["efficientnet-b0"], VENDOR_HARDWARE["tpu-v3"], 1, "fp32")
    with pytest.raises(UserError, match="batch must be at least 1"):
        analyze(PRESETS["efficientnet-b0"], VENDOR_HARDWARE["tpu-v3"], 0, "bf16")
    with pytest.raises(UserError, match="unknown hardware 'nvidia-k80'.*nvidia-h200"):
        get_hardware("nvidia-k80")


def test_host_ceilings_are_measured_once_then_cached(quick_ceilings):
    first, cached = ceilings.host_ceilings()
    assert not cached and first.fp32_flops > 0 and first.bandwidth > 0
    second, cached = ceilings.host_ceilings()
    assert cached and second == first and len(quick_ceilings) == 1
    host = get_hardware("host")
    assert host.kind == "cpu" and host.id.startswith("cpu-") and "cached" in host.source


def test_a_corrupt_ceilings_cache_is_measured_again(quick_ceilings):
    first, _ = ceilings.host_ceilings()
    path = next((ceilings.cache_dir()).glob("ceilings-*.json"))
    path.write_text("{not json")
    again, cached = ceilings.host_ceilings()
    assert not cached and len(quick_ceilings) == 2
    assert json.loads(path.read_text())["hardware_id"] == first.hardware_id


@pytest.mark.parametrize(
    "cpuinfo, expected",
    [
        ("model name\t: Intel(R) Xeon(R) Platinum 8480C CPU @ 2.00GHz\n", "cpu-intel-xeon-platinum-8480c"),
        ("model name\t: AMD EPYC 9654 96-Core Processor\n", "cpu-amd-epyc-9654-96-core"),
        ("processor\t: 0\n", None),
    ],
)
def test_cpu_ids(cpuinfo, expected):
    name = ids.cpu_model_name(cpuinfo)
    if expected:
        assert ids.cpu_hardware_id(name) == expected
    else:
        assert ids.cpu_hardware_id(name).startswith("cpu-")


def test_roofline_json_and_plot(tmp_path, capsys):
    png = tmp_path / "roofline.png"
    code = main(["roofline", "efficientnet-b0", "efficientnet-x-b0", "--hardware", "nvidia-h200",
                 "--batch", "128", "--precision", "bf16", "--json", "--plot", str(png)])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["efficientnet-b0", "efficientnet-x-b0"]
    for row in rows:
        assert {"name", "flops", "bytes", "intensity", "predicted_ms", "params", "macs"} <= set(row)
    assert rows[1]["intensity"] >= 2.5 * rows[0]["intensity"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_roofline_on_the_measured_host(quick_ceilings, capsys):
    assert main(["roofline", "efficientnet-x-b0", "--hardware", "host", "--resolution", "64", "--layers"]) == 0
    out = capsys.readouterr().out
    assert "measured on this host" in out and "blocks.0.s2d" in out


@pytest.mark.parametrize("content", ["5", json.dumps({"cache_version": 1, "hardware_id": "cpu-x", "cpu_model": "x", "threads": 1, "fp32_flops": 0.0, "bandwidth": 0.0, "measured_at": 0.0, "numpy_version": "0"})])
def test_absurd_or_foreign_ceilings_caches_are_measured_again(quick_ceilings, content):
    ceilings.host_ceilings()
    path = next(ceilings.cache_dir().glob("ceilings-*.json"))
    path.write_text(content)
    again, cached = ceilings.host_ceilings()
    assert not cached and again.fp32_flops > 0 and len(quick_ceilings) == 2


def test_gpu_ceilings_are_measured_with_torch_once_then_cached(monkeypatch):
    from types import SimpleNamespace

    calls = []

    def fake_measure(device):
        calls.append(device)
        return {"peak": {"fp32": 60e12, "bf16": 800e12}, "bandwidth": 4.3e12, "torch": "test", "device": device}

    monkeypatch.setattr(ceilings, "_torch_cuda", lambda: True)
    monkeypatch.setattr(ceilings, "measure_torch", fake_measure)
    h200 = SimpleNamespace(id="nvidia-h200", name="NVIDIA H200", hw_class="gpu")
    first = ceilings.device_hardware(h200)
    again = ceilings.device_hardware(h200)
    assert calls == ["cuda"] and first == again and first.peak["bf16"] == 800e12 and "measured" in first.source
    monkeypatch.setattr(ceilings, "_torch_cuda", lambda: False)  # torch cannot reach it: the vendor table
    assert ceilings.device_hardware(h200).source.startswith("NVIDIA H200 datasheet")
