"""Moving weights between checkpoint formats (MAE Sec. 4 / Appendix A: a pre-trained encoder is the
start of every transfer protocol).

Kinds of checkpoint (``kind`` as :func:`mae.models.inspect.inspect_checkpoint` reads it):

* ``mae_pretrain``: an MAE pre-training state_dict, ours or the official ``{'model': sd}`` release
  (encoder + ``decoder_*`` + ``mask_token``).
* ``encoder``: an encoder only, as timm's ``VisionTransformer(num_classes=0)`` stores it
  (``cls_token``, ``pos_embed``, ``patch_embed.*``, ``blocks.*``, ``norm.*``); :func:`export_timm`
  writes this from our MAE.
* ``finetune``: a classifier (official fine-tune checkpoints, timm classifier state_dicts): ``head.*``
  plus ``fc_norm.*`` (global pool) or ``norm.*`` (cls token).
* ``linprobe``: the official linear-probe classifier (``head.0`` BatchNorm + ``head.1`` Linear).

Files of the other public layouts (timm, Hugging Face ViTMAE, mmpretrain) are renamed to the official
one on reading by :mod:`mae.models.formats`, the single place that maps names, and read by
:mod:`mae.models.inspect`, the single place that tells what a file holds, so every entry point below
takes them too.

Entry points: :func:`load_pretrained_encoder` (start fine-tuning / probing from a pre-trained
encoder, like the official ``--finetune``), :func:`load_classifier` (evaluate or continue a
trained classifier), :func:`export_timm` / :func:`create_timm_encoder` and :func:`load_timm_into_mae`.
Every error names the file, the keys and the shapes that do not fit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
import torch.nn as nn

from mae.engine.checkpoint import CheckpointError, load_state_dict_checked
from mae.models.formats import CheckpointFormatError, read_checkpoint
from mae.models.inspect import (ENCODER_PREFIXES, HEAD_PREFIXES, MAE_ONLY_PREFIXES, CheckpointInfo, NotAViTError,
                                block_count, describe_keys)
from mae.models.mae import MAEConfig, MaskedAutoencoderViT, mae_config
from mae.models.pos_embed import interpolate_pos_embed
from mae.models.vit import TIMM_NAMES, ViTClassifier, ViTConfig, init_head, timm_kwargs, vit_config_from_mae

Source = str | Path | Mapping[str, Any]


class InteropError(CheckpointError):
    """A checkpoint does not fit the model or the protocol it was given to."""


@dataclass
class LoadReport:
    """What a load did: the checkpoint kind, keys loaded / dropped / left new, pos-embed resizing."""

    source: str
    kind: str
    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    pos_embed_resized: tuple[tuple[int, int], tuple[int, int]] | None = None

    def summary(self) -> str:
        s = f"{self.source}: {self.kind} checkpoint, {len(self.loaded)} tensors loaded"
        if self.dropped:
            s += f", {len(self.dropped)} dropped ({describe_keys(self.dropped)})"
        if self.new:
            s += f", new: {describe_keys(self.new)}"
        if self.pos_embed_resized:
            (a, b), (c, d) = self.pos_embed_resized
            s += f", pos_embed resized {a}x{b} -> {c}x{d}"
        return s


# ------------------------------------------------------------------------------ reading
def read_state_dict(source: Source) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """(state_dict with official names, what it holds) from a checkpoint path or folder, a checkpoint dict or a
    bare state_dict, in any format of :mod:`mae.models.formats` (official, timm, Hugging Face, mmpretrain)."""
    if not isinstance(source, (str, Path, Mapping)):
        raise InteropError(f"expected a checkpoint path or a state_dict, got {type(source).__name__}")
    try:
        ckpt = read_checkpoint(source)
        info = ckpt.inspect()
    except (CheckpointFormatError, NotAViTError) as e:
        raise InteropError(str(e)) from e
    return ckpt.state_dict, info


def _resize_pos_embed(sd: dict[str, torch.Tensor], grid: tuple[int, int], embed_dim: int, label: str
                      ) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Bicubic-resize ``sd['pos_embed']`` in place to ``grid`` (official fine-tuning at another resolution)."""
    pos = sd.get("pos_embed")
    if pos is None:
        return None
    if pos.ndim != 3 or pos.shape[0] != 1:
        raise InteropError(f"{label}: pos_embed has shape {tuple(pos.shape)}, expected (1, 1+L, D)")
    if pos.shape[2] != embed_dim:
        raise InteropError(f"{label}: pos_embed width {pos.shape[2]} does not match the model's embed_dim "
                           f"{embed_dim} (a different ViT size?)")
    n_patches = pos.shape[1] - 1
    if n_patches == grid[0] * grid[1]:
        return None
    old = int(round(n_patches ** 0.5))
    try:
        sd["pos_embed"] = interpolate_pos_embed(pos, grid, num_prefix_tokens=1)
    except ValueError as e:
        raise InteropError(f"{label}: cannot resize pos_embed {tuple(pos.shape)} to a {grid[0]}x{grid[1]} grid: {e}") from e
    return (old, old), tuple(grid)


