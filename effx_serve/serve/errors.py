"""Why the server does not serve a request as asked: one exception per cause, each message naming it.

Raised by the request flow, the router's catalog, the schedulers and the backends; the HTTP edge maps each to its
one status (http/errors.py), and any other transport would map the same causes.
"""

from __future__ import annotations

from effx_serve.core.errors import UserError


class InvalidRequest(UserError):
    """A parameter or combination the API does not take (HTTP 422)."""


class UnreadableImage(UserError):
    """An image that cannot be decoded within the server's limits (HTTP 400)."""


class UnknownName(UserError):
    """A family or member the repository does not have (HTTP 404)."""


class SlaUnmeetable(UserError):
    """No member can meet the SLA and the request asked to be refused then (HTTP 422, with the nearest options)."""

    def __init__(self, message: str, options: list[dict]):
        super().__init__(message)
        self.options = options


class Overloaded(UserError):
    """Refused for the load, answered at once (HTTP 429, with Retry-After). `reason`: `limit` (a queue or in-flight limit),
    `overload` (on arrival, no member could meet the bound under the current load), `deadline` (taken out of the
    queue when it could no longer make its bound)."""

    def __init__(self, message: str, retry_after_s: float = 1.0, reason: str = "limit"):
        super().__init__(message)
        self.retry_after_s, self.reason = retry_after_s, reason


class Unavailable(UserError):
    """The server cannot serve now: models still loading, a backend down, shutting down (HTTP 503, with Retry-After)."""
