"""A training run's checkpoints: what the loop saves, how it resumes, and the best one.

- ``checkpoint-last.pth``: the whole resume state (model, optimizer, scaler, epoch, iteration, step,
  best metric, every RNG, the run's config and the model's own), written atomically at every epoch end,
  every ``ckpt_every_iters`` steps and before a pre-emption exit; :meth:`Checkpointer.resume` reads it
  back so that the run continues bitwise as if never stopped (on CPU).
- ``checkpoint-<epoch>.pth``: every ``save_every`` epochs and after the last; the newest ``keep_last``
  are kept.
- ``checkpoint-best.pth``: the weights at the best value of ``best_metric`` among the evaluations.

Only rank 0 writes; every rank waits for it (a barrier). The file layout is :mod:`mae.engine.checkpoint`'s.

Scale-out: the position is also stored as samples of the epoch (``samples_in_epoch``, the ranks' iterations
times the global batch per iteration), so a run resumes on any process count; every rank's RNG states are
stored (``rng_ranks``, gathered from all ranks; ``rng`` is rank 0's, as before), so per-rank randomness
(dropout, drop path, mixup) continues bitwise at the same process count; ``streams`` holds generators every
rank shares (pre-training's mask noise: :attr:`mae.engine.loop.Trainer.shared_generator`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mae.config import TrainConfig, to_dict
from mae.engine import checkpoint as ckpt
from mae.engine.distributed import all_gather_object, barrier

#: the loop's position, as a checkpoint stores it
COUNTERS = ("epoch", "iter", "global_step", "total_iters")


class Checkpointer:
    """Save / resume / best for one run of ``model`` (unwrapped) with ``optimizer`` and ``scaler``."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, *, is_main: bool, world_size: int, best_metric: str | None = None,
                 best_mode: str = "max", rank: int = 0, streams: dict[str, torch.Generator] | None = None):
        self.cfg, self.run_dir = cfg, cfg.run_dir
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.is_main, self.world_size, self.rank = is_main, world_size, rank
        self.streams = dict(streams or {})
        self.resumed_batch_per_iter = self.batch_per_iter  # (set by resume from the checkpoint read)
        self.best_metric, self.best_mode = best_metric, best_mode
        self.best: dict[str, Any] = {}

    @property
    def last(self) -> Path:
        return self.run_dir / ckpt.LAST

    @property
    def batch_per_iter(self) -> int:
        """Samples one iteration takes from the epoch, over all ranks."""
        return self.cfg.batch_size * self.world_size

    def state_dict(self, counters: dict[str, int], rng_ranks: list[Any] | None = None,
                   rank_states: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The resume state at the loop's position ``counters`` (:data:`COUNTERS`); ``rng_ranks``: every rank's
        RNG states (this process's alone by default); ``rank_states``: the loop's per-rank values (its epoch's
        running loss), in rank order."""
        rng_ranks = rng_ranks if rng_ranks is not None else [ckpt.rng_state()]
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            **{k: int(counters[k]) for k in COUNTERS},
            "samples_in_epoch": int(counters["iter"]) * self.batch_per_iter,
            "batch_per_iter": self.batch_per_iter, "accum_iter": self.cfg.accum_iter,
            "best": self.best, "rng": rng_ranks[0], "rng_ranks": rng_ranks, "rank_states": rank_states or [],
            "streams": {name: g.get_state() for name, g in self.streams.items()},
            "config": to_dict(self.cfg), "config_class": type(self.cfg).__name__,
            **ckpt.model_config_record(self.model),
            "world_size": self.world_size,
        }

    def save(self, counters: dict[str, int], numbered: bool = False, rank_state: dict[str, Any] | None = None) -> None:
        """checkpoint-last.pth (atomic) and, if asked, checkpoint-<epoch>.pth, then prune old ones. Every rank
        calls it (its RNG states and ``rank_state`` are gathered); rank 0 writes."""
        gathered = all_gather_object((ckpt.rng_state(), rank_state or {}))
        if self.is_main:
            state = self.state_dict(counters, [g[0] for g in gathered], [g[1] for g in gathered])
            ckpt.save_checkpoint(state, self.last)
            if numbered:
                ckpt.save_checkpoint(state, self.run_dir / f"checkpoint-{counters['epoch'] - 1}.pth")
                ckpt.prune_checkpoints(self.run_dir, self.cfg.keep_last, upto=counters["epoch"] - 1)
        barrier()

    def resume(self, path: str | Path) -> dict[str, int]:
        """Load the state of ``path`` (model, optimizer, scaler, best, RNGs); returns the loop's position there."""
        state = ckpt.load_checkpoint(path)
        missing = [k for k in ("model", "optimizer", "epoch", "iter", "rng") if k not in state]
        if missing:
            raise ckpt.CheckpointError(f"{path} is not a resumable training checkpoint (missing {missing}); "
                                       "to start from its weights use the protocol's init/finetune option")
        ckpt.load_state_dict_checked(self.model, state["model"], strict=True, source=str(path))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:  # another protocol's or recipe's optimizer (e.g. partial vs finetune)
            raise ckpt.CheckpointError(f"{path}: its optimizer state does not fit this run's ({e}); it was "
                                       "written by another protocol or recipe: give another --output_dir") from None
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.best = state.get("best", {})
        saved_world = int(state.get("world_size", 1))
        #: every rank's loop values at the checkpoint (in rank order; [] for older files)
        self.resumed_rank_states: list[dict[str, Any]] = list(state.get("rank_states") or [])
        rng_ranks = state.get("rng_ranks") or [state["rng"]]
        if saved_world == self.world_size and len(rng_ranks) == self.world_size:
            ckpt.set_rng_state(rng_ranks[self.rank])
        else:  # per-rank streams cannot continue on another process count: a fresh stream per (seed, rank, step)
            from mae.data.sampler import sample_seed
            ckpt.seed_everything(sample_seed(self.cfg.seed, self.rank + 1, int(state["global_step"])))
        for name, g in self.streams.items():
            if name in state.get("streams", {}):
                g.set_state(state["streams"][name].to(g.get_state().device))
        position = {k: int(state[k]) for k in COUNTERS}
        position["iter"] = self._iteration_here(state, path)
        saved_batch = self.saved_batch_per_iter(state)
        #: samples one iteration of the checkpoint's run took (its running loss is counted in those iterations)
        self.resumed_batch_per_iter = saved_batch
        whole = position["iter"] * self.batch_per_iter == self._samples(state)
        if (saved_world != self.world_size or saved_batch != self.batch_per_iter) and self.is_main:
            masks = ("pre-training's masks continue as in the uninterrupted run" if whole and (
                saved_batch == self.batch_per_iter or self.model_device_type() == "cpu") else
                "pre-training's masks continue from the stream's saved position, so they differ from the "
                "uninterrupted run's (a changed position or, on a GPU, a changed batch per iteration)")
            print(f"[resume] {path} was written by {saved_world} process(es) x {saved_batch // max(saved_world, 1)}, "
                  f"now {self.world_size} x {self.cfg.batch_size}: resuming at sample "
                  f"{position['iter'] * self.batch_per_iter} of the epoch; the data order continues, {masks}; "
                  "per-rank streams (dropout, drop path, mixup) restart from (seed, rank, step)", flush=True)
        saved_eff = saved_batch * int(state.get("accum_iter", self.cfg.accum_iter))
        if saved_eff != self.batch_per_iter * self.cfg.accum_iter and self.is_main:
            step = self.batch_per_iter
            hint = (f"--accum_iter {saved_eff // step} keeps it" if saved_eff % step == 0
                    else "--batch_size / --accum_iter keep it")
            print(f"[resume] note: effective batch {step * self.cfg.accum_iter} now, {saved_eff} at the checkpoint: "
                  f"the lr follows the new one from here (lr = blr x batch / 256); {hint}", flush=True)
        return position

    def model_device_type(self) -> str:
        return next(self.model.parameters(), torch.empty(0)).device.type

    def saved_batch_per_iter(self, state: dict[str, Any]) -> int:
        """Samples one iteration of the checkpoint's run took, over all its ranks."""
        if "batch_per_iter" in state:
            return int(state["batch_per_iter"])
        return int(state.get("config", {}).get("batch_size", self.cfg.batch_size)) * int(state.get("world_size", 1))

    def _samples(self, state: dict[str, Any]) -> int:
        """The checkpoint's position: samples of its epoch consumed."""
        if "samples_in_epoch" in state:
            return int(state["samples_in_epoch"])
        return int(state["iter"]) * self.saved_batch_per_iter(state)

    def _iteration_here(self, state: dict[str, Any], path: str | Path) -> int:
        """The checkpoint's position in the epoch as an iteration of this run (its global batch may differ)."""
        samples = self._samples(state)  # (older files: per-rank iterations x their batch x their process count)
        step = self.batch_per_iter * self.cfg.accum_iter  # samples of one optimizer step here
        it = (samples // step) * self.cfg.accum_iter
        if it * self.batch_per_iter != samples and self.is_main:
            print(f"[resume] note: {path} stopped at sample {samples} of the epoch, which is not a whole optimizer "
                  f"step of this run ({self.batch_per_iter} x accum {self.cfg.accum_iter}); resuming at sample "
                  f"{it * self.batch_per_iter}: {samples - it * self.batch_per_iter} sample(s) are seen twice",
                  flush=True)
        return it

    def update_best(self, record: dict[str, Any]) -> None:
        """Keep ``checkpoint-best.pth`` at the best ``best_metric`` of the evaluations so far."""
        key = self.best_metric
        if key is None or key not in record:
            return
        better = (lambda a, b: a > b) if self.best_mode == "max" else (lambda a, b: a < b)
        if not self.best or better(record[key], self.best[key]):
            self.best = {key: record[key], "epoch": record["epoch"]}
            if self.is_main:
                ckpt.save_checkpoint({"model": self.model.state_dict(), "epoch": record["epoch"], "metric": self.best,
                                      "config": to_dict(self.cfg), **ckpt.model_config_record(self.model)},
                                     self.run_dir / ckpt.BEST)
