"""The one training loop behind every protocol (pretrain, fine-tune, linear probe, partial fine-tune, tokenizer).

It owns what the official release repeats in each of its scripts: device and DDP setup, a seeded and
resumable data order, the per-iteration warm-up + cosine schedule with the lr scaling rule, AMP
(bf16 on GPU, fp32 on CPU), gradient accumulation and clipping, a non-finite-loss guard and logging
(:mod:`mae.engine.runlog`), and checkpoints that resume bitwise-identically on CPU, also from the
middle of an epoch (:mod:`mae.engine.checkpointer`). A protocol supplies the model, the dataset and
its :class:`TrainHooks` (the step, and optionally an evaluation, an epoch-end action, a batch
preparation on the device, a collate function, an optimizer).

Pre-emption (SLURM, torchrun: :mod:`mae.engine.preemption`): a stop signal makes the loop write
``checkpoint-last.pth`` at the next optimizer-step boundary (or keep the one it just wrote when the
signal came during an epoch's evaluation), print one line and exit with status
:data:`~mae.engine.preemption.EXIT_PREEMPTED` (75); ``--resume auto`` continues the run, bitwise on CPU.
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from mae.atomic import atomic_write_text
from mae.config import TrainConfig
from mae.data.errors import DataError
from mae.data.sampler import ResumableSampler, SeededDataset
from mae.engine import checkpoint as ckpt
from mae.engine.checkpoint import seed_everything  # noqa: F401 (re-exported: the protocols seed through the loop)
from mae.engine import rundir, speed
from mae.engine.checkpointer import Checkpointer
from mae.engine.distributed import (DistInfo, all_reduce_max, all_reduce_mean, init_distributed, is_main_process,
                                    local_device)
from mae.engine.optim import adamw, lr_at, param_groups_weight_decay, scaled_lr, set_lr
from mae.engine.preemption import PreemptionGuard, ignore_stop_signals
from mae.engine.runlog import LossMonitor, RunLogger

StepFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, dict[str, Any]]"]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss; the last good checkpoint is kept untouched."""


class DeviceUnavailableError(RuntimeError):
    """The requested device does not exist on this machine."""


class RecipeBatchWarning(UserWarning):
    """The run's effective batch is not its recipe's (e.g. a paper preset on fewer GPUs without --accum_iter)."""


class _Stop(Exception):
    """Internal: leave the loop after a checkpoint (max_iters reached or a preemption signal)."""


@dataclass
class TrainHooks:
    """What a protocol plugs into the loop: its ``step``, and optionally the rest."""

    #: (model, batch on the device) -> (loss, metrics to log): one forward, under autocast
    step: StepFn
    #: (trainer, epoch) -> metrics, at epoch ends (every ``eval_every`` and the last), the model in eval mode
    evaluate: Callable[["Trainer", int], dict[str, float]] | None = None
    #: (trainer, epoch) after the evaluation, before the epoch's checkpoint (figures, exports)
    end_epoch: Callable[["Trainer", int], None] | None = None
    #: batch on the device -> batch (normalisation, GPU decoding, mixup)
    prepare_batch: Callable[[Any], Any] | None = None
    #: prepare_batch draws no global random numbers: on CUDA with loader workers it may run a batch ahead
    prefetch_prepare: bool = False
    #: the DataLoader's collate_fn
    collate: Callable | None = None
    #: (param_groups, lr) -> optimizer (default: AdamW with the recipe's betas)
    make_optimizer: Callable[[list[dict], float], torch.optim.Optimizer] | None = None
    #: evaluate's keys also written to train_log.csv, in each epoch's last row (empty elsewhere)
    log_columns: tuple[str, ...] = ()


