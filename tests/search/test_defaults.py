"""The default candidate scale (from the data's image size and the hardware) and the run-time estimate."""

import pytest
from PIL import Image

from search import defaults
from search.defaults import default_scale, describe_estimate, estimate_seconds, seconds_per_image, typical_image_size
from training.arch.spec import spec_from_stage_strings
from training.demo_data import generate_demo_data
from training.errors import SpecError

TINY = spec_from_stage_strings(["r1_k3_s11_e1_i32_o16_se0.25"], width=0.25, resolution=16, num_classes=3, head_filters=32)


@pytest.mark.parametrize(("size", "hardware", "expected"), [
    (64, "cpu", (0.5, 0.34, 48)),  # the demo's scale
    (64, "gpu", (1.0, 1.0, 64)),
    (512, "tpu", (1.0, 1.0, 224)),  # never above B0's resolution
    (512, "cpu", (0.5, 0.34, 224)),
    (20, "cpu", (0.5, 0.34, 32)),  # never below 32 px
])
def test_the_scale_follows_the_images_and_the_hardware(size, hardware, expected):
    scale = default_scale(size, hardware)
    assert (scale.width, scale.depth, scale.resolution) == expected
    assert f"{size} px images" in scale.reason


def test_the_typical_size_is_read_from_the_training_images(tmp_path):
    data = generate_demo_data(tmp_path / "d", size=4, image_size=16)["path"]
    assert typical_image_size(data) == (16, False)
    Image.new("RGB", (40, 24)).save(tmp_path / "d" / "train" / "circle" / "extra.png")
    Image.new("RGB", (40, 24)).save(tmp_path / "d" / "train" / "square" / "extra.png")
    assert typical_image_size(data)[1] is True  # mixed sizes are said


def test_unreadable_images_only_are_an_error(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
        (tmp_path / "train" / name / "x.png").write_bytes(b"not a png")
    with pytest.raises(SpecError, match="none of the sampled"):
        typical_image_size(tmp_path)


def test_the_estimate_is_timed_steps_times_the_work(monkeypatch):
    assert seconds_per_image(TINY) > 0  # really timed on this machine
    monkeypatch.setattr(defaults, "seconds_per_image", lambda spec: 0.01)
    # 3 runs x 2 epochs x (100 training images + 2 x 30 validation images at a third of the cost)
    assert estimate_seconds(TINY, 100, 30, epochs=2, runs=3) == pytest.approx(3 * 2 * 0.01 * 120)


def test_a_large_input_is_timed_at_a_smaller_one_and_scaled_by_its_pixels(monkeypatch):
    import torch

    timed = []

    def stand_in(spec):
        timed.append(spec.resolution)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    monkeypatch.setattr("training.arch.model.build_model", stand_in)
    small, large = seconds_per_image(TINY.with_(resolution=64)), seconds_per_image(TINY.with_(resolution=4096))
    assert timed == [64, defaults.TIMED_RESOLUTION]  # never 4096 px: its steps alone would take minutes
    assert large > 100 * small  # 1,024 times the pixels of the 128 px steps (the stand-in's own time is small)


def test_a_long_estimate_says_how_to_shorten_it():
    assert describe_estimate(40) == "about 40 s"
    assert describe_estimate(600) == "about 10 min"
    assert describe_estimate(5 * 3600) == "about 5 h (long: a smaller scale, fewer epochs or --subset-stride shortens it)"
    assert describe_estimate(5 * 3600, "fewer --epochs").endswith("(long: fewer --epochs shortens it)")
