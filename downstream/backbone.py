"""The MAE ViT encoder as a detection / segmentation backbone (paper Sec. 5 and Appendix A.3-A.4).

``MAEViT`` is registered in both mmdet's and mmseg's ``MODELS``. It is the pre-trained encoder with
the official parameter names (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.i.*``
made of timm ``Block``s, ``norm``), so an MAE checkpoint -- ours or the official release's
``{'model': state_dict}`` -- loads directly (decoder keys are dropped). On top of it:

* the absolute position table (learnable here, fixed sin-cos in pre-training) is resampled
  (bicubic, timm's ``resample_abs_pos_embed``) from the pre-training grid to the grid of every
  input, so 1024x1024 COCO or 512x512 ADE20K images work; a patch kernel of another size (ViT-H/14)
  is resampled at load time (timm's ``resample_patch_embed``);
* up/down-sampling turns stride-p maps of the ViT into maps at strides 4 / 8 / 16 / 32 (for p = 16:
  two stride-2 transposed convs with a norm + GELU between them / one / identity / 2x2 max-pool),
  level k from block ``out_indices[k]`` -- the paper's design (Appendix A.3: the last block of each
  of 4 equal subsets, then FPN) -- or one map alone (``out_strides=[16]``) for ViTDet's simple
  pyramid neck (``downstream.simple_pyramid``); the final ``norm`` applies to the last block's output;
* optional activation checkpointing per block (``act_checkpoint``);
* stochastic depth (``drop_path_rate``, linear in depth);
* optional window attention (non-overlapping ``window_size`` windows, zero-padded at the border,
  in every block not listed in ``global_attn_indexes``; ViTDet) and optional relative position
  biases (``use_rel_pos``: one learned bias per head and 2-D offset, zero-initialised, added to the
  attention logits as in T5/BEiT; prefix tokens get zero bias; the table is resized bicubically
  when the token grid differs from the one it was built for).

``MAELayerDecayOptimizerConstructor`` (registered for mmengine, hence visible to mmdet and mmseg)
gives ``backbone.blocks.i`` the lr scale ``rate ** (depth - i)`` and the embeddings
``rate ** (depth + 1)``; necks and heads keep the base lr. mmseg's own
``LayerDecayOptimizerConstructor`` keys on ``backbone.layers.i`` (its BEiT naming) and would leave
every block of this backbone undecayed, so it is not used.
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any, Sequence

from downstream import compat  # noqa: F401  (must run before the OpenMMLab imports below)

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from timm.layers import LayerNorm2d, resample_abs_pos_embed, resample_patch_embed
from timm.models.vision_transformer import Block

from mae.engine.checkpoint import CheckpointError
from mae.models.formats import CheckpointFormatError, read_checkpoint
from mae.models.inspect import HEAD_PREFIXES, MAE_ONLY_PREFIXES, CheckpointInfo, NotAViTError
from mae.models.mae import LN_EPS
from mae.models.pos_embed import get_2d_sincos_pos_embed


# ----------------------------------------------------------------------------- checkpoints
_REQUIRED = ("patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight")


def encoder_state_dict(path: str | Path, num_heads: int | None = None
                       ) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """The ViT encoder weights of an MAE / ViT checkpoint and what the file holds
    (:func:`mae.models.inspect.inspect_checkpoint`; ``num_heads`` as the caller knows it).

    Accepts every format of :mod:`mae.models.formats` (official release and our pre-training, timm,
    Hugging Face ViTMAE, mmpretrain; ``{'model'|'state_dict': sd}`` or bare; ``module.`` / ``backbone.``
    prefixes stripped); drops the decoder, mask token and any classification head. Raises
    :class:`~mae.models.inspect.NotAViTError` naming what was found otherwise.
    """
    try:  # any format (mae.models.formats); a detector / segmentor's backbone.* comes out unwrapped
        ckpt = read_checkpoint(path)
    except CheckpointFormatError as e:
        raise NotAViTError(f"checkpoint {e}") from e
    sd = ckpt.state_dict
    missing = [k for k in _REQUIRED if k not in sd]
    if missing:
        keys = sorted(sd)
        hint = ""
        if any(k.startswith(("conv1.", "layer1.", "bn1.")) for k in keys):
            hint = " (it looks like a ResNet)"
        elif any(k.startswith(("layers.", "stages.", "features.")) for k in keys):
            hint = " (it looks like a hierarchical / non-MAE model)"
        raise NotAViTError(
            f"checkpoint {path} is not a ViT/MAE encoder{hint}: it lacks {missing}; found {len(keys)} keys, e.g. "
            f"{keys[:8]}. Expected the official MAE layout (cls_token, pos_embed, patch_embed.proj.*, blocks.<i>.*)")
    info = ckpt.inspect(num_heads=num_heads)
    enc = {k: v for k, v in sd.items() if not k.startswith(MAE_ONLY_PREFIXES + HEAD_PREFIXES)}
    return enc, info


def backbone_info(path: str | Path, num_heads: int | None = None) -> CheckpointInfo:
    """What a checkpoint's encoder is (width, depth, patch, pre-training size, MLP ratio), its heads included:
    ``num_heads``, else what the file says, else the preset of the same shape (else an error naming --num-heads)."""
    _, info = encoder_state_dict(path, num_heads)
    heads, _ = info.heads(hint="pass --num-heads")
    if info.embed_dim % heads:
        raise CheckpointError(f"checkpoint {path}: width {info.embed_dim} is not divisible by {heads} heads")
    return info


# ----------------------------------------------------------------------------- modules
class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> (N, D, H/p, W/p); the input is zero-padded to a multiple of p."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        pad_h, pad_w = (-x.shape[2]) % p, (-x.shape[3]) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.proj(x)


class RelativePositionBias(nn.Module):
    """One learned bias per head and 2-D relative offset (T5 / BEiT style), zero-initialised.

    ``table`` has shape ((2*gh-1) * (2*gw-1), heads) for a ``grid`` of gh x gw tokens; for another
    grid it is resized bicubically. Prefix (cls) tokens get zero bias in both directions.
    """

    _CACHE_SIZE = 8  # offset-index tables kept per module (test images come in many sizes)

    def __init__(self, grid: tuple[int, int], num_heads: int):
        super().__init__()
        self.grid = tuple(grid)
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * grid[0] - 1) * (2 * grid[1] - 1), num_heads))
        self._index: dict[tuple[int, int, str], torch.Tensor] = {}

    def offset_index(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """(N, N) row of the (2gh-1) x (2gw-1) table for each (query, key) pair of a gh x gw grid."""
        key = (grid[0], grid[1], str(device))
        if key not in self._index:
            gh, gw = grid
            ys, xs = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
            ys, xs = ys.flatten(), xs.flatten()
            dy = ys[:, None] - ys[None, :] + gh - 1  # row offset, in [0, 2gh-2]
            dx = xs[:, None] - xs[None, :] + gw - 1
            if len(self._index) >= self._CACHE_SIZE:
                self._index.pop(next(iter(self._index)))
            self._index[key] = dy * (2 * gw - 1) + dx
        return self._index[key]

    def forward(self, grid: tuple[int, int], num_prefix: int = 0) -> torch.Tensor:
        gh, gw = grid
        table = self.relative_position_bias_table
        if (gh, gw) != self.grid:
            t = table.t().reshape(1, self.num_heads, 2 * self.grid[0] - 1, 2 * self.grid[1] - 1)
            table = F.interpolate(t, size=(2 * gh - 1, 2 * gw - 1), mode="bicubic", align_corners=False)
            table = table.reshape(self.num_heads, -1).t()
        bias = table[self.offset_index((gh, gw), table.device)]  # (N, N, heads)
        bias = bias.permute(2, 0, 1)
        if num_prefix:
            bias = F.pad(bias, (num_prefix, 0, num_prefix, 0))
        return bias.unsqueeze(0)  # (1, heads, P+N, P+N), an additive attention mask


def window_partition(x: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nW, ws*ws, C) non-overlapping windows (zero padding); also the padded size."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % ws, (-w) % ws
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, ws: int, padded: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, ws*ws, C) -> (B, H*W, C) with the padding removed."""
    hp, wp = padded
    h, w = hw
    c = windows.shape[-1]
    b = windows.shape[0] // ((hp // ws) * (wp // ws))
    x = windows.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
    return x[:, :h, :w].reshape(b, h * w, c)


