"""The images and fields of a classification request, in any of its three shapes, within the size limits.

- multipart/form-data: one or more file parts (any field name), other parts are fields;
- a raw body of type image/jpeg, image/png or image/webp (or another allowed image/* type);
- application/json: {"image": "<base64>"} or {"images": [...]}, a data: URL prefix allowed, and fields.

The body is read in chunks and cut off at the limit, whatever Content-Length claims, so an oversized
or endless upload costs at most the limit in memory.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field

from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request

from effx_serve.serve.errors import Overloaded
from effx_serve.serve.http.errors import RequestProblem, first_error
from effx_serve.serve.schema import ClassifyParams

RAW_IMAGE_TYPES = {"image/jpeg": "JPEG", "image/jpg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/bmp": "BMP",
                   "image/gif": "GIF", "image/tiff": "TIFF"}


class BodyBudget:
    """The bytes of request bodies in the server at once, across requests: from their first byte until their answer is
    written. An upload holds what it has sent so far, so stalled senders cost almost nothing and cannot lock others out,
    while the memory that bodies take is bounded whatever the clients do."""

    def __init__(self, limit_bytes: int):
        self.limit, self.used = limit_bytes, 0

    def take(self, size: int) -> None:
        if self.used + size > self.limit:
            raise Overloaded(f"the server holds {self.limit // 2**20} MiB of request bodies, its limit; retry shortly")
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size


@dataclass
class ImageRequest:
    images: list[bytes]
    fields: dict[str, object] = field(default_factory=dict)  # SLA parameters sent in the body
    held: int = 0  # bytes of the BodyBudget this request holds until its answer is written


DRAIN_BYTES = 64 * 2**20  # an oversized body up to this size is read and dropped before the 413, so the client sees it


async def _chunks(request: Request):
    """The body's chunks as they arrive (ClientDisconnect if the client goes away first)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        yield message.get("body", b""), message.get("more_body", False)
        if not message.get("more_body", False):
            return


async def _drain(chunks, declared: int | None, read: int) -> None:
    """Read and drop the rest of an oversized body (up to DRAIN_BYTES in all): a client that writes its whole body before
    reading (Python's urllib, many SDKs) would otherwise find the connection reset instead of reading the 413."""
    if declared is not None and declared > DRAIN_BYTES:
        return  # not worth the bandwidth: the connection is closed on it
    async for chunk, _ in chunks:
        read += len(chunk)
        if read > DRAIN_BYTES:
            return


async def read_body(request: Request, limit: int, budget: BodyBudget | None = None) -> bytes:
    """The whole body, at most `limit` bytes (413 beyond). Its bytes are taken from `budget` as they arrive and stay
    taken when it is returned (the caller gives back len(body) once the request is answered); on failure they are given
    back here."""
    header = request.headers.get("content-length")
    declared = int(header) if header is not None and header.isdigit() else None
    arriving = _chunks(request)
    if declared is not None and declared > limit:
        await _drain(arriving, declared, 0)
        raise RequestProblem(413, f"the body is {declared} bytes, more than the limit of {limit} bytes; send a smaller image")
    chunks, size = [], 0
    try:
        async for chunk, _ in arriving:
            size += len(chunk)
            if size > limit:
                await _drain(arriving, declared, size)
                raise RequestProblem(413, f"the body is more than the limit of {limit} bytes; send a smaller image")
            if budget is not None:
                budget.take(len(chunk))
            chunks.append(chunk)
    except BaseException:
        if budget is not None:
            budget.give(sum(len(chunk) for chunk in chunks))
        raise
    return b"".join(chunks)


def _decode_base64(text: object, where: str) -> bytes:
    if not isinstance(text, str):
        raise RequestProblem(422, f"{where} must be a base64 string, not {type(text).__name__}")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestProblem(422, f"{where} is not valid base64") from None


