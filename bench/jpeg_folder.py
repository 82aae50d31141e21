"""A generated folder of ImageNet-like JPEG files, for input-pipeline benchmarks without a dataset.

The images are smooth random colour fields with a few shapes and sensor-like grain, in ImageNet's
class-folder layout, at ImageNet-like sizes (333-640 px a side) and file sizes (~100 KB at quality 90;
ImageNet-1K train averages about 400x350 px and 110 KB), so decoding costs about what it costs there.
A ``.complete`` marker records the parameters, so a second call with the same ones reuses the folder.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MARKER = ".complete"
SIZES = ((500, 375), (375, 500), (500, 333), (500, 400), (400, 400), (640, 480), (333, 500))


def _image(index: int, seed: int, size: tuple[int, int] | None) -> Image.Image:
    rng = np.random.default_rng([seed, index])
    w, h = size or SIZES[index % len(SIZES)]
    coarse = rng.uniform(0, 255, size=(rng.integers(3, 9), rng.integers(3, 9), 3)).astype(np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    grain = rng.normal(0, 20, size=(h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + grain, 0, 255).astype(np.uint8))


def _write(args: tuple[str, int, int, int, tuple[int, int] | None]) -> None:
    path, index, seed, quality, size = args
    _image(index, seed, size).save(path, format="JPEG", quality=quality)


def make_jpeg_folder(root: str | os.PathLike[str], num_images: int, *, num_classes: int = 10, seed: int = 0,
                     quality: int = 90, size: tuple[int, int] | None = None, workers: int = 1) -> Path:
    """Write ``num_images`` JPEGs into ``root/<class>/<i>.JPEG`` (reused if already complete); returns root."""
    if num_images < 1 or num_classes < 1:
        raise ValueError(f"need num_images >= 1 and num_classes >= 1, got {num_images}, {num_classes}")
    root = Path(root)
    params = {"num_images": num_images, "num_classes": num_classes, "seed": seed, "quality": quality,
              "size": list(size) if size else None}
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root
    if root.is_dir() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty and holds no generated set with {params}; "
                         "choose an empty or new folder")
    jobs = []
    for i in range(num_images):
        folder = root / f"n{i % num_classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((str(folder / f"img_{i:07d}.JPEG"), i, seed, quality, size))
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write, jobs, chunksize=64))
    else:
        for job in jobs:
            _write(job)
    marker.write_text(json.dumps(params))
    return root
