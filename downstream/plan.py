"""One rule for the batch and schedule of a downstream recipe on any number of GPUs (paper Tables 4 and 5).

The recipes fix an effective batch and a length in epochs: COCO Mask R-CNN 64 images per step for
100 epochs (ViT-B / L) or 75 (ViT-H) (Appendix A.3, ViTDet's schedule); ADE20K UperNet 16 images
per step for 100 epochs (Appendix A.4). On W GPUs with per-GPU batch b and gradient accumulation k
one optimizer step sees W * b * k images. :func:`plan_batch` picks b and k so that W * b * k is the
recipe's batch exactly, or raises :class:`BatchPlanError`; the learning rate and the number of
optimizer steps therefore never depend on W. ``coco_det.py`` and ``ade20k_seg.py`` both use it.

mmengine counts loop iterations per micro-batch: with k > 1 the loop runs k * steps iterations,
``optim_wrapper.accumulative_counts = k`` makes one optimizer step of every k, and every
iteration-based number of the config (scheduler begin / end / milestones, validation and checkpoint
intervals) is multiplied by k (:func:`apply_accumulation`), so schedules stay in optimizer steps.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping


class BatchPlanError(ValueError):
    """A world size / per-GPU batch that cannot keep the recipe's effective batch."""


@dataclass(frozen=True)
class BatchPlan:
    """How the effective batch is split: ``world_size * per_gpu_batch * accumulation`` images per step."""

    world_size: int
    per_gpu_batch: int
    accumulation: int

    @property
    def effective_batch(self) -> int:
        return self.world_size * self.per_gpu_batch * self.accumulation


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def per_gpu_choices(effective_batch: int, world_size: int) -> list[int]:
    """Per-GPU batches that keep ``effective_batch`` on ``world_size`` GPUs, largest first (raises if none)."""
    if effective_batch < 1 or world_size < 1:
        raise BatchPlanError(f"effective batch ({effective_batch}) and world size ({world_size}) must be >= 1")
    if world_size > effective_batch:
        raise BatchPlanError(
            f"{world_size} GPUs cannot keep the recipe's effective batch of {effective_batch}: every GPU needs at "
            f"least one image per step; run on at most {effective_batch} GPUs (a divisor of {effective_batch})")
    if effective_batch % world_size:
        fits = ", ".join(str(d) for d in _divisors(effective_batch))
        raise BatchPlanError(
            f"an effective batch of {effective_batch} cannot be split evenly over {world_size} GPUs "
            f"({effective_batch} / {world_size} is not an integer); use a world size in {{{fits}}}")
    return _divisors(effective_batch // world_size)[::-1]


def plan_batch(effective_batch: int, world_size: int, max_per_gpu: int | None = None) -> BatchPlan:
    """The rule: the largest per-GPU batch <= ``max_per_gpu`` dividing ``effective_batch / world_size``;
    the rest of the batch by gradient accumulation. Raises :class:`BatchPlanError` if it cannot hold."""
    choices = per_gpu_choices(effective_batch, world_size)
    if max_per_gpu is not None and max_per_gpu < 1:
        raise BatchPlanError(f"the per-GPU batch must be >= 1, got {max_per_gpu}")
    b = next(d for d in choices if max_per_gpu is None or d <= max_per_gpu)
    return BatchPlan(world_size, b, effective_batch // (world_size * b))


def world_size(given: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The world size: torchrun's ``WORLD_SIZE`` (1 without it), or ``given`` (planning another one).

    Under a launcher ``given`` must agree with ``WORLD_SIZE``: a plan for 16 GPUs must not run on 8.
    """
    env = os.environ if environ is None else environ
    launched = int(env["WORLD_SIZE"]) if env.get("WORLD_SIZE") else None
    if given is not None:
        if given < 1:
            raise BatchPlanError(f"--world-size must be >= 1, got {given}")
        if launched is not None and launched != given:
            raise BatchPlanError(f"--world-size {given} but the launcher started {launched} processes (WORLD_SIZE)")
        return given
    return launched or 1


def steps_for(schedule: Mapping[str, Any], size: str, epoch_images: int, effective_batch: int) -> tuple[int, float]:
    """(optimizer steps, epochs) of a named schedule: ``dict(iters=N)`` or ``dict(epochs=E)`` where E is a
    number or a per-ViT-size dict. Epochs count ``epoch_images`` images; steps are floored (as ViTDet)."""
    if "iters" in schedule:
        steps = int(schedule["iters"])
        return steps, steps * effective_batch / epoch_images
    epochs = schedule["epochs"]
    if isinstance(epochs, Mapping):
        if size not in epochs:
            raise BatchPlanError(f"the schedule gives epochs for {sorted(epochs)}, not for the ViT size {size!r}")
        epochs = epochs[size]
    return int(epochs * epoch_images // effective_batch), float(epochs)


def apply_accumulation(cfg: Any, accumulation: int) -> None:
    """Make an mmengine config of ``max_iters`` optimizer steps accumulate ``accumulation`` micro-batches."""
    k = int(accumulation)
    if k < 1:
        raise BatchPlanError(f"accumulation must be >= 1, got {k}")
    cfg.optim_wrapper.accumulative_counts = k
    if k == 1:
        return
    cfg.train_cfg.max_iters *= k
    cfg.train_cfg.val_interval *= k
    for s in cfg.param_scheduler:
        for key in ("begin", "end"):
            if key in s and s[key] is not None:
                s[key] = int(s[key]) * k
        if "milestones" in s:
            s["milestones"] = [int(m) * k for m in s["milestones"]]
    hooks = cfg.default_hooks
    hooks.checkpoint.interval *= k
    hooks.logger.interval *= k
