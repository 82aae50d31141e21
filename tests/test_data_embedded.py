"""No-download datasets: SyntheticShapes, Digits, scikit-image photos."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from PIL import Image

from mae.data import (
    PHOTO_NAMES,
    DataError,
    Digits,
    PhotoPatches,
    SyntheticShapes,
    pretrain_transform,
    sample_photos,
)
from mae.data import embedded


def arr(img):
    return np.asarray(img)


# ----------------------------------------------------------------- SyntheticShapes


def test_shapes_size_labels_and_classes():
    ds = SyntheticShapes(23, img_size=20, num_classes=10)
    assert len(ds) == 23
    img, label = ds[13]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (20, 20)
    assert label == 3
    assert [ds[i][1] for i in range(23)] == [i % 10 for i in range(23)] == ds.targets
    assert ds.classes[:6] == ["solid circle", "solid square", "solid triangle", "solid cross", "solid ring", "striped circle"]
    assert SyntheticShapes(3, num_classes=15).classes[-1] == "outline ring"
    assert ds[-1][1] == ds[22][1]
    with pytest.raises(IndexError):
        ds[23]


def test_shapes_deterministic_from_seed_and_index_only():
    a, b = SyntheticShapes(8, seed=5), SyntheticShapes(8, seed=5)
    assert np.array_equal(arr(a[7][0]), arr(b[7][0]))
    assert np.array_equal(arr(a[2][0]), arr(SyntheticShapes(100, seed=5)[2][0]))  # independent of n
    assert not np.array_equal(arr(a[7][0]), arr(SyntheticShapes(8, seed=6)[7][0]))
    assert not np.array_equal(arr(a[7][0]), arr(SyntheticShapes(8, seed=5, split="val")[7][0]))
    assert not np.array_equal(arr(a[0][0]), arr(a[1][0]))


def test_shapes_bad_arguments():
    with pytest.raises(DataError, match="num_classes"):
        SyntheticShapes(5, num_classes=16)
    with pytest.raises(DataError, match="n must be"):
        SyntheticShapes(0)
    with pytest.raises(DataError, match="seed"):
        SyntheticShapes(5, seed=-1)
    with pytest.raises(DataError, match="split"):
        SyntheticShapes(5, split="test")


def test_shapes_through_a_transform():
    out, label = SyntheticShapes(2, img_size=32, transform=pretrain_transform("crop_rand", 16))[1]
    assert out.shape == (3, 16, 16) and label == 1


def test_shapes_label_is_visible_in_pixels():
    # The shape covers a noticeable area of a different colour than the background:
    # the image is far from its own blurred background (not an empty/noise image).
    for i in range(10):
        x = arr(SyntheticShapes(10, img_size=32)[i][0]).astype(float)
        bg = np.median(x.reshape(-1, 3), axis=0)
        assert (np.abs(x - bg).sum(-1) > 100).mean() > 0.03


# ----------------------------------------------------------------- Digits


def test_digits_split_sizes_stratified_and_deterministic():
    train, val = Digits("train"), Digits("val")
    assert (len(train), len(val)) == (1437, 360)
    counts = np.bincount(val.targets, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of ~180 per class
    img, label = train[0]
    assert img.size == (32, 32) and img.mode == "RGB" and 0 <= label < 10
    assert np.array_equal(arr(Digits("val")[5][0]), arr(val[5][0]))
    assert Digits("val", seed=1).targets != val.targets
    with pytest.raises(DataError, match="split"):
        Digits("test")


def test_digits_pixels_match_sklearn():
    from sklearn.datasets import load_digits

    data = load_digits()
    ds = Digits("train", img_size=8)
    img, label = ds[0]
    x = arr(img)
    assert np.array_equal(x[..., 0], x[..., 2])  # grey replicated
    matches = [
        i for i in range(len(data.target))
        if data.target[i] == label and np.array_equal(np.round(data.images[i] * 255 / 16), x[..., 0])
    ]
    assert matches, "the 8x8 image must be a load_digits image scaled 0..16 -> 0..255"


# ----------------------------------------------------------------- photos


def test_sample_photos_work_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("sample_photos tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    embedded._load_photo.cache_clear()
    photos = sample_photos(48)
    assert len(photos) == len(PHOTO_NAMES) >= 10
    assert all(p.size == (48, 48) and p.mode == "RGB" for p in photos)
    assert len({arr(p).tobytes() for p in photos}) == len(photos)
    with pytest.raises(DataError, match="unknown photo"):
        sample_photos(16, names=["eagle"])


def test_photo_patches():
    ds = PhotoPatches(10, img_size=24, seed=3)
    img, label = ds[4]
    assert img.size == (24, 24) and label == 0 and ds.labelled is False
    assert np.array_equal(arr(img), arr(PhotoPatches(10, img_size=24, seed=3)[4][0]))
    assert not np.array_equal(arr(img), arr(PhotoPatches(10, img_size=24, seed=4)[4][0]))
    assert arr(img).std() > 1.0  # a real crop, not a flat image
