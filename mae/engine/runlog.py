"""A run's logs and its loss guard: what the training loop writes as it goes, and the NaN / Inf check.

- :class:`RunLogger` (rank 0): ``train_log.csv`` (one row per logged iteration; columns an evaluation
  fills go into each epoch's last row), ``log.txt`` (one JSON line per epoch), TensorBoard events.
- :class:`LossMonitor`: an epoch's running loss, and the non-finite guard that stops a run before a NaN
  reaches a checkpoint (on a GPU without a host sync per step).
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class LossMonitor:
    """An epoch's running loss and the non-finite guard.

    Where host syncs are cheap (CPU, one process) every loss is read and checked at once, before its backward
    pass. Under DDP the check is deferred like on a GPU and ``agree`` makes it collective: every rank reaches
    the same checks, and all stop at the first one after any rank saw a NaN.
    On a GPU (``deferred``) the check stays on the device and the host reads it only when a value is
    needed: at logging points, before a checkpoint and at the epoch end; so a NaN stops the run at most
    ``log_every`` iterations late, and never reaches a checkpoint.
    """

    def __init__(self, device: torch.device, deferred: bool, on_bad: Callable[..., None],
                 agree: Callable[[int], int] | None = None):
        self.deferred, self.on_bad, self.n = deferred, on_bad, 0
        #: several processes: ``agree(flag) -> max over ranks`` at every check, so that all ranks stop together
        self.agree = agree
        self.total: float | torch.Tensor = torch.zeros((), dtype=torch.float64, device=device) if deferred else 0.0
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device) if deferred else None
        self.bad_value = torch.zeros((), dtype=torch.float32, device=device) if deferred else None
        self._last: float | torch.Tensor = float("nan")

    def add(self, loss: torch.Tensor, iteration: int) -> None:
        v = loss.detach()
        self.n += 1
        if not self.deferred:
            x = float(v.item())
            if not math.isfinite(x):
                self.on_bad(x, iteration)
            self.total += x
            self._last = x
            return
        newly_bad = ~torch.isfinite(v) & (self.first_bad < 0)
        self.first_bad = torch.where(newly_bad, torch.full_like(self.first_bad, iteration), self.first_bad)
        self.bad_value = torch.where(newly_bad, v.float(), self.bad_value)
        self.total = self.total + v.double()
        self._last = v

    def check(self) -> None:
        """Raise (through ``on_bad``) if a non-finite loss was seen; a host sync when deferred."""
        if not self.deferred:
            return
        first_bad = int(self.first_bad.item())
        if self.agree is not None:  # the earliest non-finite loss over all ranks (ties: the highest rank)
            import torch.distributed as dist
            rank = dist.get_rank() if dist.is_initialized() else 0
            code = ((2**40 - first_bad) << 16) + rank + 1 if first_bad >= 0 else 0
            worst = self.agree(code)
            if worst:
                who, when = (worst & 0xFFFF) - 1, 2**40 - (worst >> 16)
                self.on_bad(float(self.bad_value.item()) if who == rank else float("nan"), when, who)
            return
        if first_bad >= 0:
            self.on_bad(float(self.bad_value.item()), first_bad)

    def total_value(self) -> float:
        """The running sum of the losses (a host sync when deferred)."""
        return float(self.total)

    def restore(self, total: float, n: float) -> None:
        """Continue from a checkpoint's running sum and count (a run resumed mid-epoch; a count of this run's
        iterations, fractional after a resume at another batch per iteration)."""
        self.n = n
        self.total = (torch.full_like(self.total, total) if isinstance(self.total, torch.Tensor) else float(total))

    def last(self) -> float:
        self.check()
        return float(self._last)

    def mean(self) -> float:
        self.check()
        return float(self.total) / max(self.n, 1)


class RunLogger:
    """Rank-0 logs of a run: per-iteration CSV, per-epoch JSON lines, TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, columns: tuple[str, ...] = ()):
        self.enabled = enabled
        self.columns = tuple(columns)  # train_log.csv columns filled only at epoch ends (amend_last)
        self._last: tuple[int, dict[str, Any]] | None = None  # (file offset, row) of the last row written
        self.iter_path = run_dir / "train_log.csv"
        self.epoch_path = run_dir / "log.txt"
        # TensorBoard's writer is opened at the first record: a resume with nothing to do writes no events file
        self._tb_dir: Path | None = run_dir / "tensorboard" if enabled and tensorboard else None
        self._tb: Any = None
        self._fields: list[str] | None = None

    @property
    def tb(self) -> Any:
        """The TensorBoard writer (None without TensorBoard), opened on first use."""
        if self._tb is None and self._tb_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(log_dir=str(self._tb_dir))
            except ImportError:  # tensorboard not installed: CSV logs still work
                self._tb_dir = None
        return self._tb

    def truncate_after(self, step: int) -> None:
        """On resume, drop iteration rows logged after the checkpoint (they will be redone)."""
        if not (self.enabled and self.iter_path.exists()):
            return
        with self.iter_path.open() as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if int(r["iteration"]) < step]
        if rows:  # atomically: a crash here leaves the old rows, never half of them
            import io

            from mae.atomic import atomic_write_text
            buf = io.StringIO(newline="")
            w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(keep)
            atomic_write_text(self.iter_path, buf.getvalue())

    def log_iter(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        new = not self.iter_path.exists()
        if self._fields is None:
            if new:
                self._fields = list(row) + [c for c in self.columns if c not in row]
            else:
                with self.iter_path.open() as f:
                    self._fields = next(csv.reader(f), list(row))
        with self.iter_path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._fields, extrasaction="ignore")
            if new:
                w.writeheader()
            self._last = (f.tell(), row)
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("epoch", "iteration") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, row["iteration"])

    def amend_last(self, values: dict[str, Any]) -> None:
        """Add ``values`` to the last row written (at an epoch end: the row of the epoch's last iteration)."""
        if not (self.enabled and values and self._last is not None):
            return
        offset, row = self._last
        with self.iter_path.open("r+", newline="") as f:
            f.seek(offset)
            f.truncate()
            csv.DictWriter(f, fieldnames=self._fields, extrasaction="ignore").writerow({**row, **values})

    def log_epoch(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.epoch_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(f"epoch/{k}", v, record["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
