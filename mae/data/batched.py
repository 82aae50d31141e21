"""The ``batched`` input path: a small in-memory set held as one uint8 tensor and augmented a batch at a time.

For the embedded sets (digits, synthetic, photos; ``mae pretrain --input_path batched``). The per-image
path (``pil``) spends a third of a cpu-scale step outside the model: per sample a seeded RNG context,
a PIL crop + bicubic resize of a 16 px image, a flip, a tensor conversion and the collation. Here:

- the set's images (exactly the PIL images the per-image path starts from, ``img_size`` square) are
  rendered once into ``images`` (N, 3, S, S) uint8;
- each sample's augmentation parameters come from a counter-based hash of (seed, epoch, index)
  (:func:`sample_uniforms`): no RNG state, nothing shared between samples, so a batch is the same in
  any process, with any worker count, and after a resume from the middle of an epoch (the sampler
  restores the order, the hash the parameters). The global RNGs are never touched;
- a batch is cropped and resized in one go (:func:`resized_crops`): separable resampling with PIL's
  bicubic kernel (a = -0.5, widened when shrinking like PIL's antialias), horizontal pass then
  vertical, each rounded to 8 bits like PIL; then flipped. ``NormalizeBatch`` finishes it as on the
  per-image path.

Distribution: the crop boxes follow torchvision's ``RandomResizedCrop.get_params`` (10 tries of area
and log-aspect, then the centre fallback) and the flip is p = 0.5, as in ``pretrain_transform``; the
pixels agree with PIL's to about one 8-bit level for the same box. The random *stream* differs from
the per-image path's (another generator), so a run's numbers differ from the ``pil`` path's as another
seed's would.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError
from .transforms import CROP_RATIO, EVAL_CROP_PCT, PRETRAIN_AUGMENTATIONS

__all__ = ["BatchedImageSet", "batched_embedded_set", "collate_batched", "crop_params", "resized_crops",
           "sample_uniforms", "BATCHED_AUGMENTATIONS", "EMBEDDED_SPECS"]

#: Table 1e rows the batched path implements (colour jitter needs the per-image path)
BATCHED_AUGMENTATIONS = ("none", "crop_fixed", "crop_rand")
#: dataset specs held in memory (mae.data.build_dataset names)
EMBEDDED_SPECS = ("embedded", "synthetic", "digits", "photos")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
#: uniforms drawn per sample: 10 (area, log-aspect) tries, top, left, flip
N_UNIFORMS = 23


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's output function (a bijection of uint64 with good avalanche)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def sample_uniforms(seed: int, epoch: int, indices: Sequence[int] | np.ndarray, n: int = N_UNIFORMS) -> np.ndarray:
    """(len(indices), n) float64 uniforms in [0, 1), a pure function of (seed, epoch, index, column)."""
    for name, value in (("seed", seed), ("epoch", epoch)):
        if value < 0:
            raise DataError(f"sample_uniforms: {name} must be >= 0, got {value}")
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and idx.min() < 0:
        raise DataError("sample_uniforms: indices must be >= 0")
    with np.errstate(over="ignore"):
        key = _mix(np.full(idx.shape, np.uint64(seed), dtype=np.uint64) + _GOLDEN)
        key = _mix((key ^ np.uint64(epoch)) + _GOLDEN)
        key = _mix((key ^ idx.astype(np.uint64)) + _GOLDEN)
        counters = (np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN)[None, :]
        bits = _mix(key[:, None] + counters)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def crop_params(u: np.ndarray, height: int, width: int, scale: tuple[float, float],
                ratio: tuple[float, float] = CROP_RATIO) -> np.ndarray:
    """(B, 4) int64 boxes (top, left, h, w): torchvision's ``RandomResizedCrop.get_params`` for each row of
    uniforms ``u`` (columns 0-19: ten (area, log-aspect) tries, 20-21: top, left), vectorised."""
    b = u.shape[0]
    area = height * width
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, 0:20:2])  # (B, 10)
    aspect = np.exp(lo + (hi - lo) * u[:, 1:20:2])
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)  # Python's round: half to even, like np.rint
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = np.argmax(ok, axis=1)
    found = ok[np.arange(b), first]
    hh, ww = h[np.arange(b), first], w[np.arange(b), first]
    top = np.floor(u[:, 20] * (height - hh + 1)).astype(np.int64)
    left = np.floor(u[:, 21] * (width - ww + 1)).astype(np.int64)
    # torchvision's fallback: the central crop of the whole image, clamped to the aspect range
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    boxes = np.stack([top, left, hh, ww], axis=1)
    boxes[~found] = ((height - fh) // 2, (width - fw) // 2, fh, fw)
    return boxes


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    """PIL's bicubic kernel (a = -0.5), support 2."""
    a = -0.5
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resize_matrices(start: torch.Tensor, length: torch.Tensor, out: int, size: int) -> torch.Tensor:
    """(B, out, size) float32 weights resampling source pixels [start, start + length) of a line of ``size``
    pixels to ``out`` pixels, as PIL resizes a crop (bicubic, support widened by the scale when shrinking)."""
    start, length = start.to(torch.float64)[:, None, None], length.to(torch.float64)[:, None, None]
    scale = length / out
    fscale = scale.clamp(min=1.0)
    center = start + (torch.arange(out, dtype=torch.float64)[None, :, None] + 0.5) * scale
    src = torch.arange(size, dtype=torch.float64)[None, None, :]
    w = _bicubic((src + 0.5 - center) / fscale)
    w = torch.where((src >= start) & (src < start + length), w, torch.zeros_like(w))
    return (w / w.sum(-1, keepdim=True)).to(torch.float32)


