"""Reading finished stages into table rows: metric columns, controls, and seed aggregation."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from reproduce.grid.model import Cell, GridResult, StageResult
from reproduce.report import commit_list, commit_text


def acc(result: StageResult | None, which: str = "final", metric: str = "acc1") -> float:
    """A stage's ``metric`` from metrics.json: ``final`` (last epoch) or ``best``; NaN if not finished."""
    if result is None or not result.metrics:
        return float("nan")
    block = result.metrics.get(which) or {}
    v = block.get(metric)
    return float(v) if isinstance(v, (int, float)) else float("nan")


def train_seconds(result: StageResult | None) -> float:
    """Sum of the stage's per-epoch training times (epoch_time_s), NaN if not finished."""
    if result is None or not result.metrics:
        return float("nan")
    hist = result.metrics.get("history") or []
    return float(sum(float(h.get("epoch_time_s", 0.0)) for h in hist))


#: readouts of every pre-trained cell (mae/protocols/readout.py), on the cls token; ``_mean``: the mean token
READOUT_COLUMNS = ("knn", "lbfgs", "shot1", "shot3", "shot10")
PROVENANCE_KEYS = ("commit", "device", "date", "command")


def stage_commits(result: StageResult | None) -> list[str]:
    """Every commit (``-dirty`` included) that ran a finished stage: the one that finished it (its
    metrics.json) and, where the run was resumed under other code, each commit that ran in its folder before
    (``commits.jsonl``, mae.engine.rundir; a part run before commits were recorded is ``unknown``)."""
    if result is None or not result.metrics:
        return []
    from mae.engine.rundir import run_commits
    p = result.metrics.get("provenance") or {}
    final = [str(p.get("commit", "unknown")) + ("-dirty" if p.get("dirty") else "")] if p else []
    ran = run_commits(result.run_dir)  # the finishing process is in it too: one commit there adds nothing
    return list(dict.fromkeys([*ran, *final])) if len(ran) > 1 else final


def stage_provenance(results: Sequence[StageResult | None]) -> dict[str, str]:
    """The provenance the stages wrote when they ran: every commit that ran them (``mixed: a, b`` where they
    differ, :func:`reproduce.report.commit_text`), devices, the latest date, commands."""
    vals: dict[str, list[str]] = {k: [] for k in PROVENANCE_KEYS}
    for r in results:
        p = (r.metrics or {}).get("provenance") if r is not None else None
        if not p:
            continue
        vals["commit"] += stage_commits(r)
        vals["device"].append(str(p.get("device", "")))
        vals["date"].append(str(p.get("date", "")))
        vals["command"].append(str(p.get("command", "")))
    out = {k: ", ".join(dict.fromkeys(v for v in vals[k] if v)) for k in ("device", "command")}
    out["commit"] = commit_text(vals["commit"])
    out["date"] = max(vals["date"]) if vals["date"] else ""
    return {k: v for k, v in out.items() if v}


#: the recipe fields a control's column records beside its number (``<control>_recipe``)
CONTROL_RECIPE_FIELDS = {"finetune": ("epochs", "warmup_epochs", "blr", "batch_size"),
                         "linprobe": ("epochs", "warmup_epochs", "blr", "batch_size"),
                         "readout": ("source", "k", "shots", "lbfgs_c")}
#: control stages of the shared baseline (reproduce.scales.baseline_controls) -> their recipe column
CONTROL_COLUMNS = {"finetune_scratch": "ft_scratch_recipe", "linprobe_init": "lin_init_recipe",
                   "linprobe_randinit": "lin_randinit_recipe", "readout_init": "readout_init_recipe",
                   "readout_pixels": "readout_pixels_recipe"}


def recipe_text(stage: Any) -> str:
    """A control's recipe in one cell of a CSV: ``epochs=5 warmup_epochs=0 blr=0.001 batch_size=16``."""
    fields = CONTROL_RECIPE_FIELDS.get(stage.protocol, ("epochs", "blr"))
    parts = []
    for f in fields:
        v = getattr(stage.config, f, None)
        if v is not None:
            parts.append(f"{f}={'/'.join(map(str, v)) if isinstance(v, (tuple, list)) else v}")
    return " ".join(parts)


def readout_columns(result: StageResult | None, suffix: str = "", mean_token: bool = True) -> dict[str, Any]:
    """kNN / L-BFGS / k-shot columns of a readout stage (cls token; ``*_mean`` for the mean token)."""
    out: dict[str, Any] = {}
    for m in READOUT_COLUMNS:
        out[f"{m}{suffix}"] = acc(result, "final", m)
        if mean_token:
            out[f"{m}_mean{suffix}"] = acc(result, "final", f"{m}_mean")
    return out


def row_stages(c: Cell, grid: GridResult) -> list[StageResult | None]:
    """The results behind a cell's row: its stages (or the stage it reads) and, through their inputs, every
    stage they read (Fig. 9's partial fine-tune reads the baseline's pre-training: both made the number)."""
    cells = {x.name: x for x in grid.cells}
    seen: dict[tuple[str, str], StageResult | None] = {}

    def add(cell: Cell, stage: Any) -> None:
        if (cell.name, stage.name) in seen:
            return
        seen[(cell.name, stage.name)] = grid.get(cell.name, stage.name)
        for up_cell, up_stage in stage.upstream.values():
            add(up_cell, up_stage)

    if c.reads is not None and c.reads.cell in cells:
        owner = cells[c.reads.cell]
        add(owner, owner.stage(c.reads.stage))
    for s in c.stages:
        add(c, s)
    return list(seen.values()) if seen else [grid.reported(c)]


