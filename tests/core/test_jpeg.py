"""The fast JPEG path: pixel for pixel what Pillow's path gives, or None (and then Pillow decides, as before)."""

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from effx_serve.core import jpeg, preprocess
from effx_serve.core.errors import UserError
from effx_serve.core.photos import synthetic_photo
from loadtest.attacks import progressive_scan_bomb


def encode(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def noisy(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def with_orientation(orientation: int, width: int = 40, height: int = 20) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(noisy(width, height), exif=exif.tobytes(), quality=95)


def pillow_picture(data: bytes, shrink_to: int) -> np.ndarray:
    """What the server's decoding gave before the fast path: Pillow's draft, EXIF orientation, RGB."""
    return np.asarray(preprocess.to_rgb(preprocess.decode_image(data, shrink_to=shrink_to)))


def assert_same_as_pillow(data: bytes, shrink_to: int) -> None:
    picture = jpeg.decode_scaled(data, shrink_to)
    assert picture is not None and picture.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(picture), pillow_picture(data, shrink_to))


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (33, 17), (640, 480), (1000, 10), (10, 1000)])
@pytest.mark.parametrize("shrink_to", [1, 5, 37, 83, 124, 5000])
def test_same_pixels_as_pillow_at_every_scale(size, shrink_to):
    assert_same_as_pillow(encode(noisy(*size), quality=90), shrink_to)


@pytest.mark.parametrize("options", [{"subsampling": 0}, {"subsampling": 1}, {"subsampling": 2}, {"progressive": True},
                                     {"quality": 30}, {"optimize": True}, {"keep_rgb": True}], ids=str)
def test_same_pixels_as_pillow_for_every_encoding(options):
    data = encode(Image.open(io.BytesIO(synthetic_photo(640, 480, "JPEG"))).convert("RGB"), **options)
    for shrink_to in (37, 55, 83, 124):
        assert_same_as_pillow(data, shrink_to)


def test_greyscale_is_spread_to_rgb_as_pillow_does():
    assert_same_as_pillow(encode(noisy(64, 48, "L")), 10)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pillow_applies_it(orientation):
    data = with_orientation(orientation)
    assert_same_as_pillow(data, 4)
    assert jpeg.decode_scaled(data, 4).size == ((10, 5) if orientation < 5 else (5, 10))


def test_left_to_pillow_when_it_cannot_promise_the_same_picture():
    cmyk = encode(noisy(32, 32, "CMYK"))
    xmp_only = encode(noisy(32, 32), xmp=b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>')
    odd_exif = with_orientation(1).replace(b"Exif\0\0MM", b"Exif\0\0XX").replace(b"Exif\0\0II", b"Exif\0\0XX")
    truncated = encode(noisy(64, 64))[:300]
    not_walkable = b"\xff\xd8\x00\x00" + encode(noisy(8, 8))[2:]
    for data in (cmyk, xmp_only, odd_exif, truncated, not_walkable):
        assert jpeg.decode_scaled(data, 8) is None


def test_the_server_gives_what_it_gave_when_pillow_decides():
    xmp_only = encode(noisy(40, 20), xmp=b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>')
    assert preprocess.serving_image(xmp_only, 8).size == (10, 20)  # Pillow reads the XMP orientation (and halves it), as before
    cmyk = encode(noisy(32, 32, "CMYK"))
    assert preprocess.serving_image(cmyk, 8).mode == "RGB"
    truncated = encode(noisy(64, 64))[:300]
    with pytest.raises(UserError) as before:
        preprocess.decode_image(truncated, shrink_to=10)
    with pytest.raises(UserError) as now:
        preprocess.serving_image(truncated, 8)
    assert str(now.value) == str(before.value)


def test_a_jpeg_cut_anywhere_in_its_header_is_a_clear_error():
    data = with_orientation(6, 64, 48)
    for end in range(2, data.find(b"\xff\xda") + 4):
        assert jpeg.decode_scaled(data[:end], 8) is None
        with pytest.raises(UserError):
            preprocess.serving_image(data[:end], 8)


def test_only_a_sequential_jpeg_with_every_component_in_its_first_scan_skips_the_scan_count():
    baseline = encode(noisy(64, 48))
    assert jpeg.read_header(baseline).single_scan
    assert not jpeg.read_header(encode(noisy(64, 48), progressive=True)).single_scan
    assert not jpeg.read_header(progressive_scan_bomb(64, 48, repeats=0)).single_scan
    # A baseline file with its scan repeated: libjpeg refuses the second scan, and the Pillow path then counts them.
    scan = baseline[baseline.find(b"\xff\xda"):-2]
    repeated = baseline[:-2] + scan * (preprocess.MAX_JPEG_SCANS + 1) + b"\xff\xd9"
    assert jpeg.read_header(repeated).single_scan
    assert jpeg.decode_scaled(repeated, 8) is None
    with pytest.raises(UserError, match=rf"\d+ scans, more than the limit of {preprocess.MAX_JPEG_SCANS}"):
        preprocess.serving_image(repeated, 8)


def test_the_limits_hold_on_the_fast_path():
    data = encode(noisy(100, 100))
    with pytest.raises(UserError, match="more than the limit of 9999"):
        preprocess.serving_image(data, 8, max_pixels=9_999)
    with pytest.raises(UserError, match="scans"):
        preprocess.serving_image(progressive_scan_bomb(), 8)
    with pytest.raises(UserError, match="unsupported image format JPEG"):
        preprocess.serving_image(data, 8, formats=("PNG",))
    budget = preprocess.DecodeBudget()
    budget.stop("the client went away")
    with pytest.raises(preprocess.DecodeStopped):
        preprocess.serving_image(data, 8, budget=budget)


@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 300), height=st.integers(1, 300), shrink_to=st.integers(1, 200), orientation=st.integers(1, 8),
       quality=st.integers(20, 100), subsampling=st.sampled_from([0, 1, 2]))
def test_same_pixels_as_pillow_for_any_size_and_orientation(width, height, shrink_to, orientation, quality, subsampling):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(noisy(width, height, seed=width * height), exif=exif.tobytes(), quality=quality, subsampling=subsampling)
    assert_same_as_pillow(data, shrink_to)
