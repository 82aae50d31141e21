"""Representation monitor for pre-training: kNN top-1 of the encoder's features every N epochs.

The MAE paper judges a pre-trained encoder only after training (fine-tuning, linear probing); this
monitor gives a cheap reading *during* pre-training, as self-supervised codebases report an online
kNN accuracy (DINO's ``eval_knn.py``, solo-learn's kNN callback). At each measurement the encoder, in
eval mode and without gradients, encodes unmasked images (``MaskedAutoencoderViT.encode``: all
patches, after the final norm) of a labelled set; the **bank** is a subsample of its train split,
the **queries** a subsample of its held-out (val) split. Two features per image:

- ``knn_cls``: the cls token;
- ``knn_mean``: the mean of the patch tokens (the paper's fine-tuning and Table 9 read pooled tokens).

The classifier is :mod:`mae.knn` (DINO's temperature-weighted vote of the 20 nearest neighbours by
cosine similarity, T = 0.07). ``linear=True`` adds ``lin_cls`` / ``lin_mean``: a ridge-regression
linear classifier fitted in closed form on the bank features at each measurement (so no training
state, no random draws), scored on the queries: a refitted probe, not a head trained online on the
training batches, which would change the training step.

RNG-neutral: the subsample is drawn once with a private generator, the images are rendered once and
cached, and every measurement runs with the torch (CPU and CUDA), numpy and python RNG states saved
and restored; the training DataLoader is never touched. A run with the monitor on therefore has
bitwise the training losses and weights of the run without it (tests/test_monitor.py).

Cost (bench/monitor_cost.py, bench/README.md; 2-core Xeon shared with other jobs, one thread): on the
demo recipe (``mae_vit_micro_patch4_32``, 32 px, embedded shapes, 78 steps of 64 per epoch) an unmasked
forward costs about what a whole masked training step does per image (4x the tokens). The default
1,000 bank + 500 query images take about 3 s per measurement, ~15% of a demo epoch (20-22 s in the
run of bench/README.md), so on the demo measure every 2 epochs (``--monitor_every 2``): ~7.5% of the
training time. Smaller banks are cheaper but blind at this scale: after 6 epochs the demo encoder is
only a few points above the 10% chance level (2,000 + 1,000 images: 10.6% at init, 14.2% at epoch 6,
cls token), and with 400 + 200 images (40 per class for 20 neighbours) the reading stays at chance.
Rendering and caching the images once at start: about 6 s for 1,500.
"""
from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mae.knn import K, TEMPERATURE, knn_top1

METRICS = ("knn_cls", "knn_mean")
LINEAR_METRICS = ("lin_cls", "lin_mean")


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the block with torch (CPU and initialised CUDA devices), numpy and python RNG states restored after."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def cache_images(dataset: Dataset, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, 3, H, W), labels (n,)) of ``n`` items of ``dataset`` drawn without replacement by a
    private generator from ``seed`` (all items, in order, when ``n`` covers the set)."""
    size = len(dataset)  # type: ignore[arg-type]
    if n >= size:
        idx = list(range(size))
    else:
        g = torch.Generator().manual_seed(seed)
        idx = sorted(torch.randperm(size, generator=g)[:n].tolist())
    items = [dataset[i] for i in idx]
    return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items], dtype=torch.int64)


@torch.no_grad()
def encoder_features(model: torch.nn.Module, imgs: torch.Tensor, batch_size: int, device: torch.device,
                     amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cls token (N, D), mean of the patch tokens (N, D)) of unmasked ``imgs``, float32 on ``device``."""
    cls, mean = [], []
    for x in imgs.split(batch_size):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            z = model.encode(x.to(device, non_blocking=True))
        cls.append(z[:, 0].float())
        mean.append(z[:, 1:].float().mean(dim=1))
    return torch.cat(cls), torch.cat(mean)


