"""JPEG files -> pre-training batches, decoded and augmented on the GPU (MAE Sec. 4 augmentation).

The paper's pre-training augmentation is RandomResizedCrop(scale 0.2-1, bicubic) + horizontal flip
(Table 1e, ``crop_rand``). A PIL loader spends most of its CPU time decoding full JPEGs and resizing;
here the work is split so that the CPU does only what is cheap:

1. DataLoader workers read each file's bytes and its header size, and draw the crop box and the flip
   with torchvision's own ``RandomResizedCrop.get_params`` and ``torch.rand(1) < 0.5``, in the same
   order as :func:`mae.data.pretrain_transform` - under the same seed (``SeededDataset``) the boxes and
   flips are the ones the PIL pipeline would use. Unreadable files are skipped like every other
   dataset of the harness (:class:`~mae.data.robust.RobustImageDataset`).
2. :class:`BatchDecoder` decodes the batch (``torchvision.io.decode_jpeg(..., device='cuda')``, batched,
   nvJPEG's hardware decoder where the GPU has one; non-JPEG or odd files fall back to the CPU), crops,
   resizes with antialiased bicubic (PIL's filter), rounds to 8 bits like PIL, flips and normalises.
   On a CPU device the same code runs with CPU decoding (tests, machines without nvJPEG).
3. :class:`PrefetchLoader` runs (2) in a background thread on its own CUDA stream, ``depth`` batches
   ahead of the training step.

``decode_on="worker"`` moves the decode (libjpeg-turbo) and the crop into the workers instead: they
send the uint8 crop, and the device only resizes, flips and normalises - the choice when the GPU's
JPEG decoder, not the CPU, is the slower of the two (the CPU does about half the work of a PIL
pipeline per image: no resize, no float conversion).

Batches are ``(imgs, labels)``: float32 (N, 3, S, S) normalised with the ImageNet mean/std, like the
PIL pipeline's. :func:`trainer_hooks` gives the dataset, ``collate_fn`` and ``batch_transform`` that
plug this path into :class:`mae.engine.loop.Trainer`.
"""
from __future__ import annotations

import dataclasses
import io
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from mae.data.errors import DataError
from mae.data.robust import RobustImageDataset, UnreadableImageWarning
from mae.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PRETRAIN_AUGMENTATIONS, NormalizeBatch
from mae.engine.prefetch import PrefetchLoader  # noqa: F401 - (3) of the module doc; re-exported

JPEG_MAGIC = b"\xff\xd8\xff"
DECODE_ON = ("device", "worker")


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
    """A file's undecoded bytes (uint8 tensor) and the image size read from its header; or, with
    ``decoded=True``, already decoded pixels (3, height, width) uint8."""

    data: torch.Tensor
    height: int
    width: int
    path: str
    decoded: bool = False

    @property
    def is_jpeg(self) -> bool:
        return not self.decoded and bytes(self.data[:3].tolist()) == JPEG_MAGIC


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


class WorkerCropSampler(CropSampler):
    """:class:`CropSampler` for a decoded image: draws the same box and flip, then cuts the crop out
    (a compact uint8 copy, cheap to send from the worker); the sample's box is then the whole crop."""

    def __call__(self, image: EncodedImage) -> EncodedSample:
        sample = super().__call__(image)
        top, left, h, w = sample.box
        crop = image.data[:, top:top + h, left:left + w].clone()
        return EncodedSample(EncodedImage(crop, h, w, image.path, decoded=True), (0, 0, h, w), sample.flip)


def _check_decode_on(decode_on: str) -> str:
    if decode_on not in DECODE_ON:
        raise ValueError(f"decode_on must be one of {DECODE_ON}, got {decode_on!r}")
    return decode_on


