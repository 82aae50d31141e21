"""``mae submit``: one run on a SLURM cluster through submitit (the official release's submitit_*.py, as one
command for every protocol).

    mae submit pretrain --nodes 8 --gpus-per-node 8 --partition learnfair --timeout-min 4320 \\
        --preset paper_vit_large --data /datasets/imagenet --output_dir /checkpoint/$USER/mae_large

Everything after the submit flags is the protocol's own command line; it is parsed and checked here before
anything is submitted (so a typo fails now, not in the queue), and the effective batch of the job is printed
beside the recipe's. The job runs one task per GPU (srun, no torchrun); every task resolves its place from
SLURM (:mod:`mae.engine.distributed`). On a time limit or pre-emption SLURM sends USR2 (``--signal
USR2@signal_delay_s``): the training loop saves ``checkpoint-last.pth`` at the next step in every rank, then
submitit requeues the job, which continues with ``--resume auto``, exactly where it stopped.
"""
from __future__ import annotations

import argparse
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SUBMITTABLE = ("pretrain", "finetune", "linprobe", "partial")


class RunJob:
    """What each task of the job runs: ``entry([protocol, *argv, '--resume', 'auto'])`` (``entry``: the ``mae``
    command line's main, pickled by reference); checkpointable (requeue)."""

    def __init__(self, protocol: str, argv: list[str], entry: Callable[[list[str]], int]):
        self.protocol, self.argv, self.entry = protocol, list(argv), entry

    def command(self) -> list[str]:
        argv = list(self.argv)
        if "--resume" not in argv:  # a requeued job continues its run; a fresh one starts it
            argv += ["--resume", "auto"]
        return [self.protocol, *argv]

    def __call__(self) -> int:
        try:
            import submitit
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        except (ImportError, RuntimeError):  # one task, or not inside a submitit job: a plain run
            pass
        from mae.engine.preemption import EXIT_INTERRUPTED, Preempted
        try:
            code = self.entry(self.command())
        except Preempted as stop:  # saved at a step boundary; now let submitit requeue (its USR2 handler is back)
            if stop.code != EXIT_INTERRUPTED and signal.getsignal(signal.SIGUSR2) not in (signal.SIG_DFL, signal.SIG_IGN, None):
                signal.raise_signal(signal.SIGUSR2)  # rank 0: checkpoint() -> requeue -> exit; other ranks return
            raise
        if code:
            raise RuntimeError(f"mae {shlex.join(self.command())} exited with status {code}")
        return code

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on time-out / pre-emption: requeue the same command (it resumes from checkpoint-last)."""
        import submitit
        return submitit.helpers.DelayedSubmission(RunJob(self.protocol, self.argv, self.entry))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mae submit", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Submit one run (pretrain, finetune, linprobe, partial) to SLURM with submitit: one task per "
                    "GPU, requeued on time-out and pre-emption after a mid-epoch save, resumed with --resume auto.",
        epilog="the run's flags follow the protocol name, e.g.\n"
               "  mae submit pretrain --nodes 8 --gpus-per-node 8 --partition P --preset paper_vit_large \\\n"
               "      --data /datasets/imagenet --output_dir /shared/mae_large      # 64 x 64 = batch 4096\n"
               "  mae submit pretrain --nodes 1 --gpus-per-node 8 --partition P --preset paper_vit_large \\\n"
               "      --accum_iter 8 --data /datasets/imagenet                       # 64 x 8 x 8 = 4096\n"
               "output_dir must be on a file system every node sees.")
    p.add_argument("protocol", choices=SUBMITTABLE, help="what to run")
    p.add_argument("--nodes", type=int, default=1, help="nodes (default: 1)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node, one task each (default: 8)")
    p.add_argument("--tasks-per-node", type=int, default=None,
                   help="tasks per node (default: --gpus-per-node; a CPU job: give it with --gpus-per-node 0)")
    p.add_argument("--cpus-per-task", type=int, default=10, help="CPU cores per task: its loader workers (default: 10)")
    p.add_argument("--mem-gb", type=int, default=None, help="memory per node in GB (default: the partition's)")
    p.add_argument("--timeout-min", type=int, default=4320, help="wall-clock limit per job in minutes; the run "
                                                                 "requeues itself past it (default: 4320 = 72 h)")
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--account", default=None, help="SLURM account")
    p.add_argument("--qos", default=None, help="SLURM quality of service")
    p.add_argument("--constraint", default=None, help="SLURM constraint (e.g. a GPU type)")
    p.add_argument("--comment", default=None, help="SLURM comment")
    p.add_argument("--signal-delay-s", type=int, default=120,
                   help="seconds between the USR2 warning and the kill: time to reach a step and save (default: 120)")
    p.add_argument("--folder", default=None, help="submitit's logs and job files (default: <output_dir>/submitit)")
    p.add_argument("--cluster", default=None, choices=("slurm", "local", "debug"),
                   help="submitit's executor (default: slurm where sbatch exists; local runs the tasks on this "
                        "machine, for a try)")
    p.add_argument("--dry-run", action="store_true", help="check the run and print the job, submit nothing")
    return p


def job_parameters(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """submitit's parameters for ``args`` (the SLURM-specific ones prefixed ``slurm_``)."""
    tasks = args.tasks_per_node if args.tasks_per_node is not None else args.gpus_per_node
    if tasks < 1:
        raise ValueError("--tasks-per-node must be >= 1 (a CPU job: --gpus-per-node 0 --tasks-per-node N)")
    params: dict[str, Any] = dict(nodes=args.nodes, tasks_per_node=tasks, gpus_per_node=args.gpus_per_node,
                                  cpus_per_task=args.cpus_per_task, timeout_min=args.timeout_min, name=name,
                                  slurm_signal_delay_s=args.signal_delay_s)
    if args.mem_gb is not None:
        params["mem_gb"] = args.mem_gb
    for key in ("partition", "account", "qos", "constraint", "comment"):
        if getattr(args, key) is not None:
            params[f"slurm_{key}"] = getattr(args, key)
    return params


