"""Datasets, transforms and samplers of the MAE harness.

- `build_dataset(spec, split=...)`: the one entry point (embedded sets, class folders).
- `SafeImageFolder`, `ListDataset`: ImageNet folders, iNaturalist / Places lists (Table 6),
  with early errors (`DataError`) and corrupt-image skipping.
- `SyntheticShapes`, `Digits`, `PhotoPatches`, `sample_photos`: no-download data.
- `pretrain_transform` (Table 1e rows), `finetune_transform`, `linprobe_transform`,
  `eval_transform`.
- `ResumableSampler`, `SeededDataset`: reproducible order and augmentation across resume
  and worker counts.
"""

from .builder import build_dataset, num_classes_of
from .embedded import FILLS, PHOTO_NAMES, SHAPES, Digits, PhotoPatches, SyntheticShapes, sample_photos
from .errors import DataError
from .folder import IMG_EXTENSIONS, SafeImageFolder
from .lists import LIST_FORMATS, ListDataset
from .robust import RobustImageDataset, UnreadableImageWarning
from .sampler import ResumableSampler, SeededDataset, isolated_rng, sample_seed
from .transforms import (
    COLOR_JITTER,
    DEFAULT_PRETRAIN_AUGMENTATION,
    EVAL_CROP_PCT,
    FINETUNE_RAND_AUG,
    FINETUNE_RE_PROB,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    LINPROBE_CROP_SCALE,
    LINPROBE_CROPS,
    PRETRAIN_AUGMENTATIONS,
    PRETRAIN_CROP_SCALE,
    AugmentationSpec,
    NormalizeBatch,
    ReleaseRandomResizedCrop,
    eval_transform,
    finetune_transform,
    linprobe_transform,
    pretrain_transform,
)

__all__ = [
    "DataError",
    "UnreadableImageWarning",
    "build_dataset",
    "num_classes_of",
    "SafeImageFolder",
    "IMG_EXTENSIONS",
    "ListDataset",
    "LIST_FORMATS",
    "RobustImageDataset",
    "SyntheticShapes",
    "SHAPES",
    "FILLS",
    "Digits",
    "PhotoPatches",
    "PHOTO_NAMES",
    "sample_photos",
    "ResumableSampler",
    "SeededDataset",
    "sample_seed",
    "isolated_rng",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "EVAL_CROP_PCT",
    "PRETRAIN_CROP_SCALE",
    "LINPROBE_CROP_SCALE",
    "LINPROBE_CROPS",
    "ReleaseRandomResizedCrop",
    "COLOR_JITTER",
    "FINETUNE_RAND_AUG",
    "FINETUNE_RE_PROB",
    "AugmentationSpec",
    "PRETRAIN_AUGMENTATIONS",
    "DEFAULT_PRETRAIN_AUGMENTATION",
    "pretrain_transform",
    "NormalizeBatch",
    "eval_transform",
    "finetune_transform",
    "linprobe_transform",
]
