"""Expected latency, routing and running on a fake device with known service times: the work of every member counts,
load scales requests down to faster members and then refuses them early, and a request that can no longer make its
deadline moves to a faster member or is answered at once."""

import asyncio
import dataclasses
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from effx_serve.core.photos import synthetic_photo
from effx_serve.serve.catalog import Catalog
from effx_serve.serve.dispatch import DeadlineMissed, Dispatcher, ImageInfo
from effx_serve.serve.errors import InvalidRequest, UnknownName, UnreadableImage
from effx_serve.serve.estimates import Mean
from effx_serve.serve.metrics import ServerMetrics
from effx_serve.serve.router import Sla
from effx_serve.serve.settings import DispatchSettings
from tests.helpers import fake_member

SMALL = fake_member("small", 0.5, {1: 2.0, 4: 5.0}, resolution=24)
LARGE = fake_member("large", 0.8, {1: 10.0, 4: 30.0}, resolution=32)
PHOTO = ImageInfo("JPEG", 640 * 480)


class FakeBackend:
    """Runs a batch in its member's profiled time (on the host CPU, one lane unless told); `gate` holds batches."""

    kind, runtime = "fake", "onnxruntime"

    def __init__(self, lanes=1, on_host_cpu=True):
        self.lanes, self.on_host_cpu = lanes, on_host_cpu
        self.gate = asyncio.Event()
        self.gate.set()
        self.ran = []

    async def start(self, members):
        pass

    async def infer(self, member, batch, deadline=math.inf):
        await self.gate.wait()
        self.ran.append((member.name, len(batch)))
        await asyncio.sleep(member.latency.service_ms(len(batch)) / 1000.0)
        return np.zeros((len(batch), 10), np.float32)

    def problem(self):
        return None

    def queue_delay_ms(self, member):
        return 0.0

    async def close(self):
        pass


def dispatcher(costing="device", lanes=1, max_queue=2000, small=SMALL, large=LARGE, backend=None, **settings):
    catalog = Catalog(Path("."), "cpu-test", "cpu", "fake", {"fake": ("small", "large")}, {"small": small, "large": large}, "test")
    backend = backend or FakeBackend(lanes)
    return Dispatcher(catalog, backend, DispatchSettings(costing=costing, cpu_lanes=lanes, max_queue=max_queue, **settings), ServerMetrics()), backend


def run(coroutine):
    return asyncio.run(coroutine)


async def hold(d, backend, member, count, deadline):
    """Fill the device: the lane holds one batch at the gate, `count` images of `member` queue behind it."""
    backend.gate.clear()

    def one() -> asyncio.Task:
        return asyncio.create_task(d.device.run(member, [np.zeros((3, member.resolution, member.resolution), np.float32)], deadline))

    tasks = [one()]
    for _ in range(1000):  # the lane takes the first alone before the rest queue (on a busy machine it may wake late)
        await asyncio.sleep(0.001)
        if d.device.busy:
            break
    tasks += [one() for _ in range(count)]
    await asyncio.sleep(0.01)
    return tasks


def test_expected_latency_counts_every_members_work_and_the_decoding_unless_costed_per_member():
    async def scenario(costing):
        d, backend = dispatcher(costing)
        await d.start()
        now = time.monotonic()
        idle = d.expect(SMALL, [PHOTO], now + 1.0, now, now)
        tasks = await hold(d, backend, LARGE, 4, now + 0.5)  # the other member's work, due sooner
        busy = d.expect(SMALL, [PHOTO], now + 1.0, now, time.monotonic())
        backend.gate.set()
        await asyncio.gather(*tasks)
        await d.close()
        return idle, busy

    idle, busy = run(scenario("device"))
    assert idle.decode_ms > 0 and idle.wait_ms == 0 and idle.total_ms >= idle.decode_ms + idle.inference_ms
    assert busy.wait_ms >= LARGE.latency.service_ms(4) * 0.9  # the large member's queued batch is ahead of it
    idle, busy = run(scenario("member"))
    assert idle.decode_ms == busy.decode_ms == 0 and busy.wait_ms == 0  # the old costing sees only its own queue


