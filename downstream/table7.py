"""Table 7 of MAE (pixels vs dVAE tokens as the reconstruction target), assembled from results CSVs.

Table 7 trains nothing of its own: its cells are IN1K fine-tuning, COCO AP box and ADE20K mIoU of
MAE models pre-trained with each target. This script collects those numbers from the CSVs the other
scripts wrote for one scale and puts them beside the paper's::

    python downstream/table7.py --scale smoke
    python downstream/table7.py --scale paper --target table4_coco_vit_large_paper.csv=pixel

Where each cell comes from (``SOURCES``, first match wins; every filled cell is named in
``sources_ours``):

===============================  =========================================  ===============================
results CSV (under --results)    Table 7 cells                              target of the row
===============================  =========================================  ===============================
table1d_target_<scale>.csv       in1k of the Table 1 model (paper: ViT-L,   the row's ``target``
(reproduce/table1.py)            800 ep; smoke/mini: its small model in
                                 the ViT-B column, as table3.py does)
table3_comparison_<scale>.csv    in1k ViT-B / L / H (row ``mae``,           norm_pixel (the released
(reproduce/table3.py)            the long schedule)                         models' target)
table4_coco*_<scale>.csv         coco_box ViT-B / L (row ``mae``; the       the checkpoint's (below)
(downstream/coco_det.py)         paper's pyramid, named in sources_ours)
table5_ade20k*_<scale>.csv       ade_miou ViT-B / L (row ``mae``)           the checkpoint's (below)
(downstream/ade20k_seg.py)
===============================  =========================================  ===============================

Table 1d comes before Table 3, so that a column's three targets share one pre-training recipe when
Table 1d has them (the comparison Table 7 is about); Table 3 fills the columns Table 1d does not.
At paper scale that makes the ViT-L column 800-epoch numbers while the paper's Table 7 uses the long
schedule: ``sources_ours`` says so on every row. A downstream CSV records its checkpoint
(``ckpt_ours``); its target is read from that checkpoint's saved pre-training config (ours:
``config.target`` / ``norm_pix_loss``; official: ``args.norm_pix_loss``), or given with
``--target FILE=TARGET`` (needed for the released checkpoints, which store no config). A CSV whose
target cannot be told is skipped with a message - never guessed. Two files giving the same cell is an
error. Rows and cells without our numbers stay empty. Below paper scale every cell comes from a
stand-in model (the scale's small ViTs, and downstream rows named after their model, e.g.
``mae_vit_smoke``), never the paper's: the paper's numbers stay beside ours, but no difference is
computed and each row's label says ``n/a: not the paper's model``.

Output: ``<results>/table7_pixels_vs_tokens_<scale>.csv`` (+ ``.meta.json`` with the input files and
their commits), written by :mod:`reproduce.report`.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
TABLE = "table7_pixels_vs_tokens"
TARGETS = ("pixel", "norm_pixel", "token")  # Table 7's rows (mae.targets names)
SCALES = ("smoke", "mini", "paper")
SIZES = ("vit_base", "vit_large", "vit_huge")
NOT_PAPER = "n/a: not the paper's model"


class Table7Error(ValueError):
    """Inputs that cannot be assembled into Table 7 (mixed scales, conflicting cells, bad --target)."""


@dataclass(frozen=True)
class Source:
    """One kind of results CSV holding Table 7 numbers.

    ``columns(scale)`` maps Table 7 metrics to the CSV's columns; ``row`` is the key value of our
    row (None: every row whose key is a Table 7 target, as in Table 1d); ``target`` says how the
    row's target is known: ``"key"`` (the row's key), ``"checkpoint"`` (its ``ckpt_ours``), or a name.
    """

    name: str
    pattern: str  # glob under --results, {scale} filled in
    columns: Callable[[str], dict[str, str]]
    row: str | None
    target: str
    note: str = ""


def table1_column(scale: str) -> str:
    """Which Table 7 model column the scale's Table 1 model fills (paper: ViT-L; small scales: ViT-B)."""
    from reproduce.scales import get_scale

    s = get_scale(scale, "/unused" if scale == "paper" else None, check_data=False)
    model = s.pretrain.model
    for column, preset in s.table3_models.items():
        if preset == model:
            return column
    return SIZES[1] if "large" in model else SIZES[0]


