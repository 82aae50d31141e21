"""SafeImageFolder: layout errors at construction, corrupt images skipped and counted."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mae.data import DataError, SafeImageFolder, UnreadableImageWarning


def write_image(path, color=(255, 0, 0), size=(6, 4), fmt=None, mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path, format=fmt)


def write_corrupt(path, kind="garbage"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "garbage":
        data = b"this is not an image"
    else:  # a truncated JPEG: valid header, missing data
        buf = io.BytesIO()
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
        data = buf.getvalue()[: len(buf.getvalue()) // 2]
    with open(path, "wb") as f:
        f.write(data)


def to_array(img_label):
    img, label = img_label
    return np.asarray(img), label


# ----------------------------------------------------------------- layout errors


def test_missing_path_names_it(tmp_path):
    with pytest.raises(DataError, match="does not exist.*nowhere"):
        SafeImageFolder(tmp_path / "nowhere")


def test_file_instead_of_directory(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        SafeImageFolder(f)


def test_empty_directory(tmp_path):
    with pytest.raises(DataError, match=f"no class folders in {tmp_path}"):
        SafeImageFolder(tmp_path)


def test_images_directly_in_root_get_a_hint(tmp_path):
    write_image(str(tmp_path / "a.jpg"))
    with pytest.raises(DataError, match="1 image files lie directly"):
        SafeImageFolder(tmp_path)


def test_class_folders_without_images(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        SafeImageFolder(tmp_path)


def test_one_empty_class_folder_is_an_error_unless_allowed(tmp_path):
    write_image(str(tmp_path / "cat" / "1.jpg"))
    (tmp_path / "dog").mkdir()
    with pytest.raises(DataError, match="1 class folder.*dog"):
        SafeImageFolder(tmp_path)
    ds = SafeImageFolder(tmp_path, allow_empty_classes=True)
    assert ds.classes == ["cat", "dog"] and len(ds) == 1


def test_classes_sorted_labels_and_extensions(tmp_path):
    write_image(str(tmp_path / "n02" / "b.JPEG"), fmt="JPEG")
    write_image(str(tmp_path / "n02" / "sub" / "c.png"))
    write_image(str(tmp_path / "n01" / "a.png"), mode="L")  # grey -> must come back RGB
    (tmp_path / "n01" / "readme.txt").write_text("not an image")
    write_image(str(tmp_path / ".ipynb_checkpoints" / "x.png"))  # hidden: not a class
    ds = SafeImageFolder(tmp_path)
    assert ds.classes == ["n01", "n02"]
    assert ds.class_to_idx == {"n01": 0, "n02": 1}
    assert ds.num_classes == 2
    assert [(os.path.relpath(p, tmp_path), y) for p, y in ds.samples] == [
        ("n01/a.png", 0),
        ("n02/b.JPEG", 1),
        (os.path.join("n02", "sub", "c.png"), 1),
    ]
    img, label = ds[0]
    assert img.mode == "RGB" and img.size == (6, 4) and label == 0


def test_transform_is_applied(tmp_path):
    write_image(str(tmp_path / "a" / "1.png"), color=(255, 0, 0))
    ds = SafeImageFolder(tmp_path, transform=lambda im: np.asarray(im)[0, 0].tolist())
    assert ds[0] == ([255, 0, 0], 0)


# ----------------------------------------------------------------- corrupt files


def make_mixed(tmp_path, kinds):
    """One class folder per file so that labels identify which file was returned."""
    for i, kind in enumerate(kinds):
        path = str(tmp_path / f"c{i}" / "img.png")
        if kind == "ok":
            write_image(path, color=(10 * i, 0, 0))
        else:
            write_corrupt(path, kind)
    return SafeImageFolder(tmp_path)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_image_is_skipped_warned_once_and_counted(tmp_path, kind):
    ds = make_mixed(tmp_path, ["ok", kind, "ok"])
    with pytest.warns(UnreadableImageWarning, match="c1/img.png"):
        img, label = ds[1]
    assert label == 2  # the next readable sample, with its own label
    assert np.asarray(img)[0, 0, 0] == 20
    assert ds.num_skipped == 1
    assert ds.bad_files == [str(tmp_path / "c1" / "img.png")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning for the same file would raise
        assert ds[1][1] == 2
    assert ds.num_skipped == 2
    assert ds[0][1] == 0 and ds.num_skipped == 2


def test_consecutive_corrupt_files_wrap_around(tmp_path):
    ds = make_mixed(tmp_path, ["ok", "garbage", "garbage"])
    with pytest.warns(UnreadableImageWarning):
        assert ds[1][1] == 0  # 1 and 2 bad -> wraps to 0
    assert ds.num_skipped == 2


def test_all_corrupt_raises(tmp_path):
    ds = make_mixed(tmp_path, ["garbage", "truncated"])
    with pytest.warns(UnreadableImageWarning), pytest.raises(DataError, match="none of the 2 image files"):
        ds[0]


def test_file_deleted_after_construction_is_skipped(tmp_path):
    ds = make_mixed(tmp_path, ["ok", "ok"])
    os.remove(tmp_path / "c0" / "img.png")
    with pytest.warns(UnreadableImageWarning, match="FileNotFoundError"):
        assert ds[0][1] == 1


def test_index_out_of_range(tmp_path):
    ds = make_mixed(tmp_path, ["ok"])
    with pytest.raises(IndexError):
        ds[1]


def test_skip_count_reaches_main_process_from_workers(tmp_path):
    kinds = ["ok"] * 7
    kinds[3] = "garbage"
    ds = make_mixed(tmp_path, kinds)
    ds.transform = lambda im: torch.from_numpy(np.asarray(im).copy())
    loader = DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the warning is printed in the worker
        batches = list(loader)
    assert [len(labels) for _, labels in batches] == [2, 2, 2, 1]  # batches keep their size
    assert torch.cat([labels for _, labels in batches]).tolist() == [0, 1, 2, 4, 4, 5, 6]
    assert ds.num_skipped == 1
    assert ds.bad_files == [str(tmp_path / "c3" / "img.png")]
