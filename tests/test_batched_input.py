"""The batched input path of the embedded sets (mae/data/batched.py, ``--input_path batched``): per-sample
hashed parameters (deterministic given seed + epoch + index, resume bitwise), torchvision's crop
distribution, PIL's pixels to about one level, and the normalised output."""
import csv
import dataclasses
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as TF

from mae.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, DataError, NormalizeBatch, SeededDataset
from mae.data.batched import (BatchedImageSet, batched_embedded_set, collate_batched, crop_params, resized_crops,
                              sample_uniforms)
from mae.engine import checkpoint as ckpt
from mae.engine import loop
from mae.protocols import pretrain


@pytest.fixture(scope="module")
def digits16():
    return batched_embedded_set("digits", img_size=16)


def test_uniforms_are_a_function_of_seed_epoch_index():
    u = sample_uniforms(0, 3, [5, 7, 9])
    assert u.shape == (3, 23) and u.dtype == np.float64 and (u >= 0).all() and (u < 1).all()
    assert np.array_equal(u[1], sample_uniforms(0, 3, [7])[0])  # not the batch it is in
    assert np.array_equal(u, sample_uniforms(0, 3, [5, 7, 9]))
    for other in (sample_uniforms(1, 3, [5]), sample_uniforms(0, 4, [5]), sample_uniforms(0, 3, [6])):
        assert not np.array_equal(other[0], u[0])
    many = sample_uniforms(0, 0, range(20000))
    assert abs(many.mean() - 0.5) < 0.01 and abs(np.corrcoef(many[:, 0], many[:, 1])[0, 1]) < 0.03
    with pytest.raises(DataError):
        sample_uniforms(-1, 0, [0])


def _torchvision_boxes(n, height, width, scale, ratio=(3 / 4, 4 / 3), seed=0):
    torch.manual_seed(seed)
    img = torch.empty(1, height, width)
    return np.array([RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)])


def _tv_distance(a, b):
    """Total-variation distance between the empirical distributions of rows of a and b."""
    ka, kb = [tuple(r) for r in a], [tuple(r) for r in b]
    keys = set(ka) | set(kb)
    ca = {k: 0 for k in keys}
    cb = dict(ca)
    for k in ka:
        ca[k] += 1
    for k in kb:
        cb[k] += 1
    return 0.5 * sum(abs(ca[k] / len(ka) - cb[k] / len(kb)) for k in keys)


@pytest.mark.parametrize("size,scale", [(16, (0.2, 1.0)), (16, (0.08, 1.0)), (32, (0.2, 1.0))])
def test_crop_boxes_follow_torchvisions_random_resized_crop(size, scale):
    n = 20000
    ours = crop_params(sample_uniforms(0, 0, range(n)), size, size, scale)
    top, left, h, w = ours.T.astype(float)
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= size).all() and (left + w <= size).all()
    # the ranges: every box is h = round(sqrt(A / r)), w = round(sqrt(A * r)) of an area A in scale x the image
    # and an aspect r in (3/4, 4/3): the intervals that rounding leaves for A and r meet the ranges
    a_lo, a_hi = (h - 0.5) * (w - 0.5), (h + 0.5) * (w + 0.5)
    r_lo, r_hi = (w - 0.5) / (h + 0.5), (w + 0.5) / (h - 0.5)
    assert (a_hi >= scale[0] * size**2).all() and (a_lo <= scale[1] * size**2).all()
    assert (r_hi >= 3 / 4).all() and (r_lo <= 4 / 3).all()
    # the distribution: (h, w) pairs and positions as torchvision draws them, within sampling noise
    ref, ref2 = _torchvision_boxes(n, size, size, scale), _torchvision_boxes(n, size, size, scale, seed=1)
    noise = _tv_distance(ref[:, 2:], ref2[:, 2:])
    assert _tv_distance(ours[:, 2:], ref[:, 2:]) < 1.5 * noise + 0.01
    for col in range(4):
        se = ref[:, col].std() * math.sqrt(2 / n)
        assert abs(ours[:, col].mean() - ref[:, col].mean()) < 5 * se + 1e-9


def test_fallback_is_torchvisions_central_crop():
    # a wide image where no try fits: torchvision's fallback box for every sample
    u = sample_uniforms(0, 0, range(50))
    boxes = crop_params(u, 8, 64, (0.99, 1.0))
    ref = _torchvision_boxes(50, 8, 64, (0.99, 1.0))
    assert (boxes == ref[0]).all() and (ref == ref[0]).all()


def test_crops_match_pils_resized_crop(digits16):
    rng = np.random.default_rng(0)
    worst, diffs = 0, []
    for _ in range(200):
        i = int(rng.integers(len(digits16)))
        h, w = int(rng.integers(3, 17)), int(rng.integers(3, 17))
        top, left = int(rng.integers(0, 17 - h)), int(rng.integers(0, 17 - w))
        img = Image.fromarray(digits16.images[i].permute(1, 2, 0).numpy().copy())
        ref = np.asarray(TF.resized_crop(img, top, left, h, w, [16, 16], TF.InterpolationMode.BICUBIC))
        out = resized_crops(digits16.images[i:i + 1], torch.tensor([[top, left, h, w]]), 16)[0].permute(1, 2, 0)
        d = np.abs(out.numpy().astype(int) - ref.astype(int))
        worst, diffs = max(worst, int(d.max())), diffs + [d.mean()]
    assert worst <= 2 and np.mean(diffs) < 0.05
    # a shrinking crop (antialiased like PIL): a 32 px image to 16
    big = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1, 3, 32, 32), dtype=np.uint8))
    ref = np.asarray(TF.resized_crop(Image.fromarray(big[0].permute(1, 2, 0).numpy()), 2, 3, 28, 26, [16, 16],
                                     TF.InterpolationMode.BICUBIC))
    out = resized_crops(big, torch.tensor([[2, 3, 28, 26]]), 16)[0].permute(1, 2, 0).numpy()
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 2


