"""Fig. 8: ImageNet-1K fine-tuning accuracy vs model size, the paper's lines plus ours, from CSV alone.

    python reproduce/fig8.py [--results results] [--out results/figures]

Paper: ``reproduce/reference/fig8_model_size.csv`` (MAE IN1K, supervised IN1K with the paper's recipe and
as in the ViT paper, supervised JFT-300M; the ViT-paper lines are approx, at 384 px). Ours: every
``results/fig8_model_size_<scale>.csv`` (key ``method``, columns ``ft_vit_{base,large,huge}_ours``, and
optionally ``model_vit_{base,large,huge}_ours`` naming the MAE preset that ran in that column) and, for
scales without one, the ``mae`` / ``scratch`` rows of ``results/table3_comparison_<scale>.csv``. The x axis
is the encoder's parameter count: ViT-B/L/H for the paper; at smaller scales the presets that scale
defines (reproduce/scales.py ``table3_models``), which are not ViT-B/L/H, so ours get their own panel
there. One figure per scale (PNG + PDF, ``fig8_model_size_<scale>``), or ``fig8_model_size_paper``.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mae.models.mae import MAEConfig, mae_config  # noqa: E402
from mae.viz import savefig_stable  # noqa: E402
from reproduce.reference import get_spec, load_reference  # noqa: E402

NAME = "fig8_model_size"
SIZES = ("vit_base", "vit_large", "vit_huge")
SIZE_LABELS = {"vit_base": "ViT-B", "vit_large": "ViT-L", "vit_huge": "ViT-H"}
PAPER_MODELS = {"vit_base": "mae_vit_base_patch16", "vit_large": "mae_vit_large_patch16",
                "vit_huge": "mae_vit_huge_patch14"}
TABLE3 = "table3_comparison"
TABLE3_TO_FIG8 = {"mae": "mae_in1k", "scratch": "sup_in1k_paper_recipe"}  # same lines in both papers' terms
PAPER_COLOR, OURS_COLOR = "#1f4e9a", "#d2561b"


# ------------------------------------------------------------------------------------- sizes
def encoder_params(cfg: MAEConfig | str) -> int:
    """Learnable parameters of the ViT encoder (patch embedding, cls token, blocks, final norm).

    The fixed sin-cos position table and the decoder are not counted: ViT-B/16 86M, ViT-L/16 304M,
    ViT-H/14 632M, the sizes of Fig. 8's x axis.
    """
    c = mae_config(cfg) if isinstance(cfg, str) else cfg
    d, hidden = c.embed_dim, int(c.embed_dim * c.mlp_ratio)
    patch = d * c.in_chans * c.patch_size ** 2 + d
    block = (2 * d) + (3 * d * d + 3 * d) + (d * d + d) + (2 * d) + (d * hidden + hidden) + (hidden * d + d)
    return patch + d + c.depth * block + 2 * d


def fmt_params(n: int) -> str:
    return f"{n / 1e6:.0f}M" if n >= 10e6 else f"{n / 1e6:.2f}M"


def scale_models(scale: str) -> dict[str, str]:
    """The MAE preset standing in for the paper's ViT-B/L/H at ``scale`` (reproduce/scales.py)."""
    if scale == "paper":
        return dict(PAPER_MODELS)
    try:
        from reproduce.scales import get_scale
        return dict(get_scale(scale, check_data=False).table3_models)
    except Exception as e:  # noqa: BLE001 - an unknown scale or a scales module that cannot load
        warnings.warn(f"fig8: no model list for scale {scale!r} ({type(e).__name__}: {e})")
        return {}


# ---------------------------------------------------------------------------------- results
@dataclass
class OursPoint:
    size: str  # the paper's column: vit_base | vit_large | vit_huge
    preset: str | None
    params: int | None
    value: float


@dataclass
class OursLine:
    """One of our methods at one scale: its points, where they came from."""

    scale: str
    method: str
    label: str
    points: list[OursPoint]
    source: Path
    provenance: dict[str, str] = field(default_factory=dict)


