"""The API's request parameters and answers, as pydantic models (they are also the OpenAPI schema); no transport here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from effx_serve.serve.router import ON_MISS, ROUTES

MAX_TOP_K = 1000


class ClassifyParams(BaseModel):
    """What a request may ask of the router; the same fields in the query string, the JSON body or form fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)  # frozen: one parsed query string serves many requests

    min_accuracy: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False,
                                       description="lowest acceptable top-1 accuracy of the serving member, 0..1")
    max_latency_ms: float | None = Field(None, gt=0.0, le=3_600_000.0, allow_inf_nan=False,
                                         description="highest acceptable time in the server, in milliseconds, end to end: from receiving the request to the "
                                                     "answer written (reading, decoding, queueing, inference, serialising)")
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="how many predictions to return (at most the number of labels)")
    on_miss: Literal[ON_MISS] = Field(
        "reject", description="when no member can meet the SLA: reject (422 with the nearest options) or serve the nearest and flag the miss")
    family: str | None = Field(None, max_length=200, description="route among this family's members instead of the hardware's default family")
    member: str | None = Field(None, max_length=200, description="serve with this member (the SLA is still checked)")

    @field_validator("family", "member", mode="before")
    @classmethod
    def _empty_is_not_given(cls, value: object) -> object:
        """`family=` and `member=` with no value mean what leaving them out means (as HTML forms send them)."""
        return None if value == "" else value


class Prediction(BaseModel):
    label: str
    index: int
    score: float = Field(description="softmax probability")


class Timing(BaseModel):
    """Every part of a request's time in the server, one after the other: they add up to total_ms."""

    read_ms: float = Field(description="receiving the request: its body read and its parameters parsed")
    route_ms: float = Field(description="choosing the member: the image's header read and every member's expected latency")
    decode_ms: float = Field(description="decoding and preprocessing the image(s), waiting for a CPU lane included")
    queue_ms: float = Field(description="waiting for a batch (for a batch request, the longest wait)")
    inference_ms: float = Field(description="running the batch(es)")
    handback_ms: float = Field(description="from the batch's end until the server's event loop took its result up (its backlog)")
    serialize_ms: float = Field(description="writing the answer: the predictions and the JSON")
    total_ms: float = Field(description="in the server, from the request's arrival to its answer written: what max_latency_ms bounds")


class Expected(BaseModel):
    decode_ms: float
    wait_ms: float = Field(description="for a CPU lane and the device, behind the work due earlier")
    inference_ms: float
    after_ms: float = Field(description="serialising and handing the answer back")
    total_ms: float = Field(description="end to end, from the request's arrival")


class SlaReport(BaseModel):
    kind: Literal["accuracy", "latency", "both", "none"]
    min_accuracy: float | None
    max_latency_ms: float | None = Field(description="the bound in force: max_latency_ms, or the Effx-Deadline header if sooner")
    expected_to_meet: bool = Field(description="the router expected the serving member to meet the SLA")
    met: bool = Field(description="the SLA was met: accuracy, and total_ms within the bound")
    misses: list[Literal["accuracy", "latency"]]
    route: Literal[ROUTES] = Field(
        description="preferred: the member the SLA picks on an idle server; scaled: a faster one, because of the load; "
                    "moved: a faster one, after the request could no longer make its deadline on the member first chosen; "
                    "best_effort: served though expected to miss (on_miss=best_effort)")


class Served(BaseModel):
    member: str
    family: str
    accuracy: float = Field(description="the member's top-1 on the repository's dataset")
    expected_latency_ms: float = Field(description="end-to-end latency the router expected when it chose the member")
    expected: Expected = Field(description="the parts of expected_latency_ms")
    latency_provenance: str = Field(description="where the member's latency figures come from (measured, predicted; hardware)")
    sla: SlaReport


class Classification(Served):
    predictions: list[Prediction]
    observed_latency_ms: float = Field(description="end to end in the server, as observed (timing.total_ms)")
    batch_size: int = Field(description="images in the batch this request ran in")
    timing: Timing


class ImageResult(BaseModel):
    predictions: list[Prediction]
    observed_latency_ms: float
    batch_size: int


class BatchClassification(Served):
    results: list[ImageResult] = Field(description="one per image, in the order sent")
    observed_latency_ms: float = Field(description="end to end in the server, as observed (timing.total_ms)")
    timing: Timing


class OptionOut(BaseModel):
    member: str
    accuracy: float
    expected_latency_ms: float
    misses: list[Literal["accuracy", "latency"]]


class Rejection(BaseModel):
    detail: str
    options: list[OptionOut] = Field(description="the members nearest to the SLA, nearest first")


class Refusal(BaseModel):
    detail: str
    reason: Literal["limit", "overload", "deadline"] = Field(
        description="limit: a queue or in-flight limit; overload: refused on arrival, no member could meet the bound under the "
                    "current load; deadline: taken out of the queue when it could no longer make its bound")


class LatencyPoint(BaseModel):
    batch: int
    p50_ms: float


class MemberOut(BaseModel):
    name: str
    family: str
    accuracy: float
    accuracy_provenance: str
    resolution: int
    params: int
    macs: int
    max_batch: int
    latency_hardware: str
    latency_runtime: str
    latency_provenance: str
    latency_on_this_hardware: bool
    profile: list[LatencyPoint]
    correction: float = Field(description="observed / profiled service time, learned online")
    expected_latency_ms: float = Field(description="expected end-to-end latency of a one-image 640x480 JPEG request sent now")
    queued: int


class ModelsOut(BaseModel):
    default_family: str
    families: dict[str, list[str]]
    members: list[MemberOut]
    building: str | None = Field(None, description="set while the repository is partial: a build is still adding members, "
                                                  "which the server serves as they arrive")


class Problem(BaseModel):
    detail: str
