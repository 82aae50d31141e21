"""ImageNet-style class folders (root/<class>/**/<image>) with early, clear errors.

The layout of ImageNet-1K train/val as used by the paper (Sec. 4) and the official
release (torchvision's ImageFolder). Differences from torchvision's ImageFolder:
every layout problem raises `DataError` at construction, hidden folders (".git",
".ipynb_checkpoints") are not classes, and unreadable images are skipped and counted
(see `RobustImageDataset`) instead of killing the run.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from PIL import Image

from .errors import DataError
from .robust import RobustImageDataset

__all__ = ["SafeImageFolder", "IMG_EXTENSIONS", "find_classes"]

#: Same set as torchvision's ImageFolder; matched case-insensitively (".JPEG" works).
IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
)


def find_classes(root: str) -> list[str]:
    """Sorted names of the non-hidden sub-directories of `root` (raises DataError)."""
    if not os.path.exists(root):
        raise DataError(f"dataset path does not exist: {root}")
    if not os.path.isdir(root):
        raise DataError(f"dataset path is not a directory: {root}")
    with os.scandir(root) as it:
        classes = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    if not classes:
        n_images = sum(1 for f in os.listdir(root) if f.lower().endswith(IMG_EXTENSIONS))
        hint = (
            f" ({n_images} image files lie directly in it; put them in {root}/<class_name>/)"
            if n_images
            else ""
        )
        raise DataError(f"no class folders in {root}: expected {root}/<class_name>/<image>{hint}")
    return classes


def _walk_images(folder: str, extensions: tuple[str, ...]) -> Iterable[str]:
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(extensions) and not name.startswith("."):
                yield os.path.join(dirpath, name)


class SafeImageFolder(RobustImageDataset):
    """Labelled images in root/<class>/...; label = index of the class in sorted order.

    Args:
        root: the folder holding one sub-folder per class.
        transform: applied to the RGB PIL image.
        extensions: accepted file suffixes (case-insensitive).
        allow_empty_classes: if False (default), a class folder without images is an error
            (it usually means an interrupted copy or extraction).

    Attributes: classes, class_to_idx, samples [(path, label)], targets, num_classes,
    num_skipped, bad_files.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Image.Image], Any] | None = None,
        extensions: Iterable[str] = IMG_EXTENSIONS,
        *,
        allow_empty_classes: bool = False,
    ) -> None:
        root = os.fspath(root)
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        if not exts:
            raise DataError(f"{root}: empty list of image extensions")
        self.root = root
        self.classes: list[str] = find_classes(root)
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        samples: list[tuple[str, int]] = []
        empty: list[str] = []
        for cls in self.classes:
            before = len(samples)
            label = self.class_to_idx[cls]
            samples.extend((p, label) for p in _walk_images(os.path.join(root, cls), exts))
            if len(samples) == before:
                empty.append(cls)
        if not samples:
            raise DataError(
                f"no image files with extensions {exts} under the {len(self.classes)} "
                f"class folders of {root}"
            )
        if empty and not allow_empty_classes:
            shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
            raise DataError(
                f"{len(empty)} class folder(s) of {root} hold no image with extensions {exts}: "
                f"{shown} (pass allow_empty_classes=True to accept)"
            )
        super().__init__(samples, transform, source=root)

    @property
    def num_classes(self) -> int:
        return len(self.classes)