SOURCES: tuple[Source, ...] = (
    Source("table1d", "table1d_target_{scale}.csv", lambda scale: {f"in1k_{table1_column(scale)}": "ft_ours"},
           row=None, target="key", note="Table 1d recipe (paper: 800 ep)"),
    Source("table3", "table3_comparison_{scale}.csv", lambda scale: {f"in1k_{s}": f"ft_{s}_ours" for s in SIZES},
           row="mae", target="norm_pixel", note="Table 3 recipe (long schedule)"),
    Source("coco", "table4_coco*_{scale}.csv",
           lambda scale: {f"coco_box_{s}": f"ap_box_{s}_ours" for s in SIZES[:2]}, row="mae", target="checkpoint"),
    Source("ade20k", "table5_ade20k*_{scale}.csv",
           lambda scale: {f"ade_miou_{s}": f"miou_{s}_ours" for s in SIZES[:2]}, row="mae", target="checkpoint"),
)


# ---------------------------------------------------------------------------- checkpoint target
def checkpoint_target(path: str | os.PathLike[str]) -> tuple[str | None, str]:
    """(pre-training target, how it was found) from a checkpoint's saved config; (None, why) if unknown."""
    import torch

    import mae.engine.checkpoint as ckpt  # registers argparse.Namespace for weights-only loading

    p = Path(path)
    if not p.is_file():
        return None, f"checkpoint {path} not found"
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be memory-mapped
        try:
            obj = ckpt.load_checkpoint(p)
        except ckpt.CheckpointError as e:
            return None, str(e)
    if not isinstance(obj, dict):
        return None, f"{path} is not a checkpoint dict"
    cfg = obj.get("config")
    if isinstance(cfg, dict) and "target" in cfg:
        target = str(cfg["target"])
        if cfg.get("norm_pix_loss") and target == "pixel":
            target = "norm_pixel"
        return target, "its config.target"
    args = obj.get("args")
    if args is not None and hasattr(args, "norm_pix_loss"):
        return ("norm_pixel" if args.norm_pix_loss else "pixel"), "its args.norm_pix_loss"
    return None, f"{path} stores no pre-training config (a released checkpoint?)"


def _find_checkpoint(recorded: str, csv_path: Path) -> Path:
    """A recorded checkpoint path: as written, else relative to the CSV's folder or the repository."""
    p = Path(recorded).expanduser()
    if p.is_absolute() or p.is_file():
        return p
    for base in (csv_path.parent, REPO):
        if (base / p).is_file():
            return base / p
    return p


# ------------------------------------------------------------------------------------ assembly
@dataclass
class Assembly:
    """What :func:`assemble` found: values per (target, metric), where they came from, and notes."""

    values: dict[tuple[str, str], float]
    sources: dict[tuple[str, str], str]
    inputs: dict[str, dict[str, str]]
    notes: list[str]


def _read_csv(path: Path, scale: str) -> pd.DataFrame:
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    if "scale" in df.columns:
        scales = sorted(df["scale"].dropna().astype(str).unique())
        if scales and scales != [scale]:
            raise Table7Error(f"{path}: rows of scale {scales}, expected {scale!r} (rename or move the file)")
    return df


def parse_targets(items: Sequence[str]) -> dict[str, str]:
    """``["table4_coco_paper.csv=pixel"]`` -> {file name or path: target}."""
    out = {}
    for item in items:
        name, sep, target = item.rpartition("=")
        if not sep or not name.strip():
            raise Table7Error(f"--target expects FILE=TARGET (e.g. table4_coco_paper.csv=norm_pixel), got {item!r}")
        if target.strip() not in TARGETS:
            raise Table7Error(f"--target {item}: {target.strip()!r} is not a Table 7 target ({', '.join(TARGETS)})")
        out[name.strip()] = target.strip()
    return out


