"""Image transforms of every protocol of the paper.

- Pre-training (Sec. 4, Table 1e): random-size cropping + horizontal flip only
  (`pretrain_transform("crop_rand", ...)`), plus the three ablation rows of Table 1e.
- Fine-tuning (appendix A.2): RandAugment (9, 0.5) + random erasing 0.25, built with
  timm's `create_transform` exactly as the official release does (`finetune_transform`).
- Linear probing (appendix A.3): RandomResizedCrop + flip (`linprobe_transform`); the release's
  crop is its own `util/crop.RandomResizedCrop` (`ReleaseRandomResizedCrop`: one draw of area and
  aspect, clamped to the image), torchvision's (10 tries, centre fallback) is kept as an option.
- Evaluation: resize the shorter side to img_size / 0.875 (256 for 224), center crop
  (`eval_transform`); above 224 px the official code uses crop ratio 1.0 (resize to img_size).

Pre-training transforms are torchvision v1 transforms: their randomness comes only from
torch's global RNG (never Python's `random`), so seeding torch (as `SeededDataset`
does per sample) makes them deterministic. timm's RandAugment and RandomErasing also
draw from Python's `random`; `SeededDataset` seeds and restores that one too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

__all__ = [
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "EVAL_CROP_PCT",
    "PRETRAIN_CROP_SCALE",
    "LINPROBE_CROP_SCALE",
    "COLOR_JITTER",
    "FINETUNE_RAND_AUG",
    "FINETUNE_RE_PROB",
    "AugmentationSpec",
    "PRETRAIN_AUGMENTATIONS",
    "DEFAULT_PRETRAIN_AUGMENTATION",
    "pretrain_transform",
    "NormalizeBatch",
    "eval_transform",
    "eval_crop_pct",
    "finetune_transform",
    "linprobe_transform",
    "LINPROBE_CROPS",
    "ReleaseRandomResizedCrop",
]

ImageTransform = Callable[[Image.Image], torch.Tensor]

IMAGENET_DEFAULT_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Evaluation crop ratio: resize the shorter side to int(img_size / 0.875), then center crop.
EVAL_CROP_PCT: float = 0.875
#: RandomResizedCrop area range used for MAE pre-training (official release: scale=(0.2, 1.0)).
PRETRAIN_CROP_SCALE: tuple[float, float] = (0.2, 1.0)
#: RandomResizedCrop area range of the linear probe (torchvision's default, as in the release).
LINPROBE_CROP_SCALE: tuple[float, float] = (0.08, 1.0)
#: Aspect-ratio range of every RandomResizedCrop here (torchvision's default, as in the release).
CROP_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
#: Training crops of the linear probe: the release's util/crop.py, or torchvision's RandomResizedCrop.
LINPROBE_CROPS: tuple[str, ...] = ("release", "torchvision")
#: Brightness, contrast, saturation of the "crop + color jit" row of Table 1e.
COLOR_JITTER: tuple[float, float, float] = (0.4, 0.4, 0.4)
#: Fine-tuning recipe (appendix A.2, Table 9): RandAugment (9, 0.5), random erasing 0.25.
FINETUNE_RAND_AUG: str = "rand-m9-mstd0.5-inc1"
FINETUNE_RE_PROB: float = 0.25

_BICUBIC = T.InterpolationMode.BICUBIC


@dataclass(frozen=True)
class AugmentationSpec:
    """One row of Table 1e (data augmentation ablation of MAE pre-training).

    crop: "resize" (whole image resized to a square, no crop), "fixed" (resize the
    shorter side to int(img_size / 0.875), then a random crop of img_size x img_size:
    the classic fixed-size crop, 224 out of 256), or "random_resized" (RandomResizedCrop
    with `crop_scale`, bicubic).
    """

    name: str
    paper_label: str
    crop: str
    crop_scale: tuple[float, float] | None
    color_jitter: tuple[float, float, float] | None
    hflip: bool
    description: str


PRETRAIN_AUGMENTATIONS: dict[str, AugmentationSpec] = {
    s.name: s
    for s in (
        AugmentationSpec(
            "none", "none", "resize", None, None, True,
            "resize the whole image to img_size x img_size (bicubic, aspect not kept), "
            "random horizontal flip; no crop",
        ),
        AugmentationSpec(
            "crop_fixed", "crop, fixed size", "fixed", None, None, True,
            f"resize the shorter side to int(img_size / {EVAL_CROP_PCT}) (bicubic), random "
            "crop of img_size x img_size, random horizontal flip",
        ),
        AugmentationSpec(
            "crop_rand", "crop, rand size", "random_resized", PRETRAIN_CROP_SCALE, None, True,
            f"RandomResizedCrop(img_size, scale={PRETRAIN_CROP_SCALE}, bicubic), random "
            "horizontal flip (the paper's default)",
        ),
        AugmentationSpec(
            "crop_rand_jitter", "crop + color jit", "random_resized", PRETRAIN_CROP_SCALE,
            COLOR_JITTER, True,
            f"RandomResizedCrop(img_size, scale={PRETRAIN_CROP_SCALE}, bicubic), "
            f"ColorJitter{COLOR_JITTER}, random horizontal flip",
        ),
    )
}
DEFAULT_PRETRAIN_AUGMENTATION: str = "crop_rand"


def _check_size(img_size: int) -> int:
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size <= 0:
        raise ValueError(f"img_size must be a positive int, got {img_size!r}")
    return img_size


def _to_normalized_tensor() -> list[Callable]:
    return [T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]


def pretrain_transform(
    augmentation: str = DEFAULT_PRETRAIN_AUGMENTATION, img_size: int = 224, *, normalize: bool = True
) -> ImageTransform:
    """The pre-training transform of one Table 1e row (see `PRETRAIN_AUGMENTATIONS`).

    ``normalize=False`` ends with the 8-bit crop as a uint8 (3, S, S) tensor instead of the
    normalised float one: 4x less to collate, pin and copy; :class:`NormalizeBatch` then finishes
    the batch on the device with the very same float operations (bitwise-identical result).
    """
    _check_size(img_size)
    if augmentation not in PRETRAIN_AUGMENTATIONS:
        raise ValueError(
            f"unknown pre-training augmentation {augmentation!r}; "
            f"valid: {', '.join(PRETRAIN_AUGMENTATIONS)}"
        )
    spec = PRETRAIN_AUGMENTATIONS[augmentation]
    ops: list[Callable] = []
    if spec.crop == "resize":
        ops.append(T.Resize((img_size, img_size), interpolation=_BICUBIC))
    elif spec.crop == "fixed":
        ops += [
            T.Resize(int(img_size / EVAL_CROP_PCT), interpolation=_BICUBIC),
            T.RandomCrop(img_size),
        ]
    else:
        ops.append(T.RandomResizedCrop(img_size, scale=spec.crop_scale, interpolation=_BICUBIC))
    if spec.color_jitter is not None:
        ops.append(T.ColorJitter(*spec.color_jitter))
    if spec.hflip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose(ops + (_to_normalized_tensor() if normalize else [T.PILToTensor()]))


class NormalizeBatch:
    """``(uint8 imgs (N, 3, H, W), *rest) -> (float32 normalised imgs, *rest)``, on the batch's device.

    The operations of ``ToTensor`` + ``Normalize`` (``x.float().div(255)``, ``.sub_(mean).div_(std)``),
    done once per batch on the device instead of per image in the workers: the values are bitwise
    those of the per-image transforms (element-wise IEEE arithmetic in the same order).
    A float batch passes through unchanged, so the hook is safe on already-normalised data.
    """

    def __init__(self, mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
                 std: tuple[float, float, float] = IMAGENET_DEFAULT_STD):
        self.mean, self.std = tuple(mean), tuple(std)
        self._consts: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if device not in self._consts:
            f32 = dict(dtype=torch.float32, device=device)
            # 255 as a tensor on the device: CUDA turns division by a Python/CPU scalar into a multiplication
            # by its reciprocal (off by one ulp for about half the byte values); tensor / tensor divides exactly
            self._consts[device] = (torch.tensor(255.0, **f32), torch.tensor(self.mean, **f32).view(1, -1, 1, 1),
                                    torch.tensor(self.std, **f32).view(1, -1, 1, 1))
        return self._consts[device]

    def images(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x
        c255, mean, std = self._on(x.device)
        return x.to(torch.float32).div_(c255).sub_(mean).div_(std)

    def __call__(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return self.images(batch)
        return type(batch)((self.images(batch[0]), *batch[1:]))


def eval_crop_pct(img_size: int) -> float:
    """The official release's evaluation crop ratio: 224/256 up to 224 px, 1.0 above (e.g. ViT-H at 448)."""
    return EVAL_CROP_PCT if img_size <= 224 else 1.0


