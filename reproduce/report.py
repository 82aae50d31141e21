"""Ours-vs-paper results: provenance, comparison, verdicts, atomic writing, terminal tables.

Every reproduction script ends the same way::

    prov = provenance(command=" ".join(sys.argv))
    df = compare("table1a_decoder_depth", ours, scale="mini", prov=prov)
    v = verdict(df, "table1a_decoder_depth")
    write_results(df, v, "results/table1a_decoder_depth_mini.csv")
    print(format_table(df, v))

Columns from our runs always end in ``_ours``; the paper's in ``_paper``; ``_diff`` = ours - paper.
A verdict asks the questions a small-scale reproduction can answer: does our best setting match the
paper's best, and do the settings rank the same way (Spearman)?
"""
from __future__ import annotations

import csv
import io
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mae.atomic import atomic_write_text
from mae.provenance import detect_device, git_commit, pin_code_commit, utc_now, versions
from reproduce.reference import get_spec, load_reference

REPO_ROOT = Path(__file__).resolve().parents[1]
#: training-free readouts of every pre-trained cell (mae/protocols/readout.py); the paper's side is its `lin`
READOUT_METRICS = ("knn", "lbfgs", "shot1", "shot3", "shot10")
PROVENANCE_COLUMNS = ("scale", "commit", "device", "date", "command")
_RESERVED = {"label", "paper_approx", "paper_baseline", "scale"}


# ----------------------------------------------------------------------------------- provenance
def provenance(command: str | None = None, device: str | None = None,
               repo: str | Path | None = None) -> dict[str, str]:
    """Where a table was written from: commit, device, torch/python versions, UTC date, command line.

    Rows carry their stages' own provenance (mae/provenance.py); this stamps what has none and names
    the collecting process in the meta.json. ``command`` defaults to this process's argv.
    """
    if command is None:
        command = " ".join(shlex.quote(a) for a in sys.argv)
    v = versions()
    commit = pin_code_commit() if repo is None else git_commit(repo)  # this process: the code it loaded
    return {"commit": commit, "device": device if device is not None else detect_device(),
            "torch": v["torch"], "python": v["python"], "date": utc_now(), "command": command}


MIXED = "mixed: "


def commit_list(text: Any) -> list[str]:
    """The commits a provenance cell names: ``"a"``, ``"a, b"`` or ``"mixed: a, b"`` -> ["a", "b"]."""
    if not isinstance(text, str):
        return []
    text = text.strip().removeprefix(MIXED.strip()).strip()
    return list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))


def commit_text(commits: Any) -> str:
    """One commit as it is; several (a stage resumed under other code, a row whose stages ran at different
    commits) as ``mixed: a, b``, so no reader takes the row for one commit's; none: ""."""
    out = list(dict.fromkeys(c for c in commits if c))
    return out[0] if len(out) == 1 else (MIXED + ", ".join(out) if out else "")


def table_commits(df: pd.DataFrame) -> list[str]:
    """Every commit behind the rows of a results table (its ``commit`` column), each once, sorted."""
    if "commit" not in df.columns:
        return []
    return sorted({c for v in df["commit"] for c in commit_list(v)})


# -------------------------------------------------------------------------------------- compare
def _join_key(values: pd.Series, numeric: bool, where: str) -> pd.Series:
    if values.isna().any():
        raise ValueError(f"{where}: empty key in rows {list(values.index[values.isna()])}")
    if not numeric:
        return values.astype(str)
    k = pd.to_numeric(values, errors="coerce")
    bad = k.isna()
    if bad.any():
        raise ValueError(f"{where}: key values {values[bad].tolist()} are not numeric like the paper's")
    return k.astype(float).round(9)