def test_load_scales_a_latency_bound_down_to_a_faster_member_then_refuses_early():
    async def scenario():
        d, backend = dispatcher()
        await d.start()
        now = time.monotonic()
        at_rest = {m.name: d.expect(m, [PHOTO], now + 1.0, now, now).total_ms for m in (SMALL, LARGE)}
        tasks = await hold(d, backend, LARGE, 7, now + 0.001)  # two batches of the large member due before anything new
        soon = time.monotonic()
        loaded = {m.name: d.expect(m, [PHOTO], now + 1.0, now, soon).total_ms for m in (SMALL, LARGE)}
        bound = (loaded["small"] + loaded["large"]) / 2  # the small member makes it under this load, the large one does not
        tight = (loaded["small"] + at_rest["small"]) / 2  # only at rest could the small one make it
        routes = {name: d.route(sla, [PHOTO], now + (sla.max_latency_ms or 1000.0) / 1000, now) for name, sla in (
            ("scaled", Sla(max_latency_ms=bound)), ("tight", Sla(max_latency_ms=tight)), ("impossible", Sla(max_latency_ms=0.5)),
            ("best_effort", Sla(max_latency_ms=tight, on_miss="best_effort")), ("accuracy", Sla(min_accuracy=0.7)))}
        backend.gate.set()
        await asyncio.gather(*tasks)
        preferred = d.route(Sla(max_latency_ms=bound), [PHOTO], time.monotonic() + bound / 1000, time.monotonic())
        await d.close()
        return at_rest, loaded, bound, routes, preferred

    at_rest, loaded, bound, routes, preferred = run(scenario())
    assert at_rest["large"] < bound < loaded["large"]  # the load alone decides
    assert (preferred.member.name, preferred.route) == ("large", "preferred")
    assert (routes["scaled"].member.name, routes["scaled"].route) == ("small", "scaled")
    assert (routes["tight"].member, routes["tight"].route) == (None, "overload")  # at rest one could: refused for the load
    assert (routes["impossible"].member, routes["impossible"].route) == (None, "sla")  # not even at rest
    assert (routes["best_effort"].member.name, routes["best_effort"].route) == ("small", "best_effort")
    assert (routes["accuracy"].member.name, routes["accuracy"].route) == ("large", "preferred")  # no bound: the load does not move it


def test_a_loads_corrections_do_not_make_a_fine_sla_look_impossible_at_rest():
    """Under load decoding ran 5x slower, batches 4x, answers 3x the model and batches' results waited 8 ms for the event
    loop: the loaded expectation says so, the at-rest one (is the SLA itself impossible: 422, or is it the load: 429?) stays
    the calibration's and the profile's."""
    async def scenario():
        d, _ = dispatcher()
        await d.start()
        now = time.monotonic()
        before = {m.name: d.expect(m, [PHOTO], now + 1.0, now, now, idle=True) for m in (SMALL, LARGE)}
        for _ in range(50):
            for m in (SMALL, LARGE):
                d.decode_times.observe("JPEG", m.name, PHOTO.pixels, 5 * before[m.name].decode_ms)
                d.contention.observe(m.latency.service_ms(1), 4 * m.latency.service_ms(1))
            d.end_to_end.observe(10.0, 30.0)
            d.handback.observe(8.0)
        now = time.monotonic()
        after = {m.name: d.expect(m, [PHOTO], now + 1.0, now, now, idle=True) for m in (SMALL, LARGE)}
        loaded = d.expect(SMALL, [PHOTO], now + 1.0, now, now)
        bound = (after["small"].total_ms + loaded.total_ms) / 2  # fine at rest, not under this load
        routed = d.route(Sla(max_latency_ms=bound), [PHOTO], now + bound / 1000, now)
        await d.close()
        return before, after, loaded, routed

    before, after, loaded, routed = run(scenario())
    assert all(after[name].total_ms == pytest.approx(before[name].total_ms) for name in before)
    assert loaded.total_ms > 5 * after["small"].total_ms
    assert loaded.handback_ms == pytest.approx(8.0, rel=1e-3) and loaded.after_ms > 8.0 > after["small"].after_ms  # no backlog at rest
    assert (routed.member, routed.route) == (None, "overload")  # 429 for the load, not 422 "relax your SLA"