def eval_transform(img_size: int = 224, crop_pct: float | None = None) -> ImageTransform:
    """Resize the shorter side to int(img_size / crop_pct) (bicubic), center crop, normalize.

    ``crop_pct=None`` follows the official fine-tuning code: 0.875 (256 -> 224) for img_size <= 224,
    1.0 (resize to img_size, no border cropped) for larger inputs.
    """
    _check_size(img_size)
    if crop_pct is None:
        crop_pct = eval_crop_pct(img_size)
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return T.Compose(
        [T.Resize(int(img_size / crop_pct), interpolation=_BICUBIC), T.CenterCrop(img_size)]
        + _to_normalized_tensor()
    )


def finetune_transform(
    img_size: int,
    is_train: bool,
    *,
    rand_aug: str | None = FINETUNE_RAND_AUG,
    re_prob: float = FINETUNE_RE_PROB,
    re_mode: str = "pixel",
    re_count: int = 1,
    color_jitter: float | None = None,
    interpolation: str = "bicubic",
) -> ImageTransform:
    """Fine-tuning transform (appendix A.2): timm's RandAugment + random erasing for
    training (RandomResizedCrop 0.08-1, flip, as timm builds it); `eval_transform` otherwise.

    `rand_aug=None` disables RandAugment; `color_jitter` only acts without RandAugment
    (timm's rule), and the paper's recipe leaves it off.
    """
    _check_size(img_size)
    if not is_train:
        return eval_transform(img_size)
    if not 0.0 <= re_prob <= 1.0:
        raise ValueError(f"re_prob must be in [0, 1], got {re_prob}")
    if re_mode not in ("const", "rand", "pixel"):
        raise ValueError(f"re_mode must be one of const, rand, pixel; got {re_mode!r}")
    if rand_aug is not None and not rand_aug.startswith(("rand", "augmix", "original", "v0", "3a")):
        raise ValueError(f"unrecognised timm auto-augment string {rand_aug!r}, e.g. {FINETUNE_RAND_AUG!r}")
    from timm.data import create_transform

    tf = create_transform(
        input_size=img_size,
        is_training=True,
        color_jitter=color_jitter,
        auto_augment=rand_aug or None,
        interpolation=interpolation,
        re_prob=re_prob,
        re_mode=re_mode,
        re_count=re_count,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
    )
    _clamp_posterize_bits(tf)
    return tf