def assemble(results: str | Path, scale: str, targets: dict[str, str] | None = None) -> Assembly:
    """Collect Table 7's cells from the results CSVs of ``scale`` under ``results`` (see module doc)."""
    results = Path(results)
    targets = dict(targets or {})
    used_targets: set[str] = set()
    values: dict[tuple[str, str], float] = {}
    sources: dict[tuple[str, str], str] = {}
    origin_kind: dict[tuple[str, str], str] = {}
    inputs: dict[str, dict[str, str]] = {}
    notes: list[str] = []
    for src in SOURCES:
        for path in sorted(results.glob(src.pattern.format(scale=scale))):
            if path.name.startswith(TABLE):
                continue
            df = _read_csv(path, scale)
            given = targets.get(path.name) or targets.get(str(path))
            used_targets.update(k for k in (path.name, str(path)) if k in targets)
            columns = src.columns(scale)
            rows = _rows_with_targets(src, columns, df, path, given, notes)
            if not rows:
                continue
            first = df.iloc[0]
            inputs[path.name] = {c: str(first[c]) for c in ("commit", "date", "command") if c in df.columns}
            for target, row, how in rows:
                for metric, col in columns.items():
                    v = row.get(col, np.nan)
                    if v is None or pd.isna(v):
                        continue
                    cell = (target, metric)
                    where = f"{metric}<-{path.name}" + (f" ({how})" if how else "") + _pyramid_note(row)
                    if cell in values:
                        if origin_kind[cell] == src.name:
                            raise Table7Error(f"two results for {target} / {metric}: {sources[cell]} and {where}; "
                                              "move one out of the results folder")
                        notes.append(f"{where} not used: {target} / {metric} already from {sources[cell]}")
                        continue
                    values[cell], sources[cell], origin_kind[cell] = float(v), where, src.name
    unused = sorted(set(targets) - used_targets)
    if unused:
        raise Table7Error(f"--target names files that were not found for scale {scale!r} under {results}: {unused}")
    return Assembly(values, sources, inputs, notes)


def _pyramid_note(row: dict[str, Any]) -> str:
    """COCO rows record the feature pyramid they were trained with (coco_det.py --pyramid)."""
    pyr = row.get("pyramid_ours")
    return "" if pyr is None or (isinstance(pyr, float) and pd.isna(pyr)) else f" [pyramid {pyr}]"


def _rows_with_targets(src: Source, columns: dict[str, str], df: pd.DataFrame, path: Path, given: str | None,
                       notes: list[str]) -> list[tuple[str, dict[str, Any], str]]:
    """[(target, row as dict, how the target is known)] of one CSV (skips what cannot be told)."""
    key = df.columns[0]
    if src.row is None:  # Table 1d: one row per target
        if given:
            raise Table7Error(f"--target {path.name}: its rows are targets already")
        out = []
        for _, r in df.iterrows():
            t = str(r[key])
            if t in TARGETS:
                out.append((t, r.to_dict(), src.note))
            elif any(c in r and not pd.isna(r[c]) for c in columns.values()):
                notes.append(f"{path.name}: row {t!r} is not a Table 7 target; not used")
        return out
    keys = df[key].astype(str)
    # a downstream row of a model that is not the paper's is named after it (mae_vit_smoke); the paper's
    # own row is then empty on our side
    hit = df[(keys == src.row) | keys.str.startswith(f"{src.row}_vit_")]
    measured = hit[hit[[c for c in columns.values() if c in hit.columns]].notna().any(axis=1)]
    hit = measured if not measured.empty else hit[keys[hit.index] == src.row]
    if hit.empty:
        notes.append(f"{path.name}: no {src.row!r} row; not used")
        return []
    r = hit.iloc[0].to_dict()
    if not any(c in r and not pd.isna(r[c]) for c in columns.values()):
        return []  # nothing measured (yet)
    if src.target in TARGETS:
        if given and given != src.target:
            raise Table7Error(f"--target {path.name}={given}: that table is the {src.target} target by construction")
        return [(src.target, r, src.note)]
    if given:
        return [(given, r, "target from --target")]
    recorded = r.get("ckpt_ours")
    if recorded is None or pd.isna(recorded):
        notes.append(f"{path.name}: no ckpt_ours column to tell the target; pass --target {path.name}=TARGET")
        return []
    target, how = checkpoint_target(_find_checkpoint(str(recorded), path))
    if target is None:
        notes.append(f"{path.name}: target unknown ({how}); skipped - pass --target {path.name}=TARGET")
        return []
    if target not in TARGETS:
        notes.append(f"{path.name}: checkpoint target {target!r} is not a Table 7 row; not used")
        return []
    return [(target, r, f"target from {how}")]


