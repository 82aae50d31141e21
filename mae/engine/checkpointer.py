"""A training run's checkpoints: what the loop saves, how it resumes, and the best one.

- ``checkpoint-last.pth``: the whole resume state (model, optimizer, scaler, epoch, iteration, step,
  best metric, every RNG, the run's config and the model's own), written atomically at every epoch end,
  every ``ckpt_every_iters`` steps and before a pre-emption exit; :meth:`Checkpointer.resume` reads it
  back so that the run continues bitwise as if never stopped (on CPU).
- ``checkpoint-<epoch>.pth``: every ``save_every`` epochs and after the last; the newest ``keep_last``
  are kept.
- ``checkpoint-best.pth``: the weights at the best value of ``best_metric`` among the evaluations.

Only rank 0 writes; every rank waits for it (a barrier). The file layout is :mod:`mae.engine.checkpoint`'s.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mae.config import TrainConfig, to_dict
from mae.engine import checkpoint as ckpt
from mae.engine.distributed import barrier

#: the loop's position, as a checkpoint stores it
COUNTERS = ("epoch", "iter", "global_step", "total_iters")


class Checkpointer:
    """Save / resume / best for one run of ``model`` (unwrapped) with ``optimizer`` and ``scaler``."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, *, is_main: bool, world_size: int, best_metric: str | None = None,
                 best_mode: str = "max"):
        self.cfg, self.run_dir = cfg, cfg.run_dir
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.is_main, self.world_size = is_main, world_size
        self.best_metric, self.best_mode = best_metric, best_mode
        self.best: dict[str, Any] = {}

    @property
    def last(self) -> Path:
        return self.run_dir / ckpt.LAST

    def state_dict(self, counters: dict[str, int]) -> dict[str, Any]:
        """The resume state at the loop's position ``counters`` (:data:`COUNTERS`)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            **{k: int(counters[k]) for k in COUNTERS},
            "best": self.best, "rng": ckpt.rng_state(),
            "config": to_dict(self.cfg), "config_class": type(self.cfg).__name__,
            **ckpt.model_config_record(self.model),
            "world_size": self.world_size,
        }

    def save(self, counters: dict[str, int], numbered: bool = False) -> None:
        """checkpoint-last.pth (atomic) and, if asked, checkpoint-<epoch>.pth, then prune old ones."""
        if self.is_main:
            state = self.state_dict(counters)
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
        if state.get("world_size", 1) != self.world_size:
            print(f"[resume] note: checkpoint was written with {state.get('world_size')} processes, now "
                  f"{self.world_size}; the data order after resume differs from an uninterrupted run")
        ckpt.load_state_dict_checked(self.model, state["model"], strict=True, source=str(path))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:  # another protocol's or recipe's optimizer (e.g. partial vs finetune)
            raise ckpt.CheckpointError(f"{path}: its optimizer state does not fit this run's ({e}); it was "
                                       "written by another protocol or recipe: give another --output_dir") from None
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.best = state.get("best", {})
        ckpt.set_rng_state(state["rng"])
        return {k: int(state[k]) for k in COUNTERS}

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
