"""Classification sets given by list files: iNaturalist and Places (paper Table 6).

Two formats, both resolved relative to an image `root`:

- "inat": the iNaturalist 2017/2018/2019 json (COCO-like)::

      {"images": [{"id": 7, "file_name": "train_val2018/Plantae/.../x.jpg"}, ...],
       "annotations": [{"image_id": 7, "category_id": 1234}, ...],
       "categories": [{"id": 1234, "name": "..."}, ...]}

  label = position of category_id in the sorted category ids (the identity for the
  official files, whose ids are 0..C-1); every image needs exactly one annotation.
- "places": Places205/365 text lists, one "relative/path.jpg <label>" per line (a
  leading "/" as in the Places365 lists is accepted); blank lines are skipped. An
  optional class-index file gives the class names: one "name" or "name <index>" per
  line (Places365's categories_places365.txt is the second form).

Everything is checked at construction (missing list, malformed line as file:line,
label out of range, images missing on disk); unreadable images at training time are
skipped and counted as in `SafeImageFolder` (shared `RobustImageDataset`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from PIL import Image

from .errors import DataError
from .robust import RobustImageDataset

__all__ = ["ListDataset", "read_inat_json", "read_places_list", "read_class_index", "LIST_FORMATS"]

LIST_FORMATS: tuple[str, ...] = ("inat", "places")
_MISSING_SHOWN = 5


def read_class_index(path: str) -> list[str]:
    """Class names from "name" or "name <index>" lines; indices must be 0..C-1, each once."""
    if not os.path.isfile(path):
        raise DataError(f"class-index file not found: {path}")
    entries: list[tuple[str, int, int]] = []  # (name, index, line number)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text:
                continue
            parts = text.rsplit(maxsplit=1)
            if len(parts) == 2 and _is_int(parts[1]):
                entries.append((parts[0], int(parts[1]), lineno))
            else:
                entries.append((text, len(entries), lineno))
    if not entries:
        raise DataError(f"class-index file {path} lists no class")
    names: dict[int, str] = {}
    for name, idx, lineno in entries:
        if not 0 <= idx < len(entries):
            raise DataError(f"{path}:{lineno}: class index {idx} out of range 0..{len(entries) - 1}")
        if idx in names:
            raise DataError(f"{path}:{lineno}: class index {idx} given twice ({names[idx]!r}, {name!r})")
        names[idx] = name
    return [names[i] for i in range(len(entries))]


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def read_places_list(path: str) -> list[tuple[str, int, int]]:
    """(relative path, label, line number) for each non-blank "path <label>" line."""
    if not os.path.isfile(path):
        raise DataError(f"list file not found: {path}")
    rows: list[tuple[str, int, int]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text:
                continue
            parts = text.rsplit(maxsplit=1)
            if len(parts) != 2 or not _is_int(parts[1]):
                raise DataError(f"{path}:{lineno}: expected '<relative/path.jpg> <integer label>', got {text!r}")
            label = int(parts[1])
            if label < 0:
                raise DataError(f"{path}:{lineno}: negative label {label}")
            rows.append((parts[0].lstrip("/"), label, lineno))
    if not rows:
        raise DataError(f"list file {path} has no entries")
    return rows


def read_inat_json(path: str) -> tuple[list[tuple[str, int]], list[str]]:
    """([(file_name, label)], class names) from an iNaturalist json (see module doc)."""
    if not os.path.isfile(path):
        raise DataError(f"list file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid json: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a json object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: missing or non-list key {key!r}")

    def field(entry: Any, key: str, section: str, i: int) -> Any:
        if not isinstance(entry, dict) or key not in entry:
            raise DataError(f"{path}: {section}[{i}] has no {key!r}: {str(entry)[:120]}")
        return entry[key]

    cat_ids = [field(c, "id", "categories", i) for i, c in enumerate(data["categories"])]
    if not cat_ids:
        raise DataError(f"{path}: 'categories' is empty")
    if len(set(cat_ids)) != len(cat_ids):
        raise DataError(f"{path}: duplicate category ids in 'categories'")
    order = sorted(range(len(cat_ids)), key=lambda i: cat_ids[i])
    label_of = {cat_ids[i]: lbl for lbl, i in enumerate(order)}
    classes = [str(data["categories"][i].get("name", cat_ids[i])) for i in order]

    file_of: dict[Any, str] = {}
    for i, img in enumerate(data["images"]):
        img_id, name = field(img, "id", "images", i), field(img, "file_name", "images", i)
        if img_id in file_of:
            raise DataError(f"{path}: images[{i}]: duplicate image id {img_id}")
        file_of[img_id] = str(name)
    label_for: dict[Any, int] = {}
    for i, ann in enumerate(data["annotations"]):
        img_id, cat = field(ann, "image_id", "annotations", i), field(ann, "category_id", "annotations", i)
        if img_id not in file_of:
            raise DataError(f"{path}: annotations[{i}]: image_id {img_id} is not in 'images'")
        if cat not in label_of:
            raise DataError(
                f"{path}: annotations[{i}]: category_id {cat} out of range "
                f"(not among the {len(label_of)} ids in 'categories')"
            )
        if img_id in label_for:
            raise DataError(f"{path}: annotations[{i}]: image_id {img_id} has more than one annotation")
        label_for[img_id] = label_of[cat]
    unlabelled = [k for k in file_of if k not in label_for]
    if unlabelled:
        raise DataError(
            f"{path}: {len(unlabelled)} image(s) have no annotation (e.g. id {unlabelled[0]}); "
            "a test split without labels cannot be used for classification"
        )
    if not file_of:
        raise DataError(f"{path}: 'images' is empty")
    samples = [(name, label_for[img_id]) for img_id, name in file_of.items()]
    return samples, classes


class ListDataset(RobustImageDataset):
    """Images listed in an iNaturalist json or a Places text list, under `root`.

    Args:
        root: folder the listed paths are relative to.
        list_file: the json (fmt="inat") or text list (fmt="places").
        fmt: "inat" or "places".
        transform: applied to the RGB PIL image.
        class_index: optional class-names file (Places); fixes num_classes.
        num_classes: optional expected number of classes; labels must be below it.
        check_files: verify at construction that every listed file exists (one stat per
            file: a few seconds per million on a local disk, longer on network storage).

    Attributes: samples, targets, classes (names, or str(label) without an index),
    num_classes, num_skipped, bad_files.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        list_file: str | os.PathLike[str],
        fmt: str = "inat",
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        class_index: str | os.PathLike[str] | None = None,
        num_classes: int | None = None,
        check_files: bool = True,
    ) -> None:
        root, list_file = os.fspath(root), os.fspath(list_file)
        if fmt not in LIST_FORMATS:
            raise DataError(f"unknown list format {fmt!r}; valid: {', '.join(LIST_FORMATS)}")
        if not os.path.isdir(root):
            raise DataError(f"image root is not a directory: {root}")
        self.root, self.list_file, self.fmt = root, list_file, fmt

        if fmt == "inat":
            if class_index is not None:
                raise DataError(f"{list_file}: class_index is only for fmt='places' (iNat json has 'categories')")
            rel, classes = read_inat_json(list_file)
            self._check_num_classes(num_classes, len(classes), f"{list_file} 'categories'")
            samples = [(os.path.join(root, p.lstrip("/")), y) for p, y in rel]
        else:
            rows = read_places_list(list_file)
            if class_index is not None:
                classes = read_class_index(os.fspath(class_index))
                self._check_num_classes(num_classes, len(classes), os.fspath(class_index))
                limit, against = len(classes), f"the {len(classes)} classes of {os.fspath(class_index)}"
            elif num_classes is not None:
                limit, against = num_classes, f"num_classes={num_classes}"
            else:
                limit, against = None, ""
            if limit is not None:
                for p, y, lineno in rows:
                    if y >= limit:
                        raise DataError(f"{list_file}:{lineno}: label {y} out of range for {against}")
            if class_index is None:
                n = num_classes if num_classes is not None else 1 + max(y for _, y, _ in rows)
                classes = [str(i) for i in range(n)]
            samples = [(os.path.join(root, p), y) for p, y, _ in rows]

        if check_files:
            missing = [p for p, _ in samples if not os.path.isfile(p)]
            if missing:
                shown = ", ".join(missing[:_MISSING_SHOWN])
                raise DataError(
                    f"{list_file}: {len(missing)} of {len(samples)} listed images are missing "
                    f"under {root}, e.g. {shown}"
                )
        self.classes: list[str] = classes
        super().__init__(samples, transform, source=list_file)

    @staticmethod
    def _check_num_classes(expected: int | None, found: int, where: str) -> None:
        if expected is not None and expected != found:
            raise DataError(f"num_classes={expected} but {where} defines {found} classes")

    @property
    def num_classes(self) -> int:
        return len(self.classes)
