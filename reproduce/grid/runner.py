"""Orchestration: plan -> launch -> collect for the cells of one table at one scale."""
from __future__ import annotations

import contextlib
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mae.config import SCALES
from mae.engine import rundir
from reproduce.grid.columns import stage_commits
from reproduce.grid.errors import DEFAULT_WORK_DIR, LAUNCHERS, GridError
from reproduce.grid.launch import StageBusy, _run_slurm, execute_stage, stage_lock
from reproduce.grid.model import Cell, GridResult, SlurmOptions, StageResult
from reproduce.grid.plan import check_grid, describe_plan, select_cells
from reproduce.grid.store import (adopt_diff, check_identity, grid_root, planned_identity, read_metrics, stage_dir,
                                  write_identity)

CHANGED_HINT = ("rerun with --rerun-changed (the old run is kept beside it as <stage>.replaced-<time>), or, for "
                "runs made before stage identities, --adopt (records their identity when config.yaml matches)")


def reconcile(cells: Sequence[Cell], root: Path, *, adopt: bool = False, rerun_changed: bool = False,
              echo: Callable[[str], None] = print) -> None:
    """Before anything runs: every started stage must be the stage planned. ``adopt`` records the identity
    of pre-identity runs whose config.yaml matches; ``rerun_changed`` moves changed / unknown runs aside
    (never deletes) so they run afresh, after it holds the lock of every one of them: when any is in use by
    another process (running, or read by a running stage), nothing is moved; otherwise a mismatch stops the
    grid with one line per stage."""
    problems = []
    to_move: list[tuple[str, Path, str, list[str]]] = []
    for c in cells:
        for s in c.stages:
            status, diff = check_identity(root, c, s)
            if status not in ("changed", "unknown"):
                continue
            d = stage_dir(root, c.name, s.name)
            if status == "unknown" and adopt:
                planned = planned_identity(root, c, s)
                bad = adopt_diff(d, planned, type(s.config))
                if not bad:
                    write_identity(d, planned, adopted=True)
                    echo(f"[grid] {c.name}/{s.name}: adopted (config.yaml matches the plan field by field)")
                    continue
                diff = bad
            if rerun_changed:
                to_move.append((f"{c.name}/{s.name}", d, status, diff))
                continue
            problems.append(f"{c.name}/{s.name}: {status}: {'; '.join(diff[:6])}" + (" ..." if len(diff) > 6 else ""))
    if to_move and not problems:
        _move_aside(to_move, echo)
    if problems:
        raise GridError(f"{len(problems)} stage(s) in {root} were made by another recipe: "
                        + " | ".join(problems[:8]) + (" | ..." if len(problems) > 8 else "") + f"; {CHANGED_HINT}")


def _move_aside(to_move: Sequence[tuple[str, Path, str, list[str]]], echo: Callable[[str], None]) -> None:
    """Move every changed stage aside, only once this process holds all of their locks (a run still writing
    in one, or a stage still reading one, would otherwise mix two recipes); busy: nothing moves."""
    with contextlib.ExitStack() as locks:
        busy = []
        for name, d, _, _ in to_move:
            try:
                locks.enter_context(stage_lock(d, wait=False))
            except StageBusy:
                busy.append(name)
        if busy:
            raise GridError(f"{len(busy)} changed stage(s) are in use by another process (running, or read by a "
                            f"running stage): {', '.join(busy[:8])}{' ...' if len(busy) > 8 else ''}; nothing was "
                            "moved aside (stop that process, or wait for it, then rerun)")
        for name, d, status, diff in to_move:
            aside = rundir.aside_path(d)
            d.rename(aside)
            echo(f"[grid] {name}: {status} ({'; '.join(diff[:4])}); kept as {aside.name}, runs afresh")


def _other_commits(results: Sequence[StageResult]) -> str:
    """`` (ran at commit X; this process runs Y)`` when the reused stages ran other code than this process."""
    from mae.provenance import pin_code_commit
    now = pin_code_commit()
    ran = list(dict.fromkeys(c for r in results for c in stage_commits(r)))
    if not ran or ran == [now]:
        return ""
    return f" (ran at commit {', '.join(ran)}; this process runs {now})"


