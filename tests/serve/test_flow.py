"""The request flow without HTTP: images and parameters in, an answer or the reason it was not served out."""

import asyncio
import json
import time

import numpy as np
import pytest

from effx_serve.serve import flow
from effx_serve.serve.dispatch import Expectation, Ran
from effx_serve.serve.errors import InvalidRequest, SlaUnmeetable, UnknownName, UnreadableImage
from effx_serve.serve.scheduler import ItemResult
from effx_serve.serve.schema import BatchClassification, Classification, ClassifyParams
from tests.helpers import JPEG, fake_member, make_server, open_ready


def test_the_flow_routes_decodes_runs_and_answers_with_a_trace(served_repository):
    async def scenario():
        server = make_server(served_repository)
        await open_ready(server)
        try:
            trace = flow.Trace(arrival=time.monotonic())
            text = await flow.classify(server, [JPEG], ClassifyParams(min_accuracy=0.6, top_k=3), False, trace)
            batch_text = await flow.classify(server, [JPEG, JPEG], ClassifyParams(member="tiny-f-b0"), True, flow.Trace(time.monotonic()))
            # The answers are written without pydantic: they must still be exactly the documented schema.
            Classification.model_validate_json(text, strict=True)
            BatchClassification.model_validate_json(batch_text, strict=True)
            answer, batch = json.loads(text), json.loads(batch_text)
            failures = []
            for images, params, batched in (([JPEG, JPEG], ClassifyParams(), False), ([JPEG], ClassifyParams(min_accuracy=0.99), False),
                                             ([b"not an image"], ClassifyParams(), False), ([JPEG], ClassifyParams(member="nope"), False),
                                             ([JPEG], ClassifyParams(top_k=11), False)):
                try:
                    await flow.classify(server, images, params, batched, flow.Trace(time.monotonic()))
                except Exception as error:  # noqa: BLE001 - collected for the assertions below
                    failures.append(error)
            return trace, answer, batch, failures
        finally:
            await server.close()

    trace, answer, batch, failures = asyncio.run(scenario())
    assert answer["member"] == trace.member == "tiny-f-b1" and trace.sla == "accuracy" and answer["sla"]["met"]
    assert len(answer["predictions"]) == 3 and answer["sla"]["route"] == "preferred"
    timing = answer["timing"]
    assert timing["total_ms"] >= timing["decode_ms"] + timing["inference_ms"] + timing["serialize_ms"] > 0
    assert answer["observed_latency_ms"] == timing["total_ms"]
    assert batch["member"] == "tiny-f-b0" and len(batch["results"]) == 2
    assert set(answer) == set(Classification.model_fields) and set(batch) == set(BatchClassification.model_fields)
    kinds = [type(error) for error in failures]
    assert kinds == [InvalidRequest, SlaUnmeetable, UnreadableImage, UnknownName, InvalidRequest], failures
    assert [o["member"] for o in failures[1].options][:1] == ["tiny-f-b1"] and "min_accuracy 0.99" in str(failures[1])


@pytest.mark.parametrize("error", [InvalidRequest("x"), UnreadableImage("x"), UnknownName("x"), SlaUnmeetable("x", [])])
def test_every_reason_maps_to_one_client_status(error):
    from effx_serve.serve.http import errors

    assert 400 <= errors.response(error).status_code < 500


def test_a_request_dropped_late_after_admission_is_counted_and_backs_the_upgrade_budget_off(served_repository, monkeypatch):
    from effx_serve.serve.dispatch import DeadlineMissed

    async def late(*args, **kwargs):
        raise DeadlineMissed("could not answer in time", 1.0)

    async def scenario():
        server = make_server(served_repository)
        await open_ready(server)
        try:
            share = server.dispatcher.upgrades.share
            monkeypatch.setattr(server.dispatcher, "run", late)
            with pytest.raises(DeadlineMissed):
                await flow.classify(server, [JPEG], ClassifyParams(max_latency_ms=5000), False, flow.Trace(time.monotonic()))
            return share, server.dispatcher.upgrades.share, server.metrics.render().decode()
        finally:
            await server.close()

    before, after, metrics = asyncio.run(scenario())
    assert after < before
    assert 'effx_routes_total{outcome="refused_deadline"} 1.0' in metrics and 'effx_sla_misses_total{cause="refused",sla="latency"} 1.0' in metrics


