"""Datasets that need no download: for the README demo, the tests and the "mini" scale.

- `SyntheticShapes`: labelled procedural images (shape x fill), generated on the fly
  from (seed, split, index); the default embedded dataset.
- `Digits`: scikit-learn's real 8x8 handwritten digits, upsampled, 80/20 stratified split.
- `sample_photos` / `PhotoPatches`: the real photographs shipped inside scikit-image
  (no network), whole or as random crops (an unlabelled pre-training set).

All return (PIL RGB image, int label) so the normal transforms of `transforms.py` apply.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .errors import DataError

__all__ = [
    "SyntheticShapes",
    "SHAPES",
    "FILLS",
    "Digits",
    "PhotoPatches",
    "PHOTO_NAMES",
    "sample_photos",
]

Transform = Callable[[Image.Image], Any] | None

_SPLIT_CODES = {"train": 0, "val": 1}


def _split_code(split: str) -> int:
    if split not in _SPLIT_CODES:
        raise DataError(f"unknown split {split!r}; valid: {', '.join(_SPLIT_CODES)}")
    return _SPLIT_CODES[split]


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _item_rng(seed: int, split_code: int, index: int) -> np.random.Generator:
    """Independent random stream per (seed, split, index): no state shared between items."""
    return np.random.default_rng([seed, split_code, index])


def _check_index(index: int, n: int, name: str) -> int:
    if not -n <= index < n:
        raise IndexError(f"index {index} out of range for {name} of length {n}")
    return int(index) % n


# --------------------------------------------------------------------------- shapes

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
FILLS: tuple[str, ...] = ("solid", "striped", "outline")

_SUPERSAMPLE = 2  # render at 2x and average 2x2 blocks: anti-aliased edges
_STROKE = 0.28  # outline width, in units of the shape radius
_STRIPE_PERIOD = 0.6  # stripe period, in units of the shape radius


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of a unit-size shape in its own (rotated, scaled) frame."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "triangle":  # equilateral, circumradius 1.2 (inradius 0.6)
        c, s = np.sqrt(3.0) / 2.0, 0.5
        return (-v <= 0.6) & (c * u + s * v <= 0.6) & (-c * u + s * v <= 0.6)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    raise DataError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")


def _erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Binary erosion with a square structuring element (pure numpy)."""
    out = mask.copy()
    for _ in range(pixels):
        padded = np.pad(out, 1, constant_values=False)
        out = (
            padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1]
            & padded[1:-1, :-2] & padded[1:-1, 2:]
        )
    return out


def render_shape(rng: np.random.Generator, img_size: int, shape: str, fill: str) -> Image.Image:
    """Draw one shape with random colour, position, size and rotation on a noisy
    two-colour gradient background."""
    s = img_size * _SUPERSAMPLE
    coords = (np.arange(s, dtype=np.float64) + 0.5) / s
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    # Background: a linear gradient between two random colours in a random direction.
    c0, c1 = rng.uniform(0.0, 1.0, size=(2, 3))
    ang = rng.uniform(0.0, 2 * np.pi)
    g = np.clip(np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5) + 0.5, 0.0, 1.0)[..., None]
    img = c0 * (1.0 - g) + c1 * g
    # The shape: radius 18-32% of the image, anywhere (mostly) inside it, any rotation.
    r = rng.uniform(0.18, 0.32)
    cx, cy = rng.uniform(r, 1.0 - r, size=2)
    th = rng.uniform(0.0, 2 * np.pi)
    dx, dy = xx - cx, yy - cy
    u = (np.cos(th) * dx + np.sin(th) * dy) / r
    v = (-np.sin(th) * dx + np.cos(th) * dy) / r
    mask = _shape_mask(shape, u, v)
    if fill == "striped":
        phase = rng.uniform(0.0, 1.0)
        mask &= np.sin(2 * np.pi * (u / _STRIPE_PERIOD + phase)) > 0
    elif fill == "outline":
        mask &= ~_erode(mask, max(1, int(round(_STROKE * r * s))))
    elif fill != "solid":
        raise DataError(f"unknown fill {fill!r}; valid: {', '.join(FILLS)}")
    # Foreground colour: random, but kept away from the background colour under the shape.
    fg = rng.uniform(0.0, 1.0, size=3)
    bg_here = img[min(int(cy * s), s - 1), min(int(cx * s), s - 1)]
    if np.linalg.norm(fg - bg_here) < 0.5:
        fg = np.where(bg_here > 0.5, bg_here - 0.5, bg_here + 0.5)
    img = np.where(mask[..., None], fg, img)
    img = img.reshape(img_size, _SUPERSAMPLE, img_size, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    img = img + rng.normal(0.0, 0.05, size=img.shape)
    return Image.fromarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="RGB")


