"""Checks of a downstream dataset before any training starts (clear errors instead of a crash hours in).

``check_coco``: the annotation json exists and parses, every annotation points at an image and a
category listed in the json, and every listed image file exists on disk.
``check_ade20k``: every image has its label PNG (and back), labels are single-channel and hold only
ADE20K ids 0..150 (0 = other, ignored) or 255 (ignore).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

ADE20K_NUM_CLASSES = 150


class DatasetError(ValueError):
    """A downstream dataset is missing files or holds values the task cannot use."""


def _listing(items: list, limit: int = 5) -> str:
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(str(i) for i in items[:limit]) + more


def check_coco(root: str | Path, ann_file: str, img_dir: str) -> list[str]:
    """Validate one COCO split; returns the category names in id order."""
    root = Path(root)
    ann_path, img_root = root / ann_file, root / img_dir
    if not ann_path.is_file():
        raise DatasetError(f"COCO annotation file not found: {ann_path}")
    try:
        with open(ann_path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"COCO annotation file {ann_path} is not valid json: {e}") from e
    missing_keys = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing_keys:
        raise DatasetError(f"COCO annotation file {ann_path} lacks the key(s) {missing_keys}")
    if not data["images"]:
        raise DatasetError(f"COCO annotation file {ann_path} lists no images")
    if not data["categories"]:
        raise DatasetError(f"COCO annotation file {ann_path} lists no categories")
    image_ids = {im["id"] for im in data["images"]}
    cat_ids = {c["id"] for c in data["categories"]}
    orphan = sorted({a["image_id"] for a in data["annotations"]} - image_ids)
    if orphan:
        raise DatasetError(f"{ann_path}: annotations refer to image id(s) absent from its 'images' list: "
                           f"{_listing(orphan)}")
    bad_cat = sorted({a["category_id"] for a in data["annotations"]} - cat_ids)
    if bad_cat:
        raise DatasetError(f"{ann_path}: annotations use category id(s) absent from its 'categories': "
                           f"{_listing(bad_cat)}")
    bad_box = [a["id"] for a in data["annotations"] if len(a.get("bbox", [])) != 4]
    if bad_box:
        raise DatasetError(f"{ann_path}: annotation id(s) {_listing(bad_box)} have no 4-number 'bbox'")
    if not img_root.is_dir():
        raise DatasetError(f"COCO image folder not found: {img_root} (annotations: {ann_path})")
    absent = [im["file_name"] for im in data["images"] if not (img_root / im["file_name"]).is_file()]
    if absent:
        raise DatasetError(f"{len(absent)} image(s) listed in {ann_path} are missing from {img_root}: "
                           f"{_listing(absent)}")
    return [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]


def check_ade20k(root: str | Path, split: str, img_suffix: str = ".jpg", seg_suffix: str = ".png") -> int:
    """Validate ``images/<split>`` against ``annotations/<split>``; returns the number of pairs."""
    root = Path(root)
    img_dir, ann_dir = root / "images" / split, root / "annotations" / split
    for d in (img_dir, ann_dir):
        if not d.is_dir():
            raise DatasetError(f"ADE20K folder not found: {d} (expected the ADEChallengeData2016 layout)")
    imgs = {p.name[: -len(img_suffix)] for p in img_dir.iterdir() if p.name.endswith(img_suffix)}
    segs = {p.name[: -len(seg_suffix)] for p in ann_dir.iterdir() if p.name.endswith(seg_suffix)}
    if not imgs:
        raise DatasetError(f"no *{img_suffix} images in {img_dir}")
    if imgs - segs:
        raise DatasetError(f"{len(imgs - segs)} image(s) in {img_dir} have no label PNG in {ann_dir}: "
                           f"{_listing(sorted(imgs - segs))}")
    if segs - imgs:
        raise DatasetError(f"{len(segs - imgs)} label PNG(s) in {ann_dir} have no image in {img_dir}: "
                           f"{_listing(sorted(segs - imgs))}")
    for name in sorted(segs):
        path = ann_dir / f"{name}{seg_suffix}"
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(f"label {path} has mode {im.mode}: ADE20K labels are single-channel class ids, "
                                   "not a colour rendering")
            values = np.unique(np.asarray(im))
        bad = [int(v) for v in values if not (0 <= v <= ADE20K_NUM_CLASSES or v == 255)]
        if bad:
            raise DatasetError(f"label {path} holds class id(s) {_listing(bad)} outside 0..{ADE20K_NUM_CLASSES} "
                               "(0 = other) and 255 (ignore)")
    return len(segs)
