"""The proxy evaluator: what a short run trains, and that seeds are distinct draws reused on a second ask."""

import json

import pytest
import torch

from search.evaluators import ProxyAccuracy, short_run
from training.arch.spec import spec_from_stage_strings
from training.data import dataset_fingerprint
from training.demo_data import generate_demo_data

TINY = spec_from_stage_strings(["r1_k3_s11_e1_i32_o16_se0.25", "r1_k3_s22_e4_i16_o24_se0.25"], width=0.5, resolution=16,
                               num_classes=3, head_filters=64, dropout=0.2, drop_connect=0.2, name="tiny")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield generate_demo_data(tmp_path_factory.mktemp("proxy") / "data", size=8, image_size=16)["path"]
    torch.set_num_threads(threads)


def test_a_short_run_trains_without_dropout_and_with_fast_batchnorm(data, tmp_path):
    """A few epochs do not overfit: the regularisers only slow learning, and BN statistics must settle in few steps."""
    spec, metrics = short_run(TINY, data, tmp_path / "run", epochs=1, fingerprint=dataset_fingerprint(data))
    assert (spec.dropout, spec.drop_connect, spec.bn_momentum, spec.num_classes) == (0.0, 0.0, 0.1, 10)
    assert 0.0 <= metrics["ema_top1"] <= 1.0


def test_seeds_are_separate_runs_and_reused(data, tmp_path):
    accuracy = ProxyAccuracy(data, tmp_path, epochs=1)
    spread = accuracy.spread(TINY, 2)
    assert len(spread.samples) == 2 and len(list(tmp_path.iterdir())) == 2  # one run folder per seed
    assert accuracy.spread(TINY, 2) == spread  # asked again: the same draws, not new runs


def test_runs_whose_residual_blocks_start_as_the_identity_go_to_folders_of_their_own(data, tmp_path):
    """A proxy run whose residual blocks started as the identity never resumes one made as the reference's, nor the reverse."""
    reference, identity = ProxyAccuracy(data, tmp_path, epochs=1), ProxyAccuracy(data, tmp_path, epochs=1, zero_init_residual=True)
    reference(TINY), identity(TINY)
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 2 and folders[1] == folders[0] + "-zi"
    recipes = {name: json.loads((tmp_path / name / "checkpoint-last.json").read_text())["recipe"]["zero_init_residual"] for name in folders}
    assert recipes == {folders[0]: False, folders[1]: True}


def test_runs_of_other_lengths_or_subsets_go_to_folders_of_their_own(data, tmp_path):
    """A training run resumes whatever its folder holds: a 2-epoch proxy must not return (or continue) a finished 1-epoch
    run of the same model, nor a run on every image one on every second image."""
    short, longer, subset = (ProxyAccuracy(data, tmp_path, epochs=1), ProxyAccuracy(data, tmp_path, epochs=2),
                             ProxyAccuracy(data, tmp_path, epochs=1, stride=2, batch_size=16))
    short(TINY), longer(TINY), subset(TINY)
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 3
    epochs = {name: json.loads((tmp_path / name / "checkpoint-last.json").read_text())["epoch"] for name in folders}
    assert sorted(epochs.values()) == [1, 1, 2]


def test_a_scaled_learning_rate_trains_at_that_rate_in_a_folder_of_its_own(data, tmp_path):
    """A run at a quarter of the proxy's learning rate never resumes (or is returned as) one at the proxy's rate."""
    proxy, slower = ProxyAccuracy(data, tmp_path, epochs=1), ProxyAccuracy(data, tmp_path, epochs=1, lr_scale=0.25)
    proxy(TINY), slower(TINY)
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 2 and folders[1] == folders[0] + "-lr0.25"
    rates = {name: json.loads((tmp_path / name / "checkpoint-last.json").read_text())["recipe"]["base_lr"] for name in folders}
    assert rates[folders[1]] == pytest.approx(rates[folders[0]] / 4)


def test_latency_is_measured_with_the_devices_own_runtime_unless_named(tmp_path):
    """A GPU's latency is its kernels replayed from a CUDA graph, not ONNX Runtime's CPU provider on the host."""
    from effx_serve.hardware.machine import Machine
    from effx_serve.hardware.table import VENDOR_HARDWARE
    from effx_serve.perf.latency_store import LatencyStore
    from effx_serve.perf.measure import default_runtime
    from search.evaluators import MeasuredLatency

    assert [default_runtime(kind) for kind in ("gpu", "cpu", "tpu")] == ["torch-cudagraph", "onnxruntime", "onnxruntime"]
    gpu = Machine("nvidia-h200", VENDOR_HARDWARE["nvidia-h200"], "cuda")
    with LatencyStore(tmp_path / "store.sqlite") as store:
        assert MeasuredLatency(gpu, store).runtime == "torch-cudagraph"
        assert MeasuredLatency(gpu, store, "torch").runtime == "torch"