def submit_main(argv: list[str], check_run: Callable[[str, list[str]], tuple[int, Any]],
                entry: Callable[[list[str]], int]) -> int:
    """``mae submit PROTOCOL [submit flags] [run flags]``: check the run (``check_run(protocol, run_argv)`` ->
    (exit status, resolved config), the command line's own parsing), submit it, print the job id. Each task of
    the job calls ``entry``."""
    parser = build_parser()
    args, run_argv = parser.parse_known_args(argv)
    try:
        code, cfg = check_run(args.protocol, run_argv)
    except SystemExit as e:  # argparse's usage error (already printed) or --help
        return e.code if isinstance(e.code, int) else 2
    if code:
        return code
    tasks = args.tasks_per_node if args.tasks_per_node is not None else args.gpus_per_node
    world = args.nodes * max(tasks, 0)
    eff = cfg.batch_size * cfg.accum_iter * world
    recipe = getattr(cfg, "recipe_batch", None)
    note = "" if not recipe or eff == recipe else (
        f"  <- the recipe's is {recipe}: " + (f"--accum_iter {recipe // (cfg.batch_size * world)}"
                                              if recipe % (cfg.batch_size * world) == 0 else "--batch_size / --accum_iter")
        + " matches it")
    print(f"[submit] mae {args.protocol}: {args.nodes} node(s) x {tasks} task(s) = {world} processes; effective batch "
          f"{eff} = {cfg.batch_size} x accum {cfg.accum_iter} x {world}{note}")
    folder = Path(args.folder) if args.folder else Path(cfg.output_dir) / "submitit"
    try:
        params = job_parameters(args, f"mae_{args.protocol}_{Path(cfg.output_dir).name}")
    except ValueError as e:
        print(f"mae submit: error: {e}", file=sys.stderr)
        return 2
    job = RunJob(args.protocol, run_argv, entry)
    print(f"[submit] each task runs: mae {shlex.join(job.command())}")
    if args.dry_run:
        print(f"[submit] --dry-run: would submit to {args.cluster or 'slurm'} with {params}; logs in {folder}")
        return 0
    try:
        import submitit
    except ImportError:
        print("mae submit: error: submitit is not installed: pip install submitit (or pip install -e '.[slurm]')",
              file=sys.stderr)
        return 2
    executor = submitit.AutoExecutor(folder=folder, cluster=args.cluster)
    executor.update_parameters(**params)
    submitted = executor.submit(job)
    print(f"[submit] job {submitted.job_id}; logs: {folder}; output: {cfg.output_dir}")
    return 0
