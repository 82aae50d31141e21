"""Checkpoint -> MAE: the pre-trained model of any pre-training checkpoint, for the figures and ``--init``.

:func:`load_mae_checkpoint` builds the MAE a checkpoint holds: ours from the model config it records
(``model_config``; older ones from their pre-training config), the official release's ``{'model': sd}``
files and the other layouts of :mod:`mae.models.formats` from the tensor shapes
(:func:`mae.models.inspect.inspect_checkpoint`). Encoder-only, fine-tune, non-ViT and token-target
files are refused with an error that names what they hold. :func:`load_mae_weights` fills a model
built from a recipe (pre-training's ``--init``) after the same checks. (Classifiers start from an
encoder through :mod:`mae.models.interop`; the figures are drawn by :mod:`mae.viz`.)
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from mae.engine.checkpoint import CheckpointError, load_state_dict_checked
from mae.models.formats import Source, read_checkpoint
from mae.models.inspect import CheckpointInfo
from mae.models.mae import PRESET_ALIASES, PRESETS, MAEConfig, MaskedAutoencoderViT, mae_config, recipe_overrides


@dataclass
class LoadedMAE:
    """A pre-trained MAE built from a checkpoint, and how it was recognised."""

    model: Any  # MaskedAutoencoderViT
    path: Path
    source: str  # "ours" (config inside) | "official" (architecture inferred from shapes)
    preset: str  # the MAE preset whose architecture it has (or "custom")
    target: str
    description: str  # one line for captions
    train_mask_ratio: float | None = None
    epoch: int | None = None
    config: dict[str, Any] | None = None


def _drawable(info: CheckpointInfo) -> None:
    """The checks of a model that reconstructs pixels: a decoder, and no token target."""
    info.require_decoder()
    if info.target == "token":
        raise CheckpointError(f"{info.label} was trained with a token target: its predictions are token ids, "
                              "not pixels, and cannot be drawn")


def config_from_record(record: dict[str, Any]) -> MAEConfig:
    """The MAEConfig a checkpoint records (``model_config``); fields this code does not know are ignored."""
    known = {f.name for f in fields(MAEConfig)}
    return MAEConfig(**{k: v for k, v in record.items() if k in known})


def config_from_shapes(info: CheckpointInfo, norm_pix: bool = False) -> MAEConfig:
    """The MAEConfig of a checkpoint that records none: shapes, heads (:meth:`CheckpointInfo.heads`) and the
    target (PCA components when present, else pixels; ``norm_pix`` picks the normalised variant)."""
    if info.grid is None or not info.cls_token:
        raise CheckpointError(f"{info.label}: no square position table with a cls row (pos_embed), so the input "
                              "size is unknown")
    pixels = info.patch_size ** 2 * info.in_chans
    if info.target not in ("pixel", "norm_pixel", "pca"):
        raise CheckpointError(f"{info.label}: decoder_pred predicts {info.decoder_out_dim} values per patch, not the "
                              f"{pixels} pixels of a {info.patch_size}x{info.patch_size}x{info.in_chans} patch "
                              "(a token target?); it cannot be drawn")
    heads, decoder_heads = info.heads()
    over: dict[str, Any] = dict(
        img_size=info.img_size, patch_size=info.patch_size, in_chans=info.in_chans, embed_dim=info.embed_dim,
        depth=info.depth, num_heads=heads, decoder_embed_dim=info.decoder_embed_dim, decoder_depth=info.decoder_depth,
        decoder_num_heads=decoder_heads, encoder_mask_token=info.encoder_mask_token,
        target="pca" if info.target == "pca" else ("norm_pixel" if norm_pix else "pixel"))
    if info.mlp_ratio is not None:
        over["mlp_ratio"] = info.mlp_ratio
    if info.pca_components is not None:
        over["pca_components"] = info.pca_components
    return MAEConfig(**over)


def _our_recipe(meta: dict[str, Any]) -> dict[str, Any] | None:
    """Our pre-training config (a dict naming an MAE preset), or None."""
    cfg = meta.get("config")
    name = cfg.get("model") if isinstance(cfg, dict) else None
    return cfg if isinstance(name, str) and PRESET_ALIASES.get(name, name) in PRESETS else None


def load_mae_checkpoint(path: str | Path, norm_pix: bool | None = None, preset: str | None = None,
                        device: str | torch.device = "cpu") -> LoadedMAE:
    """The pre-trained MAE of ``path``: ours (config inside) or the official release's ``{'model': sd}`` (and the
    other layouts of :mod:`mae.models.formats`).

    ``norm_pix`` says whether an official file was trained with norm_pix_loss (the ``*_full`` files
    were; the ``mae_visualize_*`` ones were not). For our checkpoints the stored config decides and a
    contradicting ``norm_pix`` is an error. ``preset`` gives the head counts of a file that does not say
    them. Encoder-only, fine-tune and non-ViT files raise :class:`~mae.engine.checkpoint.CheckpointError`
    naming what they hold.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    info = ckpt.inspect(preset=preset)
    _drawable(info)
    sd, meta = ckpt.state_dict, ckpt.meta
    recipe = _our_recipe(meta)
    if info.model_config is not None or recipe is not None:
        cfg = (config_from_record(info.model_config) if info.model_config is not None
               else mae_config(recipe["model"], **recipe_overrides(recipe)))
        trained_norm = cfg.target == "norm_pixel"
        if norm_pix is not None and cfg.target in ("pixel", "norm_pixel") and norm_pix != trained_norm:
            raise CheckpointError(f"{path} was trained with target {cfg.target!r} (its stored config); "
                                  f"norm_pix={norm_pix} contradicts it")
        model = MaskedAutoencoderViT(cfg)
        load_state_dict_checked(model, sd, strict=True, source=str(path))
        recipe = recipe or {}
        name = PRESET_ALIASES.get(recipe.get("model"), recipe.get("model")) or info.preset or "custom"
        epoch = meta.get("epoch") if isinstance(meta.get("epoch"), int) else None
        ratio = recipe.get("mask_ratio")
        desc = (f"ours: {name}, target {cfg.target}"
                + (f", trained at mask ratio {ratio} ({cfg.mask_strategy})" if ratio is not None else "")
                + (f", {epoch} of {recipe['epochs']} epochs done" if epoch is not None and "epochs" in recipe else ""))
        return LoadedMAE(model.to(device).eval(), path, "ours", name, cfg.target, desc,
                         None if ratio is None else float(ratio), epoch, meta.get("config"))
    config = meta.get("config")
    if isinstance(config, dict) and config.get("model") is not None:
        raise CheckpointError(f"{path}: its config names model {config['model']!r}, not an MAE preset "
                              f"(known: {sorted(PRESETS)})")
    if norm_pix is None:
        norm_pix = info.norm_pix  # what the file itself says (the release's args, a Hugging Face config), if anything
    cfg = config_from_shapes(info, norm_pix=bool(norm_pix))
    model = MaskedAutoencoderViT(cfg)
    load_state_dict_checked(model, sd, strict=True, source=str(path))
    name = info.preset or "custom"
    desc = (f"official-layout file, architecture of {name} inferred from shapes, target {cfg.target}"
            + ("" if norm_pix is not None else " (norm_pix not given: assumed off)"))
    return LoadedMAE(model.to(device).eval(), path, "official", name, cfg.target, desc, config=None)


def load_mae_weights(model: MaskedAutoencoderViT, source: Source) -> CheckpointInfo:
    """Load a pre-training checkpoint of any format into ``model`` strictly (pre-training's ``--init``): the file
    must hold an MAE with its decoder (the same check as :func:`load_mae_checkpoint`); returns what it held."""
    ckpt = read_checkpoint(source)
    info = ckpt.inspect()
    info.require_decoder("start pre-training from it (--init)")
    load_state_dict_checked(model, ckpt.state_dict, strict=True, source=ckpt.source)
    return info