class SyntheticShapes(Dataset):
    """Procedural labelled images: class c = (SHAPES[c % 5], FILLS[c // 5]).

    Each image has a random colour, position, size (18-32% of the side), rotation, a
    random gradient background and pixel noise, so colour and position carry no label
    information. Images are generated on the fly from (seed, split, index): nothing is
    stored and any index is reproducible in any process. Labels are balanced
    (label = index % num_classes).

    Args:
        n: number of images.
        img_size: side of the square images.
        num_classes: 2..15 (5 shapes x 3 fills); 10 = 5 shapes x {solid, striped}.
        seed: non-negative; different seeds give different images.
        transform: applied to the PIL image.
        split: "train" or "val": independent image streams for the same seed.
    """

    def __init__(
        self,
        n: int,
        img_size: int = 32,
        num_classes: int = 10,
        seed: int = 0,
        transform: Transform = None,
        *,
        split: str = "train",
    ) -> None:
        self.n = _check_count("SyntheticShapes n", n, 1)
        self.img_size = _check_count("SyntheticShapes img_size", img_size, 8)
        max_classes = len(SHAPES) * len(FILLS)
        if not 2 <= num_classes <= max_classes or isinstance(num_classes, bool):
            raise DataError(f"SyntheticShapes num_classes must be in 2..{max_classes}, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.seed = _check_count("SyntheticShapes seed", seed, 0)
        self.split = split
        self._split_code = _split_code(split)
        self.transform = transform
        self.classes: list[str] = [
            f"{FILLS[c // len(SHAPES)]} {SHAPES[c % len(SHAPES)]}" for c in range(self.num_classes)
        ]

    def __len__(self) -> int:
        return self.n

    @property
    def targets(self) -> list[int]:
        return [i % self.num_classes for i in range(self.n)]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        index = _check_index(index, self.n, "SyntheticShapes")
        label = index % self.num_classes
        rng = _item_rng(self.seed, self._split_code, index)
        img = render_shape(rng, self.img_size, SHAPES[label % len(SHAPES)], FILLS[label // len(SHAPES)])
        if self.transform is not None:
            img = self.transform(img)
        return img, label

    def __repr__(self) -> str:
        return (
            f"SyntheticShapes(n={self.n}, img_size={self.img_size}, "
            f"num_classes={self.num_classes}, seed={self.seed}, split={self.split!r})"
        )


# --------------------------------------------------------------------------- digits


class Digits(Dataset):
    """scikit-learn's `load_digits` (1797 real 8x8 handwritten digits, 10 classes).

    Upsampled to img_size (bicubic), grey replicated to 3 channels (white ink on black),
    split 80/20 stratified by class with `seed` (train: 1437 images, val: 360).
    """

    VAL_FRACTION = 0.2

    def __init__(
        self, split: str = "train", img_size: int = 32, transform: Transform = None, seed: int = 0
    ) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        code = _split_code(split)
        self.img_size = _check_count("Digits img_size", img_size, 8)
        self.split, self.seed, self.transform = split, int(seed), transform
        data = load_digits()
        idx = np.arange(len(data.target))
        train_idx, val_idx = train_test_split(
            idx, test_size=self.VAL_FRACTION, stratify=data.target, random_state=self.seed
        )
        sel = np.sort(train_idx if code == 0 else val_idx)
        # 0..16 ink values -> uint8 grey
        self._images = np.round(data.images[sel] * (255.0 / 16.0)).astype(np.uint8)
        self.targets: list[int] = [int(t) for t in data.target[sel]]
        self.classes: list[str] = [str(d) for d in range(10)]
        self.num_classes = 10

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        index = _check_index(index, len(self), "Digits")
        img = Image.fromarray(self._images[index], mode="L")
        img = img.resize((self.img_size, self.img_size), Image.Resampling.BICUBIC).convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def __repr__(self) -> str:
        return f"Digits(split={self.split!r}, n={len(self)}, img_size={self.img_size}, seed={self.seed})"


# --------------------------------------------------------------------------- photos


def _motorcycle() -> np.ndarray:
    from skimage import data

    return data.stereo_motorcycle()[0]


#: Photographs stored inside the scikit-image package (no download). Colour first, then grey.
PHOTO_NAMES: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "rocket", "motorcycle", "hubble_deep_field",
    "immunohistochemistry", "camera", "coins", "moon", "grass", "gravel", "brick",
)


@functools.lru_cache(maxsize=None)
def _load_photo(name: str) -> Image.Image:
    from skimage import data

    if name not in PHOTO_NAMES:
        raise DataError(f"unknown photo {name!r}; valid: {', '.join(PHOTO_NAMES)}")
    fn = _motorcycle if name == "motorcycle" else getattr(data, name, None)
    if fn is None:
        raise DataError(f"skimage.data.{name} is missing in this scikit-image version")
    try:
        arr = np.asarray(fn())
    except Exception as exc:  # e.g. a build without the bundled file (would need pooch)
        raise DataError(f"skimage.data.{name}() failed offline: {type(exc).__name__}: {exc}") from exc
    if arr.dtype != np.uint8:
        raise DataError(f"skimage.data.{name}() returned dtype {arr.dtype}, expected uint8")
    return Image.fromarray(arr).convert("RGB")


def _square(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


def sample_photos(size: int = 224, names: tuple[str, ...] | list[str] = PHOTO_NAMES) -> list[Image.Image]:
    """The scikit-image photos `names` as RGB PIL images, center-cropped square, size x size."""
    size = _check_count("sample_photos size", size, 1)
    return [_square(_load_photo(name), size) for name in names]


class PhotoPatches(Dataset):
    """Random square crops (2-100% of the photo's area) of the scikit-image photos,
    resized to img_size: an unlabelled set of real images for pre-training (label 0).

    Crop i is fixed by (seed, split, i), like `SyntheticShapes`.
    """

    labelled = False  # `num_classes_of` refuses it as a classification set

    def __init__(
        self,
        n: int,
        img_size: int = 32,
        seed: int = 0,
        transform: Transform = None,
        *,
        split: str = "train",
        names: tuple[str, ...] | list[str] = PHOTO_NAMES,
    ) -> None:
        self.n = _check_count("PhotoPatches n", n, 1)
        self.img_size = _check_count("PhotoPatches img_size", img_size, 1)
        self.seed = _check_count("PhotoPatches seed", seed, 0)
        self.split = split
        self._split_code = _split_code(split)
        self.transform = transform
        self.names = tuple(names)
        if not self.names:
            raise DataError("PhotoPatches needs at least one photo name")
        for name in self.names:  # load now: fail at construction, not in a worker
            _load_photo(name)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[Any, int]:
        index = _check_index(index, self.n, "PhotoPatches")
        rng = _item_rng(self.seed, self._split_code, index)
        photo = _load_photo(self.names[int(rng.integers(len(self.names)))])
        w, h = photo.size
        side = max(1, int(round(min(w, h) * np.sqrt(rng.uniform(0.02, 1.0)))))
        left = int(rng.integers(0, w - side + 1))
        top = int(rng.integers(0, h - side + 1))
        img = photo.crop((left, top, left + side, top + side))
        img = img.resize((self.img_size, self.img_size), Image.Resampling.BICUBIC)
        if self.transform is not None:
            img = self.transform(img)
        return img, 0

    def __repr__(self) -> str:
        return f"PhotoPatches(n={self.n}, img_size={self.img_size}, seed={self.seed}, split={self.split!r})"