def test_batches_are_deterministic_and_match_items(digits16):
    ds = SeededDataset(digits16, seed=3)
    ds.set_epoch(2)
    idx = [5, 900, 17, 5]
    before = (torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    imgs, labels = ds.__getitems__(idx)
    assert imgs.shape == (4, 3, 16, 16) and imgs.dtype == torch.uint8 and labels.dtype == torch.int64
    assert torch.equal(imgs[0], imgs[3])  # the same (seed, epoch, index): the same sample
    for k, i in enumerate(idx):
        x, y = ds[i]
        assert torch.equal(x, imgs[k]) and y == int(labels[k]) == digits16.labels[i]
    again, _ = ds.__getitems__([17, 900])
    assert torch.equal(again, imgs[[2, 1]])  # independent of the batch composition
    ds.set_epoch(3)
    assert not torch.equal(ds.__getitems__(idx)[0], imgs)
    after = (torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1])
    assert torch.equal(before[0], after[0]) and before[1] == after[1] and np.array_equal(before[2], after[2])


def test_normalised_output(digits16):
    ds = SeededDataset(digits16, seed=0)
    batch = collate_batched(ds.__getitems__(list(range(8))))
    x, y = NormalizeBatch()(batch)
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 and y.shape == (8,)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    assert torch.allclose(x, (batch[0].float() / 255 - mean) / std, atol=1e-6)


def test_flips_and_fixed_crops():
    imgs = torch.arange(2 * 3 * 16 * 16, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 3, 16, 16)
    none = BatchedImageSet(imgs.repeat(500, 1, 1, 1), [0] * 1000, img_size=16, augmentation="none")
    x, _ = none.seeded_batch(range(1000), 0, 0)
    same = (x == none.images).flatten(1).all(1)
    flipped = (x == none.images.flip(-1)).flatten(1).all(1)
    assert (same | flipped).all() and 0.45 < flipped.float().mean() < 0.55
    fixed = BatchedImageSet(imgs, [0, 1], img_size=16, augmentation="crop_fixed")
    boxes, _ = fixed.boxes_and_flips(range(2000), 0, 0)
    side = int(16 / 0.875)
    assert boxes[:, :2].min() == 0 and boxes[:, :2].max() == side - 16 and (boxes[:, 2:] == 16).all()
    assert fixed.seeded_batch([0, 1], 0, 0)[0].shape == (2, 3, 16, 16)


def test_refusals():
    with pytest.raises(DataError, match="pil"):
        BatchedImageSet(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), [0, 0], img_size=8, augmentation="crop_rand_jitter")
    with pytest.raises(DataError, match="embedded set"):
        batched_embedded_set("/no/such/folder", img_size=16)


def test_the_set_holds_the_per_image_paths_images():
    from mae.data import build_dataset
    b = batched_embedded_set("synthetic:20", img_size=16, seed=1)
    ref = build_dataset("synthetic:20", img_size=16, seed=1)
    assert len(b) == 20 and b.num_classes == ref.num_classes
    for i in (0, 7, 19):
        img, label = ref[i]
        assert np.array_equal(b.images[i].permute(1, 2, 0).numpy(), np.asarray(img)) and int(b.labels[i]) == label


# ------------------------------------------------------------------------------------------- in training
def _cfg(tmp_path, **kw):
    base = dataclasses.replace(pretrain.PRESETS["smoke"], output_dir=str(tmp_path / "run"), progress=False,
                               input_path="batched", data="synthetic:64", img_size=16, model="mae_vit_micro_patch4_32")
    return dataclasses.replace(base, **kw)


def _losses(run_dir):
    with open(Path(run_dir) / "train_log.csv") as f:
        return [(int(r["iteration"]), r["loss"]) for r in csv.DictReader(f)]


class _Crash(RuntimeError):
    pass


@pytest.mark.parametrize("workers", [0, 2])
def test_kill_mid_epoch_and_resume_is_bitwise_identical(tmp_path, monkeypatch, workers):
    common = dict(epochs=3, batch_size=8, warmup_epochs=1, ckpt_every_iters=1, num_workers=workers)
    ref = _cfg(tmp_path / "a", **common)
    pretrain.run(ref)
    full = _losses(ref.output_dir)
    assert len(full) == 3 * 8 and all(math.isfinite(float(v)) for _, v in full)

    class CrashingTrainer(loop.Trainer):
        def train_step(self, m, b):
            if self.total_iters >= 13:
                raise _Crash("killed")
            return super().train_step(m, b)

    cfg = _cfg(tmp_path / "b", **common)
    monkeypatch.setattr(pretrain, "Trainer", CrashingTrainer)
    with pytest.raises(_Crash):
        pretrain.run(cfg)
    monkeypatch.setattr(pretrain, "Trainer", loop.Trainer)
    pretrain.run(dataclasses.replace(cfg, resume="auto"))
    assert _losses(cfg.output_dir) == full
    a = ckpt.extract_state_dict(ckpt.load_checkpoint(Path(ref.output_dir) / "checkpoint-last.pth"))
    b = ckpt.extract_state_dict(ckpt.load_checkpoint(Path(cfg.output_dir) / "checkpoint-last.pth"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_batched_path_refuses_folders_and_jitter(tmp_path):
    with pytest.raises(DataError, match="embedded set"):
        pretrain.run(_cfg(tmp_path, data=str(tmp_path)))
    with pytest.raises(DataError, match="input_path pil"):
        pretrain.run(_cfg(tmp_path, augmentation="crop_rand_jitter"))