def test_a_hand_back_learned_in_a_stall_fades_so_a_server_that_refuses_everything_recovers():
    """While every request is refused no answer teaches the hand-back otherwise: it must decay back on its own."""
    async def scenario():
        d, _ = dispatcher()
        await d.start()
        clock = [time.monotonic()]
        d.handback = Mean(start=0.0, weight=0.1, half_life_s=d.settings.correction_half_life_s, clock=lambda: clock[0])
        now = time.monotonic()
        bound = 5 * d.expect(SMALL, [PHOTO], now + 1.0, now, now, idle=True).total_ms

        def route():
            now = time.monotonic()
            return d.route(Sla(max_latency_ms=bound), [PHOTO], now + bound / 1000, now)

        fine = route()
        d.handback.observe(10 * bound)  # the event loop stalled: results waited far longer than any bound for it
        stalled = route()
        clock[0] += 12 * d.settings.correction_half_life_s  # no answer since: nothing new was learned
        recovered = route()
        await d.close()
        return fine, stalled, recovered

    fine, stalled, recovered = run(scenario())
    assert fine.member is not None and (stalled.member, stalled.route) == (None, "overload")
    assert recovered.member is not None and recovered.route in ("preferred", "scaled")


def alone_and_crowded(d, now: float):
    """Two requests with a 500 ms bound routed on `d`: one while no other was being served, one while another was."""
    with d.in_use():
        alone = d.route(Sla(max_latency_ms=500.0), [PHOTO], now + 0.5, now)
        with d.in_use():
            crowded = d.route(Sla(max_latency_ms=500.0), [PHOTO], now + 0.5, now)
    return alone, crowded


def test_the_at_rest_expectation_learns_only_from_requests_served_alone():
    async def scenario():
        d, _ = dispatcher()
        await d.start()
        now = time.monotonic()
        alone, crowded = alone_and_crowded(d, now)
        for _ in range(30):  # answered in twice the at-rest expectation, after their batches
            d.observe_answer(crowded, now, now, 0.0, now, now + 2 * crowded.at_rest_model_ms / 1000)
        untaught = d.at_rest.factor()
        for _ in range(30):
            d.observe_answer(alone, now, now, 0.0, now, now + 2 * alone.at_rest_model_ms / 1000)
        taught = d.at_rest.factor()
        await d.close()
        return alone, crowded, untaught, taught

    alone, crowded, untaught, taught = run(scenario())
    assert alone.alone and not crowded.alone and alone.at_rest_model_ms > 0
    assert untaught == 1.0 and 1.5 < taught <= 2.0


def test_an_answered_bounded_request_records_how_far_its_expectation_was_off_by_whether_it_was_alone():
    async def scenario():
        d, _ = dispatcher()
        await d.start()
        now = time.monotonic()
        alone, crowded = alone_and_crowded(d, now)
        unbounded = d.route(Sla(), [PHOTO], now + 1.0, now)
        d.observe_answer(alone, now, now, 0.0, now, now + alone.expected_ms / 1000 - 0.0015)  # 1.5 ms sooner than expected
        d.observe_answer(crowded, now, now, 0.0, now, now + crowded.expected_ms / 1000 + 0.006)  # 6 ms late
        d.observe_answer(unbounded, now, now, 0.0, now, now + 1.0)  # no bound: not counted
        errors = {values[0]: (counts, total) for values, counts, total, _ in d.metrics.expectation_error.dump()}
        await d.close()
        return errors

    errors = run(scenario())
    bounds = (-0.016, -0.008, -0.004, -0.002, -0.001, 0.0, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, math.inf)
    assert set(errors) == {"alone", "shared"}
    for load, (error_s, bucket) in {"alone": (-0.0015, -0.001), "shared": (0.006, 0.008)}.items():
        counts, total = errors[load]
        assert counts == [int(bound == bucket) for bound in bounds] and total == pytest.approx(error_s, abs=1e-6)


