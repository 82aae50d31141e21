"""The run-directory store: where a stage runs, what it left, and whether that is the stage asked for.

A stage's **identity** is its protocol, its resolved config minus operational fields (run directory,
logging, worker counts: :data:`OPERATIONAL_FIELDS`) and the identities of the stages whose files it
reads (``inputs``). It is written to ``identity.json`` when the stage starts. A finished stage is
reused only when its recorded identity equals the planned one; a field the recorded identity lacks
(added to the code later) matches when the plan holds that field's default. Anything else is
``changed`` (the config or an upstream stage differs) or ``unknown`` (made before identities existed).

The identity says what the grid started; what the folder ran is checked too: a ``config.yaml`` whose
recipe differs from the identity, or a recipe changed on resume (``recipe_changes.jsonl``: the run was
resumed through the ``mae`` command line with other flags), makes the stage ``changed``, and so does an
upstream stage that is not finished (moved aside, rerun, or still running) under a finished one.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from mae.engine import rundir
from reproduce.grid.errors import LAST_CHECKPOINT, METRICS_FILE, GridError
from reproduce.grid.model import Cell, Ref, Stage


def grid_root(work_dir: str | Path, table: str, scale: str) -> Path:
    return Path(work_dir) / f"{table}_{scale}"


def stage_dir(root: str | Path, cell: str, stage: str) -> Path:
    return Path(root) / cell / stage


def ref_path(root: Path, cell: Cell, ref: Ref) -> Path:
    return stage_dir(root, ref.cell or cell.name, ref.stage) / ref.file


IDENTITY_FILE = rundir.GRID_IDENTITY
#: config fields that do not change a finished stage's numbers (where it writes, how it logs, how many workers;
#: ``max_iters`` only stops a run early, and a stopped run is never finished)
OPERATIONAL_FIELDS = frozenset({
    "output_dir", "resume", "progress", "tensorboard", "log_every", "num_workers", "save_every", "ckpt_every_iters",
    "keep_last", "max_iters", "vis_every", "vis_images", "save_init", "threads", "monitor_every", "monitor_data", "monitor_bank",
    "monitor_queries", "monitor_k", "monitor_temperature", "monitor_linear"})


def identity_config(stage: Stage) -> dict[str, Any]:
    """The result-defining fields of a stage's config (inputs and operational fields left out)."""
    from mae.config import to_dict
    data = to_dict(stage.config)
    return {k: v for k, v in data.items() if k not in OPERATIONAL_FIELDS and k not in stage.inputs}