def ridge_top1(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
               num_classes: int, alpha: float = 1e-2) -> float:
    """Top-1 (percent) of a ridge-regression classifier on standardised features, fitted in closed form:
    ``W = (X^T X / N + alpha I)^-1 X^T Y / N`` with one-hot targets ``Y``; deterministic."""
    x = bank.double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    x = torch.cat([(x - mu) / sd, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
    y = torch.nn.functional.one_hot(bank_labels.long().to(x.device), num_classes).double()
    gram = x.T @ x / len(x) + alpha * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    w = torch.linalg.solve(gram, x.T @ y / len(x))
    q = queries.double()
    q = torch.cat([(q - mu) / sd, torch.ones(len(q), 1, dtype=q.dtype, device=q.device)], dim=1)
    return 100.0 * float(((q @ w).argmax(1).cpu() == query_labels.long().cpu()).double().mean())


class RepresentationMonitor:
    """kNN (and optionally ridge) top-1 of the encoder on a labelled bank / query pair; see the module doc.

    ``bank_set`` / ``query_set`` yield (normalised image tensor, label): the train and val splits of a
    labelled set under the eval transform. ``history`` maps epoch -> measured values.
    """

    def __init__(self, bank_set: Dataset, query_set: Dataset, num_classes: int, *, bank_size: int = 1000,
                 query_size: int = 500, k: int = K, temperature: float = TEMPERATURE, linear: bool = False,
                 batch_size: int = 256, seed: int = 0):
        if bank_size < 1 or query_size < 1:
            raise ValueError(f"monitor bank and query sizes must be >= 1, got {bank_size}, {query_size}")
        self.num_classes, self.k, self.temperature, self.linear = num_classes, k, temperature, linear
        self.batch_size = batch_size
        t0 = time.time()
        with preserved_rng():
            self.bank, self.bank_labels = cache_images(bank_set, bank_size, seed)
            self.queries, self.query_labels = cache_images(query_set, query_size, seed + 1)
        self.setup_s = time.time() - t0
        self.history: dict[int, dict[str, float]] = {}

    @property
    def metrics(self) -> tuple[str, ...]:
        return METRICS + (LINEAR_METRICS if self.linear else ())

    def measure(self, model: torch.nn.Module, device: torch.device | str = "cpu",
                amp_dtype: torch.dtype | None = None, epoch: int | None = None) -> dict[str, float]:
        """Encode bank and queries with ``model`` (eval mode, no grad, RNG states restored) and score them."""
        device = torch.device(device)
        t0 = time.time()
        was_training = model.training
        model.eval()
        try:
            with preserved_rng(), torch.no_grad():
                bank = encoder_features(model, self.bank, self.batch_size, device, amp_dtype)
                query = encoder_features(model, self.queries, self.batch_size, device, amp_dtype)
                out: dict[str, float] = {}
                for name, b, q in (("cls", bank[0], query[0]), ("mean", bank[1], query[1])):
                    out[f"knn_{name}"] = knn_top1(b, self.bank_labels, q, self.query_labels, self.num_classes,
                                                  self.k, self.temperature)
                    if self.linear:
                        out[f"lin_{name}"] = ridge_top1(b, self.bank_labels, q, self.query_labels, self.num_classes)
        finally:
            model.train(was_training)
        out["monitor_s"] = time.time() - t0
        if epoch is not None:
            self.history[epoch] = out
        return out

    def load_history(self, log_path: str | Path) -> None:
        """Earlier measurements from a run's ``log.txt`` (one JSON record per epoch; a resumed run)."""
        path = Path(log_path)
        if not path.is_file():
            return
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            values = {k: rec[k] for k in self.metrics if isinstance(rec.get(k), (int, float))}
            if values and isinstance(rec.get("epoch"), int):
                self.history[rec["epoch"]] = values

    def curves(self) -> dict[str, tuple[list[int], list[float]]]:
        """Per metric, (epochs numbered from 1, values) in epoch order, for plotting."""
        epochs = sorted(self.history)
        return {m: ([e + 1 for e in epochs if m in self.history[e]],
                    [self.history[e][m] for e in epochs if m in self.history[e]]) for m in self.metrics}


def is_due(epoch: int, every: int, epochs: int) -> bool:
    """Whether epoch ``epoch`` (from 0) is measured: every ``every`` epochs and after the last; never if 0."""
    return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == epochs)


def build_monitor(data: str | None, img_size: int, seed: int, **kw: Any) -> RepresentationMonitor:
    """The monitor on dataset spec ``data`` (mae.data.build_dataset): bank = its train split, queries = its
    val split, both under the eval transform; unlabelled sets raise :class:`mae.data.DataError`."""
    from mae.data import build_dataset, eval_transform, num_classes_of

    with preserved_rng():
        bank_set = build_dataset(data, split="train", transform=eval_transform(img_size), img_size=img_size, seed=seed)
        query_set = build_dataset(data, split="val", transform=eval_transform(img_size), img_size=img_size, seed=seed)
        num_classes = num_classes_of(bank_set)
    return RepresentationMonitor(bank_set, query_set, num_classes, seed=seed, **kw)