def compare(table: str, ours: pd.DataFrame, scale: str, prov: dict[str, Any]) -> pd.DataFrame:
    """Join our rows with the paper's on the table's key column.

    ``ours`` holds the key column (e.g. ``decoder_depth``), any of the table's metrics (``ft``,
    ``lin``, ...) in the paper's units, and optionally more columns of ours (suffixed ``_ours``).
    Returns one row per setting of either side (paper order first) with ``<m>_ours, <m>_paper,
    <m>_diff`` for each metric we measured, the paper's secondary references (e.g.
    ``ft_mmselfsup``), ``paper_approx``, and ``scale, commit, device, date, command`` on every row.
    """
    spec = get_spec(table)
    if not spec.metrics:
        raise ValueError(f"{table}: a settings-only reference, nothing to compare")
    if not isinstance(ours, pd.DataFrame):
        raise TypeError(f"ours for {table} must be a pandas DataFrame, got {type(ours).__name__}")
    key = spec.key
    if key not in ours.columns:
        raise ValueError(f"ours for {table}: missing key column {key!r}; has {list(ours.columns)}")
    clash = [c for c in ours.columns if c in _RESERVED or c.endswith(("_paper", "_diff"))
             or c in spec.extra_refs]
    if clash:
        raise ValueError(f"ours for {table}: columns {clash} are reserved for the paper/provenance")
    metrics = [m for m in spec.metrics if m in ours.columns]
    if not metrics:
        raise ValueError(f"ours for {table}: none of the metrics {list(spec.metrics)} in {list(ours.columns)}")
    missing_prov = [k for k in ("commit", "device", "date") if k not in prov]
    if missing_prov:
        raise ValueError(f"prov lacks {missing_prov}; build it with reproduce.report.provenance()")
    dup = ours[key][ours[key].duplicated()].tolist()
    if dup:
        raise ValueError(f"ours for {table}: duplicate {key!r} values {dup}")

    ref = load_reference(table)
    numeric = pd.api.types.is_numeric_dtype(ref[key])
    o = ours.reset_index(drop=True).copy()
    for m in metrics:
        try:
            o[m] = pd.to_numeric(o[m], errors="raise").astype(float)
        except (ValueError, TypeError) as e:
            raise ValueError(f"ours for {table}: metric {m!r} is not numeric ({e})") from None
    o["_k"] = _join_key(o[key], numeric, f"ours for {table}, column {key!r}")
    o["_oo"] = np.arange(len(o))
    o = o.drop(columns=[key]).rename(
        columns={c: (c if c.endswith("_ours") or c.startswith("_") else f"{c}_ours") for c in o.columns})

    extras = [c for c in spec.extra_refs if any(c.startswith(f"{m}_") for m in metrics)]
    ref_cols = ["label", *metrics, *extras, "approx"] + (["baseline"] if "baseline" in ref.columns else [])
    r = ref[ref_cols].rename(columns={**{m: f"{m}_paper" for m in metrics},
                                      "approx": "paper_approx", "baseline": "paper_baseline"})
    r["_k"] = _join_key(ref[key], numeric, f"reference {table}, column {key!r}")
    r["_ro"] = np.arange(len(r))

    df = r.merge(o, on="_k", how="outer", sort=False)
    df = df.sort_values(["_ro", "_oo"], na_position="last", kind="stable").reset_index(drop=True)
    keys = df["_k"]
    if numeric and pd.api.types.is_integer_dtype(ref[key]) and (keys == keys.round()).all():
        keys = keys.astype("int64")
    df.insert(0, key, keys)
    df["label"] = df["label"].fillna("")
    for m in metrics:
        df[f"{m}_diff"] = df[f"{m}_ours"] - df[f"{m}_paper"]
    df["scale"] = scale
    measured = df[[f"{m}_ours" for m in metrics]].notna().any(axis=1)
    for c in ("commit", "device", "date", "command"):
        if f"{c}_ours" not in df.columns:  # rows without their own provenance: ``prov`` made them all
            df[c] = str(prov.get(c) or "")
            continue
        # rows keep the provenance their stages wrote; a measured row without one (a run from before
        # stages wrote it) says "unknown", never the collecting process's; a paper-only row says nothing
        mine = df.pop(f"{c}_ours")
        mine = mine.where(mine.notna() & (mine.astype(str) != ""), None)
        df[c] = mine.fillna(pd.Series(np.where(measured, "unknown", ""), index=df.index)).astype(str)

    triples = [c for m in metrics for c in (f"{m}_ours", f"{m}_paper", f"{m}_diff")]
    paper_meta = [c for c in ("paper_approx", "paper_baseline") if c in df.columns]
    ours_extra = [c for c in df.columns if c.endswith("_ours") and c not in triples]
    order = [key, "label", *triples, *extras, *paper_meta, *ours_extra, *PROVENANCE_COLUMNS]
    return df[order]


