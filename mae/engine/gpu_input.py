"""JPEG files -> pre-training batches, decoded and augmented on the GPU (MAE Sec. 4 augmentation).

The paper's pre-training augmentation is RandomResizedCrop(scale 0.2-1, bicubic) + horizontal flip
(Table 1e, ``crop_rand``). A PIL loader spends most of its CPU time decoding full JPEGs; here the
work is split so that the CPU does only what is cheap:

1. DataLoader workers read each file's bytes and its header size, and draw the crop box and the flip
   with torchvision's own ``RandomResizedCrop.get_params`` and ``torch.rand(1) < 0.5``, in the same
   order as :func:`mae.data.pretrain_transform` - under the same seed (``SeededDataset``) the boxes and
   flips are the ones the PIL pipeline would use. Unreadable headers are skipped like every other
   dataset of the harness (:class:`~mae.data.robust.RobustImageDataset`).
2. :class:`BatchDecoder` decodes the batch (``torchvision.io.decode_jpeg(..., device='cuda')``, batched,
   nvJPEG's hardware decoder where the GPU has one; non-JPEG or odd files fall back to the CPU), crops,
   resizes with antialiased bicubic (PIL's filter), rounds to 8 bits like PIL, flips and normalises.
   On a CPU device the same code runs with CPU decoding (tests, machines without nvJPEG).
3. :class:`PrefetchLoader` runs (2) in a background thread on its own CUDA stream, ``depth`` batches
   ahead of the training step.

Batches are ``(imgs, labels)``: float32 (N, 3, S, S) normalised with the ImageNet mean/std, like the
PIL pipeline's. :func:`trainer_hooks` gives the dataset, ``collate_fn`` and ``batch_transform`` that
plug this path into :class:`mae.engine.loop.Trainer`.
"""
from __future__ import annotations

import io
import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from mae.data.errors import DataError
from mae.data.robust import RobustImageDataset, UnreadableImageWarning
from mae.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PRETRAIN_AUGMENTATIONS

JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class CropSpec:
    """RandomResizedCrop + flip + normalisation of one pre-training augmentation (Table 1e)."""

    img_size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD

    def __post_init__(self) -> None:
        if self.img_size <= 0:
            raise ValueError(f"img_size must be positive, got {self.img_size}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")

    @classmethod
    def from_augmentation(cls, name: str = "crop_rand", img_size: int = 224) -> CropSpec:
        """The spec of a Table 1e row; only the random-resized-crop rows without colour jitter run here."""
        spec = PRETRAIN_AUGMENTATIONS.get(name)
        if spec is None:
            raise ValueError(f"unknown augmentation {name!r}; valid: {', '.join(PRETRAIN_AUGMENTATIONS)}")
        if spec.crop != "random_resized" or spec.color_jitter is not None:
            raise ValueError(f"the GPU input path implements RandomResizedCrop + flip only; {name!r} "
                             f"({spec.paper_label}) needs the PIL pipeline (mae.data.pretrain_transform)")
        return cls(img_size=img_size, scale=tuple(spec.crop_scale), hflip=spec.hflip)


# ------------------------------------------------------------------------------- worker side
@dataclass
class EncodedImage:
    """A file's undecoded bytes (uint8 tensor) and the image size read from its header."""

    data: torch.Tensor
    height: int
    width: int
    path: str

    @property
    def is_jpeg(self) -> bool:
        return bytes(self.data[:3].tolist()) == JPEG_MAGIC


def load_encoded(path: str) -> EncodedImage:
    """Read the bytes of ``path`` and parse its header (no pixel decoding; raises on a bad header)."""
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise OSError(f"{path}: empty file")
    with Image.open(io.BytesIO(raw)) as img:  # header only
        width, height = img.size
    if width <= 0 or height <= 0:
        raise ValueError(f"{path}: header gives size {width}x{height}")
    return EncodedImage(torch.frombuffer(bytearray(raw), dtype=torch.uint8), height, width, path)


@dataclass
class EncodedSample:
    """One training sample before decoding: bytes, crop box (top, left, h, w) and flip."""

    image: EncodedImage
    box: tuple[int, int, int, int]
    flip: bool