def _from_json(body: bytes, max_images: int) -> ImageRequest:
    try:
        data = json.loads(body)
    except ValueError as error:  # bad syntax, bad UTF-8, or an integer longer than Python converts (4,300 digits)
        raise RequestProblem(400, f"the body is not valid JSON: {error}") from None
    except RecursionError:  # the parser's own limit on nesting (about a thousand levels)
        raise RequestProblem(400, "the JSON body is nested too deeply; send {\"image\": \"<base64>\"}") from None
    if not isinstance(data, dict):
        raise RequestProblem(422, 'the JSON body must be an object such as {"image": "<base64>"}')
    if "image" in data and "images" in data:
        raise RequestProblem(422, 'send either "image" or "images", not both')
    if "image" in data:
        images = [_decode_base64(data.pop("image"), "image")]
    elif "images" in data:
        items = data.pop("images")
        if not isinstance(items, list):
            raise RequestProblem(422, '"images" must be a list of base64 strings')
        if not items:
            raise RequestProblem(422, '"images" is empty; send at least one base64 image')
        if len(items) > max_images:
            raise RequestProblem(413, f"{len(items)} images in one request, more than the limit of {max_images}")
        images = [_decode_base64(item, f"images[{index}]") for index, item in enumerate(items)]
    else:
        raise RequestProblem(422, 'the JSON body has no "image" (base64 of the image file)')
    return ImageRequest(images, data)


async def _from_multipart(request: Request, body: bytes, max_images: int) -> ImageRequest:
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    boundary = re.search(r'boundary="?([^";]+)', request.headers.get("content-type", ""), re.IGNORECASE)
    if boundary and body.rfind(b"--" + boundary[1].strip().encode("latin-1") + b"--") < 0:  # the parser keeps the parts before a cut
        raise RequestProblem(400, "the multipart body ends before its closing boundary (cut off?); send the whole body")
    try:
        form = await Request(request.scope, replay).form(max_files=max_images, max_fields=32)
    except (MultiPartException, HTTPException) as error:  # Starlette raises the parser's error as a 400 inside an app
        reason = getattr(error, "detail", None) or str(error)
        if reason.startswith("Too many files"):
            raise RequestProblem(413, f"more than {max_images} images in one request, the limit") from None
        raise RequestProblem(400, f"the multipart body cannot be read: {reason}") from None
    images, fields = [], {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                images.append(await value.read())
            else:
                fields[key] = value
    finally:
        await form.close()
    if not images:
        raise RequestProblem(422, "the multipart body has no file part; send the image as a file (e.g. curl -F image=@photo.jpg)")
    return ImageRequest(images, fields)


async def read_images(request: Request, limit: int, max_images: int, budget: BodyBudget | None = None) -> ImageRequest:
    """The images and body fields of `request`; RequestProblem with a 4xx status when it cannot be taken. The body's bytes
    stay taken from `budget` (ImageRequest.held) until the caller gives them back."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not content_type:
        raise RequestProblem(415, "no Content-Type; send image/jpeg, image/png, image/webp, multipart/form-data or application/json")
    if content_type not in RAW_IMAGE_TYPES and content_type not in ("multipart/form-data", "application/json"):
        raise RequestProblem(415, f"unsupported Content-Type {content_type}; send image/jpeg, image/png, image/webp, "
                                  "multipart/form-data or application/json")
    body = await read_body(request, limit, budget)
    try:
        if not body:
            raise RequestProblem(400, "the body is empty; send the bytes of a JPEG, PNG or WebP image")
        if content_type == "application/json":
            taken = _from_json(body, max_images)
        elif content_type == "multipart/form-data":
            taken = await _from_multipart(request, body, max_images)
        else:
            taken = ImageRequest([body])
    except BaseException:
        if budget is not None:
            budget.give(len(body))
        raise
    taken.held = len(body) if budget is not None else 0
    return taken


def may_carry_fields(request: Request) -> bool:
    """Whether the body can hold parameters (multipart and JSON bodies can; a raw image cannot)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower() not in RAW_IMAGE_TYPES


def with_body_fields(query: ClassifyParams, fields: dict) -> ClassifyParams:
    """The request's parameters: the query string's, with those sent as body fields (multipart or JSON) on top, checked alike."""
    if not fields:
        return query
    try:
        return ClassifyParams.model_validate({**query.model_dump(exclude_unset=True), **fields})
    except ValidationError as error:
        raise RequestProblem(422, first_error(error.errors())) from None