def _read(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    except Exception as e:  # noqa: BLE001 - a broken file must not stop the paper's figure
        warnings.warn(f"{path}: unreadable ({type(e).__name__}: {e}); skipped")
        return None


def _lines_from(df: pd.DataFrame, path: Path, scale: str, methods: dict[str, str]) -> list[OursLine]:
    """Rows of ``df`` whose ``method`` is in ``methods`` (their name -> Fig. 8 method) with any ft number."""
    if "method" not in df.columns:
        warnings.warn(f"{path}: no 'method' column; skipped")
        return []
    ref = load_reference(NAME).set_index("method")
    defaults = scale_models(scale)
    out = []
    for _, row in df.iterrows():
        method = methods.get(str(row["method"]))
        if method is None:
            continue
        points = []
        for s in SIZES:
            v = pd.to_numeric(pd.Series([row.get(f"ft_{s}_ours")]), errors="coerce").iloc[0]
            if not np.isfinite(v):
                continue
            preset = row.get(f"model_{s}_ours")
            preset = str(preset) if isinstance(preset, str) and preset else defaults.get(s)
            try:
                params = encoder_params(preset) if preset else None
            except ValueError as e:
                warnings.warn(f"{path}: {e}; point {s} drawn without a model size")
                params = None
            points.append(OursPoint(s, preset, params, float(v)))
        if points:
            prov = {c: str(row[c]) for c in ("commit", "device", "date") if c in df.columns}
            label = str(ref.at[method, "label"]) if method in ref.index else method
            out.append(OursLine(scale, method, label, points, path, prov))
    return out


def collect_ours(results_dir: str | Path) -> dict[str, list[OursLine]]:
    """Our Fig. 8 lines per scale: ``fig8_model_size_<scale>.csv`` first, else Table 3's MAE/scratch rows."""
    results_dir = Path(results_dir)
    by_scale: dict[str, list[OursLine]] = {}
    for path in sorted(results_dir.glob(f"{NAME}_*.csv")):
        df = _read(path)
        if df is not None:
            ref_methods = {m: m for m in load_reference(NAME)["method"]}
            by_scale.setdefault(path.stem[len(NAME) + 1:], []).extend(_lines_from(df, path, path.stem[len(NAME) + 1:],
                                                                                  ref_methods))
    for path in sorted(results_dir.glob(f"{TABLE3}_*.csv")):
        scale = path.stem[len(TABLE3) + 1:]
        df = _read(path)
        if df is None:
            continue
        have = {ln.method for ln in by_scale.get(scale, [])}
        lines = [ln for ln in _lines_from(df, path, scale, TABLE3_TO_FIG8) if ln.method not in have]
        if lines:
            by_scale.setdefault(scale, []).extend(lines)
    return {s: v for s, v in by_scale.items() if v}


# ---------------------------------------------------------------------------------- drawing
def _label_points(ax: plt.Axes, x: np.ndarray, y: np.ndarray, color: Any, side: str = "left") -> None:
    """Value labels beside each point: the paper's on the left, ours on the right (no collisions)."""
    dx = -7 if side == "left" else 7
    for xi, yi in zip(x, y):
        ax.annotate(f"{yi:.1f}", (xi, yi), textcoords="offset points", xytext=(dx, 0), va="center",
                    ha="right" if side == "left" else "left", fontsize=7, color=color,
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.75))


def _room_for_legend(ax: plt.Axes, values: np.ndarray, entries: int) -> None:
    """y range of ``values`` with an empty band at the bottom for a lower-right legend of ``entries`` lines."""
    v = values[np.isfinite(values)]
    lo, hi = float(v.min()), float(v.max())
    span = max(hi - lo, 1.0)
    frac = min(0.6, 0.06 * entries + 0.05)  # share of the axis height the legend takes
    ax.set_ylim(lo - frac / (1 - frac) * span - 0.3, hi + 0.12 * span)


def _paper_panel(ax: plt.Axes, ref: pd.DataFrame, extra_entries: int = 0) -> None:
    spec = get_spec(NAME)
    x = np.array([encoder_params(PAPER_MODELS[s]) for s in SIZES], dtype=float)
    values = ref[list(spec.metrics)].to_numpy(dtype=float)
    cmap = plt.get_cmap("tab10")
    for i, row in ref.reset_index(drop=True).iterrows():
        y = row[list(spec.metrics)].to_numpy(dtype=float)
        ok = np.isfinite(y)
        hollow = bool(row["approx"])
        ax.plot(x[ok], y[ok], "-" if not hollow else "--", marker="o", color=cmap(i), mfc="none" if hollow else cmap(i),
                label=f"paper: {row['label']}" + (" (approx)" if hollow else ""))
        _label_points(ax, x[ok], y[ok], cmap(i))
    _room_for_legend(ax, values.ravel(), len(ref) + extra_entries)
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{SIZE_LABELS[s]}\n{fmt_params(int(v))}" for s, v in zip(SIZES, x)])
    ax.minorticks_off()
    ax.set_xlim(x[0] / 1.5, x[-1] * 1.5)
    ax.set_xlabel("encoder parameters")
    ax.set_ylabel("IN1K fine-tuning top-1 (%)")


