"""The fast JPEG path of the server's decoding: libjpeg-turbo through simplejpeg, in one call that releases the GIL.

Pillow decodes the same library's output, but its JPEG plugin reads the headers in Python (about 40 reads of a few bytes
for a camera photo) and holds the interpreter lock while it does; under load that lock is what the event loop and the
other decoding lanes wait for. `decode_scaled` gives exactly the picture `preprocess.decode_image(data, shrink_to=...)`
gives, pixel for pixel: the same power-of-two DCT scale Pillow's `draft` picks, the same colour conversion, the same
EXIF orientation. Anything it cannot promise that for (CMYK, an orientation only XMP states, malformed EXIF, an error
from libjpeg) returns None, and the caller decodes with Pillow, which gives the image or the error as before.

This module is on the serving path and must never import torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import simplejpeg
from PIL import Image

_SOS, _EOI = 0xDA, 0xD9
_MAX_SEGMENTS = 256  # header segments read before the first scan; beyond, Pillow decides
_FRAME_SEGMENTS = 64  # for the size alone (read on the event loop for every request); beyond, Pillow reads the header
_EXIF, _XMP = b"Exif\0\0", b"http://ns.adobe.com/xap/1.0/\x00"
_ORIENTATION_TAG, _SHORT = 0x0112, 3
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
_SEQUENTIAL = frozenset({0xC0, 0xC1})  # SOF0, SOF1: baseline and extended sequential, Huffman-coded
_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})  # SOFn: the size


def decode_scaled(data: bytes, shrink_to: int, header: Header | None = None) -> Image.Image | None:
    """The upright RGB picture of a JPEG, decoded at the smallest power-of-two scale (1, 1/2, 1/4, 1/8) that keeps both
    sides at least `shrink_to`, as Pillow's `draft` scales; None when only Pillow can say (see the module's text).
    The caller has checked the format, the pixel count and the scan count; `header`: `read_header(data)` if it has it."""
    header = header or read_header(data)
    if header is None or header.components not in (1, 3):  # 4: CMYK or YCCK, which libjpeg does not make RGB
        return None
    orientation = _orientation(header)
    if orientation is None:
        return None
    scale = _draft_scale(header.width, header.height, shrink_to)
    size = (-(-header.width // scale), -(-header.height // scale))
    try:  # the one call that lets go of the interpreter lock: under load, taking it back after each such call is a wait
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=size[0], min_height=size[1], min_factor=scale)
    except ValueError:  # corrupt, truncated, or a JPEG variant libjpeg refuses: Pillow words the error
        return None
    if pixels.shape != (size[1], size[0], 3):
        return None
    picture = Image.fromarray(pixels, "RGB")
    return picture.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else picture


def _draft_scale(width: int, height: int, shrink_to: int) -> int:
    """Pillow's `JpegImageFile.draft` choice: the largest of 8, 4, 2 that both sides divide into at least `shrink_to`."""
    fits = min(width // shrink_to, height // shrink_to)
    return next((scale for scale in (8, 4, 2) if fits >= scale), 1)


class Header(NamedTuple):
    width: int
    height: int
    components: int  # 1: greyscale, 3: YCbCr or RGB, 4: CMYK or YCCK
    exif: list[bytes]  # the EXIF segments' TIFF data
    xmp: bool  # whether an XMP segment is there
    # Sequential (baseline or extended) with every component in its first scan: libjpeg refuses a second scan of such a file
    # at once ("Didn't expect more than one scan"), so it cannot be a bomb of repeated scans and they need not be counted.
    single_scan: bool = False


def _segments(data: bytes, limit: int) -> Iterator[tuple[int, int]]:
    """(marker, where its length field starts) of each segment with a length, up to and including the first scan's
    (SOS) or the end of the image, at most `limit`; it stops early where the markers cannot be walked."""
    at = 2
    for _ in range(limit):
        if at >= len(data) or data[at] != 0xFF:
            return
        while at < len(data) and data[at] == 0xFF:  # a marker, after any fill bytes
            at += 1
        if at + 2 >= len(data):
            return
        marker = data[at]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length
            at += 1
            continue
        yield marker, at + 1
        if marker in (_SOS, _EOI):
            return
        at += 1 + int.from_bytes(data[at + 1:at + 3], "big")


def _size(data: bytes, at: int) -> tuple[int, int]:
    """(width, height) of the frame header (SOFn) whose length field starts at `at`: length, precision, height, width."""
    return int.from_bytes(data[at + 5:at + 7], "big"), int.from_bytes(data[at + 3:at + 5], "big")


def frame_size(data: bytes) -> tuple[int, int] | None:
    """A JPEG's (width, height) from its frame header (SOFn), the markers before it walked; None when not found there."""
    for marker, at in _segments(data, _FRAME_SEGMENTS):
        if marker in _FRAMES:
            return _size(data, at) if at + 7 <= len(data) else None
    return None


def read_header(data: bytes) -> Header | None:
    """The frame header and the metadata segments before the first scan; None when the markers cannot be walked to it."""
    exif: list[bytes] = []
    xmp, frame, sequential = False, None, False
    for marker, at in _segments(data, _MAX_SEGMENTS):
        if marker in (_SOS, _EOI):
            if frame is None:
                return None
            single_scan = sequential and marker == _SOS and at + 2 < len(data) and data[at + 2] == frame[2]  # the scan's components
            return Header(*frame, exif, xmp, single_scan)
        end = at + int.from_bytes(data[at:at + 2], "big")
        if marker in _FRAMES and end >= at + 8 and len(data) >= at + 8:  # length, precision, height, width, components
            frame, sequential = (*_size(data, at), data[at + 7]), marker in _SEQUENTIAL
        elif marker == 0xE1:
            if data.startswith(_EXIF, at + 2):
                exif.append(data[at + 2 + len(_EXIF):end])
            elif data.startswith(_XMP, at + 2):
                xmp = True
    return None


def _orientation(header: Header) -> int | None:
    """The EXIF orientation Pillow's `exif_transpose` would apply (1: none); None when it cannot be read as plainly."""
    if len(header.exif) > 1:  # Pillow joins them; leave that to it
        return None
    found = _exif_orientation(header.exif[0]) if header.exif else 1
    if found == 1 and header.xmp:  # Pillow reads XMP's tiff:Orientation when EXIF has none
        return None
    return found


def _exif_orientation(tiff: bytes) -> int | None:
    """The Orientation tag (1-8) of IFD0 in EXIF's TIFF data; 1 when there is none; None when it is malformed or odd."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8 or int.from_bytes(tiff[2:4], order) != 42:
        return None
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd < 8 or ifd + 2 > len(tiff):
        return None
    count = int.from_bytes(tiff[ifd:ifd + 2], order)
    if ifd + 2 + 12 * count > len(tiff):
        return None
    values = []
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if int.from_bytes(tiff[entry:entry + 2], order) == _ORIENTATION_TAG:
            if int.from_bytes(tiff[entry + 2:entry + 4], order) != _SHORT or int.from_bytes(tiff[entry + 4:entry + 8], order) != 1:
                return None
            values.append(int.from_bytes(tiff[entry + 8:entry + 10], order))
    if not values:
        return 1
    return values[0] if len(values) == 1 and 1 <= values[0] <= 8 else None
