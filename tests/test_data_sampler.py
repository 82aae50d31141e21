"""ResumableSampler and SeededDataset: resume- and worker-independent data order."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from mae.data import (
    DataError,
    ResumableSampler,
    SeededDataset,
    SyntheticShapes,
    finetune_transform,
    pretrain_transform,
    sample_seed,
)

# ----------------------------------------------------------------- ResumableSampler


@pytest.mark.parametrize("n, replicas, drop_last, shuffle", [
    (10, 1, True, True), (10, 3, True, True), (10, 3, False, True), (11, 4, False, False), (2, 5, False, True),
])
def test_same_indices_as_distributed_sampler(n, replicas, drop_last, shuffle):
    for rank in range(replicas):
        ours = ResumableSampler(n, replicas, rank, shuffle=shuffle, seed=7, drop_last=drop_last)
        ref = DistributedSampler(range(n), replicas, rank, shuffle=shuffle, seed=7, drop_last=drop_last)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert list(ours) == list(ref) and len(ours) == len(ref)


def test_start_index_equals_slicing_the_full_epoch():
    s = ResumableSampler(50, num_replicas=2, rank=1, seed=3)
    s.set_epoch(4)
    full = list(s)
    assert len(full) == 25
    for start in (0, 1, 12, 25):
        s.set_epoch(4, start_index=start)
        assert list(s) == full[start:] and len(s) == 25 - start
    s.set_epoch(5)  # a new epoch starts from the beginning again
    assert len(list(s)) == 25 and list(s) != full
    with pytest.raises(DataError, match="start_index 26 outside 0..25"):
        s.set_epoch(4, start_index=26)


def test_shards_cover_all_indices_without_overlap():
    n, replicas = 24, 4
    shards = []
    for rank in range(replicas):
        s = ResumableSampler(n, replicas, rank, seed=1)
        s.set_epoch(2)
        shards.append(list(s))
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(n))
    # drop_last=True with a remainder: equal shards, no duplicates, only the tail dropped
    shards = [list(ResumableSampler(26, replicas, r, seed=1)) for r in range(replicas)]
    flat = [i for shard in shards for i in shard]
    assert {len(s) for s in shards} == {6} and len(set(flat)) == 24


def test_sampler_uses_its_own_generator():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    s = ResumableSampler(100, seed=1)
    s.set_epoch(1)
    a = list(s)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    assert list(s) == a
    assert a != list(range(100))


def test_sampler_bad_arguments():
    with pytest.raises(DataError, match="rank"):
        ResumableSampler(10, num_replicas=2, rank=2)
    with pytest.raises(DataError, match="dataset_len"):
        ResumableSampler(0)
    with pytest.raises(DataError, match="cannot feed"):
        ResumableSampler(3, num_replicas=4, rank=0, drop_last=True)


# ----------------------------------------------------------------- SeededDataset


def augmented_shapes(n=12, transform=None):
    return SeededDataset(SyntheticShapes(n, img_size=20, transform=transform or pretrain_transform("crop_rand_jitter", 16)), seed=11)


def collect(ds, num_workers, persistent=False, epochs=(0,)):
    loader = DataLoader(ds, batch_size=4, num_workers=num_workers, persistent_workers=persistent)
    out = []
    for epoch in epochs:
        ds.set_epoch(epoch)
        out.append(torch.cat([x for x, _ in loader]))
    return out


def test_augmentation_independent_of_worker_count_and_persistent_workers():
    ds = augmented_shapes()
    torch.manual_seed(0)
    (ref0, ref1) = collect(ds, num_workers=0, epochs=(0, 1))
    torch.manual_seed(99)  # different caller state: must not matter
    (w0, w1) = collect(ds, num_workers=2, persistent=True, epochs=(0, 1))
    assert torch.equal(ref0, w0) and torch.equal(ref1, w1)
    assert not torch.equal(ref0, ref1)  # a new epoch, new augmentations


def test_item_depends_only_on_seed_epoch_index():
    ds = augmented_shapes()
    ds.set_epoch(3)
    forward = [ds[i][0] for i in range(12)]
    backward = [ds[i][0] for i in reversed(range(12))][::-1]  # e.g. a resumed, reshuffled order
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    other = SeededDataset(ds.base, seed=12)
    other.set_epoch(3)
    assert not torch.equal(other[0][0], forward[0])


def test_global_rng_untouched():
    ds = augmented_shapes(transform=finetune_transform(16, is_train=True))  # timm draws from `random` too
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    a = ds[3][0]
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    random.seed(77)
    torch.manual_seed(77)
    assert torch.equal(ds[3][0], a)  # timm's Python-random ops are seeded per sample too


def test_attributes_pass_through_and_pickling():
    import pickle

    ds = augmented_shapes()
    assert ds.num_classes == 10 and ds.classes[0] == "solid circle"
    ds.set_epoch(2)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.epoch == 2 and torch.equal(clone[1][0], ds[1][0])
    with pytest.raises(AttributeError):
        ds.no_such_attribute


def test_sample_seed_mixes_inputs():
    seeds = {sample_seed(0, e, i) for e in range(20) for i in range(200)}
    assert len(seeds) == 4000
    assert sample_seed(1, 2, 3) == sample_seed(1, 2, 3) < 2**63
    with pytest.raises(DataError):
        sample_seed(0, -1, 0)
