"""Routing and running on the devices: the expected completion of a request on every member, the SLA decision,
decoding and the batch on the device schedulers, and what becomes of a request that can no longer make its
deadline.

Expected end-to-end latency of a request on member m, counted from its arrival (the `device` costing):

    elapsed + CPU wait + decode(m) + device wait + batch(m) + after,  the part after `elapsed` x the end-to-end correction

- elapsed: since the request arrived (reading its body took this already);
- CPU wait, device wait: the work queued and running on that scheduler that is due before this request's
  deadline (every member's batches, the decoding in flight), spread over its lanes; one wait when the backend
  runs on the CPU that also decodes (the embedded backend);
- decode(m): per (image format, member) from a reference photo timed at start, scaled by the image's pixels,
  corrected online;
- batch(m): the member's profiled service time plus the backend's own queue time (Triton's), x the device's contention
  factor (observed / profiled over every member's batches) x the member's own residual factor; each correction decays
  back to 1 when its evidence ages;
- after: from the batch's end in its lane to the answer out, learned online: the hand-back (until the event loop,
  busy with other requests' HTTP, takes the result up) and serialising;
- the end-to-end correction: observed / expected remainder over answered requests (what the model above misses).

At rest (what an idle server would take: whether an SLA is impossible, 422, or only the load's victim, 429) is
decode + batch + after from the start-up calibration and the profile alone, without the load's corrections,
x an at-rest correction learned only from requests that had the server to themselves. A load's corrections (decoding
several times slower while the lanes contend) would otherwise make tight but fine SLAs look impossible at rest.

The `member` costing is the old one, kept behind `--costing member` to measure the gain: a member's own queue
and profiled time only, as if members shared nothing and decoding and the HTTP edge took no time.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from effx_serve.core import preprocess
from effx_serve.core.errors import UserError
from effx_serve.core.photos import synthetic_photo
from effx_serve.core.proc import available_cpus
from effx_serve.serve.backends.base import Backend, BackendUnavailable
from effx_serve.serve.catalog import Catalog, Member
from effx_serve.serve.errors import InvalidRequest, Overloaded, UnreadableImage
from effx_serve.serve.estimates import Correction, Corrections, DecodeTimes, Mean, UpgradeBudget
from effx_serve.serve.metrics import ServerMetrics
from effx_serve.serve.router import Decision, Option, Sla, route
from effx_serve.serve.scheduler import DeviceScheduler, ItemResult, Late, Queued
from effx_serve.serve.settings import DispatchSettings

CALIBRATION_FORMATS = ("JPEG", "PNG", "WEBP")


@dataclass(frozen=True)
class ImageInfo:
    """What the router knows of an image before decoding it (from its header)."""

    format: str | None
    pixels: int


class Expectation(NamedTuple):  # a NamedTuple: eight are made per request, at a third of a frozen dataclass's cost
    member: Member
    decode_ms: float
    wait_ms: float  # for the CPU and the device
    inference_ms: float
    after_ms: float  # from the batch's end to the answer serialised: the hand-back below, then serialising
    total_ms: float  # from the request's arrival to its answer
    handback_ms: float = 0.0  # from the batch's end in its lane to the event loop taking its result up (part of after_ms)


class Routed(NamedTuple):  # a NamedTuple, as Expectation: one per request
    member: Member | None  # None: refused
    decision: Decision
    options: tuple[Option, ...]  # every candidate with its expected end-to-end latency
    expected: Expectation | None
    route: str  # one of ROUTES, or why it was refused: "overload", "sla"
    at_rest: tuple[Option, ...] = ()  # with a latency bound: every candidate's expected latency on an idle server
    at_rest_model_ms: float | None = None  # the chosen member's expected latency on an idle server, before the at-rest correction
    alone: bool = False  # no other request was being served when it was routed (its answer teaches the at-rest correction)

    @property
    def expected_ms(self) -> float | None:
        return self.expected.total_ms if self.expected else None

    @property
    def bounded(self) -> bool:
        """Whether the request has a latency bound (those are costed at rest too)."""
        return bool(self.at_rest)


LARGE_IMAGE_PIXELS = 2048 * 2048
"""Images above this decode on at most lanes - 1 CPU lanes at once: a lane stays free for normal photos, and the memory
that decoded pixels take is bounded by one or a few of them (a 16 MP 16-bit PNG takes ~0.3 GB while it decodes)."""


class DeadlineMissed(Overloaded):
    """A request that could not be served within its bound under the current load (answered at once, 429)."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message, retry_after_s, "deadline")


