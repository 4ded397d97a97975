"""ImageFolder datasets, transforms and fingerprints (no torchvision)."""

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from effx_serve.core import preprocess
from training.data import (
    ImageFolder,
    class_names,
    dataset_fingerprint,
    eval_transform,
    load_image,
    random_crop_box,
    train_transform,
)
from training.errors import SpecError

COLOURS = {"apple": (220, 20, 20), "banana": (230, 220, 30), "cherry": (120, 0, 40)}


def write_image(path: Path, colour=(10, 20, 30), size=(12, 9), fmt="PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


def make_tree(root: Path, counts=None, splits=("train", "val")) -> Path:
    counts = counts or {"apple": 2, "banana": 3, "cherry": 1}
    for split in splits:
        for name, count in counts.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                write_image(root / split / name / f"{index}.png", COLOURS.get(name, (0, 0, 0)))
    return root


def test_image_folder_lists_classes_and_samples(tmp_path):
    root = make_tree(tmp_path / "data")
    dataset = ImageFolder(root, "train", eval_transform(8))
    assert dataset.classes == ["apple", "banana", "cherry"]
    assert len(dataset) == 6
    assert [label for _, label in dataset.samples] == [0, 0, 1, 1, 1, 2]
    assert dataset.samples[2] == (root / "train" / "banana" / "0.png", 1)
    x, label = dataset[5]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (3, 8, 8)
    assert label == 2 and isinstance(label, int)
    expected = (np.array(COLOURS["cherry"]) / 255 - np.array(preprocess.MEAN)) / np.array(preprocess.STD)
    assert torch.allclose(x[:, 4, 4], torch.tensor(expected, dtype=torch.float32), atol=1e-5)


def test_labels_file_defines_class_order(tmp_path):
    root = make_tree(tmp_path / "data")
    (root / "labels.txt").write_text("cherry\n\napple\nbanana\n")
    dataset = ImageFolder(root, "val", eval_transform(4))
    assert dataset.classes == ["cherry", "apple", "banana"]
    assert dataset.samples[0] == (root / "val" / "cherry" / "0.png", 0)
    assert dataset[1][1] == 1  # the first apple


def test_other_files_hidden_entries_and_sub_folders(tmp_path):
    root = make_tree(tmp_path / "data", {"a": 1, "b": 1})
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    write_image(root / "train" / "a" / ".hidden.png")
    write_image(root / "train" / ".cache" / "x.png")
    write_image(root / "train" / "b" / "more" / "deep.JPG", fmt="JPEG")
    write_image(root / "train" / "b" / "c.webp", fmt="WEBP")
    dataset = ImageFolder(root, "train", eval_transform(4))
    assert dataset.classes == ["a", "b"]
    names = [path.relative_to(root / "train").as_posix() for path, _ in dataset.samples]
    assert names == ["a/0.png", "b/0.png", "b/c.webp", "b/more/deep.JPG"]
    assert all(dataset[i][0].shape == (3, 4, 4) for i in range(len(dataset)))


def test_val_uses_the_train_class_order_without_labels(tmp_path):
    root = make_tree(tmp_path / "data")
    shutil.rmtree(root / "val" / "banana")
    with pytest.raises(SpecError, match=r"class 'banana' \(from train/\) has no directory .*val/banana"):
        ImageFolder(root, "val", eval_transform(4))


def test_split_without_train_uses_its_own_folders(tmp_path):
    root = make_tree(tmp_path / "data", splits=("val",))
    assert ImageFolder(root, "val", eval_transform(4)).classes == ["apple", "banana", "cherry"]


@pytest.mark.parametrize(("setup", "split", "message"), [
    (lambda root: None, "train", r"dataset root .*missing does not exist"),
    (lambda root: root.write_text("x"), "train", r"is not a directory"),
    (lambda root: make_tree(root, splits=("train",)), "val", r"split .*val does not exist \(found: train\)"),
    (lambda root: (root / "train").mkdir(parents=True), "train", r"has no class directories"),
    (lambda root: (root / "train" / "empty").mkdir(parents=True), "train", r"class directory .*empty has no images"),
])
def test_layout_errors(tmp_path, setup, split, message):
    root = tmp_path / "missing"
    setup(root)
    with pytest.raises(SpecError, match=message):
        ImageFolder(root, split, eval_transform(4))


def test_a_dataset_of_one_class_is_refused(tmp_path):
    root = make_tree(tmp_path / "data", counts={"apple": 3})
    with pytest.raises(SpecError, match=r"has 1 class \(apple\); a classifier needs at least two"):
        ImageFolder(root, "train", eval_transform(4))


def test_empty_class_directory_is_named(tmp_path):
    root = make_tree(tmp_path / "data")
    (root / "train" / "durian").mkdir()
    (root / "train" / "durian" / "readme.txt").write_text("no images here")
    with pytest.raises(SpecError, match=r"train/durian has no images"):
        ImageFolder(root, "train", eval_transform(4))


def test_labels_naming_a_missing_directory(tmp_path):
    root = make_tree(tmp_path / "data")
    (root / "labels.txt").write_text("apple\nbanana\ncherry\ndurian\n")
    with pytest.raises(SpecError, match=r"class 'durian' \(from labels.txt\) has no directory"):
        ImageFolder(root, "train", eval_transform(4))


def test_directory_missing_from_labels(tmp_path):
    root = make_tree(tmp_path / "data")
    (root / "labels.txt").write_text("apple\nbanana\n")
    with pytest.raises(SpecError, match=r"directory .*train/cherry is not a class in .*labels.txt"):
        ImageFolder(root, "train", eval_transform(4))


def test_extra_directory_in_val_without_labels(tmp_path):
    root = make_tree(tmp_path / "data")
    write_image(root / "val" / "durian" / "0.png")
    with pytest.raises(SpecError, match=r"val/durian is not a class in .*train"):
        ImageFolder(root, "val", eval_transform(4))


@pytest.mark.parametrize(("text", "message"), [("apple\napple\nbanana\n", "more than once"), ("\n \n", "names no classes")])
def test_bad_labels_file(tmp_path, text, message):
    root = make_tree(tmp_path / "data")
    (root / "labels.txt").write_text(text)
    with pytest.raises(SpecError, match=message):
        class_names(root)


def test_corrupt_image_is_named(tmp_path):
    root = make_tree(tmp_path / "data")
    bad = root / "train" / "banana" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    dataset = ImageFolder(root, "train", eval_transform(4))  # files are listed, not decoded, up front
    index = dataset.samples.index((bad, 1))
    with pytest.raises(SpecError, match=r"bad image .*banana/1.png"):
        dataset[index]
    with pytest.raises(SpecError, match=r"bad image .*1.png"):
        load_image(bad)


def test_unreadable_path_is_named(tmp_path):
    with pytest.raises(SpecError, match=r"cannot read image .*nothing.png"):
        load_image(tmp_path / "nothing.png")


# -- transforms -----------------------------------------------------------------------------------


def noise_image(width=40, height=30, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_eval_transform_is_the_serving_preprocessing():
    image = noise_image()
    x = eval_transform(16, 0.8)(image)
    assert x.dtype == torch.float32 and x.shape == (3, 16, 16)
    assert np.array_equal(x.numpy(), preprocess.to_input(image, 16, 0.8))


def test_train_transform_shapes_and_normalisation():
    x = train_transform(12)(Image.new("RGB", (50, 20), (255, 255, 255)))
    assert x.dtype == torch.float32 and x.shape == (3, 12, 12) and x.is_contiguous()
    white = (1 - np.array(preprocess.MEAN)) / np.array(preprocess.STD)
    assert torch.allclose(x, torch.tensor(white, dtype=torch.float32)[:, None, None], atol=1e-5)


def test_train_transform_without_randomness_matches_eval():
    # A full-image crop and no flip leaves only the shared resize and normalisation.
    image = noise_image(24, 24)
    x = train_transform(10, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)(image)
    assert np.array_equal(x.numpy(), preprocess.to_input(image, 10, crop_fraction=1.0))
    flipped = train_transform(10, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0)(image)
    assert torch.equal(flipped, torch.flip(x, dims=[2]))


def test_train_transform_is_reproducible_under_torch_seed():
    transform, image = train_transform(16), noise_image(64, 48)
    torch.manual_seed(123)
    first = [transform(image) for _ in range(4)]
    torch.manual_seed(123)
    second = [transform(image) for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[1])  # and it does vary from draw to draw


def test_data_loader_workers_are_reproducible(tmp_path):
    root = tmp_path / "data"
    for index in range(8):
        (root / "train" / f"c{index % 2}").mkdir(parents=True, exist_ok=True)
        noise_image(20, 20, seed=index).save(root / "train" / f"c{index % 2}" / f"{index}.png")
    dataset = ImageFolder(root, "train", train_transform(8))

    def epoch():
        torch.manual_seed(7)
        loader = DataLoader(dataset, batch_size=2, shuffle=True, num_workers=2)
        return [(x.clone(), y.clone()) for x, y in loader]

    first, second = epoch(), epoch()
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True))


