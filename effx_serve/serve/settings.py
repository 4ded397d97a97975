"""A server's settings, checked when they are made: what to serve, with which backend, within which limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from effx_serve.core.errors import UserError
from effx_serve.serve.backends.base import BACKENDS
from effx_serve.serve.router import POLICIES


@dataclass(frozen=True)
class DispatchSettings:
    max_queue: int = 256  # images waiting per member before 429
    # How long a batch that is not full waits for company. 0: batches form only from what queued while the
    # previous batch ran (they grow with load at no cost to a lone request; any wait here costs at least
    # the event loop's 1 ms timer resolution, several times the batch-1 time of a small member).
    max_wait_ms: float = 0.0
    default_policy: str = "most_accurate"  # requests with no SLA

    def __post_init__(self) -> None:
        if self.max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ValueError("max_wait_ms must be from 0 to 1000")
        if self.default_policy not in POLICIES:
            raise ValueError(f"default_policy must be one of {POLICIES}")


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
    max_pixels: int = 40_000_000
    min_side: int = 8
    max_images: int = 64  # per batch request
    max_in_flight: int = 256  # requests inside the server at once (bodies read, decoding, queued): bounds memory
    formats: tuple[str, ...] = SERVING_FORMATS

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend '{self.backend}' (known: {', '.join(BACKENDS)})")
        for name in ("max_body_bytes", "max_pixels", "min_side", "max_images", "max_in_flight"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1")
        if self.dispatch.max_queue < self.max_images:
            raise UserError(f"the queue limit ({self.dispatch.max_queue} images) must hold a whole batch request ({self.max_images} images)")
