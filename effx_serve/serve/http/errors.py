"""The one map from why a request was not served to its HTTP answer: status, `detail` naming the cause, headers.

Every error a client can cause is a 4xx: 400 unreadable image or body, 404 unknown family or member, 413 too
large, 415 wrong Content-Type, 422 bad parameter or an SLA no member can meet (with the nearest options), 429 at
a limit and 503 not ready or backend down (both with Retry-After).
"""

from __future__ import annotations

import math

from fastapi.responses import JSONResponse

from effx_serve.serve.errors import InvalidRequest, Overloaded, SlaUnmeetable, Unavailable, UnknownName, UnreadableImage


class RequestProblem(Exception):
    """A request body or form the server cannot take as sent (framing: size, type, encoding), with its HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


STATUS = {UnreadableImage: 400, UnknownName: 404, InvalidRequest: 422, SlaUnmeetable: 422, Overloaded: 429, Unavailable: 503}



HANDLED = (RequestProblem, *STATUS)


def first_error(errors: list[dict]) -> str:
    """A validation failure in one readable line: where (the field, without 'query' or 'body') and why."""
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"] if part not in ("query", "body")) or "request"
    return f"{where}: {first['msg']}"


def response(error: Exception) -> JSONResponse:
    """The answer to a request that failed with `error` (one of HANDLED)."""
    if isinstance(error, RequestProblem):  # a sender too slow is closed as well: its connection is not worth keeping
        return JSONResponse({"detail": str(error)}, error.status, headers={"Connection": "close"} if error.status == 408 else None)
    status = next(code for kind, code in STATUS.items() if isinstance(error, kind))
    body, headers = {"detail": str(error)}, None
    if isinstance(error, SlaUnmeetable):
        body["options"] = error.options
    elif isinstance(error, Overloaded):
        body["reason"] = error.reason
        headers = {"Retry-After": str(max(1, math.ceil(error.retry_after_s)))}
    elif isinstance(error, Unavailable):
        body["detail"] = f"cannot serve now: {error}"
        headers = {"Retry-After": "1"}
    return JSONResponse(body, status, headers=headers)
