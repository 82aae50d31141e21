"""Pre-emption of a training run (SLURM, torchrun): stop signals, the ranks' agreement, the exit status.

SIGTERM, SIGUSR1 or SIGUSR2 (submitit's time-limit signal) goes to the whole process group, and Ctrl-C
sends SIGINT to the foreground group. Loader workers ignore them all (:func:`ignore_stop_signals`, their
``worker_init_fn``), so the main process decides: while a run is inside a :class:`PreemptionGuard`, a
signal only sets a flag; the loop asks :meth:`PreemptionGuard.requested` at optimizer-step boundaries,
writes ``checkpoint-last.pth`` and leaves, and the run ends with :class:`Preempted`: exit status
:data:`EXIT_PREEMPTED` (75, sysexits' EX_TEMPFAIL: "try again"), or 130 after Ctrl-C (the shell's
status for SIGINT). A second Ctrl-C stops at once (KeyboardInterrupt), saving nothing more.
Under DDP the ranks compare their flags every ``every`` optimizer steps (an all-reduce), so that they
all stop at the same step and no collective is left waiting.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch

from mae.engine.distributed import DistInfo

#: signals that pre-empt a run (SLURM sends SIGTERM, or SIGUSR1 with --signal=USR1@T; submitit asks for USR2;
#: torchrun forwards SIGTERM; Ctrl-C is SIGINT)
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
#: exit status of a pre-empted run (checkpoint saved, resume with --resume auto): sysexits' EX_TEMPFAIL
EXIT_PREEMPTED = 75
#: exit status after Ctrl-C (checkpoint saved): 128 + SIGINT, what a shell reports for an interrupted command
EXIT_INTERRUPTED = 130


class Preempted(SystemExit):
    """A stop signal arrived; ``checkpoint-last.pth`` holds the state. Exits with :data:`EXIT_PREEMPTED`."""

    def __init__(self, signum: int, checkpoint: Path):
        super().__init__(EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_PREEMPTED)
        self.signum, self.checkpoint = signum, checkpoint


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers ignore :data:`STOP_SIGNALS`, so a signal to the process group
    leaves them running and the main process saves and stops them (torch's workers otherwise die of
    SIGTERM and the main process fails with "DataLoader worker ... killed by signal")."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class PreemptionGuard:
    """While entered (``with guard:``), :data:`STOP_SIGNALS` only set :attr:`signum`; the handlers that were
    there before are restored on exit. ``every``: optimizer steps between the ranks' agreements (DDP)."""

    def __init__(self, dist: DistInfo, device: torch.device, every: int):
        self.dist, self.device, self.every = dist, device, max(1, every)
        self.signum: int | None = None
        self._agreed = False  # DDP: every rank knows of the stop signal
        self._saved: dict[int, Any] = {}
        self._parent: int | None = None  # the torchrun agent's pid (see __enter__)

    def __enter__(self) -> PreemptionGuard:
        def handler(signum: int, frame: Any) -> None:
            if signum == signal.SIGINT and self.signum == signal.SIGINT:  # Ctrl-C twice: stop now
                raise KeyboardInterrupt
            if signum == signal.SIGINT and self.dist.is_main:
                print("\n[train] Ctrl-C: saving at the next step (Ctrl-C again to stop without saving)",
                      file=sys.stderr, flush=True)
            self.signum = signum
        for sig in STOP_SIGNALS:
            try:
                self._saved[sig] = signal.signal(sig, handler)
            except ValueError:  # not in the main thread: signals keep their default action
                pass
        # a torchrun worker whose agent died (SIGUSR1 or SIGKILL to the agent alone) would train on, orphaned:
        # it stops as if signalled when its parent is gone
        self._parent = os.getppid() if os.environ.get("TORCHELASTIC_RUN_ID") else None
        return self

    def _orphaned(self) -> bool:
        """Whether this torchrun worker's agent exited (the worker was re-parented); then: a stop, as SIGHUP."""
        if self._parent is not None and self.signum is None and os.getppid() != self._parent:
            self.signum = signal.SIGHUP
            if self.dist.is_main:
                print(f"[train] the launcher (pid {self._parent}) exited: saving at this step", file=sys.stderr,
                      flush=True)
        return self.signum is not None

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._saved.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._saved.clear()

    def requested(self, global_step: int) -> bool:
        """Whether a stop signal arrived (on any rank); distributed ranks compare flags every ``every`` steps."""
        if not self.dist.enabled:
            return self._orphaned()
        if self._agreed or global_step % self.every:
            return self._agreed
        self._orphaned()
        flag = torch.tensor(int(self.signum or 0), dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if int(flag.item()):
            self.signum = self.signum or int(flag.item())  # another rank's signal: stop here too
            self._agreed = True
        return self._agreed

    def exit(self, checkpoint: Path, where: str, resume_command: str) -> Preempted:
        """Say (one line, rank 0) where the state is and how to continue; the exception to raise."""
        assert self.signum is not None
        if self.dist.is_main:
            code = EXIT_INTERRUPTED if self.signum == signal.SIGINT else EXIT_PREEMPTED
            print(f"[train] {signal.Signals(self.signum).name}: saved {checkpoint} at {where}; exit {code}, "
                  f"continue with: {resume_command}", file=sys.stderr, flush=True)
        return Preempted(self.signum, checkpoint)