@dataclass(frozen=True)
class Decoded:
    """A request's images decoded for a member; with its batch when the lane that decoded it queued or ran that too
    (`decode(run_hard=...)`)."""

    pictures: list  # kept for another member (a move to a faster one resizes these)
    inputs: list[np.ndarray]
    at: float  # time.monotonic() when the decoding ended
    batch: Queued | None = None
    member: Member | None = None  # the member decoded for: another than asked when no lane could start in time for that one


class _TooLateToStart(Exception):
    """No lane was free in time to decode a request's image and run it on a member: nothing decoded, so a faster member may still make it."""


@dataclass(frozen=True)
class Ran:
    member: Member
    results: list[ItemResult]
    route_change: str | None  # "moved" or "best_effort" when the request did not run as routed

    @property
    def queue_ms(self) -> float:
        """The longest wait for a batch among its images."""
        return max(r.queue_ms for r in self.results)

    @property
    def inference_ms(self) -> float:
        """The longest batch run among its images."""
        return max(r.inference_ms for r in self.results)


class Dispatcher:
    def __init__(self, catalog: Catalog, backend: Backend, settings: DispatchSettings, metrics: ServerMetrics,
                 decode_limits: dict | None = None):
        self.catalog, self.backend, self.settings, self.metrics = catalog, backend, settings, metrics
        self.decode_limits = decode_limits or {}  # max_pixels, formats, min_side for preprocess.serving_image
        self.contention = Correction(weight=0.2, half_life_s=settings.correction_half_life_s)
        self.residual = Corrections(weight=0.1, half_life_s=settings.correction_half_life_s)
        self.end_to_end = Correction(weight=0.05, half_life_s=settings.correction_half_life_s, bounds=(0.5, 4.0))
        # Learned from requests served alone; its evidence lasts longer (a loaded server sees none), and it stays near 1.
        self.at_rest = Correction(weight=0.1, half_life_s=10 * settings.correction_half_life_s, bounds=(0.5, 4.0))
        self.after = Mean(start=0.3, half_life_s=settings.correction_half_life_s)  # serialising the answer, once the loop has the result
        # The batch's end to the event loop taking its result up: its backlog (0 at rest).
        self.handback = Mean(start=0.0, weight=0.1, half_life_s=settings.correction_half_life_s)
        self.decode_times = DecodeTimes(half_life_s=settings.correction_half_life_s)
        self.cpu_lanes = settings.cpu_lanes or available_cpus()
        self.upgrades = UpgradeBudget(self.cpu_lanes)  # sized again for the device's lanes at start
        self.device: DeviceScheduler | None = None
        self.cpu: DeviceScheduler | None = None
        self.start_failure: str | None = None  # why the last start failed, while no start has succeeded
        self.active = 0  # requests routed here and not answered yet (a replaced dispatcher closes once they are)

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the members, time the decoding, start the schedulers; the server is ready when this returns."""
        members = list(self.catalog.members.values())
        try:
            await self.backend.start(members)
        except UserError as error:
            self.start_failure = str(error)
            raise
        await asyncio.to_thread(self._calibrate_decoding, members)
        device = DeviceScheduler("device", self.backend.lanes, self.backend.infer, self.batch_ms, self.settings.max_queue,
                                 after_ms=self.after_ms, on_batch=self._observed, run_now=getattr(self.backend, "run_now", None),
                                 lane_nice=self.settings.lane_nice, on_wait=self._waited, headroom=self.settings.start_headroom)
        cpu = device if self.backend.on_host_cpu else DeviceScheduler("cpu", self.cpu_lanes, self.backend.infer, self.batch_ms,
                                                                      self.settings.max_queue, lane_nice=self.settings.lane_nice,
                                                                      headroom=self.settings.start_headroom,
                                                                      on_wait=self._waited)
        for scheduler in {id(device): device, id(cpu): cpu}.values():
            scheduler.start()
        self.upgrades = UpgradeBudget(cpu.lanes if self.backend.on_host_cpu else device.lanes)
        self.device, self.cpu, self.start_failure = device, cpu, None

    def _calibrate_decoding(self, members: list[Member]) -> None:
        """Time a reference photo's decoding for every (format, member): the decode expectations start from these."""
        for image_format in CALIBRATION_FORMATS:
            data = synthetic_photo(640, 480, image_format)
            for member in members:
                timings = []
                for _ in range(3):
                    started = time.perf_counter()
                    self._prepare(data, member)
                    timings.append((time.perf_counter() - started) * 1000.0)
                self.decode_times.calibrate(image_format, member.name, min(timings))

    def problem(self) -> str | None:
        """None when every member is loaded and warm and the backend is healthy."""
        if self.device is None:
            if self.start_failure is not None:  # not loading: failed, until a retry (Triton) or a mended repository
                return f"startup failed: {self.start_failure}"
            return self.backend.problem() or "loading and warming up the models"
        return self.backend.problem()

    @contextmanager
    def in_use(self) -> Iterator[Dispatcher]:
        """Around one request's route, decode and run: a dispatcher being retired waits for it."""
        self.active += 1
        try:
            yield self
        finally:
            self.active -= 1

    async def retire(self, grace_s: float) -> None:
        """Close once the requests it is serving have been answered (or after `grace_s`, failing the rest)."""
        give_up = time.monotonic() + grace_s
        while self.active and time.monotonic() < give_up:
            await asyncio.sleep(0.01)
        await self.close()

    async def close(self) -> None:
        for scheduler in {id(s): s for s in (self.device, self.cpu) if s is not None}.values():
            await scheduler.close()
        await self.backend.close()

    # --- what the server has learned -------------------------------------------------------------------------

    def after_ms(self) -> float:
        """Expected time from a batch's end to its answer out, under the current load: the hand-back, then serialising."""
        return self.after.value + self.handback.value

    def batch_ms(self, member: Member, images: int) -> float:
        """Expected run time of a batch of `images` on `member` now: (profile + the backend's own queue, Triton's) x contention
        x the member's residual. The corrections learn from the same sum (`_observed`), so the queue is in the expectation."""
        profiled = member.latency.service_ms(images) + self.backend.queue_delay_ms(member)
        return profiled * self.contention.factor() * self.residual.factor(member.name)

    def _observed(self, member: Member, size: int, inference_ms: float) -> None:
        profiled = member.latency.service_ms(size) + self.backend.queue_delay_ms(member)
        self.contention.observe(profiled, inference_ms)
        self.residual[member.name].observe(profiled * self.contention.factor(), inference_ms)
        self.metrics.batch_size.labels(member.name).observe(size)
        self.metrics.inference_seconds.labels(member.name).observe(inference_ms / 1000.0)

    def _waited(self, expected_ms: float, observed_ms: float, late: bool) -> None:
        """A decoding's wait for a lane against the wait expected when it was queued (`late`: found too late to run): /metrics."""
        self.metrics.decode_wait_error.labels("late" if late else "ran").observe((observed_ms - expected_ms) / 1000.0)

    def observe_answer(self, routed: Routed, arrival: float, routed_at: float, handback_ms: float, inference_done: float,
                       answered: float) -> None:
        """What an answered request teaches: the time after its batch (the hand-back, then serialising), and how far the
        expectation was off (and, for a request that had the server to itself, how far the at-rest expectation was); for one
        with a latency bound, by how many milliseconds (/metrics)."""
        self.handback.observe(handback_ms)
        self.after.observe((answered - inference_done) * 1000.0)
        if routed.expected is not None and self.settings.costing == "device":
            expected_remainder, observed = routed.expected.total_ms - (routed_at - arrival) * 1000.0, (answered - routed_at) * 1000.0
            self.end_to_end.observe(expected_remainder / self.end_to_end.factor(), observed)
            if routed.alone and routed.at_rest_model_ms is not None:
                self.at_rest.observe(routed.at_rest_model_ms, observed)
            if routed.bounded:
                self.metrics.expectation_error.labels("alone" if routed.alone else "shared").observe((observed - expected_remainder) / 1000.0)

    # --- expectations and routing ----------------------------------------------------------------------------

    def expect(self, member: Member, images: Sequence[ImageInfo], deadline: float, arrival: float, now: float,
               idle: bool = False) -> Expectation:
        """The expected end-to-end latency of a request of `images` due at `deadline` on `member`, sent now
        (`idle`: as if nothing else were queued or running)."""
        loaded, at_rest = self._expectations([member], images, deadline, arrival, now)
        return (at_rest if idle else loaded)[member.name]

    def _expectations(self, members: Sequence[Member], images: Sequence[ImageInfo], deadline: float, arrival: float,
                      now: float) -> tuple[dict[str, Expectation], dict[str, Expectation]]:
        """Per member: (with the work queued and running now, as if nothing else were). The waits are the device's, the
        same for every member, so they are computed once."""
        count = max(1, len(images))
        loaded, at_rest = {}, {}
        if self.settings.costing == "member":
            for m in members:
                queued = self.device.queued(m.name) if self.device is not None else 0
                wait = self.device.cost_ms(m, queued) if queued else 0.0
                inference = m.latency.service_ms(count) * self.residual.factor(m.name)
                loaded[m.name] = Expectation(m, 0.0, wait, inference, 0.0, wait + inference)
                at_rest[m.name] = Expectation(m, 0.0, 0.0, inference, 0.0, inference)
            return loaded, at_rest
        elapsed = (now - arrival) * 1000.0
        cpu_wait = self.cpu.wait_ms(deadline, now) if self.cpu is not None else 0.0
        device_wait = self.device.wait_ms(deadline, now) if self.device is not None and self.device is not self.cpu else 0.0
        lanes = self.cpu.lanes if self.cpu else self.cpu_lanes
        # At rest the event loop has no backlog: no hand-back there.
        handback, rest_after, scale, rest_scale = self.handback.value, self.after.value, self.end_to_end.factor(), self.at_rest.factor()
        after = rest_after + handback
        spread = min(count, lanes)  # several images decode side by side
        shapes = [(i.format or "JPEG", i.pixels or DecodeTimes.REFERENCE_PIXELS) for i in images]
        contention = self.contention.factor()  # the factors once per request, not once per member and term
        for m in members:
            # Loaded, and at rest: on an idle server (see the module's text), without the time this request has already spent.
            decode, rest_decode = self.decode_times.loaded_and_calibrated_ms(shapes, m.name)
            decode, rest_decode = decode / spread, rest_decode / spread
            service, residual = m.latency.service_ms(count), self.residual.factor(m.name)
            rest_inference = service * residual
            inference = (service + self.backend.queue_delay_ms(m)) * residual * contention  # as `batch_ms`
            wait = cpu_wait + max(0.0, device_wait - cpu_wait - decode)  # the device's work goes on while this one decodes
            loaded[m.name] = Expectation(m, decode, wait, inference, after, elapsed + (wait + decode + inference + after) * scale, handback)
            at_rest[m.name] = Expectation(m, rest_decode, 0.0, rest_inference, rest_after, (rest_decode + rest_inference + rest_after) * rest_scale)
        return loaded, at_rest

    def candidates(self, family: str | None, member: str | None) -> list[Member]:
        if member is None:
            return self.catalog.family_members(family)
        pinned = self.catalog.member(member)
        if family is not None and pinned not in self.catalog.family_members(family):  # an unknown family is a 404 there
            raise InvalidRequest(f"member '{member}' is not in family '{family}' but in '{pinned.family}'; pin one or the other")
        return [pinned]

    def route(self, sla: Sla, images: Sequence[ImageInfo], deadline: float, arrival: float, family: str | None = None,
              member: str | None = None) -> Routed:
        """The member for a request, by the SLA table on the expected latencies now; and, when none can meet the SLA,
        whether that is the load (`overload`: at rest one could) or the SLA itself (`sla`)."""
        problem = self.problem()
        if problem is not None:
            raise BackendUnavailable(problem)
        members = self.candidates(family, member)
        now = time.monotonic()
        loaded, at_rest = self._expectations(members, images, deadline, arrival, now)
        options = tuple(Option(m.name, m.accuracy, loaded[m.name].total_ms) for m in members)
        decision = route(options, sla, self.settings.default_policy)
        if decision.expected_to_meet and self.settings.costing == "device":
            decision = self._affordable(decision, options, loaded, sla)
        chosen = self.catalog.members[decision.member] if decision.member else None
        if chosen is not None:
            self.upgrades.spend(_lane_ms(loaded[chosen.name]))
        rest_ms, alone = (at_rest[chosen.name].total_ms / self.at_rest.factor() if chosen else None), self.active <= 1
        if sla.max_latency_ms is None:  # only a latency bound depends on the load
            return Routed(chosen, decision, options, loaded.get(decision.member), "preferred" if chosen else "sla", (), rest_ms, alone)
        idle = tuple(Option(m.name, m.accuracy, at_rest[m.name].total_ms) for m in members)
        rest = route(idle, sla, self.settings.default_policy)
        if decision.expected_to_meet:
            how = "preferred" if decision.member == rest.member else "scaled"
        elif decision.member is not None:
            how = "best_effort"
        else:
            how = "overload" if rest.expected_to_meet else "sla"
        return Routed(chosen, decision, options, loaded.get(decision.member), how, idle, rest_ms, alone)

    def _affordable(self, decision: Decision, options: Sequence[Option], loaded: dict[str, Expectation], sla: Sla) -> Decision:
        """The SLA's choice among the feasible members whose extra cost over the cheapest feasible one the upgrade
        budget affords (the cheapest always is): under load, requests that allow it go to faster members."""
        cost = {o.name: _lane_ms(loaded[o.name]) for o in options if sla.accuracy_ok(o.accuracy) and sla.latency_ok(o.expected_ms)}
        cheapest = min(cost.values())
        fits = self.upgrades.affordable({name: ms - cheapest for name, ms in cost.items()})
        if decision.member in fits:
            return decision
        return route([o for o in options if o.name in fits], sla, self.settings.default_policy)

    def observe_outcome(self, met: bool) -> None:
        """A request with a latency bound, admitted: answered in time, or late (answered late, or dropped late)."""
        if met:
            self.upgrades.met()
        else:
            self.upgrades.missed()

    def retry_after_s(self) -> float:
        """When a refused request could expect the work now queued to have drained."""
        return self.device.drain_s() if self.device else 1.0

    # --- decoding and running --------------------------------------------------------------------------------

    def _prepare(self, data: bytes, member: Member, budget: preprocess.DecodeBudget | None = None):
        image = preprocess.serving_image(data, member.resolution, **self.decode_limits, budget=budget)
        return image, preprocess.to_input(image, member.resolution)

    def _timed_prepare(self, data: bytes, member: Member, budget: preprocess.DecodeBudget):
        started, cpu_started = time.perf_counter(), time.thread_time()
        try:
            image, array = self._prepare(data, member, budget)
        finally:
            budget.charge((time.thread_time() - cpu_started) * 1000.0)
        return image, array, (time.perf_counter() - started) * 1000.0, time.monotonic()

    async def decode(self, images: Sequence[bytes], infos: Sequence[ImageInfo], member: Member, deadline: float,
                     hard: bool = False, run_hard: bool | None = None, alternatives: Sequence[Member] = ()) -> Decoded:
        """Every image decoded for `member` on the CPU scheduler. UnreadableImage names the first image that cannot be
        decoded within the limits (the request's decoding CPU budget included); DeadlineMissed when a `hard` deadline
        passes while decoding, or when no lane is free in time to decode the image and run it by then on `member` nor on
        any of `alternatives` (faster members, tried in order; `Decoded.member` says which one it was decoded for). Once
        the request fails or is cancelled (its client went away), its images still decoding stop at their next block of
        bytes. `run_hard` (not None): a single image's batch (with that hardness) goes on from the lane that decoded it,
        queued or run at once (`DeviceScheduler.call_then_run`; the embedded backend only); `run` takes it from there."""
        for candidate in (member, *alternatives):
            try:
                return await self._decode_for(images, infos, candidate, deadline, hard, run_hard)
            except _TooLateToStart:
                continue
        raise self._decoding_missed()

    def _decoding_missed(self) -> DeadlineMissed:
        return DeadlineMissed("the server could not decode the image(s) within the latency bound under its current load; "
                              "retry, relax the bound, or send on_miss=best_effort", self.retry_after_s())

    async def _decode_for(self, images: Sequence[bytes], infos: Sequence[ImageInfo], member: Member, deadline: float, hard: bool,
                          run_hard: bool | None) -> Decoded:
        budget = preprocess.DecodeBudget(self.settings.decode_budget_ms, deadline if hard else None)
        batch = None

        async def one(index: int, data: bytes, info: ImageInfo):
            nonlocal batch
            expected = self.decode_times.expected_ms(info.format or "JPEG", member.name, info.pixels or DecodeTimes.REFERENCE_PIXELS)
            prepare, large = functools.partial(self._timed_prepare, data, member, budget), info.pixels > LARGE_IMAGE_PIXELS
            try:
                if run_hard is not None and len(images) == 1 and self.cpu is self.device and self.device.runs_in_lanes:
                    prepared, batch = await self.cpu.call_then_run(functools.partial(_with_input, prepare), member, deadline, run_hard,
                                                                 expected, large, skip_late=hard)
                    return prepared
                return await self.cpu.call(prepare, deadline, expected, large=large)
            except UserError as error:
                raise UnreadableImage(f"image {index}: {error}" if len(images) > 1 else str(error)) from None
            except Late:  # a lane was free too late to decode it and run it on this member in time
                raise _TooLateToStart from None
            except preprocess.DecodeStopped as stopped:
                if stopped.reason != "deadline":
                    raise
                raise self._decoding_missed() from None

        tasks = [one(0, images[0], infos[0])] if len(images) == 1 else \
            [asyncio.ensure_future(one(i, data, info)) for i, (data, info) in enumerate(zip(images, infos, strict=True))]
        try:
            # One image: awaited here, so its work is queued before the event loop routes another request. (gather would
            # queue it a turn later, and requests routed in this turn, a burst's, would each expect the lanes free of the others.)
            outcomes = [await tasks[0]] if len(tasks) == 1 else await asyncio.gather(*tasks)
        except BaseException:
            budget.stop("the request ended")  # failed, late or its client gone: the other images need not finish
            for task in tasks:
                if isinstance(task, asyncio.Future):
                    task.cancel()
            raise
        for (_, _, ms, _), info in zip(outcomes, infos, strict=True):
            if info.format:
                self.decode_times.observe(info.format, member.name, info.pixels, ms)
        return Decoded([o[0] for o in outcomes], [o[1] for o in outcomes], max(o[3] for o in outcomes), batch, member)

    async def run(self, member: Member, inputs: list[np.ndarray], deadline: float, sla: Sla, pictures: list,
                  alternatives: Sequence[Member] = (), batch: Queued | None = None) -> Ran:
        """Run on `member` (`batch`: already on its way there, from `decode`); a request that can no longer make its (hard)
        deadline there moves to the most accurate faster member in `alternatives` that can, else is refused
        (on_miss=reject) or runs late (best_effort)."""
        problem = self.problem()
        if problem is not None:
            if batch is not None:
                batch.cancel()
            raise BackendUnavailable(problem)
        hard = sla.max_latency_ms is not None
        try:
            return Ran(member, await (batch.result() if batch is not None else self.device.run(member, inputs, deadline, hard=hard)), None)
        except Late:
            pass
        for alternative in alternatives:
            now = time.monotonic()
            if now + (self.batch_ms(alternative, len(inputs)) + self.after_ms()) / 1000.0 > deadline:
                continue
            moved = _inputs_for(pictures, alternative.resolution)  # a resize of kept pictures: inline, no lane to wait for
            try:
                return Ran(alternative, await self.device.run(alternative, moved, deadline, hard=True), "moved")
            except Late:
                continue
        if sla.on_miss == "reject":
            raise DeadlineMissed(f"the server could not answer within max_latency_ms {sla.max_latency_ms:g} under its current load; "
                                 "retry, relax the bound, or send on_miss=best_effort", self.retry_after_s())
        return Ran(member, await self.device.run(member, inputs, deadline, hard=False), "best_effort")

    def queued(self, member: str) -> int:
        return self.device.queued(member) if self.device else 0

    def expected_now_ms(self, member: Member) -> float:
        """The expected end-to-end latency of a one-image 640x480 JPEG request sent now, with what is queued now."""
        now = time.monotonic()
        return self.expect(member, [ImageInfo("JPEG", DecodeTimes.REFERENCE_PIXELS)], now + self.settings.default_deadline_ms / 1000.0,
                           now, now).total_ms

    def refresh_gauges(self) -> None:
        self.metrics.ready.set(1 if self.problem() is None else 0)
        self.metrics.contention.set(self.contention.factor())
        for member in self.catalog.members.values():
            self.metrics.queue_depth.labels(member.name).set(self.queued(member.name))
            self.metrics.expected_ms.labels(member.name).set(self.expected_now_ms(member))
            self.metrics.correction.labels(member.name).set(self.residual.factor(member.name))


def _lane_ms(expected: Expectation) -> float:
    """What serving a request on a member takes of the lanes: its decoding and its inference."""
    return expected.decode_ms + expected.inference_ms


def _with_input(prepare: Callable[[], tuple]) -> tuple[tuple, np.ndarray]:
    """`_timed_prepare`'s outcome and its model input, as `call_then_run` takes them."""
    prepared = prepare()
    return prepared, prepared[1]


def _inputs_for(pictures: list, resolution: int) -> list[np.ndarray]:
    return [preprocess.to_input(picture, resolution) for picture in pictures]