def resolve_device(name: str, expect_gpu: bool = False) -> torch.device:
    """The device of this process: ``auto`` is its GPU (``cuda:(local_rank % device_count)``) if CUDA works,
    else the CPU, said in one line where a GPU was expected (``expect_gpu``: a paper recipe, or
    ``CUDA_VISIBLE_DEVICES`` naming devices); ``cuda`` without an index is the process's GPU too."""
    if name == "auto":
        if torch.cuda.is_available():
            return local_device("cuda")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
        if (expect_gpu or (visible and visible != "-1")) and is_main_process():
            why = f"CUDA_VISIBLE_DEVICES={visible}" if visible else "this recipe is meant for GPUs"
            print(f"[device] --device auto chose the CPU although {why}: CUDA is not usable here (torch "
                  f"{torch.__version__}, CUDA build {torch.version.cuda}; an old driver or a GPU this build has no "
                  "kernels for? README: Installing on a cluster). Give --device cpu to silence this.",
                  file=sys.stderr, flush=True)
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise DeviceUnavailableError(f"--device {name}: not a device name ({e}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if dev.type == "cuda" and dev.index is None:
        return local_device("cuda")
    return dev


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: on GPU bf16 where the GPU supports it (Ampere and later), else fp16 (with a GradScaler:
    V100, T4); none (fp32) on CPU."""
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
    if amp not in table:
        raise ValueError(f"--amp must be one of auto, bf16, fp16, none; got {amp!r}")
    return table[amp]


def describe_device(device: torch.device, amp: torch.dtype | None) -> str:
    """The device in words, for the run's first line: 'cuda:0 (NVIDIA H100 80GB HBM3), bf16 autocast'."""
    if device.type == "cuda":
        where = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        from mae.provenance import cpu_model
        where = f"cpu ({cpu_model()}, {torch.get_num_threads()} intra-op thread(s))"
    precision = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + GradScaler"}.get(amp, "fp32")
    return f"{where}, {precision}"


def move_to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch


class Trainer:
    """Train ``model`` on ``train_set`` with ``hooks``; see the module docstring.

    ``param_groups``: the optimizer's groups (default: weight decay on every weight but biases and norms);
    ``best_metric`` / ``best_mode``: the evaluation metric whose best value keeps ``checkpoint-best.pth``.
    """

    def __init__(self, cfg: TrainConfig, model: nn.Module, train_set: Dataset, hooks: TrainHooks, *,
                 param_groups: list[dict] | None = None, best_metric: str | None = None, best_mode: str = "max"):
        self.cfg, self.hooks = cfg, hooks
        from mae.provenance import pin_code_commit
        pin_code_commit()  # the commit this run's numbers will carry: the code loaded now
        self.device = resolve_device(cfg.device, expect_gpu=bool(cfg.recipe_batch))
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = local_device("cuda")
        self.run_dir = cfg.run_dir
        self.is_main = self.dist.is_main
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        # a thread-safe prepare_batch (no global RNG draws) may run a batch ahead: see `prefetches`
        self.prefetch = hooks.prefetch_prepare and hooks.prepare_batch is not None
        self._prefetcher: Any = None
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        # CPU thread policy (mae.engine.threads): --threads, else OMP_NUM_THREADS, else all cores; recorded as
        # "runtime" in this process's first log.txt record and in metrics.json
        from mae.engine.threads import apply_thread_policy, make_governor
        self.runtime = apply_thread_policy(getattr(cfg, "threads", None), announce=self.is_main)
        self.thread_governor = make_governor(  # the adaptive count: observe() per iteration, changes to log.txt
            self.runtime, serve=self.device.type == "cpu" and not self.dist.enabled, announce=self.is_main,
            log=lambda e: self.logger.log_epoch({"epoch": self.epoch, "iteration": self.total_iters, **e}))
        self._runtime_logged = False
        if self.is_main:
            print(f"[train] device: {describe_device(self.device, self.amp_dtype)}; {self.dist.world_size} "
                  f"process(es) ({self.dist.launcher})", flush=True)
        #: a random stream every rank shares (seeded with the recipe's seed, saved in checkpoints): randomness of
        #: the global batch that each rank draws whole and slices (pre-training's masks, :meth:`rows_of_global`)
        self.shared_generator = torch.Generator(self.device)
        self.shared_generator.manual_seed(cfg.seed)

        self.model_without_ddp = model.to(self.device)
        # [fast path hook, mae.engine.speed] compiled in place before DDP (state_dict unchanged); on CPU a
        # no-op unless fast_path="on", so CPU runs stay bitwise what they were
        self.fast_path = speed.resolve_fast_path(cfg.fast_path, self.device, cfg.compile_mode)
        speed.apply_fast_path(self.model_without_ddp, self.fast_path, self.device, distributed=self.dist.enabled)
        self.model: nn.Module = self.model_without_ddp
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.model_without_ddp, device_ids=ids)
        self._build_loader(train_set)
        self._build_optimizer(param_groups)
        self.checkpointer = Checkpointer(cfg, self.model_without_ddp, self.optimizer, self.scaler, is_main=self.is_main,
                                         world_size=self.dist.world_size, best_metric=best_metric, best_mode=best_mode,
                                         rank=self.dist.rank, streams={"shared": self.shared_generator})
        self.preemption = PreemptionGuard(self.dist, self.device, cfg.log_every)

        self.epoch, self.iter_in_epoch, self.global_step, self.total_iters = 0, 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.logger = RunLogger(self.run_dir, self.is_main, cfg.tensorboard, columns=hooks.log_columns)
        # GPU: check the loss for NaN/Inf on the device and sync only at logging points (LossMonitor); several
        # processes: check there too, all ranks at once, so that a NaN on one rank stops every rank together
        self.defer_loss_check = self.device.type == "cuda" or self.dist.enabled
        self._monitor: LossMonitor | None = None  # the running epoch's (a mid-epoch checkpoint saves its sum)

    def rows_of_global(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a tensor drawn for the iteration's whole global batch (``batch_size x world_size``
        rows, in the order of the data): the sampler deals global position ``p`` to rank ``p % world_size``, so
        rank r's row j is global row ``j * world_size + r``. With one process: the tensor itself."""
        return tensor if not self.dist.enabled else tensor[self.dist.rank::self.dist.world_size]

    def _build_loader(self, train_set: Dataset) -> None:
        """The seeded, resumable data order of every rank (ResumableSampler, SeededDataset)."""
        cfg = self.cfg
        if len(train_set) < cfg.batch_size * self.dist.world_size:
            raise DataError(f"the training set has {len(train_set)} samples, fewer than one batch "
                             f"({cfg.batch_size} x {self.dist.world_size} processes)")
        self.dataset = SeededDataset(train_set, cfg.seed)
        self.sampler = ResumableSampler(len(train_set), num_replicas=self.dist.world_size, rank=self.dist.rank,
                                        shuffle=True, seed=cfg.seed, drop_last=True)
        self.loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=self.sampler,
                                 num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
                                 drop_last=True, collate_fn=self.hooks.collate, generator=torch.Generator(),
                                 worker_init_fn=ignore_stop_signals)
        self.iters_per_epoch = len(self.sampler) // cfg.batch_size
        if self.iters_per_epoch < cfg.accum_iter:
            raise ValueError(f"{self.iters_per_epoch} iterations per epoch is fewer than accum_iter={cfg.accum_iter}")

    def _build_optimizer(self, param_groups: list[dict] | None) -> None:
        """The lr scaling rule (lr = blr * effective batch / 256), the optimizer and the AMP grad scaler."""
        cfg = self.cfg
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
                              RecipeBatchWarning, stacklevel=3)  # the protocol that built the Trainer
        groups = param_groups if param_groups is not None else param_groups_weight_decay(self.model_without_ddp, cfg.weight_decay)
        fused = speed.adamw_fused_arg(self.fast_path)  # [fast path hook] None = fused on GPU, False = off
        make_opt = self.hooks.make_optimizer or (lambda g, lr: adamw(g, lr, cfg.betas, fused=fused))
        self.optimizer = make_opt(groups, self.base_lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    # ----------------------------------------------------------- checkpoints
    @property
    def best(self) -> dict[str, Any]:
        return self.checkpointer.best

    def counters(self) -> dict[str, int]:
        """The loop's position, as checkpoints store it."""
        return {"epoch": self.epoch, "iter": self.iter_in_epoch, "global_step": self.global_step,
                "total_iters": self.total_iters}

    def save(self, numbered: bool = False) -> None:
        monitor = self._monitor if self.iter_in_epoch else None  # mid-epoch: the epoch's running loss goes along
        rank_state = {} if monitor is None else {"loss_sum": monitor.total_value(), "loss_n": monitor.n}
        self.checkpointer.save(self.counters(), numbered, rank_state)

    def _resumed_loss(self) -> tuple[float, float]:
        """(sum, count) of this rank's losses in the resumed epoch before the checkpoint: its own at the same
        process count (bitwise), else the ranks' mean (each iteration's global-batch loss, the same sum)."""
        states = [st for st in self.checkpointer.resumed_rank_states if "loss_n" in st]
        if not states or not self.iter_in_epoch:
            return 0.0, 0
        saved_batch = self.checkpointer.resumed_batch_per_iter
        if len(states) == self.dist.world_size and saved_batch == self.checkpointer.batch_per_iter:
            return float(states[self.dist.rank]["loss_sum"]), int(states[self.dist.rank]["loss_n"])
        # another layout: its iterations took saved_batch samples, ours take batch_per_iter; weigh by samples
        scale = saved_batch / self.checkpointer.batch_per_iter
        mean_sum = sum(float(st["loss_sum"]) for st in states) / len(states)
        return mean_sum * scale, float(states[0]["loss_n"]) * scale

    def resume(self, path: Any) -> None:
        position = self.checkpointer.resume(path)
        if position["epoch"] > self.cfg.epochs:  # before anything in the folder is touched
            raise rundir.RunDirError(f"{path} has trained {position['epoch']} epochs, more than this run's "
                                     f"{self.cfg.epochs}: a resume cannot shorten a run; give another --output_dir")
        self.epoch, self.iter_in_epoch = position["epoch"], position["iter"]
        self.global_step, self.total_iters = position["global_step"], position["total_iters"]
        if self.epoch >= self.cfg.epochs and (self.run_dir / "metrics.json").is_file():
            return  # a finished run: nothing to continue, and nothing in its folder is rewritten
        self.logger.truncate_after(self.total_iters)  # (the log's rows are numbered as the checkpoint's run did)
        if self.checkpointer.resumed_batch_per_iter != self.checkpointer.batch_per_iter:
            # another layout: iterations counted as this run counts them, as if it had run so from the start
            # (--max_iters and later truncations mean the same sample as in a run started at this layout)
            self.total_iters = self.epoch * self.iters_per_epoch + self.iter_in_epoch
        self._restore_history()
        if self.is_main:
            print(f"[resume] {path}: epoch {self.epoch}, iteration {self.iter_in_epoch}, step {self.global_step}")

    def _restore_history(self) -> None:
        """The epochs before the resumed position, from log.txt (each epoch's last record): a resumed run's
        metrics.json keeps its whole history, and log.txt loses records of epochs past the checkpoint."""
        path = self.logger.epoch_path
        if not path.is_file():
            return
        kept: dict[int, dict[str, Any]] = {}
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("epoch"), int) and record["epoch"] < self.epoch:
                kept[record["epoch"]] = record
        self.history = [{k: v for k, v in kept[e].items() if k != "runtime"} for e in sorted(kept)]
        if self.is_main:
            atomic_write_text(path, "".join(json.dumps(kept[e]) + "\n" for e in sorted(kept)))

    # ------------------------------------------------------------------ loop
    def train_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """One forward of the protocol's step (under autocast): (loss, metrics)."""
        return self.hooks.step(model, batch)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _prepare(self, batch: Any) -> Any:
        batch = move_to(batch, self.device)
        return batch if self.hooks.prepare_batch is None else self.hooks.prepare_batch(batch)

    @property
    def prefetches(self) -> bool:
        """Whether batches are prepared a batch ahead in a thread: on CUDA, for a thread-safe prepare_batch,
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
        if resume_path is not None:
            self.resume(resume_path)
            done = self.run_dir / "metrics.json"
            if self.epoch >= cfg.epochs and done.is_file():  # finished: nothing to redo, its metrics stay
                self.logger.close()
                if self.is_main:
                    print(f"[resume] {self.run_dir} has finished its {cfg.epochs} epochs: nothing to do")
                return json.loads(done.read_text())
        # after a resume loaded (a failed one leaves the run's config.yaml as it was); a resume keeps the
        # file unless a recipe field changed (mae.engine.rundir)
        if self.is_main:
            rundir.write_config(cfg, self.run_dir, resuming=resume_path is not None,
                                position=f"epoch {self.epoch}, iteration {self.iter_in_epoch}")
        if resume_path is None:
            seed_everything(cfg.seed + self.dist.rank)  # (the shared stream was seeded with the Trainer)
            if self.is_main:  # a fresh start: rows of an earlier attempt that left no checkpoint never mix in
                self.logger.iter_path.unlink(missing_ok=True)
                self.logger.epoch_path.unlink(missing_ok=True)
                (self.run_dir / rundir.RECIPE_CHANGES).unlink(missing_ok=True)
        try:
            with self.preemption:  # a stop signal only sets a flag; the loop acts on it at a step boundary
                while self.epoch < cfg.epochs:
                    self._train_epoch()
                    self._end_epoch()  # writes checkpoint-last.pth
                    if self.epoch < cfg.epochs and self.preemption.requested(self.global_step):
                        raise _Stop  # a signal during the evaluation: the epoch's checkpoint is the state
        except _Stop:
            pass
        finally:
            self.logger.close()
        if self.preemption.signum is not None and self.epoch < cfg.epochs:
            raise self.preemption.exit(self.checkpointer.last, f"epoch {self.epoch}, iteration {self.iter_in_epoch} "
                                       f"(step {self.global_step})", rundir.resume_command(cfg, cfg.max_iters))
        result = {"history": self.history, "final": self.history[-1] if self.history else {}, "best": self.best,
                  "finished": self.epoch >= cfg.epochs}
        if self.is_main and result["finished"]:
            result["runtime"] = self.runtime
            from mae.provenance import stage_provenance  # the run stamps its own numbers (never the collector)
            changes = rundir.recipe_changes(self.run_dir)  # trained partly under another recipe: say so
            commits = rundir.run_commits(self.run_dir)  # trained partly under other code: every commit
            result["provenance"] = stage_provenance(seed=cfg.seed, wall_s=time.time() - t_fit,
                                                    resumed=resume_path is not None,
                                                    **({"recipe_changes": changes} if changes else {}),
                                                    **({"commits": commits} if len(commits) > 1 else {}))
            atomic_write_text(self.run_dir / "metrics.json", json.dumps(result, indent=1, default=float))
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
        monitor = LossMonitor(self.device, self.defer_loss_check, self._non_finite,
                              agree=(lambda bad: all_reduce_max(bad, self.device)) if self.dist.enabled else None)
        if start:  # resumed mid-epoch: the epoch's loss so far, so that its mean is the whole epoch's
            monitor.restore(*self._resumed_loss())
        self._monitor, n_before = monitor, monitor.n
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
                        loss, metrics = self.train_step(model, batch)
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
            self.thread_governor.observe()  # CPU thread policy (mae.engine.threads): may change the count
            current_lr = max(g["lr"] for g in opt.param_groups)
            if self.total_iters % cfg.log_every == 0 or self.iter_in_epoch == self.iters_per_epoch:
                loss_value = monitor.last()  # (deferred: the one host sync of the interval)
                if self.dist.enabled:  # the global batch's loss (each rank's is half of it, or less)
                    loss_value = all_reduce_mean(loss_value, self.device)
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
                    self.iter_in_epoch < self.iters_per_epoch and self.preemption.requested(self.global_step))
                if stop or (cfg.ckpt_every_iters and self.global_step % cfg.ckpt_every_iters == 0
                            and self.iter_in_epoch < self.iters_per_epoch):
                    monitor.check()  # a NaN never reaches a checkpoint
                    self.save()
                if stop:
                    if bar is not None:
                        bar.close()
                    signum = self.preemption.signum
                    why = f"signal {signum}" if signum else f"max_iters={cfg.max_iters}"
                    if self.is_main and signum is None:  # (a signal: fit says it, then exits)
                        print(f"[train] stopped after iteration {self.total_iters} ({why}); "
                              f"continue with: {rundir.resume_command(cfg)}")
                    raise _Stop
        if bar is not None:
            bar.close()
        self._epoch_stats = {"train_loss": all_reduce_mean(monitor.mean(), self.device),
                             "train_lr": max(g["lr"] for g in opt.param_groups),
                             "epoch_time_s": time.time() - t0,
                             "imgs_per_s": (monitor.n - n_before) * cfg.batch_size * self.dist.world_size / max(time.time() - t0, 1e-9)}
        skipped = getattr(getattr(self.dataset, "base", None), "num_skipped", 0)
        if skipped:
            self._epoch_stats["skipped_images"] = int(skipped)

    def _non_finite(self, value: float, total_iteration: int, rank: int | None = None) -> None:
        last = self.checkpointer.last
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        if rank is not None and rank != self.dist.rank:  # every rank stops at the same check (LossMonitor agree)
            raise NonFiniteLossError(f"process {rank}'s loss is not finite (epoch {self.epoch}, by iteration "
                                     f"{self.total_iters}); every process stopped and {kept}")
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
        if self.hooks.evaluate is not None and (last or self.epoch % cfg.eval_every == 0):
            if self.dist.enabled:  # every rank evaluates the saved model: rank 0's BatchNorm statistics, not its own
                for buffer in self.model_without_ddp.buffers():
                    torch.distributed.broadcast(buffer, 0)
            self.model_without_ddp.eval()
            with torch.no_grad(), self._autocast():
                record.update(self.hooks.evaluate(self, epoch))
            self.checkpointer.update_best(record)
        self.logger.amend_last({k: record[k] for k in self.logger.columns if k in record})
        if self.hooks.end_epoch is not None:
            self.hooks.end_epoch(self, epoch)
        self.history.append(record)
        self.logger.log_epoch(record if self._runtime_logged else {**record, "runtime": self.runtime})
        self._runtime_logged = True
        self.save(numbered=last or self.epoch % cfg.save_every == 0)


def world_info() -> dict[str, Any]:
    """Process info for logs (rank / world size from the environment)."""
    return {"rank": int(os.environ.get("RANK", 0)), "world_size": int(os.environ.get("WORLD_SIZE", 1))}
