"""Running one stage: in this process, under torchrun, or one SLURM job per cell (submitit).

A stage runs under its folder's lock, the same lock the ``mae`` command line takes
(:func:`mae.engine.rundir.run_lock`), and holds the folders of the stages it reads shared, so that no
other process moves, reruns or writes them while it reads; it starts only when each of those is finished
under the planned identity, and records its identity under those locks."""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mae.config import save_config
from mae.engine import rundir
from mae.engine.threads import child_env
from reproduce.grid.errors import MAE_PROTOCOLS, GridError
from reproduce.grid.model import Cell, GridResult, SlurmOptions, Stage, StageResult
from reproduce.grid.errors import METRICS_FILE
from reproduce.grid.store import (check_identity, planned_identity, read_metrics, ref_path, resolve_stage_config,
                                  stage_dir, stage_status, write_identity)

_ACTIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING"}
REPO_ROOT = Path(__file__).resolve().parents[2]


def protocol_module(protocol: str) -> Any:
    name = f"mae.protocols.{protocol}" if protocol in MAE_PROTOCOLS else protocol
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise GridError(f"protocol {protocol!r}: cannot import {name} ({e})") from None
    if not hasattr(module, "run"):
        raise GridError(f"protocol {protocol!r}: {name} has no run(cfg)")
    return module