def used_values(df: pd.DataFrame, key: str, percent: bool = False) -> dict[Any, str]:
    """{setting: the value run at this scale, as text} where a results table records one other than the
    paper's (``<key>_used_ours``: the cpu scale runs 12.5% masking in the 10% slot, a 64-d decoder in the
    512 slot, 5-80 epochs for 100-1600): figures and the scoreboard name it beside the paper's value."""
    col = f"{key}_used_ours"
    if col not in df.columns or key not in df.columns:
        return {}
    out: dict[Any, str] = {}
    for k, u in zip(df[key], df[col]):
        if pd.isna(u) or str(u) == str(k):
            continue
        try:
            if float(u) == float(k):
                continue
            text = f"{float(u) * 100:g}%" if percent else f"{float(u):g}"
        except (TypeError, ValueError):
            text = str(u)
        out[k] = text
    return out


def table2_speedups(time_h: dict[str, float]) -> dict[str, float]:
    """Table 2 speedups: for each setting, hours of the w/ [M] row of the same encoder / its hours.

    ``time_h`` maps Table 2 ``setting`` keys to wall-clock hours; settings whose encoder has no
    w/ [M] time are left out (the paper's '-'), and so are the w/ [M] rows themselves.
    """
    ref = load_reference("table2_wallclock").set_index("setting")
    unknown = sorted(set(time_h) - set(ref.index))
    if unknown:
        raise ValueError(f"table2_speedups: unknown settings {unknown}; known: {list(ref.index)}")
    with_mask = {ref.at[s, "encoder"]: s for s in ref.index if ref.at[s, "encoder_mask_token"] == "with"}
    out: dict[str, float] = {}
    for s, hours in time_h.items():
        base = with_mask.get(ref.at[s, "encoder"])
        if base is None or base == s or base not in time_h:
            continue
        if not hours or hours <= 0:
            raise ValueError(f"table2_speedups: time for {s!r} must be > 0, got {hours}")
        out[s] = float(time_h[base]) / float(hours)
    return out


