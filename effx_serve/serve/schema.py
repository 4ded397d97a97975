"""The HTTP API's request parameters and answers, as pydantic models (they are also the OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TOP_K = 1000


class ClassifyParams(BaseModel):
    """What a request may ask of the router; the same fields in the query string, the JSON body or form fields."""

    model_config = ConfigDict(extra="forbid")

    min_accuracy: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False,
                                       description="lowest acceptable top-1 accuracy of the serving member, 0..1")
    max_latency_ms: float | None = Field(None, gt=0.0, le=3_600_000.0, allow_inf_nan=False,
                                         description="highest acceptable queue + inference time, in milliseconds")
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="how many predictions to return (at most the number of labels)")
    on_miss: Literal["reject", "best_effort"] = Field(
        "reject", description="when no member can meet the SLA: reject (422 with the nearest options) or serve the nearest and flag the miss")
    family: str | None = Field(None, max_length=200, description="route among this family's members instead of the hardware's default family")
    member: str | None = Field(None, max_length=200, description="serve with this member (the SLA is still checked)")


class Prediction(BaseModel):
    label: str
    index: int
    score: float = Field(description="softmax probability")


class Timing(BaseModel):
    decode_ms: float = Field(description="reading, decoding and preprocessing the image(s)")
    queue_ms: float = Field(description="waiting for a batch (for a batch request, the longest wait)")
    inference_ms: float = Field(description="running the batch(es)")
    total_ms: float = Field(description="in the server, from the request's arrival to its answer")


class SlaReport(BaseModel):
    kind: Literal["accuracy", "latency", "both", "none"]
    min_accuracy: float | None
    max_latency_ms: float | None
    expected_to_meet: bool = Field(description="the router expected the serving member to meet the SLA")
    met: bool = Field(description="the SLA was met: accuracy and observed latency")
    misses: list[Literal["accuracy", "latency"]]


class Served(BaseModel):
    member: str
    family: str
    accuracy: float = Field(description="the member's top-1 on the repository's dataset")
    expected_latency_ms: float = Field(description="queue + inference the router expected when it chose the member")
    latency_provenance: str = Field(description="where the member's latency figures come from (measured, predicted; hardware)")
    sla: SlaReport


class Classification(Served):
    predictions: list[Prediction]
    observed_latency_ms: float = Field(description="queue + inference, as observed")
    batch_size: int = Field(description="images in the batch this request ran in")
    timing: Timing


class ImageResult(BaseModel):
    predictions: list[Prediction]
    observed_latency_ms: float
    batch_size: int


class BatchClassification(Served):
    results: list[ImageResult] = Field(description="one per image, in the order sent")
    observed_latency_ms: float = Field(description="the slowest image's queue + inference")
    timing: Timing


class OptionOut(BaseModel):
    member: str
    accuracy: float
    expected_latency_ms: float
    misses: list[Literal["accuracy", "latency"]]


class Rejection(BaseModel):
    detail: str
    options: list[OptionOut] = Field(description="the members nearest to the SLA, nearest first")


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
    expected_latency_ms: float = Field(description="expected queue + inference of a one-image request sent now")
    queued: int


class ModelsOut(BaseModel):
    default_family: str
    families: dict[str, list[str]]
    members: list[MemberOut]


class Problem(BaseModel):
    detail: str
