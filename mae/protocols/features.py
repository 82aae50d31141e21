"""Frozen-feature cache for the linear probe's fast path (``mae linprobe --cache_features``).

The encoder is frozen in linear probing (Appendix A.3), so the feature entering the head of an image
depends only on the image. The fast path runs the encoder once over the train and val sets and
trains the head (BatchNorm1d without affine + Linear) on the stored features.

When it equals the full path: when the full path trains *without augmentation*
(``--augment false``: train images go through the deterministic eval transform). Then both paths
give the head the same feature for every image, in the same seeded order, so the head's training is
the same up to float rounding of differently batched matmuls (tests/test_linprobe.py checks it).

When it does not: with the paper's augmentation (RandomResizedCrop + flip, a new view each epoch),
which the cache cannot reproduce; the cache keeps one center-crop view per image, so results differ
(typically a little, sometimes more on small data). ``run`` therefore turns augmentation off in
the cached path and says so.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mae.models.vit import ViTClassifier
from mae.protocols.finetune import log


@torch.no_grad()
def extract_features(model: ViTClassifier, dataset: Dataset, batch_size: int, num_workers: int = 0,
                     device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None) -> TensorDataset:
    """(features (N, D) float32 on CPU, labels (N,) int64) of ``dataset``: the input of ``model.head``.

    Under several processes each rank extracts its round-robin shard on its own device and every rank
    receives the whole set (:func:`mae.engine.distributed.gather_shards`)."""
    from mae.engine.distributed import gather_shards, local_shard
    device = torch.device(device)
    model = model.to(device)
    was_training = model.training
    model.eval()
    loader = DataLoader(local_shard(dataset), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    feats, labels = [], []
    t0 = time.time()
    for x, y in loader:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            f = model.features(x.to(device, non_blocking=True))
        feats.append(f.float())
        labels.append(torch.as_tensor(y, dtype=torch.int64, device=device))
    model.train(was_training)
    n = len(dataset)  # type: ignore[arg-type]
    out = TensorDataset(gather_shards(torch.cat(feats), n).cpu(), gather_shards(torch.cat(labels), n).cpu())
    log(f"[features] {len(out)} x {out.tensors[0].shape[1]} features in {time.time() - t0:.1f}s")
    return out


class FeatureHead(nn.Module):
    """The classifier's head applied to cached features; shares its parameters with ``model.head``.

    Its state_dict keys (``head.0.*``, ``head.1.*``) are the head's keys in the full classifier.
    """

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)
