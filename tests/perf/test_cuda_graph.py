"""The torch-cudagraph runtime: a replayed CUDA graph computes what the eager model computes."""

import pytest

from effx_serve.perf.profiler import Protocol, captured_in_cuda_graph, profile_torch
from training.arch.model import build_model
from training.arch.presets import get_preset

torch = pytest.importorskip("torch")

QUICK = Protocol(warmup_runs=2, warmup_seconds=0.0, min_runs=5, min_seconds=0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA graphs)")
def test_cuda_graph_replays_the_eager_model():
    model = build_model(get_preset("efficientnet-x-b0", width=0.25, depth=0.5, num_classes=10)).cuda().eval()
    images = torch.randn(4, 3, 64, 64, device="cuda")
    with torch.inference_mode():
        expected = model(images)
        assert torch.allclose(captured_in_cuda_graph(torch, model, images)(images), expected, atol=1e-4)
    timing, settings = profile_torch(model, 4, 64, device="cuda", mode="cudagraph", protocol=QUICK)
    assert timing.runs >= 5 and settings["mode"] == "cudagraph"
