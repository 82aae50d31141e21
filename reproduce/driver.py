"""The driver of every reproduction script: shared flags, the scale's recipes, plan -> launch -> collect, CSVs.

A script (``reproduce/table1.py``, ...) names its cells and reports; :func:`script_main` parses the shared
flags, expands the seeds, runs each job's grid and writes one CSV per report from every stage that
finished under the planned identity (``reproduce/grid/store.py``). Rows carry the provenance each stage
wrote when it ran (``--collect`` never restamps); the verdicts are ``reproduce/report.py``'s.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mae.config import SCALES
from mae.engine.threads import apply_thread_policy
from mae.provenance import require_same_checkout
from reproduce.grid import (DEFAULT_WORK_DIR, LAUNCHERS, Cell, GridError, GridResult, SlurmOptions, aggregate_seeds,
                            apply_overrides, grid_root, only_text, parse_only, parse_seeds, parse_set, run_grid,
                            with_seeds)
from reproduce.scales import get_scale

SMOKE_OUT = "outputs/results"


def add_grid_args(parser: argparse.ArgumentParser, default_out: str = "results") -> None:
    """The flags every reproduction script shares."""
    parser.add_argument("--scale", choices=SCALES, default="smoke",
                        help="smoke: CPU, seconds per cell (tests); cpu: 2 CPU cores, minutes per cell (the "
                             "measured cpu results); mini: a small ViT on one GPU; "
                             "paper: the paper's recipes on ImageNet (default: smoke)")
    parser.add_argument("--data", default=None,
                        help="images: an ImageNet-style folder (train/ + val/) or synthetic:N; required at paper")
    parser.add_argument("--out", default=None,
                        help=f"results folder for <table>_<scale>.csv (+ .meta.json) (default: {default_out}/ for the "
                             f"cpu, mini and paper scales; {SMOKE_OUT}/ for smoke, so that a plumbing run never "
                             "touches the committed results)")
    parser.add_argument("--seeds", default=None, metavar="N|all|S,S,...",
                        help="run every setting with these seeds (paired: seed s of a setting and of the baseline "
                             "share init, data order and masks); N = the scale's first N seeds; default: the "
                             "baseline with all of the scale's seeds, other settings with its first")
    parser.add_argument("--adopt", action="store_true",
                        help="record the identity of run directories made before stage identities when their "
                             "config.yaml matches the plan field by field (otherwise they are refused)")
    parser.add_argument("--rerun-changed", action="store_true",
                        help="a started or finished stage made by another recipe (or of unknown recipe) is moved "
                             "aside to <stage>.replaced-<time> and runs afresh (default: refuse, naming the fields)")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR,
                        help=f"run directories: <work-dir>/<table>_<scale>/<cell>/<stage> (default: {DEFAULT_WORK_DIR})")
    parser.add_argument("--only", action="append", metavar="KEY=VALUE",
                        help="run only the cell(s) with this setting (repeatable: different keys must all match, "
                             "values of one key any), e.g. --only decoder_depth=8")
    parser.add_argument("--set", action="append", metavar="[STAGE.]FIELD=VALUE", dest="overrides",
                        help="override a config field of every stage (or one stage kind), e.g. pretrain.epochs=10, "
                             "finetune.accum_iter=4, device=cpu (repeatable); values parse as the mae flags do; "
                             "seeds are --seeds'; the baseline's controls follow the recipes they control")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (cells, stages, run dirs, commands) and exit")
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: write the table from the stages that have finished")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="local: in this process; torchrun: each stage under torch.distributed.run; "
                             "slurm: one submitit job per cell (default: local)")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="processes per stage with --launcher torchrun")
    parser.add_argument("--nnodes", type=int, default=1,
                        help="nodes per stage with --launcher torchrun: more than one runs each stage on every node of "
                             "the SLURM allocation the grid runs in (srun + torchrun, c10d rendezvous)")
    parser.add_argument("--rdzv-endpoint", default=None,
                        help="HOST:PORT of the torchrun rendezvous with --nnodes > 1 (default: the allocation's first "
                             "node, port 29500)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of this grid process (default: OMP_NUM_THREADS, else all cores; two grid "
                             "processes sharing 2 cores run best at 1 each); logged in every stage's runtime record")
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


def results_path(out: str | Path | None, table: str, scale: str) -> Path:
    """``<out>/<table>_<scale>.csv``; ``--out`` may also name the CSV itself (one table per script run).
    Without ``--out``: ``results/`` (``outputs/results/`` at the smoke scale)."""
    out = Path(out if out is not None else (SMOKE_OUT if scale == "smoke" else "results"))
    if out.suffix == ".csv":
        return out
    return out / f"{table}_{scale}.csv"





def write_table(table: str, rows: list[dict[str, Any]], args: argparse.Namespace, title: str | None = None,
                echo: Callable[[str], None] = print, command: str | None = None) -> tuple[Any, dict, Path] | None:
    """compare() with the paper, verdict(), write <out>/<table>_<scale>.csv (+ meta), print the table.

    Rows keep the provenance their stages wrote; the meta.json also names the collecting process.
    Rows without any finished metric are kept (NaN) so that the table shows what is missing.
    Returns (DataFrame, verdicts, csv path), or None on a dry run.
    """
    import pandas as pd

    from reproduce.reference import get_spec
    from reproduce.report import READOUT_METRICS, compare, format_table, provenance, verdict, write_results

    if getattr(args, "dry_run", False):
        return None
    spec = get_spec(table)
    ours = aggregate_seeds(pd.DataFrame(rows), spec.key, (*spec.metrics, *READOUT_METRICS))
    if ours.empty:
        raise GridError(f"{table}: no rows to write")
    if not any(m in ours.columns and ours[m].notna().any() for m in spec.metrics):
        echo(f"[grid] {table}: no finished cell yet; nothing written")
        return None
    prov = provenance(command=command)
    df = compare(table, ours, scale=args.scale, prov=prov)
    v = verdict(df, table)
    path = results_path(args.out, table, args.scale)
    csv_path, _ = write_results(df, v, path, prov={"collected_by": prov, "scale": args.scale})
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


def _seeds_of(cell: Cell, requested: tuple[int, ...] | None) -> tuple[int, ...]:
    """A cell's seeds: the requested ones (the baseline keeps its own too), else its own, else seed 0."""
    own = tuple(cell.seeds or ())
    if requested is None:
        return own or (0,)
    return tuple(dict.fromkeys([*own, *requested])) if own else requested


