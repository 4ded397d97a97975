"""The HTTP API on a real (tiny) repository: every input shape, routing, every bad input, readiness, metrics."""

import asyncio
import base64
import json
import struct
import threading
import time
import warnings
import zlib

import numpy as np
import pytest
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from effx_serve.core import preprocess
from effx_serve.core.errors import UserError
from effx_serve.serve.backends.base import BackendUnavailable
from effx_serve.serve.backends.onnxruntime import OnnxRuntimeBackend
from effx_serve.serve.http.app import create_app, query_params
from effx_serve.serve.schema import ClassifyParams
from effx_serve.serve.settings import DispatchSettings
from loadtest.attacks import png_pixel_bomb, progressive_scan_bomb
from tests.helpers import JPEG, image_bytes, make_server, open_ready, post_jpeg, ready_client, reference_logits, wait_ready


def png_header(width, height):
    """A PNG that claims width x height (a decompression bomb's header): nothing but the header is needed."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.fixture(scope="module")
def client(served_repository):
    with TestClient(create_app(make_server(served_repository))) as client:
        wait_ready(client)
        yield client


def test_one_image_as_a_raw_body(client, served_repository):
    answer = post_jpeg(client, top_k=3).json()
    assert answer["member"] == "tiny-f-b1" and answer["accuracy"] == 0.7  # no SLA: the most accurate
    assert [p["label"] for p in answer["predictions"]] and len(answer["predictions"]) == 3
    scores = [p["score"] for p in answer["predictions"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-9
    logits = reference_logits(served_repository, "tiny-f-b1", JPEG)
    assert answer["predictions"][0]["index"] == int(np.argmax(logits))
    assert answer["sla"] == {"kind": "none", "min_accuracy": None, "max_latency_ms": None, "expected_to_meet": True, "met": True,
                             "misses": [], "route": "preferred"}
    timing = answer["timing"]
    parts = ("read_ms", "route_ms", "decode_ms", "queue_ms", "inference_ms", "handback_ms", "serialize_ms")
    assert set(timing) == {*parts, "total_ms"}
    assert all(timing[part] >= 0 for part in parts) and timing["decode_ms"] > 0 and timing["inference_ms"] > 0
    assert timing["total_ms"] == pytest.approx(sum(timing[part] for part in parts), abs=1e-6)  # every part, end to end
    assert answer["observed_latency_ms"] == timing["total_ms"]
    expected = answer["expected"]
    assert answer["expected_latency_ms"] == expected["total_ms"] >= expected["decode_ms"] + expected["inference_ms"] > 0
    assert answer["batch_size"] == 1 and "measured" in answer["latency_provenance"]


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGBA"), ("PNG", "L"), ("PNG", "P"), ("WEBP", "RGB"), ("JPEG", "CMYK"), ("PNG", "I;16")])
def test_formats_and_modes(client, fmt, mode):
    data = image_bytes(fmt, mode=mode)
    response = client.post("/v1/classify", content=data, headers={"content-type": f"image/{fmt.lower()}"})
    assert response.status_code == 200, response.json()


def test_multipart_and_base64_json_give_the_same_answer(client):
    raw = post_jpeg(client).json()["predictions"]
    multipart = client.post("/v1/classify", files={"image": ("a.jpg", JPEG, "image/jpeg")}).json()["predictions"]
    encoded = "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()
    as_json = client.post("/v1/classify", json={"image": encoded, "top_k": 5}).json()["predictions"]
    assert raw == multipart == as_json


def test_parameters_in_the_body_are_validated_like_the_query(client):
    response = client.post("/v1/classify", json={"image": base64.b64encode(JPEG).decode(), "min_accuracy": 1.5})
    assert response.status_code == 422 and "min_accuracy" in response.json()["detail"]
    response = client.post("/v1/classify", files={"image": ("a.jpg", JPEG, "image/jpeg")}, data={"min_accuracy": "0.6"})
    assert response.json()["member"] == "tiny-f-b1"
    response = client.post("/v1/classify", json={"image": base64.b64encode(JPEG).decode(), "colour": "blue"})
    assert response.status_code == 422 and "colour" in response.json()["detail"]


@pytest.mark.parametrize(("query", "words"), [
    ("min_accuracy=1.5", "min_accuracy: Input should be less than or equal to 1"),
    ("top_k=many", "top_k: Input should be a valid integer"),
    ("colour=blue", "colour: Extra inputs are not permitted"),
    ("max_latency_ms=inf", "max_latency_ms:"),
])
def test_bad_query_parameters_are_422_naming_the_parameter(client, query, words):
    response = client.post(f"/v1/classify?{query}", content=JPEG, headers={"content-type": "image/jpeg"})
    assert response.status_code == 422 and response.json()["detail"].startswith(words), response.json()
    assert response.json()["errors"][0]["loc"][0] == "query"


def test_a_repeated_query_parameter_takes_its_last_value(client):
    answer = client.post("/v1/classify?top_k=1&top_k=2", content=JPEG, headers={"content-type": "image/jpeg"}).json()
    assert len(answer["predictions"]) == 2


def test_a_batch_answers_each_image_in_order(client, served_repository):
    images = [image_bytes(seed=seed) for seed in range(5)]
    files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    answer = client.post("/v1/classify/batch", files=files, params={"member": "tiny-f-b0", "top_k": 1}).json()
    assert answer["member"] == "tiny-f-b0" and len(answer["results"]) == 5
    for data, result in zip(images, answer["results"], strict=True):
        assert result["predictions"][0]["index"] == int(np.argmax(reference_logits(served_repository, "tiny-f-b0", data)))
    as_json = client.post("/v1/classify/batch", json={"images": [base64.b64encode(d).decode() for d in images], "member": "tiny-f-b0",
                                                      "top_k": 1}).json()
    assert [r["predictions"] for r in as_json["results"]] == [r["predictions"] for r in answer["results"]]


@pytest.mark.parametrize(("params", "member"), [
    ({"min_accuracy": 0.4}, "tiny-f-b0"),  # both qualify: the faster
    ({"min_accuracy": 0.6}, "tiny-f-b1"),
    ({"max_latency_ms": 10_000}, "tiny-f-b1"),  # both fast enough: the more accurate
    ({"min_accuracy": 0.4, "max_latency_ms": 10_000}, "tiny-f-b0"),
    ({"member": "tiny-f-b0"}, "tiny-f-b0"),
    ({"family": "tiny-f"}, "tiny-f-b1"),
])
def test_routing(client, params, member):
    answer = post_jpeg(client, **params).json()
    assert answer["member"] == member and answer["sla"]["expected_to_meet"]


def test_an_sla_nobody_meets_is_rejected_with_options_or_served_flagged(client):
    rejected = post_jpeg(client, min_accuracy=0.9)
    assert rejected.status_code == 422
    body = rejected.json()
    assert "no member can meet" in body["detail"] and body["options"][0]["member"] == "tiny-f-b1"
    assert body["options"][0]["misses"] == ["accuracy"]
    served = post_jpeg(client, min_accuracy=0.9, on_miss="best_effort").json()
    assert served["member"] == "tiny-f-b1" and served["sla"]["met"] is False and served["sla"]["misses"] == ["accuracy"]
    fast = post_jpeg(client, max_latency_ms=1e-6, on_miss="best_effort").json()
    assert fast["member"] == "tiny-f-b0" and "latency" in fast["sla"]["misses"] and not fast["sla"]["expected_to_meet"]
    assert fast["sla"]["route"] == "best_effort" and fast["sla"]["met"] is False
    timed = _counted(client, 'effx_refusal_seconds_count{reason="sla"}')
    impossible = post_jpeg(client, max_latency_ms=1e-6)  # below any member's service time, even at rest
    assert impossible.status_code == 422 and impossible.json()["options"][0]["misses"] == ["latency"]
    assert _counted(client, 'effx_refusal_seconds_count{reason="sla"}') == timed + 1


def _deadline(client, when, **params):
    return client.post("/v1/classify", content=JPEG, params=params, headers={"content-type": "image/jpeg", "effx-deadline": when})


def test_a_client_deadline_bounds_the_request_end_to_end_and_a_bad_one_is_422(client):
    answer = _deadline(client, f"{time.time() + 5:.3f}").json()
    assert answer["sla"]["kind"] == "latency" and 4000 < answer["sla"]["max_latency_ms"] <= 5000 and answer["sla"]["met"]
    sooner = _deadline(client, f"{time.time() + 60:.3f}", max_latency_ms=200).json()
    assert sooner["sla"]["max_latency_ms"] == 200 and sooner["sla"]["kind"] == "latency"  # the tighter of the two
    for when, words in (("tomorrow", "Unix time in seconds"), (f"{time.time() * 1000:.0f}", "more than 3600 s"), ("nan", "more than 3600 s"),
                        (f"{time.time() - 7200:.3f}", "more than 3600 s")):
        refused = _deadline(client, when)
        assert refused.status_code == 422 and words in refused.json()["detail"], (when, refused.json())
    soon = f"{time.time() + 5:.3f}"
    twice = client.post("/v1/classify", content=JPEG, headers=[("content-type", "image/jpeg"), ("effx-deadline", soon), ("effx-deadline", soon)])
    assert twice.status_code == 422 and "sent 2 times" in twice.json()["detail"]  # it used to take the first silently


def _counted(client, prefix: str) -> float:
    """The sum of the /metrics samples whose line starts with `prefix` (the client's server is shared by other tests)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in client.get("/metrics").text.splitlines() if line.startswith(prefix))


def test_a_request_whose_client_deadline_passed_in_transit_is_refused_at_once_unless_best_effort(client):
    expired, late_answers = _counted(client, 'effx_routes_total{outcome="refused_expired"}'), _counted(client, "effx_late_stage_total{")
    timed = _counted(client, 'effx_refusal_seconds_count{reason="deadline"}')
    requests, misses = _counted(client, 'effx_sla_requests_total{sla="latency"}'), _counted(client, 'effx_sla_misses_total{cause="refused",sla="latency"}')
    refused = _deadline(client, f"{time.time() - 0.2:.3f}")
    assert refused.status_code == 429 and refused.json()["reason"] == "deadline" and "passed" in refused.json()["detail"]
    assert "Retry-After" in refused.headers
    assert _counted(client, 'effx_routes_total{outcome="refused_expired"}') == expired + 1
    # one request, one miss: misses over requests stays a share
    assert (_counted(client, 'effx_sla_requests_total{sla="latency"}'), _counted(client, 'effx_sla_misses_total{cause="refused",sla="latency"}')) == (
        requests + 1, misses + 1)
    assert _counted(client, 'effx_refusal_seconds_count{reason="deadline"}') == timed + 1  # how long it took, on the server's clock
    late = _deadline(client, f"{time.time() - 0.2:.3f}", on_miss="best_effort")
    assert late.status_code == 200 and late.json()["sla"]["met"] is False and late.json()["sla"]["misses"] == ["latency"]
    assert _counted(client, "effx_late_stage_total{") == late_answers + 1  # put down to the stage that overran most



TRUNCATED = JPEG[: len(JPEG) // 2]


@pytest.mark.parametrize(("request_args", "status", "words"), [
    ({"content": b"", "headers": {"content-type": "image/jpeg"}}, 400, "empty"),
    ({"content": TRUNCATED, "headers": {"content-type": "image/jpeg"}}, 400, "truncated"),
    ({"content": b"\xff\xd8\xff\xe0 not really a jpeg" * 10, "headers": {"content-type": "image/jpeg"}}, 400, "not"),
    ({"content": b"hello, I am a text file\n" * 20, "headers": {"content-type": "image/jpeg"}}, 400, "not an image"),
    ({"content": image_bytes("PNG", size=(1, 1)), "headers": {"content-type": "image/png"}}, 400, "at least"),
    ({"content": png_header(20000, 20000), "headers": {"content-type": "image/png"}}, 400, "pixels"),
    ({"content": image_bytes("TIFF"), "headers": {"content-type": "image/tiff"}}, 400, "unsupported image format TIFF"),
    ({"content": JPEG, "headers": {"content-type": "text/plain"}}, 415, "Content-Type"),
    ({"content": JPEG}, 415, "Content-Type"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "JSON"),
    ({"content": b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "headers": {"content-type": "application/json"}}, 400, "nested too deeply"),
    ({"json": {"picture": "x"}}, 422, '"image"'),
    ({"json": {"image": "!!!"}}, 422, "base64"),
    ({"json": {"image": 12}}, 422, "base64"),
    ({"json": ["image"]}, 422, "object"),
    ({"files": {"note": ("a.txt", b"", "text/plain")}, "data": {}}, 400, "empty"),
    ({"data": {"min_accuracy": "0.5"}}, 415, "Content-Type"),
    ({"files": [("a", ("a.jpg", JPEG, "image/jpeg")), ("b", ("b.jpg", JPEG, "image/jpeg"))]}, 422, "/v1/classify/batch"),
])
def test_bad_bodies_are_4xx_with_a_reason(client, request_args, status, words):
    response = client.post("/v1/classify", **request_args)
    assert response.status_code == status, response.json()
    assert words in response.json()["detail"]


@pytest.mark.parametrize(("params", "words"), [
    ({"min_accuracy": 1.5}, "min_accuracy"), ({"min_accuracy": -1}, "min_accuracy"), ({"max_latency_ms": 0}, "max_latency_ms"),
    ({"max_latency_ms": "NaN"}, "max_latency_ms"), ({"max_latency_ms": "inf"}, "max_latency_ms"), ({"top_k": 0}, "top_k"),
    ({"top_k": 10**6}, "top_k"), ({"top_k": 11}, "10 labels"), ({"on_miss": "pray"}, "on_miss"), ({"speed": "max"}, "speed"),
])
def test_bad_parameters_are_422(client, params, words):
    response = post_jpeg(client, **params)
    assert response.status_code == 422 and words in response.json()["detail"]


def test_unknown_member_or_family_is_404(client):
    for params in ({"member": "b9"}, {"family": "nope"}):
        response = post_jpeg(client, **params)
        assert response.status_code == 404 and "tiny-f" in response.json()["detail"]


def test_a_member_outside_the_family_asked_for_is_refused(client):
    assert post_jpeg(client, member="tiny-f-b0", family="nope").status_code == 404
    assert post_jpeg(client, member="tiny-f-b0", family="tiny-f").json()["member"] == "tiny-f-b0"


@pytest.mark.parametrize("path", ["/v1/classify", "/v1/classify/batch"])
def test_an_empty_list_of_images_is_422(client, path):
    response = client.post(path, json={"images": []})
    assert response.status_code == 422 and '"images" is empty' in response.json()["detail"]


def test_a_json_number_python_will_not_convert_is_400(client):
    body = '{"image": "' + base64.b64encode(JPEG).decode() + '", "top_k": ' + "9" * 5000 + "}"
    response = client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["detail"]


def test_a_multipart_body_cut_off_is_400_not_a_missing_file(client):
    whole = (b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
             + JPEG + b"\r\n--XyZ--\r\n")
    headers = {"content-type": "multipart/form-data; boundary=XyZ"}
    assert client.post("/v1/classify", content=whole, headers=headers).status_code == 200
    for cut in (whole[:-9], whole[:len(whole) // 2]):
        response = client.post("/v1/classify", content=cut, headers=headers)
        assert response.status_code == 400 and "closing boundary" in response.json()["detail"]


def test_the_body_limit_is_413(served_repository):
    with TestClient(create_app(make_server(served_repository, max_body_bytes=1000))) as small:
        wait_ready(small)
        assert post_jpeg(small, data=image_bytes(size=(400, 300))).status_code == 413
        chunked = small.post("/v1/classify", content=iter([b"x" * 600, b"x" * 600]), headers={"content-type": "image/jpeg"})
        assert chunked.status_code == 413 and "limit of 1000 bytes" in chunked.json()["detail"]
        too_many = small.post("/v1/classify/batch", json={"images": ["AA=="] * 65})
        assert too_many.status_code in (413, 422)


def test_more_files_than_the_image_limit_is_413_as_documented(client):
    files = [("image", (f"{index}.jpg", b"x", "image/jpeg")) for index in range(65)]
    response = client.post("/v1/classify/batch", files=files)
    assert response.status_code == 413 and "64" in response.json()["detail"], response.json()


def test_an_empty_member_or_family_means_not_given(client):
    for params in ({"member": ""}, {"family": ""}, {"member": "", "family": ""}):
        assert post_jpeg(client, **params).json()["member"] == post_jpeg(client).json()["member"]


def test_the_probes_answer_head(client):
    assert client.head("/healthz").status_code == 200 and client.head("/readyz").status_code == 200


def test_the_server_still_serves_after_every_bad_request(client):
    assert post_jpeg(client).status_code == 200


def test_models_hardware_health_and_openapi(client):
    models = client.get("/v1/models").json()
    assert models["default_family"] == "tiny-f" and models["families"]["tiny-f"] == ["tiny-f-b0", "tiny-f-b1"]
    first = models["members"][0]
    assert first["latency_provenance"] == "measured" and first["profile"][0]["batch"] == 1 and first["expected_latency_ms"] > 0
    assert first["latency_on_this_hardware"] is False  # the test's hardware id has no records of its own
    hardware = client.get("/v1/hardware").json()
    assert hardware["hardware"]["id"] == "cpu-test" and hardware["backend"]["kind"] == "onnxruntime"
    assert any("no measured latency of this hardware" in note for note in hardware["notes"])
    assert client.get("/healthz").json() == {"status": "live"}
    assert client.get("/readyz").json()["status"] == "ready"
    assert client.head("/healthz").status_code == client.head("/readyz").status_code == 200  # probes that send HEAD
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FastAPI warns of a duplicate operation id, which breaks generated clients
        paths = client.get("/openapi.json").json()["paths"]
    operation_ids = [operation["operationId"] for methods in paths.values() for operation in methods.values()]
    assert len(operation_ids) == len(set(operation_ids))
    assert {"/v1/classify", "/v1/classify/batch", "/v1/models", "/v1/hardware", "/metrics"} <= set(paths)
    assert "image/jpeg" in paths["/v1/classify"]["post"]["requestBody"]["content"]
    for path in ("/v1/classify", "/v1/classify/batch"):  # parsed by the app itself, documented from the same model
        parameters = {p["name"]: p for p in paths[path]["post"]["parameters"]}
        assert set(parameters) == set(ClassifyParams.model_fields) and all(p["in"] == "query" for p in parameters.values())
        assert "end to end" in parameters["max_latency_ms"]["description"]
    # The classify routes are served past FastAPI's router; every other method and path still goes through it.
    assert client.get("/v1/classify").status_code == 405 and client.post("/v1/classify/other").status_code == 404


def test_metrics(client):
    post_jpeg(client, min_accuracy=0.6)
    post_jpeg(client, min_accuracy=0.99)
    text = client.get("/metrics").text
    for needle in ('effx_requests_total{endpoint="classify",member="tiny-f-b1",status="200"}', 'effx_sla_misses_total{cause="rejected",sla="accuracy"}',
                   "effx_request_seconds_bucket", "effx_batch_size_bucket", 'effx_queue_depth{member="tiny-f-b0"}', "effx_ready 1.0",
                   'effx_latency_correction{member="tiny-f-b1"}'):
        assert needle in text, needle


class GatedBackend(OnnxRuntimeBackend):
    """The real embedded backend, with a gate on loading and on inference, and a switch that makes it fail."""

    def __init__(self, lanes=None):
        super().__init__("cpu")
        self.loading, self.running, self.broken = asyncio.Event(), threading.Event(), False  # batches run on lane threads
        self.running.set()
        if lanes is not None:  # its own device (like a GPU): decoding goes on while inference stalls
            self.lanes, self.on_host_cpu = lanes, False

    async def start(self, members):
        await self.loading.wait()
        await super().start(members)

    def run_now(self, member, batch):
        self.running.wait()
        if self.broken:
            raise BackendUnavailable("the accelerator fell off the bus")
        return super().run_now(member, batch)


def test_readiness_waits_for_warm_models_and_failures_are_503(served_repository):
    backend = GatedBackend()
    with TestClient(create_app(make_server(served_repository, backend))) as client:
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and "loading" in not_ready.json()["detail"]
        assert post_jpeg(client).status_code == 503
        assert client.get("/healthz").status_code == 200
        client.portal.call(backend.loading.set)
        wait_ready(client)
        assert post_jpeg(client).status_code == 200
        backend.broken = True
        failed = post_jpeg(client)
        assert failed.status_code == 503 and "fell off the bus" in failed.json()["detail"] and failed.headers["retry-after"] == "1"
        backend.broken = False
        assert post_jpeg(client).status_code == 200


def test_a_full_queue_answers_429_with_retry_after(served_repository):
    backend = GatedBackend(lanes=1)
    backend.loading.set()
    server = make_server(served_repository, backend, dispatch=DispatchSettings(max_queue=2), max_images=2)
    app = create_app(server)

    async def scenario():
        async with ready_client(app) as http:
            backend.running.clear()  # inference stalls: requests pile up

            def send():
                return http.post("/v1/classify", content=JPEG, headers={"content-type": "image/jpeg"}, params={"member": "tiny-f-b0"})
            device = server.dispatcher.device

            async def until(condition):
                deadline = time.monotonic() + 30
                while not condition() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)

            stalled = [asyncio.create_task(send())]
            await until(lambda: device.busy == 1)  # one image runs (and stalls)
            stalled += [asyncio.create_task(send()) for _ in range(2)]
            await until(lambda: device.queued("tiny-f-b0") == 2)  # two wait: the queue is full
            refused = await asyncio.wait_for(send(), 30)
            backend.running.set()
            return refused, await asyncio.wait_for(asyncio.gather(*stalled), 30)

    refused, stalled = asyncio.run(scenario())
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1 and "queued" in refused.json()["detail"]
    assert refused.json()["reason"] == "limit"
    assert [r.status_code for r in stalled] == [200, 200, 200]


def test_the_in_flight_limit_answers_429(served_repository):
    backend = GatedBackend()
    backend.loading.set()
    server = make_server(served_repository, backend, max_in_flight=1)
    app = create_app(server)

    async def scenario():
        async with ready_client(app) as http:
            backend.running.clear()
            send = lambda: http.post("/v1/classify", content=JPEG, headers={"content-type": "image/jpeg"})  # noqa: E731
            stalled = asyncio.create_task(send())
            while server.in_flight < 1:
                await asyncio.sleep(0.01)
            refused = await asyncio.wait_for(send(), 30)
            backend.running.set()
            return refused, await asyncio.wait_for(stalled, 30)

    refused, stalled = asyncio.run(scenario())
    assert refused.status_code == 429 and "1 requests, its limit" in refused.json()["detail"] and stalled.status_code == 200


def test_a_flood_of_expired_deadlines_is_refused_429_and_others_are_still_served(served_repository):
    server = make_server(served_repository)
    app = create_app(server)

    async def scenario():
        async with ready_client(app) as http:
            past = f"{time.time() - 0.5:.3f}"
            expired = [http.post("/v1/classify", content=JPEG, headers={"content-type": "image/jpeg", "effx-deadline": past})
                       for _ in range(200)]
            normal = http.post("/v1/classify", content=JPEG, headers={"content-type": "image/jpeg"}, params={"max_latency_ms": 5000})
            answers = await asyncio.wait_for(asyncio.gather(*expired, normal), 60)
            return answers, server.dispatcher.queued("tiny-f-b0") + server.dispatcher.queued("tiny-f-b1")

    answers, queued = asyncio.run(scenario())
    assert {r.status_code for r in answers[:-1]} == {429} and {r.json()["reason"] for r in answers[:-1]} == {"deadline"}
    assert "passed" in answers[0].json()["detail"]
    assert answers[-1].status_code == 200 and answers[-1].json()["sla"]["met"] and queued == 0


def test_a_model_onnx_runtime_cannot_load_is_named_by_readyz_and_by_classify(served_repository, tmp_path):
    import shutil

    broken = tmp_path / "repo"
    shutil.copytree(served_repository, broken)
    (broken / "tiny-f-b1" / "1" / "model.onnx").write_bytes(b"not a model")
    with TestClient(create_app(make_server(broken))) as client:
        deadline = time.monotonic() + 30
        while "startup failed" not in client.get("/readyz").json()["detail"] and time.monotonic() < deadline:
            time.sleep(0.05)
        answer = client.get("/readyz")
        assert answer.status_code == 503 and "tiny-f-b1" in answer.json()["detail"] and "ONNX Runtime" in answer.json()["detail"]
        refused = post_jpeg(client)  # not "loading": nothing is, and a retry after a second would fail the same way
        assert refused.status_code == 503 and "startup failed" in refused.json()["detail"] and "tiny-f-b1" in refused.json()["detail"]


def _scope(path="/v1/classify", query=b"", headers=()):
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
            "raw_path": path.encode(), "query_string": query, "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
            "headers": [(b"content-type", b"image/jpeg"), (b"host", b"test"), *headers]}


async def _post(app, chunks, then="end", headers=(), left=None, gone_after_s=None):
    """POST the chunks of a body straight to the app, then end the body, `stall` (send nothing more until cancelled)
    or `leave` (the client disconnects). The answer's start; `left` (a list) gets how many chunks the app had not read
    when it answered. `gone_after_s`: the client disconnects that long after its body ended."""
    messages = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks]
    sent = []

    ended = False

    async def receive():
        nonlocal ended
        if messages:
            return messages.pop(0)
        if then == "stall" or ended:  # after its end, a body has nothing more to say until the client goes
            await asyncio.sleep(3600 if gone_after_s is None or then == "stall" else gone_after_s)
            return {"type": "http.disconnect"}
        ended = True
        return {"type": "http.disconnect"} if then == "leave" else {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if not sent and left is not None:
            left.append(len(messages))
        sent.append(message)

    await app(_scope(headers=headers), receive, send)
    return sent[0]


def _with_open_server(served_repository, scenario, **settings):
    async def run():
        server = await open_ready(make_server(served_repository, **settings))
        try:
            return await scenario(create_app(server))
        finally:
            await server.close()

    return asyncio.run(run())


def test_a_client_gone_mid_body_is_counted_not_raised(served_repository):
    async def scenario(app):
        answer = await _post(app, [JPEG[:1000]], then="leave")  # an exception here is what uvicorn logs as a traceback
        metrics = app.state.server.metrics.render().decode()
        return answer, metrics

    answer, metrics = _with_open_server(served_repository, scenario)
    assert answer["status"] == 499 and 'status="499"' in metrics


def test_stalled_uploads_do_not_count_against_the_in_flight_limit(served_repository):
    async def scenario(app):
        stalled = [asyncio.create_task(_post(app, [JPEG[:100]], then="stall")) for _ in range(3)]
        await asyncio.sleep(0.05)
        answer = await _post(app, [JPEG])
        for task in stalled:
            task.cancel()
        return answer

    assert _with_open_server(served_repository, scenario, max_in_flight=2)["status"] == 200


def test_a_body_that_does_not_arrive_in_time_is_408_and_closed(served_repository):
    async def scenario(app):
        return await asyncio.wait_for(_post(app, [JPEG[:100]], then="stall"), 5.0)

    answer = _with_open_server(served_repository, scenario, body_timeout_s=0.2)
    assert answer["status"] == 408 and (b"connection", b"close") in answer["headers"]


def test_bodies_in_transit_share_one_budget(served_repository):
    async def scenario(app):
        first = asyncio.create_task(_post(app, [b"x" * 800], then="stall"))
        await asyncio.sleep(0.05)
        second = await _post(app, [b"y" * 800])  # over the budget while the first holds 800 bytes
        first.cancel()
        return second

    answer = _with_open_server(served_repository, scenario, max_body_bytes=1000, max_bodies_bytes=1000)
    assert answer["status"] == 429


def test_the_memory_for_bodies_must_hold_a_whole_body(served_repository):
    with pytest.raises(UserError, match="memory for bodies"):
        make_server(served_repository, max_body_bytes=2000, max_bodies_bytes=1000)


def test_an_oversized_body_is_read_to_its_end_before_the_413_unless_huge(served_repository):
    """A client that writes its whole body before reading must find the 413, not a reset connection."""
    async def scenario(app):
        results = []
        for chunks, declared in (([b"x" * 600] * 5, 3000), ([b"x" * 600] * 5, None), ([b"x" * 600] * 5, 2**40)):
            left = []
            headers = [(b"content-length", str(declared).encode())] if declared else []
            results.append(((await _post(app, chunks, headers=headers, left=left))["status"], left[0]))
        return results

    declared, streamed, huge = _with_open_server(served_repository, scenario, max_body_bytes=1000)
    assert declared == (413, 0) and streamed == (413, 0)  # every chunk read (and dropped) first
    assert huge == (413, 5)  # a terabyte is not drained: answered at once, and the connection closes on it


def test_decoding_bombs_are_refused_with_their_cause(served_repository):
    server = make_server(served_repository, dispatch=DispatchSettings(decode_budget_ms=5))
    with TestClient(create_app(server)) as client:
        wait_ready(client)
        scans = client.post("/v1/classify", content=progressive_scan_bomb(64, 48, 40), headers={"content-type": "image/jpeg"})
        assert scans.status_code == 400 and "scans, more than the limit" in scans.json()["detail"]
        pixels = client.post("/v1/classify", content=png_pixel_bomb(3000, 3000), headers={"content-type": "image/png"})
        assert pixels.status_code == 400 and "more than 5 ms of CPU" in pixels.json()["detail"]
        assert post_jpeg(client).status_code == 200  # a normal image still decodes within the budget


def test_a_client_gone_while_its_image_decodes_stops_the_decoding(served_repository, monkeypatch):
    stopped = []
    original = preprocess.DecodeStopped.__init__
    monkeypatch.setattr(preprocess.DecodeStopped, "__init__", lambda self, reason: (stopped.append(reason), original(self, reason))[1])

    async def scenario(app):
        server = app.state.server
        answer = await _post(app, [png_pixel_bomb(4000, 4000)], headers=[(b"content-type", b"image/png")], gone_after_s=0.05)
        deadline = time.monotonic() + 30
        while server.dispatcher.cpu.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return answer, server.metrics.render().decode()

    answer, metrics = _with_open_server(served_repository, scenario)
    assert answer["status"] == 499 and stopped == ["the request ended"]
    assert 'status="499"' in metrics


def test_a_body_holds_its_bytes_until_its_answer(served_repository):
    backend = GatedBackend()
    backend.loading.set()

    async def scenario(app):
        backend.running.clear()  # the first request is read and stalls in inference, its body still held
        first = asyncio.create_task(_post(app, [JPEG]))
        while not app.state.server.in_flight:
            await asyncio.sleep(0.01)
        second = await _post(app, [JPEG])
        backend.running.set()
        return await first, second

    first, second = _with_open_server(served_repository, scenario, backend=backend, max_body_bytes=len(JPEG),
                                      max_bodies_bytes=len(JPEG) + len(JPEG) // 2)
    assert first["status"] == 200 and second["status"] == 429


@pytest.fixture(scope="module")
def open_client(served_repository):
    with TestClient(create_app(make_server(served_repository))) as client:
        wait_ready(client)
        yield client


_CONTENT_TYPES = st.sampled_from(["image/jpeg", "image/png", "image/webp", "application/json", "multipart/form-data; boundary=b",
                                  "multipart/form-data", "text/plain", "image/jpeg; charset=utf-8"])
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["image", "images", "member", "top_k", "x"]),
                                                                                 inner, max_size=4), max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(content_type=_CONTENT_TYPES, body=st.one_of(
    st.binary(max_size=2000),
    _JSON.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=300).map(lambda junk: b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x\"\r\n\r\n" + junk),
    st.binary(max_size=600).map(lambda junk: JPEG[:200] + junk),
), query=st.dictionaries(st.sampled_from(["member", "family", "top_k", "max_latency_ms", "min_accuracy", "on_miss"]),
                         st.text(max_size=12), max_size=3))
