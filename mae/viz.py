"""Reconstruction pictures (MAE Figs. 2, 3, 4, 6): one renderer for training logs and the paper figures.

``reconstruct`` runs a model on images with a given mask and returns, in pixel space, the panels the
paper shows: the masked input, the reconstruction, the reconstruction with the visible patches pasted
back (the paper's footnote), and the original. Predictions of a per-patch normalised target are mapped
back with each patch's own mean and std; PCA predictions through the fitted components.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mae.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from mae.targets import PCATarget, PixelTarget, normalize_patches


@dataclass
class Reconstruction:
    """Panels as (N, H, W, 3) float arrays in [0, 1], plus the mask (N, L; 1 = removed)."""

    original: np.ndarray
    masked: np.ndarray
    reconstruction: np.ndarray
    pasted: np.ndarray
    mask: np.ndarray


def prediction_to_patches(model: torch.nn.Module, pred: torch.Tensor, imgs: torch.Tensor) -> torch.Tensor:
    """Map the decoder's per-patch prediction back to (N, L, p*p*3) patches in normalised-image space."""
    target = model.target
    if isinstance(target, PixelTarget):
        if not target.norm_pix:
            return pred
        _, mean, std = normalize_patches(model.patchify(imgs))
        return pred * std + mean  # inverse of the per-patch normalisation, with the input's statistics
    if isinstance(target, PCATarget):
        return pred @ target.components + target.mean
    raise TypeError(f"a {type(target).__name__} prediction cannot be drawn as pixels (token targets have no pixels)")


def to_pixels(imgs: torch.Tensor, mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
              std: tuple[float, ...] = IMAGENET_DEFAULT_STD) -> np.ndarray:
    """(N, 3, H, W) normalised tensor -> (N, H, W, 3) array in [0, 1]."""
    m = torch.tensor(mean, device=imgs.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=imgs.device).view(1, 3, 1, 1)
    return (imgs.float() * s + m).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def reconstruct(model: torch.nn.Module, imgs: torch.Tensor, mask_ratio: float = 0.75,
                noise: torch.Tensor | None = None, seed: int = 0) -> Reconstruction:
    """Run ``model`` on ``imgs`` (normalised) with a mask fixed by ``noise`` or by ``seed``.

    The mask comes from the model's own strategy with a private generator, so the caller's global
    RNG is neither used nor changed.
    """
    was_training = model.training
    model.eval()
    try:
        if noise is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                noise = model.sample_noise(imgs.shape[0], mask_ratio, "cpu").to(imgs.device)
        _, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise)
        patches = prediction_to_patches(model, pred.float(), imgs)
        recon = model.unpatchify(patches)
        m = mask.unsqueeze(-1).expand(-1, -1, model.patch_dim)
        visible = model.patchify(imgs)
        pasted = model.unpatchify(visible * (1 - m) + patches * m)
        masked = to_pixels(model.unpatchify(visible * (1 - m)))
        masked[model.unpatchify(m).permute(0, 2, 3, 1).cpu().numpy() > 0.5] = 0.5  # grey removed patches
        return Reconstruction(original=to_pixels(imgs), masked=masked, reconstruction=to_pixels(recon),
                              pasted=to_pixels(pasted), mask=mask.cpu().numpy())
    finally:
        model.train(was_training)


PANELS = ("masked", "reconstruction", "pasted", "original")
TITLES = {"masked": "masked", "reconstruction": "reconstruction", "pasted": "+ visible", "original": "original"}


def save_figure(rec: Reconstruction, path: str | Path, panels: tuple[str, ...] = PANELS,
                caption: str | None = None, cell: float = 1.6) -> Path:
    """One row per image, one column per panel; PNG (and PDF if the suffix says so)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rec.original.shape[0]
    fig, axes = plt.subplots(n, len(panels), figsize=(cell * len(panels), cell * n + (0.4 if caption else 0)),
                             squeeze=False)
    for i in range(n):
        for j, name in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(getattr(rec, name)[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(TITLES.get(name, name), fontsize=8)
    if caption:
        fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=6)
    fig.tight_layout(rect=(0, 0.03 if caption else 0, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
