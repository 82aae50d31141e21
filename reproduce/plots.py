"""Regenerate every figure from ``results/*.csv`` and the paper's reference CSVs alone.

    python reproduce/plots.py [--results results] [--out results/figures] [--reconstructions [--ckpt PATH]]

Figures (PNG + PDF, one per results scale found, ``<name>_<scale>``; ``<name>_paper`` when no
results exist yet, titled "paper only"): Fig. 5 masking ratio, Fig. 7 schedule, Fig. 8 model size,
Fig. 9 partial fine-tuning, one bar chart per Table 1 part, Table 2 wall-clock speedups. Our numbers
sit on their own y-axis (or panel): small-scale runs are not on the paper's scale, so what is
compared is the shape (best setting, ranking). Every figure carries a provenance caption (from the
CSVs: redrawn from unchanged CSVs, a figure is the same bytes).

The reconstruction figures (Figs. 2, 3, 4, 6: ``fig*_reconstructions_*``) need a pre-training
checkpoint, which results/ does not hold: they are redrawn only with ``--reconstructions`` (from the
checkpoints their ``.meta.json`` sidecars name, e.g. outputs/demo/checkpoint-last.pth after
``mae pretrain``) or ``--ckpt PATH`` (that checkpoint instead); see reproduce/fig_reconstructions.py.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reproduce.reference import TableSpec, get_spec, load_reference  # noqa: E402
from mae.viz import savefig_stable  # noqa: E402
from reproduce.report import table2_speedups  # noqa: E402

PAPER_COLOR = "#1f4e9a"
OURS_COLOR = "#d2561b"
EXTRA_COLOR = "#5a9e4b"
PAPER_CITE = "paper: He et al., MAE (arXiv 2111.06377)"


@dataclass
class OursResult:
    """One ``results/<name>_<scale>.csv``; ``df`` is None when it could not be used (see ``problem``)."""

    name: str
    scale: str
    path: Path
    df: pd.DataFrame | None
    problem: str = ""

    def provenance_line(self) -> str:
        if self.df is None or not len(self.df):
            return f"ours: {self.path.name} ({self.problem})"
        first = self.df.iloc[0]
        parts = [f"scale={self.scale}"] + [f"{c}={first[c]}" for c in ("commit", "device", "date")
                                           if c in self.df.columns]
        return "ours: " + ", ".join(parts)


@dataclass
class FigureRecord:
    """What one figure build produced."""

    name: str
    scale: str | None
    title: str
    paths: list[Path] = field(default_factory=list)


# ------------------------------------------------------------------------------------- results
def find_results(results_dir: str | Path, name: str) -> list[OursResult]:
    """Every ``<results_dir>/<name>_<scale>.csv`` (scale = the rest of the file name)."""
    spec = get_spec(name)
    found = []
    for path in sorted(Path(results_dir).glob(f"{name}_*.csv")):
        scale = path.stem[len(name) + 1:]
        try:
            df = pd.read_csv(path, keep_default_na=False, na_values=[""])
        except Exception as e:  # an unreadable file must not stop the other figures
            found.append(OursResult(name, scale, path, None, f"unreadable: {type(e).__name__}: {e}"))
            continue
        ours_cols = [f"{m}_ours" for m in spec.metrics if f"{m}_ours" in df.columns]
        if spec.key not in df.columns:
            found.append(OursResult(name, scale, path, None, f"no key column {spec.key!r}"))
        elif not ours_cols:
            found.append(OursResult(name, scale, path, None, "no '<metric>_ours' columns"))
        else:
            found.append(OursResult(name, scale, path, df))
    return found


def _ours_series(res: OursResult | None, key: str, metric: str) -> pd.Series:
    """Our ``metric`` indexed by setting key (rows we did not run dropped)."""
    if res is None or res.df is None or f"{metric}_ours" not in res.df.columns:
        return pd.Series(dtype=float)
    s = res.df.set_index(key)[f"{metric}_ours"]
    return pd.to_numeric(s, errors="coerce").dropna()


def used_values(res: OursResult | None, key: str, percent: bool = False) -> dict[Any, str]:
    """{setting: the value run at this scale} of our results (``reproduce.report.used_values``)."""
    if res is None or res.df is None:
        return {}
    from reproduce.report import used_values as used_in
    return used_in(res.df, key, percent)


# the baseline's controls drawn beside our metric (grid.columns.standard_columns): the same readout of the
# weights pre-training starts from, of the raw pixels, the fine-tuning recipe from scratch
CONTROLS = {"lin": (("lin_init", "probe, starting weights"),), "ft": (("ft_scratch", "fine-tune from scratch, as many epochs in all"),),
            "knn": (("knn_init", "kNN, starting weights"), ("knn_pixels", "kNN, raw pixels")),
            "shot10": (("shot10_init", "10-shot, starting weights"), ("shot10_pixels", "10-shot, raw pixels"))}
#: readouts drawn as extra panels when a results file has them; the paper's side is its linear probe
PANEL_READOUTS = ("knn", "shot10")
#: what each metric measures, for axis labels
METRIC_WORDS = {"ft": "fine-tuning top-1 (%)", "lin": "linear probe top-1 (%)", "knn": "kNN top-1 (%)",
                "shot10": "10-shot top-1 (%)", "flops_rel": "encoder FLOPs (x, w/o [M] = 1)"}
#: the note under the title of a figure whose panels put the paper and ours on two y-axes
TWO_AXES_NOTE = ("two y-axes per panel: the paper on the left (blue), ours on the right (orange), each with its own "
                 "range: compare the shapes, not the heights")


def metric_words(metric: str) -> str:
    """The axis label of ``metric``: what it measures."""
    return METRIC_WORDS.get(metric, metric)


def panels(spec: TableSpec, res: OursResult | None) -> list[tuple[str, str]]:
    """(our metric, the paper's metric) per panel: the table's metrics, then the readouts we measured."""
    out = [(m, m) for m in spec.metrics]
    if "lin" in spec.metrics and res is not None and res.df is not None:
        out += [(r, "lin") for r in PANEL_READOUTS if f"{r}_ours" in res.df.columns and res.df[f"{r}_ours"].notna().any()]
    return out


def _ours_std(res: OursResult | None, key: str, metric: str, index: pd.Index) -> np.ndarray:
    """The seed std of ``metric`` per setting of ``index`` (0 where a setting has one seed)."""
    std = _ours_series(res, key, f"{metric}_std")
    return std.reindex(index).fillna(0.0).to_numpy(dtype=float)


def _controls(res: OursResult | None, key: str, metric: str) -> list[tuple[pd.Series, str]]:
    """(values by setting, label) of each control of ``metric`` that was measured: one value (the baseline's)
    or one per setting (Fig. 7's scratch control, trained as long as each schedule in all)."""
    out = []
    for col, label in CONTROLS.get(metric, ()):
        if col == "lin_init" and res is not None and res.df is not None and "knn_init_ours" not in res.df.columns:
            label = "probe, classifier-initialised ViT"  # results made before the starting-weights control
        values = _ours_series(res, key, col)
        if len(values):
            out.append((values, label))
    return out


def _draw_control(ax: plt.Axes, values: pd.Series, label: str, style: str, color: str,
                  x_of: Any = None) -> None:
    """One value: a horizontal line; one per setting: a curve through the settings (``x_of`` maps keys to x)."""
    if len(values) == 1 or x_of is None:
        v = float(values.iloc[0])
        ax.axhline(v, ls=style, lw=0.8, color=color, alpha=0.7, label=f"ours: {label} ({v:.1f})")
        return
    x = np.array([x_of(k) for k in values.index], dtype=float)
    order = np.argsort(x)
    ax.plot(x[order], values.to_numpy(dtype=float)[order], ls=style, lw=0.8, marker=".", color=color, alpha=0.7,
            label=f"ours: {label} (per setting)")


# -------------------------------------------------------------------------------------- drawing
def _twin_ours(ax: plt.Axes, x: np.ndarray, y: np.ndarray, label: str, ylabel: str,
               yerr: np.ndarray | None = None) -> plt.Axes:
    ax2 = ax.twinx()
    ax.set_zorder(ax2.get_zorder() + 1)  # the paper's points and their value labels above our curve
    ax.patch.set_visible(False)
    ax2.plot(x, y, "-^", color=OURS_COLOR, label=label)
    if yerr is not None and np.any(yerr > 0):
        has = yerr > 0
        ax2.errorbar(x[has], y[has], yerr=yerr[has], fmt="none", ecolor=OURS_COLOR, capsize=3, lw=1,
                     label="ours: +- 1 seed std")
    ax2.set_ylabel(ylabel, color=OURS_COLOR)
    ax2.tick_params(axis="y", colors=OURS_COLOR)
    _zoom(ax2, y)
    return ax2


def _zoom(ax: plt.Axes, values: np.ndarray, floor: float | None = None) -> None:
    """Fit the y-range to ``values`` (differences of 0.1 must show); never below ``floor``."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return
    lo, hi = float(v.min()), float(v.max())
    pad = max((hi - lo) * 0.35, 0.5 if hi > 1.5 else 0.02)
    bottom = lo - pad if floor is None else max(floor, lo - pad)
    ax.set_ylim(bottom, hi + pad)


def _paper_points(ax: plt.Axes, x: np.ndarray, y: np.ndarray, approx: np.ndarray,
                  color: str = PAPER_COLOR, label: str = "paper", marker: str = "o", beside: bool = False) -> None:
    """Reference points (hollow: approximate), joined where they are neighbours, each labelled with its value:
    above the marker, or ``beside`` it (a second series, whose labels would otherwise sit on the first's: to the
    right, to the left at the last point)."""
    ok = np.isfinite(y)
    # Join only points that are neighbours in the paper: never draw a line across unstated points.
    for i in range(len(y) - 1):
        if ok[i] and ok[i + 1]:
            ax.plot(x[i:i + 2], y[i:i + 2], ":", color=color, alpha=0.6)
    x, y, approx = x[ok], y[ok], approx[ok].astype(bool)
    if (~approx).any():
        ax.plot(x[~approx], y[~approx], marker, color=color, label=label, linestyle="none")
    if approx.any():
        ax.plot(x[approx], y[approx], marker, mfc="none", color=color, linestyle="none",
                label=f"{label} (approx)")
    for i, (xi, yi) in enumerate(zip(x, y)):
        last = i == len(x) - 1
        offset, ha, va = (((-10 if last else 10), 0), "right" if last else "left", "center") if beside else \
            ((0, 5), "center", "baseline")
        ax.annotate(f"{yi:.1f}", (xi, yi), textcoords="offset points", xytext=offset, ha=ha, va=va, fontsize=7,
                    color=color, bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.85))


def _legend(ax: plt.Axes, *more: plt.Axes, below: bool = False) -> None:
    """One legend for ``ax`` and its twins: inside the axes (``loc='best'``), or ``below`` them, clear of the
    data, the ticks and the axis labels."""
    handles, labels = ax.get_legend_handles_labels()
    for a in more:
        h, lab = a.get_legend_handles_labels()
        handles += h
        labels += lab
    if not handles:
        return
    if below:
        ax.legend(handles, labels, fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, 0.0), borderaxespad=5.5,
                  frameon=False)  # 5.5 font sizes below the axes: under the tick labels and the axis label
    else:
        ax.legend(handles, labels, fontsize=7, loc="best")


def _scratch_ft() -> float:
    ref = load_reference("sec4_vit_large_scratch").set_index("recipe")
    return float(ref.at["paper_recipe", "ft"])


def draw_curves(fig: plt.Figure, spec: TableSpec, ref: pd.DataFrame, res: OursResult | None) -> None:
    """Figs. 5, 7, 9: one panel per metric, paper (left axis) and ours (own right axis) vs the knob."""
    key = spec.key
    pairs = panels(spec, res)
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    x_ref = ref[key].to_numpy(dtype=float)
    for ax, (m, pm) in zip(axes, pairs):
        y = ref[pm].to_numpy(dtype=float)
        _paper_points(ax, x_ref, y, ref["approx"].to_numpy())
        values = [y]
        for extra in spec.extra_refs:
            if extra.startswith(f"{m}_"):
                ye = ref[extra].to_numpy(dtype=float)
                src = extra[len(m) + 1:]
                _paper_points(ax, x_ref, ye, np.zeros(len(ye)), EXTRA_COLOR, f"{src} (independent)", "s", beside=True)
                values.append(ye)
        if m == "ft" and spec.name in ("fig5_masking_ratio", "fig7_schedule"):
            s = _scratch_ft()
            ax.axhline(s, ls="--", lw=0.8, color="gray", label=f"ViT-L scratch ({s})")
            values.append(np.array([s]))
        _zoom(ax, np.concatenate(values))
        ax.set_xlabel(spec.x_label)
        ax.set_ylabel(f"paper: {metric_words(pm)}", color=PAPER_COLOR)
        ax.set_title(m if m == pm else f"ours: {m} readout (paper: {pm})", fontsize=9)
        if spec.name == "fig7_schedule":
            ax.set_xscale("log", base=2)
            ax.set_xticks(x_ref, [f"{int(v)}" for v in x_ref])
            ax.minorticks_off()
        elif spec.name == "fig5_masking_ratio":
            ax.set_xticks(x_ref, [f"{round(v * 100)}" for v in x_ref], fontsize=7)
        elif spec.name == "fig9_partial_ft":  # 0, half a block, 1 ... 24: linear below 1, log above
            ax.set_xscale("symlog", linthresh=1.0, linscale=1.5)
            ax.set_xticks(x_ref, ["MLP" if v == 0.5 else f"{v:g}" for v in x_ref])
            ax.minorticks_off()
        else:
            ax.set_xticks(x_ref, [f"{v:g}" for v in x_ref])
        ours = _ours_series(res, key, m)
        twin = []
        if len(ours):
            xo = pd.to_numeric(pd.Series(ours.index), errors="coerce").to_numpy(dtype=float)
            order = np.argsort(xo)
            err = _ours_std(res, key, m, ours.index)[order]
            used = used_values(res, key, percent=spec.name == "fig5_masking_ratio")
            label = f"ours ({res.scale})" + ("; run at the values on the top axis" if used else "")
            ax2 = _twin_ours(ax, xo[order], ours.to_numpy()[order], label,
                             f"ours ({res.scale}): {metric_words(m)}", err)
            if used:  # what ran in each slot, on a top axis of its own (never over the data)
                _used_axis(ax, [(float(x), used[k]) for k, x in zip(ours.index, xo) if k in used])
            controls = _controls(res, key, m)
            for (values, label), style in zip(controls, ("--", ":")):  # widen the axis to show the margins
                _draw_control(ax2, values, label, style, OURS_COLOR, x_of=float)
            if controls:
                _zoom(ax2, np.concatenate([ours.to_numpy(), *[v.to_numpy(dtype=float) for v, _ in controls]]))
            twin.append(ax2)
        _legend(ax, *twin, below=True)


def _used_axis(ax: plt.Axes, ticks: list[tuple[float, str]]) -> None:
    """Above the axes, the value run at each slot where it is not the paper's: short ticks at the slots' x (in
    the axes' own scale: linear, log or symlog), labels rotated so that neighbours never overlap."""
    at = ax.get_xaxis_transform()  # x: data, y: axes fraction
    for x, text in ticks:
        ax.plot([x, x], [1.0, 1.025], transform=at, color=OURS_COLOR, lw=0.8, clip_on=False)
        ax.annotate(text, (x, 1.025), xycoords=at, xytext=(0, 1), textcoords="offset points", rotation=90,
                    ha="center", va="bottom", fontsize=6, color=OURS_COLOR, annotation_clip=False)
    ax.annotate("ours: value run", (0.5, 1.0), xycoords="axes fraction", xytext=(0, 30), textcoords="offset points",
                ha="center", va="bottom", fontsize=7, color=OURS_COLOR, annotation_clip=False)
    ax.set_title(ax.get_title(), fontsize=9, pad=42)


def _bars(ax: plt.Axes, labels: list[str], values: np.ndarray, color: str, baseline: np.ndarray,
          title: str, yerr: np.ndarray | None = None, ylabel: str = "", fmt: str = "{:.1f}") -> None:
    """One bar per setting, each labelled with its value above the bar (above its error bar, where it has one)."""
    x = np.arange(len(labels))
    ok = np.isfinite(values)
    ax.bar(x[ok], values[ok], color=color, alpha=0.85, edgecolor=["black" if b else color for b in baseline[ok]],
           linewidth=[1.6 if b else 0.5 for b in baseline[ok]])
    err = np.zeros(len(values)) if yerr is None else np.nan_to_num(np.asarray(yerr, dtype=float))
    has = ok & (err > 0)  # only the settings with several seeds
    if has.any():
        ax.errorbar(x[has], values[has], yerr=err[has], fmt="none", ecolor="black", capsize=3, lw=1)
    for xi, v, e in zip(x[ok], values[ok], err[ok]):
        ax.annotate(fmt.format(v), (xi, v + e), textcoords="offset points", xytext=(0, 2), ha="center",
                    va="bottom", fontsize=7, annotation_clip=False)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    finite = values[np.isfinite(values)]
    span = np.concatenate([values - err, values + err]) if has.any() else values
    _zoom(ax, span, floor=0.0 if len(finite) and finite.min() >= 0 else None)
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.08 * (hi - lo))  # room for the value labels inside the axes


def draw_bars(fig: plt.Figure, spec: TableSpec, ref: pd.DataFrame, res: OursResult | None) -> None:
    """Table 1 parts: per metric a paper panel and (when present) an ours panel, each zoomed."""
    key = spec.key
    has_ours = res is not None and res.df is not None
    pairs = panels(spec, res)
    axes = fig.subplots(2 if has_ours else 1, len(pairs), squeeze=False)
    keys = ref[key].tolist()
    labels = ref["label"].astype(str).tolist()
    base = ref["baseline"].to_numpy() == 1 if "baseline" in ref.columns else np.zeros(len(ref), bool)
    if has_ours:  # settings we ran that the paper does not have go last
        extra = [k for k in res.df[key].tolist() if k not in keys]
        keys += extra
        labels += [str(k) for k in extra]
        base = np.concatenate([base, np.zeros(len(extra), bool)])
    for j, (m, pm) in enumerate(pairs):
        paper = ref.set_index(key)[pm].reindex(keys).to_numpy(dtype=float)
        _bars(axes[0, j], labels, paper, PAPER_COLOR, base, f"paper: {pm}", ylabel=f"paper: {metric_words(pm)}")
        if has_ours:
            ours = _ours_series(res, key, m).reindex(keys).to_numpy(dtype=float)
            err = _ours_std(res, key, m, pd.Index(keys))
            used = used_values(res, key)
            ours_labels = [f"{lab} (run: {used[k]})" if k in used else lab for k, lab in zip(keys, labels)]
            _bars(axes[1, j], ours_labels, ours, OURS_COLOR, base, f"ours ({res.scale}): {m}"
                  + (" (error bar: +- 1 seed std)" if np.any(err > 0) else ""), err,
                  ylabel=f"ours: {metric_words(m)}")
            controls = _controls(res, key, m)
            for (values, label), style in zip(controls, ("--", ":")):
                _draw_control(axes[1, j], values, label, style, "gray", x_of=lambda k: keys.index(k))
            if controls:
                _zoom(axes[1, j], np.concatenate([ours - err, ours + err,
                                                  *[v.to_numpy(dtype=float) for v, _ in controls]]))
                lo, hi = axes[1, j].get_ylim()
                axes[1, j].set_ylim(lo, hi + 0.08 * (hi - lo))
                # below the axes and their rotated tick labels (a 7 pt label at 20 degrees: ~1.4 pt down per character)
                pad = max(7.0, (1.4 * max(len(t) for t in ours_labels) + 14) / 6)
                axes[1, j].legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, 0.0), borderaxespad=pad,
                                  frameon=False)


def draw_wallclock(fig: plt.Figure, spec: TableSpec, ref: pd.DataFrame, res: OursResult | None) -> None:
    """Table 2: speedup vs the w/ [M] encoder (paper and ours side by side) and hours per panel."""
    key = spec.key
    has_ours = res is not None and res.df is not None
    axes = fig.subplots(1, 3 if has_ours else 2, squeeze=False)[0]
    keys = ref[key].tolist()
    labels = ref["label"].astype(str).tolist()
    x = np.arange(len(keys))
    paper_sp = ref["speedup"].to_numpy(dtype=float)
    ax = axes[0]
    w = 0.4 if has_ours else 0.8
    ok = np.isfinite(paper_sp)
    b = ax.bar(x[ok] - (w / 2 if has_ours else 0), paper_sp[ok], w, color=PAPER_COLOR, label="paper")
    ax.bar_label(b, fmt="%.1fx", fontsize=7)
    if has_ours:
        ours_sp = _ours_series(res, key, "speedup")
        if not len(ours_sp):  # derive it from our hours the way the paper does
            ours_sp = pd.Series(table2_speedups(
                {k: v for k, v in _ours_series(res, key, "time_h").items() if k in keys}))
        ours_v = ours_sp.reindex(keys).to_numpy(dtype=float)
        okv = np.isfinite(ours_v)
        b2 = ax.bar(x[okv] + w / 2, ours_v[okv], w, color=OURS_COLOR, label=f"ours ({res.scale})")
        ax.bar_label(b2, fmt="%.1fx", fontsize=7)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(x, labels, rotation=25, ha="right", fontsize=7)
    ax.set_title("speedup vs encoder w/ [M]", fontsize=9)
    ax.set_ylabel("speedup (x, same encoder w/ [M] = 1)", fontsize=8)
    ax.legend(fontsize=7)
    _bars(axes[1], labels, ref["time_h"].to_numpy(dtype=float), PAPER_COLOR, np.zeros(len(keys), bool),
          "paper: hours (128 TPU-v3 cores, 800 ep)", ylabel="paper: pre-training wall-clock (hours)")
    if has_ours:
        ours_h = _ours_series(res, key, "time_h").reindex(keys).to_numpy(dtype=float)
        _bars(axes[2], labels, ours_h, OURS_COLOR, np.zeros(len(keys), bool), f"ours ({res.scale}): hours",
              ylabel=f"ours ({res.scale}): wall-clock, 800 ep (hours)")


DrawFn = Callable[[plt.Figure, TableSpec, pd.DataFrame, "OursResult | None"], None]
FIGURES: dict[str, DrawFn] = {
    "fig5_masking_ratio": draw_curves,
    "fig7_schedule": draw_curves,
    "fig9_partial_ft": draw_curves,
    "table1a_decoder_depth": draw_bars,
    "table1b_decoder_width": draw_bars,
    "table1c_mask_token": draw_bars,
    "table1d_target": draw_bars,
    "table1e_augmentation": draw_bars,
    "table1f_mask_sampling": draw_bars,
    "table2_wallclock": draw_wallclock,
}


# Figures drawn by their own module (one code path each); imported lazily, since they import this one.
DELEGATED: dict[str, tuple[str, str]] = {"fig8_model_size": ("reproduce.fig8", "build_figure8")}
FIGURE_NAMES: list[str] = [*FIGURES, *DELEGATED]


# ---------------------------------------------------------------------------------------- build
def _caption(spec: TableSpec, res: OursResult | None, width_in: float) -> str:
    if res is not None and res.df is not None:
        first = res.provenance_line()
    else:
        first = f"paper reference only (reproduce/reference/{spec.name}.csv)"  # no draw date: same inputs, same bytes
    lines = [f"{first}  |  {PAPER_CITE}; ours on its own axis/panel"]
    if FIGURES.get(spec.name) is draw_curves:
        lines[0] += "; hollow markers = approx (read from a plot)"
    if FIGURES.get(spec.name) is draw_bars:
        lines.append("thick bar outline = the paper's default setting (Table 1 baseline)")
    lines += [f"paper claim: {c}" for c in spec.claims]
    chars = max(60, int(width_in * 17))  # 6.5 pt monospace: about 17 characters per inch
    return "\n".join(textwrap.fill(line, chars, subsequent_indent="  ") for line in lines)


def build_figure(name: str, res: OursResult | None, out_dir: Path, results_dir: Path) -> FigureRecord:
    """Draw ``name`` (paper + ``res`` when usable) and save PNG and PDF into ``out_dir``."""
    spec, ref = get_spec(name), load_reference(name)
    draw = FIGURES[name]
    width = max(6.0, 4.2 * len(panels(spec, res if res is not None and res.df is not None else None)))
    fig = plt.figure(figsize=(width, 7.0 if draw is draw_bars else 5.8 if draw is draw_curves else 5.2))
    try:
        usable = res if res is not None and res.df is not None else None
        if usable is not None:
            title = f"{spec.label}: ours ({res.scale}) vs paper"
        elif res is not None:
            title = f"{spec.label}: paper only ({res.path.name} {res.problem})"
        else:
            title = f"{spec.label}: paper only (no {results_dir}/{name}_*.csv yet)"
        try:
            draw(fig, spec, ref, usable)
        except Exception as e:  # bad results must not lose the paper's figure
            if usable is None:
                raise
            warnings.warn(f"{name}: could not draw {res.path}: {type(e).__name__}: {e}")
            fig.clf()
            draw(fig, spec, ref, None)
            title = f"{spec.label}: paper only (drawing {res.path.name} failed: {type(e).__name__})"
            usable = None
        caption = _caption(spec, usable, width)
        fig.suptitle(title, fontsize=10)
        top = 0.95
        if draw is draw_curves and usable is not None:  # ours on twin axes: say so where the eye starts
            note = textwrap.fill(TWO_AXES_NOTE, max(60, int(width * 14)))  # 8 pt: about 14 characters per inch
            fig.text(0.5, 0.94, note, ha="center", va="top", fontsize=8, color="dimgray")
            top = 0.93 - 0.025 * (note.count("\n") + 1)
        n_lines = caption.count("\n") + 1
        bottom = min(0.45, 0.03 + 0.024 * n_lines)
        fig.tight_layout(rect=(0, bottom, 1, top))
        fig.text(0.01, 0.01, caption, fontsize=6.5, ha="left", va="bottom", family="monospace")
        stem = f"{name}_{res.scale if res is not None else 'paper'}"
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for ext in ("png", "pdf"):
            path = out_dir / f"{stem}.{ext}"
            savefig_stable(fig, path, dpi=110)
            paths.append(path)
        return FigureRecord(name, res.scale if res is not None else None, title, paths)
    finally:
        plt.close(fig)


def build_all(results_dir: str | Path = "results", out_dir: str | Path = "results/figures",
              names: list[str] | None = None) -> list[FigureRecord]:
    """Build every figure (or ``names``): one per results scale found, or the paper's alone."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    unknown = sorted(set(names or []) - set(FIGURE_NAMES))
    if unknown:
        raise ValueError(f"no figure named {unknown}; figures: {FIGURE_NAMES}")
    records = []
    for name in names or FIGURE_NAMES:
        if name in DELEGATED:
            module, func = DELEGATED[name]
            records += getattr(importlib.import_module(module), func)(results_dir, out_dir)
            continue
        found = find_results(results_dir, name)
        for res in found or [None]:
            if res is not None and res.df is None:
                warnings.warn(f"{res.path}: {res.problem}; drawing the paper's numbers alone")
            records.append(build_figure(name, res, out_dir, results_dir))
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results", help="folder with <table>_<scale>.csv results")
    p.add_argument("--out", default="results/figures", help="folder for the PNG and PDF figures")
    p.add_argument("--only", nargs="*", choices=FIGURE_NAMES, help="build only these figures")
    p.add_argument("--reconstructions", action="store_true",
                   help="also redraw the reconstruction figures (Figs. 2/3/4/6) recorded by .meta.json sidecars in "
                        "--out; needs the checkpoints they name (not in results/: e.g. outputs/demo after `mae pretrain`)")
    p.add_argument("--ckpt", action="append", metavar="PATH", default=None,
                   help="with --reconstructions: draw them from this pre-training checkpoint instead (Fig. 6: once, "
                        "or three times: random, block, grid); implies --reconstructions")
    p.add_argument("--device", default="auto", help="--reconstructions: auto | cpu | cuda[:N]")
    p.add_argument("--no-reconstructions", action="store_true", help=argparse.SUPPRESS)  # the default now
    args = p.parse_args(argv)
    for rec in build_all(args.results, args.out, args.only):
        print(f"{rec.title}\n  -> " + ", ".join(str(p) for p in rec.paths))
    if args.reconstructions or args.ckpt:
        from reproduce.fig_reconstructions import rebuild_figures
        from mae.engine.checkpoint import CheckpointError
        try:
            for path in rebuild_figures(args.out, args.device, ckpts=args.ckpt):
                print(f"reconstruction figure -> {path}")
        except (CheckpointError, ValueError) as e:
            print(f"plots.py: error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