def _ours_on(ax: plt.Axes, lines: list[OursLine], same_axis: bool) -> None:
    markers = "^sDv<>p*"
    ticks: dict[int, str] = {}
    for k, ln in enumerate(lines):
        pts = sorted([p for p in ln.points if p.params], key=lambda p: p.params)
        nosize = [p for p in ln.points if not p.params]
        if nosize:
            warnings.warn(f"{ln.source}: {ln.method} points {[p.size for p in nosize]} have no known model; not drawn")
        if not pts:
            continue
        x = np.array([p.params for p in pts], dtype=float)
        y = np.array([p.value for p in pts])
        ax.plot(x, y, "-", marker=markers[k % len(markers)], color=OURS_COLOR, alpha=1.0 - 0.25 * (k % 3),
                label=f"ours ({ln.scale}): {ln.label}")
        _label_points(ax, x, y, OURS_COLOR, side="right")
        for p in pts:
            ticks[p.params] = f"{p.preset}\n{fmt_params(p.params)}" if not same_axis else ticks.get(p.params, "")
    if not same_axis and ticks:
        xs = sorted(ticks)
        ax.set_xscale("log")
        ax.set_xticks(xs, [ticks[v] for v in xs], fontsize=7)
        ax.minorticks_off()
        ax.set_xlim(xs[0] / 1.6, xs[-1] * 1.6)
        ax.set_xlabel("encoder parameters (presets of this scale)")
        ax.set_ylabel("ours: fine-tuning top-1 (%)", color=OURS_COLOR)
        _room_for_legend(ax, np.array([p.value for ln in lines for p in ln.points]), len(lines))


def _caption(scale: str | None, lines: list[OursLine], width_in: float) -> str:
    if lines:
        srcs = sorted({str(ln.source) for ln in lines})
        p = lines[0].provenance
        first = (f"ours: scale={scale}, " + ", ".join(f"{k}={v}" for k, v in p.items())
                 + f", from {', '.join(srcs)}")
    else:
        first = "paper reference only (reproduce/reference)"  # no draw date: same inputs, same bytes
    out = [first, "paper: He et al., MAE (arXiv 2111.06377), Fig. 8; dashed/hollow = approx (ViT-paper lines, "
                  "384 px); x = encoder parameters (no decoder, no fixed position table)"]
    if lines and scale != "paper":
        out.append(f"ours at scale {scale}: the MAE presets this scale defines stand in for ViT-B/L/H "
                   "(own panel: a different task and model range, compare the trend, not the values)")
    chars = max(60, int(width_in * 17))
    return "\n".join(textwrap.fill(x, chars, subsequent_indent="  ") for x in out)


def draw(scale: str | None, lines: list[OursLine], out_dir: Path, formats: tuple[str, ...] = ("png", "pdf"),
         results_dir: str | Path = "results") -> tuple[str, list[Path]]:
    """One Fig. 8 (paper + ``lines`` of ``scale``, read from ``results_dir``); returns (title, paths)."""
    ref = load_reference(NAME)
    separate = bool(lines) and scale != "paper"
    width = 12.0 if separate else 8.0
    fig = plt.figure(figsize=(width, 5.4))
    try:
        axes = fig.subplots(1, 2 if separate else 1, squeeze=False)[0]
        _paper_panel(axes[0], ref, 0 if separate else len(lines))
        if lines:
            _ours_on(axes[-1], lines, same_axis=not separate)
            if not separate:  # one axis: make room for our values and legend entries too
                both = np.concatenate([ref[list(get_spec(NAME).metrics)].to_numpy(dtype=float).ravel(),
                                       [p.value for ln in lines for p in ln.points]])
                _room_for_legend(axes[0], both, len(ref) + len(lines))
        for ax in axes:
            ax.grid(alpha=0.25)
            ax.legend(fontsize=7, loc="lower right")
        if separate:
            axes[0].set_title("paper (ImageNet-1K)", fontsize=9)
            axes[1].set_title(f"ours ({scale})", fontsize=9, color=OURS_COLOR)
        title = (f"Fig. 8: model size: ours ({scale}) vs paper" if lines
                 else f"Fig. 8: model size: paper only (no {Path(results_dir)}/{NAME}_*.csv or {TABLE3}_*.csv yet)")
        fig.suptitle(title, fontsize=10)
        caption = _caption(scale, lines, width)
        n_lines = caption.count("\n") + 1
        fig.tight_layout(rect=(0, min(0.4, 0.03 + 0.03 * n_lines), 1, 0.95))
        fig.text(0.01, 0.01, caption, fontsize=6.5, ha="left", va="bottom", family="monospace")
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for ext in formats:
            p = out_dir / f"{NAME}_{scale or 'paper'}.{ext}"
            savefig_stable(fig, p, dpi=110)
            paths.append(p)
        return title, paths
    finally:
        plt.close(fig)


def build_figure8(results_dir: str | Path = "results", out_dir: str | Path = "results/figures") -> list[Any]:
    """Draw Fig. 8 once per scale with results (or the paper's alone); returns reproduce.plots FigureRecords."""
    from reproduce.plots import FigureRecord

    ours = collect_ours(results_dir)
    records = []
    for scale, lines in (ours.items() if ours else [(None, [])]):
        title, paths = draw(scale, lines, Path(out_dir), results_dir=results_dir)
        records.append(FigureRecord(NAME, scale, title, paths))
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--results", default="results", help="folder with results CSVs")
    p.add_argument("--out", default="results/figures", help="folder for the PNG and PDF")
    args = p.parse_args(argv)
    for rec in build_figure8(args.results, args.out):
        print(f"{rec.title}\n  -> " + ", ".join(str(x) for x in rec.paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
