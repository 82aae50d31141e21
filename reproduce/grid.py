"""The grid runner behind every reproduction script (one code path for Tables 1-3 and Figs. 5, 7, 9).

A table is a list of :class:`Cell` s (one setting each, e.g. ``decoder_depth=8``); a cell is a chain of
:class:`Stage` s (pretrain -> finetune / linprobe / partial), each a protocol ``Config``. Every stage
gets its own run directory::

    <work_dir>/<table>_<scale>/<cell>/<stage>/   config.yaml, log.txt, train_log.csv,
                                                 checkpoint-last.pth, metrics.json (when finished)

- a stage whose ``metrics.json`` exists is finished and skipped on rerun;
- a stage with a ``checkpoint-last.pth`` but no ``metrics.json`` was interrupted and resumes
  (``resume="auto"``: mid-epoch, bitwise on CPU, see mae/engine/loop.py);
- a stage's inputs (``Ref``) point at another stage's file, e.g. the fine-tune's ``finetune`` field at
  the pre-training's ``checkpoint-last.pth``, or the token target's ``tokenizer`` at ``tokenizer.pth``.

Launchers: ``local`` runs the stages in this process (also inside a torchrun/SLURM job);
``torchrun`` re-launches each stage as ``python -m torch.distributed.run --nproc_per_node N -m mae
<protocol> --config <run dir>/config.yaml``; ``slurm`` submits one job per cell through submitit
(cells that depend on another cell wait for its job). ``--dry-run`` prints the plan, ``--collect``
only reads finished runs. Scripts are thin: which cells, which reference table (reproduce/report.py).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import json
import math
import os
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # scripts run as `python reproduce/<name>.py`
    sys.path.insert(0, str(REPO_ROOT))

from mae.config import SCALES, from_dict, save_config, to_dict  # noqa: E402

METRICS_FILE = "metrics.json"
LAST_CHECKPOINT = "checkpoint-last.pth"
LAUNCHERS = ("local", "torchrun", "slurm")
MAE_PROTOCOLS = ("pretrain", "finetune", "linprobe", "partial")
DEFAULT_WORK_DIR = "outputs/reproduce"
_ACTIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING"}


class GridError(RuntimeError):
    """A grid cannot be planned or run as asked (bad --only, missing data, unfinished dependency...)."""


# ------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class Ref:
    """A file of another stage's run directory: ``stage`` of ``cell`` (None = the same cell)."""

    stage: str
    cell: str | None = None
    file: str = LAST_CHECKPOINT


@dataclass
class Stage:
    """One protocol run of a cell. ``inputs`` maps a config field to the file of another stage."""

    name: str
    protocol: str  # pretrain | finetune | linprobe | partial, or a module path with Config/run (a tokenizer)
    config: Any
    inputs: dict[str, Ref] = field(default_factory=dict)
    local_only: bool = False  # small single-process stages: run in this process even with --launcher torchrun

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.config):
            raise TypeError(f"stage {self.name!r}: config must be a protocol Config dataclass, got "
                            f"{type(self.config).__name__}")
        names = {f.name for f in dataclasses.fields(self.config)}
        bad = sorted(set(self.inputs) - names)
        if bad:
            raise ValueError(f"stage {self.name!r}: inputs {bad} are not fields of {type(self.config).__name__}")


@dataclass
class Cell:
    """One setting of a table: its key (the paper's key column), stages, and extra CSV columns."""

    name: str
    key: dict[str, Any]
    stages: list[Stage]
    info: dict[str, Any] = field(default_factory=dict)  # e.g. the setting actually used at this scale
    report: bool = True  # False for shared helper cells (a tokenizer, a shared pre-training)
    reads: Ref | None = None  # a cell with no stages of its own reports this stage of another cell

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"bad cell name {self.name!r} (a folder name without '/')")
        names = [s.name for s in self.stages]
        if self.reads is not None and (self.stages or not self.reads.cell):
            raise ValueError(f"cell {self.name!r}: a cell that reads another cell's stage has no stages itself")
        if len(set(names)) != len(names):
            raise ValueError(f"cell {self.name!r}: duplicate stage names {names}")

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"cell {self.name!r} has no stage {name!r}; stages: {[s.name for s in self.stages]}")


@dataclass
class StageResult:
    """What a stage left: ``status`` is done (finished before), ran, resumed, failed, planned, submitted
    or missing (``--collect`` without a finished run); ``metrics`` is its metrics.json."""

    cell: str
    stage: str
    run_dir: Path
    status: str
    metrics: dict[str, Any] | None = None
    seconds: float = 0.0
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.metrics is not None


