"""A server's settings, checked when they are made: what to serve, with which backend, within which limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from effx_serve.core.errors import UserError
from effx_serve.core.proc import MAX_NICE
from effx_serve.serve.backends.base import BACKENDS
from effx_serve.serve.router import POLICIES

COSTINGS = ("device", "member")
MAX_START_HEADROOM = 10.0  # beyond this a bound would have to be 11 x a request's run time for it to start at all


@dataclass(frozen=True)
class DispatchSettings:
    max_queue: int = 256  # images waiting per member before 429
    default_policy: str = "most_accurate"  # requests with no SLA
    # How expected latency is costed: `device` (every member's work on the device, decoding, the HTTP edge; the
    # default) or `member` (the member's own queue and profile only: the old costing, kept to measure the gain).
    costing: str = "device"
    # Requests without a latency bound are scheduled as if due this long after they arrived: behind tighter
    # deadlines, but never starved by them (they are never refused for it).
    default_deadline_ms: float = 1000.0
    correction_half_life_s: float = 10.0  # online corrections decay back to the profile when evidence is this old
    cpu_lanes: int | None = None  # decodes and CPU batches at once (default: the cores this process may use)
    decode_budget_ms: float = 1000.0  # CPU time one request's images may take to decode (400 beyond): bounds a bomb's cost
    # Nice levels the decoding and inference lanes run below the event loop: with every core busy, the loop's answers,
    # refusals and routing go first (docs/serving-measurements.md measures it against 0, the same priority).
    lane_nice: int = 10
    # A request with a bound starts decoding (or its batch runs) only while its expected run time, times 1 + this, fits
    # before its deadline: one that would only just fit is refused at once (429 deadline) rather than answered late.
    start_headroom: float = 0.5

    def __post_init__(self) -> None:
        if self.max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        if self.default_policy not in POLICIES:
            raise ValueError(f"default_policy must be one of {POLICIES}")
        if self.costing not in COSTINGS:
            raise ValueError(f"costing must be one of {COSTINGS}")
        if not 0 < self.default_deadline_ms <= 3_600_000 or not 0 < self.correction_half_life_s <= 3600:
            raise ValueError("default_deadline_ms must be in (0, 3600000] and correction_half_life_s in (0, 3600]")
        if self.cpu_lanes is not None and self.cpu_lanes < 1:
            raise ValueError("cpu_lanes must be >= 1")
        if not 0 < self.decode_budget_ms <= 3_600_000:
            raise ValueError("decode_budget_ms must be in (0, 3600000]")
        if not 0 <= self.start_headroom <= MAX_START_HEADROOM:
            raise ValueError(f"start_headroom must be from 0 to {MAX_START_HEADROOM:g}")
        if not 0 <= self.lane_nice <= MAX_NICE:
            raise ValueError(f"lane_nice must be from 0 to {MAX_NICE}")


SERVING_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")


@dataclass(frozen=True)
class ServerSettings:
    repository: Path
    backend: str = "onnxruntime"
    triton_url: str = "127.0.0.1:8000"
    triton_protocol: str = "http"
    triton_ready_timeout_s: float = 60.0
    family: str | None = None  # None: the family of the detected hardware class
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    max_body_bytes: int = 10 * 2**20
    max_pixels: int = 4096 * 4096  # a 12 MP phone photo fits; the members need a few hundred pixels a side
    min_side: int = 8
    max_images: int = 64  # per batch request
    max_in_flight: int = 256  # requests inside the server at once, counted once their body has arrived: bounds memory
    max_bodies_bytes: int = 256 * 2**20  # bytes of request bodies in the server at once (arriving or being served)
    body_timeout_s: float = 30.0  # a request's body must arrive within this (408 and closed otherwise)
    formats: tuple[str, ...] = SERVING_FORMATS
    watch_s: float = 0.0  # look at the repository's manifest this often and serve a new one when it changes (0: never)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend '{self.backend}' (known: {', '.join(BACKENDS)})")
        for name in ("max_body_bytes", "max_pixels", "min_side", "max_images", "max_in_flight", "max_bodies_bytes"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1")
        if self.max_bodies_bytes < self.max_body_bytes:
            raise UserError(f"the memory for bodies ({self.max_bodies_bytes} bytes) must hold one whole body ({self.max_body_bytes} bytes)")
        if not 0 < self.body_timeout_s <= 3600:
            raise UserError("body_timeout_s must be in (0, 3600] seconds")
        if not 0 <= self.watch_s <= 3600:
            raise UserError("watch_s must be in [0, 3600] seconds (0: never look for a new repository)")
        if self.dispatch.max_queue < self.max_images:
            raise UserError(f"the queue limit ({self.dispatch.max_queue} images) must hold a whole batch request ({self.max_images} images)")