def _seeds_on_disk(root: Path, cell: Cell) -> list[int]:
    """The seeds of ``cell`` that have a run folder under ``root`` (``<cell>_seed<N>``; the plain name is the
    first seed, already planned)."""
    prefix = f"{cell.name}_seed"
    out = []
    if root.is_dir():
        for d in root.iterdir():
            tail = d.name[len(prefix):] if d.name.startswith(prefix) else ""
            if tail.isdigit() and d.is_dir():
                out.append(int(tail))
    return sorted(out)


def _collected_seeds(cell: Cell, requested: tuple[int, ...] | None, root: Path,
                     cells: Sequence[Cell]) -> tuple[int, ...]:
    """What a CSV is written from: the seeds this run planned, plus every seed with a run folder on disk (an
    ``--only`` or ``--collect`` run without ``--seeds`` keeps the seeds earlier runs finished). A reading
    cell follows the cell it reads; a seed found for one cell is kept only where its inputs' cells have it."""
    planned = list(_seeds_of(cell, requested))
    owner = cell if cell.stages else next((c for c in cells if cell.reads and c.name == cell.reads.cell), cell)
    found = _seeds_on_disk(root, owner)
    return tuple(dict.fromkeys([*planned, *found]))


def run_jobs(jobs: Sequence[TableJob], args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    """Run every job's grid with the shared flags, then write its CSVs from everything finished so far.

    The CSVs are built from all finished cells and every finished seed (a ``--only`` run adds its row to
    earlier ones, and keeps the seeds earlier runs made; only the planned identity is read). With
    several jobs (e.g. every Table 1 part), ``--only KEY=VALUE`` runs the jobs that have that key.
    Returns the exit status: 1 when a stage failed, else 0.
    """
    only = parse_only(args.only)
    overrides = parse_set(args.overrides)
    seeds = getattr(args, "seeds_parsed", None)
    if only and len(jobs) > 1:
        jobs = [j for j in jobs if set(only) <= {k for c in j.cells if c.report for k in c.key}]
        if not jobs:
            raise GridError(f"--only {only_text(only)}: no selected table has "
                            f"the key(s) {sorted(only)}")
    n_csv = sum(len(j.reports) for j in jobs)
    if args.out and Path(args.out).suffix == ".csv" and n_csv > 1:
        raise GridError(f"--out {args.out} names one CSV but this run writes {n_csv} tables; give a folder")
    failed = False
    for job in jobs:
        apply_overrides(job.cells, overrides)
        base = list(job.cells)
        job.cells = with_seeds(base, lambda c: _seeds_of(c, seeds))
        g = run_grid(job.cells, table=job.name, scale=args.scale, work_dir=args.work_dir, launcher=args.launcher,
                     nproc_per_node=args.nproc_per_node, slurm=slurm_options(args), only=only,
                     dry_run=args.dry_run, collect_only=args.collect, keep_going=not args.fail_fast, echo=echo,
                     root_name=job.root_name, adopt=args.adopt, rerun_changed=args.rerun_changed)
        failed = failed or bool(g.failed)
        if args.dry_run or (args.launcher == "slurm" and args.slurm_no_wait and not args.collect):
            continue
        root = grid_root(args.work_dir, job.root_name or job.name, args.scale)
        try:
            collected = with_seeds(base, lambda c: _collected_seeds(c, seeds, root, base))
        except GridError:  # a seed on disk whose input cell lacks it: the planned seeds only
            collected = job.cells
        full = run_grid(collected, table=job.name, scale=args.scale, work_dir=args.work_dir, collect_only=True,
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
    head, _, rest = doc.strip().partition("\n\n")  # the first paragraph describes, the rest is the epilog
    parser = argparse.ArgumentParser(description=" ".join(head.split()), epilog=rest,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if extra_args is not None:
        extra_args(parser)
    add_grid_args(parser)
    args = parser.parse_args(argv)
    require_same_checkout(parser.prog)
    if args.nproc_per_node < 1 or args.nnodes < 1:
        parser.error("--nproc-per-node and --nnodes must be >= 1")
    from reproduce.grid import launch
    launch.TORCHRUN = launch.TorchrunLayout(args.nnodes, args.rdzv_endpoint)
    try:
        scale = get_scale(args.scale, args.data, check_data=not (args.dry_run or args.collect))
        args.seeds_parsed = parse_seeds(args.seeds, scale.seeds)
        if args.threads is not None and args.threads < 1:
            raise GridError("--threads must be >= 1")
        if args.threads is not None:  # the stages of this process (and their torchrun children) follow it
            os.environ["OMP_NUM_THREADS"] = str(args.threads)
        apply_thread_policy(args.threads, announce=not (args.dry_run or args.collect))
        return run_jobs(build_jobs(args, scale), args)
    except GridError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