@dataclass
class GridResult:
    """Every stage's result of one grid run, addressable by (cell, stage)."""

    table: str
    scale: str
    root: Path
    cells: list[Cell]
    stages: dict[tuple[str, str], StageResult] = field(default_factory=dict)

    @property
    def failed(self) -> list[StageResult]:
        return [r for r in self.stages.values() if r.status == "failed"]

    @property
    def complete(self) -> bool:
        return all(r.finished for r in self.stages.values())

    def get(self, cell: str, stage: str) -> StageResult | None:
        return self.stages.get((cell, stage))

    def reported(self, cell: Cell, stage: str | None = None) -> StageResult | None:
        """The result a cell reports: its own ``stage`` (default: its first) or the stage it reads."""
        if cell.reads is not None:
            return self.get(cell.reads.cell, cell.reads.stage)
        return self.get(cell.name, stage or cell.stages[0].name)


@dataclass
class SlurmOptions:
    """submitit parameters for ``--launcher slurm`` (one job per cell)."""

    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int = 10
    timeout_min: int = 72 * 60
    mem_gb: int | None = None
    account: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    wait: bool = True


# ------------------------------------------------------------------------------------ paths
def grid_root(work_dir: str | Path, table: str, scale: str) -> Path:
    return Path(work_dir) / f"{table}_{scale}"


def stage_dir(root: str | Path, cell: str, stage: str) -> Path:
    return Path(root) / cell / stage


def ref_path(root: Path, cell: Cell, ref: Ref) -> Path:
    return stage_dir(root, ref.cell or cell.name, ref.stage) / ref.file


def stage_status(run_dir: str | Path) -> str:
    """``done`` (metrics.json), ``resume`` (checkpoint-last.pth only) or ``new``."""
    run_dir = Path(run_dir)
    if (run_dir / METRICS_FILE).is_file():
        return "done"
    if (run_dir / LAST_CHECKPOINT).is_file():
        return "resume"
    return "new"


def read_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GridError(f"{path} is not valid JSON ({e}); delete it to rerun the stage") from None


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


# --------------------------------------------------------------------------------- selecting
def _same_value(a: Any, text: str) -> bool:
    if str(a) == text:
        return True
    try:
        return math.isclose(float(a), float(text), rel_tol=0, abs_tol=1e-9)
    except (TypeError, ValueError):
        return False


def parse_only(items: Sequence[str] | None) -> dict[str, str]:
    """``["decoder_depth=8", ...]`` -> ``{"decoder_depth": "8"}``; a clear error on a bad item."""
    out: dict[str, str] = {}
    for item in items or ():
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise GridError(f"--only expects KEY=VALUE (e.g. decoder_depth=8), got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def select_cells(cells: Sequence[Cell], only: dict[str, str] | Sequence[str] | None) -> list[Cell]:
    """The reported cells matching every KEY=VALUE of ``only`` plus the helper cells they depend on."""
    only = parse_only(only) if not isinstance(only, dict) else only
    if not only:
        return list(cells)
    reported = [c for c in cells if c.report]
    keys = sorted({k for c in reported for k in c.key})
    for k, v in only.items():
        if k not in keys:
            raise GridError(f"--only {k}={v}: unknown key {k!r}; keys of this table: {', '.join(keys) or '-'}")
        values = [c.key[k] for c in reported if k in c.key]
        if not any(_same_value(x, v) for x in values):
            shown = ", ".join(dict.fromkeys(str(x) for x in values))
            raise GridError(f"--only {k}={v}: no cell has {k}={v}; values: {shown}")
    chosen = [c for c in reported if all(k in c.key and _same_value(c.key[k], v) for k, v in only.items())]
    if not chosen:
        raise GridError(f"--only {only}: no cell matches all of them")
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
    """Names unique; every input refers to an existing stage that runs before it."""
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
                    owner.stage(ref.stage)
                except KeyError as e:
                    raise GridError(f"{c.name}/{s.name}: input {fname}: {e.args[0]}") from None
                if owner is c and [x.name for x in c.stages].index(ref.stage) >= i:
                    raise GridError(f"{c.name}/{s.name}: input {fname} refers to a later stage {ref.stage!r}")
                if owner is not c and order[owner.name] > order[c.name]:
                    raise GridError(f"{c.name}/{s.name}: depends on cell {owner.name!r}, which comes later")


# ------------------------------------------------------------------------------- launching
def protocol_module(protocol: str) -> Any:
    name = f"mae.protocols.{protocol}" if protocol in MAE_PROTOCOLS else protocol
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise GridError(f"protocol {protocol!r}: cannot import {name} ({e})") from None
    if not hasattr(module, "run"):
        raise GridError(f"protocol {protocol!r}: {name} has no run(cfg)")
    return module


def stage_command(stage: Stage, config_path: Path, launcher: str, nproc_per_node: int = 1) -> list[str]:
    """The command line that runs ``stage`` from its written config (what torchrun launches)."""
    if stage.protocol not in MAE_PROTOCOLS:
        raise GridError(f"stage {stage.name!r}: {stage.protocol} has no command line; it runs in this process")
    target = ["-m", "mae", stage.protocol, "--config", str(config_path)]
    if launcher == "torchrun" and not stage.local_only:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc_per_node}", *target]
    return [sys.executable, *target]


