"""The generated demo dataset: layout, determinism, atomicity, reuse, refusal to touch other data."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import demo_data
from training.data import ImageFolder, eval_transform
from training.demo_data import CLASSES, generate_demo_data, image_rng, render
from training.errors import SpecError

SMALL = {"size": 3, "image_size": 16, "val_fraction": 0.34}  # 3 train and 1 val image per class


def files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_layout_and_summary(tmp_path):
    out = tmp_path / "demo"
    calls = []
    summary = generate_demo_data(out, **SMALL, seed=5, progress=lambda done, total: calls.append((done, total)))
    assert summary["reused"] is False and summary["path"] == str(out)
    assert (summary["train_per_class"], summary["val_per_class"], summary["images"]) == (3, 1, 40)
    assert calls[-1] == (40, 40) and len(calls) == 40
    assert (out / "labels.txt").read_text().split() == list(CLASSES)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta == {
        "name": "effx-demo-shapes",
        "generator_version": demo_data.GENERATOR_VERSION,
        "seed": 5,
        "image_size": 16,
        "train_per_class": 3,
        "val_per_class": 1,
        "classes": list(CLASSES),
    }
    assert sorted(path.name for path in (out / "train" / "star").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    with Image.open(out / "val" / "zigzag" / "00000.png") as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (16, 16))
    train, val = ImageFolder(out, "train", eval_transform(16, 1.0)), ImageFolder(out, "val", eval_transform(8))
    assert train.classes == val.classes == list(CLASSES)
    assert (len(train), len(val)) == (30, 10)
    assert train[0][0].shape == (3, 16, 16)


def test_same_arguments_give_byte_identical_files(tmp_path):
    generate_demo_data(tmp_path / "a", **SMALL)
    generate_demo_data(tmp_path / "b", **SMALL)
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_images_do_not_depend_on_generation_order(tmp_path):
    small = files(Path(generate_demo_data(tmp_path / "a", size=2, image_size=16, val_fraction=0.5)["path"]))
    large = files(Path(generate_demo_data(tmp_path / "b", size=4, image_size=16, val_fraction=0.5)["path"]))
    images = [name for name in small if name.endswith(".png")]
    assert len(images) == 30
    assert all(small[name] == large[name] for name in images)


def test_other_seeds_give_other_images(tmp_path):
    a = files(Path(generate_demo_data(tmp_path / "a", **SMALL, seed=0)["path"]))
    b = files(Path(generate_demo_data(tmp_path / "b", **SMALL, seed=1)["path"]))
    assert a["train/circle/00000.png"] != b["train/circle/00000.png"]
    assert a["train/circle/00000.png"] != a["val/circle/00000.png"]


def test_existing_identical_dataset_is_reused(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    generate_demo_data(out, **SMALL)
    before = files(out)

    def must_not_render(*args, **kwargs):
        raise AssertionError("the dataset was generated again")

    monkeypatch.setattr(demo_data, "render", must_not_render)
    summary = generate_demo_data(out, **SMALL)
    assert summary["reused"] is True and summary["images"] == 40
    assert files(out) == before


def test_failure_mid_generation_leaves_nothing(tmp_path, monkeypatch):
    real, count = demo_data.render, []

    def failing(*args, **kwargs):
        count.append(1)
        if len(count) == 7:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(demo_data, "render", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_demo_data(tmp_path / "demo", **SMALL)
    assert list(tmp_path.iterdir()) == []  # no partial output, no hidden staging folder


def test_interrupt_mid_generation_leaves_an_empty_target_as_it_was(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    out.mkdir()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_data, "render", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_data(out, **SMALL)
    assert [path.name for path in tmp_path.iterdir()] == ["demo"] and list(out.iterdir()) == []


def test_empty_directory_is_filled(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    assert generate_demo_data(out, **SMALL)["reused"] is False
    assert (out / "dataset.json").is_file()
    assert [path.name for path in tmp_path.iterdir()] == ["demo"]


def test_a_dataset_the_disk_cannot_hold_is_refused_before_any_image(tmp_path):
    with pytest.raises(SpecError, match=r"12,000,000 images of 1024 px would take up to 37,748.7 GB, more than the .* GB free"):
        generate_demo_data(tmp_path / "huge", size=1_000_000, image_size=1024)
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_file(tmp_path):
    out = tmp_path / "demo"
    out.write_text("precious")
    with pytest.raises(SpecError, match="not a directory"):
        generate_demo_data(out, **SMALL)
    assert out.read_text() == "precious"


def test_refuses_a_folder_of_other_data(tmp_path):
    out = tmp_path / "photos"
    (out / "train" / "cat").mkdir(parents=True)
    (out / "train" / "cat" / "1.png").write_bytes(b"precious")
    (out / "dataset.json").write_text('{"name": "something else"}')
    with pytest.raises(SpecError, match="not a demo dataset"):
        generate_demo_data(out, **SMALL)
    assert (out / "train" / "cat" / "1.png").read_bytes() == b"precious"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["photos"]


def test_the_current_folder_when_empty_is_written(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    summary = generate_demo_data(".", **SMALL)
    assert summary["path"] == str(tmp_path / "here") and (tmp_path / "here" / "train").is_dir()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["here"]  # no hidden folder left beside it


def test_refuses_a_demo_dataset_with_other_parameters(tmp_path):
    out = tmp_path / "demo"
    generate_demo_data(out, **SMALL)
    before = files(out)
    with pytest.raises(SpecError, match=r"other parameters: seed 0 \(wanted 9\)"):
        generate_demo_data(out, **SMALL, seed=9)
    with pytest.raises(SpecError, match=r"image_size 16 \(wanted 24\)"):
        generate_demo_data(out, **{**SMALL, "image_size": 24})
    assert files(out) == before


def test_refuses_an_incomplete_demo_dataset(tmp_path):
    out = tmp_path / "demo"
    generate_demo_data(out, **SMALL)
    (out / "train" / "ring" / "00001.png").unlink()
    with pytest.raises(SpecError, match="incomplete or modified"):
        generate_demo_data(out, **SMALL)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"size": 0}, "size"),
    ({"size": 2.5}, "size"),
    ({"seed": -1}, "seed"),
    ({"image_size": 4}, "image_size"),
    ({"image_size": 5000}, "image_size"),
    ({"val_fraction": 0.0}, "val_fraction"),
    ({"val_fraction": 1.5}, "val_fraction"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(SpecError, match=message):
        generate_demo_data(tmp_path / "demo", **{**SMALL, **kwargs})
    assert not (tmp_path / "demo").exists()


def test_colour_does_not_tell_the_class():
    """Nearest class mean of the average colour should be near chance (10 %), far from what shapes allow."""
    def features(split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
        rows, labels = [], []
        for class_index, name in enumerate(CLASSES):
            for index in range(count):
                pixels = np.asarray(render(name, image_rng(3, split, class_index, index), 16), dtype=np.float64)
                rows.append(np.concatenate([pixels.mean(axis=(0, 1)), pixels.std(axis=(0, 1))]))
                labels.append(class_index)
        return np.array(rows), np.array(labels)

    x_train, y_train = features("train", 40)
    x_val, y_val = features("val", 20)
    centroids = np.stack([x_train[y_train == c].mean(axis=0) for c in range(len(CLASSES))])
    predicted = np.argmin(((x_val[:, None, :] - centroids[None]) ** 2).sum(axis=2), axis=1)
    assert (predicted == y_val).mean() < 0.25


def test_ink_is_darker_than_the_background():
    """Fixed polarity (generator version 2): the background dominates every image and is light, the object is dark."""
    for class_index, name in enumerate(CLASSES):
        for index in range(10):
            luminance = np.asarray(render(name, image_rng(5, "train", class_index, index), 32).convert("L"), dtype=np.float64)
            median = np.median(luminance)
            assert median >= 110, (name, index, median)
            assert np.percentile(luminance, 1) <= median - 50, (name, index)
