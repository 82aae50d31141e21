"""build_dataset specs and num_classes_of."""

from __future__ import annotations

import os

import pytest
from PIL import Image
from torch.utils.data import Subset

from mae.data import (
    DataError,
    Digits,
    PhotoPatches,
    SafeImageFolder,
    SeededDataset,
    SyntheticShapes,
    build_dataset,
    num_classes_of,
    pretrain_transform,
)


def write_image(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)


def test_default_is_synthetic_shapes():
    for spec in (None, "embedded"):
        train, val = build_dataset(spec), build_dataset(spec, split="val")
        assert isinstance(train, SyntheticShapes) and (len(train), len(val)) == (5000, 1000)
        assert train.split == "train" and val.split == "val"
        assert num_classes_of(train) == 10
    ds = build_dataset(None, img_size=24, transform=pretrain_transform("crop_rand", 16))
    assert ds.img_size == 24 and ds[0][0].shape == (3, 16, 16)


def test_named_specs():
    assert (len(build_dataset("synthetic:100")), len(build_dataset("synthetic:100", split="val"))) == (100, 20)
    assert len(build_dataset("synthetic")) == 5000
    digits = build_dataset("digits", split="val", img_size=16)
    assert isinstance(digits, Digits) and len(digits) == 360 and digits[0][0].size == (16, 16)
    assert num_classes_of(digits) == 10
    photos = build_dataset("photos:10", seed=2)
    assert isinstance(photos, PhotoPatches) and len(photos) == 10 and photos.seed == 2
    assert len(build_dataset("photos:10", split="val")) == 2
    with pytest.raises(DataError, match="unlabelled"):
        num_classes_of(photos)


@pytest.mark.parametrize("spec", ["synthetic:0", "synthetic:x", "photos:", "imagenet", "/no/such/dir"])
def test_bad_specs(spec):
    with pytest.raises(DataError, match="spec|neither a known name"):
        build_dataset(spec)


def test_bad_split():
    with pytest.raises(DataError, match="unknown split 'test'"):
        build_dataset(None, split="test")


def test_imagenet_layout_with_train_and_val(tmp_path):
    write_image(str(tmp_path / "train" / "n01" / "a.JPEG"))
    write_image(str(tmp_path / "train" / "n02" / "b.JPEG"))
    write_image(str(tmp_path / "val" / "n01" / "c.JPEG"))
    write_image(str(tmp_path / "val" / "n02" / "d.JPEG"))
    train, val = build_dataset(str(tmp_path)), build_dataset(tmp_path, split="val")
    assert isinstance(train, SafeImageFolder) and train.root == str(tmp_path / "train")
    assert val.root == str(tmp_path / "val") and num_classes_of(val) == 2


def test_plain_class_folder_is_train_only(tmp_path):
    write_image(str(tmp_path / "cat" / "a.png"))
    assert len(build_dataset(str(tmp_path))) == 1
    with pytest.raises(DataError, match="no val/ sub-folder"):
        build_dataset(str(tmp_path), split="val")
    only_val = tmp_path / "only_val"
    write_image(str(only_val / "val" / "cat" / "a.png"))
    with pytest.raises(DataError, match="no train/ sub-folder"):
        build_dataset(str(only_val))
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        build_dataset(str(f))


def test_folder_named_like_a_spec_prefix(tmp_path):
    folder = tmp_path / "synthetic_faces"
    write_image(str(folder / "a" / "1.png"))
    assert isinstance(build_dataset(str(folder)), SafeImageFolder)


def test_num_classes_through_wrappers():
    base = SyntheticShapes(20, num_classes=7)
    assert num_classes_of(SeededDataset(base, seed=0)) == 7
    assert num_classes_of(Subset(SeededDataset(base), [0, 1])) == 7
    with pytest.raises(DataError, match="unlabelled"):
        num_classes_of(SeededDataset(PhotoPatches(2)))
    with pytest.raises(DataError, match="cannot tell"):
        num_classes_of(Subset(list(range(3)), [0]))