def test_no_body_a_client_can_send_gets_a_5xx(open_client, content_type, body, query):
    answer = open_client.post("/v1/classify", content=body, params=query, headers={"content-type": content_type})
    assert answer.status_code < 500, (answer.status_code, answer.text)


def test_a_query_string_is_parsed_once_and_a_bad_one_fails_every_time():
    def request(query: bytes):
        return type("Request", (), {"scope": {"query_string": query}})()

    first, again = query_params(request(b"max_latency_ms=12&top_k=3")), query_params(request(b"max_latency_ms=12&top_k=3"))
    assert first is again and first == ClassifyParams(max_latency_ms=12, top_k=3)
    with pytest.raises(ValueError):  # shared between requests, so it cannot be changed
        first.top_k = 4
    for _ in range(2):
        with pytest.raises(RequestValidationError):
            query_params(request(b"top_k=0"))
    long = b"&".join([b"top_k=3"] * 100)  # beyond MAX_REMEMBERED_QUERY: parsed every time, never kept
    assert query_params(request(long)) == query_params(request(long)) and query_params(request(long)) is not query_params(request(long))



def test_a_bug_in_the_request_flow_is_logged_and_answered_500_and_the_server_goes_on(served_repository, monkeypatch, caplog):
    from effx_serve.serve import flow

    real = flow.classify
    calls = []

    async def failing_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return await real(*args)

    monkeypatch.setattr(flow, "classify", failing_once)
    with TestClient(create_app(make_server(served_repository)), raise_server_exceptions=False) as client:
        wait_ready(client)
        failed = post_jpeg(client)
        served = post_jpeg(client)
    assert failed.status_code == 500 and "bug" in failed.json()["detail"]
    assert any("POST /v1/classify failed" in record.message and record.exc_info for record in caplog.records)
    assert served.status_code == 200 and served.json()["predictions"]