def _round8(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5).clamp_(0, 255)  # PIL: fixed point, + half, clip to 8 bits


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, out: int, resize_to: int | None = None) -> torch.Tensor:
    """(B, 3, out, out) uint8: crop ``boxes`` (B, 4: top, left, h, w) of ``images`` (B, 3, H, W) uint8, resized to
    ``out`` (horizontal pass, 8-bit rounding, vertical pass, 8-bit rounding: PIL's order).

    ``resize_to``: instead, resize the whole image to ``resize_to`` and take the ``out`` x ``out`` window at
    (top, left) of that (``crop_fixed``: Resize + RandomCrop)."""
    _, _, height, width = images.shape
    x = images.to(torch.float32)
    if resize_to is None:
        wy = resize_matrices(boxes[:, 0], boxes[:, 2], out, height)
        wx = resize_matrices(boxes[:, 1], boxes[:, 3], out, width)
    else:
        b = len(boxes)
        zero, full_h, full_w = torch.zeros(b), torch.full((b,), height), torch.full((b,), width)
        rows = boxes[:, 0][:, None] + torch.arange(out)[None, :]
        cols = boxes[:, 1][:, None] + torch.arange(out)[None, :]
        wy = torch.gather(resize_matrices(zero, full_h, resize_to, height), 1, rows[:, :, None].expand(-1, -1, height))
        wx = torch.gather(resize_matrices(zero, full_w, resize_to, width), 1, cols[:, :, None].expand(-1, -1, width))
    x = _round8(torch.einsum("bchw,bow->bcho", x, wx))
    x = _round8(torch.einsum("bkh,bchw->bckw", wy, x))
    return x.to(torch.uint8)


