"""The JPEG -> GPU input path (mae.engine.gpu_input), run on the CPU: same crops and flips as the PIL
pre-training transform under the same seed, pixels within a couple of 8-bit levels of it, fallbacks for
odd files, and a background prefetcher that keeps order and re-raises errors."""
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from mae.data import DataError, UnreadableImageWarning, pretrain_transform
from mae.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from mae.engine.gpu_input import (BatchDecoder, CropSampler, CropSpec, EncodedBatch, EncodedImageDataset,
                                  PrefetchLoader, collate_encoded, load_encoded, trainer_hooks)

LEVEL = 1 / 255 / min(IMAGENET_DEFAULT_STD)  # one 8-bit level, in normalised units (upper bound)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _photo(w: int, h: int, seed: int) -> Image.Image:
    """A smooth colour field with grain: compresses and resizes like a photograph."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    grain = rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(coarse, dtype=np.float64) + grain, 0, 255).astype(np.uint8))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    sizes = [(120, 90), (90, 120), (100, 100), (150, 80), (64, 200), (130, 97)]
    for i, (w, h) in enumerate(sizes):
        d = root / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        _photo(w, h, i).save(d / f"{i}.jpg", quality=92)
    return root


def _samples(root):
    return sorted((str(p), int(p.parent.name[1:])) for p in root.rglob("*.jpg"))


def _draw(ds, seeds):
    items = []
    for i, s in enumerate(seeds):
        torch.manual_seed(s)
        items.append(ds[i])
    return items


def test_crop_spec_of_the_paper_and_rejected_rows():
    spec = CropSpec.from_augmentation("crop_rand", 224)
    assert spec.scale == (0.2, 1.0) and spec.hflip and spec.img_size == 224
    with pytest.raises(ValueError, match="PIL pipeline"):
        CropSpec.from_augmentation("crop_rand_jitter")
    with pytest.raises(ValueError, match="PIL pipeline"):
        CropSpec.from_augmentation("crop_fixed")
    with pytest.raises(ValueError, match="unknown augmentation"):
        CropSpec.from_augmentation("mixup")


def test_crop_and_flip_are_the_ones_pretrain_transform_draws(folder):
    """Apply our box + flip with PIL ops: bitwise the output of pretrain_transform under the same seed."""
    spec = CropSpec(img_size=32)
    tf = pretrain_transform("crop_rand", 32)
    sampler = CropSampler(spec)
    finish = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
    flips = set()
    for i, (path, _) in enumerate(_samples(folder) * 3):
        img = Image.open(path).convert("RGB")
        torch.manual_seed(1000 + i)
        ref = tf(img)
        torch.manual_seed(1000 + i)
        s = sampler(load_encoded(path))
        top, left, h, w = s.box
        ours = img.crop((left, top, left + w, top + h)).resize((32, 32), Image.BICUBIC)
        if s.flip:
            ours = ours.transpose(Image.FLIP_LEFT_RIGHT)
        flips.add(s.flip)
        assert torch.equal(finish(ours), ref), path
    assert flips == {True, False}


def test_decoded_batch_is_within_two_levels_of_the_pil_pipeline(folder):
    spec = CropSpec(img_size=48)
    samples = _samples(folder)
    ds = EncodedImageDataset(samples, spec, source=str(folder))
    seeds = list(range(7, 7 + len(samples)))
    batch = collate_encoded(_draw(ds, seeds))
    assert isinstance(batch, EncodedBatch) and batch.boxes.shape == (len(samples), 4)
    imgs, labels = BatchDecoder(spec, "cpu")(batch)
    assert imgs.shape == (len(samples), 3, 48, 48) and imgs.dtype == torch.float32
    assert labels.tolist() == [y for _, y in samples]
    tf = pretrain_transform("crop_rand", 48)
    refs = []
    for (path, _), s in zip(samples, seeds):
        torch.manual_seed(s)
        refs.append(tf(Image.open(path).convert("RGB")))
    diff = (imgs - torch.stack(refs)).abs()
    assert diff.mean() < 0.5 * LEVEL and diff.max() < 3 * LEVEL


def test_worker_decode_gives_the_device_decode_batch_bitwise(folder):
    """decode_on="worker": the workers decode + crop, the device resizes; on a CPU device both paths
    run the same decoder and resize on the same crop, so the batches are identical."""
    spec = CropSpec(img_size=40)
    samples = _samples(folder)
    seeds = list(range(3, 3 + len(samples)))
    by_device = collate_encoded(_draw(EncodedImageDataset(samples, spec, source="x"), seeds))
    worker_items = _draw(EncodedImageDataset(samples, spec, source="x", decode_on="worker"), seeds)
    by_worker = collate_encoded(worker_items)
    assert all(by_worker.decoded) and not any(by_device.decoded) and not any(by_worker.is_jpeg)
    for (s, _), box in zip(worker_items, by_device.boxes.tolist()):  # the worker sends only the crop
        assert tuple(s.image.data.shape) == (3, box[2], box[3]) and s.box == (0, 0, box[2], box[3])
    assert torch.equal(by_worker.flips, by_device.flips)
    a, la = BatchDecoder(spec, "cpu")(by_device)
    b, lb = BatchDecoder(spec, "cpu")(by_worker)
    assert torch.equal(a, b) and torch.equal(la, lb)
    pinned = by_worker.pin_memory() if torch.cuda.is_available() else by_worker
    assert len(pinned) == len(by_worker)
    with pytest.raises(ValueError, match="decode_on"):
        EncodedImageDataset(samples, spec, source="x", decode_on="gpu")


def test_worker_decode_skips_an_unreadable_body(tmp_path, folder):
    """A file with a good header but a broken body: the worker's decode fails, the dataset skips it."""
    samples = _samples(folder)
    bad = tmp_path / "bad.jpg"
    raw = open(samples[0][0], "rb").read()
    bad.write_bytes(raw[: len(raw) // 3])
    ds = EncodedImageDataset([(str(bad), 0)] + samples, CropSpec(img_size=16), source="x", decode_on="worker")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample, label = ds[0]
    assert sample.image.path == samples[0][0] and label == samples[0][1]
    assert ds.bad_files == [str(bad)] and any(issubclass(w.category, UnreadableImageWarning) for w in caught)


def test_png_and_cmyk_files_fall_back_to_cpu_decoders(tmp_path, folder):
    src = Image.open(next(iter(folder.rglob("*.jpg")))).convert("RGB")
    png, cmyk = tmp_path / "a.png", tmp_path / "b.jpg"
    src.save(png)
    src.convert("CMYK").save(cmyk, quality=95)
    spec = CropSpec(img_size=16)
    ds = EncodedImageDataset([(str(png), 0), (str(cmyk), 1)], spec, source="x")
    batch = collate_encoded(_draw(ds, [1, 2]))
    assert batch.is_jpeg == [False, True]
    imgs, _ = BatchDecoder(spec, "cpu")(batch)
    assert imgs.shape == (2, 3, 16, 16) and torch.isfinite(imgs).all()


def test_unreadable_body_is_replaced_with_a_warning_and_all_bad_is_an_error(tmp_path, folder):
    good = next(iter(folder.rglob("*.jpg")))
    raw = good.read_bytes()
    bad = tmp_path / "trunc.jpg"
    bad.write_bytes(raw[:len(raw) // 3])  # header intact, body cut
    spec = CropSpec(img_size=16)
    ds = EncodedImageDataset([(str(good), 0), (str(bad), 1)], spec, source="x")
    batch = collate_encoded(_draw(ds, [1, 2]))
    dec = BatchDecoder(spec, "cpu")
    with pytest.warns(UnreadableImageWarning, match="trunc.jpg"):
        imgs, _ = dec(batch)
    assert imgs.shape == (2, 3, 16, 16) and dec.num_replaced == 1
    only_bad = collate_encoded([ds[1], ds[1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        with pytest.raises(DataError, match="trunc.jpg"):
            dec(only_bad)


def test_bad_headers_are_skipped_by_the_dataset(tmp_path, folder):
    bad = tmp_path / "junk.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg at all")
    good = str(next(iter(folder.rglob("*.jpg"))))
    ds = EncodedImageDataset([(str(bad), 0), (good, 1)], CropSpec(img_size=16), source="x")
    with pytest.warns(UnreadableImageWarning, match="junk.jpg"):
        sample, label = ds[0]
    assert sample.image.path == good and label == 1 and ds.num_skipped == 1


def test_wrong_batch_type_is_a_clear_error():
    with pytest.raises(TypeError, match="collate_encoded"):
        BatchDecoder(CropSpec(img_size=8))((torch.zeros(1), torch.zeros(1)))


def test_prefetch_keeps_order_and_reraises_errors():
    batches = list(range(7))
    fg = list(PrefetchLoader(batches, lambda b: torch.tensor([b * 2]), "cpu", depth=2, background=False))
    bg = list(PrefetchLoader(batches, lambda b: torch.tensor([b * 2]), "cpu", depth=2))
    assert [int(t) for t in bg] == [int(t) for t in fg] == [b * 2 for b in batches]

    def boom(b):
        if b == 3:
            raise RuntimeError("decoder exploded on batch 3")
        return b
    with pytest.raises(RuntimeError, match="batch 3"):
        list(PrefetchLoader(batches, boom, "cpu"))
    before = threading.active_count()
    it = iter(PrefetchLoader(range(10**6), lambda b: b, "cpu", depth=2))
    assert next(it) == 0
    it.close()  # an early stop ends the thread
    assert threading.active_count() == before
    with pytest.raises(ValueError, match="depth"):
        PrefetchLoader(batches, lambda b: b, "cpu", depth=0)


def test_trainer_runs_on_the_jpeg_path(tmp_path, folder):
    import dataclasses

    from mae.engine.loop import Trainer, TrainHooks
    from mae.models import create_mae
    from mae.protocols import pretrain

    train_set, collate, transform = trainer_hooks(folder, 32, "cpu")
    cfg = dataclasses.replace(pretrain.PRESETS["smoke"], output_dir=str(tmp_path / "run"), batch_size=3,
                              epochs=1, num_workers=0, progress=False)
    torch.manual_seed(0)
    model = create_mae("mae_vit_smoke")

    def step(m, batch):
        imgs, _ = batch
        assert imgs.shape == (3, 3, 32, 32)
        return m(imgs, mask_ratio=0.75)[0], {}
    result = Trainer(cfg, model, train_set, TrainHooks(step=step, collate=collate, prepare_batch=transform)).fit()
    assert result["finished"] and len(result["history"]) == 1


@pytest.mark.gpu
@needs_cuda
def test_gpu_decode_matches_cpu_decode(folder):
    spec = CropSpec(img_size=48)
    samples = _samples(folder)
    ds = EncodedImageDataset(samples, spec, source=str(folder))
    batch = collate_encoded(_draw(ds, range(len(samples))))
    cpu, _ = BatchDecoder(spec, "cpu")(batch)
    gpu, labels = BatchDecoder(spec, "cuda")(batch)
    assert gpu.is_cuda and labels.is_cuda
    diff = (gpu.cpu() - cpu).abs()
    assert diff.mean() < 1 * LEVEL and diff.max() < 8 * LEVEL  # nvJPEG's IDCT vs libjpeg-turbo's


@pytest.mark.gpu
@needs_cuda
def test_gpu_prefetch_on_a_side_stream(folder):
    spec = CropSpec(img_size=32)
    ds = EncodedImageDataset(_samples(folder), spec, source=str(folder))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_encoded)
    ref = [BatchDecoder(spec, "cpu")(b)[0] for b in _fixed(loader)]
    got = [x.cpu() for x, _ in PrefetchLoader(_fixed(loader), BatchDecoder(spec, "cuda"), "cuda")]
    assert len(got) == len(ref) and all((a - b).abs().mean() < LEVEL for a, b in zip(got, ref))


def _fixed(loader):
    torch.manual_seed(0)
    return [b for b in loader]
