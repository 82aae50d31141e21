"""Reconstruction pictures (MAE Figs. 2, 3, 4, 6): one renderer for training logs and the paper figures.

``reconstruct`` runs a model on images with a given mask and returns, in pixel space, the panels the
paper shows: the masked input, the reconstruction, the reconstruction with the visible patches pasted
back (the paper's footnote: no loss is computed on visible patches, so the raw output is worse there),
the original, and the mask itself (Fig. 6). Predictions of a per-patch normalised target are mapped
back with each patch's own mean and std; PCA predictions through the fitted components.

The model to draw comes from a checkpoint through :func:`mae.models.loader.load_mae_checkpoint`; this
module only draws.
``save_grid`` draws any table of panels (PNG, and PDF on request) with titles and a caption.
``save_curves`` draws metrics over epochs (the kNN monitor's curve, mae/engine/monitor.py).
Every figure is written by ``savefig_stable``: the same drawing gives the same bytes (no dates or
library versions in the file), so redrawing committed figures from unchanged inputs changes nothing.
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mae.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from mae.targets import PCATarget, PixelTarget, normalize_patches

MASK_FILL = 0.5  # grey of removed patches in the "masked" panel
MASK_COLORS = (1.0, 0.25)  # "mask" panel: visible patches white, removed ones dark grey


#: savefig metadata per format that leaves out what changes between otherwise identical saves (the
#: creation date, the matplotlib / backend version); PDF, PS and SVG keep no date with these
STABLE_METADATA: dict[str, dict[str, Any]] = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "ps": {"Creator": None, "CreationDate": None},
    "eps": {"Creator": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
}


def savefig_stable(fig: Any, path: str | Path, **kw: Any) -> Path:
    """``fig.savefig(path, **kw)`` with the file's metadata fixed: two saves of one drawing are equal bytes."""
    path = Path(path)
    fmt = (kw.get("format") or path.suffix.lstrip(".") or "png").lower()
    import matplotlib
    with matplotlib.rc_context({"svg.hashsalt": "mae"}):  # SVG ids from a fixed salt, not a random one
        fig.savefig(path, metadata={**STABLE_METADATA.get(fmt, {}), **kw.pop("metadata", {})}, **kw)
    return path


