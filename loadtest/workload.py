"""The requests a scenario sends, and how an answer is judged. No locust here: the locustfile drives these."""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass
from urllib.parse import urlencode

import numpy as np

from effx_serve.core.photos import synthetic_photo
from loadtest.scenarios import Scenario
from loadtest.tally import OK, SLA_REFUSED, SLA_REJECTED

VARIANTS = 3  # different pictures per image kind, so no two consecutive requests need be byte-identical


@dataclass(frozen=True)
class Member:
    name: str
    accuracy: float
    expected_latency_ms: float  # queue + inference of a one-image request when the server is at rest
    profile: tuple[tuple[int, float], ...] = ()  # (batch, p50 ms) as profiled

    def expected_ms(self, images: int) -> float:
        """Its profiled latency for a request of `images` (from the repository: the same on every run), else the server's figure."""
        if not self.profile:
            return self.expected_latency_ms
        batches, times = zip(*self.profile, strict=True)
        return float(np.interp(images, batches, times))


def members_from_models(models: dict) -> list[Member]:
    """The default family's members, from the server's GET /v1/models."""
    names = set(models["families"][models["default_family"]])
    return [Member(m["name"], m["accuracy"], m["expected_latency_ms"], tuple((p["batch"], p["p50_ms"]) for p in m.get("profile", [])))
            for m in models["members"] if m["name"] in names]


@dataclass(frozen=True)
class PlannedRequest:
    request_class: str  # the SLA class, prefixed "batch " for batch requests
    path: str
    body: bytes
    content_type: str
    images: int
    min_accuracy: float | None
    max_latency_ms: float | None

    @property
    def batch(self) -> bool:
        return self.path.startswith("/v1/classify/batch")


class RequestFactory:
    """Draws requests of a scenario; SLAs are drawn from the served members' own figures, so each is meetable at rest.

    Latency bounds come from the profiled latencies in the repository rather than the server's current estimate,
    which moves with its online correction: the same seed then asks for the same bounds on every run.
    """

    def __init__(self, scenario: Scenario, members: list[Member], seed: int = 0) -> None:
        if not members:
            raise ValueError("the server lists no members in its default family")
        self.scenario = scenario
        self.members = members
        self.images = {kind: [synthetic_photo(kind.width, kind.height, kind.format, seed * 1000 + i) for i in range(VARIANTS)] for kind in scenario.images}
        self.encoded = {kind: [base64.b64encode(b).decode() for b in blobs] for kind, blobs in self.images.items()}

    def next(self, rng: random.Random, max_latency_ms: float | None = None) -> PlannedRequest:
        """The next request; `max_latency_ms` (a trace's bound) replaces the drawn latency bound, making it a latency SLA."""
        s = self.scenario
        sla = rng.choices(list(s.slas), weights=list(s.slas.values()))[0]
        if max_latency_ms is not None:
            sla = "both" if sla in ("accuracy", "both") else "latency"
        batch = rng.random() < s.batch_share
        images = s.batch_images if batch else 1
        params: dict[str, object] = {"top_k": 1}
        min_accuracy = None
        if sla in ("accuracy", "both"):
            min_accuracy = params["min_accuracy"] = rng.choice(self.members).accuracy
        if max_latency_ms is not None:
            params["max_latency_ms"] = max_latency_ms
        elif sla in ("latency", "both"):
            max_latency_ms = params["max_latency_ms"] = round(rng.choice(self.members).expected_ms(images) * rng.uniform(*s.latency_factor), 3)
        if sla != "none" and rng.random() < s.best_effort_share:
            params["on_miss"] = "best_effort"
        kinds, weights = list(s.images), list(s.images.values())
        if batch:
            chosen = [rng.choice(self.encoded[k]) for k in rng.choices(kinds, weights=weights, k=images)]
            return PlannedRequest(f"batch {sla}", f"/v1/classify/batch?{urlencode(params)}", json.dumps({"images": chosen}).encode(),
                                  "application/json", images, min_accuracy, max_latency_ms)
        kind = rng.choices(kinds, weights=weights)[0]
        return PlannedRequest(sla, f"/v1/classify?{urlencode(params)}", rng.choice(self.images[kind]), kind.content_type,
                              1, min_accuracy, max_latency_ms)


@dataclass(frozen=True)
class Verdict:
    kind: str
    member: str | None = None
    attained: bool = False
    attained_e2e: bool = False
    detail: str = ""


def judge(request: PlannedRequest, status: int, body: bytes, latency_ms: float, error: str | None = None) -> Verdict:
    """Sort an answer into OK, an SLA refusal or an error kind, and check a 200 really is a well-formed answer.

    A 429 whose reason is "overload" (refused on arrival: the bound cannot be met under the current load) or "deadline"
    (taken out of the queue once it could no longer make its bound) is the server keeping its SLA promise, like a 422;
    any other 429 (a queue or in-flight limit) is an error.
    """
    text = body[:300].decode(errors="replace")
    if status == 0:
        return Verdict("connection", detail=error or "no answer")
    if status == 429:
        try:
            reason = json.loads(body).get("reason")
        except (ValueError, AttributeError):
            reason = None
        return Verdict(SLA_REFUSED if reason in ("overload", "deadline") else "overloaded", detail=f"429 {text}")
    if status >= 500:
        return Verdict("server_error", detail=f"{status} {text}")
    try:
        answer = json.loads(body)
    except ValueError:
        return Verdict("bad_answer" if status == 200 else "client_error", detail=f"{status} answer is not JSON: {text}")
    if status == 422 and isinstance(answer, dict) and "options" in answer:
        return Verdict(SLA_REJECTED, detail=str(answer.get("detail", "")))
    if status != 200:
        return Verdict("client_error", detail=f"{status} {text}")
    try:
        met = bool(answer["sla"]["met"])
        member = str(answer["member"])
        results = answer["results"] if request.batch else [answer]
        if len(results) != request.images or not all(r["predictions"] for r in results):
            return Verdict("bad_answer", detail=f"{len(results)} results for {request.images} images")
    except (KeyError, TypeError) as missing:
        return Verdict("bad_answer", detail=f"200 answer without {missing}: {text}")
    in_time = request.max_latency_ms is None or latency_ms <= request.max_latency_ms
    return Verdict(OK, member, met, met and in_time)
