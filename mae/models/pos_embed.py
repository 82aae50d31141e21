"""Fixed 2-D sine-cosine position embeddings (MAE Sec. 3, "Encoder"/"Decoder": fixed sin-cos).

Convention of the official release (see REFERENCE.md): the grid is built from width coordinates
first, then height (``meshgrid(w, h)``); half the channels encode each axis; for each axis the
channels are ``[sin(pos * omega), cos(pos * omega)]`` with ``omega_i = 1 / 10000^(2i / D')``
(D' = channels for that axis); an all-zero row is prepended for the cls token.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, embed_dim) as ``[sin(pos*omega), cos(pos*omega)]``."""
    if embed_dim % 2 != 0:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False) -> np.ndarray:
    """Table of shape (gh*gw [+1], embed_dim); row r = patch r in raster order (row-major)."""
    if embed_dim % 4 != 0:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {embed_dim}")
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    grid_h = np.arange(gh, dtype=np.float32)
    grid_w = np.arange(gw, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # width first: grid[0] varies along w
    emb_a = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])  # w coordinate
    emb_b = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])  # h coordinate
    emb = np.concatenate([emb_a, emb_b], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb.astype(np.float32)


def interpolate_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Bicubic resize of a (1, prefix + gh*gw, D) table to a new grid (fine-tuning at another resolution)."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n, d = grid.shape[1], grid.shape[2]
    old = int(round(n**0.5))
    if old * old != n:
        raise ValueError(f"position table of {n} patch rows is not a square grid")
    if (old, old) == tuple(new_grid):
        return pos_embed
    grid = grid.reshape(1, old, old, d).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, d).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