class CropSampler:
    """Draws the crop box and flip of a sample exactly as ``pretrain_transform`` would (same RNG calls)."""

    def __init__(self, spec: CropSpec):
        self.spec = spec

    def __call__(self, image: EncodedImage) -> EncodedSample:
        shape_only = torch.empty(1, 1, 1).expand(1, image.height, image.width)  # get_params reads the shape
        box = T.RandomResizedCrop.get_params(shape_only, list(self.spec.scale), list(self.spec.ratio))
        flip = bool(torch.rand(1) < 0.5) if self.spec.hflip else False  # RandomHorizontalFlip(p=0.5)
        return EncodedSample(image, tuple(int(v) for v in box), flip)


class EncodedImageDataset(RobustImageDataset):
    """(path, label) samples returned as :class:`EncodedSample` (unreadable headers are skipped)."""

    def __init__(self, samples: Sequence[tuple[str, int]], spec: CropSpec, *, source: str):
        super().__init__(samples, CropSampler(spec), source=source)
        self.spec = spec

    def load(self, path: str) -> EncodedImage:  # type: ignore[override]
        return load_encoded(path)


def encoded_image_folder(root: str | os.PathLike[str], spec: CropSpec) -> EncodedImageDataset:
    """The class folders of ``root`` (ImageNet layout, as :class:`~mae.data.SafeImageFolder` finds them)."""
    from mae.data.folder import SafeImageFolder

    folder = SafeImageFolder(root)
    return EncodedImageDataset(folder.samples, spec, source=os.fspath(root))


@dataclass
class EncodedBatch:
    """A collated batch of :class:`EncodedSample`. Not a tuple, so ``Trainer``'s ``move_to`` leaves it
    on the CPU for :class:`BatchDecoder` (nvJPEG reads its input from host memory)."""

    data: list[torch.Tensor]
    sizes: list[tuple[int, int]]
    is_jpeg: list[bool]
    boxes: torch.Tensor  # (N, 4) int64: top, left, height, width
    flips: torch.Tensor  # (N,) bool
    labels: torch.Tensor  # (N,) int64
    paths: list[str]

    def __len__(self) -> int:
        return len(self.data)


def collate_encoded(items: Sequence[tuple[EncodedSample, int]]) -> EncodedBatch:
    """``collate_fn`` for a DataLoader over :class:`EncodedImageDataset`."""
    if not items:
        raise ValueError("collate_encoded: empty batch")
    samples = [s for s, _ in items]
    return EncodedBatch(
        data=[s.image.data for s in samples],
        sizes=[(s.image.height, s.image.width) for s in samples],
        is_jpeg=[s.image.is_jpeg for s in samples],
        boxes=torch.tensor([s.box for s in samples], dtype=torch.int64),
        flips=torch.tensor([s.flip for s in samples], dtype=torch.bool),
        labels=torch.tensor([int(y) for _, y in items], dtype=torch.int64),
        paths=[s.image.path for s in samples],
    )