@dataclass
class Reconstruction:
    """Panels as (N, H, W, 3) float arrays in [0, 1], plus the mask (N, L; 1 = removed)."""

    original: np.ndarray
    masked: np.ndarray
    reconstruction: np.ndarray
    pasted: np.ndarray
    mask: np.ndarray
    mask_ratio: float | None = None
    strategy: str | None = None

    @property
    def mask_image(self) -> np.ndarray:
        """The mask drawn at pixel resolution (N, H, W, 3): visible patches white, removed ones dark."""
        n, h, w, _ = self.original.shape
        g = int(round(self.mask.shape[1] ** 0.5))
        if g * g != self.mask.shape[1] or h % g or w % g:
            raise ValueError(f"mask of {self.mask.shape[1]} patches does not tile a {h}x{w} image")
        grid = self.mask.reshape(n, g, g)
        px = np.repeat(np.repeat(grid, h // g, axis=1), w // g, axis=2)
        img = np.where(px > 0.5, MASK_COLORS[1], MASK_COLORS[0]).astype(np.float32)
        return np.repeat(img[..., None], 3, axis=-1)

    def panel(self, name: str) -> np.ndarray:
        """A panel by name: one of :data:`PANELS` or ``mask_image``."""
        if name not in (*PANELS, "mask_image"):
            raise ValueError(f"unknown panel {name!r}; choose from {(*PANELS, 'mask_image')}")
        return getattr(self, name)


# ---------------------------------------------------------------------------- targets -> pixels
def denormalize_patches(pred: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Inverse of the norm-pixel target (Table 1d "w/ norm"): ``pred * std + mean`` with each patch's
    own mean and std (``sqrt(var + 1e-6)``, unbiased var) taken from the true ``patches`` (N, L, P)."""
    if pred.shape != patches.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and patches {tuple(patches.shape)} differ in shape")
    _, mean, std = normalize_patches(patches.float())
    return pred * std + mean


def prediction_to_patches(model: torch.nn.Module, pred: torch.Tensor, imgs: torch.Tensor) -> torch.Tensor:
    """Map the decoder's per-patch prediction back to (N, L, p*p*3) patches in normalised-image space."""
    target = model.target
    if isinstance(target, PixelTarget):
        if not target.norm_pix:
            return pred
        return denormalize_patches(pred, model.patchify(imgs))
    if isinstance(target, PCATarget):
        return pred @ target.components + target.mean
    raise TypeError(f"a {type(target).__name__} prediction cannot be drawn as pixels (token targets have no pixels)")


def to_pixels(imgs: torch.Tensor, mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
              std: tuple[float, ...] = IMAGENET_DEFAULT_STD) -> np.ndarray:
    """(N, 3, H, W) normalised tensor -> (N, H, W, 3) array in [0, 1]."""
    m = torch.tensor(mean, device=imgs.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=imgs.device).view(1, 3, 1, 1)
    return (imgs.float() * s + m).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


# ------------------------------------------------------------------------------- reconstruction
def mask_noise(model: torch.nn.Module, n: int, mask_ratio: float, strategy: str | None = None,
               seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Noise (N, L) fixing a mask of ``strategy`` (default: the model's own, Table 1f) from ``seed``.

    Drawn with a private generator state: the caller's global RNG is neither used nor changed.
    """
    from mae.masking import sample_noise

    strategy = strategy or model.config.mask_strategy
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        noise = sample_noise(strategy, n, model.config.grid_size, mask_ratio, "cpu")
    return noise.to(device)


@torch.no_grad()
def reconstruct(model: torch.nn.Module, imgs: torch.Tensor, mask_ratio: float = 0.75,
                noise: torch.Tensor | None = None, seed: int = 0, strategy: str | None = None) -> Reconstruction:
    """Run ``model`` on ``imgs`` (normalised) with a mask fixed by ``noise`` or by ``seed``.

    The mask comes from ``strategy`` (default: the model's own) with a private generator, so the
    caller's global RNG is neither used nor changed. The model is left in the mode it came in.
    """
    was_training = model.training
    model.eval()
    try:
        if noise is None:
            noise = mask_noise(model, imgs.shape[0], mask_ratio, strategy, seed, imgs.device)
        _, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise)
        patches = prediction_to_patches(model, pred.float(), imgs.float())
        visible = model.patchify(imgs.float())
        removed = mask.bool().unsqueeze(-1).expand_as(visible)
        recon = model.unpatchify(patches)
        pasted = model.unpatchify(torch.where(removed, patches, visible))  # visible patches: the input itself
        original = to_pixels(imgs)
        removed_px = model.unpatchify(removed.float()).permute(0, 2, 3, 1).cpu().numpy() > 0.5
        masked = np.where(removed_px, np.float32(MASK_FILL), original)
        return Reconstruction(original=original, masked=masked, reconstruction=to_pixels(recon),
                              pasted=to_pixels(pasted), mask=mask.cpu().numpy(), mask_ratio=float(mask_ratio),
                              strategy=strategy or model.config.mask_strategy)
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------ rendering
PANELS = ("masked", "reconstruction", "pasted", "original")
TITLES = {"masked": "masked", "reconstruction": "reconstruction", "pasted": "+ visible", "original": "original",
          "mask_image": "mask"}


def save_grid(rows: Sequence[Sequence[np.ndarray | None]], path: str | Path, *,
              col_titles: Sequence[str] | None = None, row_titles: Sequence[str] | None = None,
              title: str | None = None, caption: str | None = None, cell: float = 1.6,
              gaps_before: Sequence[int] = (), formats: Sequence[str] = ("png",), dpi: int = 120) -> list[Path]:
    """Draw a table of (H, W, 3) panels: ``rows[i][j]`` in row i, column j (None = blank).

    ``gaps_before`` puts a narrow spacer before those columns (groups of panels, e.g. the paper's
    triplets); ``col_titles`` label the top row, ``row_titles`` the first column. Saves
    ``path`` with each suffix in ``formats`` (e.g. ``("png", "pdf")``) and returns the paths.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows or not all(len(r) == len(rows[0]) for r in rows) or not len(rows[0]):
        raise ValueError(f"save_grid needs equal, non-empty rows; got lengths {[len(r) for r in rows]}")
    n_rows, n_cols = len(rows), len(rows[0])
    if col_titles is not None and len(col_titles) != n_cols:
        raise ValueError(f"{len(col_titles)} column titles for {n_cols} columns")
    if row_titles is not None and len(row_titles) != n_rows:
        raise ValueError(f"{len(row_titles)} row titles for {n_rows} rows")
    gaps = sorted({g for g in gaps_before if 0 < g < n_cols})
    slots: list[int | None] = []  # grid column -> panel column (None = spacer)
    for j in range(n_cols):
        if j in gaps:
            slots.append(None)
        slots.append(j)
    widths = [0.15 if s is None else 1.0 for s in slots]
    fig_w = cell * sum(widths) + (0.3 if row_titles else 0)
    wrap = max(40, int(fig_w * 15))
    cap = "\n".join(textwrap.fill(line, wrap) for line in caption.splitlines()) if caption else ""
    cap_in = 0.13 * (cap.count("\n") + 1) + 0.1 if cap else 0.0
    title_in = 0.35 if title else 0.0
    fig_h = cell * n_rows + 0.25 + cap_in + title_in
    fig, axes = plt.subplots(n_rows, len(slots), figsize=(fig_w, fig_h), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for i in range(n_rows):
        for k, j in enumerate(slots):
            ax = axes[i, k]
            img = None if j is None else rows[i][j]
            if img is None:
                ax.axis("off")
                continue
            ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0 and col_titles is not None and col_titles[j]:
                ax.set_title(col_titles[j], fontsize=8)
            if k == (1 if slots[0] is None else 0) and row_titles is not None and row_titles[i]:
                ax.set_ylabel(row_titles[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    if cap:
        fig.text(0.01, 0.005, cap, ha="left", va="bottom", fontsize=6, family="monospace")
    fig.tight_layout(rect=(0, cap_in / fig_h, 1, 1 - title_in / fig_h), pad=0.3, w_pad=0.2, h_pad=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats or (path.suffix.lstrip(".") or "png",):
        p = path.with_suffix(f".{fmt.lstrip('.')}")
        savefig_stable(fig, p, dpi=dpi)
        out.append(p)
    plt.close(fig)
    return out


def save_figure(rec: Reconstruction, path: str | Path, panels: tuple[str, ...] = PANELS,
                caption: str | None = None, cell: float = 1.6) -> Path:
    """One row per image, one column per panel; PNG (or PDF, by the suffix of ``path``)."""
    rows = [[rec.panel(name)[i] for name in panels] for i in range(rec.original.shape[0])]
    path = Path(path)
    return save_grid(rows, path, col_titles=[TITLES.get(n, n) for n in panels], caption=caption, cell=cell,
                     formats=(path.suffix.lstrip(".") or "png",))[0]


def save_curves(curves: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *,
                xlabel: str = "epoch", ylabel: str = "", title: str | None = None) -> Path:
    """Line plot of named curves ``{label: (xs, ys)}`` (e.g. the kNN monitor's top-1 over epochs); PNG or PDF
    by the suffix of ``path``. Curves without points are skipped."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    for label, (xs, ys) in curves.items():
        if len(xs):
            ax.plot(list(xs), list(ys), marker="o", markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=8)
    if ax.lines:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    savefig_stable(fig, path, dpi=120)
    plt.close(fig)
    return path