@dataclasses.dataclass
class TorchrunLayout:
    """Nodes of ``--launcher torchrun`` (the driver's ``--nnodes`` / ``--rdzv-endpoint``): one node is
    ``--standalone``; several run inside a SLURM allocation, each stage started on every node by
    ``srun --ntasks-per-node 1`` with a c10d rendezvous at ``endpoint`` (default: the allocation's first
    node, port 29500)."""

    nnodes: int = 1
    endpoint: str | None = None

    def rendezvous(self) -> list[str]:
        if self.nnodes <= 1:
            return ["--standalone"]
        endpoint = self.endpoint
        if endpoint is None:
            from mae.engine.distributed import first_host
            nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
            if not nodes:
                raise GridError(f"--nnodes {self.nnodes}: run the grid inside a SLURM allocation (salloc / sbatch "
                                "--nodes N), or give --rdzv-endpoint HOST:PORT and start the nodes yourself")
            endpoint = f"{first_host(nodes)}:29500"
        return [f"--nnodes={self.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
                f"--rdzv-id=mae-grid-{os.getpid()}"]

    def prefix(self) -> list[str]:
        """What starts torchrun on every node: srun, one task per node (nothing for one node)."""
        return [] if self.nnodes <= 1 else ["srun", f"--nodes={self.nnodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]


#: set once by the driver (``--nnodes``, ``--rdzv-endpoint``)
TORCHRUN = TorchrunLayout()


def stage_command(stage: Stage, config_path: Path, launcher: str, nproc_per_node: int = 1) -> list[str]:
    """The command line that runs ``stage`` from its written config (what torchrun launches)."""
    if stage.protocol not in MAE_PROTOCOLS:
        raise GridError(f"stage {stage.name!r}: {stage.protocol} has no command line; it runs in this process")
    target = ["-m", "mae", stage.protocol, "--config", str(config_path)]
    if launcher == "torchrun" and not stage.local_only:
        return [*TORCHRUN.prefix(), sys.executable, "-m", "torch.distributed.run", *TORCHRUN.rendezvous(),
                f"--nproc_per_node={nproc_per_node}", *target]
    return [sys.executable, *target]


def _run_in_process(stage: Stage, cfg: Any) -> None:
    protocol_module(stage.protocol).run(cfg)


def _run_torchrun(stage: Stage, cfg: Any, nproc_per_node: int) -> None:
    config_path = Path(cfg.output_dir) / "config.yaml"
    cmd = stage_command(stage, config_path, "torchrun", nproc_per_node)
    # each of the stage's processes gets its share of the cores (unless OMP_NUM_THREADS says otherwise)
    share = None if "OMP_NUM_THREADS" in os.environ else max(1, (os.cpu_count() or 1) // nproc_per_node)
    env = child_env(share)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env[rundir.GRID_ENV] = str(Path(cfg.output_dir).resolve())  # the grid holds this folder's lock for it
    print(f"[grid]   $ {shlex.join(cmd)}", flush=True)
    # the child holds the folder's lock with the grid (the same descriptor): killing the grid leaves the stage
    # locked for as long as its training runs, so no second grid trains into it meanwhile
    lock = rundir.held_lock_fd(cfg.output_dir)
    proc = subprocess.run(cmd, env=env, check=False,  # this cwd: relative --data paths keep their meaning
                          pass_fds=(lock,) if lock is not None else ())
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
def stage_lock(run_dir: Path, echo: Callable[[str], None] = print, wait: bool = True, shared: bool = False) -> Any:
    """Hold the run folder's lock (:func:`mae.engine.rundir.run_lock`: the ``mae`` command line takes the same
    one): two grid processes that share a cell run it once; the second waits (or, with ``wait=False``, raises
    :class:`StageBusy` so it can do other cells first), then finds it finished. ``shared``: a stage reading
    this folder's files (a folder that is not there raises :class:`GridError`). The lock goes with the
    process that holds it (a killed run frees it)."""
    if not _is_main_process():  # ranks of one multi-process stage: rank 0 holds it for them
        yield
        return
    try:
        with rundir.run_lock(run_dir, wait=wait, shared=shared, create=not shared,
                             on_wait=lambda: echo(f"[grid]   {run_dir} is in use by another process; waiting for it")):
            yield
    except rundir.RunBusy:
        raise StageBusy(str(run_dir)) from None
    except FileNotFoundError:
        if not shared:
            raise
        raise GridError(f"{run_dir} is not there (moved aside or removed): its readers cannot run") from None


class StageBusy(RuntimeError):
    """Another process holds the stage's lock (``execute_stage(..., wait=False)``)."""


def execute_stage(root: Path, cell: Cell, stage: Stage, launcher: str = "local", nproc_per_node: int = 1,
                  wait: bool = True) -> StageResult:
    """Run one stage unless finished: skip (done), resume (checkpoint) or start; returns its result.

    Under its own lock and a shared lock on every stage it reads (:func:`stage_lock`)."""
    with contextlib.ExitStack() as locks:
        locks.enter_context(stage_lock(stage_dir(root, cell.name, stage.name), wait=wait))
        for up_cell, up_stage in stage.upstream.values():
            locks.enter_context(stage_lock(stage_dir(root, up_cell.name, up_stage.name), wait=wait, shared=True))
        return _execute_stage(root, cell, stage, launcher, nproc_per_node)


def _execute_stage(root: Path, cell: Cell, stage: Stage, launcher: str, nproc_per_node: int) -> StageResult:
    run_dir = stage_dir(root, cell.name, stage.name)
    status, diff = check_identity(root, cell, stage)
    if status == "done":
        return StageResult(cell.name, stage.name, run_dir, "done", read_metrics(run_dir))
    if status in ("changed", "unknown"):  # e.g. another grid process replaced it since this one planned
        raise GridError(f"{cell.name}/{stage.name}: {status} ({'; '.join(diff[:4])}); rerun with --rerun-changed")
    # what it reads (held shared now): finished, under the recipe this grid planned for it
    for fname, (up_cell, up_stage) in stage.upstream.items():
        up_status, up_diff = check_identity(root, up_cell, up_stage)
        if up_status != "done":
            why = f"{up_status} ({'; '.join(up_diff[:3])})" if up_diff else "not finished"
            raise GridError(f"{cell.name}/{stage.name}: input {fname}: stage {up_cell.name}/{up_stage.name} is {why}; "
                            "it does not start on it")
    for fname, ref in stage.inputs.items():
        src = ref_path(root, cell, ref)
        if not src.is_file():
            raise GridError(f"{cell.name}/{stage.name}: input {fname} = {src} does not exist "
                            f"(stage {ref.cell or cell.name}/{ref.stage} did not produce it)")
    cfg = resolve_stage_config(root, cell, stage)
    if _is_main_process():
        save_config(cfg, run_dir / "config.yaml")
        if status == "new":  # the identity is recorded before the run starts (a resumed run keeps its own)
            write_identity(run_dir, planned_identity(root, cell, stage))
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
        from mae.engine import distributed
        out = {}
        try:
            for s in self.cell.stages:
                r = execute_stage(self.root, self.cell, s, "local")
                out[s.name] = r.status
        finally:
            # the stages share the process group the first one joined; leaving it before exit matters:
            # a gloo group still alive at interpreter exit can abort the process
            # ("terminate called without an active exception") after every stage finished
            distributed.cleanup()
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
        todo = [s for s in c.stages if check_identity(root, c, s)[0] != "done"]
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
                m = read_metrics(d) if check_identity(root, c, s)[0] == "done" else None
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
            m = read_metrics(d) if check_identity(root, c, s)[0] == "done" else None
            status = "done" if m else ("failed" if c.name in errors else "missing")
            result.stages[(c.name, s.name)] = StageResult(c.name, s.name, d, status, m, error=errors.get(c.name, ""))
    return result