class MAEViTBlock(Block):
    """timm ``Block`` (official names ``norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2``) with
    optional window attention and relative position bias."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, window_size: int = 0,
                 rel_pos_grid: tuple[int, int] | None = None):
        super().__init__(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=drop_path,
                         norm_layer=partial(nn.LayerNorm, eps=LN_EPS))
        self.window_size = window_size
        if rel_pos_grid is not None:
            grid = (window_size, window_size) if window_size else tuple(rel_pos_grid)
            self.rel_pos = RelativePositionBias(grid, num_heads)
        else:
            self.rel_pos = None

    def forward(self, x: torch.Tensor, hw: tuple[int, int], num_prefix: int = 0) -> torch.Tensor:  # type: ignore[override]
        y = self.norm1(x)
        if self.window_size:
            ws = self.window_size
            win, padded = window_partition(y.view(y.shape[0], hw[0], hw[1], -1), ws)
            mask = self.rel_pos((ws, ws)).to(win.dtype) if self.rel_pos is not None else None
            y = window_unpartition(self.attn(win, attn_mask=mask), ws, padded, hw)
        else:
            mask = self.rel_pos(hw, num_prefix).to(y.dtype) if self.rel_pos is not None else None
            y = self.attn(y, attn_mask=mask)
        x = x + self.drop_path1(self.ls1(y))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


PYRAMID_NORMS = ("LN", "BN")


def _rescale_op(dim: int, factor: float, norm: str = "LN") -> nn.Module:
    """Resample a stride-p map by ``factor`` (4, 2, 1, 1/2, 1/4): transposed convs up, max-pool down.

    x4 is two stride-2 transposed convs with ``norm`` (LayerNorm2d as ViTDet, or BatchNorm as Li et
    al. 2021's benchmark) + GELU between them."""
    if norm not in PYRAMID_NORMS:
        raise ValueError(f"pyramid_norm must be one of {PYRAMID_NORMS}, got {norm!r}")
    if factor == 4:
        between = LayerNorm2d(dim, eps=LN_EPS) if norm == "LN" else nn.BatchNorm2d(dim)
        return nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, 2), between, nn.GELU(),
                             nn.ConvTranspose2d(dim, dim, 2, 2))
    if factor == 2:
        return nn.ConvTranspose2d(dim, dim, 2, 2)
    if factor == 1:
        return nn.Identity()
    if factor in (0.5, 0.25):
        k = int(round(1 / factor))
        return nn.MaxPool2d(kernel_size=k, stride=k)
    raise ValueError(f"a pyramid level needs a rescale factor in (4, 2, 1, 1/2, 1/4) of the patch stride, got {factor}")


