"""The one training loop behind every protocol (pretrain, fine-tune, linear probe, partial fine-tune).

It owns what the official release repeats in each of its scripts: device and DDP setup, a seeded and
resumable data order, the per-iteration warm-up + cosine schedule with the lr scaling rule, AMP
(bf16 on GPU, fp32 on CPU), gradient accumulation and clipping, a non-finite-loss guard, logging
(CSV, JSON lines, TensorBoard, tqdm) and atomic checkpoints that resume bitwise-identically on CPU,
also from the middle of an epoch. A protocol supplies the model, the dataset and a ``step_fn``.

Pre-emption (SLURM, torchrun): SIGTERM or SIGUSR1 to the process group. Loader workers ignore both
(:func:`ignore_stop_signals`), so the main process decides: its handler only sets a flag, the loop
writes ``checkpoint-last.pth`` (atomically) at the next optimizer-step boundary, or keeps the one it
just wrote when the signal came during an epoch's evaluation, prints one line and exits with status
:data:`EXIT_PREEMPTED` (75, sysexits' EX_TEMPFAIL: "try again"). ``--resume auto`` continues the run,
bitwise on CPU. Under DDP the ranks agree on the stop step (an all-reduce every ``log_every`` steps).
"""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from mae.config import TrainConfig, to_dict
from mae.data.errors import DataError
from mae.data.sampler import ResumableSampler, SeededDataset
from mae.engine import checkpoint as ckpt
from mae.engine import rundir, speed
from mae.engine.distributed import DistInfo, all_reduce_mean, barrier, init_distributed
from mae.engine.optim import adamw, lr_at, param_groups_weight_decay, scaled_lr, set_lr

StepFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, dict[str, Any]]"]
EvalFn = Callable[[nn.Module, int], "dict[str, float]"]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss; the last good checkpoint is kept untouched."""


class DeviceUnavailableError(RuntimeError):
    """The requested device does not exist on this machine."""


class RecipeBatchWarning(UserWarning):
    """The run's effective batch is not its recipe's (e.g. a paper preset on fewer GPUs without --accum_iter)."""


class _Stop(Exception):
    """Internal: leave the loop after a checkpoint (max_iters reached or a preemption signal)."""


#: signals that pre-empt a run (SLURM sends SIGTERM, or SIGUSR1 with --signal=USR1@T; torchrun SIGTERM)
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)
#: exit status of a pre-empted run (checkpoint saved, resume with --resume auto): sysexits' EX_TEMPFAIL
EXIT_PREEMPTED = 75


class Preempted(SystemExit):
    """A stop signal arrived; ``checkpoint-last.pth`` holds the state. Exits with :data:`EXIT_PREEMPTED`."""

    def __init__(self, signum: int, checkpoint: Path):
        super().__init__(EXIT_PREEMPTED)
        self.signum, self.checkpoint = signum, checkpoint


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers ignore :data:`STOP_SIGNALS`, so a signal to the process group
    leaves them running and the main process saves and stops them (torch's workers otherwise die of
    SIGTERM and the main process fails with "DataLoader worker ... killed by signal")."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return dev


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 on GPU by default, none (fp32) on CPU."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
    if amp not in table:
        raise ValueError(f"--amp must be one of auto, bf16, fp16, none; got {amp!r}")
    return table[amp]


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's random."""
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def move_to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch


class LossMonitor:
    """An epoch's running loss and the non-finite guard.

    Where host syncs are cheap (CPU) every loss is read and checked at once, before its backward pass.
    On a GPU (``deferred``) the check stays on the device and the host reads it only when a value is
    needed: at logging points, before a checkpoint and at the epoch end; so a NaN stops the run at most
    ``log_every`` iterations late, and never reaches a checkpoint.
    """

    def __init__(self, device: torch.device, deferred: bool, on_bad: Callable[[float, int], None]):
        self.deferred, self.on_bad, self.n = deferred, on_bad, 0
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
        if self.deferred and int(self.first_bad.item()) >= 0:
            self.on_bad(float(self.bad_value.item()), int(self.first_bad.item()))

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
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard not installed: CSV logs still work
                self.tb = None
        self._fields: list[str] | None = None

    def truncate_after(self, step: int) -> None:
        """On resume, drop iteration rows logged after the checkpoint (they will be redone)."""
        if not (self.enabled and self.iter_path.exists()):
            return
        with self.iter_path.open() as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if int(r["iteration"]) < step]
        if rows:
            with self.iter_path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
                w.writeheader()
                w.writerows(keep)

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
        if self.tb is not None:
            self.tb.close()


