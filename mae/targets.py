"""Reconstruction targets and their per-patch losses (MAE Sec. 3 "Reconstruction target", Table 1d).

A target maps images to one target vector per patch and scores the decoder's per-patch prediction:
- ``pixel``: the patch's pixels (the paper's baseline, "w/o norm");
- ``norm_pixel``: each patch normalised by its own mean and (unbiased) variance, eps 1e-6 ("w/ norm");
- ``pca``: the patch's coefficients on the largest PCA components of training patches (96 for 16x16x3);
- ``token``: the index of a discrete tokenizer (dVAE/VQ) per patch, scored by cross-entropy.
The model averages the per-patch loss over masked patches (or all, ``loss_on="all"``).
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

TARGETS = ("pixel", "norm_pixel", "pca", "token")
NORM_PIX_EPS = 1e-6


def normalize_patches(patches: torch.Tensor, eps: float = NORM_PIX_EPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-patch normalisation of (N, L, P): returns (normalised, mean, std) with std = sqrt(var + eps)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)  # unbiased, as in the official code
    std = (var + eps) ** 0.5
    return (patches - mean) / std, mean, std


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Losses are computed in fp32 (or fp64) even when the model runs in bf16/fp16."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class Tokenizer(Protocol):
    """What the token target needs from a dVAE/VQ tokenizer: one token id per patch."""

    vocab_size: int

    def tokenize(self, imgs: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, L) long
        ...


class PixelTarget(nn.Module):
    """Pixels of each patch, optionally normalised per patch (Table 1d rows 1-2)."""

    def __init__(self, patch_dim: int, norm_pix: bool = False):
        super().__init__()
        self.out_dim = patch_dim
        self.norm_pix = norm_pix

    def forward(self, imgs: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        return normalize_patches(patches)[0] if self.norm_pix else patches

    def per_patch_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((at_least_fp32(pred) - at_least_fp32(target)) ** 2).mean(dim=-1)


class PCATarget(nn.Module):
    """Coefficients of each patch on the top-k principal components of training patches (Table 1d)."""

    def __init__(self, components: torch.Tensor, mean: torch.Tensor):
        super().__init__()
        if components.dim() != 2 or mean.dim() != 1 or components.shape[1] != mean.shape[0]:
            raise ValueError(f"PCA components {tuple(components.shape)} and mean {tuple(mean.shape)} do not match")
        self.register_buffer("components", components.float().clone())  # (k, P)
        self.register_buffer("mean", mean.float().clone())  # (P,)
        self.out_dim = components.shape[0]

    @classmethod
    def empty(cls, k: int, patch_dim: int) -> "PCATarget":
        """Placeholder with the right shapes, filled by a checkpoint or :func:`fit_pca`."""
        return cls(torch.zeros(k, patch_dim), torch.zeros(patch_dim))

    def forward(self, imgs: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        return (at_least_fp32(patches) - self.mean) @ self.components.t()

    def per_patch_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((at_least_fp32(pred) - at_least_fp32(target)) ** 2).mean(dim=-1)


def fit_pca(patches: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k principal directions (k, P) and mean (P,) of patch vectors (M, P), exact SVD in float64."""
    x = patches.reshape(-1, patches.shape[-1]).double()
    if x.shape[0] < 2 or k > x.shape[1]:
        raise ValueError(f"cannot fit {k} PCA components on {tuple(x.shape)} patches")
    mean = x.mean(dim=0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    comps = vh[:k]
    # fix each component's sign so that fits are reproducible: largest-magnitude entry positive
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    return (comps * signs).float(), mean.float()


class TokenTarget(nn.Module):
    """Discrete token of each patch from a frozen tokenizer; cross-entropy loss (Table 1d "dVAE token")."""

    def __init__(self, tokenizer: nn.Module):
        super().__init__()
        if not hasattr(tokenizer, "tokenize") or not hasattr(tokenizer, "vocab_size"):
            raise TypeError("a token target needs a tokenizer with .tokenize(imgs) and .vocab_size")
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.out_dim = int(tokenizer.vocab_size)

    def train(self, mode: bool = True) -> "TokenTarget":
        super().train(mode)
        self.tokenizer.eval()  # the tokenizer stays frozen
        return self

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        tokens = self.tokenizer.tokenize(imgs)
        if tokens.shape != patches.shape[:2]:
            raise ValueError(f"tokenizer gives {tuple(tokens.shape)} tokens, the model has {tuple(patches.shape[:2])} patches")
        return tokens.long()

    def per_patch_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n, length, v = pred.shape
        return F.cross_entropy(at_least_fp32(pred).reshape(n * length, v), target.reshape(-1), reduction="none").view(n, length)


def build_target(kind: str, patch_dim: int, *, pca_components: int = 96, tokenizer: nn.Module | None = None) -> nn.Module:
    """Target module by name (see :data:`TARGETS`)."""
    if kind == "pixel":
        return PixelTarget(patch_dim, norm_pix=False)
    if kind == "norm_pixel":
        return PixelTarget(patch_dim, norm_pix=True)
    if kind == "pca":
        return PCATarget.empty(pca_components, patch_dim)
    if kind == "token":
        if tokenizer is None:
            raise ValueError("target 'token' needs a tokenizer (see reproduce/ for the dVAE stage)")
        return TokenTarget(tokenizer)
    raise ValueError(f"unknown target {kind!r}; choose one of {TARGETS}")