def identity_hash(protocol: str, config: dict[str, Any], inputs: dict[str, str]) -> str:
    import hashlib
    blob = json.dumps({"protocol": protocol, "config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_json(path: Path, fix: str) -> dict[str, Any] | None:
    """A run directory's JSON file, None when absent; a clear error (with ``fix``) when it is not JSON."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GridError(f"{path} is not valid JSON ({e}); {fix}") from None


def read_identity(run_dir: str | Path) -> dict[str, Any] | None:
    return _read_json(Path(run_dir) / IDENTITY_FILE, "delete it and pass --adopt, or --rerun-changed")


def planned_identity(root: Path, cell: Cell, stage: Stage) -> dict[str, Any]:
    """The identity this stage would record now: its config, and the recorded hashes of its inputs' stages."""
    inputs = {}
    for fname, ref in stage.inputs.items():
        up = read_identity(stage_dir(root, ref.cell or cell.name, ref.stage))
        inputs[fname] = f"{ref.cell or cell.name}/{ref.stage}@{up['hash'] if up else 'none'}:{ref.file}"
    config = identity_config(stage)
    return {"protocol": stage.protocol, "config": config, "inputs": inputs,
            "hash": identity_hash(stage.protocol, config, inputs)}


def identity_diff(recorded: dict[str, Any], planned: dict[str, Any], config_cls: type | None = None) -> list[str]:
    """Fields (``name: old -> new``) in which a recorded identity differs from the planned one; [] = same.

    A config field the record lacks matches when the planned value is the field's default (a field
    added to the code after the run, whose default keeps the old behaviour)."""
    out = []
    if _protocol(recorded.get("protocol")) != _protocol(planned["protocol"]):
        out.append(f"protocol: {recorded.get('protocol')} -> {planned['protocol']}")
    old, new = recorded.get("config", {}), planned["config"]
    defaults: dict[str, Any] = {}
    if config_cls is not None:
        from mae.config import to_dict
        try:
            defaults = to_dict(config_cls())
        except (TypeError, ValueError):
            defaults = {}
    for k in sorted(set(old) | set(new)):
        if k in old and k in new:
            if old[k] != new[k]:
                out.append(f"{k}: {old[k]!r} -> {new[k]!r}")
        elif k in new:
            if k not in defaults or defaults[k] != new[k]:
                out.append(f"{k}: (not recorded) -> {new[k]!r}")
        else:
            out.append(f"{k}: {old[k]!r} -> (no such field)")
    for k in sorted(set(recorded.get("inputs", {})) | set(planned["inputs"])):
        a, b = recorded.get("inputs", {}).get(k), planned["inputs"].get(k)
        if a != b:
            out.append(f"input {k}: {a} -> {b}")
    return out


#: protocol names a stage was recorded under before the protocol moved (same code, same config)
PROTOCOL_ALIASES = {"reproduce.tokenizer": "tokenizer", "mae.protocols.tokenizer": "tokenizer"}


def _protocol(name: Any) -> Any:
    return PROTOCOL_ALIASES.get(name, name)


def write_identity(run_dir: Path, identity: dict[str, Any], **extra: Any) -> None:
    """Record ``identity`` (and ``grid_command``: this process's command line, which the ``mae`` command
    line names when it refuses the folder)."""
    import shlex
    import sys
    from reproduce.report import atomic_write_text
    import os
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py"):  # a script: run with python, from the folder it was started in
        argv = ["python", argv[0], *argv[1:]]
    extra.setdefault("grid_command", f"cd {shlex.quote(os.getcwd())} && {shlex.join(argv)}")
    atomic_write_text(Path(run_dir) / IDENTITY_FILE, json.dumps({**identity, **extra}, indent=1, sort_keys=True) + "\n")


def _recipe_fields(data: dict[str, Any], planned: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in OPERATIONAL_FIELDS and k not in planned["inputs"]
            and k not in rundir.RUN_CONTROL}


def resume_changes(run_dir: Path, planned: dict[str, Any]) -> list[str]:
    """Recipe fields changed when the run in ``run_dir`` was resumed (``recipe_changes.jsonl``, written by a
    resume through the ``mae`` command line with other flags); operational fields left out."""
    out = []
    try:
        records = rundir.recipe_changes(run_dir)
    except (OSError, ValueError) as e:
        return [f"{rundir.RECIPE_CHANGES}: unreadable ({' '.join(str(e).split())[:80]})"]
    for record in records:
        if not isinstance(record, dict):
            return [f"{rundir.RECIPE_CHANGES}: unreadable (a line is not a record)"]
        for k, change in sorted((record.get("changes") or {}).items()):
            if _recipe_fields({k: None}, planned):
                old, new = (list(change) + [None, None])[:2] if isinstance(change, (list, tuple)) else (None, change)
                out.append(f"{k}: {old!r} -> {new!r} on resume ({rundir.RECIPE_CHANGES}, {record.get('at', '')})")
    return out


def ran_diff(run_dir: Path, planned: dict[str, Any], config_cls: type | None) -> list[str]:
    """How the recipe the folder ran differs from ``planned``: every recipe field changed on resume, and its
    ``config.yaml`` (when there is one) field by field; [] = ran as planned."""
    import yaml
    out = resume_changes(run_dir, planned)
    path = Path(run_dir) / "config.yaml"
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            return [*out, f"config.yaml: unreadable ({' '.join(str(e).split())[:80]})"]
        if not isinstance(data, dict):
            return [*out, "config.yaml: not a mapping"]
        ran = {"protocol": planned["protocol"], "inputs": planned["inputs"], "config": _recipe_fields(data, planned)}
        plan = {**planned, "config": _recipe_fields(planned["config"], planned)}
        out += [f"config.yaml {d}" for d in identity_diff(ran, plan, config_cls)]
    return out


def adopt_diff(run_dir: Path, planned: dict[str, Any], config_cls: type) -> list[str]:
    """Fields in which a pre-identity run's config.yaml differs from the plan (inputs and operational fields
    ignored); a missing config.yaml is one difference."""
    import yaml
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return ["config.yaml: missing"]
    data = yaml.safe_load(path.read_text()) or {}
    config = {k: v for k, v in data.items() if k not in OPERATIONAL_FIELDS and k not in planned["inputs"]}
    return resume_changes(run_dir, planned) + identity_diff(
        {"protocol": planned["protocol"], "inputs": planned["inputs"], "config": config}, planned, config_cls)


def check_identity(root: Path, cell: Cell, stage: Stage) -> tuple[str, list[str]]:
    """(status, differences): ``new``, ``done`` / ``resume`` (same identity), ``changed`` or ``unknown``."""
    run_dir = stage_dir(root, cell.name, stage.name)
    status = stage_status(run_dir)
    if status == "new":
        return "new", []
    recorded = read_identity(run_dir)
    if recorded is None:
        return "unknown", ["no identity.json (made outside the grid, or before stage identities)"]
    planned = planned_identity(root, cell, stage)
    diff = identity_diff(recorded, planned, type(stage.config))
    if diff:
        return "changed", diff
    diff = ran_diff(run_dir, planned, type(stage.config))  # changed through the command line since the grid started it
    if diff:
        return "changed", diff
    # an input's stage made by another recipe: the record still names its old hash, so only its own
    # check can tell (a finetune of an outdated pre-training is not current either); an input's stage that
    # is not finished under a stage that read it was moved aside, rerun or removed since
    for fname, (up_cell, up_stage) in stage.upstream.items():
        up_status, up_diff = check_identity(root, up_cell, up_stage)
        if up_status in ("changed", "unknown"):
            return "changed", [f"input {fname}: {up_cell.name}/{up_stage.name} is {up_status} "
                               f"({'; '.join(up_diff[:2])})"]
        if up_status != "done":
            return "changed", [f"input {fname}: {up_cell.name}/{up_stage.name} is not finished (moved aside, rerun "
                               "or removed after this stage read it)"]
    return status, []


def stage_status(run_dir: str | Path) -> str:
    """``done`` (metrics.json), ``resume`` (checkpoint-last.pth only) or ``new``."""
    run_dir = Path(run_dir)
    if (run_dir / METRICS_FILE).is_file():
        return "done"
    if (run_dir / LAST_CHECKPOINT).is_file():
        return "resume"
    return "new"


def read_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    return _read_json(Path(run_dir) / METRICS_FILE, "delete it to rerun the stage")


def resolve_stage_config(root: Path, cell: Cell, stage: Stage) -> Any:
    """The stage's config with its run directory, its inputs as paths and resume set when resumable."""
    run_dir = stage_dir(root, cell.name, stage.name)
    over: dict[str, Any] = {"output_dir": str(run_dir)}
    for fname, ref in stage.inputs.items():
        over[fname] = str(ref_path(root, cell, ref))
    names = {f.name for f in dataclasses.fields(stage.config)}
    if "resume" in names:
        # only when there is something to resume: pretrain fits a PCA target only when resume is None
        over["resume"] = "auto" if (run_dir / LAST_CHECKPOINT).is_file() else None
    return replace(stage.config, **over)
