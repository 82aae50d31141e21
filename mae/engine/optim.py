"""Optimiser pieces shared by every protocol (MAE Appendix A.1-A.3): weight-decay parameter groups, the
lr scaling rule, and the per-iteration warm-up + cosine schedule.

Weight-decay groups: the official release's pre-training uses timm's ``add_weight_decay`` with no skip
list (only 1-d parameters and biases are exempt; cls_token and mask_token are decayed):
``param_groups_weight_decay(model, wd, skip_model_tokens=False)``. The default also exempts the model's
``no_weight_decay()`` tokens (the small presets' rule)."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn


def scaled_lr(blr: float, effective_batch: int) -> float:
    """Linear scaling rule of the paper: lr = base_lr * effective_batch / 256."""
    return blr * effective_batch / 256


def param_groups_weight_decay(model: nn.Module, weight_decay: float, skip: Iterable[str] = (),
                              skip_model_tokens: bool = True) -> list[dict]:
    """Two groups, in timm's order: 1-d params / biases / ``skip`` names without weight decay, then the rest.

    ``skip_model_tokens`` adds the model's ``no_weight_decay()`` names (cls/mask tokens) to ``skip``;
    ``False`` with an empty ``skip`` is timm's ``add_weight_decay`` as the official pre-training calls it.
    Frozen parameters (``requires_grad=False``) are left out.
    """
    skip = set(skip)
    if skip_model_tokens and hasattr(model, "no_weight_decay"):
        skip |= set(model.no_weight_decay())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lr_at(epoch_float: float, base_lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """Learning rate at a fractional epoch: linear warm-up, then half-cycle cosine to ``min_lr``."""
    if epoch_float < warmup_epochs:
        return base_lr * epoch_float / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    progress = min(max((epoch_float - warmup_epochs) / span, 0.0), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Apply a schedule value to every group, times the group's ``lr_scale`` (layer decay)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def adamw(param_groups: list[dict], lr: float, betas: tuple[float, float], fused: bool | None = None) -> torch.optim.Optimizer:
    """AdamW; the fused CUDA kernel where every parameter is on a GPU."""
    if fused is None:
        fused = all(p.is_cuda for g in param_groups for p in g["params"]) and any(g["params"] for g in param_groups)
    return torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas), fused=bool(fused))