class BatchedImageSet(Dataset):
    """An in-memory image set (``images`` (N, 3, S, S) uint8, ``labels``) augmented a batch at a time.

    ``seeded_batch(indices, seed, epoch)`` -> ``(uint8 (B, 3, out, out), int64 labels (B,))``: what
    :class:`~mae.data.SeededDataset` calls for a whole batch (``__getitems__``) and for one item; used
    unwrapped, ``self[i]`` is sample i of seed 0, epoch 0.
    """

    def __init__(self, images: torch.Tensor, labels: Sequence[int] | torch.Tensor, *, img_size: int,
                 augmentation: str = "crop_rand", source: str = "", classes: Sequence[str] | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise DataError(f"BatchedImageSet needs uint8 images (N, 3, H, W), got {images.dtype} "
                            f"{tuple(images.shape)}")
        if augmentation not in BATCHED_AUGMENTATIONS:
            raise DataError(f"the batched input path implements the augmentations {', '.join(BATCHED_AUGMENTATIONS)}; "
                            f"{augmentation!r} needs --input_path pil")
        self.images = images.contiguous()
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        if len(self.labels) != len(self.images):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.img_size, self.augmentation, self.source = int(img_size), augmentation, source
        self.spec = PRETRAIN_AUGMENTATIONS[augmentation]
        self.classes = list(classes) if classes is not None else None
        if self.classes is not None:
            self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.images)

    def boxes_and_flips(self, indices: Sequence[int], seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's crop box (B, 4: top, left, h, w; for crop_fixed the window in the resized image) and flip."""
        u = sample_uniforms(seed, epoch, indices)
        _, _, height, width = self.images.shape
        if self.spec.crop == "random_resized":
            boxes = crop_params(u, height, width, tuple(self.spec.crop_scale))
        elif self.spec.crop == "fixed":  # Resize(int(S / 0.875)) + RandomCrop(S)
            side = int(self.img_size / EVAL_CROP_PCT)
            off = np.floor(u[:, 20:22] * (side - self.img_size + 1)).astype(np.int64)
            boxes = np.concatenate([off, np.full((len(u), 2), self.img_size)], axis=1)
        else:  # "resize": the whole image
            boxes = np.tile(np.array([[0, 0, height, width]]), (len(u), 1))
        flips = u[:, 22] < 0.5 if self.spec.hflip else np.zeros(len(u), dtype=bool)
        return torch.from_numpy(boxes.astype(np.int64)), torch.from_numpy(flips)

    def seeded_batch(self, indices: Sequence[int], seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        boxes, flips = self.boxes_and_flips(idx.tolist(), seed, epoch)
        imgs = self.images[idx]
        if self.spec.crop == "fixed":
            side = int(self.img_size / EVAL_CROP_PCT)
            # Resize's shorter side (square images here) then the window
            x = resized_crops(imgs, boxes, self.img_size, resize_to=side)
        else:
            x = resized_crops(imgs, boxes, self.img_size)
        x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
        return x, self.labels[idx]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        x, y = self.seeded_batch([index % n], 0, 0)
        return x[0], int(y[0])

    def __repr__(self) -> str:
        return (f"BatchedImageSet({self.source or 'images'}, n={len(self)}, img_size={self.img_size}, "
                f"augmentation={self.augmentation!r})")


def collate_batched(batch: Any) -> list[torch.Tensor]:
    """``collate_fn`` of the batched path: the batch arrives whole from ``SeededDataset.__getitems__``."""
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], torch.Tensor) and batch[0].dim() == 4:
        return [batch[0], batch[1]]
    from torch.utils.data import default_collate  # a list of single items (a base without seeded_batch)
    return default_collate(batch)


def is_embedded_spec(spec: str | None) -> bool:
    name = "embedded" if spec is None else str(spec).strip()
    return name == "embedded" or any(name == s or name.startswith(s + ":") for s in EMBEDDED_SPECS)


def batched_embedded_set(spec: str | None, *, split: str = "train", img_size: int = 32, seed: int = 0,
                         augmentation: str = "crop_rand") -> BatchedImageSet:
    """The embedded set ``spec`` (see :func:`mae.data.build_dataset`) rendered once into a :class:`BatchedImageSet`:
    the very images the per-image path starts from."""
    from .builder import build_dataset

    if not is_embedded_spec(spec):
        raise DataError(f"--input_path batched holds an embedded set in memory ({', '.join(EMBEDDED_SPECS)}[:N]); "
                        f"got --data {spec!r} (use --input_path pil for image folders)")
    base = build_dataset(spec, split=split, img_size=img_size, seed=seed, transform=None)
    arrays, labels = [], []
    for i in range(len(base)):
        img, label = base[i]
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        if arr.shape[:2] != (img_size, img_size):
            raise DataError(f"{base!r} item {i} has size {arr.shape[:2]}, expected {img_size} x {img_size}")
        arrays.append(arr)
        labels.append(int(label))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return BatchedImageSet(images, labels, img_size=img_size, augmentation=augmentation, source=repr(base),
                           classes=getattr(base, "classes", None))