def test_the_backends_own_queue_time_is_in_the_expected_batch_time_and_what_the_corrections_learn():
    """Triton's queue time (read from its statistics) is part of what a batch is expected to take: a batch observed to take
    service + queue time leaves the corrections at 1, and the expectation holds the queue time."""

    async def scenario():
        backend = FakeBackend(on_host_cpu=False)
        d, _ = dispatcher(backend=backend)
        await d.start()
        now = time.monotonic()
        before = d.expect(SMALL, [PHOTO], now + 1.0, now, now).inference_ms, d.batch_ms(SMALL, 1)
        backend.queue_delay_ms = lambda member: 10.0
        for _ in range(20):
            d._observed(SMALL, 1, SMALL.latency.service_ms(1) + 10.0)
        after = d.expect(SMALL, [PHOTO], now + 1.0, now, now).inference_ms, d.batch_ms(SMALL, 1)
        idle = d.expect(SMALL, [PHOTO], now + 1.0, now, now, idle=True).inference_ms
        await d.close()
        return before, after, idle, d.contention.factor()

    (inference, batch), (queued_inference, queued_batch), idle, contention = run(scenario())
    assert inference == pytest.approx(SMALL.latency.service_ms(1)) and batch == pytest.approx(SMALL.latency.service_ms(1))
    assert contention == pytest.approx(1.0)
    assert queued_inference == pytest.approx(inference + 10.0) and queued_batch == pytest.approx(batch + 10.0)
    assert idle == pytest.approx(inference)  # an idle server's Triton has no queue


def test_a_rate_the_accurate_member_cannot_sustain_sends_the_excess_to_the_faster_one_unless_costed_per_member():
    async def scenario(costing):
        d, _ = dispatcher(costing)
        await d.start()

        def burst(count):  # back to back: each request alone would fit on the large member, the whole burst would not
            now = time.monotonic()
            return [d.route(Sla(max_latency_ms=1000.0), [PHOTO], now + 1.0, now) for _ in range(count)]

        first = burst(20)
        await asyncio.sleep(0.2)  # the budget refills
        later = d.route(Sla(max_latency_ms=1000.0), [PHOTO], time.monotonic() + 1.0, time.monotonic())
        await d.close()
        return [(r.member.name, r.route) for r in first], (later.member.name, later.route)

    first, later = run(scenario("device"))
    assert first[0] == ("large", "preferred") and first[-5:] == [("small", "scaled")] * 5
    assert 1 <= sum(name == "large" for name, _ in first) <= 4
    assert later == ("large", "preferred")
    first, _ = run(scenario("member"))
    assert {name for name, _ in first} == {"large"}  # the old costing: every request alone


def test_a_request_that_can_no_longer_make_it_moves_to_a_faster_member_or_is_answered_at_once():
    small, large = fake_member("small", 0.5, {1: 4.0}, 24), fake_member("large", 0.8, {1: 40.0}, 32)
    blocker = fake_member("blocker", 0.1, {1: 50.0}, 24)  # runs as long as profiled, so the corrections stay put

    async def scenario(on_miss, moves):
        d, backend = dispatcher(small=small, large=large)
        await d.start()
        now = time.monotonic()
        deadline = now + 0.080
        decoded = await d.decode([synthetic_photo(64, 48)], [ImageInfo("JPEG", 64 * 48)], large, deadline)
        pictures, inputs = decoded.pictures, decoded.inputs
        blocking = asyncio.create_task(d.device.run(blocker, [np.zeros((3, 24, 24), np.float32)], now + 0.001))
        await asyncio.sleep(0.005)  # the lane runs the blocker: the large member's 40 ms will not fit before 80 ms, 4 ms will
        started = time.monotonic()
        job = asyncio.create_task(d.run(large, inputs, deadline, Sla(max_latency_ms=80.0, on_miss=on_miss), pictures,
                                        [small] if moves else []))
        try:
            outcome = await job
        except DeadlineMissed as error:
            outcome = error
        finished = time.monotonic() - started
        await blocking
        await d.close()
        return outcome, finished, backend.ran

    moved, _, ran = run(scenario("reject", moves=True))
    assert moved.member is small and moved.route_change == "moved" and ran == [("blocker", 1), ("small", 1)]
    refused, finished, ran = run(scenario("reject", moves=False))
    assert isinstance(refused, DeadlineMissed) and refused.reason == "deadline" and finished < 0.045 and ran == [("blocker", 1)]
    late, _, ran = run(scenario("best_effort", moves=False))
    assert late.member is large and late.route_change == "best_effort" and ran == [("blocker", 1), ("large", 1)]


def test_a_bound_only_the_load_prevents_is_a_429_whatever_the_request_already_waited_to_be_read():
    async def scenario():
        d, _ = dispatcher()
        await d.start()
        now = time.monotonic()
        routed = d.route(Sla(max_latency_ms=500.0), [PHOTO], now, now - 0.5)  # arrived 500 ms ago: its bound has gone by
        await d.close()
        return routed

    assert run(scenario()).route == "overload"  # not "sla": an idle server answers such a bound