def test_the_bound_is_judged_on_the_whole_time_in_the_server_decoding_included(served_repository, monkeypatch):
    """Decoding that takes longer than the bound makes the answer late, though its queue and inference fit well inside it."""

    async def scenario():
        server = make_server(served_repository)
        await open_ready(server)
        prepare = server.dispatcher._prepare

        def slow_prepare(*args, **kwargs):
            time.sleep(0.06)
            return prepare(*args, **kwargs)

        monkeypatch.setattr(server.dispatcher, "_prepare", slow_prepare)
        try:
            text = await flow.classify(server, [JPEG], ClassifyParams(max_latency_ms=40, on_miss="best_effort"), False, flow.Trace(time.monotonic()))
            return json.loads(text)
        finally:
            await server.close()

    answer = asyncio.run(scenario())
    timing = answer["timing"]
    assert timing["queue_ms"] + timing["inference_ms"] < 40 <= timing["decode_ms"] <= timing["total_ms"]
    assert not answer["sla"]["met"] and answer["sla"]["misses"] == ["latency"] and answer["sla"]["route"] == "best_effort"


def test_a_request_no_lane_could_start_in_time_for_its_member_is_answered_by_a_faster_one_as_moved(served_repository, monkeypatch):
    from effx_serve.serve.scheduler import Late

    async def scenario():
        server = make_server(served_repository)
        await open_ready(server)
        cpu = server.dispatcher.cpu
        call_then_run = cpu.call_then_run

        async def late_for_b1(function, member, deadline, *args, **kwargs):
            if member.name == "tiny-f-b1":  # as if the lanes were busy until it could no longer make it there
                raise Late(member.name, deadline, time.monotonic())
            return await call_then_run(function, member, deadline, *args, **kwargs)

        monkeypatch.setattr(cpu, "call_then_run", late_for_b1)
        try:
            text = await flow.classify(server, [JPEG], ClassifyParams(max_latency_ms=5000), False, flow.Trace(time.monotonic()))
            return json.loads(text), server.metrics.render().decode()
        finally:
            await server.close()

    answer, metrics = asyncio.run(scenario())
    assert answer["member"] == "tiny-f-b0" and answer["sla"]["route"] == "moved" and answer["sla"]["met"]
    assert 'effx_routes_total{outcome="moved"} 1.0' in metrics


def test_a_load_that_rules_out_the_accurate_member_scales_the_request_down_then_refuses_it_saying_which(served_repository):
    """The answer's sla.route and /metrics say what the load did: `scaled` to a faster member, then `refused_overload`
    (429 with Retry-After, reason overload) once no member can make the bound under the load, though one could at rest."""
    from effx_serve.core.preprocess import peek
    from effx_serve.serve.dispatch import DecodeTimes
    from effx_serve.serve.errors import Overloaded

    def slow_decoding(server, member):  # as learned under load: 20 times the calibrated decoding (at rest stays calibrated)
        for _ in range(100):  # whatever it had learned before fades
            server.dispatcher.decode_times.corrections[("JPEG", member)].observe(1.0, 20.0)

    async def scenario():
        server = make_server(served_repository)
        await open_ready(server)
        try:
            pixels = peek(JPEG)[1]
            for name in server.catalog.members:  # 10 ms to decode this JPEG at rest on every member: 200 ms under the load
                server.dispatcher.decode_times.calibrate("JPEG", name, 10.0 * DecodeTimes.REFERENCE_PIXELS / pixels)
            slow_decoding(server, "tiny-f-b1")
            scaled = json.loads(await flow.classify(server, [JPEG], ClassifyParams(max_latency_ms=100), False, flow.Trace(time.monotonic())))
            slow_decoding(server, "tiny-f-b0")
            with pytest.raises(Overloaded) as refused:
                await flow.classify(server, [JPEG], ClassifyParams(max_latency_ms=100), False, flow.Trace(time.monotonic()))
            return scaled, refused.value, server.metrics.render().decode()
        finally:
            await server.close()

    scaled, refused, metrics = asyncio.run(scenario())
    assert scaled["member"] == "tiny-f-b0" and scaled["sla"]["route"] == "scaled"  # at rest tiny-f-b1 would have made it
    assert refused.reason == "overload" and refused.retry_after_s > 0 and "under the current load" in str(refused)
    assert 'effx_routes_total{outcome="scaled"} 1.0' in metrics and 'effx_routes_total{outcome="refused_overload"} 1.0' in metrics