def test_transforms_pickle_for_worker_processes():
    for transform in (train_transform(8), eval_transform(8, 0.9)):
        assert pickle.loads(pickle.dumps(transform)) == transform


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"resolution": 0}, "resolution"),
    ({"resolution": 10, "scale": (0.0, 1.0)}, "scale"),
    ({"resolution": 10, "scale": (0.5, 0.2)}, "scale"),
    ({"resolution": 10, "scale": (0.5, 1.5)}, "scale"),
    ({"resolution": 10, "ratio": (0.0, 1.0)}, "ratio"),
    ({"resolution": 10, "ratio": (2.0, 1.0)}, "ratio"),
    ({"resolution": 10, "hflip": 1.5}, "hflip"),
])
def test_train_transform_arguments(kwargs, message):
    with pytest.raises(SpecError, match=message):
        train_transform(**kwargs)


@pytest.mark.parametrize(("args", "message"), [((0,), "resolution"), ((8, 0.0), "crop_fraction"), ((8, 2.0), "crop_fraction")])
def test_eval_transform_arguments(args, message):
    with pytest.raises(SpecError, match=message):
        eval_transform(*args)


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 2000), height=st.integers(1, 2000), seed=st.integers(0, 2**16))
def test_random_crop_box_stays_inside(width, height, seed):
    torch.manual_seed(seed)
    left, top, right, bottom = random_crop_box((width, height), (0.08, 1.0), (3 / 4, 4 / 3))
    assert 0 <= left < right <= width and 0 <= top < bottom <= height


