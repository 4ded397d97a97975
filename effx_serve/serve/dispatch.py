"""Routing plus execution: expected latencies, the SLA decision, the member's batcher, the online correction.

The router (router.route) decides on numbers this module keeps current: for each member, the profiled
service time at the batch it would run with now (its batcher's queue), times the member's online
correction, plus what the backend queues on its own (Triton). Every finished batch updates the
correction with its observed time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from effx_serve.serve.backends.base import Backend, BackendUnavailable
from effx_serve.serve.batcher import ItemResult, MicroBatcher, retry_after_s
from effx_serve.serve.catalog import Catalog, Member
from effx_serve.serve.metrics import ServerMetrics
from effx_serve.serve.router import Decision, LatencyTracker, Option, Sla, route
from effx_serve.serve.settings import DispatchSettings


@dataclass(frozen=True)
class Routed:
    member: Member | None
    decision: Decision
    options: tuple[Option, ...]  # every candidate, with its expected latency at decision time

    @property
    def expected_ms(self) -> float | None:
        return next((o.expected_ms for o in self.options if self.member and o.name == self.member.name), None)


class Dispatcher:
    def __init__(self, catalog: Catalog, backend: Backend, settings: DispatchSettings, metrics: ServerMetrics):
        self.catalog, self.backend, self.settings, self.metrics = catalog, backend, settings, metrics
        self.tracker = LatencyTracker()
        self.batchers: dict[str, MicroBatcher] = {}

    async def start(self) -> None:
        members = list(self.catalog.members.values())
        await self.backend.start(members)
        for member in members:
            batcher = MicroBatcher(member.name, self._runner(member), member.max_batch, self.settings.max_wait_ms, self.settings.max_queue,
                                   self.backend.workers_per_member, on_batch=self._observer(member))
            batcher.start()
            self.batchers[member.name] = batcher

    def _runner(self, member: Member):
        async def run(batch: np.ndarray) -> np.ndarray:
            return await self.backend.infer(member, batch)
        return run

    def _observer(self, member: Member):
        def observed(size: int, inference_ms: float) -> None:
            self.tracker.observe(member.name, member.latency.service_ms(size), inference_ms)
            self.metrics.batch_size.labels(member.name).observe(size)
            self.metrics.inference_seconds.labels(member.name).observe(inference_ms / 1000.0)
        return observed

    def problem(self) -> str | None:
        """None when every member is loaded and warm and the backend is healthy."""
        if len(self.batchers) < len(self.catalog.members):
            return self.backend.problem() or "loading and warming up the models"
        return self.backend.problem()

    def expected_ms(self, member: Member, count: int = 1) -> float:
        """Expected queue + inference of a request of `count` images sent to `member` now."""
        batcher = self.batchers.get(member.name)
        profiled = batcher.expected_ms(member.latency.service_ms, count) if batcher else member.latency.service_ms(count)
        return self.tracker.factor(member.name) * profiled + self.backend.queue_delay_ms(member)

    def candidates(self, family: str | None, member: str | None) -> list[Member]:
        if member is not None:
            return [self.catalog.member(member)]
        return self.catalog.family_members(family)

    def route(self, sla: Sla, family: str | None = None, member: str | None = None, count: int = 1) -> Routed:
        members = self.candidates(family, member)
        options = tuple(Option(m.name, m.accuracy, self.expected_ms(m, count)) for m in members)
        decision = route(options, sla, self.settings.default_policy)
        chosen = self.catalog.members[decision.member] if decision.member else None
        return Routed(chosen, decision, options)

    async def run(self, member: Member, inputs: Sequence[np.ndarray]) -> list[ItemResult]:
        """Classify `inputs` on `member`; QueueFull when its queue is full, BackendUnavailable when it cannot serve."""
        problem = self.problem()
        if problem is not None:
            raise BackendUnavailable(problem)
        batcher = self.batchers[member.name]
        return await batcher.submit(inputs, retry_after_s(self.expected_ms(member, len(inputs))))

    def refresh_gauges(self) -> None:
        self.metrics.ready.set(1 if self.problem() is None else 0)
        for member in self.catalog.members.values():
            batcher = self.batchers.get(member.name)
            self.metrics.queue_depth.labels(member.name).set(batcher.queued if batcher else 0)
            self.metrics.expected_ms.labels(member.name).set(self.expected_ms(member))
            self.metrics.correction.labels(member.name).set(self.tracker.factor(member.name))

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
        await self.backend.close()
