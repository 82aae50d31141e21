"""Transforms: Table 1e rows, eval / fine-tune / linear-probe recipes, determinism."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from mae.data import (
    EVAL_CROP_PCT,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    PRETRAIN_AUGMENTATIONS,
    NormalizeBatch,
    eval_transform,
    finetune_transform,
    linprobe_transform,
    pretrain_transform,
)

MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)


def noise_image(w=40, h=30, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def denorm(x):
    return x * STD + MEAN


def test_constants_are_imagenet_statistics():
    assert IMAGENET_DEFAULT_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_DEFAULT_STD == (0.229, 0.224, 0.225)
    assert EVAL_CROP_PCT == 0.875
    assert list(PRETRAIN_AUGMENTATIONS) == ["none", "crop_fixed", "crop_rand", "crop_rand_jitter"]
    assert PRETRAIN_AUGMENTATIONS["crop_rand"].crop_scale == (0.2, 1.0)


@pytest.mark.parametrize("name", list(PRETRAIN_AUGMENTATIONS))
@pytest.mark.parametrize("size", [16, 24])
def test_pretrain_output_shape(name, size):
    out = pretrain_transform(name, size)(noise_image())
    assert out.shape == (3, size, size) and out.dtype == torch.float32


def test_unknown_augmentation_lists_valid_names():
    with pytest.raises(ValueError, match="crop_rand_jitter"):
        pretrain_transform("autoaugment", 16)
    with pytest.raises(ValueError, match="img_size"):
        pretrain_transform("crop_rand", 0)


def test_normalization_of_a_constant_image():
    color = (200, 100, 50)
    img = Image.new("RGB", (37, 23), color)
    expected = (torch.tensor(color, dtype=torch.float32).view(3, 1, 1) / 255 - MEAN) / STD
    for t in [eval_transform(16)] + [pretrain_transform(n, 16) for n in ("none", "crop_fixed", "crop_rand")]:
        torch.manual_seed(0)
        out = t(img)
        assert torch.allclose(out, expected.expand(3, 16, 16), atol=1e-5)


@pytest.mark.parametrize("name", list(PRETRAIN_AUGMENTATIONS))
def test_pretrain_determinism_uses_only_torch_rng(name):
    img, t = noise_image(), pretrain_transform(name, 16)
    torch.manual_seed(3)
    random.seed(1)
    np.random.seed(1)
    a = t(img)
    torch.manual_seed(3)
    random.seed(2)  # Python's / numpy's RNG must not matter
    np.random.seed(2)
    b = t(img)
    assert torch.equal(a, b)
    outs = []
    for s in range(8):
        torch.manual_seed(s)
        outs.append(t(img))
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # it is random


def test_none_is_whole_image_resized_with_optional_flip():
    img = noise_image(40, 30)
    whole = T.Compose([T.Resize((16, 16), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor()])(img)
    t = pretrain_transform("none", 16)
    for s in range(6):
        torch.manual_seed(s)
        out = denorm(t(img))
        assert torch.allclose(out, whole, atol=1e-5) or torch.allclose(out, whole.flip(-1), atol=1e-5)


def test_crop_fixed_is_a_window_of_the_shorter_side_resize():
    img = noise_image(40, 30)
    size = 16
    short = int(size / 0.875)  # 18
    ref = T.Compose([T.Resize(short, interpolation=T.InterpolationMode.BICUBIC), T.ToTensor()])(img)
    assert ref.shape[1] == short  # shorter side (height 30 -> 18)
    t = pretrain_transform("crop_fixed", size)
    for s in range(6):
        torch.manual_seed(s)
        out = denorm(t(img))
        windows = [
            ref[:, i : i + size, j : j + size]
            for i in range(ref.shape[1] - size + 1)
            for j in range(ref.shape[2] - size + 1)
        ]
        assert any(
            torch.allclose(out, w, atol=1e-5) or torch.allclose(out, w.flip(-1), atol=1e-5) for w in windows
        )


def test_jitter_changes_colors_compared_with_crop_rand():
    img = noise_image()
    torch.manual_seed(0)
    plain = pretrain_transform("crop_rand", 16)(img)
    torch.manual_seed(0)
    jittered = pretrain_transform("crop_rand_jitter", 16)(img)
    assert not torch.allclose(plain, jittered)
    ops = [type(o).__name__ for o in pretrain_transform("crop_rand_jitter", 16).transforms]
    assert ops == ["RandomResizedCrop", "ColorJitter", "RandomHorizontalFlip", "ToTensor", "Normalize"]


def test_eval_transform_resizes_shorter_side_then_center_crops():
    # left half red, right half blue, 64x32: after resize (shorter side 36 -> 72x36) and
    # a 32x32 center crop, the left 16 columns are red and the right 16 blue.
    arr = np.zeros((32, 64, 3), dtype=np.uint8)
    arr[:, :32, 0] = 255
    arr[:, 32:, 2] = 255
    out = denorm(eval_transform(32)(Image.fromarray(arr)))
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out[:, :, :14], torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand(3, 32, 14), atol=0.02)
    assert torch.allclose(out[:, :, 18:], torch.tensor([0, 0, 1.0]).view(3, 1, 1).expand(3, 32, 14), atol=0.02)
    ops = eval_transform(224).transforms
    assert ops[0].size == 256 and ops[0].interpolation == T.InterpolationMode.BICUBIC
    assert ops[1].size == (224, 224)


def test_finetune_transform_recipe():
    t = finetune_transform(32, is_train=True)
    names = [type(o).__name__ for o in t.transforms]
    assert names[0] == "RandomResizedCropAndInterpolation"
    assert "RandAugment" in names and "ColorJitter" not in names
    erasing = t.transforms[-1]
    assert type(erasing).__name__ == "RandomErasing" and erasing.probability == 0.25 and erasing.mode == "pixel"
    randaug = t.transforms[names.index("RandAugment")]
    assert randaug.num_layers == 2 and all(op.magnitude == 9 and op.magnitude_std == 0.5 for op in randaug.ops)
    torch.manual_seed(0)
    random.seed(0)
    assert t(noise_image()).shape == (3, 32, 32)
    img = noise_image()
    assert torch.equal(finetune_transform(32, is_train=False)(img), eval_transform(32)(img))
    with pytest.raises(ValueError, match="re_mode"):
        finetune_transform(32, True, re_mode="zeros")
    with pytest.raises(ValueError, match="auto-augment"):
        finetune_transform(32, True, rand_aug="m9")


def test_linprobe_transform_recipe():
    t = linprobe_transform(24, is_train=True)
    rrc = t.transforms[0]
    assert isinstance(rrc, T.RandomResizedCrop) and rrc.scale == (0.08, 1.0)
    assert rrc.interpolation == T.InterpolationMode.BICUBIC
    assert isinstance(t.transforms[1], T.RandomHorizontalFlip)
    assert t(noise_image()).shape == (3, 24, 24)
    img = noise_image()
    assert torch.equal(linprobe_transform(24, is_train=False)(img), eval_transform(24)(img))


def test_randaugment_posterize_never_asks_pillow_for_zero_bits():
    """mstd0.5 can sample magnitude 10 -> posterize(0 bits), which Pillow >= 12 rejects."""
    from PIL import Image

    from mae.data.transforms import finetune_transform
    tf = finetune_transform(32, is_train=True)
    ops = [op for t in tf.transforms for op in getattr(t, "ops", []) if op.name == "PosterizeIncreasing"]
    assert ops, "the paper's RandAugment includes PosterizeIncreasing"
    op = ops[0]
    assert op.level_fn(10.0, op.hparams) == (1,)
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10.0, 0.0
    out = op(Image.new("RGB", (8, 8), (200, 100, 50)))  # raised ValueError before the clamp
    assert out.size == (8, 8)


def test_eval_transform_crop_pct_follows_official_rule_above_224():
    # official main_finetune.build_transform: crop_pct = 224/256 if input_size <= 224 else 1.0
    ops = eval_transform(448).transforms
    assert ops[0].size == 448 and ops[1].size == (448, 448)
    ops = eval_transform(224).transforms
    assert ops[0].size == 256
    assert eval_transform(448, crop_pct=0.875).transforms[0].size == 512  # an explicit ratio still wins


@pytest.mark.parametrize("aug", sorted(PRETRAIN_AUGMENTATIONS))
def test_uint8_crops_normalised_per_batch_are_bitwise_the_float_pipeline(aug):
    """pretrain_transform(normalize=False) + NormalizeBatch == per-image ToTensor + Normalize, bit for bit."""
    ref, u8 = [], []
    for i in range(5):
        img = noise_image(60 + 7 * i, 45 + 3 * i, seed=i)
        torch.manual_seed(100 + i)
        ref.append(pretrain_transform(aug, 24)(img))
        torch.manual_seed(100 + i)
        u8.append(pretrain_transform(aug, 24, normalize=False)(img))
    batch = torch.stack(u8)
    assert batch.dtype == torch.uint8 and batch.shape == (5, 3, 24, 24)
    labels = torch.arange(5)
    imgs, out_labels = NormalizeBatch()((batch, labels))
    assert imgs.dtype == torch.float32 and torch.equal(imgs, torch.stack(ref)) and out_labels is labels
    assert NormalizeBatch()([imgs, labels])[0] is imgs  # float batches pass through


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_normalize_batch_on_the_gpu_is_bitwise_the_cpu_pipeline():
    """All 256 byte values in each channel: CUDA's NormalizeBatch == per-image ToTensor + Normalize on the CPU."""
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, 16, 16).contiguous()
    ref = torch.stack([T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)(T.ToTensor()(
        Image.fromarray(img.permute(1, 2, 0).numpy()))) for img in levels])
    out = NormalizeBatch()(levels.cuda()).cpu()
    assert torch.equal(out, ref)
