"""Image bytes -> model input: decoding limits, colour modes, crops, normalisation."""

import io
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from effx_serve.core import preprocess
from effx_serve.core.errors import UserError
from effx_serve.core.preprocess import DEFAULT_CROP_FRACTION, MEAN, STD, decode_image, resize_and_center_crop, to_input, to_rgb
from loadtest.attacks import png_pixel_bomb, progressive_scan_bomb


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pixel(image: Image.Image, xy=(0, 0)) -> tuple[int, int, int]:
    assert image.mode == "RGB"
    return image.getpixel(xy)


def test_constants():
    assert MEAN == (0.485, 0.456, 0.406)
    assert STD == (0.229, 0.224, 0.225)
    assert DEFAULT_CROP_FRACTION == 0.875


# -- decode_image ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_decode_round_trips_allowed_formats(fmt):
    image = Image.new("RGB", (12, 7), (200, 30, 40))
    decoded = decode_image(encode(image, fmt))
    assert decoded.size == (12, 7)
    assert to_rgb(decoded).size == (12, 7)


@pytest.mark.parametrize("data", [b"", bytearray()])
def test_empty_data_is_a_user_error(data):
    with pytest.raises(UserError, match="empty"):
        decode_image(data)


@pytest.mark.parametrize("data", [b"not an image at all", bytes(range(256)) * 4, b"\x89PNG\r\n\x1a\n" + b"\0" * 30])
def test_garbage_is_a_user_error(data):
    with pytest.raises(UserError, match="image"):
        decode_image(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_a_user_error(fmt):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encode(noise, fmt)
    with pytest.raises(UserError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def test_unsupported_format_is_named_with_the_allowed_ones():
    data = encode(Image.new("RGB", (4, 4)), "GIF")
    with pytest.raises(UserError, match=r"unsupported image format GIF; allowed formats: JPEG, PNG"):
        decode_image(data, formats=("JPEG", "png"))


def test_pixel_limit_is_checked_from_the_header_before_decoding(monkeypatch):
    data = encode(Image.new("L", (1000, 1000)), "PNG")

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(UserError, match=r"1000x1000 = 1000000 pixels, more than the limit of 999999"):
        decode_image(data, max_pixels=999_999)


def test_pixel_limit_allows_the_exact_count():
    data = encode(Image.new("L", (100, 10)), "PNG")
    assert decode_image(data, max_pixels=1000).size == (100, 10)


def test_pillow_decompression_bomb_error_becomes_a_user_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = encode(Image.new("L", (100, 100)), "PNG")  # more than twice Pillow's limit: Pillow raises
    with pytest.raises(UserError, match="too large"):
        decode_image(data, max_pixels=1000)


def test_pillow_decompression_bomb_warning_becomes_a_user_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = encode(Image.new("L", (40, 40)), "PNG")  # between Pillow's limit and twice it: Pillow warns
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(UserError, match="too large"):
            decode_image(data, max_pixels=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(UserError, match="more than the limit"):
            decode_image(data, max_pixels=1000)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_pixels": 0}, "positive integer"),
    ({"max_pixels": 2.5}, "positive integer"),
    ({"max_pixels": 10**12}, "above Pillow's limit"),
    ({"formats": ()}, "no image formats"),
])
def test_bad_decode_arguments(kwargs, message):
    with pytest.raises(UserError, match=message):
        decode_image(encode(Image.new("RGB", (2, 2)), "PNG"), **kwargs)


def exif_jpeg(orientation: int) -> bytes:
    """A 40x20 JPEG, left half red and right half blue, stored with an EXIF Orientation tag."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif.tobytes(), quality=95)


def test_exif_orientation_is_applied():
    upright = to_rgb(decode_image(exif_jpeg(6)))  # 6: the camera was turned; display rotated 90 degrees clockwise
    assert upright.size == (20, 40)
    top, bottom = np.asarray(upright)[5, 10], np.asarray(upright)[35, 10]
    assert top[0] > 200 and top[2] < 60  # the stored left (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60
    assert decode_image(exif_jpeg(6)).getexif().get(0x0112) in (None, 1)


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGB"), ("WEBP", "RGB"), ("JPEG", "CMYK")])
def test_malformed_exif_is_named_not_a_crash(fmt, mode):
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "Cam"  # Orientation, and Make (ASCII) ...
    stored = exif.tobytes()
    order = "big" if b"MM" in stored[:8] else "little"  # after the Exif\0\0 prefix
    make, width = (0x010F).to_bytes(2, order) + (2).to_bytes(2, order), (0x0100).to_bytes(2, order) + (2).to_bytes(2, order)
    broken = stored.replace(make, width)  # ... retagged as ImageWidth, a number, still holding text: Pillow cannot rewrite it
    assert broken != stored
    with pytest.raises(UserError, match=f"the {fmt} image's EXIF metadata is malformed"):
        decode_image(encode(Image.new(mode, (16, 8)), fmt, exif=broken))


def test_exif_orientation_one_changes_nothing():
    assert decode_image(exif_jpeg(1)).size == (40, 20)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert pixel(to_rgb(decode_image(buffer.getvalue()))) == (255, 0, 0)


# -- to_rgb ---------------------------------------------------------------------------------------


def test_rgb_is_returned_as_is():
    image = Image.new("RGB", (3, 3), (1, 2, 3))
    assert to_rgb(image) is image


@pytest.mark.parametrize(("mode", "value", "expected"), [
    ("1", 1, (255, 255, 255)),
    ("1", 0, (0, 0, 0)),
    ("L", 77, (77, 77, 77)),
    ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
    ("CMYK", (0, 0, 0, 255), (0, 0, 0)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
    ("YCbCr", (255, 128, 128), (255, 255, 255)),
])
def test_opaque_modes(mode, value, expected):
    rgb = to_rgb(Image.new(mode, (4, 3), value))
    assert rgb.mode == "RGB" and rgb.size == (4, 3)
    assert pixel(rgb) == pytest.approx(expected, abs=1)


def test_palette_without_transparency():
    image = Image.new("RGB", (4, 4), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert not image.has_transparency_data
    assert pixel(to_rgb(image)) == (10, 200, 30)


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (2, 1), 0)
    image.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0  # palette index 0 (black) is transparent
    data = decode_image(encode(image, "PNG"))
    assert data.mode == "P" and data.has_transparency_data
    rgb = to_rgb(data)
    assert pixel(rgb, (0, 0)) == (255, 255, 255)
    assert pixel(rgb, (1, 0)) == (200, 10, 10)


@pytest.mark.parametrize(("mode", "value", "expected"), [
    ("RGBA", (0, 0, 0, 0), (255, 255, 255)),  # fully transparent black shows as white
    ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
    ("RGBA", (0, 0, 0, 128), (127, 127, 127)),
    ("LA", (0, 0), (255, 255, 255)),
    ("LA", (40, 255), (40, 40, 40)),
])
def test_alpha_is_composited_on_white(mode, value, expected):
    assert pixel(to_rgb(Image.new(mode, (2, 2), value))) == pytest.approx(expected, abs=1)


def test_rgb_with_a_transparent_colour_key():
    image = Image.new("RGB", (2, 1), (0, 0, 0))
    image.putpixel((1, 0), (9, 9, 9))
    decoded = decode_image(encode(image, "PNG", transparency=(0, 0, 0)))
    rgb = to_rgb(decoded)
    assert pixel(rgb, (0, 0)) == (255, 255, 255)
    assert pixel(rgb, (1, 0)) == (9, 9, 9)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_sixteen_bit_grey_is_scaled_by_bit_depth_not_clipped(mode):
    values = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16)
    image = Image.frombytes(mode, (4, 1), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    assert image.mode == mode
    rgb = np.asarray(to_rgb(image))
    assert rgb[0, :, 0].tolist() == [0, 100, 128, 255]
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_sixteen_bit_png_round_trip():
    values = np.array([[1000, 65535]], dtype=np.uint16)
    decoded = decode_image(encode(Image.fromarray(values), "PNG"))
    assert decoded.mode.startswith("I")
    assert np.asarray(to_rgb(decoded))[0, :, 0].tolist() == [4, 255]


@pytest.mark.parametrize(("values", "expected"), [
    ([0, 257 * 100, 65535], [0, 100, 255]),  # values that fit 16 bits: a 16-bit image in a 32-bit container
    ([0, 2**30, 2**31 - 1], [0, 128, 255]),  # larger: the full non-negative 32-bit range
    ([-(2**31), 0, 2**31 - 1], [0, 128, 255]),  # negative: the full signed range
])
def test_thirty_two_bit_grey(values, expected):
    image = Image.fromarray(np.array([values], dtype=np.int32), mode="I")
    assert image.mode == "I"
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == expected


@pytest.mark.parametrize(("values", "expected"), [
    ([0.0, 0.5, 1.0], [0, 128, 255]),  # 0..1: normalised intensity
    ([0.0, 100.0, 300.0], [0, 100, 255]),  # otherwise 0..255, clipped
    ([float("nan"), -5.0, 2.0], [0, 0, 2]),
])
def test_float_grey(values, expected):
    image = Image.fromarray(np.array([values], dtype=np.float32), mode="F")
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == expected


# -- resize and crop ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (1, 10000), (10000, 1), (3, 7), (640, 480), (7, 3), (2, 2)])
@pytest.mark.parametrize("resolution", [1, 5, 32])
def test_crop_is_always_resolution_square(size, resolution):
    image = Image.new("RGB", size, (5, 6, 7))
    out = resize_and_center_crop(image, resolution)
    assert out.size == (resolution, resolution)
    assert pixel(out) == (5, 6, 7)


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    resolution=st.integers(1, 48),
    crop_fraction=st.floats(0.05, 1.0),
)
def test_any_image_gives_a_normalised_square_input(width, height, resolution, crop_fraction):
    x = to_input(Image.new("RGB", (width, height), (255, 255, 255)), resolution, crop_fraction)
    assert x.shape == (3, resolution, resolution) and x.dtype == np.float32
    assert np.allclose(x, ((1 - np.array(MEAN)) / np.array(STD))[:, None, None], atol=1e-5)


def test_crop_takes_the_centre():
    image = Image.new("RGB", (300, 100), (0, 0, 255))
    image.paste((255, 0, 0), (100, 0, 200, 100))  # the centre square is red
    out = np.asarray(resize_and_center_crop(image, 50, crop_fraction=1.0))
    assert (out[:, 2:-2, 0] > 250).all() and (out[:, 2:-2, 2] < 5).all()


def test_crop_fraction_keeps_that_fraction_of_the_shorter_side():
    # 224 / 0.875 = 256: the crop covers 224/256 of the shorter side, so a border of 1/16 on each side is cut.
    image = Image.new("RGB", (256, 256), (0, 0, 255))
    image.paste((255, 0, 0), (16, 16, 240, 240))
    out = np.asarray(resize_and_center_crop(image, 224))
    assert (out[..., 0] > 250).all()


@pytest.mark.parametrize("resolution", [0, -3, 2.5, True, "224", preprocess.MAX_RESOLUTION + 1])
def test_bad_resolution(resolution):
    with pytest.raises(UserError, match="resolution"):
        resize_and_center_crop(Image.new("RGB", (4, 4)), resolution)
    with pytest.raises(UserError, match="resolution"):
        to_input(Image.new("RGB", (4, 4)), resolution)


@pytest.mark.parametrize("crop_fraction", [0, 0.0, -0.5, 1.0001, float("nan"), float("inf"), "0.8", None])
def test_bad_crop_fraction(crop_fraction):
    with pytest.raises(UserError, match="crop_fraction"):
        to_input(Image.new("RGB", (4, 4)), 8, crop_fraction)


def test_crop_fraction_of_one_is_allowed():
    assert to_input(Image.new("RGB", (4, 4)), 4, 1).shape == (3, 4, 4)


# -- normalisation and batches --------------------------------------------------------------------


def test_to_input_normalises_per_channel():
    image = Image.new("RGB", (10, 10), (0, 128, 255))
    x = to_input(image, 6)
    expected = (np.array([0, 128, 255]) / 255.0 - np.array(MEAN)) / np.array(STD)
    assert x.flags.c_contiguous
    for channel in range(3):
        assert np.allclose(x[channel], expected[channel], atol=1e-5)


def test_normalisation_gives_the_formulas_float32_for_every_value_of_every_channel():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    pixels = np.stack([values, values[::-1], values.T], axis=-1)
    formula = (pixels.astype(np.float32) * preprocess._SCALE - preprocess._OFFSET).transpose(2, 0, 1)
    x = preprocess.normalize(Image.fromarray(pixels, "RGB"))
    assert x.dtype == np.float32 and x.flags.c_contiguous
    assert x.tobytes() == np.ascontiguousarray(formula, dtype=np.float32).tobytes()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "I", "F", "1", "LA"])
def test_to_input_accepts_every_mode(mode):
    x = to_input(Image.new(mode, (9, 5)), 4)
    assert x.shape == (3, 4, 4) and x.dtype == np.float32 and np.isfinite(x).all()


def test_serving_input_decodes_large_jpegs_at_a_smaller_scale_with_nearly_the_same_result():
    from effx_serve.core import preprocess
    from effx_serve.core.photos import synthetic_photo

    data = synthetic_photo(640, 480, "JPEG", quality=90)
    full = preprocess.to_input(preprocess.decode_image(data), 64)
    scaled = preprocess.serving_input(data, 64)
    assert scaled.shape == full.shape == (3, 64, 64)
    # normalised units (about 4.4 per full 0..255 range): a resampling difference, not another picture
    assert float(np.mean(np.abs(scaled - full))) < 0.03
    with pytest.raises(UserError, match="at least 800"):
        preprocess.serving_input(data, 64, min_side=800)


def _encoded(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(("mode", "size", "fmt", "options"), [
    ("RGB", (640, 480), "JPEG", {}),
    ("RGB", (33, 1201), "JPEG", {"progressive": True, "quality": 70}),
    ("L", (17, 5), "JPEG", {"exif": b"Exif\x00\x00" + b"\x00" * 64}),
    ("CMYK", (100, 60), "JPEG", {}),
    ("RGBA", (7, 300), "PNG", {}),
    ("I;16", (256, 3), "PNG", {}),
    ("RGB", (40, 30), "WEBP", {}),
    ("RGB", (12, 9), "GIF", {}),
])
def test_peek_reads_format_and_pixels_from_the_header_as_pillow_does(mode, size, fmt, options):
    data = _encoded(Image.new(mode, size), fmt, **options)
    assert preprocess.peek(data) == (fmt, size[0] * size[1])


@pytest.mark.parametrize("data", [b"", b"\xff\xd8", b"\xff\xd8\xff\xe0\x00", b"\xff\xd8" + b"\xff\xe1\xff\xff" * 40, b"\x89PNG\r\n\x1a\n\x00",
                                  b"\xff\xd8\x00\x00\xff\xc0", b"not an image at all"])
def test_peek_of_a_broken_or_truncated_header_is_unknown_never_an_error(data):
    assert preprocess.peek(data) == (None, 0)


@given(st.binary(max_size=64))
@settings(max_examples=200, deadline=None)
def test_peek_never_raises(data):
    image_format, pixels = preprocess.peek(b"\xff\xd8\xff" + data)
    assert image_format in (None, "JPEG") and pixels >= 0


# -- the cost of decoding: scan count, the decode budget ----------------------------------------------------------


def test_sixteen_bit_grey_takes_the_exact_float_formula_for_every_value():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = np.clip(np.rint(values.astype(np.float64) * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(values)))[..., 0], expected)


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding():
    normal = progressive_scan_bomb(64, 48, repeats=0)
    assert decode_image(normal).size == (64, 48)
    bomb = progressive_scan_bomb(64, 48, repeats=preprocess.MAX_JPEG_SCANS)
    with pytest.raises(UserError, match=rf"\d+ scans, more than the limit of {preprocess.MAX_JPEG_SCANS}"):
        decode_image(bomb)


def test_the_decode_budget_stops_an_image_whose_decoding_costs_more_cpu():
    bomb = png_pixel_bomb(2000, 2000)  # 4 MP of 16-bit grey in a few kilobytes
    budget = preprocess.DecodeBudget(cpu_ms=1.0)
    with pytest.raises(UserError, match="more than 1 ms of CPU"):
        preprocess.serving_image(bomb, 32, budget=budget)
    assert preprocess.serving_image(bomb, 32, budget=preprocess.DecodeBudget(cpu_ms=60_000)).size == (2000, 2000)


def test_the_decode_budget_is_shared_by_a_requests_images():
    budget = preprocess.DecodeBudget(cpu_ms=50.0)
    budget.charge(50.0)  # the request's earlier images used it all
    with pytest.raises(UserError, match="more than 50 ms of CPU"):
        preprocess.serving_image(png_pixel_bomb(500, 500), 32, budget=budget)


@pytest.mark.parametrize(("budget", "reason"), [(preprocess.DecodeBudget(), "gone"), (preprocess.DecodeBudget(deadline=0.0), "deadline")])
def test_a_stopped_or_late_decode_stops_at_its_next_block_not_the_images_fault(budget, reason):
    if reason == "gone":
        budget.stop("gone")
    with pytest.raises(preprocess.DecodeStopped) as stopped:
        preprocess.serving_image(png_pixel_bomb(500, 500), 32, budget=budget)
    assert stopped.value.reason == reason and not isinstance(stopped.value, UserError)