class Trainer:
    """Train ``model`` on ``train_set`` with ``step_fn``; see the module docstring."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, train_set: Dataset, *, step_fn: StepFn,
                 param_groups: list[dict] | None = None,
                 optimizer_factory: Callable[[list[dict], float], torch.optim.Optimizer] | None = None,
                 eval_fn: EvalFn | None = None, best_metric: str | None = None, best_mode: str = "max",
                 batch_transform: Callable[[Any], Any] | None = None,
                 epoch_end_fn: Callable[["Trainer", int], None] | None = None,
                 collate_fn: Callable | None = None, prefetch_batch_transform: bool = False,
                 log_columns: tuple[str, ...] = ()):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.run_dir = cfg.run_dir
        self.is_main = self.dist.is_main
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.step_fn, self.eval_fn, self.epoch_end_fn = step_fn, eval_fn, epoch_end_fn
        self.best_metric, self.best_mode = best_metric, best_mode
        self.batch_transform = batch_transform
        # a thread-safe batch_transform (no global RNG draws) may run a batch ahead: see `prefetches`
        self.prefetch = prefetch_batch_transform and batch_transform is not None
        self._prefetcher: Any = None
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        # CPU thread policy (mae.engine.threads): --threads, else OMP_NUM_THREADS, else all cores; recorded as
        # "runtime" in this process's first log.txt record and in metrics.json
        from mae.engine.threads import apply_thread_policy
        self.runtime = apply_thread_policy(getattr(cfg, "threads", None), announce=self.is_main)
        self._runtime_logged = False

        self.model_without_ddp = model.to(self.device)
        # [fast path hook, mae.engine.speed] compiled in place before DDP (state_dict unchanged); on CPU a
        # no-op unless fast_path="on", so CPU runs stay bitwise what they were
        self.fast_path = speed.resolve_fast_path(cfg.fast_path, self.device, cfg.compile_mode)
        speed.apply_fast_path(self.model_without_ddp, self.fast_path, self.device, distributed=self.dist.enabled)
        self.model: nn.Module = self.model_without_ddp
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.model_without_ddp, device_ids=ids)

        if len(train_set) < cfg.batch_size * self.dist.world_size:
            raise DataError(f"the training set has {len(train_set)} samples, fewer than one batch "
                             f"({cfg.batch_size} x {self.dist.world_size} processes)")
        self.dataset = SeededDataset(train_set, cfg.seed)
        self.sampler = ResumableSampler(len(train_set), num_replicas=self.dist.world_size, rank=self.dist.rank,
                                        shuffle=True, seed=cfg.seed, drop_last=True)
        self.loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=self.sampler,
                                 num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
                                 drop_last=True, collate_fn=collate_fn, generator=torch.Generator(),
                                 worker_init_fn=ignore_stop_signals)
        self.iters_per_epoch = len(self.sampler) // cfg.batch_size
        if self.iters_per_epoch < cfg.accum_iter:
            raise ValueError(f"{self.iters_per_epoch} iterations per epoch is fewer than accum_iter={cfg.accum_iter}")

        self.eff_batch = cfg.batch_size * cfg.accum_iter * self.dist.world_size
        self.base_lr = cfg.lr if cfg.lr is not None else scaled_lr(cfg.blr, self.eff_batch)
        if self.is_main:
            print(f"[train] effective batch {self.eff_batch} = {cfg.batch_size} x accum {cfg.accum_iter} x "
                  f"{self.dist.world_size} process(es); lr {self.base_lr:.4g}"
                  + ("" if cfg.lr is not None else f" (blr {cfg.blr:g} x {self.eff_batch} / 256)"))
            if cfg.recipe_batch and self.eff_batch != cfg.recipe_batch:
                per_step = cfg.batch_size * self.dist.world_size
                hint = (f"--accum_iter {cfg.recipe_batch // per_step}" if cfg.recipe_batch % per_step == 0
                        else "--batch_size / --accum_iter")
                warnings.warn(f"effective batch {self.eff_batch} differs from the recipe's {cfg.recipe_batch}: the lr "
                              f"scales with it and the results will not be the recipe's; use {hint} to match",
                              RecipeBatchWarning, stacklevel=2)
        groups = param_groups if param_groups is not None else param_groups_weight_decay(self.model_without_ddp, cfg.weight_decay)
        fused = speed.adamw_fused_arg(self.fast_path)  # [fast path hook] None = fused on GPU, False = off
        make_opt = optimizer_factory or (lambda g, lr: adamw(g, lr, cfg.betas, fused=fused))
        self.optimizer = make_opt(groups, self.base_lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.epoch, self.iter_in_epoch, self.global_step, self.total_iters = 0, 0, 0, 0
        self.best: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        # log_columns: eval_fn keys also written to train_log.csv, in each epoch's last row (empty elsewhere)
        self.logger = RunLogger(self.run_dir, self.is_main, cfg.tensorboard, columns=log_columns)
        self._stop_signal: int | None = None
        self._saved_handlers: dict[int, Any] = {}
        self._stop_agreed = False  # DDP: every rank knows of the stop signal (see _stop_requested)
        # GPU: check the loss for NaN/Inf on the device and sync only at logging points (LossMonitor)
        self.defer_loss_check = self.device.type == "cuda"

    # ----------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_without_ddp.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "iter": self.iter_in_epoch,
            "global_step": self.global_step, "total_iters": self.total_iters,
            "best": self.best, "rng": ckpt.rng_state(),
            "config": to_dict(self.cfg), "config_class": type(self.cfg).__name__,
            "world_size": self.dist.world_size,
        }

    def save(self, numbered: bool = False) -> None:
        """checkpoint-last.pth (atomic) and, if asked, checkpoint-<epoch>.pth, then prune old ones."""
        if self.is_main:
            state = self.state_dict()
            ckpt.save_checkpoint(state, self.run_dir / ckpt.LAST)
            if numbered:
                ckpt.save_checkpoint(state, self.run_dir / f"checkpoint-{self.epoch - 1}.pth")
                ckpt.prune_checkpoints(self.run_dir, self.cfg.keep_last)
        barrier()

    def resume(self, path: str | Path) -> None:
        state = ckpt.load_checkpoint(path)
        missing = [k for k in ("model", "optimizer", "epoch", "iter", "rng") if k not in state]
        if missing:
            raise ckpt.CheckpointError(f"{path} is not a resumable training checkpoint (missing {missing}); "
                                       "to start from its weights use the protocol's init/finetune option")
        if state.get("world_size", 1) != self.dist.world_size:
            print(f"[resume] note: checkpoint was written with {state.get('world_size')} processes, now "
                  f"{self.dist.world_size}; the data order after resume differs from an uninterrupted run")
        ckpt.load_state_dict_checked(self.model_without_ddp, state["model"], strict=True, source=str(path))
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.iter_in_epoch = int(state["epoch"]), int(state["iter"])
        self.global_step, self.total_iters = int(state["global_step"]), int(state["total_iters"])
        self.best = state.get("best", {})
        ckpt.set_rng_state(state["rng"])
        self.logger.truncate_after(self.total_iters)
        if self.is_main:
            print(f"[resume] {path}: epoch {self.epoch}, iteration {self.iter_in_epoch}, step {self.global_step}")

    # ------------------------------------------------------------------ loop
    def _install_signal_handlers(self) -> None:
        """A stop signal only sets a flag; the loop acts on it at the next step boundary (see module doc)."""
        def handler(signum: int, frame: Any) -> None:
            self._stop_signal = signum
        for sig in STOP_SIGNALS:
            try:
                self._saved_handlers[sig] = signal.signal(sig, handler)
            except ValueError:  # not in the main thread: signals keep their default action
                pass

    def _restore_signal_handlers(self) -> None:
        for sig, old in self._saved_handlers.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._saved_handlers.clear()

    def _stop_requested(self) -> bool:
        """Whether a stop signal arrived (on any rank). Distributed ranks compare flags every ``log_every``
        optimizer steps, so that they all stop at the same step and no collective is left waiting."""
        if not self.dist.enabled:
            return self._stop_signal is not None
        if self._stop_agreed or self.global_step % max(1, self.cfg.log_every):
            return self._stop_agreed
        flag = torch.tensor(int(self._stop_signal or 0), dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if int(flag.item()):
            self._stop_signal = self._stop_signal or int(flag.item())  # another rank's signal: stop here too
            self._stop_agreed = True
        return self._stop_agreed

    def _preempted(self) -> Preempted:
        """Say (one line, rank 0) where the state is and how to continue; the exception to raise."""
        last = self.run_dir / ckpt.LAST
        name = signal.Signals(self._stop_signal).name
        if self.is_main:
            print(f"[train] {name}: saved {last} at epoch {self.epoch}, iteration {self.iter_in_epoch} "
                  f"(step {self.global_step}); exit {EXIT_PREEMPTED}, continue with: "
                  f"{rundir.resume_command(self.cfg, self.cfg.max_iters)}", file=sys.stderr, flush=True)
        return Preempted(self._stop_signal, last)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _prepare(self, batch: Any) -> Any:
        batch = move_to(batch, self.device)
        return batch if self.batch_transform is None else self.batch_transform(batch)

    @property
    def prefetches(self) -> bool:
        """Whether batches are prepared a batch ahead in a thread: on CUDA, for a thread-safe batch_transform,
        and only with loader workers (in-process, SeededDataset would reseed torch's global RNG in the thread
        while the step draws masks from it)."""
        return self.prefetch and self.device.type == "cuda" and self.cfg.num_workers > 0

    def _batches(self) -> Any:
        """The epoch's batches on the device; prepared a batch ahead in a thread where that is safe (CUDA)."""
        if self.prefetches:
            if self._prefetcher is None:  # one for the run: its side stream is reused every epoch
                from mae.engine.prefetch import PrefetchLoader
                self._prefetcher = PrefetchLoader(self.loader, self._prepare, self.device, depth=2)
            return self._prefetcher
        return (self._prepare(b) for b in self.loader)

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        t_fit = time.time()
        resume_path = ckpt.resolve_resume(cfg.resume, self.run_dir)
        if self.is_main:  # a resume keeps the run's config.yaml unless a recipe field changed (mae.engine.rundir)
            rundir.write_config(cfg, self.run_dir, resuming=resume_path is not None)
        if resume_path is not None:
            self.resume(resume_path)
            done = self.run_dir / "metrics.json"
            if self.epoch >= cfg.epochs and done.is_file():  # finished: nothing to redo, its metrics stay
                self.logger.close()
                if self.is_main:
                    print(f"[resume] {self.run_dir} has finished its {cfg.epochs} epochs: nothing to do")
                return json.loads(done.read_text())
        else:
            seed_everything(cfg.seed + self.dist.rank)
            if self.is_main:  # a fresh start: rows of an earlier attempt that left no checkpoint never mix in
                self.logger.iter_path.unlink(missing_ok=True)
                self.logger.epoch_path.unlink(missing_ok=True)
        self._install_signal_handlers()
        try:
            while self.epoch < cfg.epochs:
                self._train_epoch()
                self._end_epoch()  # writes checkpoint-last.pth
                if self.epoch < cfg.epochs and self._stop_requested():
                    raise _Stop  # a signal during the evaluation: the epoch's checkpoint is the state
        except _Stop:
            pass
        finally:
            self.logger.close()
            self._restore_signal_handlers()
        if self._stop_signal is not None and self.epoch < cfg.epochs:
            raise self._preempted()
        result = {"history": self.history, "final": self.history[-1] if self.history else {}, "best": self.best,
                  "finished": self.epoch >= cfg.epochs}
        if self.is_main and result["finished"]:
            result["runtime"] = self.runtime
            from mae.provenance import stage_provenance  # the run stamps its own numbers (never the collector)
            result["provenance"] = stage_provenance(seed=cfg.seed, wall_s=time.time() - t_fit,
                                                    resumed=resume_path is not None)
            (self.run_dir / "metrics.json").write_text(json.dumps(result, indent=1, default=float))
        return result

    def _train_epoch(self) -> None:
        cfg, model, opt = self.cfg, self.model, self.optimizer
        start = self.iter_in_epoch
        self.sampler.set_epoch(self.epoch, start_index=start * cfg.batch_size)
        self.dataset.set_epoch(self.epoch)
        model.train(True)
        bar = None
        if self.is_main and cfg.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.iters_per_epoch, initial=start, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                       dynamic_ncols=True, mininterval=1.0, leave=False)
        monitor = LossMonitor(self.device, self.defer_loss_check, self._non_finite)
        t0 = time.time()
        opt.zero_grad(set_to_none=True)
        for batch in self._batches():
            it = self.iter_in_epoch
            stepping = (it + 1) % cfg.accum_iter == 0
            if it % cfg.accum_iter == 0:
                lr = lr_at(self.epoch + it / self.iters_per_epoch, self.base_lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs)
                set_lr(opt, lr)
            sync = nullcontext() if (stepping or not self.dist.enabled) else model.no_sync()
            try:
                with sync:
                    with self._autocast():
                        loss, metrics = self.step_fn(model, batch)
                    monitor.add(loss, self.total_iters)
                    self.scaler.scale(loss / cfg.accum_iter).backward()
            except torch.cuda.OutOfMemoryError as e:
                raise torch.cuda.OutOfMemoryError(
                    f"{e}\nOut of GPU memory at batch_size={cfg.batch_size}: lower --batch_size and raise "
                    f"--accum_iter to keep the effective batch ({self.eff_batch}).") from e
            if stepping:
                if cfg.clip_grad:
                    self.scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(self.model_without_ddp.parameters(), cfg.clip_grad)
                self.scaler.step(opt)
                self.scaler.update()
                opt.zero_grad(set_to_none=True)
                self.global_step += 1
            self.iter_in_epoch += 1
            self.total_iters += 1
            current_lr = max(g["lr"] for g in opt.param_groups)
            if self.total_iters % cfg.log_every == 0 or self.iter_in_epoch == self.iters_per_epoch:
                loss_value = monitor.last()  # (deferred: the one host sync of the interval)
                row = {"epoch": self.epoch, "iteration": self.total_iters - 1, "lr": current_lr, "loss": loss_value}
                row.update({k: float(v) for k, v in metrics.items()})
                self.logger.log_iter(row)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{current_lr:.2e}", refresh=False)
            if bar is not None:
                bar.update(1)
            if stepping:
                # a signal at an epoch's last step waits for the epoch end (its evaluation and checkpoint)
                stop = (cfg.max_iters is not None and self.total_iters >= cfg.max_iters) or (
                    self.iter_in_epoch < self.iters_per_epoch and self._stop_requested())
                if stop or (cfg.ckpt_every_iters and self.global_step % cfg.ckpt_every_iters == 0
                            and self.iter_in_epoch < self.iters_per_epoch):
                    monitor.check()  # a NaN never reaches a checkpoint
                    self.save()
                if stop:
                    if bar is not None:
                        bar.close()
                    why = f"signal {self._stop_signal}" if self._stop_signal else f"max_iters={cfg.max_iters}"
                    if self.is_main and self._stop_signal is None:  # (a signal: fit says it, then exits)
                        print(f"[train] stopped after iteration {self.total_iters} ({why}); "
                              f"continue with: {rundir.resume_command(cfg)}")
                    raise _Stop
        if bar is not None:
            bar.close()
        self._epoch_stats = {"train_loss": all_reduce_mean(monitor.mean(), self.device),
                             "train_lr": max(g["lr"] for g in opt.param_groups),
                             "epoch_time_s": time.time() - t0,
                             "imgs_per_s": monitor.n * cfg.batch_size * self.dist.world_size / max(time.time() - t0, 1e-9)}
        skipped = getattr(getattr(self.dataset, "base", None), "num_skipped", 0)
        if skipped:
            self._epoch_stats["skipped_images"] = int(skipped)

    def _non_finite(self, value: float, total_iteration: int) -> None:
        last = self.run_dir / ckpt.LAST
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        in_epoch = total_iteration - (self.total_iters - self.iter_in_epoch)
        raise NonFiniteLossError(
            f"loss is {value} at epoch {self.epoch}, iteration {in_epoch} (overall iteration {total_iteration}); "
            f"training stopped and {kept}. Try a lower --blr, more --warmup_epochs, --clip_grad, or --amp none.")

    def _end_epoch(self) -> None:
        cfg = self.cfg
        epoch = self.epoch
        self.epoch += 1
        self.iter_in_epoch = 0
        record: dict[str, Any] = {"epoch": epoch, **self._epoch_stats}
        last = self.epoch >= cfg.epochs
        if self.eval_fn is not None and (last or self.epoch % cfg.eval_every == 0):
            self.model_without_ddp.eval()
            with torch.no_grad(), self._autocast():
                record.update(self.eval_fn(self.model_without_ddp, epoch))
            self._update_best(record)
        self.logger.amend_last({k: record[k] for k in self.logger.columns if k in record})
        if self.epoch_end_fn is not None:
            self.epoch_end_fn(self, epoch)
        self.history.append(record)
        self.logger.log_epoch(record if self._runtime_logged else {**record, "runtime": self.runtime})
        self._runtime_logged = True
        self.save(numbered=last or self.epoch % cfg.save_every == 0)

    def _update_best(self, record: dict[str, Any]) -> None:
        key = self.best_metric
        if key is None or key not in record:
            return
        better = (lambda a, b: a > b) if self.best_mode == "max" else (lambda a, b: a < b)
        if not self.best or better(record[key], self.best[key]):
            self.best = {key: record[key], "epoch": record["epoch"]}
            if self.is_main:
                ckpt.save_checkpoint({"model": self.model_without_ddp.state_dict(), "epoch": record["epoch"],
                                      "metric": self.best, "config": to_dict(self.cfg)}, self.run_dir / ckpt.BEST)


def world_info() -> dict[str, Any]:
    """Process info for logs (rank / world size from the environment)."""
    return {"rank": int(os.environ.get("RANK", 0)), "world_size": int(os.environ.get("WORLD_SIZE", 1))}