# ------------------------------------------------------------------------------- decode side
def _decode_cpu(data: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 on the CPU: torchvision's decoders, then PIL (CMYK, BMP, TIFF, ...)."""
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
            arr = torch.from_numpy(np.asarray(img.convert("RGB")).copy())
        return arr.permute(2, 0, 1).contiguous()


class BatchDecoder:
    """``EncodedBatch -> (imgs (N, 3, S, S) float32 normalised, labels)`` on ``device``.

    JPEGs are decoded on the GPU in one batched nvJPEG call when ``device`` is CUDA; everything else
    (and any file nvJPEG refuses) is decoded on the CPU and copied over. A file that no decoder can
    read is replaced by another image of the batch with an :class:`UnreadableImageWarning` naming it.
    """

    def __init__(self, spec: CropSpec, device: torch.device | str = "cpu"):
        self.spec = spec
        self.device = torch.device(device)
        self.mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1) * 255.0
        if self.device.type == "cuda":  # read later from PrefetchLoader's stream: finish the copies first
            torch.cuda.current_stream(self.device).synchronize()
        self.num_replaced = 0

    def decode(self, batch: EncodedBatch) -> list[torch.Tensor | None]:
        """Decoded (3, H, W) uint8 images on ``self.device``; None where no decoder could read the file."""
        out: list[torch.Tensor | None] = [None] * len(batch)
        on_gpu = self.device.type == "cuda"
        jpeg_idx = [i for i, j in enumerate(batch.is_jpeg) if j] if on_gpu else []
        if jpeg_idx:
            try:
                imgs = decode_jpeg([batch.data[i] for i in jpeg_idx], mode=ImageReadMode.RGB, device=self.device)
                for i, img in zip(jpeg_idx, imgs):
                    out[i] = img
            except RuntimeError:  # one bad/unsupported file fails the batched call: retry one by one
                for i in jpeg_idx:
                    try:
                        out[i] = decode_jpeg(batch.data[i], mode=ImageReadMode.RGB, device=self.device)
                    except RuntimeError:
                        pass
        for i in range(len(batch)):
            if out[i] is None:
                try:
                    out[i] = _decode_cpu(batch.data[i]).to(self.device, non_blocking=True)
                except (RuntimeError, OSError, ValueError, SyntaxError) as exc:
                    warnings.warn(f"skipping unreadable image {batch.paths[i]} ({type(exc).__name__}: {exc}); "
                                  "another image of the batch takes its place", UnreadableImageWarning, stacklevel=3)
        return out

    def __call__(self, batch: EncodedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, EncodedBatch):
            raise TypeError(f"BatchDecoder expects an EncodedBatch (collate_fn=collate_encoded), got {type(batch).__name__}")
        decoded = self.decode(batch)
        good = [i for i, d in enumerate(decoded) if d is not None]
        if not good:
            raise DataError(f"none of the {len(batch)} images of the batch could be decoded, e.g. {batch.paths[0]}")
        s = self.spec.img_size
        boxes = batch.boxes.tolist()
        crops = []
        for i in range(len(batch)):
            j = i if decoded[i] is not None else good[i % len(good)]
            if j != i:
                self.num_replaced += 1
            img = decoded[j]
            top, left, h, w = boxes[j]
            if tuple(img.shape[-2:]) != batch.sizes[j]:
                raise DataError(f"{batch.paths[j]}: decoded size {tuple(img.shape[-2:])} differs from its "
                                f"header size {batch.sizes[j]}")
            crop = img[:, top:top + h, left:left + w].unsqueeze(0).float()
            crops.append(F.interpolate(crop, size=(s, s), mode="bicubic", align_corners=False, antialias=True))
        x = torch.cat(crops).clamp_(0, 255).round_()  # PIL writes 8-bit pixels
        flips = batch.flips.to(self.device, non_blocking=True).view(-1, 1, 1, 1)
        x = torch.where(flips, x.flip(-1), x)
        x = x.sub_(self.mean).div_(self.std)  # == Normalize(mean, std)(ToTensor()) on the 8-bit crop
        return x, batch.labels.to(self.device, non_blocking=True)


# ------------------------------------------------------------------------------- prefetching
class _End:
    pass


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)


class PrefetchLoader:
    """Yields ``transform(batch)`` for each batch of ``loader``, prepared ``depth`` batches ahead.

    With ``background=True`` a thread runs ``transform`` (on its own CUDA stream when ``device`` is
    CUDA); the consumer's stream waits on an event per batch, and the tensors are recorded on it so the
    caching allocator never hands their memory out early. Errors in the thread re-raise in the consumer.
    """

    def __init__(self, loader: Iterable, transform: Callable[[Any], Any], device: torch.device | str,
                 depth: int = 2, background: bool = True):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.loader, self.transform = loader, transform
        self.device = torch.device(device)
        self.depth, self.background = depth, background

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        if not self.background:
            for batch in self.loader:
                yield self.transform(batch)
            return
        cuda = self.device.type == "cuda"
        q: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                stream = torch.cuda.Stream(self.device) if cuda else None
                with (torch.cuda.device(self.device) if cuda else nullcontext()), \
                        (torch.cuda.stream(stream) if cuda else nullcontext()):
                    for batch in self.loader:
                        out = self.transform(batch)
                        event = None
                        if cuda:
                            event = torch.cuda.Event()
                            event.record(stream)
                        if not put((out, event)):
                            return
                put(_End())
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                put(_Failed(exc))

        thread = threading.Thread(target=work, name="mae-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, _End):
                    return
                if isinstance(item, _Failed):
                    raise item.exc
                out, event = item
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    for t in _tensors(out):
                        t.record_stream(current)
                yield out
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get(timeout=0.05)
                except queue.Empty:
                    pass
            thread.join()


def trainer_hooks(root: str | os.PathLike[str], img_size: int, device: torch.device | str,
                  augmentation: str = "crop_rand") -> tuple[EncodedImageDataset, Callable, BatchDecoder]:
    """``(train_set, collate_fn, batch_transform)`` for ``Trainer(..., collate_fn=..., batch_transform=...)``:
    workers read bytes and draw crops, the main process decodes on ``device``; the step gets (imgs, labels)."""
    spec = CropSpec.from_augmentation(augmentation, img_size)
    return encoded_image_folder(root, spec), collate_encoded, BatchDecoder(spec, device)