class MAEViT(BaseModule):
    """MAE ViT encoder with a simple feature pyramid (see the module docstring).

    Args:
        pretrain_img_size: image size of pre-training; sets the stored ``pos_embed`` shape (1, 1+L, D).
        img_size: the task's input size (1024 COCO, 512 ADE20K): the grid of global-attention
            relative position tables. Inputs of other sizes still work (tables are resized).
        patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio: the encoder (ViT-B/16 default).
        drop_path_rate: stochastic depth of the last block (linear from 0).
        out_indices: one block index (every level from it) or one per level (level k from block k).
        out_strides: strides of the 1-4 outputs; each must be patch_size * {4, 2, 1, 1/2, 1/4}
            (``[16]`` with patch 16: the last map alone, for a neck that builds the pyramid itself).
        pyramid_norm: norm between the two transposed convs of a x4 level: "LN" or "BN".
        final_norm: apply the encoder's final ``norm`` to the last block's output when it is used.
        use_cls_token: keep the cls token in the sequence (as in pre-training; needs global attention).
        window_size: window attention in all blocks not in ``global_attn_indexes`` (0 = global everywhere).
        use_rel_pos: learned relative position biases in every block.
        act_checkpoint: activation checkpointing per block in training (recompute in backward; saves
            most activation memory of ViT-L / H at 1024x1024 for ~1/3 more compute).
        pretrained: an MAE / ViT checkpoint loaded by :meth:`init_weights`.
    """

    def __init__(self, pretrain_img_size: int = 224, img_size: int | Sequence[int] = 224, patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, out_indices: Sequence[int] = (-1,),
                 out_strides: Sequence[int] = (4, 8, 16, 32), final_norm: bool = True, use_cls_token: bool = True,
                 window_size: int = 0, global_attn_indexes: Sequence[int] = (), use_rel_pos: bool = False,
                 pyramid_norm: str = "LN", act_checkpoint: bool = False, pretrained: str | None = None,
                 init_cfg: dict | None = None):
        super().__init__(init_cfg=init_cfg)
        if pretrain_img_size % patch_size:
            raise ValueError(f"pretrain_img_size {pretrain_img_size} is not a multiple of patch_size {patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if window_size and use_cls_token:
            raise ValueError("window attention (window_size > 0) cannot keep a cls token: set use_cls_token=False")
        if not 1 <= len(out_strides) <= 4:
            raise ValueError(f"out_strides must list 1 to 4 strides, got {list(out_strides)}")
        idx = [i % depth if -depth <= i < depth else None for i in out_indices]
        if None in idx or len(idx) not in (1, len(out_strides)):
            raise ValueError(f"out_indices {list(out_indices)} must be 1 or {len(out_strides)} (one per level) "
                             f"block indices in [-{depth}, {depth})")
        bad_global = [i for i in global_attn_indexes if not 0 <= i < depth]
        if bad_global:
            raise ValueError(f"global_attn_indexes {bad_global} are outside the {depth} blocks")
        img_hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_size, self.embed_dim, self.depth, self.num_heads = patch_size, embed_dim, depth, num_heads
        self.pretrain_grid = (pretrain_img_size // patch_size,) * 2
        self.use_cls_token, self.final_norm = use_cls_token, final_norm
        self.level_blocks = idx * len(out_strides) if len(idx) == 1 else idx
        self.act_checkpoint = bool(act_checkpoint)
        self.out_strides = tuple(out_strides)
        self.pretrained = pretrained

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim), requires_grad=use_cls_token)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pretrain_grid[0] * self.pretrain_grid[1], embed_dim))
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        rel_grid = (math.ceil(img_hw[0] / patch_size), math.ceil(img_hw[1] / patch_size)) if use_rel_pos else None
        self.blocks = nn.ModuleList([
            MAEViTBlock(embed_dim, num_heads, mlp_ratio, dpr[i],
                        window_size=0 if (not window_size or i in global_attn_indexes) else window_size,
                        rel_pos_grid=rel_grid)
            for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.pyramid = nn.ModuleList([_rescale_op(embed_dim, patch_size / s, pyramid_norm) for s in self.out_strides])
        self._init_random()
        # blocks after the last tapped one (and the final norm when unused) never run: freeze them so
        # that DDP does not wait for their gradients
        self.last_block = max(self.level_blocks)
        for blk in self.blocks[self.last_block + 1:]:
            blk.requires_grad_(False)
        if not (final_norm and depth - 1 in self.level_blocks):
            self.norm.requires_grad_(False)

    # ------------------------------------------------------------------ weights
    def _init_random(self) -> None:
        """MAE's initialisation (sin-cos table, xavier Linear, N(0, .02) cls token) for training from scratch."""
        table = get_2d_sincos_pos_embed(self.embed_dim, self.pretrain_grid, cls_token=True)
        self.pos_embed.data.copy_(torch.from_numpy(table).unsqueeze(0))
        nn.init.normal_(self.cls_token, std=0.02)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def init_weights(self) -> None:
        """mmengine hook: load ``pretrained`` (if given) after the default initialisation."""
        super().init_weights()
        if self.pretrained:
            self.load_mae_checkpoint(self.pretrained)

    def load_mae_checkpoint(self, path: str | Path) -> dict[str, list[str]]:
        """Load an MAE / ViT checkpoint: decoder dropped, pos table and patch kernel resampled if needed.

        Raises for a non-ViT file, a width/depth mismatch or any missing encoder key; returns the
        keys left at their initial values (relative position tables, pyramid) and those ignored.
        """
        sd, shape = encoder_state_dict(path)
        own = self.state_dict()
        pos, side = sd["pos_embed"], shape.grid
        if not shape.cls_token:
            pos = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
        if pos.shape[-1] != self.embed_dim:
            raise CheckpointError(f"checkpoint {path} has width {pos.shape[-1]}, the backbone {self.embed_dim}")
        if (side, side) != self.pretrain_grid:
            print_log(f"MAEViT: resampling pos_embed of {path} from {side}x{side} to {self.pretrain_grid}", "current")
            pos = resample_abs_pos_embed(pos, list(self.pretrain_grid), old_size=[side, side], num_prefix_tokens=1)
        sd["pos_embed"] = pos
        kernel = sd["patch_embed.proj.weight"]
        if kernel.shape[-1] != self.patch_size:
            print_log(f"MAEViT: resampling the patch kernel of {path} from {kernel.shape[-1]} to {self.patch_size}",
                      "current")
            sd["patch_embed.proj.weight"] = resample_patch_embed(kernel, [self.patch_size, self.patch_size])
        if shape.depth != self.depth:
            raise CheckpointError(f"checkpoint {path} has {shape.depth} blocks, the backbone {self.depth}")
        shapes = [f"{k}: checkpoint {tuple(v.shape)} vs backbone {tuple(own[k].shape)}"
                  for k, v in sd.items() if k in own and v.shape != own[k].shape]
        if shapes:
            raise CheckpointError(f"checkpoint {path} does not fit MAEViT: " + "; ".join(shapes[:8]))
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        new_ok = (".rel_pos.", "pyramid.")
        hard_missing = [k for k in missing if not any(s in k or k.startswith(s) for s in new_ok)]
        if any(k.startswith(("blocks.", "patch_embed.", "cls_token", "pos_embed")) for k in hard_missing):
            raise CheckpointError(f"checkpoint {path} lacks encoder weights: {hard_missing[:10]}")
        self.load_state_dict(sd, strict=False)
        print_log(f"MAEViT: loaded {len(sd) - len(unexpected)} tensors from {path}; new (initialised here): "
                  f"{len(missing)} {'e.g. ' + str(missing[:4]) if missing else ''}; ignored: {unexpected[:10]}",
                  "current")
        if hard_missing:
            print_log(f"MAEViT: {path} has no {hard_missing} (a fine-tuned checkpoint without the final norm?); "
                      "they keep their initial values", "current", level=30)
        return {"missing": missing, "unexpected": unexpected}

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N, 3, H, W) -> one map (N, D, H/s, W/s) per s in ``out_strides`` (sizes rounded up)."""
        x = self.patch_embed(x)
        n, d, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)
        pos = resample_abs_pos_embed(self.pos_embed, [gh, gw], old_size=list(self.pretrain_grid), num_prefix_tokens=1)
        x = x + pos[:, 1:]
        prefix = 0
        if self.use_cls_token:
            x = torch.cat([(self.cls_token + pos[:, :1]).expand(n, -1, -1), x], dim=1)
            prefix = 1
        wanted = set(self.level_blocks)
        taps: dict[int, torch.Tensor] = {}
        recompute = self.act_checkpoint and self.training and torch.is_grad_enabled()
        for i, blk in enumerate(self.blocks[: self.last_block + 1]):
            if recompute:
                x = torch.utils.checkpoint.checkpoint(blk, x, (gh, gw), prefix, use_reentrant=False)
            else:
                x = blk(x, (gh, gw), prefix)
            if i in wanted:
                taps[i] = x
        outs = []
        for op, i in zip(self.pyramid, self.level_blocks):
            f = taps[i]
            if self.final_norm and i == self.depth - 1:
                f = self.norm(f)
            f = f[:, prefix:].transpose(1, 2).reshape(n, d, gh, gw)
            outs.append(op(f))
        return tuple(outs)


# ----------------------------------------------------------------------------- layer decay
def layer_id_for_param(name: str, num_layers: int) -> int:
    """0 for the embeddings, i+1 for ``backbone.blocks.i``, num_layers+1 for everything else."""
    if name.startswith(("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.")):
        return 0
    if name.startswith("backbone.blocks."):
        return int(name.split(".")[2]) + 1
    return num_layers + 1


_NO_DECAY_NAMES = ("pos_embed", "cls_token", "relative_position_bias_table")


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class MAELayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise lr decay (BEiT; MAE fine-tuning and transfer): lr scale ``rate ** (num_layers + 1 - id)``.

    ``paramwise_cfg = dict(layer_decay_rate=0.65, num_layers=None)``: ``num_layers`` defaults to
    ``model.backbone.depth``. Biases, norms (1-D tensors), position tables and the cls token get no
    weight decay. Frozen parameters are left out.
    """

    _KEYS = {"layer_decay_rate", "num_layers"}

    def add_params(self, params: list[dict], module: nn.Module, **kwargs: Any) -> None:
        cfg = dict(self.paramwise_cfg)
        unknown = sorted(set(cfg) - self._KEYS)
        if unknown:
            raise ValueError(f"MAELayerDecayOptimizerConstructor: unknown paramwise_cfg keys {unknown}; "
                             f"accepted: {sorted(self._KEYS)}")
        if "layer_decay_rate" not in cfg:
            raise ValueError("MAELayerDecayOptimizerConstructor needs paramwise_cfg.layer_decay_rate")
        rate = float(cfg["layer_decay_rate"])
        num_layers = cfg.get("num_layers")
        if num_layers is None:
            backbone = getattr(module, "backbone", None)
            if backbone is None or not hasattr(backbone, "depth"):
                raise ValueError("MAELayerDecayOptimizerConstructor: the model has no backbone.depth; "
                                 "set paramwise_cfg.num_layers")
            num_layers = backbone.depth
        wd = self.base_wd or 0.0
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            lid = layer_id_for_param(name, num_layers)
            no_decay = p.ndim == 1 or name.endswith(".bias") or name.split(".")[-1] in _NO_DECAY_NAMES
            g = groups.setdefault((lid, no_decay), {
                "params": [], "param_names": [], "lr_scale": rate ** (num_layers + 1 - lid),
                "weight_decay": 0.0 if no_decay else wd})
            g["params"].append(p)
            g["param_names"].append(name)
        for (lid, no_decay), g in sorted(groups.items()):
            g["lr"] = self.base_lr * g["lr_scale"]
            params.append(g)
        print_log(f"MAELayerDecayOptimizerConstructor: rate {rate}, {num_layers} layers, {len(groups)} groups",
                  "current")


# ----------------------------------------------------------------------------- registration
def _register() -> list[str]:
    done = []
    try:
        from mmdet.registry import MODELS as DET_MODELS
        DET_MODELS.register_module(name="MAEViT", module=MAEViT, force=True)
        done.append("mmdet")
    except ImportError:
        pass
    try:
        from mmseg.registry import MODELS as SEG_MODELS
        SEG_MODELS.register_module(name="MAEViT", module=MAEViT, force=True)
        done.append("mmseg")
    except ImportError:
        pass
    if not done:
        raise ImportError("downstream.backbone needs mmdet or mmseg (bash scripts/install.sh --downstream)")
    return done


REGISTERED_IN = _register()