def _fail(label: str, model: nn.Module, what: str, missing: list[str], unexpected: list[str]) -> InteropError:
    parts = [f"{label} does not fit {type(model).__name__} ({what})"]
    if missing:
        parts.append(f"missing in checkpoint ({len(missing)}): {describe_keys(missing, 12)}")
    if unexpected:
        parts.append(f"unexpected in checkpoint ({len(unexpected)}): {describe_keys(unexpected, 12)}")
    return InteropError("; ".join(parts))


def _load(model: nn.Module, sd: dict[str, torch.Tensor], label: str) -> tuple[list[str], list[str]]:
    try:
        return load_state_dict_checked(model, sd, strict=False, source=label)
    except InteropError:
        raise
    except CheckpointError as e:  # shape mismatches: re-raise as an interop error with the same text
        raise InteropError(str(e)) from e


def _grid(model: ViTClassifier | MaskedAutoencoderViT) -> tuple[int, int]:
    return tuple(model.patch_embed.grid_size)  # type: ignore[return-value]


# --------------------------------------------------------------- classifier (fine-tune / probe)
def load_pretrained_encoder(model: ViTClassifier, source: Source, *, allow_finetuned: bool = False,
                            head_init_std: float | None = 2e-5) -> LoadReport:
    """Initialise a classifier from a pre-trained encoder (official ``--finetune``; Appendix A.1/A.2).

    Decoder and mask-token keys are dropped; ``norm.*`` is dropped when the model pools with
    ``fc_norm`` (``fc_norm`` starts new, as in the official code); the head starts new
    (trunc-normal ``head_init_std``: 2e-5 fine-tuning, 0.01 linear probing; None leaves timm's init);
    ``pos_embed`` is resized when the resolution differs. A checkpoint that already holds a
    classifier is refused unless ``allow_finetuned`` (intermediate fine-tuning), since using one by
    mistake silently changes what an experiment measures.
    """
    sd, info = read_state_dict(source)
    label, kind = info.label, info.kind
    if kind in ("finetune", "linprobe") and not allow_finetuned:
        raise InteropError(
            f"{label} is a {kind} checkpoint (it has {'head.1.weight' if kind == 'linprobe' else 'head.weight'}), "
            "not a pretrain one: evaluate it with --eval_checkpoint (load_classifier), or start from its encoder "
            "on purpose with --allow_finetuned (allow_finetuned=True)")
    cfg: ViTConfig = model.config
    keep = [k for k in sd if k.startswith(ENCODER_PREFIXES)]
    if cfg.global_pool:
        keep = [k for k in keep if not k.startswith("norm.")]
    if allow_finetuned and cfg.global_pool:
        keep += [k for k in sd if k.startswith("fc_norm.")]
    dropped = sorted(set(sd) - set(keep))
    sd = {k: sd[k] for k in keep}
    resized = _resize_pos_embed(sd, _grid(model), cfg.embed_dim, label)
    missing, unexpected = _load(model, sd, label)
    expected_new = {k for k in model.state_dict() if k.startswith(HEAD_PREFIXES)}
    bad_missing = sorted(set(missing) - expected_new)
    if bad_missing or unexpected:
        raise _fail(label, model, _what(sd, cfg.depth), bad_missing, unexpected)
    if head_init_std is not None and cfg.num_classes > 0:
        init_head(model, head_init_std)
    return LoadReport(label, kind, loaded=sorted(sd), dropped=dropped, new=sorted(missing), pos_embed_resized=resized)


def load_classifier(model: ViTClassifier, source: Source) -> LoadReport:
    """Load a trained classifier strictly (official fine-tune / linear-probe checkpoints, timm classifiers).

    Only ``pos_embed`` may differ (resized to the model's resolution); anything else that does not
    fit raises, with a hint when the pooling or the head type of the model is the wrong one.
    """
    sd, info = read_state_dict(source)
    label, kind = info.label, info.kind
    if kind == "mae_pretrain":
        raise InteropError(f"{label} is an MAE pre-training checkpoint (it has decoder/mask_token keys), not a "
                           "fine-tuned classifier: start fine-tuning or probing from it (--finetune / "
                           "load_pretrained_encoder)")
    if kind == "encoder":
        raise InteropError(f"{label} holds an encoder without a classification head: start fine-tuning or "
                           "probing from it (--finetune / load_pretrained_encoder)")
    cfg: ViTConfig = model.config
    hints = []
    if cfg.global_pool and "norm.weight" in sd and "fc_norm.weight" not in sd:
        hints.append("the checkpoint pools the cls token (norm.*) but the model averages patch tokens "
                     "(fc_norm.*): build it with global_pool=False")
    if not cfg.global_pool and "fc_norm.weight" in sd and "norm.weight" not in sd:
        hints.append("the checkpoint averages patch tokens (fc_norm.*) but the model pools the cls token "
                     "(norm.*): build it with global_pool=True")
    if kind == "linprobe" and cfg.head_type != "bn_linear":
        hints.append("it is a linear-probe checkpoint (BatchNorm head): build the model with head_type='bn_linear'")
    if kind == "finetune" and cfg.head_type == "bn_linear":
        hints.append("it is a fine-tune checkpoint (Linear head): build the model with head_type='linear'")
    if hints:
        raise InteropError(f"{label} does not fit the model: " + "; ".join(hints))
    sd = dict(sd)
    resized = _resize_pos_embed(sd, _grid(model), cfg.embed_dim, label)
    missing, unexpected = _load(model, sd, label)
    if missing or unexpected:
        raise _fail(label, model, _what(sd, cfg.depth), missing, unexpected)
    return LoadReport(label, kind, loaded=sorted(sd), pos_embed_resized=resized)


