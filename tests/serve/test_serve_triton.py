"""The whole serving path through a real tritonserver (nvidia-pytriton's, Python backend): HTTP in, Triton out, 503 when it dies."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from effx_serve.repository.triton_local import serve
from effx_serve.serve.http.app import create_app
from effx_serve.serve.server import Server
from effx_serve.serve.settings import ServerSettings
from tests.helpers import CPU, JPEG, post_jpeg, reference_logits, triton_or_skip, wait_ready


@pytest.fixture(scope="module")
def triton(served_python_repository):
    triton_or_skip()
    with serve(served_python_repository) as running:
        yield running


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_classify_through_triton(served_python_repository, triton, protocol):
    url = triton.http_url if protocol == "http" else triton.grpc_url
    server = Server(ServerSettings(served_python_repository, backend="triton", triton_url=url, triton_protocol=protocol,
                                   triton_ready_timeout_s=30), CPU)
    with TestClient(create_app(server)) as client:
        wait_ready(client, timeout=60)
        for member in ("tiny-f-b0", "tiny-f-b1"):
            answer = post_jpeg(client, member=member, top_k=10).json()
            assert answer["member"] == member
            scores = {p["index"]: p["score"] for p in answer["predictions"]}
            logits = reference_logits(served_python_repository, member, JPEG)
            expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            np.testing.assert_allclose([scores[i] for i in range(10)], expected, atol=1e-4)
        routed = post_jpeg(client, min_accuracy=0.6).json()
        assert routed["member"] == "tiny-f-b1" and routed["sla"]["met"]
        bounded = post_jpeg(client, max_latency_ms=5000).json()  # through Triton with a per-request timeout and priority 1
        assert bounded["sla"]["met"] and bounded["sla"]["route"] == "preferred" and bounded["timing"]["total_ms"] < 5000
        assert client.get("/v1/hardware").json()["backend"]["kind"] == "triton"


def test_a_dead_triton_is_503_naming_it(served_python_repository):
    triton_or_skip()
    with serve(served_python_repository) as running:
        server = Server(ServerSettings(served_python_repository, backend="triton", triton_url=running.http_url, triton_ready_timeout_s=30), CPU)
        with TestClient(create_app(server)) as client:
            wait_ready(client, timeout=60)
            assert post_jpeg(client).status_code == 200
            running.process.kill()
            running.process.wait()
            failed = post_jpeg(client)
            assert failed.status_code == 503 and running.http_url in failed.json()["detail"]
            not_ready = client.get("/readyz")
            assert not_ready.status_code == 503 and running.http_url in not_ready.json()["detail"]
            assert post_jpeg(client).status_code == 503  # still refused, quickly, while Triton is down