def _clamp_posterize_bits(transform: Any) -> None:
    """Keep RandAugment's PosterizeIncreasing at >= 1 bit.

    With ``mstd0.5`` a sampled magnitude can reach 10, which timm maps to posterize(0 bits): older
    Pillow returned a black image, Pillow >= 12 raises "bits must be between 1 and 8" in the middle of
    an epoch. One bit is the closest valid operation.
    """
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if getattr(op, "name", None) == "PosterizeIncreasing" and op.level_fn is not None:
                level_fn = op.level_fn
                op.level_fn = lambda level, hparams, _f=level_fn: (max(1, _f(level, hparams)[0]),)


class ReleaseRandomResizedCrop(torch.nn.Module):
    """The official release's ``util/crop.RandomResizedCrop`` (BYOL's TF crop), the linear probe's crop.

    One draw: area ``s * W * H`` with ``s ~ U(scale)``, aspect ``r = exp(U(log ratio))``;
    ``w = round(sqrt(area * r))``, ``h = round(sqrt(area / r))``, each clamped to the image; then a
    uniform position. No 10-try loop and no centre-crop fallback as in torchvision, so large draws
    are cut at the border: on a 500x375 image the mean crop covers ~0.52 of it (torchvision ~0.43).
    Random numbers come from torch's global RNG, in the order area, aspect, top, left.
    """

    def __init__(self, size: int, scale: tuple[float, float] = LINPROBE_CROP_SCALE,
                 ratio: tuple[float, float] = CROP_RATIO,
                 interpolation: T.InterpolationMode = _BICUBIC):
        super().__init__()
        if not (0.0 < scale[0] <= scale[1] and 0.0 < ratio[0] <= ratio[1]):
            raise ValueError(f"need 0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1], got {scale}, {ratio}")
        self.size = (_check_size(size),) * 2
        self.scale, self.ratio, self.interpolation = tuple(scale), tuple(ratio), interpolation

    @staticmethod
    def get_params(width: int, height: int, scale: tuple[float, float],
                   ratio: tuple[float, float]) -> tuple[int, int, int, int]:
        """(top, left, h, w) of one crop of a ``width`` x ``height`` image."""
        area = width * height * torch.empty(1).uniform_(scale[0], scale[1]).item()
        log_r = torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1])).item()
        aspect = math.exp(log_r)
        w = min(int(round(math.sqrt(area * aspect))), width)
        h = min(int(round(math.sqrt(area / aspect))), height)
        top = int(torch.randint(0, height - h + 1, size=(1,)).item())
        left = int(torch.randint(0, width - w + 1, size=(1,)).item())
        return top, left, h, w

    def forward(self, img: Any) -> Any:
        _, height, width = TF.get_dimensions(img)
        top, left, h, w = self.get_params(width, height, self.scale, self.ratio)
        return TF.resized_crop(img, top, left, h, w, list(self.size), self.interpolation, antialias=True)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"interpolation={self.interpolation.value})")


def linprobe_transform(img_size: int, is_train: bool, crop: str = "torchvision") -> ImageTransform:
    """Linear-probe transform (appendix A.3): a random resized crop (bicubic, scale 0.08-1) + flip for
    training, `eval_transform` otherwise.

    ``crop="release"`` is the official release's crop (`ReleaseRandomResizedCrop`, the paper presets');
    ``"torchvision"`` is torchvision's RandomResizedCrop (the small presets, which were measured with it).
    """
    _check_size(img_size)
    if crop not in LINPROBE_CROPS:
        raise ValueError(f"unknown linear-probe crop {crop!r}; valid: {', '.join(LINPROBE_CROPS)}")
    if not is_train:
        return eval_transform(img_size)
    if crop == "release":
        rrc: Callable = ReleaseRandomResizedCrop(img_size, scale=LINPROBE_CROP_SCALE, interpolation=_BICUBIC)
    else:
        rrc = T.RandomResizedCrop(img_size, scale=LINPROBE_CROP_SCALE, interpolation=_BICUBIC)
    return T.Compose([rrc, T.RandomHorizontalFlip()] + _to_normalized_tensor())
