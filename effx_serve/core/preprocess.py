"""Image bytes -> model input, shared by training's eval transform and the server.

One code path turns an image into the float32 CHW array a model eats, so that what a model was
evaluated on during training and what it sees when serving are identical by construction.

This module is on the serving path and must never import torch: only numpy and Pillow.

Pipeline (`to_input`): `decode_image` (format allow-list, pixel-count and JPEG scan-count limits read from the
bytes before any pixel is decoded, an optional `DecodeBudget` checked as decoding runs, EXIF orientation) -> `to_rgb` (every common mode, transparency over
white) -> `resize_and_center_crop` (shorter side to resolution / crop_fraction with bicubic, centre
square) -> `normalize` (ImageNet mean/std, CHW).
"""

from __future__ import annotations

import io
import math
import struct
import threading
import time
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from effx_serve.core import jpeg
from effx_serve.core.errors import UserError

MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""ImageNet RGB mean of 0..1 pixel values."""
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""ImageNet RGB standard deviation of 0..1 pixel values."""
DEFAULT_CROP_FRACTION = 0.875
"""The centre crop keeps this fraction of the resized shorter side (224 of 256, the ImageNet convention)."""
DEFAULT_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
"""Formats `decode_image` accepts unless told otherwise (Pillow format names)."""
DEFAULT_MAX_PIXELS = 64_000_000
"""Largest width * height `decode_image` accepts by default (an 8000 x 8000 photo)."""
MAX_JPEG_SCANS = 32
"""Most scans a JPEG may have. Encoders write 1 (baseline) or about 10 (progressive: libjpeg, Pillow, mozjpeg); each
progressive scan makes the decoder visit every block of the image again, so a few kilobytes of repeated scans would
otherwise cost minutes of CPU."""
READ_BLOCK = 4096
"""Compressed bytes handed to a decoder at a time (JPEG aside), so that a `DecodeBudget` is checked at least every
~4 MB of decoded pixels (deflate's ratio is at most 1032:1). A JPEG's work is bounded by its size and scan count, and it
keeps Pillow's 64 KiB blocks (smaller ones cost ~0.1 ms on a 640x480 photo)."""
MAX_RESOLUTION = 4096
"""Largest model input side accepted: beyond it a single input is gigabytes, surely a mistake."""
RESAMPLE = Image.Resampling.BICUBIC
"""Bicubic (antialiased when shrinking, as Pillow does): the EfficientNet reference evaluates with bicubic."""

# Precomputed so normalisation is one multiply-add per value: (x / 255 - mean) / std.
_SCALE = (1.0 / (255.0 * np.asarray(STD, dtype=np.float32))).astype(np.float32)
_OFFSET = (np.asarray(MEAN, dtype=np.float32) / np.asarray(STD, dtype=np.float32)).astype(np.float32)
# Every 8-bit value's normalised float per channel, computed as the formula computes it (float32 x * scale - offset): a
# lookup writes the CHW input in one pass per channel, where the formula makes four temporary arrays (a 108 px input in
# 0.15 against 0.26 ms, on the lane that holds the interpreter lock meanwhile).
_NORMALISED = np.ascontiguousarray((np.arange(256, dtype=np.float32)[:, None] * _SCALE - _OFFSET).T)
_WHITE = (255, 255, 255, 255)


class DecodeStopped(Exception):
    """Decoding was stopped from outside (`DecodeBudget.stop`, or its deadline passed): not the image's fault."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class DecodeBudget:
    """What decoding one request's images may cost, checked while each image decodes (between blocks of compressed
    bytes, and between stages): CPU time summed over the request's images, an optional deadline (time.monotonic), and
    a stop signal another thread may raise (the client went away, another image of the request failed). Exceeding the
    CPU time is the image's fault (UserError); a deadline or a stop is not (DecodeStopped)."""

    def __init__(self, cpu_ms: float | None = None, deadline: float | None = None):
        self.cpu_ms, self.deadline = cpu_ms, deadline
        self.spent_ms = 0.0  # CPU of the request's images that finished decoding
        self.stopped: str | None = None
        self._lock = threading.Lock()

    def stop(self, reason: str) -> None:
        self.stopped = reason

    def check(self, running_ms: float = 0.0) -> None:
        """Raise if decoding must stop now; `running_ms`: the CPU the image being decoded has used so far."""
        if self.stopped is not None:
            raise DecodeStopped(self.stopped)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DecodeStopped("deadline")
        if self.cpu_ms is not None and self.spent_ms + running_ms > self.cpu_ms:
            raise UserError(f"decoding took more than {self.cpu_ms:g} ms of CPU, the server's limit per request; send smaller or "
                            "simpler images (the models need no more than a few hundred pixels a side)")

    def charge(self, ms: float) -> None:
        with self._lock:
            self.spent_ms += ms


