"""Hostile request bodies, built small or at full size: what loadtest/hostile.py sends and the tests send small.

Each builder returns bytes a client could upload; none needs a server. The images are valid enough to reach the
decoder, which is what makes them expensive.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def progressive_scan_bomb(width: int = 4000, height: int = 3000, repeats: int = 1000) -> bytes:
    """A progressive JPEG whose last scan (an AC refinement: the decoder visits every block again for it) is repeated
    `repeats` times before its end: a few bytes a scan, tens of milliseconds of CPU each at 12 MP."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 130, 140)).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    start, end = _last_scan(data)
    return data[:end] + data[start:end] * repeats + data[end:]


def _last_scan(data: bytes) -> tuple[int, int]:
    """(start, end) of the last scan: its SOS segment and the entropy-coded data after it, up to the next marker."""
    start = data.rindex(b"\xff\xda")
    end = start + 2 + int.from_bytes(data[start + 2:start + 4], "big")
    while True:
        end = data.index(b"\xff", end)
        follower = data[end + 1]
        if follower == 0 or 0xD0 <= follower <= 0xD7:  # a stuffed FF or a restart marker: still entropy-coded data
            end += 2
            continue
        return start, end


def png_pixel_bomb(width: int = 6000, height: int = 6000, bit_depth: int = 16) -> bytes:
    """A greyscale PNG of width x height black pixels: deflate shrinks them ~1000:1 (36 MP of 16-bit in ~70 KB)."""
    row = b"\x00" * (1 + width * bit_depth // 8)  # filter byte "none", then the pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def deep_json(depth: int = 1000) -> bytes:
    """A JSON body nested `depth` levels deep (a recursive parser runs out of stack)."""
    return b'{"image": ' + b"[" * depth + b"]" * depth + b"}"