def test_a_client_deadline_too_close_for_any_member_is_a_429_unless_the_requests_own_bound_is_impossible_too(served_repository):
    from effx_serve.core.preprocess import peek
    from effx_serve.serve.dispatch import DeadlineMissed, DecodeTimes

    async def scenario():
        server = make_server(served_repository)
        await open_ready(server)
        try:
            # Decoding this JPEG is expected to take 500 ms on every member: no member can answer in less, even at rest.
            pixels = peek(JPEG)[1]
            for name in server.catalog.members:
                server.dispatcher.decode_times.calibrate("JPEG", name, 500.0 * DecodeTimes.REFERENCE_PIXELS / pixels)
            outcomes = []
            for own_ms in (5000.0, 300.0):  # the request's own bound: feasible at rest, then not
                arrival = time.monotonic()  # 50 ms of its client deadline left on arrival (the rest went in transit or a backlog)
                try:
                    await flow.classify(server, [JPEG], ClassifyParams(max_latency_ms=own_ms), False, flow.Trace(arrival, client_deadline=arrival + 0.05))
                except Exception as error:  # noqa: BLE001 - collected for the assertions below
                    outcomes.append(error)
            return outcomes, server.metrics.render().decode()
        finally:
            await server.close()

    (short, impossible), metrics = asyncio.run(scenario())
    assert isinstance(short, DeadlineMissed) and short.reason == "deadline" and "left of the client deadline" in str(short)
    assert isinstance(impossible, SlaUnmeetable)  # its own bound is below every member's time at rest: the SLA is the cause
    assert 'effx_routes_total{outcome="refused_expired"} 1.0' in metrics and 'effx_routes_total{outcome="rejected_sla"} 1.0' in metrics



@pytest.mark.parametrize("labels", [3, flow.SMALL_OUTPUT, flow.SMALL_OUTPUT + 1, 1000])
def test_predictions_are_the_softmax_top_k_with_ties_in_label_order_on_both_paths(labels):
    import numpy as np

    rng = np.random.default_rng(labels)
    logits = (rng.normal(size=labels) * 4).astype(np.float32)
    logits[[0, labels - 1]] = logits.max() + 1  # a tie at the top: the lower index first
    names = tuple(f"c{i}" for i in range(labels))
    top = flow._predictions(logits, names, 3)
    reference = np.exp(logits.astype(np.float64) - logits.max())
    reference /= reference.sum()
    assert [p["index"] for p in top] == [0, labels - 1, *np.argsort(-reference, kind="stable")[2:3].tolist()]
    assert [p["label"] for p in top] == [names[p["index"]] for p in top]
    assert all(isinstance(p["score"], float) and abs(p["score"] - reference[p["index"]]) < 1e-12 for p in top)


def test_a_late_answer_is_put_down_to_the_stage_that_overran_its_expectation_most():
    member = fake_member("m", 0.5, {1: 1.0})
    expected = Expectation(member, decode_ms=2.0, wait_ms=1.0, inference_ms=1.0, after_ms=0.2, total_ms=4.2)
    ran = Ran(member, [ItemResult(np.zeros(3), queue_ms=0.5, inference_ms=1.0, batch_size=1)], None)

    def stage(to_decoded_ms, to_result_ms, after_ms):  # each from the step before, in ms
        decoded = 0.001 * to_decoded_ms
        done = decoded + 0.001 * to_result_ms
        return flow._overran(expected, ran, 0.0, decoded, flow._handback_ms(ran, decoded, done), done, done + 0.001 * after_ms)

    assert stage(9.0, 1.5, 0.2) == "wait_decode"  # 8.5 ms beyond waiting and decoding (its batch's queue counted there)
    assert stage(3.0, 9.5, 0.2) == "handback"  # the batch ran on time, the event loop took its result up 8 ms later
    assert stage(3.0, 1.5, 6.0) == "after"