def ours_frame(found: Assembly) -> pd.DataFrame:
    """Our rows for :func:`reproduce.report.compare`: every Table 7 target and metric, NaN where missing."""
    from reproduce.reference import get_spec

    metrics = get_spec(TABLE).metrics
    rows = []
    for t in TARGETS:
        row: dict[str, Any] = {"target": t}
        row.update({m: found.values.get((t, m), np.nan) for m in metrics})
        row["sources"] = "; ".join(found.sources[(t, m)] for m in metrics if (t, m) in found.sources)
        rows.append(row)
    return pd.DataFrame(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="downstream/table7.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Inputs: table1d_target_<scale>.csv, table3_comparison_<scale>.csv, "
                                       "table4_coco*_<scale>.csv, table5_ade20k*_<scale>.csv (see the module docstring).")
    p.add_argument("--scale", required=True, choices=SCALES)
    p.add_argument("--results", default=str(REPO / "results"), help="folder of the input CSVs (default: results/)")
    p.add_argument("--out", default=None, help="output CSV (default <results>/table7_pixels_vs_tokens_<scale>.csv)")
    p.add_argument("--target", action="append", default=[], metavar="FILE=TARGET",
                   help="pre-training target of a downstream CSV whose checkpoint stores none "
                        "(pixel | norm_pixel | token; repeatable)")
    return p


def run(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Assemble, compare with the paper, write the CSV + meta; returns the table."""
    from reproduce.reference import get_spec
    from reproduce.report import compare, format_table, provenance, verdict, write_results

    args = build_parser().parse_args(argv)
    results = Path(args.results)
    if not results.is_dir():
        raise FileNotFoundError(f"--results {results}: no such folder")
    found = assemble(results, args.scale, parse_targets(args.target))
    if not found.inputs:
        patterns = ", ".join(s.pattern.format(scale=args.scale) for s in SOURCES)
        raise Table7Error(f"no results for scale {args.scale!r} under {results} ({patterns}): run reproduce/table1.py "
                          "--part target, reproduce/table3.py, downstream/coco_det.py or downstream/ade20k_seg.py first")
    prov = provenance()
    df = compare(TABLE, ours_frame(found), scale=args.scale, prov=prov)
    if args.scale != "paper":  # stand-in models in every column: beside the paper's numbers, not compared
        for m in get_spec(TABLE).metrics:
            df[f"{m}_diff"] = np.nan
        df["label"] = df["label"].astype(str) + f" ({NOT_PAPER}: {args.scale}-scale models)"
    verdicts = verdict(df, TABLE)
    out = Path(args.out or results / f"{TABLE}_{args.scale}.csv")
    write_results(df, verdicts, out, prov={**{k: df[k].iloc[0] for k in ("scale", "commit", "device", "date", "command")},
                                           "inputs": found.inputs, "notes": found.notes})
    for n in found.notes:
        print(f"note: {n}")
    print(format_table(df, verdicts, title=f"[table7] {TABLE} -> {out}"))
    return df


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: input errors become one line on stderr and exit status 2."""
    from mae.cli import guarded
    from mae.provenance import require_same_checkout

    require_same_checkout()

    return guarded("table7", run, argv, extra_errors=(Table7Error,))[0]


if __name__ == "__main__":
    raise SystemExit(main())
