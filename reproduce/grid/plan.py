"""Planning a grid: which cells (``--only``), checks, ``--set`` overrides, seeds and the dry-run text."""
from __future__ import annotations

import dataclasses
import math
import shlex
import types
import typing
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from mae.config import from_dict, to_dict
from reproduce.grid.errors import GridError, MAE_PROTOCOLS
from reproduce.grid.launch import stage_command
from reproduce.grid.model import Cell, Ref
from reproduce.grid.store import check_identity, ref_path, stage_dir


def _same_value(a: Any, text: str) -> bool:
    if str(a) == text:
        return True
    try:
        return math.isclose(float(a), float(text), rel_tol=0, abs_tol=1e-9)
    except (TypeError, ValueError):
        return False


def parse_only(items: Sequence[str] | None) -> dict[str, Any]:
    """``["decoder_depth=8", ...]`` -> ``{"decoder_depth": "8"}``; a key given twice keeps both values
    (``mask_ratio=0.1 mask_ratio=0.75`` -> ``("0.1", "0.75")``: either matches); a clear error on a bad item."""
    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise GridError(f"--only expects KEY=VALUE (e.g. decoder_depth=8), got {item!r}")
        k, v = (x.strip() for x in item.split("=", 1))
        if k in out:
            prev = out[k] if isinstance(out[k], tuple) else (out[k],)
            out[k] = tuple(dict.fromkeys((*prev, v)))
        else:
            out[k] = v
    return out


