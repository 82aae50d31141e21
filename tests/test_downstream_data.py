"""downstream/fixtures.py and downstream/checks.py: deterministic fixtures, clear errors for bad datasets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _openmmlab import require_openmmlab

from downstream.checks import DatasetError, check_ade20k, check_coco  # noqa: E402
from downstream.fixtures import make_ade20k_fixture, make_coco_fixture  # noqa: E402

TRAIN = ("annotations/instances_train2017.json", "train2017")
VAL = ("annotations/instances_val2017.json", "val2017")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_fixtures_are_deterministic_and_seeded(tmp_path):
    a, b, c = (make_coco_fixture(tmp_path / n, seed=s) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    assert _files(a) == _files(b)
    assert _files(a) != _files(c)
    d, e = (make_ade20k_fixture(tmp_path / n) for n in ("d", "e"))
    assert _files(d) == _files(e)


def test_coco_fixture_is_valid_coco(tmp_path):
    root = make_coco_fixture(tmp_path / "coco", num_train=3, num_val=2, size=48)
    assert check_coco(root, *TRAIN) == ["rectangle", "ellipse"]
    data = json.loads((root / VAL[0]).read_text())
    assert len(data["images"]) == 2 and data["annotations"]
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 48 and y + h <= 48 and w > 0 and h > 0
        poly = a["segmentation"][0]
        assert len(poly) >= 8 and min(poly[0::2]) == x and max(poly[1::2]) == y + h
        assert 0 < a["area"] <= w * h + 1e-6
    require_openmmlab()  # pycocotools comes with the downstream stack
    import pycocotools.mask as mask_utils
    # the evaluator's own polygon decoder agrees with the boxes
    ann = data["annotations"][0]
    rle = mask_utils.frPyObjects(ann["segmentation"], 48, 48)
    bx, by, bw, bh = mask_utils.toBbox(mask_utils.merge(rle))
    assert abs(bx - ann["bbox"][0]) <= 1 and abs(bw - ann["bbox"][2]) <= 2


def test_ade20k_fixture_layout_and_labels(tmp_path):
    root = make_ade20k_fixture(tmp_path / "ade", num_train=3, num_val=2)
    assert check_ade20k(root, "training") == 3 and check_ade20k(root, "validation") == 2
    lab = np.asarray(Image.open(next((root / "annotations" / "training").glob("*.png"))))
    assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1, 2, 3} and len(np.unique(lab)) >= 2


def test_coco_missing_annotation_file(tmp_path):
    root = make_coco_fixture(tmp_path / "coco", num_train=2, num_val=1)
    (root / VAL[0]).unlink()
    with pytest.raises(DatasetError, match=r"annotation file not found: .*instances_val2017\.json"):
        check_coco(root, *VAL)


def test_coco_image_listed_but_absent(tmp_path):
    root = make_coco_fixture(tmp_path / "coco", num_train=2, num_val=1)
    victim = sorted((root / "train2017").iterdir())[0]
    victim.unlink()
    with pytest.raises(DatasetError, match=rf"1 image\(s\) listed in .* missing .*{victim.name}"):
        check_coco(root, *TRAIN)


def test_coco_annotation_of_an_image_absent_from_the_json(tmp_path):
    root = make_coco_fixture(tmp_path / "coco", num_train=2, num_val=1)
    path = root / TRAIN[0]
    data = json.loads(path.read_text())
    data["annotations"][0]["image_id"] = 999
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"image id\(s\) absent from its 'images' list: 999"):
        check_coco(root, *TRAIN)
    data["annotations"][0]["image_id"] = data["images"][0]["id"]
    data["annotations"][0]["category_id"] = 7
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"category id\(s\) absent .*: 7"):
        check_coco(root, *TRAIN)


def test_ade20k_label_out_of_range(tmp_path):
    root = make_ade20k_fixture(tmp_path / "ade", num_train=2, num_val=1)
    victim = sorted((root / "annotations" / "validation").iterdir())[0]
    lab = np.asarray(Image.open(victim)).copy()
    lab[0, 0] = 151
    Image.fromarray(lab).save(victim)
    with pytest.raises(DatasetError, match=rf"{victim.name} holds class id\(s\) 151 outside 0\.\.150"):
        check_ade20k(root, "validation")
    lab[0, 0] = 255  # the ignore value is fine
    Image.fromarray(lab).save(victim)
    check_ade20k(root, "validation")


def test_ade20k_colour_label_and_unpaired_files(tmp_path):
    root = make_ade20k_fixture(tmp_path / "ade", num_train=2, num_val=2)
    victim = sorted((root / "annotations" / "training").iterdir())[0]
    Image.open(victim).convert("RGB").save(victim)
    with pytest.raises(DatasetError, match="mode RGB"):
        check_ade20k(root, "training")
    val_lab = sorted((root / "annotations" / "validation").iterdir())[0]
    val_lab.unlink()
    with pytest.raises(DatasetError, match=rf"have no label PNG.*{val_lab.stem}"):
        check_ade20k(root, "validation")
    with pytest.raises(DatasetError, match="folder not found"):
        check_ade20k(root, "testing")
