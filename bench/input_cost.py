"""CPU cost per image of each pre-training input path's worker side: how many loader workers a rate needs.

    python bench/input_cost.py --jpeg-generate 2000             # a generated ImageNet-like JPEG folder
    python bench/input_cost.py --jpeg-dir /data/imagenet/train  # a real one (a sample of --images files)

A DataLoader worker runs ``dataset[i]`` for each image; this times exactly that, in one process on one
thread (no DataLoader, no device), for the four ways of feeding ``mae pretrain`` (bench/README.md):

- ``pil_float``: the official loader: PIL decode, RandomResizedCrop + flip, ToTensor + Normalize (float32).
- ``pil_u8`` (``--input_path pil``): the same crop, sent as uint8; the device normalises the batch.
- ``worker_decode`` (``--input_path worker_decode``): libjpeg-turbo decode + crop; the device resizes.
- ``bytes`` (``--input_path gpu_decode``): file bytes + header + crop box; the device decodes.

``workers_for_<rate>`` is ``rate x ms_per_img / 1000``: the busy workers that rate needs on this CPU
(collation, pinning and the device side are not included). Rates: the issue's official ViT-L/16 step
on an H100 (1,870 img/s) and twice that (3,740, the issue's goal).
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
PATHS = ("pil_float", "pil_u8", "worker_decode", "bytes")
TARGET_RATES = (1870, 3740)  # issue 6: official ViT-L/16 on one H100, and the 2x goal
COLUMNS = ("scale", "device", "cpu", "path", "input_path", "img_size", "images", "ms_per_img", "ms_per_img_min",
           "img_per_s_per_worker", *(f"workers_for_{r}" for r in TARGET_RATES), "threads", "repeats",
           "jpeg_dir", "commit", "date", "torch", "python", "command")
INPUT_PATH_OF = {"pil_float": "(official loader)", "pil_u8": "pil", "worker_decode": "worker_decode",
                 "bytes": "gpu_decode"}


def build_dataset(path: str, root: str, img_size: int) -> Any:
    """The dataset a worker of input path ``path`` indexes."""
    from mae.data import SafeImageFolder, pretrain_transform
    from mae.engine.gpu_input import CropSpec, encoded_image_folder
    if path == "pil_float":
        return SafeImageFolder(root, pretrain_transform("crop_rand", img_size))
    if path == "pil_u8":
        return SafeImageFolder(root, pretrain_transform("crop_rand", img_size, normalize=False))
    if path in ("worker_decode", "bytes"):
        spec = CropSpec.from_augmentation("crop_rand", img_size)
        return encoded_image_folder(root, spec, "worker" if path == "worker_decode" else "device")
    raise ValueError(f"unknown input path {path!r}; choose from {PATHS}")


def time_items(get: Callable[[int], Any], indices: Sequence[int], repeats: int) -> list[float]:
    """Seconds per item of ``get`` over ``indices``, once per repeat (after one untimed pass)."""
    for i in indices[: max(1, len(indices) // 10)]:
        get(i)
    out = []
    for r in range(repeats):
        torch.manual_seed(r)
        t0 = time.perf_counter()
        for i in indices:
            get(i)
        out.append((time.perf_counter() - t0) / len(indices))
    return out


def cpu_name() -> str:
    """The CPU model (mae.provenance: the one place that reads it)."""
    from mae.provenance import cpu_model
    return cpu_model()


def measure(root: str, paths: Sequence[str], *, img_size: int = 224, images: int = 500, repeats: int = 3,
            threads: int = 1) -> list[dict[str, Any]]:
    """One row per input path: median / fastest ms per image of ``dataset[i]`` on this CPU."""
    torch.set_num_threads(threads)
    rows = []
    for path in paths:
        ds = build_dataset(path, root, img_size)
        n = min(images, len(ds))
        step = max(1, len(ds) // n)
        indices = list(range(0, step * n, step))[:n]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29's decoder notice
            times = time_items(ds.__getitem__, indices, repeats)
        med = statistics.median(times)
        row = {"path": path, "input_path": INPUT_PATH_OF[path], "img_size": img_size, "images": n,
               "ms_per_img": med * 1e3, "ms_per_img_min": min(times) * 1e3, "img_per_s_per_worker": 1 / med,
               "threads": threads, "repeats": repeats}
        for r in TARGET_RATES:
            row[f"workers_for_{r}"] = r * med
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    from reproduce.report import atomic_write_csv
    return atomic_write_csv(rows, path, COLUMNS, float_digits=4)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--jpeg-dir", default=None, help="class folders of JPEGs (e.g. an ImageNet train folder)")
    p.add_argument("--jpeg-generate", type=int, default=0, help="generate this many JPEGs (bench/jpeg_folder.py)")
    p.add_argument("--jpeg-cache", default="outputs/bench_jpeg", help="where --jpeg-generate writes (reused)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma list of {', '.join(PATHS)}")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--images", type=int, default=500, help="images timed per repeat (spread over the folder)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the median is reported")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a DataLoader worker uses 1)")
    p.add_argument("--out", default=None, help="CSV path (default: results/bench_input_cost_cpu.csv)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mae.provenance import require_same_checkout
    require_same_checkout()
    from reproduce.report import provenance
    paths = [t.strip() for t in args.paths.split(",") if t.strip()]
    bad = [t for t in paths if t not in PATHS]
    if bad:
        raise ValueError(f"unknown input path(s) {bad}; choose from {PATHS}")
    if args.images < 1 or args.repeats < 1:
        raise ValueError(f"need --images >= 1 and --repeats >= 1, got {args.images}, {args.repeats}")
    root = args.jpeg_dir
    if not root:
        if not args.jpeg_generate:
            raise ValueError("give --jpeg-dir DIR or --jpeg-generate N")
        from bench.jpeg_folder import make_jpeg_folder
        root = str(make_jpeg_folder(args.jpeg_cache, args.jpeg_generate, workers=os.cpu_count() or 1))
    if not Path(root).is_dir():
        raise FileNotFoundError(f"--jpeg-dir {root}: no such directory")
    rows = measure(root, paths, img_size=args.img_size, images=args.images, repeats=args.repeats,
                   threads=args.threads)
    cmd = " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    prov = provenance(command=cmd, device="cpu")
    kind = f"generated:{args.jpeg_generate}" if args.jpeg_generate and not args.jpeg_dir else root
    for r in rows:
        r.update(prov, scale="cpu_loader", cpu=cpu_name(), jpeg_dir=kind)
        print(f"{r['path']:14s} {r['ms_per_img']:6.2f} ms/img  {r['img_per_s_per_worker']:6.0f} img/s per worker  "
              + "  ".join(f"{r[f'workers_for_{t}']:5.1f} workers for {t} img/s" for t in TARGET_RATES))
    out = write_csv(rows, args.out or REPO / "results" / "bench_input_cost_cpu.csv")
    print(f"[bench] wrote {out}")
    return 0


if __name__ == "__main__":
    from mae.cli import guarded
    code, result = guarded("input_cost", main)
    raise SystemExit(code or result)