def _values(v: Any) -> tuple[Any, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def only_text(only: dict[str, Any]) -> str:
    """``--only`` as the user wrote it, for messages."""
    return " ".join(f"{k}={x}" for k, v in only.items() for x in _values(v))


def select_cells(cells: Sequence[Cell], only: dict[str, Any] | Sequence[str] | None) -> list[Cell]:
    """The reported cells matching ``only`` (every key; any of a key's values) plus the helper cells they
    depend on."""
    only = parse_only(only) if not isinstance(only, dict) else only
    if not only:
        return list(cells)
    reported = [c for c in cells if c.report]
    keys = sorted({k for c in reported for k in c.key})
    for k, vs in only.items():
        if k not in keys:
            raise GridError(f"--only {k}={_values(vs)[0]}: unknown key {k!r}; keys of this table: "
                            f"{', '.join(keys) or '-'}")
        values = [c.key[k] for c in reported if k in c.key]
        for v in _values(vs):
            if not any(_same_value(x, v) for x in values):
                shown = ", ".join(dict.fromkeys(str(x) for x in values))
                raise GridError(f"--only {k}={v}: no cell has {k}={v}; values: {shown}")
    chosen = [c for c in reported
              if all(k in c.key and any(_same_value(c.key[k], v) for v in _values(vs)) for k, vs in only.items())]
    if not chosen:
        raise GridError(f"--only {only_text(only)}: no cell matches all of them")
    by_name = {c.name: c for c in cells}
    needed: dict[str, Cell] = {}

    def add(c: Cell) -> None:
        if c.reads is not None:
            if c.reads.cell not in by_name:
                raise GridError(f"cell {c.name!r} reads unknown cell {c.reads.cell!r}")
            add(by_name[c.reads.cell])
        for s in c.stages:
            for ref in s.inputs.values():
                if ref.cell and ref.cell != c.name:
                    if ref.cell not in by_name:
                        raise GridError(f"cell {c.name!r} stage {s.name!r} depends on unknown cell {ref.cell!r}")
                    add(by_name[ref.cell])
        needed.setdefault(c.name, c)

    for c in chosen:
        add(c)
    return [c for c in cells if c.name in needed]


def check_grid(cells: Sequence[Cell]) -> None:
    """Names unique; every input refers to an existing stage that runs before it (and is linked to it:
    ``Stage.upstream``)."""
    names = [c.name for c in cells]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GridError(f"duplicate cell names {dup}")
    order = {c.name: i for i, c in enumerate(cells)}
    by_name = {c.name: c for c in cells}
    for c in cells:
        if c.reads is not None:
            owner = by_name.get(c.reads.cell)
            if owner is None or order[owner.name] > order[c.name]:
                raise GridError(f"{c.name}: reads cell {c.reads.cell!r}, which is unknown or comes later")
            try:
                owner.stage(c.reads.stage)
            except KeyError as e:
                raise GridError(f"{c.name}: {e.args[0]}") from None
        for i, s in enumerate(c.stages):
            for fname, ref in s.inputs.items():
                owner = by_name.get(ref.cell or c.name)
                if owner is None:
                    raise GridError(f"{c.name}/{s.name}: input {fname} refers to unknown cell {ref.cell!r}")
                try:
                    s.upstream[fname] = (owner, owner.stage(ref.stage))
                except KeyError as e:
                    raise GridError(f"{c.name}/{s.name}: input {fname}: {e.args[0]}") from None
                if owner is c and [x.name for x in c.stages].index(ref.stage) >= i:
                    raise GridError(f"{c.name}/{s.name}: input {fname} refers to a later stage {ref.stage!r}")
                if owner is not c and order[owner.name] > order[c.name]:
                    raise GridError(f"{c.name}/{s.name}: depends on cell {owner.name!r}, which comes later")


def _fmt_key(cell: Cell) -> str:
    return ", ".join(f"{k}={v}" for k, v in cell.key.items()) or cell.name


def describe_plan(cells: Sequence[Cell], root: Path, launcher: str = "local", nproc_per_node: int = 1) -> str:
    """The dry-run plan: every stage, its run directory, its status and the command that runs it."""
    lines = [f"plan: {len(cells)} cell(s) under {root} (launcher {launcher})"]
    for i, c in enumerate(cells, 1):
        lines.append(f"[{i}/{len(cells)}] {c.name}  ({_fmt_key(c)})" + ("" if c.report else "  [helper]"))
        if c.reads is not None:
            lines.append(f"    reads {c.reads.cell}/{c.reads.stage} (no run of its own)")
        for s in c.stages:
            run_dir = stage_dir(root, c.name, s.name)
            status, diff = check_identity(root, c, s)
            word = {"done": "done, skipped", "resume": "resume from checkpoint-last.pth", "new": "run",
                    "changed": "CHANGED recipe: refused", "unknown": "UNKNOWN (no identity): refused"}[status]
            lines.append(f"    {s.name:<12} {s.protocol:<19} {word:<32} {run_dir}")
            if diff and status in ("changed", "unknown"):
                lines.append(f"        differs: {'; '.join(diff[:6])} (--rerun-changed / --adopt)")
            for fname, ref in s.inputs.items():
                lines.append(f"        --{fname} {ref_path(root, c, ref)}")
            if status == "done":
                continue
            if s.protocol not in MAE_PROTOCOLS:
                lines.append(f"        (runs in this process: {s.protocol}.run)")
            else:
                lines.append(f"        $ {shlex.join(stage_command(s, run_dir / 'config.yaml', launcher, nproc_per_node))}")
    return "\n".join(lines)


def parse_set(items: Sequence[str] | None) -> list[tuple[str | None, str, Any]]:
    """``["pretrain.epochs=10", "device=cpu"]`` -> [(stage or None, field, value text)]; the text is parsed
    per field by :func:`apply_overrides`, the way the ``mae`` command line parses that field's flag."""
    out = []
    for item in items or ():
        if "=" not in item:
            raise GridError(f"--set expects [STAGE.]FIELD=VALUE (e.g. pretrain.epochs=10), got {item!r}")
        lhs, value = item.split("=", 1)
        stage, _, fname = lhs.strip().rpartition(".")
        if not fname:
            raise GridError(f"--set {item!r}: empty field name")
        out.append((stage or None, fname, value.strip()))
    return out


#: config fields the grid sets itself: never from --set (with what to use instead)
GRID_FIELDS = {"seed": "set per cell by --seeds (e.g. --seeds 5 or --seeds 0,5)",
               "output_dir": "the grid's run directory (--work-dir)",
               "resume": "set by the grid (it resumes by itself)",
               "max_iters": "a stage stopped early never finishes (a recipe's length is --set <stage>.epochs)"}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def parse_field(cls: type, fname: str, text: Any) -> Any:
    """``text`` as a value of ``cls.fname``, parsed as the ``mae`` command line parses ``--fname`` (``15e-4`` is
    a float; none / null / empty are None where the field allows it; lists are YAML); a non-string passes."""
    if not isinstance(text, str):
        return text
    tp, optional = _unwrap_optional(typing.get_type_hints(cls)[fname])
    if text.lower() in ("none", "null", "~", ""):
        if optional:
            return None
        raise GridError(f"--set {fname}={text}: {cls.__name__}.{fname} cannot be none")
    try:
        if tp is bool:
            value = yaml.safe_load(text)
            if not isinstance(value, bool):
                raise ValueError(text)
            return value
        if tp in (int, float, str):
            return tp(text)
        if typing.get_origin(tp) is tuple:
            value = yaml.safe_load(text)
            items = value if isinstance(value, list) else [value]
            args = typing.get_args(tp)
            if Ellipsis not in args and len(items) != len(args):  # tuple[float, float]: two values, as the flag
                raise ValueError(f"{len(args)} values, got {len(items)}")
            elem = args[0]
            return tuple(elem(x) if elem in (int, float, str) else x for x in items)
        return yaml.safe_load(text)
    except (TypeError, ValueError, yaml.YAMLError):
        kind = getattr(tp, "__name__", str(tp))
        raise GridError(f"--set {fname}={text}: expected {'a' if kind[0] not in 'aeiou' else 'an'} {kind} "
                        f"for {cls.__name__}.{fname}") from None


def _fields(config: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(config)]


def _settable(stage: Any) -> list[str]:
    return [f for f in _fields(stage.config) if f not in GRID_FIELDS and f not in stage.inputs]


def _checks(s: Any, cfg: Any) -> str | None:
    """The error of ``cfg.validate()`` (the ``mae`` command line's checks) with the stage's grid-made inputs
    left out (their files do not exist before the grid runs), or None."""
    import dataclasses
    validate = getattr(cfg, "validate", None)
    if validate is None:
        return None
    try:
        dataclasses.replace(cfg, **{k: None for k in s.inputs if k in _fields(cfg)}).validate()
    except (TypeError, ValueError) as e:
        return " ".join(str(e).split())
    return None


def _set_one(s: Any, fname: str, text: Any) -> None:
    value = parse_field(type(s.config), fname, text)
    shown = text if isinstance(text, str) else repr(value)  # as the user wrote it
    try:  # from_dict type-checks tuples
        new = from_dict(type(s.config), {**to_dict(s.config), fname: value})
    except (TypeError, ValueError) as e:
        raise GridError(f"--set {fname}={shown} for stage {s.name!r}: {' '.join(str(e).split())}") from None
    # the checks `mae` makes of a flag (ranges, choices), where the stage's recipe passed them before the --set
    # (a placeholder data path of a paper scale planned before its data exists fails them either way)
    error = _checks(s, new) if _checks(s, s.config) is None else None
    if error is not None:
        raise GridError(f"--set {fname}={shown} for stage {s.name!r}: {error}")
    s.config = new


def derive_controls(cells: Sequence[Cell]) -> None:
    """Give every control (a stage with ``derive``) the recipe it derives from its cell's stages now."""
    for c in cells:
        for s in c.stages:
            if s.derive is not None:
                s.config = s.derive(c)


def apply_overrides(cells: Sequence[Cell], overrides: Sequence[tuple[str | None, str, Any]]) -> None:
    """Set config fields on every matching stage (by stage name), then derive the controls from the recipes
    they control (:func:`derive_controls`: ``--set finetune.epochs=2`` lengthens the scratch control too); a
    control named itself (``finetune_scratch.epochs=9``) is set after that. Unknown stages and fields,
    fields the grid sets (seed, output_dir, resume, inputs) and values of the wrong type raise one line."""
    stage_names = sorted({s.name for c in cells for s in c.stages})
    for stage_name, fname, text in overrides:
        if fname in GRID_FIELDS:
            raise GridError(f"--set {fname}: not a recipe field here, {GRID_FIELDS[fname]}")
        if stage_name is not None and stage_name not in stage_names:
            raise GridError(f"--set {stage_name}.{fname}: no stage {stage_name!r}; stages: {', '.join(stage_names)}")
        hit = False
        for c in cells:
            for s in c.stages:
                if stage_name is not None and s.name != stage_name:
                    continue
                if fname not in _fields(s.config):
                    if stage_name is not None:
                        raise GridError(f"--set {stage_name}.{fname}: {type(s.config).__name__} has no field "
                                        f"{fname!r}; fields: {', '.join(_settable(s))}")
                    continue
                if fname in s.inputs:
                    raise GridError(f"--set {fname}: set by the grid runner (the file of stage "
                                    f"{s.inputs[fname].stage!r}), not overridable")
                hit = True
                if s.derive is None:
                    _set_one(s, fname, text)
        if not hit:
            known = sorted({f for c in cells for s in c.stages for f in _settable(s)})
            raise GridError(f"--set {fname}: no stage of this table has a field {fname!r}; "
                            f"fields: {', '.join(known)}")
    derive_controls(cells)
    for stage_name, fname, text in overrides:
        for c in cells:
            for s in c.stages:
                if s.derive is not None and s.name == stage_name:
                    _set_one(s, fname, text)



# --------------------------------------------------------------------------------- seeds
def seeded_name(name: str, seed: int, first: int) -> str:
    """A cell's run-directory name at ``seed``: the plain name for the first seed, else ``<name>_seed<N>``."""
    return name if seed == first else f"{name}_seed{seed}"


def with_seeds(cells: Sequence[Cell], seeds_of: Any) -> list[Cell]:
    """Every seeded cell, once per seed of ``seeds_of(cell)`` (a sequence of ints; the first keeps the
    cell's name). A cell is seeded when it has stages and is reported or has seeds of its own (a shared
    pre-training); seed ``s`` sets ``seed = s`` on each stage, so paired settings share initialisation,
    data order and mask noise wherever the switch allows. Inputs follow the seed: within the cell, and
    from another seeded cell (seed ``s`` reads that cell's seed ``s``); inputs from unseeded helper cells
    (a tokenizer) stay shared. A reported cell that only reads a seeded cell's stage is repeated per seed."""
    plan = {c.name: list(seeds_of(c)) for c in cells if c.stages and (c.report or c.seeds)}

    def follow(ref: Ref, s: int, who: str) -> Ref:
        if ref.cell is None or ref.cell not in plan:
            return ref
        if s not in plan[ref.cell]:
            raise GridError(f"cell {who}: seed {s} reads cell {ref.cell!r}, which runs seeds "
                            f"{', '.join(map(str, plan[ref.cell]))} only")
        return replace(ref, cell=seeded_name(ref.cell, s, plan[ref.cell][0]))

    out: list[Cell] = []
    for c in cells:
        if c.name in plan and plan[c.name]:
            seeds = plan[c.name]
            for s in seeds:
                name = seeded_name(c.name, s, seeds[0])
                stages = [replace(st, config=replace(st.config, seed=s),
                                  inputs={k: follow(r, s, name) for k, r in st.inputs.items()}) for st in c.stages]
                out.append(Cell(name, dict(c.key), stages, info={**c.info, "seed": s}, report=c.report))
        elif c.report and c.reads is not None and c.reads.cell in plan:
            seeds = list(seeds_of(c))
            for s in seeds:
                name = seeded_name(c.name, s, seeds[0])
                out.append(Cell(name, dict(c.key), [], info={**c.info, "seed": s}, report=True,
                                reads=follow(c.reads, s, name)))
        else:
            out.append(c)
    return out


def parse_seeds(text: str | None, scale_seeds: Sequence[int]) -> tuple[int, ...] | None:
    """``--seeds``: None (default), ``all`` (the scale's seeds), N (the first N: the scale's, then 0, 1, ...
    continued) or a comma list ``0,3,5``."""
    if text is None:
        return None
    text = text.strip()
    if text == "all":
        return tuple(scale_seeds)
    if "," in text:
        try:
            seeds = tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise GridError(f"--seeds {text!r}: expected all, a count or a comma list of integers") from None
        if len(set(seeds)) != len(seeds) or not seeds:
            raise GridError(f"--seeds {text!r}: seeds must be distinct")
        return seeds
    try:
        n = int(text)
    except ValueError:
        raise GridError(f"--seeds {text!r}: expected all, a count or a comma list of integers") from None
    if n < 1:
        raise GridError("--seeds must be >= 1")
    seeds = list(scale_seeds[:n])
    nxt = 0
    while len(seeds) < n:
        if nxt not in seeds:
            seeds.append(nxt)
        nxt += 1
    return tuple(seeds)