def _what(sd: Mapping[str, torch.Tensor], depth: int) -> str:
    d = block_count(sd)
    return f"checkpoint has {d} blocks, the model {depth}" if d != depth else "key sets differ"


# ----------------------------------------------------------------------------------- timm
def _mae_cfg(model_or_cfg: MaskedAutoencoderViT | MAEConfig | str) -> MAEConfig:
    if isinstance(model_or_cfg, MaskedAutoencoderViT):
        return model_or_cfg.config
    if isinstance(model_or_cfg, str):
        return mae_config(model_or_cfg)
    return model_or_cfg


def export_timm(model: MaskedAutoencoderViT | ViTClassifier) -> dict[str, torch.Tensor]:
    """A state_dict in timm ``VisionTransformer`` layout.

    From an MAE: the encoder only (``num_classes=0``, cls-token pooling, final ``norm``), loadable
    strictly into :func:`create_timm_encoder`. From a classifier: its own state_dict (already timm's
    layout; a linear-probe ``bn_linear`` head has no timm counterpart and is refused).
    """
    if isinstance(model, ViTClassifier):
        if model.config.head_type == "bn_linear":
            raise InteropError("a linear-probe classifier (BatchNorm head) has no timm equivalent; export its "
                               "encoder from the pre-trained MAE instead")
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    if not isinstance(model, MaskedAutoencoderViT):
        raise InteropError(f"export_timm takes an MAE or a ViTClassifier, got {type(model).__name__}")
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}


def create_timm_encoder(model_or_cfg: MaskedAutoencoderViT | MAEConfig | str, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` of the MAE's encoder (no head, cls-token pooling); nothing is downloaded.

    The paper's sizes use their timm names (``vit_base_patch16_224`` ...); other sizes the same
    builder with the architecture passed as arguments. ``kwargs`` override (e.g. ``num_classes``).
    """
    cfg = _mae_cfg(model_or_cfg)
    vcfg = vit_config_from_mae(cfg, num_classes=0, global_pool=False)
    name = TIMM_NAMES.get(f"vit_{_size_name(vcfg)}", "vit_base_patch16_224")
    return timm.create_model(name, pretrained=False, **{**timm_kwargs(vcfg), **kwargs})


def _size_name(cfg: ViTConfig) -> str:
    sizes = {(768, 12, 12, 16): "base_patch16", (1024, 24, 16, 16): "large_patch16", (1280, 32, 16, 14): "huge_patch14"}
    return sizes.get((cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size), "")


def load_timm_into_mae(model: MaskedAutoencoderViT, source: Source) -> LoadReport:
    """Load a timm ``VisionTransformer`` state_dict (or :func:`export_timm` output) into the MAE encoder.

    The decoder is left as it is; a classification head is dropped. A global-pool state_dict
    (``fc_norm`` instead of a final ``norm``) is refused: its tokens were never normalised by the
    ``norm`` the MAE encoder applies, so nothing correct can be loaded there.
    """
    sd, info = read_state_dict(source)
    label, kind = info.label, info.kind
    if kind == "mae_pretrain":
        raise InteropError(f"{label} is an MAE pre-training checkpoint, not a timm state_dict: load it with "
                           "load_state_dict_checked(model, sd) directly")
    if "norm.weight" not in sd and "fc_norm.weight" in sd:
        raise InteropError(f"{label} pools with fc_norm (global average pooling) and has no final norm.*: the "
                           "MAE encoder needs norm.weight / norm.bias")
    dropped = sorted(k for k in sd if k.startswith(HEAD_PREFIXES))
    sd = {k: v for k, v in sd.items() if k not in dropped}
    resized = _resize_pos_embed(sd, _grid(model), model.config.embed_dim, label)
    missing, unexpected = _load(model, sd, label)
    bad_missing = sorted(k for k in missing if not k.startswith(MAE_ONLY_PREFIXES))
    if bad_missing or unexpected:
        raise _fail(label, model, _what(sd, model.config.depth), bad_missing, unexpected)
    return LoadReport(label, kind, loaded=sorted(sd), dropped=dropped, new=sorted(missing), pos_embed_resized=resized)