class _MeteredBytes(io.BytesIO):
    """The image's bytes, checking a DecodeBudget each time the decoder asks for more (decoding happens between reads)."""

    def __init__(self, data: bytes, budget: DecodeBudget):
        super().__init__(data)
        self.budget, self.started = budget, time.thread_time()

    def read(self, size: int | None = -1, /) -> bytes:
        self.budget.check((time.thread_time() - self.started) * 1000.0)
        return super().read(size)


_CORRUPT = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError)  # what Pillow raises on bad data


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, formats: Iterable[str] = DEFAULT_FORMATS,
                 shrink_to: int | None = None, budget: DecodeBudget | None = None) -> Image.Image:
    """Decode image bytes into a loaded, upright PIL image (any mode; see `to_rgb`).

    Raises UserError for empty or corrupt data, a format outside `formats`, or more than
    `max_pixels` pixels. The pixel count comes from the header, before pixels are decoded, so a
    decompression bomb costs nothing. Animated images give their first frame. `shrink_to` lets a
    JPEG decoder scale down by a power of two (DCT scaling, several times faster than decoding every
    pixel) while both sides stay at least `shrink_to`; other formats ignore it. A JPEG with more than
    MAX_JPEG_SCANS scans is refused before decoding; `budget` is checked as decoding runs.
    """
    allowed = _check_decode_arguments(max_pixels, formats)
    if not data:
        raise UserError("the image is empty (0 bytes); send the bytes of a JPEG, PNG or WebP file")
    image = _open(data, allowed, budget)
    width, height = image.size
    if width * height > max_pixels:
        raise UserError(f"the image is {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}; send a smaller image")
    if image.format == "JPEG":
        _check_jpeg_scans(data)
        if shrink_to is not None:
            image.draft(image.mode, (shrink_to, shrink_to))
    else:
        image.decodermaxblock = READ_BLOCK
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UserError(f"the image is too large to decode safely ({error}); send a smaller image") from None
    except _CORRUPT as error:
        raise UserError(f"the {image.format} image is corrupt or truncated ({_reason(error)}); send a complete image file") from None
    try:
        # Phones store pixels as the sensor saw them plus an Orientation tag; models should see the
        # picture as the person took it.
        return ImageOps.exif_transpose(image)
    except (*_CORRUPT, struct.error) as error:  # Pillow rewrites the EXIF it transposes, and a tag of the wrong type breaks that
        raise UserError(f"the {image.format} image's EXIF metadata is malformed ({_reason(error)}); "
                        "re-save the image without it") from None


def _check_decode_arguments(max_pixels: int, formats: Iterable[str]) -> tuple[str, ...]:
    allowed = tuple(str(name).upper() for name in formats)
    if not allowed:
        raise UserError("no image formats are allowed; pass at least one, e.g. formats=('JPEG', 'PNG')")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise UserError(f"max_pixels must be a positive integer, not {max_pixels!r}")
    # Pillow refuses images above twice its own limit (and warns above it) whatever we say; a larger
    # max_pixels would promise what decoding cannot keep. Raising Pillow's limit is a process-wide choice.
    pil_limit = Image.MAX_IMAGE_PIXELS
    if pil_limit is not None and max_pixels > pil_limit:
        raise UserError(f"max_pixels {max_pixels} is above Pillow's limit of {pil_limit}; raise PIL.Image.MAX_IMAGE_PIXELS first")
    return allowed


def _check_jpeg_scans(data: bytes) -> None:
    # Entropy-coded data never holds FF DA (an FF there is followed by 00 or a restart marker), so this counts the
    # start-of-scan markers exactly (plus one per scan of an embedded EXIF thumbnail, which is harmless). (numpy, which
    # would let go of the interpreter lock, made two decoding threads 20% slower than this: its temporary arrays.)
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise UserError(f"the JPEG has {scans} scans, more than the limit of {MAX_JPEG_SCANS} (encoders write about 10); "
                        "re-encode it, e.g. as a baseline JPEG")


