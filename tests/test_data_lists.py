"""ListDataset: iNaturalist json and Places text lists (Table 6), and every bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from mae.data import DataError, ListDataset, UnreadableImageWarning


def write_image(path, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (5, 5), (value, 0, 0)).save(path)


def inat_json(tmp_path, images=None, annotations=None, categories=None, name="train2018.json"):
    data = {
        "images": images if images is not None else [
            {"id": 10, "file_name": "train/Aves/a.jpg"},
            {"id": 11, "file_name": "train/Plantae/b.jpg"},
            {"id": 12, "file_name": "train/Aves/c.jpg"},
        ],
        "annotations": annotations if annotations is not None else [
            {"id": 1, "image_id": 10, "category_id": 9},
            {"id": 2, "image_id": 11, "category_id": 2},
            {"id": 3, "image_id": 12, "category_id": 5},
        ],
        "categories": categories if categories is not None else [
            {"id": 5, "name": "heron"}, {"id": 2, "name": "oak"}, {"id": 9, "name": "owl"},
        ],
    }
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def inat_root(tmp_path):
    root = tmp_path / "images"
    for i, rel in enumerate(["train/Aves/a.jpg", "train/Plantae/b.jpg", "train/Aves/c.jpg"]):
        write_image(str(root / rel), value=10 * i)
    return root


def places_root(tmp_path, names=("a/abbey/1.jpg", "a/abbey/2.jpg", "b/bar/1.jpg")):
    root = tmp_path / "places"
    for i, rel in enumerate(names):
        write_image(str(root / rel), value=10 * i)
    return root


# ----------------------------------------------------------------- iNaturalist


def test_inat_labels_follow_sorted_category_ids(tmp_path):
    ds = ListDataset(inat_root(tmp_path), inat_json(tmp_path), fmt="inat")
    assert ds.classes == ["oak", "heron", "owl"]  # ids 2, 5, 9
    assert ds.num_classes == 3
    assert [(os.path.basename(p), y) for p, y in ds.samples] == [("a.jpg", 2), ("b.jpg", 0), ("c.jpg", 1)]
    img, label = ds[1]
    assert img.mode == "RGB" and label == 0 and np.asarray(img)[0, 0, 0] == 10


def test_inat_errors(tmp_path):
    root = inat_root(tmp_path)
    with pytest.raises(DataError, match="list file not found.*missing.json"):
        ListDataset(root, tmp_path / "missing.json", fmt="inat")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [\n  {"id": 1,,}]}')
    with pytest.raises(DataError, match=r"bad.json:2: invalid json"):
        ListDataset(root, bad, fmt="inat")
    with pytest.raises(DataError, match="category_id 7 out of range"):
        ListDataset(root, inat_json(tmp_path, annotations=[{"image_id": 10, "category_id": 7}]), fmt="inat")
    with pytest.raises(DataError, match="image_id 99 is not in 'images'"):
        ListDataset(root, inat_json(tmp_path, annotations=[{"image_id": 99, "category_id": 5}]), fmt="inat")
    with pytest.raises(DataError, match="2 image\\(s\\) have no annotation"):
        ListDataset(root, inat_json(tmp_path, annotations=[{"image_id": 10, "category_id": 5}]), fmt="inat")
    with pytest.raises(DataError, match="missing or non-list key 'categories'"):
        p = tmp_path / "nocat.json"
        p.write_text(json.dumps({"images": [], "annotations": []}))
        ListDataset(root, p, fmt="inat")
    with pytest.raises(DataError, match="images\\[0\\] has no 'file_name'"):
        ListDataset(root, inat_json(tmp_path, images=[{"id": 10}]), fmt="inat")
    with pytest.raises(DataError, match="num_classes=4 but .* defines 3 classes"):
        ListDataset(root, inat_json(tmp_path), fmt="inat", num_classes=4)


def test_inat_missing_images_reported_at_construction(tmp_path):
    root = inat_root(tmp_path)
    os.remove(root / "train/Aves/a.jpg")
    os.remove(root / "train/Aves/c.jpg")
    with pytest.raises(DataError, match=r"2 of 3 listed images are missing .*a.jpg, .*c.jpg"):
        ListDataset(root, inat_json(tmp_path), fmt="inat")
    ds = ListDataset(root, inat_json(tmp_path), fmt="inat", check_files=False)  # opt-out
    assert len(ds) == 3


# ----------------------------------------------------------------- Places


def test_places_list_with_class_index(tmp_path):
    root = places_root(tmp_path)
    lst = tmp_path / "train.txt"
    lst.write_text("/a/abbey/1.jpg 0\na/abbey/2.jpg 0\n\nb/bar/1.jpg 1\n")
    idx = tmp_path / "categories.txt"
    idx.write_text("/b/bar 1\n/a/abbey 0\n")
    ds = ListDataset(root, lst, fmt="places", class_index=idx)
    assert ds.classes == ["/a/abbey", "/b/bar"] and ds.num_classes == 2
    assert [os.path.relpath(p, root) for p, _ in ds.samples] == ["a/abbey/1.jpg", "a/abbey/2.jpg", "b/bar/1.jpg"]
    assert ds.targets == [0, 0, 1]
    assert ds[2][1] == 1


def test_places_without_index_and_name_only_index(tmp_path):
    root = places_root(tmp_path)
    lst = tmp_path / "train.txt"
    lst.write_text("a/abbey/1.jpg 0\nb/bar/1.jpg 4\n")
    assert ListDataset(root, lst, fmt="places").num_classes == 5
    assert ListDataset(root, lst, fmt="places", num_classes=7).num_classes == 7
    idx = tmp_path / "names.txt"
    idx.write_text("abbey\nairport\nalley\nbar\nbeach\n")
    assert ListDataset(root, lst, fmt="places", class_index=idx).classes[4] == "beach"


@pytest.mark.parametrize(
    "text, message",
    [
        ("a/abbey/1.jpg 0\nb/bar/1.jpg\n", r"train.txt:2: expected '<relative/path.jpg> <integer label>'"),
        ("a/abbey/1.jpg 0\n\nb/bar/1.jpg x\n", r"train.txt:3: expected"),
        ("a/abbey/1.jpg -1\n", r"train.txt:1: negative label -1"),
        ("\n\n", "has no entries"),
    ],
)
def test_places_malformed_lines(tmp_path, text, message):
    lst = tmp_path / "train.txt"
    lst.write_text(text)
    with pytest.raises(DataError, match=message):
        ListDataset(places_root(tmp_path), lst, fmt="places")


def test_places_label_out_of_range(tmp_path):
    root = places_root(tmp_path)
    lst = tmp_path / "train.txt"
    lst.write_text("a/abbey/1.jpg 0\nb/bar/1.jpg 2\n")
    idx = tmp_path / "categories.txt"
    idx.write_text("abbey 0\nbar 1\n")
    with pytest.raises(DataError, match=r"train.txt:2: label 2 out of range for the 2 classes of .*categories.txt"):
        ListDataset(root, lst, fmt="places", class_index=idx)
    with pytest.raises(DataError, match=r"train.txt:2: label 2 out of range for num_classes=2"):
        ListDataset(root, lst, fmt="places", num_classes=2)


def test_places_bad_class_index(tmp_path):
    root = places_root(tmp_path)
    lst = tmp_path / "train.txt"
    lst.write_text("a/abbey/1.jpg 0\n")
    idx = tmp_path / "categories.txt"
    idx.write_text("abbey 0\nbar 0\n")
    with pytest.raises(DataError, match=r"categories.txt:2: class index 0 given twice"):
        ListDataset(root, lst, fmt="places", class_index=idx)
    idx.write_text("abbey 0\nbar 5\n")
    with pytest.raises(DataError, match=r"categories.txt:2: class index 5 out of range"):
        ListDataset(root, lst, fmt="places", class_index=idx)
    with pytest.raises(DataError, match="class-index file not found"):
        ListDataset(root, lst, fmt="places", class_index=tmp_path / "nope.txt")


def test_places_missing_images_and_bad_arguments(tmp_path):
    root = places_root(tmp_path)
    lst = tmp_path / "train.txt"
    lst.write_text("".join(f"x/{i}.jpg 0\n" for i in range(8)) + "a/abbey/1.jpg 0\n")
    with pytest.raises(DataError, match=r"8 of 9 listed images are missing under .*x/0.jpg.*x/4.jpg$"):
        ListDataset(root, lst, fmt="places")
    with pytest.raises(DataError, match="list file not found"):
        ListDataset(root, tmp_path / "nope.txt", fmt="places")
    with pytest.raises(DataError, match="image root is not a directory"):
        ListDataset(tmp_path / "nope", lst, fmt="places")
    with pytest.raises(DataError, match="unknown list format 'csv'"):
        ListDataset(root, lst, fmt="csv")


def test_list_dataset_skips_corrupt_images_like_folders(tmp_path):
    root = places_root(tmp_path)
    (root / "a/abbey/2.jpg").write_bytes(b"garbage")
    lst = tmp_path / "train.txt"
    lst.write_text("a/abbey/1.jpg 0\na/abbey/2.jpg 0\nb/bar/1.jpg 1\n")
    ds = ListDataset(root, lst, fmt="places")
    with pytest.warns(UnreadableImageWarning, match="abbey/2.jpg"):
        assert ds[1][1] == 1
    assert ds.num_skipped == 1