def _run_in_process(stage: Stage, cfg: Any) -> None:
    protocol_module(stage.protocol).run(cfg)


def _run_torchrun(stage: Stage, cfg: Any, nproc_per_node: int) -> None:
    config_path = Path(cfg.output_dir) / "config.yaml"
    cmd = stage_command(stage, config_path, "torchrun", nproc_per_node)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    print(f"[grid]   $ {shlex.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, env=env, check=False)  # this cwd: relative --data paths keep their meaning
    if proc.returncode != 0:
        raise GridError(f"{shlex.join(cmd)} exited with status {proc.returncode}")


def _free_memory() -> None:
    """Give the GPU memory of a finished in-process stage back before the next one (a no-op on CPU)."""
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


@contextlib.contextmanager
def stage_lock(run_dir: Path, echo: Callable[[str], None] = print) -> Any:
    """Hold ``<run_dir>/.lock`` (flock): two grid processes that share a cell run it once; the second
    waits, then finds it finished. The lock goes with the process that holds it (a killed run frees it)."""
    if not _is_main_process():  # ranks of one multi-process stage: rank 0 holds it for them
        yield
        return
    import fcntl
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            echo(f"[grid]   {run_dir} is running in another process; waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def execute_stage(root: Path, cell: Cell, stage: Stage, launcher: str = "local", nproc_per_node: int = 1
                  ) -> StageResult:
    """Run one stage unless finished: skip (done), resume (checkpoint) or start; returns its result."""
    with stage_lock(stage_dir(root, cell.name, stage.name)):
        return _execute_stage(root, cell, stage, launcher, nproc_per_node)


def _execute_stage(root: Path, cell: Cell, stage: Stage, launcher: str, nproc_per_node: int) -> StageResult:
    run_dir = stage_dir(root, cell.name, stage.name)
    status = stage_status(run_dir)
    if status == "done":
        return StageResult(cell.name, stage.name, run_dir, "done", read_metrics(run_dir))
    for fname, ref in stage.inputs.items():
        src = ref_path(root, cell, ref)
        if not src.is_file():
            raise GridError(f"{cell.name}/{stage.name}: input {fname} = {src} does not exist "
                            f"(stage {ref.cell or cell.name}/{ref.stage} did not produce it)")
    cfg = resolve_stage_config(root, cell, stage)
    if _is_main_process():
        save_config(cfg, run_dir / "config.yaml")
    t0 = time.time()
    if launcher == "torchrun" and not stage.local_only and stage.protocol in MAE_PROTOCOLS:
        _run_torchrun(stage, cfg, nproc_per_node)
    else:
        _run_in_process(stage, cfg)
        from mae.engine.distributed import barrier
        barrier()  # in a multi-process SLURM job: rank 0 writes metrics.json after the others return
    _free_memory()
    metrics = read_metrics(run_dir)
    if metrics is None:
        raise GridError(f"{cell.name}/{stage.name} stopped before finishing (no {METRICS_FILE} in {run_dir}); "
                        "rerun the same command to resume it")
    return StageResult(cell.name, stage.name, run_dir, "resumed" if status == "resume" else "ran", metrics,
                       time.time() - t0)


def stale_inputs(root: Path, cell: Cell, stage: Stage) -> list[str]:
    """Inputs of a finished stage written after its metrics.json (an upstream stage was redone)."""
    metrics = stage_dir(root, cell.name, stage.name) / METRICS_FILE
    if not metrics.is_file():
        return []
    t = metrics.stat().st_mtime
    return [str(p) for p in (ref_path(root, cell, r) for r in stage.inputs.values())
            if p.is_file() and p.stat().st_mtime > t]


# ------------------------------------------------------------------------------------- grid
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
            status = stage_status(run_dir)
            word = {"done": "done, skipped", "resume": "resume from checkpoint-last.pth", "new": "run"}[status]
            lines.append(f"    {s.name:<12} {s.protocol:<19} {word:<32} {run_dir}")
            for fname, ref in s.inputs.items():
                lines.append(f"        --{fname} {ref_path(root, c, ref)}")
            if status == "done":
                continue
            if s.protocol not in MAE_PROTOCOLS:
                lines.append(f"        (runs in this process: {s.protocol}.run)")
            else:
                lines.append(f"        $ {shlex.join(stage_command(s, run_dir / 'config.yaml', launcher, nproc_per_node))}")
    return "\n".join(lines)


def run_grid(cells: Sequence[Cell], *, table: str, scale: str, work_dir: str | Path = DEFAULT_WORK_DIR,
             launcher: str = "local", nproc_per_node: int = 1, slurm: SlurmOptions | None = None,
             only: dict[str, str] | Sequence[str] | None = None, dry_run: bool = False, collect: bool = False,
             keep_going: bool = True, echo: Callable[[str], None] = print, root_name: str | None = None) -> GridResult:
    """Run (or plan, or collect) the cells of one table at one scale; see the module docstring.

    ``root_name`` (default ``table``) names the run-directory tree: tables that share it share the
    cells of the same name (Table 1's parts and Fig. 7 share one baseline cell and its seeds).
    """
    if launcher not in LAUNCHERS:
        raise GridError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    if scale not in SCALES:
        raise GridError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    check_grid(cells)
    cells = select_cells(cells, only)
    root = grid_root(work_dir, root_name or table, scale).resolve()
    result = GridResult(table, scale, root, list(cells))
    if dry_run:
        echo(f"{table}_{scale}: " + describe_plan(cells, root, launcher, nproc_per_node))
        for c in cells:
            for s in c.stages:
                d = stage_dir(root, c.name, s.name)
                result.stages[(c.name, s.name)] = StageResult(c.name, s.name, d, "planned", read_metrics(d))
        return result
    if collect:
        for c in cells:
            for s in c.stages:
                d = stage_dir(root, c.name, s.name)
                m = read_metrics(d)
                result.stages[(c.name, s.name)] = StageResult(c.name, s.name, d, "done" if m else "missing", m)
        return result
    if launcher == "slurm":
        return _run_slurm(cells, result, slurm or SlurmOptions(), echo)

    total = sum(len(c.stages) for c in cells)
    n = 0
    t_grid = time.time()
    failed_cells: set[str] = set()
    for c in cells:
        if not c.stages:
            continue  # a cell that reads another cell's stage
        for s in c.stages:
            stale = stale_inputs(root, c, s)
            if stale:
                echo(f"[grid] warning: {c.name}/{s.name} finished before its input(s) {', '.join(stale)} were "
                     f"rewritten; its numbers may be stale (delete {stage_dir(root, c.name, s.name)} to redo it)")
        if all(stage_status(stage_dir(root, c.name, s.name)) == "done" for s in c.stages):
            for s in c.stages:
                d = stage_dir(root, c.name, s.name)
                result.stages[(c.name, s.name)] = StageResult(c.name, s.name, d, "done", read_metrics(d))
            n += len(c.stages)
            echo(f"[grid] {table} {scale} ({n}/{total}) {c.name}: finished before, skipped")
            continue
        for s in c.stages:
            n += 1
            d = stage_dir(root, c.name, s.name)
            head = f"[grid] {table} {scale} ({n}/{total}) {c.name}/{s.name}"
            blocked = [r.cell or c.name for r in s.inputs.values() if (r.cell or c.name) in failed_cells]
            if blocked:
                result.stages[(c.name, s.name)] = StageResult(c.name, s.name, d, "failed",
                                                              error=f"depends on failed cell {blocked[0]}")
                echo(f"{head}: skipped, it depends on a failed stage")
                continue
            status = stage_status(d)
            if status == "done":
                result.stages[(c.name, s.name)] = StageResult(c.name, s.name, d, "done", read_metrics(d))
                echo(f"{head}: finished before, skipped")
                continue
            echo(f"{head}: {'resuming' if status == 'resume' else 'running'} {s.protocol} -> {d}")
            try:
                r = execute_stage(root, c, s, launcher, nproc_per_node)
            except KeyboardInterrupt:
                echo(f"{head}: interrupted; rerun the same command to resume")
                raise
            except Exception as e:  # noqa: BLE001 - one broken cell must not lose the others
                if not keep_going:
                    raise
                traceback.print_exc(file=sys.stderr)
                failed_cells.add(c.name)
                result.stages[(c.name, s.name)] = StageResult(c.name, s.name, d, "failed", error=f"{type(e).__name__}: {e}")
                echo(f"{head}: FAILED ({type(e).__name__}: {e}); continuing with the other cells")
                break
            result.stages[(c.name, s.name)] = r
            echo(f"{head}: {r.status} in {r.seconds:.1f}s{_summary(r.metrics)}")
    echo(f"[grid] {table} {scale}: {len(cells)} cell(s) in {time.time() - t_grid:.1f}s"
         + (f", {len(result.failed)} stage(s) FAILED" if result.failed else ""))
    return result


def _summary(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return ""
    final = metrics.get("final") or {}
    shown = [f"{k}={final[k]:.4g}" for k in ("acc1", "train_loss", "val_recon_mse") if isinstance(final.get(k), (int, float))]
    return f" ({', '.join(shown)})" if shown else ""


# ------------------------------------------------------------------------------------ slurm
class CellJob:
    """A submitit job: every stage of one cell, in the job's processes (DDP set up from SLURM)."""

    def __init__(self, root: Path, cell: Cell):
        self.root, self.cell = root, cell

    def __call__(self) -> dict[str, Any]:
        try:
            import submitit
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        except (ImportError, RuntimeError):  # single task or no submitit context: plain local run
            pass
        out = {}
        for s in self.cell.stages:
            r = execute_stage(self.root, self.cell, s, "local")
            out[s.name] = r.status
        return out

    def checkpoint(self) -> Any:
        """On preemption/timeout submitit requeues the same job; stages resume from checkpoint-last.pth."""
        import submitit
        return submitit.helpers.DelayedSubmission(CellJob(self.root, self.cell))


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise GridError("--launcher slurm needs submitit: pip install submitit (or pip install -e '.[slurm]')") from None
    return submitit


def _job_state(submitit: Any, folder: Path, job_id: str) -> str:
    try:
        return str(submitit.SlurmJob(folder=folder, job_id=job_id).state)
    except Exception:  # noqa: BLE001 - no sacct/squeue here: treat as unknown (resubmit)
        return "UNKNOWN"


def _run_slurm(cells: Sequence[Cell], result: GridResult, opts: SlurmOptions,
               echo: Callable[[str], None]) -> GridResult:
    submitit = _import_submitit()
    root = result.root
    folder = root / "_slurm"
    jobs: dict[str, Any] = {}
    params: dict[str, Any] = dict(nodes=opts.nodes, tasks_per_node=opts.gpus_per_node,
                                  gpus_per_node=opts.gpus_per_node, cpus_per_task=opts.cpus_per_task,
                                  timeout_min=opts.timeout_min, slurm_signal_delay_s=120)
    if opts.partition:
        params["slurm_partition"] = opts.partition
    if opts.mem_gb:
        params["mem_gb"] = opts.mem_gb
    if opts.account:
        params["slurm_account"] = opts.account
    params.update(opts.extra)
    for c in cells:
        if not c.stages:
            continue  # a cell that reads another cell's stage
        todo = [s for s in c.stages if stage_status(stage_dir(root, c.name, s.name)) != "done"]
        if not todo:
            echo(f"[grid] {c.name}: finished before, skipped")
            continue
        id_file = root / c.name / "slurm_job.json"
        if id_file.is_file():
            old = json.loads(id_file.read_text()).get("job_id")
            state = _job_state(submitit, folder, str(old))
            if state.split()[0] in _ACTIVE_SLURM_STATES:
                echo(f"[grid] {c.name}: job {old} is {state}, not resubmitted")
                jobs[c.name] = submitit.SlurmJob(folder=folder, job_id=str(old))
                continue
        deps = sorted({r.cell for s in c.stages for r in s.inputs.values() if r.cell and r.cell in jobs})
        ex = submitit.AutoExecutor(folder=folder)
        extra_slurm = dict(params.pop("slurm_additional_parameters", {}) or {})
        if deps:
            extra_slurm["dependency"] = "afterok:" + ":".join(str(jobs[d].job_id) for d in deps)
        ex.update_parameters(name=f"{result.table}_{result.scale}_{c.name}", **params,
                             **({"slurm_additional_parameters": extra_slurm} if extra_slurm else {}))
        job = ex.submit(CellJob(root, c))
        jobs[c.name] = job
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(json.dumps({"job_id": str(job.job_id), "submitted": time.time()}))
        echo(f"[grid] {c.name}: submitted SLURM job {job.job_id}" + (f" (after {', '.join(deps)})" if deps else ""))
    if not opts.wait:
        echo(f"[grid] {len(jobs)} job(s) in flight; when they end, rerun the same command with --collect "
             f"to write the table (logs: {folder})")
        for c in cells:
            for s in c.stages:
                d = stage_dir(root, c.name, s.name)
                m = read_metrics(d)
                result.stages[(c.name, s.name)] = StageResult(c.name, s.name, d, "done" if m else "submitted", m)
        return result
    errors: dict[str, str] = {}
    for name, job in jobs.items():
        try:
            job.result()
        except Exception as e:  # noqa: BLE001 - report per cell, keep the others
            errors[name] = f"{type(e).__name__}: {e}"
            echo(f"[grid] {name}: SLURM job {job.job_id} FAILED: {e}")
    for c in cells:
        for s in c.stages:
            d = stage_dir(root, c.name, s.name)
            m = read_metrics(d)
            status = "done" if m else ("failed" if c.name in errors else "missing")
            result.stages[(c.name, s.name)] = StageResult(c.name, s.name, d, status, m, error=errors.get(c.name, ""))
    return result


# ----------------------------------------------------------------------------- overrides
def parse_set(items: Sequence[str] | None) -> list[tuple[str | None, str, Any]]:
    """``["pretrain.epochs=10", "device=cpu"]`` -> [(stage or None, field, YAML-parsed value)]; none -> None."""
    out = []
    for item in items or ():
        if "=" not in item:
            raise GridError(f"--set expects [STAGE.]FIELD=VALUE (e.g. pretrain.epochs=10), got {item!r}")
        lhs, value = item.split("=", 1)
        stage, _, fname = lhs.strip().rpartition(".")
        if not fname:
            raise GridError(f"--set {item!r}: empty field name")
        text = value.strip()
        parsed = None if text.lower() in ("none", "null", "~", "") else yaml.safe_load(text)  # as the mae CLI
        out.append((stage or None, fname, parsed))
    return out


def apply_overrides(cells: Sequence[Cell], overrides: Sequence[tuple[str | None, str, Any]]) -> None:
    """Set config fields on every matching stage (by stage name); unknown fields/stages raise."""
    for stage_name, fname, value in overrides:
        hit = False
        stage_names = sorted({s.name for c in cells for s in c.stages})
        if stage_name is not None and stage_name not in stage_names:
            raise GridError(f"--set {stage_name}.{fname}: no stage {stage_name!r}; stages: {', '.join(stage_names)}")
        for c in cells:
            for s in c.stages:
                if stage_name is not None and s.name != stage_name:
                    continue
                names = {f.name for f in dataclasses.fields(s.config)}
                if fname not in names:
                    if stage_name is not None:
                        raise GridError(f"--set {stage_name}.{fname}: {type(s.config).__name__} has no field {fname!r}")
                    continue
                if fname in s.inputs or fname == "output_dir":
                    raise GridError(f"--set {fname}: set by the grid runner, not overridable")
                # from_dict type-checks tuples and runs the config's own validation
                try:
                    s.config = from_dict(type(s.config), {**to_dict(s.config), fname: value})
                except (TypeError, ValueError) as e:
                    raise GridError(f"--set {fname}={value!r} for stage {s.name!r}: {e}") from None
                hit = True
        if not hit:
            raise GridError(f"--set {fname}: no stage of this table has a field {fname!r}")


# ----------------------------------------------------------------------------- script CLI
def resolve_data(scale: str, data: str | None, check: bool = True) -> str | None:
    """``--data`` for a scale: optional at smoke/mini (their embedded default), required at paper."""
    if scale == "paper":
        if not data:
            raise GridError("--scale paper needs --data /path/to/imagenet (ImageNet-1K with train/ and val/); "
                            "the paper's recipes are not run on stand-in data")
        if check and not Path(data).expanduser().is_dir():
            raise GridError(f"--data {data}: no such directory (expected ImageNet-1K with train/ and val/)")
    elif data and check and not (data in ("embedded", "digits") or data.startswith(("synthetic", "photos"))):
        if not Path(data).expanduser().is_dir():
            raise GridError(f"--data {data}: neither an embedded set (synthetic[:N], digits, photos[:N]) nor a folder")
    return data


def add_grid_args(parser: argparse.ArgumentParser, default_out: str = "results") -> None:
    """The flags every reproduction script shares."""
    parser.add_argument("--scale", choices=SCALES, default="smoke",
                        help="smoke: CPU, seconds per cell (tests); mini: a small ViT on one GPU; "
                             "paper: the paper's recipes on ImageNet (default: smoke)")
    parser.add_argument("--data", default=None,
                        help="images: an ImageNet-style folder (train/ + val/) or synthetic:N; required at paper")
    parser.add_argument("--out", default=default_out,
                        help=f"results folder for <table>_<scale>.csv (+ .meta.json) (default: {default_out})")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR,
                        help=f"run directories: <work-dir>/<table>_<scale>/<cell>/<stage> (default: {DEFAULT_WORK_DIR})")
    parser.add_argument("--only", action="append", metavar="KEY=VALUE",
                        help="run only the cell(s) with this setting (repeatable), e.g. --only decoder_depth=8")
    parser.add_argument("--set", action="append", metavar="[STAGE.]FIELD=VALUE", dest="overrides",
                        help="override a config field of every stage (or one stage kind), e.g. pretrain.epochs=10, "
                             "finetune.accum_iter=4, device=cpu (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (cells, stages, run dirs, commands) and exit")
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: write the table from the stages that have finished")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="local: in this process; torchrun: each stage under torch.distributed.run; "
                             "slurm: one submitit job per cell (default: local)")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="processes per stage with --launcher torchrun")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing stage (default: keep going)")
    g = parser.add_argument_group("slurm (--launcher slurm, through submitit)")
    g.add_argument("--slurm-partition", default=None)
    g.add_argument("--slurm-account", default=None)
    g.add_argument("--slurm-nodes", type=int, default=1)
    g.add_argument("--slurm-gpus-per-node", type=int, default=8)
    g.add_argument("--slurm-cpus-per-task", type=int, default=10)
    g.add_argument("--slurm-timeout-min", type=int, default=72 * 60)
    g.add_argument("--slurm-mem-gb", type=int, default=None)
    g.add_argument("--slurm-no-wait", action="store_true",
                   help="submit and exit; rerun with --collect when the jobs are done")


