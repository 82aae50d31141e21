"""Tiny deterministic datasets in the COCO and ADE20K layouts, for smoke runs and tests.

COCO (``make_coco_fixture``)::

    root/annotations/instances_{train,val}2017.json   boxes + polygon masks, categories 1 rectangle, 2 ellipse
    root/{train,val}2017/<id>.png                     coloured shapes on noise

ADE20K (``make_ade20k_fixture``)::

    root/images/{training,validation}/<name>.jpg
    root/annotations/{training,validation}/<name>.png  uint8 labels: 0 = "other" (ignored), 1..3 = ADE
                                                         classes wall / building / sky

The same ``seed`` gives byte-identical files.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COCO_CATEGORIES = [{"id": 1, "name": "rectangle", "supercategory": "shape"},
                   {"id": 2, "name": "ellipse", "supercategory": "shape"}]
ADE_FIXTURE_LABELS = (1, 2, 3)  # raw ADE20K label ids (wall, building, sky); 0 = other


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.integers(0, 96, size=(size, size, 3), dtype=np.uint8)


def _polygon_area(xy: list[float]) -> float:
    x, y = np.asarray(xy[0::2]), np.asarray(xy[1::2])
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _shape(rng: np.random.Generator, size: int, kind: str, n_vertices: int = 16) -> list[float]:
    """A rectangle or an ellipse as a flat polygon [x0, y0, x1, y1, ...] inside the image."""
    w, h = rng.integers(size // 5, size // 2, size=2)
    x0, y0 = rng.integers(1, size - w - 1), rng.integers(1, size - h - 1)
    if kind == "rectangle":
        return [float(v) for v in (x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h)]
    cx, cy = x0 + w / 2, y0 + h / 2
    pts = []
    for k in range(n_vertices):
        t = 2 * math.pi * k / n_vertices
        pts += [round(cx + w / 2 * math.cos(t), 2), round(cy + h / 2 * math.sin(t), 2)]
    return pts


def make_coco_fixture(root: str | Path, num_train: int = 8, num_val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """Write a COCO-format instance segmentation set (1-3 objects per image); returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    ann_id = 1
    for split, count in (("train2017", num_train), ("val2017", num_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(count):
            img_id = len(images) + 1 + (0 if split.startswith("train") else 10000)
            img = Image.fromarray(_noise(rng, size))
            draw = ImageDraw.Draw(img)
            for _ in range(int(rng.integers(1, 4))):
                cat = int(rng.integers(1, 3))
                poly = _shape(rng, size, COCO_CATEGORIES[cat - 1]["name"])
                colour = tuple(int(c) for c in rng.integers(128, 256, size=3))
                draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=colour)
                xs, ys = poly[0::2], poly[1::2]
                bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
                anns.append({"id": ann_id, "image_id": img_id, "category_id": cat, "bbox": bbox,
                             "area": _polygon_area(poly), "iscrowd": 0, "segmentation": [poly]})
                ann_id += 1
            name = f"{img_id:012d}.png"
            img.save(root / split / name)
            images.append({"id": img_id, "file_name": name, "width": size, "height": size})
        data = {"info": {"description": "MAE harness smoke fixture", "seed": seed}, "licenses": [],
                "images": images, "annotations": anns, "categories": COCO_CATEGORIES}
        with open(root / "annotations" / f"instances_{split}.json", "w") as f:
            json.dump(data, f)
    return root


def make_ade20k_fixture(root: str | Path, num_train: int = 8, num_val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """Write an ADEChallengeData2016-layout set: jpg images, uint8 label PNGs (0 = other); returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    palette = {0: (40, 40, 40), 1: (200, 60, 60), 2: (60, 200, 60), 3: (60, 60, 220)}
    for split, count in (("training", num_train), ("validation", num_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            label = Image.new("L", (size, size), 0)
            draw = ImageDraw.Draw(label)
            # the top band is sky, then 2-3 shapes of wall / building
            draw.rectangle([0, 0, size - 1, int(rng.integers(size // 6, size // 3))], fill=3)
            for _ in range(int(rng.integers(2, 4))):
                kind = "rectangle" if rng.random() < 0.5 else "ellipse"
                poly = _shape(rng, size, kind)
                draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=int(rng.integers(1, 3)))
            lab = np.asarray(label)
            img = _noise(rng, size).astype(np.int16)
            for k, colour in palette.items():
                img[lab == k] += np.asarray(colour, dtype=np.int16) // 2
            name = f"ADE_{split[:5]}_{i:08d}"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / split / f"{name}.jpg",
                                                                       quality=95)
            label.save(root / "annotations" / split / f"{name}.png")
    return root