# -------------------------------------------------------------------------------------- verdict
def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation with average ranks for ties; NaN for < 3 points or constant ranks."""
    xs = pd.Series(np.asarray(x, dtype=float))
    ys = pd.Series(np.asarray(y, dtype=float))
    if len(xs) != len(ys):
        raise ValueError(f"spearman: lengths differ ({len(xs)} vs {len(ys)})")
    if len(xs) < 3 or xs.isna().any() or ys.isna().any():
        return float("nan")
    rx = xs.rank(method="average").to_numpy()
    ry = ys.rank(method="average").to_numpy()
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
    if denom == 0.0:
        return float("nan")
    return float((dx * dy).sum() / denom)


def _best(keys: pd.Series, values: pd.Series, higher: bool) -> list[Any]:
    target = values.max() if higher else values.min()
    return keys[values == target].tolist()


def _scale_of(df: pd.DataFrame) -> str | None:
    if "scale" not in df.columns:
        return None
    scales = df["scale"].dropna().astype(str).unique().tolist()
    if len(scales) > 1:
        raise ValueError(f"results mix scales {scales}; compare one scale at a time")
    return scales[0] if scales else None


def _row_seeds(row: pd.Series, m: str) -> tuple[dict[int, float], float, int]:
    """(per-seed values, seed std, seed count) of one results row for metric ``m``: the ``<m>_seeds_ours``
    column where written (its count is the metric's own: a seed whose stage failed is not counted), else
    the row's mean as one value (results made before paired seeds) and the row's ``n_seeds``."""
    from reproduce.stats import parse_seed_values
    vals = parse_seed_values(row.get(f"{m}_seeds_ours"))
    std = pd.to_numeric(pd.Series([row.get(f"{m}_std_ours")]), errors="coerce").iloc[0]
    if vals:
        return vals, float(std), len(vals)
    n = pd.to_numeric(pd.Series([row.get("n_seeds_ours")]), errors="coerce").iloc[0]
    v = float(row[f"{m}_ours"])
    vals = {0: v} if math.isfinite(v) else {}
    return vals, float(std), int(n) if n == n else len(vals)


def _comparison(a: pd.Series, b: pd.Series, m: str, n_val: float, noise: tuple[float, int] | None = None) -> Any:
    from reproduce.stats import compare as compare_settings
    av, astd, an = _row_seeds(a, m)
    bv, bstd, bn = _row_seeds(b, m)
    return compare_settings(av, bv, a_std=astd, b_std=bstd, a_n=an, b_n=bn, n_val=n_val, noise=noise)


def _noise(ours: pd.DataFrame, m: str) -> tuple[float, int] | None:
    """The seed spread of the most-seeded row (the baseline's): a stand-in for rows with one seed each."""
    if f"{m}_std_ours" not in ours.columns or "n_seeds_ours" not in ours.columns:
        return None
    from reproduce.stats import parse_seed_values
    n = pd.to_numeric(ours["n_seeds_ours"], errors="coerce")
    if f"{m}_seeds_ours" in ours.columns:  # the metric's own count where its per-seed values are written
        own = ours[f"{m}_seeds_ours"].map(lambda t: len(parse_seed_values(t)) or float("nan"))
        n = own.where(own.notna(), n)
    std = pd.to_numeric(ours[f"{m}_std_ours"], errors="coerce")
    ok = n.notna() & std.notna() & (n >= 2)
    if not ok.any():
        return None
    i = n[ok].idxmax()
    return float(std[i]), int(n[i])


def _first(df: pd.DataFrame, col: str) -> float:
    if col not in df.columns:
        return float("nan")
    v = pd.to_numeric(df[col], errors="coerce").dropna()
    return float(v.iloc[0]) if len(v) else float("nan")


def baseline_rows(ours: pd.DataFrame) -> pd.DataFrame:
    """The baseline's row(s): the paper's baseline, else the row that carries the baseline's initialisation
    controls (``lin_init``); every row when neither is known."""
    if "paper_baseline" in ours.columns and (ours["paper_baseline"] == 1).any():
        return ours[ours["paper_baseline"] == 1]
    if "lin_init_ours" in ours.columns:
        init = pd.to_numeric(ours["lin_init_ours"], errors="coerce").notna()
        if init.any():
            return ours[init]
    return ours


def _baseline_value(ours: pd.DataFrame, col: str) -> float:
    """``col`` of the baseline row; of the first row that has it when the baseline lacks it."""
    v = _first(baseline_rows(ours), col)
    return v if math.isfinite(v) else _first(ours, col)


def control_name(metric: str) -> str:
    """What ``<metric>_margin`` is measured against (reproduce/grid/columns.py): the fine-tune's control is
    the fine-tuning recipe from random weights for as many epochs in all; every frozen readout's is the
    same readout of the pre-training's own starting weights."""
    return "scratch trained as long" if metric == "ft" else "the initialisation"


def _interval_outcome(ours: pd.DataFrame, key: str, m: str, higher: bool, res: dict[str, Any]) -> None:
    """Per-setting intervals vs the baseline row, and the table outcome from the paper's best vs ours
    (reproduce/stats.py): match / tie (equal within +-X) / mismatch (the paper's best is resolved worse) /
    unresolved; ``n/a: ...`` when the numbers cannot carry a comparison."""
    from reproduce.stats import at_chance
    n_val = _first(ours, "n_val_ours")
    vals = ours[f"{m}_ours"].astype(float)
    res["settings"] = {}
    if "paper_baseline" in ours.columns and (ours["paper_baseline"] == 1).any():
        base = ours[ours["paper_baseline"] == 1].iloc[0]
        res["baseline"] = _jsonable(base[key])
        for _, row in ours.iterrows():
            if row[key] == base[key]:
                continue
            c = _comparison(row, base, m, n_val)
            res["settings"][str(_jsonable(row[key]))] = {**c.as_dict(), "vs": "baseline"}
    best = float(vals.max() if higher else vals.min())
    # the margin over the control: our best setting's own where it has one (Fig. 7: a scratch run per
    # schedule, as long in all), else the baseline's
    b_row = ours.loc[vals.idxmax() if higher else vals.idxmin()]  # our best setting's row
    own = pd.to_numeric(pd.Series([b_row.get(f"{m}_margin_ours")]), errors="coerce").iloc[0]
    margin = float(own) if own == own else _baseline_value(ours, f"{m}_margin_ours")
    if own == own and b_row.name not in baseline_rows(ours).index:
        res["margin_of"] = _jsonable(b_row[key])  # not the baseline's: the scoreboard names the setting
    if at_chance(best, _first(ours, "chance_ours"), n_val):
        res["outcome"] = "n/a: at chance"
        return
    if math.isfinite(margin) and margin <= 0:
        res["outcome"] = f"n/a: no margin over {control_name(m)}"
        return
    if res["best_match"]:  # our best is the paper's: resolved when it beats our runner-up beyond the interval
        rest = ours[~ours[key].isin(res["best_ours"])]
        if rest.empty:
            res["outcome"] = "match"
            return
        rv = rest[f"{m}_ours"].astype(float)
        r_row = rest.loc[rv.idxmax() if higher else rv.idxmin()]
        c = _comparison(b_row, r_row, m, n_val, _noise(ours, m))
        res["best_vs_runner_up"] = {**c.as_dict(), "runner_up": _jsonable(r_row[key])}
        # resolved only in the direction of "best": the best is chosen by its mean over all its seeds, the
        # interval is paired over the seeds both rows have, and the two can disagree
        res["outcome"] = "match" if c.call == ("better" if higher else "worse") else "match, not resolved"
        return
    paper_rows = ours[ours[key].isin(res["best_paper"])]
    if paper_rows.empty:
        res["outcome"] = None
        return
    pv = paper_rows[f"{m}_ours"].astype(float)
    p_row = paper_rows.loc[pv.idxmax() if higher else pv.idxmin()]
    c = _comparison(p_row, b_row, m, n_val, _noise(ours, m))
    res["best_vs_paper"] = {**c.as_dict(), "paper_setting": _jsonable(p_row[key]), "our_setting": _jsonable(b_row[key])}
    res["outcome"] = ("mismatch" if c.call == ("worse" if higher else "better") else "tie" if c.call.startswith("equal")
                      else "unresolved")


def verdict(df: pd.DataFrame, table: str) -> dict[str, dict[str, Any]]:
    """Per metric: our best setting vs the paper's, each setting's interval vs the baseline, the outcome,
    Spearman rho over settings both have, n, scale (reproduce/stats.py says how sure each call is).

    Ties in the paper (e.g. ft 84.9 at decoder depth 2, 4 and 8) make a set of best settings;
    ``best_match`` is True when our best set and the paper's overlap (None with < 2 common points).
    The readouts (``knn``, ``lbfgs``, ``shot1``...) are judged against the paper's ``lin``.
    """
    spec = get_spec(table)
    key = spec.key
    if key not in df.columns:
        raise ValueError(f"verdict({table}): results lack the key column {key!r}")
    scale = _scale_of(df)
    pairs = [(m, m) for m in spec.metrics if f"{m}_ours" in df.columns and f"{m}_paper" in df.columns]
    if "lin_paper" in df.columns:
        pairs += [(r, "lin") for r in READOUT_METRICS if f"{r}_ours" in df.columns and df[f"{r}_ours"].notna().any()]
    if not pairs:
        raise ValueError(f"verdict({table}): no '<metric>_ours'/'<metric>_paper' pairs in {list(df.columns)}")
    out: dict[str, dict[str, Any]] = {}
    for m, pm in pairs:
        both = df.dropna(subset=[f"{m}_ours", f"{pm}_paper"])
        n = len(both)
        higher = spec.better(pm)
        notes = [] if m == pm else [f"a readout: the paper's side is its {pm}"]
        res: dict[str, Any] = {"metric": m, "paper_metric": pm, "scale": scale, "n": n, "higher_is_better": higher,
                               "best_ours": [], "best_paper": [], "best_match": None,
                               "spearman": float("nan"), "n_approx": 0, "note": "", "outcome": None}
        if "paper_approx" in both.columns:
            res["n_approx"] = int((both["paper_approx"] == 1).sum())
        std_col = f"{m}_std_ours"
        res["seed_std"] = float(df[std_col].max()) if std_col in df.columns and df[std_col].notna().any() else float("nan")
        stated = spec.stated_best.get(pm)
        ours_all = df.dropna(subset=[f"{m}_ours"])
        scope = None
        if stated and len(ours_all) >= 2:  # the paper's best is stated: rank every setting we measured
            res["best_paper"] = list(stated)
            res["best_ours"] = _best(ours_all[key], ours_all[f"{m}_ours"], higher)
            res["best_match"] = bool(set(res["best_ours"]) & set(stated))
            notes.append(f"the paper's best ({', '.join(map(str, stated))}) is stated in its text; ours ranks all "
                         f"{len(ours_all)} measured settings")
            scope = ours_all
        elif n == 0:
            notes.append("no setting has both our and the paper's number")
        else:
            res["best_ours"] = _best(both[key], both[f"{m}_ours"], higher)
            res["best_paper"] = _best(both[key], both[f"{pm}_paper"], higher)
            if n >= 2 and len(res["best_ours"]) == n:
                notes.append("all our values tie: no best setting, best-setting check undefined")
            elif n >= 2:
                res["best_match"] = bool(set(res["best_ours"]) & set(res["best_paper"]))
                scope = ours_all
            else:
                notes.append("one common setting: best-setting check undefined")
        if scope is not None:
            if m == "flops_rel":  # deterministic: the best settings alone
                res["outcome"] = {True: "match", False: "mismatch"}.get(res["best_match"])
            else:
                _interval_outcome(scope, key, m, higher, res)
        if n < 3:
            notes.append(f"{n} common point(s) (< 3): Spearman undefined")
        else:
            rho = spearman(both[f"{m}_ours"], both[f"{pm}_paper"])
            res["spearman"] = rho
            if math.isnan(rho):
                notes.append("constant values on one side: Spearman undefined")
        if res["n_approx"]:
            notes.append(f"{res['n_approx']} paper point(s) read from a plot (approx)")
        res["note"] = "; ".join(notes)
        out[m] = res
    return out


# ------------------------------------------------------------------------------------- writing
def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_csv(rows: list[dict[str, Any]], path: str | Path, columns: tuple[str, ...],
                     float_digits: int = 6) -> Path:
    """Write dict rows as CSV with exactly ``columns`` (missing -> empty, NaN -> empty, floats to
    ``float_digits`` significant digits), atomically (:func:`atomic_write_text`)."""
    def fmt(v: Any) -> Any:
        return ("" if math.isnan(v) else f"{v:.{float_digits}g}") if isinstance(v, float) else v

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: fmt(r.get(k, "")) for k in columns})
    return atomic_write_text(path, buf.getvalue())