def slurm_options(args: argparse.Namespace) -> SlurmOptions:
    return SlurmOptions(partition=args.slurm_partition, nodes=args.slurm_nodes, gpus_per_node=args.slurm_gpus_per_node,
                        cpus_per_task=args.slurm_cpus_per_task, timeout_min=args.slurm_timeout_min,
                        mem_gb=args.slurm_mem_gb, account=args.slurm_account, wait=not args.slurm_no_wait)


def results_path(out: str | Path, table: str, scale: str) -> Path:
    """``<out>/<table>_<scale>.csv``; ``--out`` may also name the CSV itself (one table per script run)."""
    out = Path(out)
    if out.suffix == ".csv":
        return out
    return out / f"{table}_{scale}.csv"


# ------------------------------------------------------------------------------- metrics
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


def cell_rows(grid: GridResult, columns: Callable[[Cell, GridResult], dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per reported cell: its key, its ``info`` and what ``columns(cell, grid)`` measures."""
    rows = []
    for c in grid.cells:
        if not c.report:
            continue
        rows.append({**c.key, **c.info, **columns(c, grid)})
    return rows


def standard_columns(cell: Cell, grid: GridResult) -> dict[str, Any]:
    """ft / lin (final top-1) and the helpers' numbers of a pretrain -> finetune / linprobe cell."""
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
    if "linprobe_init" in names:  # the baseline's controls (reproduce.scales.baseline_controls)
        out["lin_init"] = acc(g("linprobe_init"))
        out["lin_margin"] = out.get("lin", float("nan")) - out["lin_init"]
    if "finetune_scratch" in names:
        out["ft_scratch"] = acc(g("finetune_scratch"))
        out["ft_margin"] = out.get("ft", float("nan")) - out["ft_scratch"]
    if "pretrain" in names:
        pre = g("pretrain")
        out["pretrain_loss"] = acc(pre, "final", "train_loss")
        out["pretrain_time_s"] = train_seconds(pre)
    return out


SEED_STD_COLUMNS = ("lin_init", "lin_margin", "ft_scratch", "ft_margin")


def aggregate_seeds(rows: Any, key: str, metrics: Sequence[str] = ()) -> Any:
    """One row per ``key`` value: the seeds of a setting (a ``seed`` column) become the mean of every
    numeric column, with ``<column>_std`` (sample std, ddof 1) of the ``metrics`` and the baseline's
    controls, and ``n_seeds``; unchanged when no setting has more than one row."""
    import pandas as pd

    if rows.empty or key not in rows.columns or not rows[key].duplicated().any():
        return rows
    numeric = [c for c in rows.columns if c != key and c != "seed" and pd.api.types.is_numeric_dtype(rows[c])]
    out = []
    for _, g in rows.groupby(key, sort=False):
        r = g.iloc[0].to_dict()
        for c in numeric:
            r[c] = float(g[c].mean())
            if c in metrics or c in SEED_STD_COLUMNS:
                r[f"{c}_std"] = float(g[c].std(ddof=1)) if g[c].notna().sum() > 1 else float("nan")
        if "seed" in g.columns:
            r["seed"] = ",".join(str(int(x)) for x in g["seed"].dropna())
        r["n_seeds"] = len(g)
        out.append(r)
    return pd.DataFrame(out)


def write_table(table: str, rows: list[dict[str, Any]], args: argparse.Namespace, title: str | None = None,
                echo: Callable[[str], None] = print, command: str | None = None) -> tuple[Any, dict, Path] | None:
    """compare() with the paper, verdict(), write results/<table>_<scale>.csv (+ meta), print the table.

    Rows without any finished metric are kept (NaN) so that the table shows what is missing.
    Returns (DataFrame, verdicts, csv path), or None on a dry run.
    """
    import pandas as pd

    from reproduce.reference import get_spec
    from reproduce.report import compare, format_table, provenance, verdict, write_results

    if getattr(args, "dry_run", False):
        return None
    spec = get_spec(table)
    ours = aggregate_seeds(pd.DataFrame(rows), spec.key, spec.metrics)
    if ours.empty:
        raise GridError(f"{table}: no rows to write")
    if not any(m in ours.columns and ours[m].notna().any() for m in spec.metrics):
        echo(f"[grid] {table}: no finished cell yet; nothing written")
        return None
    prov = provenance(command=command)
    df = compare(table, ours, scale=args.scale, prov=prov)
    v = verdict(df, table)
    path = results_path(args.out, table, args.scale)
    csv_path, _ = write_results(df, v, path, prov={**prov, "scale": args.scale})
    echo("")
    echo(format_table(df, v, title=title or spec.label))
    echo(f"[grid] wrote {csv_path}")
    return df, v, csv_path


def exit_code(*grids: GridResult | None) -> int:
    """1 when any stage failed, else 0 (the CSV is written either way)."""
    return 1 if any(g is not None and g.failed for g in grids) else 0


# ---------------------------------------------------------------------------- script driver
@dataclass
class Report:
    """One results CSV of a script: the reference table it is compared with and how rows are made."""

    table: str
    rows: Callable[[GridResult], list[dict[str, Any]]]
    title: str | None = None


@dataclass
class TableJob:
    """One grid (``<work_dir>/<name>_<scale>``) and the results CSVs written from it."""

    name: str
    cells: list[Cell]
    reports: list[Report]
    notes: tuple[str, ...] = ()
    root_name: str | None = None  # run-directory tree shared with other jobs (default: name)


def run_jobs(jobs: Sequence[TableJob], args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    """Run every job's grid with the shared flags, then write its CSVs from everything finished so far.

    The CSVs are built from all finished cells (a ``--only`` run adds its row to earlier ones). With
    several jobs (e.g. every Table 1 part), ``--only KEY=VALUE`` runs the jobs that have that key.
    Returns the exit status: 1 when a stage failed, else 0.
    """
    only = parse_only(args.only)
    overrides = parse_set(args.overrides)
    if only and len(jobs) > 1:
        jobs = [j for j in jobs if set(only) <= {k for c in j.cells if c.report for k in c.key}]
        if not jobs:
            raise GridError(f"--only {', '.join(f'{k}={v}' for k, v in only.items())}: no selected table has "
                            f"the key(s) {sorted(only)}")
    n_csv = sum(len(j.reports) for j in jobs)
    if Path(args.out).suffix == ".csv" and n_csv > 1:
        raise GridError(f"--out {args.out} names one CSV but this run writes {n_csv} tables; give a folder")
    failed = False
    for job in jobs:
        apply_overrides(job.cells, overrides)
        g = run_grid(job.cells, table=job.name, scale=args.scale, work_dir=args.work_dir, launcher=args.launcher,
                     nproc_per_node=args.nproc_per_node, slurm=slurm_options(args), only=only,
                     dry_run=args.dry_run, collect=args.collect, keep_going=not args.fail_fast, echo=echo,
                     root_name=job.root_name)
        failed = failed or bool(g.failed)
        if args.dry_run or (args.launcher == "slurm" and args.slurm_no_wait and not args.collect):
            continue
        full = run_grid(job.cells, table=job.name, scale=args.scale, work_dir=args.work_dir, collect=True,
                        echo=lambda _line: None, root_name=job.root_name)
        for rep in job.reports:
            write_table(rep.table, rep.rows(full), args, title=rep.title, echo=echo)
        for note in job.notes:
            echo(f"note: {note}")
    return 1 if failed else 0


def script_main(doc: str, build_jobs: Callable[[argparse.Namespace, Any], list[TableJob]],
                argv: Sequence[str] | None = None,
                extra_args: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """The ``main`` of every reproduction script: shared flags, the scale's recipes, the jobs, the CSVs."""
    from reproduce.scales import get_scale

    lines = doc.strip().splitlines()
    parser = argparse.ArgumentParser(description=lines[0], epilog="\n".join(lines[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if extra_args is not None:
        extra_args(parser)
    add_grid_args(parser)
    args = parser.parse_args(argv)
    if args.nproc_per_node < 1:
        parser.error("--nproc-per-node must be >= 1")
    try:
        scale = get_scale(args.scale, args.data, check_data=not (args.dry_run or args.collect))
        return run_jobs(build_jobs(args, scale), args)
    except GridError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
