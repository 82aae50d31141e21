"""Layer-wise learning-rate decay for fine-tuning a ViT (MAE Appendix A.1, following BEiT).

Official rule (facebookresearch/mae ``util/lr_decay.py``), stated with ``depth`` = number of blocks:

* layer id 0: ``cls_token``, ``pos_embed`` and ``patch_embed.*`` (the input layer);
* layer id ``i + 1``: every parameter of ``blocks.i``;
* layer id ``depth + 1``: everything else (``norm``/``fc_norm``, ``head``);
* lr scale of layer id ``j`` = ``layer_decay ** (depth + 1 - j)`` (the head trains at the full lr).

Weight decay is 0 for 1-d parameters (biases, norm weights) and for the names the model lists in
``no_weight_decay()`` (timm: ``cls_token``, ``pos_embed``, ...); frozen parameters are left out.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch.nn as nn


def layer_id_for_vit(name: str, depth: int) -> int:
    """Layer id of a ViT parameter name (see the module docstring)."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_scale(layer_id: int, depth: int, layer_decay: float) -> float:
    """lr multiplier ``layer_decay ** (depth + 1 - layer_id)``."""
    return layer_decay ** (depth + 1 - layer_id)


def param_groups_layer_decay(model: nn.Module, weight_decay: float = 0.05, layer_decay: float = 0.75,
                             no_weight_decay: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Optimizer param groups, one per (layer id, decay / no decay), each with ``lr_scale``.

    ``layer_decay=1`` gives the plain weight-decay split with every ``lr_scale`` 1. Groups carry
    ``params``, ``weight_decay``, ``lr_scale``, ``layer_id`` and ``names`` (for logs and tests).
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no 'blocks': layer decay needs a ViT")
    depth = len(blocks)
    if no_weight_decay is None:
        no_weight_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    skip = set(no_weight_decay)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim <= 1 or name in skip)
        lid = layer_id_for_vit(name, depth)
        g = groups.setdefault((lid, decay), {
            "params": [], "names": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": layer_scale(lid, depth, layer_decay), "layer_id": lid})
        g["params"].append(p)
        g["names"].append(name)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameter")
    return [groups[k] for k in sorted(groups)]