def meta_path(path: str | Path) -> Path:
    """The sidecar of ``results/<name>.csv``: ``results/<name>.meta.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.meta.json")


def write_results(df: pd.DataFrame, verdicts: dict[str, Any], path: str | Path,
                  prov: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Atomically write the rows to ``path`` (CSV) and verdicts + provenance to its ``.meta.json``.

    ``prov`` defaults to the provenance columns of ``df`` (as :func:`compare` writes them).
    """
    path = Path(path)
    if path.suffix != ".csv":
        raise ValueError(f"results path must end in .csv: {path}")
    missing = [c for c in PROVENANCE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: rows lack provenance columns {missing}; build them with compare()")
    if prov is None:
        first = df.iloc[0] if len(df) else pd.Series(dtype=object)
        prov = {c: (str(first[c]) if c in first.index else None) for c in PROVENANCE_COLUMNS}
    meta = {"csv": path.name, "rows": int(len(df)), "scale": _scale_of(df), "commits": table_commits(df),
            "provenance": prov, "verdicts": verdicts}
    csv_path = atomic_write_text(path, df.to_csv(index=False))
    json_path = atomic_write_text(meta_path(path),
                                  json.dumps(_jsonable(meta), indent=2, allow_nan=False) + "\n")
    return csv_path, json_path


def outcome(v: dict[str, Any]) -> str | None:
    """A verdict's word: match / tie / mismatch / unresolved / ``n/a: ...``; verdicts written before
    intervals fall back to what ``best_match`` says; None = undecided."""
    return v.get("outcome") or {True: "match", False: "mismatch"}.get(v.get("best_match"))


def _fmt_keys(keys: list[Any]) -> str:
    return ", ".join(str(k) for k in keys) if keys else "-"


def format_table(df: pd.DataFrame, verdicts: dict[str, Any], title: str | None = None) -> str:
    """A terminal table (key, ours / paper / diff per metric) followed by one verdict line per metric."""
    lines = []
    if title:
        lines.append(title)
    prov = [f"{c}={df[c].iloc[0]}" for c in ("scale",) if c in df.columns and len(df)]
    commits = table_commits(df)
    if commits:  # every commit behind the rows, not the first row's
        prov.append(f"commit{'s' if len(commits) > 1 else ''}={', '.join(commits)}")
    for c in ("device", "date"):
        # rows that did not run here (paper-only, or no provenance) say 'unknown': the header names what is known
        vals = sorted({str(v) for v in df[c] if isinstance(v, str) and v and v != "unknown"}) if c in df.columns else []
        if vals:
            prov.append(f"{c}={vals[-1] if c == 'date' else ', '.join(vals)}")
    if prov:
        lines.append("  ".join(prov))
    metrics = list(verdicts)
    shown = [c for c in df.columns if c == df.columns[0] or c == "label" or c in ("n_seeds_ours",)
             or any(c in (f"{m}_ours", f"{m}_paper", f"{m}_diff") for m in metrics)]
    lines.append(df[shown].to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.2f}"))
    for m, v in verdicts.items():
        match = outcome(v) or "n/a"
        match = match.upper() if match == "mismatch" else match
        rho = v.get("spearman")
        rho_s = "n/a" if rho is None or (isinstance(rho, float) and math.isnan(rho)) else f"{rho:+.2f}"
        line = (f"verdict {m}: best ours={_fmt_keys(v.get('best_ours', []))} "
                f"paper={_fmt_keys(v.get('best_paper', []))} -> {match}; "
                f"Spearman={rho_s} (n={v.get('n', 0)}, scale={v.get('scale')})")
        bvp = v.get("best_vs_paper")
        if bvp:
            line += (f"; paper's best {bvp['paper_setting']} - ours {bvp['our_setting']}: {bvp['delta']:+.1f} "
                     f"[{bvp['lo']:+.1f}, {bvp['hi']:+.1f}] ({bvp['method']})")
        if v.get("note"):
            line += f"  [{v['note']}]"
        lines.append(line)
        for k, c in (v.get("settings") or {}).items():
            lo, hi = c.get("lo"), c.get("hi")
            ci = f"[{lo:+.1f}, {hi:+.1f}]" if isinstance(lo, float) and math.isfinite(lo) else "[-]"
            need = f", {c['seeds_needed']} seeds resolve 2 points" if c.get("seeds_needed") else ""
            lines.append(f"    {k} - baseline: {c['delta']:+.1f} {ci} {c['call']} ({c['method']}{need})")
    return "\n".join(lines)