class EncodedImageDataset(RobustImageDataset):
    """(path, label) samples returned as :class:`EncodedSample` (unreadable files are skipped).

    ``decode_on="device"``: the sample holds the file's bytes (only the header is parsed here);
    ``"worker"``: the file is decoded here (libjpeg-turbo, PIL for other formats) and the sample holds
    the uint8 crop.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], spec: CropSpec, *, source: str,
                 decode_on: str = "device"):
        self.decode_on = _check_decode_on(decode_on)
        sampler = WorkerCropSampler(spec) if decode_on == "worker" else CropSampler(spec)
        super().__init__(samples, sampler, source=source)
        self.spec = spec

    def load(self, path: str) -> EncodedImage:  # type: ignore[override]
        image = load_encoded(path)
        if self.decode_on == "device":
            return image
        pixels = _decode_cpu(image.data)
        if tuple(pixels.shape[-2:]) != (image.height, image.width):
            raise ValueError(f"{path}: decoded size {tuple(pixels.shape[-2:])} differs from its header size "
                             f"{(image.height, image.width)}")
        return EncodedImage(pixels, image.height, image.width, path, decoded=True)


def encoded_image_folder(root: str | os.PathLike[str], spec: CropSpec,
                         decode_on: str = "device") -> EncodedImageDataset:
    """The class folders of ``root`` (ImageNet layout, as :class:`~mae.data.SafeImageFolder` finds them)."""
    from mae.data.folder import SafeImageFolder

    folder = SafeImageFolder(root)
    return EncodedImageDataset(folder.samples, spec, source=os.fspath(root), decode_on=decode_on)


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
    decoded: list[bool] = dataclasses.field(default_factory=list)  # data[i] holds pixels, not file bytes

    def __len__(self) -> int:
        return len(self.data)

    def pin_memory(self) -> EncodedBatch:
        """Called by a DataLoader with ``pin_memory=True``: page-locks decoded pixels for async copies."""
        data = [d.pin_memory() if dec else d for d, dec in zip(self.data, self.decoded or [False] * len(self))]
        return dataclasses.replace(self, data=data)


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
        decoded=[s.image.decoded for s in samples],
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
        self.normalize = NormalizeBatch(spec.mean, spec.std)
        self.num_replaced = 0

    def decode(self, batch: EncodedBatch) -> list[torch.Tensor | None]:
        """Decoded (3, H, W) uint8 images on ``self.device``; None where no decoder could read the file."""
        out: list[torch.Tensor | None] = [None] * len(batch)
        for i, dec in enumerate(batch.decoded):
            if dec:  # decoded (and cropped) by a worker
                out[i] = batch.data[i].to(self.device, non_blocking=True)
        on_gpu = self.device.type == "cuda"
        jpeg_idx = [i for i, j in enumerate(batch.is_jpeg) if j] if on_gpu else []
        if jpeg_idx:
            # torchvision allocates the outputs on this stream but decodes on a pool stream of its own that
            # does not wait for it: finish this stream's work first, so no block still being read (the
            # last batch's crops) is handed to nvJPEG to overwrite
            torch.cuda.current_stream(self.device).synchronize()
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
        x = torch.cat(crops).clamp_(0, 255).round_().to(torch.uint8)  # PIL writes 8-bit pixels
        flips = batch.flips.to(self.device, non_blocking=True).view(-1, 1, 1, 1)
        x = torch.where(flips, x.flip(-1), x)
        # the 8-bit crop through the very float ops of ToTensor + Normalize (the PIL pipeline's last step)
        return self.normalize.images(x), batch.labels.to(self.device, non_blocking=True)


def trainer_hooks(root: str | os.PathLike[str], img_size: int, device: torch.device | str,
                  augmentation: str = "crop_rand", decode_on: str = "device",
                  ) -> tuple[EncodedImageDataset, Callable, BatchDecoder]:
    """``(train_set, collate_fn, batch_transform)`` for the Trainer's ``TrainHooks(collate=..., prepare_batch=...)``:
    workers read bytes (``decode_on="worker"``: decode and crop too) and draw crops, the main process
    finishes the batch on ``device``; the step gets (imgs, labels)."""
    spec = CropSpec.from_augmentation(augmentation, img_size)
    return encoded_image_folder(root, spec, decode_on), collate_encoded, BatchDecoder(spec, device)
