"""Mask sampling strategies (MAE Sec. 3 "Masking", Table 1f, Fig. 6).

Every strategy produces a *noise* tensor (N, L); one shared routine turns noise into a mask the way
the official release does: ``ids_shuffle = argsort(noise)`` ascending, the first
``int(L * (1 - ratio))`` patches are kept, ``ids_restore = argsort(ids_shuffle)``, and the binary
mask is 1 on removed patches. Strategies only shape the noise, so every strategy keeps exactly
``int(L * (1 - ratio))`` patches and an explicit noise tensor always fixes the mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

STRATEGIES = ("random", "block", "grid")


@dataclass
class MaskInfo:
    ids_keep: torch.Tensor  # (N, len_keep) indices of visible patches, in shuffled order
    ids_restore: torch.Tensor  # (N, L) inverse permutation
    mask: torch.Tensor  # (N, L) 0 = keep, 1 = removed, in raster order


def num_keep(num_patches: int, mask_ratio: float) -> int:
    """Number of visible patches: ``int(L * (1 - ratio))`` as in the official code."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return int(num_patches * (1 - mask_ratio))


def mask_from_noise(noise: torch.Tensor, mask_ratio: float) -> MaskInfo:
    """Official convention: keep the ``len_keep`` patches with the smallest noise."""
    n, length = noise.shape
    len_keep = num_keep(length, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(n, length, device=noise.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return MaskInfo(ids_keep=ids_keep, ids_restore=ids_restore, mask=mask)


def random_noise(n: int, grid: tuple[int, int], device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform noise: random sampling without replacement (the paper's default)."""
    return torch.rand(n, grid[0] * grid[1], device=device, generator=generator)


def grid_noise(n: int, grid: tuple[int, int], device: torch.device | str = "cpu",
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep one of every four patches (top-left of each 2x2 cell), Table 1f "grid".

    Kept-cell patches get noise in [0, 1), the others in [1, 2), so they sort first. At ratio 0.75 on
    an even grid this is exactly the regular grid; otherwise the count rule decides the rest randomly.
    """
    gh, gw = grid
    rows = torch.arange(gh, device=device).view(gh, 1)
    cols = torch.arange(gw, device=device).view(1, gw)
    removed = ((rows % 2 != 0) | (cols % 2 != 0)).float().view(1, -1)
    return removed + torch.rand(n, gh * gw, device=device, generator=generator)


#: BEiT's pre-training draws blocks of at least 16 patches on its 14 x 14 grid (``--min_mask_patches_per_block``).
BEIT_MIN_BLOCK_PATCHES, BEIT_GRID_PATCHES = 16, 14 * 14


def block_min_patches(num_patches: int) -> int:
    """Smallest block: BEiT's 16 patches of 196, scaled with the grid's area (ViT-H/14: 21; 8 x 8: 5)."""
    return max(1, round(BEIT_MIN_BLOCK_PATCHES * num_patches / BEIT_GRID_PATCHES))


def _block_mask_one(gh: int, gw: int, num_mask: int, gen: torch.Generator,
                    min_patches: int = 16, min_aspect: float = 0.3, max_attempts: int = 10) -> torch.Tensor:
    """BEiT-style block-wise mask for one image: add random rectangles until ``num_mask`` are covered."""
    mask = torch.zeros(gh, gw, dtype=torch.bool)
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def rand_uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=gen).item()

    def rand_int(lo: int, hi: int) -> int:  # inclusive
        return int(torch.randint(lo, hi + 1, (), generator=gen).item())

    count = 0
    while count < num_mask:
        max_patches = num_mask - count
        delta = 0
        for _ in range(max_attempts):
            target = rand_uniform(min_patches, max(min_patches, max_patches))
            aspect = math.exp(rand_uniform(*log_aspect))
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if 0 < w < gw and 0 < h < gh:
                top, left = rand_int(0, gh - h), rand_int(0, gw - w)
                block = mask[top:top + h, left:left + w]
                new = int(h * w - block.sum().item())
                if 0 < new <= max_patches:
                    block.fill_(True)
                    delta = new
                    break
        if delta == 0:
            break
        count += delta
    return mask.view(-1)


def block_noise(n: int, grid: tuple[int, int], mask_ratio: float, device: torch.device | str = "cpu",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Block-wise masking (BEiT), Table 1f "block": large random blocks are removed.

    The blocks are drawn with a generator seeded from ``generator`` (default: the global torch RNG, so
    ``torch.manual_seed`` fixes them); blocked patches get noise in [1, 2) and sort after the visible ones. If the blocks
    cover fewer than the target count, random extra patches are removed by the count rule.
    """
    gh, gw = grid
    num_mask = gh * gw - num_keep(gh * gw, mask_ratio)
    where = {} if generator is None else {"generator": generator, "device": generator.device}
    seed = int(torch.randint(0, 2**62, (), **where).item())
    gen = torch.Generator().manual_seed(seed)
    min_patches = block_min_patches(gh * gw)
    blocks = torch.stack([_block_mask_one(gh, gw, num_mask, gen, min_patches) for _ in range(n)]).float()
    return blocks.to(device) + torch.rand(n, gh * gw, device=device, generator=generator)


def sample_noise(strategy: str, n: int, grid: tuple[int, int], mask_ratio: float,
                 device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise (N, L) for the named strategy; ``mask_from_noise`` turns it into the mask. ``generator``: the
    stream to draw from (default: torch's global RNG on ``device``)."""
    if strategy == "random":
        return random_noise(n, grid, device, generator)
    if strategy == "grid":
        return grid_noise(n, grid, device, generator)
    if strategy == "block":
        return block_noise(n, grid, mask_ratio, device, generator)
    raise ValueError(f"unknown mask strategy {strategy!r}; choose one of {STRATEGIES}")