def cell_rows(grid: GridResult, columns: Callable[[Cell, GridResult], dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per reported cell: its key, its ``info``, what ``columns(cell, grid)`` measures, and the
    provenance its stages (and the stages they read) wrote when they ran."""
    rows = []
    for c in grid.cells:
        if not c.report:
            continue
        rows.append({**c.key, **c.info, **columns(c, grid), **stage_provenance(row_stages(c, grid))})
    return rows


def standard_columns(cell: Cell, grid: GridResult) -> dict[str, Any]:
    """ft / lin (final top-1), the readouts, and the controls of a pretrain -> finetune / linprobe cell.

    Controls (the shared baseline's, reproduce.scales.baseline_controls): ``lin_init`` / ``<readout>_init``
    read the very weights pre-training starts from; ``<readout>_pixels`` the raw pixels; ``lin_randinit`` the
    classifier's own random init; ``ft_scratch`` fine-tunes from random weights for pre-training + fine-tuning
    epochs. ``<m>_margin`` = m minus its initialisation control; ``<m>_vs_pixels`` = m minus raw pixels.
    """
    g = lambda s: grid.get(cell.name, s)  # noqa: E731
    out: dict[str, Any] = {}
    names = [s.name for s in cell.stages]
    if "finetune" in names:
        out["ft"] = acc(g("finetune"))
        out["ft_best"] = acc(g("finetune"), "best")
        out["ft_time_s"] = train_seconds(g("finetune"))
    if "linprobe" in names:
        out["lin"] = acc(g("linprobe"))
        out["lin_best"] = acc(g("linprobe"), "best")
        out["lin_time_s"] = train_seconds(g("linprobe"))
    if "readout" in names:
        out.update(readout_columns(g("readout")))
        r = g("readout")
        out["n_val"] = acc(r, "final", "n_val")
        nc = acc(r, "final", "num_classes")
        out["chance"] = 100.0 / nc if nc == nc and nc > 0 else float("nan")
    if "linprobe_init" in names:
        out["lin_init"] = acc(g("linprobe_init"))
        out["lin_margin"] = out.get("lin", float("nan")) - out["lin_init"]
    if "linprobe_randinit" in names:
        out["lin_randinit"] = acc(g("linprobe_randinit"))
    if "readout_init" in names:
        for m in READOUT_COLUMNS:
            out[f"{m}_init"] = acc(g("readout_init"), "final", m)
            out[f"{m}_margin"] = out.get(m, float("nan")) - out[f"{m}_init"]
    if "readout_pixels" in names:
        for m in READOUT_COLUMNS:
            out[f"{m}_pixels"] = acc(g("readout_pixels"), "final", m)
            out[f"{m}_vs_pixels"] = out.get(m, float("nan")) - out[f"{m}_pixels"]
    if "finetune_scratch" in names:
        out["ft_scratch"] = acc(g("finetune_scratch"))
        out["ft_margin"] = out.get("ft", float("nan")) - out["ft_scratch"]
    for name, col in CONTROL_COLUMNS.items():  # the recipe each control ran, beside its number
        if name in names and g(name) is not None and g(name).finished:
            out[col] = recipe_text(cell.stage(name))
    if "pretrain" in names:
        pre = g("pretrain")
        out["pretrain_loss"] = acc(pre, "final", "train_loss")
        out["pretrain_time_s"] = train_seconds(pre)
    return out


#: control columns whose spread over seeds is reported too
SEED_STD_COLUMNS = ("lin_init", "lin_margin", "lin_randinit", "ft_scratch", "ft_margin",
                    *(f"{m}_{c}" for m in READOUT_COLUMNS for c in ("init", "margin", "pixels", "vs_pixels")))


def aggregate_seeds(rows: Any, key: str, metrics: Sequence[str] = ()) -> Any:
    """One row per ``key`` value: the seeds of a setting (a ``seed`` column) become the mean of every
    numeric column, with ``<column>_std`` (sample std, ddof 1) of the ``metrics`` and controls, the
    per-seed values of the ``metrics`` as ``<metric>_seeds`` ("seed:value;..."; what paired verdicts
    read), ``n_seeds``, and the provenance columns joined over the seeds."""
    import pandas as pd

    if rows.empty or key not in rows.columns:
        return rows
    rows = rows.assign(seed=rows["seed"].fillna(0).astype(int)) if "seed" in rows.columns else rows.assign(seed=0)
    numeric = [c for c in rows.columns if c != key and c != "seed" and pd.api.types.is_numeric_dtype(rows[c])]
    out = []
    for _, g in rows.groupby(key, sort=False):
        g = g.sort_values("seed", kind="stable")
        r = g.iloc[0].to_dict()
        for c in numeric:
            r[c] = float(g[c].mean())
            if c in metrics or c in SEED_STD_COLUMNS:
                r[f"{c}_std"] = float(g[c].std(ddof=1)) if g[c].notna().sum() > 1 else float("nan")
            if c in metrics:
                r[f"{c}_seeds"] = ";".join(f"{int(sd)}:{v:.4f}" for sd, v in zip(g["seed"], g[c]) if v == v)
        for c in PROVENANCE_KEYS:
            if c in g.columns:
                vals = [str(v) for v in g[c] if isinstance(v, str) and v]
                if c == "date":
                    r[c] = max(vals) if vals else ""
                elif c == "commit":
                    r[c] = commit_text([x for v in vals for x in commit_list(v)])
                else:
                    r[c] = ", ".join(dict.fromkeys(x.strip() for v in vals for x in v.split(", ")))
        r["seed"] = ",".join(str(int(x)) for x in g["seed"].dropna())
        measured = [c for c in metrics if c in g.columns]
        r["n_seeds"] = int(g[measured].notna().any(axis=1).sum()) if measured else len(g)  # seeds with a number
        out.append(r)
    return pd.DataFrame(out)