def test_routing_and_scheduling_need_no_member_file_and_survive_1000_queued_requests():
    async def scenario():
        d, backend = dispatcher(lanes=2)
        await d.start()
        backend.gate.clear()
        now = time.monotonic()
        tasks = [asyncio.create_task(d.device.run(SMALL if i % 3 else LARGE, [np.zeros((3, 24, 24), np.float32)], now + 0.001 * i))
                 for i in range(1000)]
        await asyncio.sleep(0.05)
        routed = d.route(Sla(max_latency_ms=5000.0), [PHOTO], now + 5.0, now)
        backend.gate.set()
        results = await asyncio.gather(*tasks)
        await d.close()
        return routed, results

    routed, results = run(scenario())
    assert routed.member is not None and math.isfinite(routed.expected.total_ms) and len(results) == 1000


def test_the_costing_the_lanes_nice_and_the_start_headroom_must_be_known():
    with pytest.raises(ValueError):
        DispatchSettings(costing="guess")
    for headroom in (-0.1, math.nan, 11.0):
        with pytest.raises(ValueError):
            DispatchSettings(start_headroom=headroom)
    for nice in (-1, 20):
        with pytest.raises(ValueError):
            DispatchSettings(lane_nice=nice)


def test_decoding_stops_when_a_hard_deadline_passes_and_a_failed_image_stops_the_rest(monkeypatch):
    from effx_serve.core import preprocess
    from loadtest.attacks import png_pixel_bomb

    stopped, original = [], preprocess.DecodeStopped.__init__
    monkeypatch.setattr(preprocess.DecodeStopped, "__init__", lambda self, reason: (stopped.append(reason), original(self, reason))[1])
    bomb, info = png_pixel_bomb(3000, 3000), ImageInfo("PNG", 3000 * 3000)

    async def scenario():
        d, _ = dispatcher(lanes=2)
        await d.start()
        try:
            with pytest.raises(DeadlineMissed, match="latency bound"):
                await d.decode([bomb], [info], SMALL, time.monotonic() + 0.02, hard=True)
            while d.cpu.busy:  # its lane may still be on its way out, holding the one slot large images have (of 2 lanes)
                await asyncio.sleep(0.01)
            # One image cannot be read: the request fails at once, and the bomb decoding beside it (taken first) stops.
            with pytest.raises(UnreadableImage, match="image 1"):
                await d.decode([bomb, b"not an image"], [info, ImageInfo(None, 0)], SMALL, math.inf)
            while d.cpu.busy:
                await asyncio.sleep(0.01)
        finally:
            await d.close()

    run(scenario())
    assert stopped == ["deadline", "the request ended"]


class InLaneBackend(FakeBackend):
    """Runs batches in the lane that asks (as the embedded backend does), so a decoded image's batch follows on its lane."""

    def run_now(self, member, batch):
        time.sleep(member.latency.service_ms(len(batch)) / 1000.0)
        return np.zeros((len(batch), 10), np.float32)


def test_the_start_headroom_reaches_every_scheduler():
    async def scenario(**settings):
        d, _ = dispatcher(backend=InLaneBackend(), **settings)
        await d.start()
        await d.close()
        return {d.device.headroom, d.cpu.headroom}

    assert run(scenario()) == {DispatchSettings.start_headroom} and run(scenario(start_headroom=2.0)) == {2.0}


async def record_decodings_and_hold_the_lane(d, monkeypatch, decoded):
    """Each decoding's member goes into `decoded`; the one CPU lane is held until the gate returned is set (then await
    the blocker returned)."""
    original = d._prepare
    monkeypatch.setattr(d, "_prepare", lambda *args, **kwargs: decoded.append(args[1].name) or original(*args, **kwargs))
    gate = threading.Event()
    blocker = asyncio.ensure_future(d.cpu.call(lambda: gate.wait(5), time.monotonic()))
    await asyncio.sleep(0.01)
    return gate, blocker


