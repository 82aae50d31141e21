import pytest
import torch

from mae.masking import STRATEGIES, mask_from_noise, num_keep, sample_noise


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("grid,ratio", [((14, 14), 0.75), ((8, 8), 0.75), ((7, 7), 0.75), ((14, 14), 0.5), ((4, 4), 0.9)])
def test_every_strategy_keeps_exact_count(strategy, grid, ratio):
    torch.manual_seed(0)
    n, length = 5, grid[0] * grid[1]
    info = mask_from_noise(sample_noise(strategy, n, grid, ratio), ratio)
    keep = int(length * (1 - ratio))
    assert info.ids_keep.shape == (n, keep)
    assert torch.all(info.mask.sum(1) == length - keep)
    # mask is consistent with ids_keep, and ids_restore inverts the shuffle
    for i in range(n):
        assert torch.all(info.mask[i, info.ids_keep[i]] == 0)
    assert torch.all(torch.gather(torch.argsort(info.ids_restore, 1), 1, info.ids_restore) == torch.arange(length))


def test_official_convention_on_fixed_noise():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    info = mask_from_noise(noise, 0.5)
    assert info.ids_keep.tolist() == [[1, 3]]  # the two smallest noise values, ascending
    assert info.mask.tolist() == [[1.0, 0.0, 1.0, 0.0]]
    assert info.ids_restore.tolist() == [[3, 0, 2, 1]]


def test_grid_keeps_one_of_four_regularly():
    info = mask_from_noise(sample_noise("grid", 2, (4, 4), 0.75), 0.75)
    kept = (info.mask == 0).view(2, 4, 4)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[::2, ::2] = True
    assert torch.equal(kept[0], expected) and torch.equal(kept[1], expected)


def test_block_masks_are_contiguous_blocks():
    torch.manual_seed(1)
    info = mask_from_noise(sample_noise("block", 8, (14, 14), 0.5), 0.5)
    m = info.mask.view(8, 14, 14)
    # blocks: most removed patches have a removed 4-neighbour (random masking at 50% gives ~75%)
    nb = torch.zeros_like(m)
    nb[:, 1:] += m[:, :-1]
    nb[:, :-1] += m[:, 1:]
    nb[:, :, 1:] += m[:, :, :-1]
    nb[:, :, :-1] += m[:, :, 1:]
    frac_with_neighbour = ((nb > 0) & (m > 0)).sum() / m.sum()
    assert frac_with_neighbour > 0.95


def test_block_masking_is_seeded_by_torch():
    torch.manual_seed(3)
    a = sample_noise("block", 2, (8, 8), 0.5)
    torch.manual_seed(3)
    b = sample_noise("block", 2, (8, 8), 0.5)
    assert torch.equal(a, b)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown mask strategy"):
        sample_noise("checker", 1, (4, 4), 0.75)
    with pytest.raises(ValueError, match="mask_ratio"):
        num_keep(16, 1.0)


def test_block_size_floor_is_beits_scaled_with_the_grid():
    """BEiT's pre-training: blocks of >= 16 patches on 14 x 14; the same fraction of other grids."""
    from mae.masking import block_min_patches
    assert [block_min_patches(n) for n in (196, 256, 64, 16, 4)] == [16, 21, 5, 1, 1]