def collect(cells: Sequence[Cell], result: GridResult, echo: Callable[[str], None] = print) -> GridResult:
    """Read every finished stage whose identity is the planned one; others are ``missing`` or ``stale``."""
    for c in cells:
        for s in c.stages:
            d = stage_dir(result.root, c.name, s.name)
            status, diff = check_identity(result.root, c, s)
            if status == "done":
                result.stages[(c.name, s.name)] = StageResult(c.name, s.name, d, "done", read_metrics(d))
            elif status in ("changed", "unknown"):
                echo(f"[grid] {c.name}/{s.name}: not read, {status} ({'; '.join(diff[:3])}); {CHANGED_HINT}")
                result.stages[(c.name, s.name)] = StageResult(c.name, s.name, d, "stale", None)
            else:
                result.stages[(c.name, s.name)] = StageResult(c.name, s.name, d, "missing", None)
    return result


def run_grid(cells: Sequence[Cell], *, table: str, scale: str, work_dir: str | Path = DEFAULT_WORK_DIR,
             launcher: str = "local", nproc_per_node: int = 1, slurm: SlurmOptions | None = None,
             only: dict[str, str] | Sequence[str] | None = None, dry_run: bool = False, collect_only: bool = False,
             keep_going: bool = True, echo: Callable[[str], None] = print, root_name: str | None = None,
             adopt: bool = False, rerun_changed: bool = False, **legacy: Any) -> GridResult:
    """Run (or plan, or collect) the cells of one table at one scale.

    ``root_name`` (default ``table``) names the run-directory tree: tables that share it share the
    cells of the same name (Table 1's parts and Fig. 7 share one baseline cell and its seeds).
    """
    collect_only = collect_only or bool(legacy.pop("collect", False))
    if legacy:
        raise TypeError(f"run_grid: unknown arguments {sorted(legacy)}")
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
                status, _ = check_identity(root, c, s)
                result.stages[(c.name, s.name)] = StageResult(c.name, s.name, d, "planned",
                                                              read_metrics(d) if status == "done" else None)
        return result
    if collect_only:
        return collect(cells, result, echo)
    reconcile(cells, root, adopt=adopt, rerun_changed=rerun_changed, echo=echo)
    if launcher == "slurm":
        return _run_slurm(cells, result, slurm or SlurmOptions(), echo)

    total = sum(len(c.stages) for c in cells)
    n = 0
    t_grid = time.time()
    failed_cells: set[str] = set()
    queue, deferred = list(cells), []  # a cell busy in another grid process waits until the others are done
    while queue:
        c = queue.pop(0)
        first_pass = c not in deferred
        waits_on = {r.cell for s in c.stages for r in s.inputs.values() if r.cell} & {d.name for d in deferred}
        if first_pass and waits_on:  # it reads a cell that another process is still running
            deferred.append(c)
            queue.append(c)
            continue
        if c.stages and all(check_identity(root, c, s)[0] == "done" for s in c.stages):
            for s in c.stages:
                d = stage_dir(root, c.name, s.name)
                result.stages[(c.name, s.name)] = StageResult(c.name, s.name, d, "done", read_metrics(d))
            n += len(c.stages)
            reused = [result.stages[(c.name, s.name)] for s in c.stages]
            echo(f"[grid] {table} {scale} ({n}/{total}) {c.name}: finished before, skipped{_other_commits(reused)}")
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
            status, _ = check_identity(root, c, s)
            if status == "done":
                result.stages[(c.name, s.name)] = StageResult(c.name, s.name, d, "done", read_metrics(d))
                echo(f"{head}: finished before, skipped{_other_commits([result.stages[(c.name, s.name)]])}")
                continue
            echo(f"{head}: {'resuming' if status == 'resume' else 'running'} {s.protocol} -> {d}")
            try:
                r = execute_stage(root, c, s, launcher, nproc_per_node, wait=not first_pass)
            except StageBusy:
                echo(f"{head}: running in another process; back to it after the other cells")
                deferred.append(c)
                queue.append(c)
                n -= c.stages.index(s) + 1
                break
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
    shown = [f"{k}={final[k]:.4g}" for k in ("acc1", "train_loss", "val_recon_mse", "knn", "lbfgs")
             if isinstance(final.get(k), (int, float))]
    return f" ({', '.join(shown)})" if shown else ""