def _open(data: bytes, allowed: tuple[str, ...], budget: DecodeBudget | None = None) -> Image.Image:
    """Read the header with the allowed decoders only; name the format when it is not allowed."""
    listing = ", ".join(allowed)
    try:
        return Image.open(io.BytesIO(data) if budget is None else _MeteredBytes(data, budget), formats=allowed)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UserError(f"the image is too large to decode safely ({error}); send a smaller image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        actual = _identify(data)
        if actual is not None and actual not in allowed:
            raise UserError(f"unsupported image format {actual}; allowed formats: {listing}") from None
        if isinstance(error, UnidentifiedImageError):
            raise UserError(f"the data is not an image in a known format; allowed formats: {listing}") from None
        raise UserError(f"the data is not a readable image ({_reason(error)}); allowed formats: {listing}") from None


def _identify(data: bytes) -> str | None:
    """The format name of `data` with every decoder Pillow has, or None; only used to word an error."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format
    except Exception:  # noqa: BLE001 - any failure here just means "not recognised"
        return None


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]


def to_rgb(image: Image.Image) -> Image.Image:
    """The image in 8-bit RGB mode, from any common mode.

    Handled: 1, L, P, RGB, CMYK, YCbCr, LA/RGBA/PA and anything with a transparency key (composited
    onto white), I;16/I;16L/I;16B/I;16N and I (integer greyscale, scaled by its bit depth), F.
    """
    if image.mode == "RGB" and not image.has_transparency_data:
        return image
    if image.has_transparency_data or image.mode in ("LA", "La", "RGBA", "RGBa", "PA"):
        return _over_white(image)
    if image.mode.startswith("I;16") or image.mode == "I":
        return _grey_to_rgb(_integer_to_uint8(image))
    if image.mode == "F":
        return _grey_to_rgb(_float_to_uint8(image))
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise UserError(f"unsupported image mode {image.mode} ({_reason(error)}); send an RGB or greyscale image") from None


def _over_white(image: Image.Image) -> Image.Image:
    # Fully transparent pixels carry arbitrary colour (often black) that nobody sees; viewers and
    # browsers show them over a light page, so compositing onto white gives the model what people saw.
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


_SIXTEEN_BIT_TO_UINT8 = np.clip(np.rint(np.arange(65536, dtype=np.float64) * (255.0 / 65535.0)), 0, 255).astype(np.uint8)


def _integer_to_uint8(image: Image.Image) -> np.ndarray:
    """Scale integer greyscale to 0..255 by its bit depth (Pillow's convert('L') would clip at 255)."""
    values = np.asarray(image)
    # Mode I has no recorded bit depth; 16-bit scans and PNGs are what usually lands in it. 16-bit values take one table
    # lookup a pixel (exactly the float formula below, which cost 3 s and 0.9 GB for a 16-bit PNG of 36 MP).
    if image.mode.startswith("I;16") or values.size == 0 or (values.min() >= 0 and values.max() <= 65535):
        return _SIXTEEN_BIT_TO_UINT8[values.astype(np.uint16, copy=False)]
    if values.min() >= 0:
        full_scale, low = float(2**31 - 1), 0.0
    else:
        full_scale, low = float(2**32 - 1), float(-(2**31))
    scaled = (values.astype(np.float64) - low) * (255.0 / full_scale)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _float_to_uint8(image: Image.Image) -> np.ndarray:
    """Mode F has no range of its own: 0..1 is taken as normalised intensity, anything else as 0..255."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if values.size and values.min() >= 0.0 and values.max() <= 1.0:
        values = values * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(grey, mode="L").convert("RGB")


def check_arguments(resolution: int, crop_fraction: float = DEFAULT_CROP_FRACTION) -> None:
    """Raise UserError unless 1 <= resolution <= MAX_RESOLUTION and 0 < crop_fraction <= 1."""
    if isinstance(resolution, bool) or not isinstance(resolution, int | np.integer) or not 1 <= resolution <= MAX_RESOLUTION:
        raise UserError(f"resolution must be an integer from 1 to {MAX_RESOLUTION}, not {resolution!r}")
    if isinstance(crop_fraction, bool) or not isinstance(crop_fraction, int | float | np.floating):
        raise UserError(f"crop_fraction must be a number in (0, 1], not {crop_fraction!r}")
    if not (math.isfinite(crop_fraction) and 0.0 < crop_fraction <= 1.0):
        raise UserError(f"crop_fraction must be in (0, 1], not {crop_fraction!r}; 0.875 is the usual choice")


def resize_and_center_crop(image: Image.Image, resolution: int, crop_fraction: float = DEFAULT_CROP_FRACTION) -> Image.Image:
    """Resize so the shorter side is round(resolution / crop_fraction), then take the centre square.

    Done as one bicubic resample of the matching source region, so an extreme aspect ratio
    (1 x 10000) never allocates the huge intermediate image and a 1 x 1 image still gives
    resolution x resolution.
    """
    check_arguments(resolution, crop_fraction)
    width, height = image.size
    if width < 1 or height < 1:
        raise UserError(f"the image is {width}x{height} pixels; it needs at least one pixel")
    shorter = round(resolution / crop_fraction)
    # The centre square of side `resolution` in the resized image covers this many source pixels.
    side = resolution * min(width, height) / shorter
    left, top = (width - side) / 2.0, (height - side) / 2.0
    return image.resize((resolution, resolution), RESAMPLE, box=(left, top, left + side, top + side))


def normalize(image: Image.Image) -> np.ndarray:
    """An RGB image as float32 CHW, each channel (x / 255 - MEAN) / STD."""
    if image.mode != "RGB":
        image = to_rgb(image)
    pixels = np.asarray(image)
    chw = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
    for channel in range(3):
        np.take(_NORMALISED[channel], pixels[:, :, channel], out=chw[channel])
    return chw


def to_input(image: Image.Image, resolution: int, crop_fraction: float = DEFAULT_CROP_FRACTION) -> np.ndarray:
    """The model input for one image: float32 CHW of shape (3, resolution, resolution), normalised."""
    check_arguments(resolution, crop_fraction)
    return normalize(resize_and_center_crop(to_rgb(image), resolution, crop_fraction))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def peek(data: bytes) -> tuple[str | None, int]:
    """(format, width x height) from the image's header, without decoding a pixel; (None, 0) when it is unreadable
    (decoding it then says why). What the server needs to expect the decoding time before it decodes: read on the event
    loop for every request, so JPEG and PNG headers are parsed here directly (Pillow's open costs ~0.15 ms)."""
    size = _png_size(data) if data.startswith(_PNG_SIGNATURE) else jpeg.frame_size(data) if data.startswith(b"\xff\xd8") else None
    if size is not None:
        return ("PNG" if data[:1] == b"\x89" else "JPEG"), size[0] * size[1]
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format, image.size[0] * image.size[1]
    except Exception:  # noqa: BLE001 - any failure here just means "unknown"; decode_image gives the error
        return None, 0


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def serving_image(data: bytes, resolution: int, max_pixels: int = DEFAULT_MAX_PIXELS, formats: Iterable[str] = DEFAULT_FORMATS,
                  min_side: int = 1, budget: DecodeBudget | None = None) -> Image.Image:
    """Image bytes -> the upright RGB picture the server makes a `resolution` input from: `decode_image` with a JPEG
    decoded straight to the smallest power-of-two scale that still covers the resize target (DCT scaling averages
    the pixels it drops, so the bicubic resize that follows sees a clean image), at least `min_side` pixels a side.
    `budget` is checked while decoding and before the conversion to RGB."""
    started = time.thread_time()
    shorter = math.ceil(resolution / DEFAULT_CROP_FRACTION)
    image = _jpeg_fast(data, max_pixels, formats, shorter, budget)
    if image is None:
        image = decode_image(data, max_pixels, formats, shrink_to=shorter, budget=budget)
    if min(image.size) < min_side:
        raise UserError(f"the image is {image.size[0]}x{image.size[1]} pixels; both sides must be at least {min_side}")
    if budget is not None:
        budget.check((time.thread_time() - started) * 1000.0)
    return to_rgb(image)


def _jpeg_fast(data: bytes, max_pixels: int, formats: Iterable[str], shrink_to: int, budget: DecodeBudget | None) -> Image.Image | None:
    """`jpeg.decode_scaled` for an allowed JPEG within the limits (the same picture as `decode_image`, in one call that
    releases the GIL); None for anything else, which `decode_image` decodes, or refuses with its reason."""
    if not data.startswith(b"\xff\xd8") or "JPEG" not in _check_decode_arguments(max_pixels, formats):
        return None
    header = jpeg.read_header(data)
    if header is None or not 0 < header.width * header.height <= max_pixels:
        return None
    if not header.single_scan:  # (a single-scan file's extra scans libjpeg refuses itself, and Pillow then counts them)
        _check_jpeg_scans(data)
    if budget is not None:
        budget.check()
    return jpeg.decode_scaled(data, shrink_to, header)


def serving_input(data: bytes, resolution: int, max_pixels: int = DEFAULT_MAX_PIXELS, formats: Iterable[str] = DEFAULT_FORMATS,
                  min_side: int = 1) -> np.ndarray:
    """Image bytes -> model input, as the server does it (`serving_image`, then `to_input`)."""
    return to_input(serving_image(data, resolution, max_pixels, formats, min_side), resolution)
