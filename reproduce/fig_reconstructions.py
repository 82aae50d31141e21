"""The paper's reconstruction pictures, Figs. 2, 3, 4 and 6, from any pre-training checkpoint.

    python reproduce/fig_reconstructions.py --fig 2|3|4|6 --ckpt PATH [--images DIR] [--n 8] [--seed S]
        [--overlay] [--norm-pix | --no-norm-pix] [--out results/figures] [--name NAME]

- Fig. 2 / 3: triplets masked / reconstruction / original (ImageNet val / COCO val in the paper) at
  the paper's mask ratio 0.80; ``--per-row`` triplets per row.
- Fig. 4: one model (pre-trained at 0.75) applied at 0.75, 0.85 and 0.95: one column group per ratio
  (the masks are nested: the same noise, so a higher ratio only removes more patches).
- Fig. 6: one row per mask strategy (random 75%, block 50%, grid 75%), with the mask drawn. The paper
  uses one model per strategy: give ``--ckpt`` three times (random, block, grid) or once for all.
``--overlay`` adds the reconstruction with the visible patches pasted back (the paper's footnote: no
loss on visible patches, so the raw output is worse there; the paper itself shows the raw output).
Settings (ratios, strategies) come from ``reproduce/reference/fig_reconstructions.csv``.

Checkpoints: ours (``mae pretrain``, config inside) at any scale, or the official release's files by
path (architecture inferred from the shapes; ``--norm-pix`` for the ``*_full`` files trained with
norm_pix_loss, off for ``mae_visualize_*``); nothing is downloaded. Images: without ``--images`` the
real photos that scikit-image ships, resized to the model's input; with an ImageNet or COCO folder
(searched recursively), ``--n`` images picked reproducibly by ``--seed``. Output: PNG and PDF under
``--out`` with a provenance caption (checkpoint, scale, commit, date) and a ``.meta.json`` sidecar
from which :func:`rebuild_figures` (``--rebuild``, and ``reproduce/plots.py --reconstructions``) redraws the
figure; every figure needs a checkpoint (plots.py draws none of them unless asked).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mae.data import IMG_EXTENSIONS, DataError, eval_transform, sample_photos
from mae.data.embedded import PHOTO_NAMES
from mae.masking import num_keep
from mae.models.loader import LoadedMAE, load_mae_checkpoint
from mae.viz import Reconstruction, mask_noise, reconstruct, save_grid

FIGURES = ("2", "3", "4", "6")
DEFAULT_N = {"2": 8, "3": 8, "4": 4, "6": 2}
SIDECAR_KIND = "reconstruction_figure"
FOOTNOTE = ("'+ visible': the visible patches pasted over the output (the paper's footnote: no loss is "
            "computed on visible patches, so the raw output is worse there)")


# ------------------------------------------------------------------------------- paper settings
@dataclass(frozen=True)
class PanelSetting:
    """One row of reference/fig_reconstructions.csv: a mask strategy and ratio the paper shows."""

    panel: str
    label: str
    dataset: str
    strategy: str
    mask_ratio: float
    train_mask_ratio: float | None


def paper_settings(fig: str) -> list[PanelSetting]:
    """The settings of Fig. ``fig`` from the reference CSV (one per ratio / strategy)."""
    if fig not in FIGURES:
        raise ValueError(f"unknown figure {fig!r}; choose one of {FIGURES}")
    from reproduce.reference import load_reference

    ref = load_reference("fig_reconstructions")
    rows = ref[ref["panel"].astype(str).str.match(rf"^fig{fig}(_|$)")]
    if rows.empty:
        raise ValueError(f"reference/fig_reconstructions.csv has no row for fig{fig}")
    out = []
    for _, r in rows.iterrows():
        tr = r.get("train_mask_ratio")
        out.append(PanelSetting(str(r["panel"]), str(r["label"]), str(r["dataset"]), str(r["strategy"]),
                                float(r["eval_mask_ratio"]), None if tr is None or tr != tr else float(tr)))
    return out


# ------------------------------------------------------------------------------------- images
def find_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (ImageNet class folders or a flat COCO folder), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--images {folder}: no such directory")
    exts = tuple(IMG_EXTENSIONS)
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(exts) and not f.startswith(".")]
    if not found:
        raise DataError(f"--images {folder}: no image files ({', '.join(exts)}) found in it or below it")
    return found


def load_images(img_size: int, n: int, images: str | Path | None = None, seed: int = 0
                ) -> tuple[torch.Tensor, list[str], str]:
    """(normalised (n, 3, S, S) tensor, image names, description of the source).

    Without ``images``: the first ``n`` scikit-image photos (colour ones first). With a folder: ``n``
    images drawn without replacement by ``seed`` from every image below it (sorted paths).
    Each is resized (shorter side) and centre-cropped to ``img_size``, then normalised.
    """
    from mae.data.robust import load_rgb

    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    tf = eval_transform(img_size, crop_pct=1.0)
    if images is None:
        if n > len(PHOTO_NAMES):
            raise DataError(f"--n {n}: scikit-image ships only {len(PHOTO_NAMES)} photos; give --images DIR for more")
        names = list(PHOTO_NAMES[:n])
        pics = sample_photos(img_size, names)
        return torch.stack([tf(p) for p in pics]), names, "scikit-image photos"
    paths = find_images(images)
    if n > len(paths):
        raise DataError(f"--n {n}: only {len(paths)} images under {images}")
    pick = np.random.default_rng(seed).choice(len(paths), size=n, replace=False)
    tensors, names = [], []
    for i in pick:
        p = paths[int(i)]
        try:
            tensors.append(tf(load_rgb(str(p))))
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds
            raise DataError(f"cannot read image {p}: {type(e).__name__}: {e}") from e
        names.append(str(p.relative_to(images)))
    return torch.stack(tensors), names, f"{images} ({len(paths)} images, {n} drawn with seed {seed})"


# ------------------------------------------------------------------------------------ layouts
@dataclass
class Layout:
    """A table of panels for :func:`mae.viz.save_grid`."""

    rows: list[list[np.ndarray | None]]
    col_titles: list[str]
    row_titles: list[str] | None = None
    gaps_before: list[int] = field(default_factory=list)


def _group(rec: Reconstruction, i: int, overlay: bool, original: bool = True, mask: bool = False) -> list[np.ndarray]:
    names = (["mask_image"] if mask else []) + ["masked", "reconstruction"] + (["pasted"] if overlay else []) \
        + (["original"] if original else [])
    return [rec.panel(n)[i] for n in names]


def _titles(overlay: bool, original: bool = True, mask: bool = False, suffix: str = "") -> list[str]:
    t = (["mask"] if mask else []) + ["masked", "reconstruction"] + (["+ visible"] if overlay else []) \
        + (["original"] if original else [])
    return [f"{x}{suffix}" if x not in ("original", "mask") else x for x in t]


def triplets_layout(rec: Reconstruction, overlay: bool, per_row: int) -> Layout:
    """Figs. 2 / 3: (masked, reconstruction, [+ visible], original) per image, ``per_row`` per row."""
    n = rec.original.shape[0]
    per_row = max(1, min(per_row, n))
    width = len(_titles(overlay))
    rows: list[list[np.ndarray | None]] = []
    for start in range(0, n, per_row):
        row: list[np.ndarray | None] = []
        for i in range(start, start + per_row):
            row += _group(rec, i, overlay) if i < n else [None] * width
        rows.append(row)
    return Layout(rows, _titles(overlay) * per_row, gaps_before=[g * width for g in range(1, per_row)])


def ratios_layout(recs: list[Reconstruction], overlay: bool) -> Layout:
    """Fig. 4: one row per image, one column group (masked, reconstruction) per ratio, then the original."""
    n = recs[0].original.shape[0]
    rows, titles, gaps = [], [], []
    for rec in recs:
        pct = f" {round(100 * rec.mask_ratio)}%"
        gaps.append(len(titles))
        titles += _titles(overlay, original=False, suffix=pct)
    gaps.append(len(titles))
    titles.append("original")
    for i in range(n):
        row: list[np.ndarray | None] = []
        for rec in recs:
            row += _group(rec, i, overlay, original=False)
        rows.append(row + [recs[0].original[i]])
    return Layout(rows, titles, gaps_before=gaps[1:])


def strategies_layout(recs: list[Reconstruction], row_titles: list[str], overlay: bool) -> Layout:
    """Fig. 6: one row per mask strategy; per image (mask, masked, reconstruction, [+ visible], original)."""
    n = recs[0].original.shape[0]
    width = len(_titles(overlay, mask=True))
    rows = [[p for i in range(n) for p in _group(rec, i, overlay, mask=True)] for rec in recs]
    return Layout(rows, _titles(overlay, mask=True) * n, row_titles, [g * width for g in range(1, n)])


# ------------------------------------------------------------------------------------ figures
def _provenance(command: str | None) -> dict[str, str]:
    try:
        from reproduce.report import provenance
    except ImportError:  # pragma: no cover - the reproduce helper's module is part of the repo
        import datetime as dt
        import subprocess
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
        return {"commit": r.stdout.strip() or "unknown", "date": dt.datetime.now(dt.timezone.utc).isoformat(),
                "command": command or ""}
    return provenance(command=command)


def scale_of(loaded: LoadedMAE) -> str:
    """``paper`` for official weights; else the scale of the run dir (``<table>_<scale>``) or the preset."""
    if loaded.source == "official":
        return "paper (official release weights)"
    from mae.config import SCALES
    out_dir = str((loaded.config or {}).get("output_dir", ""))
    for part in reversed(Path(out_dir).parts):
        tail = part.rsplit("_", 1)[-1]
        if tail in SCALES and "_" in part:
            return tail
    from mae.protocols.pretrain import PRESETS
    names = [k for k, c in PRESETS.items() if c.model == loaded.preset]
    if any(k.startswith("paper") for k in names):
        return "paper"
    return names[0] if names else f"custom ({loaded.preset})"


def default_name(ckpts: list[str | Path]) -> str:
    """Output name from the checkpoint: its run folder for ``checkpoint-*.pth``, else the file stem."""
    p = Path(ckpts[0])
    name = p.parent.name if p.stem.startswith("checkpoint") and p.parent.name else p.stem
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "ckpt"


@dataclass
class FigureResult:
    paths: list[Path]
    meta: dict[str, Any]


def make_figure(fig: str, ckpts: list[str | Path] | str | Path, images: str | Path | None = None,
                n: int | None = None, seed: int = 0, overlay: bool = False, norm_pix: bool | None = None,
                preset: str | None = None, out_dir: str | Path = "results/figures", name: str | None = None,
                device: str = "auto", formats: tuple[str, ...] = ("png", "pdf"), mask_ratio: float | None = None,
                per_row: int = 4, command: str | None = None) -> FigureResult:
    """Render Fig. ``fig`` (2, 3, 4 or 6) and write it (PNG, PDF) plus ``<stem>.meta.json`` into ``out_dir``."""
    fig = str(fig)
    settings = paper_settings(fig)
    ckpts = [ckpts] if isinstance(ckpts, (str, Path)) else list(ckpts)
    if not ckpts:
        raise ValueError("--ckpt is required")
    if len(ckpts) != 1 and not (fig == "6" and len(ckpts) == len(settings)):
        want = f"1 or {len(settings)} (one per strategy: {', '.join(s.label for s in settings)})" if fig == "6" else "1"
        raise ValueError(f"Fig. {fig} takes {want} checkpoint(s), got {len(ckpts)}")
    if mask_ratio is not None and fig not in ("2", "3"):
        raise ValueError("--mask-ratio applies to Figs. 2 and 3 (Figs. 4 and 6 use the paper's ratios)")
    n = n or DEFAULT_N[fig]
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    models = [load_mae_checkpoint(c, norm_pix=norm_pix, preset=preset, device=dev) for c in ckpts]
    cache: dict[int, tuple[torch.Tensor, list[str], str]] = {}

    def imgs_for(m: LoadedMAE) -> torch.Tensor:
        size = m.model.config.img_size
        if size not in cache:
            cache[size] = load_images(size, n, images, seed)
        return cache[size][0].to(dev)

    s0 = settings[0]
    lines = []
    if fig in ("2", "3"):
        ratio = s0.mask_ratio if mask_ratio is None else float(mask_ratio)
        m = models[0]
        rec = reconstruct(m.model, imgs_for(m), ratio, seed=seed, strategy=s0.strategy)
        layout = triplets_layout(rec, overlay, per_row)
        length = m.model.config.num_patches
        title = (f"Fig. {fig}: masked / reconstruction / original, mask ratio {ratio:.2f} "
                 f"({num_keep(length, ratio)} of {length} patches visible)")
        lines.append(f"paper: {s0.dataset}, mask ratio {s0.mask_ratio:.2f}, random masking")
    elif fig == "4":
        m = models[0]
        x = imgs_for(m)
        noise = mask_noise(m.model, n, settings[0].mask_ratio, "random", seed, dev)  # nested masks
        recs = [reconstruct(m.model, x, s.mask_ratio, noise=noise, strategy=s.strategy) for s in settings]
        layout = ratios_layout(recs, overlay)
        title = "Fig. 4: a model pre-trained at 0.75 applied at " + ", ".join(f"{s.mask_ratio:.2f}" for s in settings)
        lines.append("the same noise at every ratio: each higher ratio removes a superset of the patches")
        if m.train_mask_ratio is not None and settings[0].train_mask_ratio is not None \
                and abs(m.train_mask_ratio - settings[0].train_mask_ratio) > 1e-9:
            lines.append(f"note: this model was pre-trained at {m.train_mask_ratio}, the paper's at "
                         f"{settings[0].train_mask_ratio}")
    else:
        recs, row_titles = [], []
        for i, s in enumerate(settings):
            m = models[i if len(models) > 1 else 0]
            recs.append(reconstruct(m.model, imgs_for(m), s.mask_ratio, seed=seed, strategy=s.strategy))
            trained = (m.config or {}).get("mask_strategy")
            row_titles.append(s.label + (f"\n(model: {trained})" if trained and trained != s.strategy else ""))
        if len({r.original.shape for r in recs}) > 1:
            raise ValueError("Fig. 6 checkpoints have different input sizes: "
                             + ", ".join(f"{m.path}: {m.model.config.img_size}" for m in models))
        layout = strategies_layout(recs, row_titles, overlay)
        title = "Fig. 6: mask sampling strategies " + ", ".join(s.label for s in settings)
        lines.append("paper: each row from an MAE trained with that strategy" + (
            "; here one model for every row" if len(models) == 1 else "; here one checkpoint per row"))
    _, names, source = next(iter(cache.values()))
    prov = _provenance(command)
    scale = "; ".join(dict.fromkeys(scale_of(m) for m in models))
    lines.append(f"images: {source}" + ("" if images else f" ({', '.join(names)})") + f"; masks seed {seed}")
    for m in models:
        lines.append(f"checkpoint: {m.path} -- {m.description}")
    lines.append(f"scale: {scale} | commit: {prov.get('commit')} | date: {prov.get('date')}")
    if overlay:
        lines.append(FOOTNOTE)

    out_dir = Path(out_dir)
    stem = f"fig{fig}_reconstructions_{name or default_name(ckpts)}"
    paths = save_grid(layout.rows, out_dir / f"{stem}.png", col_titles=layout.col_titles,
                      row_titles=layout.row_titles, title=title, caption="\n".join(lines),
                      gaps_before=layout.gaps_before, formats=formats)
    meta = {
        "kind": SIDECAR_KIND, "figure": fig, "title": title, "scale": scale, "provenance": prov,
        "settings": {"fig": fig, "ckpts": [str(c) for c in ckpts], "images": None if images is None else str(images),
                     "n": n, "seed": seed, "overlay": overlay, "norm_pix": norm_pix, "preset": preset,
                     "name": name or default_name(ckpts), "formats": list(formats), "mask_ratio": mask_ratio,
                     "per_row": per_row},
        "checkpoints": [{"path": str(m.path), "source": m.source, "preset": m.preset, "target": m.target,
                         "description": m.description} for m in models],
        "images": {"source": source, "names": names},
        "paper_settings": [asdict(s) for s in settings],
        "files": [p.name for p in paths],
    }
    sidecar = out_dir / f"{stem}.meta.json"
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    return FigureResult(paths + [sidecar], meta)


def rebuild_figures(out_dir: str | Path = "results/figures", device: str = "auto",
                    ckpts: list[str | Path] | None = None) -> list[Path]:
    """Redraw every reconstruction figure recorded by a ``.meta.json`` sidecar in ``out_dir``.

    Figures whose checkpoints are gone are skipped with a warning (the committed PNG stays). ``ckpts``
    replaces the recorded checkpoints (then the figure is named after them, as ``--ckpt`` names it).
    """
    if ckpts:
        missing = [str(c) for c in ckpts if not Path(c).is_file()]
        if missing:
            raise ValueError(f"--ckpt {', '.join(missing)}: no such checkpoint file")
    done: list[Path] = []
    for sidecar in sorted(Path(out_dir).glob("fig*_reconstructions_*.meta.json")):
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError) as e:
            warnings.warn(f"{sidecar}: unreadable sidecar ({e}); skipped")
            continue
        if meta.get("kind") != SIDECAR_KIND:
            continue
        s = dict(meta["settings"])
        if ckpts:
            s["ckpts"] = [str(c) for c in ckpts]
            s["name"] = None  # named after the checkpoint drawn, never after the recorded one
            if len(ckpts) > 1 and s["fig"] != "6":
                s["ckpts"] = s["ckpts"][:1]
        root = Path(__file__).resolve().parents[1]  # relative paths: from the cwd, else from the repo root
        s["ckpts"] = [c if Path(c).is_file() or not (root / c).is_file() else str(root / c) for c in s["ckpts"]]
        missing = [c for c in s["ckpts"] if not Path(c).is_file()]
        if missing:
            warnings.warn(f"{sidecar.name}: checkpoint(s) {missing} not found; figure not redrawn")
            continue
        res = make_figure(s.pop("fig"), s.pop("ckpts"), out_dir=out_dir, device=device,
                          formats=tuple(s.pop("formats")), command=meta.get("provenance", {}).get("command"), **s)
        done += res.paths
    return done


# ----------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--fig", required=True, choices=FIGURES, help="which paper figure")
    p.add_argument("--ckpt", required=True, action="append", metavar="PATH",
                   help="pre-training checkpoint (ours or official); Fig. 6: once, or three times (random, block, grid)")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="ImageNet/COCO folder (default: the photos scikit-image ships)")
    p.add_argument("--n", type=int, default=None, help="images (default: " + ", ".join(f"Fig. {k}: {v}" for k, v in DEFAULT_N.items()) + ")")
    p.add_argument("--seed", type=int, default=0, help="picks the images of --images and the masks")
    p.add_argument("--overlay", action="store_true", help="add the reconstruction with the visible patches pasted back")
    p.add_argument("--norm-pix", action=argparse.BooleanOptionalAction, default=None,
                   help="official files only: trained with norm_pix_loss (the *_full files); ours store it")
    p.add_argument("--preset", default=None, help="official files: MAE preset for the head counts, if not inferred")
    p.add_argument("--mask-ratio", type=float, default=None, help="Figs. 2/3: override the paper's 0.80")
    p.add_argument("--per-row", type=int, default=4, help="Figs. 2/3: images per row")
    p.add_argument("--out", default="results/figures", help="output folder")
    p.add_argument("--name", default=None, help="output name: fig<N>_reconstructions_<name> (default: from --ckpt)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--rebuild", action="store_true",
                   help="redraw every figure recorded by a .meta.json sidecar in --out (no other option needed)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from mae.provenance import require_same_checkout
    require_same_checkout()
    if "--rebuild" in argv:  # no --fig / --ckpt needed
        p = argparse.ArgumentParser(description="redraw every recorded reconstruction figure")
        p.add_argument("--rebuild", action="store_true")
        p.add_argument("--out", default="results/figures")
        p.add_argument("--device", default="auto")
        p.add_argument("--ckpt", action="append", default=None, metavar="PATH",
                       help="draw from this checkpoint instead of the recorded ones")
        a = p.parse_args(argv)
        for path in rebuild_figures(a.out, a.device, ckpts=a.ckpt):
            print(path)
        return 0
    args = build_parser().parse_args(argv)
    from mae.engine.checkpoint import CheckpointError
    try:
        res = make_figure(args.fig, args.ckpt, images=args.images, n=args.n, seed=args.seed, overlay=args.overlay,
                          norm_pix=args.norm_pix, preset=args.preset, out_dir=args.out, name=args.name,
                          device=args.device, mask_ratio=args.mask_ratio, per_row=args.per_row,
                          command="python reproduce/fig_reconstructions.py " + " ".join(shlex.quote(a) for a in argv))
    except (CheckpointError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(res.meta["title"])
    for path in res.paths:
        print(f"  -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