def test_an_image_no_lane_can_decode_and_run_in_time_is_refused_undecoded(monkeypatch):
    decoded = []

    async def scenario():
        d, _ = dispatcher(backend=InLaneBackend())
        await d.start()
        gate, blocker = await record_decodings_and_hold_the_lane(d, monkeypatch, decoded)
        photo = synthetic_photo(640, 480, "JPEG")
        due = time.monotonic() + 0.03  # the lane frees after 0.1 s
        refused = asyncio.ensure_future(d.decode([photo], [PHOTO], SMALL, due, hard=True, run_hard=True))
        served = asyncio.ensure_future(d.decode([photo], [PHOTO], SMALL, time.monotonic() + 2.0, hard=True, run_hard=True))
        await asyncio.sleep(0.1)
        gate.set()
        try:
            with pytest.raises(DeadlineMissed, match="latency bound"):
                await refused
            prepared = await served
            (result,) = await prepared.batch.result()
        finally:
            await blocker
            await d.close()
        return result

    result = run(scenario())
    assert decoded == ["small"] and result.batch_size == 1  # only the request with time left was decoded (and then ran)


def test_an_image_no_lane_can_start_in_time_for_its_member_is_decoded_for_a_faster_one_that_can(monkeypatch):
    small, large = fake_member("small", 0.5, {1: 2.0}, 24), fake_member("large", 0.8, {1: 100.0}, 32)
    decoded = []

    async def scenario():
        d, _ = dispatcher(backend=InLaneBackend(), small=small, large=large)
        await d.start()
        gate, blocker = await record_decodings_and_hold_the_lane(d, monkeypatch, decoded)
        decode_ms = max(d.decode_times.expected_ms("JPEG", m.name, PHOTO.pixels) for m in (small, large))
        photo = synthetic_photo(640, 480, "JPEG")  # made before the clock starts: the first one in a process takes a while
        # The lane frees after 0.1 s: then the large member's 100 ms batch (150 with the headroom) no longer fits, the small one's does.
        due = time.monotonic() + 0.1 + (1.5 * decode_ms + 75.0) / 1000.0
        job = asyncio.ensure_future(d.decode([photo], [PHOTO], large, due, hard=True, run_hard=True, alternatives=[small]))
        await asyncio.sleep(0.1)
        gate.set()
        try:
            prepared = await job
            (result,) = await prepared.batch.result()
        finally:
            await blocker
            await d.close()
        return prepared.member.name, result

    member, result = run(scenario())
    assert member == "small" and decoded == ["small"] and result.batch_size == 1  # never decoded for the large one


def test_a_request_routed_in_the_same_turn_of_the_loop_as_another_expects_that_ones_decoding_ahead():
    async def scenario():
        d, _ = dispatcher()
        await d.start()
        gate = threading.Event()
        blocker = asyncio.ensure_future(d.cpu.call(lambda: gate.wait(5), time.monotonic() + 10))  # the lane busy, expected done
        await asyncio.sleep(0.01)
        photo, now, expected = synthetic_photo(640, 480, "JPEG"), time.monotonic(), []

        async def request():
            routed = d.route(Sla(max_latency_ms=1000.0), [PHOTO], now + 1.0, now)
            expected.append(routed.expected)
            await d.decode([photo], [PHOTO], routed.member, now + 1.0)

        both = asyncio.gather(request(), request())  # both start in one turn of the loop, as a burst's requests do
        await asyncio.sleep(0.05)
        gate.set()
        try:
            await both
        finally:
            await blocker
            await d.close()
        return expected, d.metrics.render().decode()

    (first, second), metrics = run(scenario())
    assert first.wait_ms == pytest.approx(0.0, abs=0.01)
    assert second.wait_ms >= 0.5 * first.decode_ms > 0  # the first one's decoding was queued before the second was routed
    # Every decoding's wait against the expected one is in /metrics (the blocker's and both requests')
    assert 'effx_decode_wait_error_seconds_bucket{le="+Inf",outcome="ran"} 3.0' in metrics


def test_a_pinned_member_must_be_in_the_family_the_request_names():
    large = dataclasses.replace(LARGE, family="other")
    catalog = Catalog(Path("."), "cpu-test", "cpu", "fake", {"fake": ("small",), "other": ("large",)}, {"small": SMALL, "large": large}, "test")
    d = Dispatcher(catalog, FakeBackend(), DispatchSettings(), ServerMetrics())
    assert [m.name for m in d.candidates("fake", "small")] == ["small"] == [m.name for m in d.candidates(None, "small")]
    with pytest.raises(InvalidRequest, match="member 'large' is not in family 'fake' but in 'other'"):
        d.candidates("fake", "large")
    with pytest.raises(UnknownName, match="unknown family 'nope'"):
        d.candidates("nope", "small")