def test_random_crop_box_falls_back_to_a_centred_box():
    torch.manual_seed(0)
    assert random_crop_box((1000, 10), (0.9, 1.0), (3 / 4, 4 / 3)) == (493, 0, 506, 10)


# -- fingerprint ----------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_ignores_location_and_mtime(tmp_path):
    root = make_tree(tmp_path / "a")
    fingerprint = dataset_fingerprint(root)
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    copy = tmp_path / "b"
    shutil.copytree(root, copy)  # new mtimes, new location
    (copy / "train" / "apple" / "0.png").touch()
    assert dataset_fingerprint(copy) == fingerprint == dataset_fingerprint(root)


@pytest.mark.parametrize("change", [
    lambda root: write_image(root / "val" / "apple" / "new.png"),
    lambda root: (root / "train" / "apple" / "0.png").unlink(),
    lambda root: (root / "train" / "apple" / "0.png").rename(root / "train" / "apple" / "renamed.png"),
    lambda root: write_image(root / "train" / "apple" / "0.png", size=(30, 30)),
    lambda root: (root / "labels.txt").write_text("cherry\nbanana\napple\n"),
])
def test_fingerprint_changes_with_the_data(tmp_path, change):
    root = make_tree(tmp_path / "data")
    before = dataset_fingerprint(root)
    change(root)
    assert dataset_fingerprint(root) != before


def test_fingerprint_of_a_missing_root(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        dataset_fingerprint(tmp_path / "nothing")
