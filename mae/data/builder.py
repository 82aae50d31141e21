"""One entry point from a dataset spec string to a Dataset (used by every protocol).

Specs:
  None | "embedded"     SyntheticShapes, 5000 train / 1000 val images (10 classes): the
                        default, sized for a few-minute CPU demo.
  "synthetic[:N]"       SyntheticShapes with N train images (default 5000), N // 5 val.
  "digits"              scikit-learn digits, 1437 train / 360 val (stratified 80/20).
  "photos[:N]"          PhotoPatches, N train crops (default 2000), N // 5 val; unlabelled.
  a directory           (anything else; "./digits" for a folder named like a spec)
                        class folders (SafeImageFolder); if it has a <split>/ sub-folder
                        (ImageNet's train/ and val/), that one is used.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from PIL import Image
from torch.utils.data import Dataset

from .embedded import Digits, PhotoPatches, SyntheticShapes
from .errors import DataError
from .folder import SafeImageFolder

__all__ = ["build_dataset", "num_classes_of", "DEFAULT_SYNTHETIC_TRAIN", "DEFAULT_PHOTOS_TRAIN", "SPLITS"]

DEFAULT_SYNTHETIC_TRAIN = 5000
DEFAULT_PHOTOS_TRAIN = 2000
VAL_DIVISOR = 5  # val size = train size // 5 for the generated sets (80/20 like Digits)
SPLITS: tuple[str, ...] = ("train", "val")

_SPEC_HELP = (
    "valid specs: None or 'embedded', 'synthetic[:N]', 'digits', 'photos[:N]', "
    "or an existing directory of class folders (optionally with train/ and val/)"
)


def _split_size(n_train: int, split: str) -> int:
    return n_train if split == "train" else max(1, n_train // VAL_DIVISOR)


def _parse_count(spec: str, name: str, default: int) -> int:
    rest = spec[len(name):]
    if rest == "":
        return default
    if not rest.startswith(":") or not rest[1:].isdigit() or int(rest[1:]) < 1:
        raise DataError(f"bad dataset spec {spec!r}: expected {name!r} or '{name}:N' with N >= 1")
    return int(rest[1:])


def parse_spec(spec: str | os.PathLike[str] | None) -> tuple[str, str]:
    """(kind, name) of a dataset spec without building it: kind ``embedded`` (synthetic, digits, photos, with
    a valid count) or ``folder`` (an existing directory); a clear :class:`DataError` otherwise."""
    name = "embedded" if spec is None else os.fspath(spec).strip()
    if name in ("embedded", "synthetic", "digits") or name.startswith("synthetic:"):
        if name.startswith("synthetic"):
            _parse_count(name, "synthetic", DEFAULT_SYNTHETIC_TRAIN)
        return "embedded", name
    if name == "photos" or name.startswith("photos:"):
        _parse_count(name, "photos", DEFAULT_PHOTOS_TRAIN)
        return "embedded", name
    path = os.path.expanduser(name)
    if not os.path.isdir(path):
        raise DataError(f"dataset {name!r} is neither a known name nor an existing directory; {_SPEC_HELP}")
    return "folder", path


def build_dataset(
    spec: str | os.PathLike[str] | None,
    *,
    split: str = "train",
    transform: Callable[[Image.Image], Any] | None = None,
    img_size: int = 32,
    seed: int = 0,
) -> Dataset:
    """The `split` ("train" | "val") of the dataset named by `spec` (see module doc).

    `img_size` sets the size of generated images (embedded sets only; folders keep their
    files' sizes and rely on `transform`). `seed` fixes generated images and the digits split.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if spec is not None and not isinstance(spec, str):
        spec = os.fspath(spec)
    name = "embedded" if spec is None else spec.strip()
    if name in ("embedded", "synthetic") or name.startswith("synthetic:"):
        n = DEFAULT_SYNTHETIC_TRAIN if name == "embedded" else _parse_count(name, "synthetic", DEFAULT_SYNTHETIC_TRAIN)
        return SyntheticShapes(_split_size(n, split), img_size=img_size, seed=seed, transform=transform, split=split)
    if name == "digits":
        return Digits(split, img_size=img_size, transform=transform, seed=seed)
    if name == "photos" or name.startswith("photos:"):
        n = _parse_count(name, "photos", DEFAULT_PHOTOS_TRAIN)
        return PhotoPatches(_split_size(n, split), img_size=img_size, seed=seed, transform=transform, split=split)
    path = os.path.expanduser(name)
    if not os.path.exists(path):
        raise DataError(f"dataset {name!r} is neither a known name nor an existing path; {_SPEC_HELP}")
    if not os.path.isdir(path):
        raise DataError(f"dataset path is not a directory: {path}; {_SPEC_HELP}")
    sub = os.path.join(path, split)
    if os.path.isdir(sub):
        return SafeImageFolder(sub, transform=transform)
    if split != "train" or os.path.isdir(os.path.join(path, "val")):
        raise DataError(
            f"{path} has no {split}/ sub-folder; a plain class-folder directory serves only as "
            "the train split (never evaluate on training images)"
        )
    return SafeImageFolder(path, transform=transform)


def num_classes_of(dataset: Dataset) -> int:
    """Number of classes of a labelled dataset (looks through Subset / SeededDataset)."""
    ds: Any = dataset
    while True:
        if getattr(ds, "labelled", True) is False:
            raise DataError(f"{ds!r} is unlabelled (pre-training only); it has no classes")
        n = getattr(ds, "num_classes", None)
        if n is None and getattr(ds, "classes", None) is not None:
            n = len(ds.classes)
        if n is not None:
            return int(n)
        attrs = getattr(ds, "__dict__", {})
        inner = attrs["base"] if "base" in attrs else attrs.get("dataset")
        if inner is None:
            raise DataError(f"cannot tell the number of classes of {type(dataset).__name__}: no num_classes/classes")
        ds = inner
