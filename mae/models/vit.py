"""The ViT classifier used after pre-training (MAE Sec. 4 and Appendix A: fine-tuning, linear probing,
partial fine-tuning).

It *is* timm's ``VisionTransformer`` (a thin subclass), so a state_dict moves between this model and
``timm.create_model('vit_base_patch16_224', ...)`` unchanged. The key layout is the official
fine-tune layout:

* ``global_pool=True`` (fine-tuning default, Appendix A.1): average of the patch tokens, then
  ``fc_norm`` (LayerNorm) and ``head``; there is no ``norm.*`` (timm keeps it as an Identity).
* ``global_pool=False`` (linear probing default): the cls token after the final ``norm``.
* ``head_type='bn_linear'`` (linear probing, Appendix A.2): ``head = Sequential(BatchNorm1d(D,
  affine=False, eps=1e-6), Linear)``, keys ``head.0.running_*`` and ``head.1.*``.

Every MAE preset of :mod:`mae.models.mae` has a classifier preset of the same name without the
``mae_`` prefix (``mae_vit_base_patch16 -> vit_base_patch16``); see :func:`vit_for_mae`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from typing import Any, Callable

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block, VisionTransformer

from mae.models.mae import LN_EPS, PRESET_ALIASES, MAEConfig, mae_config
from mae.models.mae import PRESETS as MAE_PRESETS

HEAD_TYPES = ("linear", "bn_linear")


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of one classifier (encoder fields mirror :class:`MAEConfig`)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    global_pool: bool = True  # True: mean of patch tokens + fc_norm; False: cls token + norm
    drop_path: float = 0.0
    head_type: str = "linear"  # linear | bn_linear (linear probing)

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.head_type not in HEAD_TYPES:
            raise ValueError(f"unknown head_type {self.head_type!r}; choose one of {HEAD_TYPES}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")

    @property
    def grid_size(self) -> tuple[int, int]:
        g = self.img_size // self.patch_size
        return (g, g)


def _with_overrides(cfg: ViTConfig, overrides: dict[str, Any]) -> ViTConfig:
    valid = {f.name for f in fields(ViTConfig)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise ValueError(f"unknown ViT config field(s) {bad}; valid: {sorted(valid)}")
    return replace(cfg, **overrides)


_ENCODER_FIELDS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")


def vit_config_from_mae(mae_cfg: MAEConfig, **overrides: Any) -> ViTConfig:
    """The classifier that matches an MAE encoder (same patch size, width, depth, heads, resolution)."""
    return _with_overrides(ViTConfig(**{k: getattr(mae_cfg, k) for k in _ENCODER_FIELDS}), overrides)


def vit_for_mae(name: str) -> str:
    """Classifier preset name of an MAE preset: ``mae_vit_base_patch16[_dec512d8b] -> vit_base_patch16``."""
    canonical = PRESET_ALIASES.get(name, name)
    if canonical not in MAE_PRESETS:
        raise ValueError(f"unknown MAE preset {name!r}; available: {sorted(MAE_PRESETS)}")
    return canonical[len("mae_"):]


# One classifier preset per MAE preset, derived so that the two lists can never drift apart.
PRESETS: dict[str, ViTConfig] = {vit_for_mae(n): vit_config_from_mae(mae_config(n)) for n in MAE_PRESETS}

# timm model names of the paper's three encoders (architecture only; nothing is downloaded).
TIMM_NAMES = {
    "vit_base_patch16": "vit_base_patch16_224",
    "vit_large_patch16": "vit_large_patch16_224",
    "vit_huge_patch14": "vit_huge_patch14_224",
}


def vit_config(name: str, **overrides: Any) -> ViTConfig:
    """Config of a classifier preset (an MAE preset name is accepted too) with field overrides."""
    if name.startswith("mae_"):
        name = vit_for_mae(name)
    if name not in PRESETS:
        raise ValueError(f"unknown ViT preset {name!r}; available: {sorted(PRESETS)}")
    return _with_overrides(PRESETS[name], overrides)


def timm_kwargs(cfg: ViTConfig) -> dict[str, Any]:
    """Keyword arguments that build the same network with timm's ``VisionTransformer``/``create_model``."""
    return dict(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, embed_dim=cfg.embed_dim,
                depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True,
                num_classes=cfg.num_classes, global_pool="avg" if cfg.global_pool else "token",
                fc_norm=cfg.global_pool, class_token=True, drop_path_rate=cfg.drop_path,
                norm_layer=partial(nn.LayerNorm, eps=LN_EPS))


class ViTClassifier(VisionTransformer):
    """timm's ViT with the official MAE fine-tune layout; ``forward(imgs) -> logits (N, num_classes)``.

    Frozen parts (``requires_grad=False`` on all their parameters, see :meth:`freeze_except`) stay in
    eval mode when the model is put in train mode, so dropout / drop path / BatchNorm do not act on
    a frozen feature extractor (linear probing, partial fine-tuning).
    """

    def __init__(self, config: ViTConfig | None = None, **kwargs: Any):
        cfg = _with_overrides(config or ViTConfig(), kwargs) if kwargs else (config or ViTConfig())
        super().__init__(**timm_kwargs(cfg))
        self.config = cfg
        if cfg.head_type == "bn_linear" and cfg.num_classes > 0:
            self.head = nn.Sequential(nn.BatchNorm1d(cfg.embed_dim, affine=False, eps=1e-6), self.head)

    @property
    def linear(self) -> nn.Linear | nn.Identity:
        """The final Linear layer of the head (inside the BatchNorm head for linear probing)."""
        return self.head[-1] if isinstance(self.head, nn.Sequential) else self.head

    def features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Pooled, normalised features that enter the head: (N, D)."""
        return self.forward_head(self.forward_features(imgs), pre_logits=True)

    def freeze_except(self, trainable: Callable[[str], bool]) -> list[str]:
        """Set ``requires_grad`` from a predicate on parameter names; returns the trainable names."""
        names = []
        for name, p in self.named_parameters():
            p.requires_grad_(bool(trainable(name)))
            if p.requires_grad:
                names.append(name)
        if not names:
            raise ValueError("freeze_except left no trainable parameter")
        return names

    def train(self, mode: bool = True) -> "ViTClassifier":
        super().train(mode)
        if mode:
            for m in self.modules():
                params = list(m.parameters())
                if params and not any(p.requires_grad for p in params):
                    m.eval()
            for blk in self.blocks:  # residual branches of a frozen sub-block: no drop path
                if isinstance(blk, Block):
                    if not any(p.requires_grad for p in blk.attn.parameters()):
                        blk.drop_path1.eval()
                    if not any(p.requires_grad for p in blk.mlp.parameters()):
                        blk.drop_path2.eval()
        return self


def init_head(model: ViTClassifier, std: float) -> None:
    """Re-initialise the head's Linear: trunc-normal weights (official: std 2e-5 fine-tune, 0.01 linear probe), zero bias."""
    lin = model.linear
    if not isinstance(lin, nn.Linear):
        raise ValueError("the model has no classification head (num_classes=0)")
    trunc_normal_(lin.weight, std=std)
    nn.init.zeros_(lin.bias)


def create_vit(name: str = "vit_base_patch16", **overrides: Any) -> ViTClassifier:
    """Build a classifier preset (``vit_*`` or the ``mae_vit_*`` name of its encoder) with overrides."""
    return ViTClassifier(vit_config(name, **overrides))


def config_dict(model: ViTClassifier) -> dict[str, Any]:
    return asdict(model.config)
