"""What a checkpoint holds, read once: :func:`inspect_checkpoint` is the one reading of a ViT / MAE state_dict.

Every loader asks it the same questions and gets the same answers: ``mae convert``
(:mod:`mae.models.formats`), pre-training's ``--init`` and the reconstruction figures
(:mod:`mae.models.loader`), fine-tuning / probing / readouts (:mod:`mae.models.interop`) and the
detection / segmentation backbone (``downstream/backbone.py``). So a file one of them accepts is
accepted by all that need what it holds (a decoder for reconstructions, heads for a config).

From the tensor shapes: the kind (``mae_pretrain``, ``encoder``, ``finetune``, ``linprobe``), the
encoder's width, depth, patch size, channels, position grid (with or without a cls row) and MLP
ratio; the decoder's width, depth and output size; the target (PCA components, token tokenizer,
else pixels); the encoder w/ [M] token. Attention heads, which shapes do not show, come from (first
that says): the caller (``num_heads`` / ``preset``), the model config a checkpoint records
(``model_config``), our run config (``config``: its ``num_heads`` or its preset), the release's
``args.model``, a Hugging Face ``config.json``, else the presets of the same shape (then of the same
width) when they agree. ``norm_pix`` is what the file says (None: it does not say).

The state_dict must have the official names (:func:`mae.models.formats.read_checkpoint` renames the
other layouts; it passes its ``format`` here). The key-prefix tuples below are the project's only ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch

from mae.engine.checkpoint import CheckpointError

KINDS = ("mae_pretrain", "encoder", "finetune", "linprobe")
#: keys of the ViT encoder (timm's VisionTransformer without head, the official encoder)
ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
#: keys of the MAE decoder (the release's layout)
DECODER_PREFIXES = ("decoder_", "mask_token")
#: keys only our MAE has (Table 1c's encoder w/ [M], Table 1d's PCA / token targets): no other format holds them
OURS_ONLY_PREFIXES = ("encoder_mask_token", "target.")
#: keys of an MAE that a classifier (or timm) has no place for
MAE_ONLY_PREFIXES = DECODER_PREFIXES + OURS_ONLY_PREFIXES
#: keys of a classifier's head and its average-pool norm
HEAD_PREFIXES = ("head.", "fc_norm.")
#: what a pre-training checkpoint needs to reconstruct images
DECODER_KEYS = ("decoder_embed.weight", "decoder_pred.weight")


class NotAViTError(CheckpointError):
    """The state_dict is not a ViT / MAE (no patch embedding or blocks in the official layout)."""


def describe_keys(keys: Iterable[str], limit: int = 8) -> str:
    """The first ``limit`` keys, sorted, and how many more: the one way errors list keys."""
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" ... (+{len(keys) - limit})" if len(keys) > limit else "")


def block_count(sd: Mapping[str, Any], prefix: str = "blocks.") -> int:
    """Number of ``<prefix><i>.*`` blocks; the indices must be 0..n-1."""
    ids = {int(k[len(prefix):].split(".")[0]) for k in sd
           if k.startswith(prefix) and k[len(prefix):].split(".")[0].isdigit()}
    if ids and ids != set(range(len(ids))):
        raise NotAViTError(f"non-contiguous {prefix}* blocks: {sorted(ids)}")
    return len(ids)


def norm_pix_of(meta: Mapping[str, Any] | None) -> bool | None:
    """Whether a checkpoint's metadata says it was trained with the per-patch normalised target (None: silent)."""
    meta = meta or {}
    model_cfg = meta.get("model_config")
    if isinstance(model_cfg, dict) and "target" in model_cfg:
        return model_cfg["target"] == "norm_pixel"
    cfg = meta.get("config")
    if isinstance(cfg, dict) and "target" in cfg:
        return cfg["target"] == "norm_pixel" or (cfg["target"] == "pixel" and bool(cfg.get("norm_pix_loss")))
    args = meta.get("args")
    value = args.get("norm_pix_loss") if isinstance(args, dict) else getattr(args, "norm_pix_loss", None)
    if value is None and isinstance(meta.get("hf_config"), dict):
        value = meta["hf_config"].get("norm_pix_loss")
    return None if value is None else bool(value)


@dataclass(frozen=True)
class CheckpointInfo:
    """A ViT / MAE checkpoint's architecture (see the module docstring for where each field comes from)."""

    label: str
    format: str  # official | timm | hf | mmpretrain: the layout the file had
    kind: str  # one of KINDS
    embed_dim: int
    depth: int
    patch_size: int
    in_chans: int
    grid: int | None  # side of the square position table (None without pos_embed)
    cls_token: bool  # whether the position table has a cls row
    mlp_ratio: float | None
    num_heads: int | None  # None: nothing says (see heads())
    decoder_embed_dim: int | None = None  # None: no decoder
    decoder_depth: int | None = None
    decoder_num_heads: int | None = None
    decoder_out_dim: int | None = None  # values the decoder predicts per patch
    target: str | None = None  # pixel | norm_pixel | pca | token (MAE checkpoints); None: unknown
    norm_pix: bool | None = None  # what the file says about norm_pix_loss
    pca_components: int | None = None
    encoder_mask_token: bool = False
    preset: str | None = None  # the MAE preset it names, else the one of the same shape (else of the same widths)
    model_config: dict[str, Any] | None = None  # the model config the checkpoint records (MAEConfig / ViTConfig)

    @property
    def img_size(self) -> int | None:
        return None if self.grid is None else self.grid * self.patch_size

    @property
    def has_decoder(self) -> bool:
        return self.decoder_embed_dim is not None

    def heads(self, hint: str = "pass --preset NAME or --num_heads / --decoder_num_heads") -> tuple[int, int | None]:
        """(encoder heads, decoder heads or None without a decoder); raises, ending with ``hint``, when neither the
        caller, the file nor the presets say them."""
        if self.num_heads is None or (self.has_decoder and self.decoder_num_heads is None):
            dec = (f" with a decoder {self.decoder_embed_dim} wide, {self.decoder_depth} deep"
                   if self.has_decoder else "")
            raise CheckpointError(
                f"{self.label}: cannot tell the number of attention heads of a ViT of encoder width {self.embed_dim}, "
                f"depth {self.depth}{dec} (the file does not say and no unique preset matches); {hint}")
        return self.num_heads, self.decoder_num_heads

    def require_decoder(self, purpose: str = "reconstruct images") -> None:
        """Raise, naming what the file is, unless it is an MAE pre-training checkpoint with its decoder."""
        if self.kind == "mae_pretrain" and self.decoder_embed_dim is not None and self.decoder_out_dim is not None:
            return
        what = {"finetune": "a fine-tune checkpoint (classifier head head.weight)",
                "linprobe": "a linear-probe checkpoint (classifier head head.1.weight)",
                "encoder": "an encoder-only checkpoint"}.get(self.kind, "an MAE checkpoint without its full decoder")
        raise CheckpointError(
            f"{self.label} is {what}: it has no MAE decoder ({', '.join(DECODER_KEYS)} missing), so it cannot "
            f"{purpose}. Use a pre-training checkpoint with its decoder (ours: checkpoint-*.pth of `mae pretrain`; "
            "official: mae_visualize_vit_large*.pth or the *_full.pth pre-training files)")


# ------------------------------------------------------------------------------------- heads
def _preset_configs() -> dict[str, Any]:
    from mae.models.mae import PRESETS, mae_config
    return {name: mae_config(name) for name in PRESETS}


def heads_of_preset(name: str) -> tuple[int, int] | None:
    """(encoder, decoder) heads of an MAE or ViT preset name (aliases included); None if unknown."""
    from mae.models.mae import mae_config
    from mae.models.vit import vit_config
    try:
        c = mae_config(name)
        return c.num_heads, c.decoder_num_heads
    except ValueError:
        pass
    try:
        return vit_config(name).num_heads, None
    except ValueError:
        return None


def _named_preset(meta: Mapping[str, Any]) -> str | None:
    """The preset the file's metadata names (our run config's ``model``, the release's ``args.model``)."""
    cfg = meta.get("config")
    name = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(name, str):
        args = meta.get("args")
        name = args.get("model") if isinstance(args, dict) else getattr(args, "model", None)
    return name if isinstance(name, str) and heads_of_preset(name) is not None else None


def _heads_from_file(meta: Mapping[str, Any]) -> tuple[int | None, int | None]:
    model_cfg = meta.get("model_config")
    if isinstance(model_cfg, dict) and model_cfg.get("num_heads"):
        return int(model_cfg["num_heads"]), (int(model_cfg["decoder_num_heads"])
                                             if model_cfg.get("decoder_num_heads") else None)
    name = _named_preset(meta)
    if name is not None:
        enc, dec = heads_of_preset(name)  # type: ignore[misc]
        cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        return int(cfg.get("num_heads") or enc), (int(cfg.get("decoder_num_heads") or dec) if dec or
                                                  cfg.get("decoder_num_heads") else None)
    hf = meta.get("hf_config")
    if isinstance(hf, dict) and "num_attention_heads" in hf:
        dec = hf.get("decoder_num_attention_heads")
        return int(hf["num_attention_heads"]), None if dec is None else int(dec)
    return None, None


def _unique(values: set[int]) -> int | None:
    return next(iter(values)) if len(values) == 1 else None


def _heads_from_shapes(shape: dict[str, Any]) -> tuple[int | None, int | None]:
    """Heads of the presets with this encoder (decoder) shape, else this width, when they all agree."""
    presets = _preset_configs().values()
    exact = {c.num_heads for c in presets
             if (c.embed_dim, c.depth, c.patch_size) == (shape["embed_dim"], shape["depth"], shape["patch_size"])}
    enc = _unique(exact) or _unique({c.num_heads for c in presets if c.embed_dim == shape["embed_dim"]})
    dec = None
    if shape["decoder_embed_dim"] is not None:
        exact = {c.decoder_num_heads for c in presets
                 if (c.decoder_embed_dim, c.decoder_depth) == (shape["decoder_embed_dim"], shape["decoder_depth"])}
        dec = _unique(exact) or _unique({c.decoder_num_heads for c in presets
                                         if c.decoder_embed_dim == shape["decoder_embed_dim"]})
    return enc, dec


def _preset_of_shape(shape: dict[str, Any]) -> str | None:
    """The first MAE preset of exactly this shape, else the first of the same encoder (and decoder) widths."""
    def widths(c: Any) -> bool:
        return c.embed_dim == shape["embed_dim"] and (shape["decoder_embed_dim"] is None
                                                       or c.decoder_embed_dim == shape["decoder_embed_dim"])
    same = [(n, c) for n, c in _preset_configs().items() if widths(c)]
    exact = [n for n, c in same if (c.patch_size, c.depth, c.img_size) == (shape["patch_size"], shape["depth"],
                                                                             shape["img_size"])
             and (shape["decoder_depth"] is None or c.decoder_depth == shape["decoder_depth"])]
    return (exact or [n for n, _ in same] or [None])[0]


# --------------------------------------------------------------------------------- the reading
def _kind(sd: Mapping[str, Any], label: str) -> str:
    if "patch_embed.proj.weight" not in sd or not any(k.startswith("blocks.") for k in sd):
        raise NotAViTError(f"{label} is not a ViT/MAE checkpoint: no patch_embed.proj.weight / blocks.* keys "
                           f"(first keys: {describe_keys(sd)})")
    if any(k.startswith(DECODER_PREFIXES) for k in sd):
        return "mae_pretrain"
    if "head.1.weight" in sd or "head.0.running_mean" in sd:
        return "linprobe"
    if "head.weight" in sd:
        return "finetune"
    return "encoder"


def _grid(pos: torch.Tensor | None, label: str) -> tuple[int | None, bool]:
    if pos is None:
        return None, True
    if pos.ndim != 3:
        raise NotAViTError(f"{label}: pos_embed has shape {tuple(pos.shape)}, expected (1, [1+]L, D)")
    for prefix in (1, 0):
        side = math.isqrt(max(pos.shape[1] - prefix, 0))
        if side * side == pos.shape[1] - prefix and side:
            return side, prefix == 1
    raise NotAViTError(f"{label}: pos_embed {tuple(pos.shape)} is not a square grid (+ a cls row)")


def inspect_checkpoint(state_dict: Mapping[str, Any], meta: Mapping[str, Any] | None = None, *,
                       format: str = "official", label: str = "checkpoint", preset: str | None = None,
                       num_heads: int | None = None, decoder_num_heads: int | None = None) -> CheckpointInfo:
    """Read a ViT / MAE state_dict (official names) and its file's metadata; see the module docstring.

    ``preset`` / ``num_heads`` / ``decoder_num_heads``: what the caller knows (they win over the file).
    Raises :class:`NotAViTError` for anything that is not a ViT / MAE.
    """
    sd, meta = state_dict, dict(meta or {})
    kind = _kind(sd, label)
    w = sd["patch_embed.proj.weight"]
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
        raise NotAViTError(f"{label}: patch_embed.proj.weight is {tuple(w.shape)}, expected (D, C, p, p) - "
                           "not a ViT/MAE checkpoint")
    grid, cls = _grid(sd.get("pos_embed"), label)
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    shape: dict[str, Any] = dict(embed_dim=int(w.shape[0]), depth=block_count(sd, "blocks."),
                                 patch_size=int(w.shape[2]), in_chans=int(w.shape[1]), grid=grid, cls_token=cls,
                                 mlp_ratio=None if fc1 is None else fc1.shape[0] / w.shape[0],
                                 decoder_embed_dim=None, decoder_depth=None, decoder_out_dim=None)
    shape["img_size"] = None if grid is None else grid * shape["patch_size"]
    if "decoder_embed.weight" in sd:
        shape["decoder_embed_dim"] = int(sd["decoder_embed.weight"].shape[0])
        shape["decoder_depth"] = block_count(sd, "decoder_blocks.")
    if "decoder_pred.weight" in sd:
        shape["decoder_out_dim"] = int(sd["decoder_pred.weight"].shape[0])

    norm_pix = norm_pix_of(meta)
    model_cfg = meta.get("model_config") if isinstance(meta.get("model_config"), dict) else None
    pca = int(sd["target.components"].shape[0]) if "target.components" in sd else None
    target = None
    if model_cfg is not None and "target" in model_cfg:
        target = model_cfg["target"]
    elif any(k.startswith("target.tokenizer.") for k in sd):
        target = "token"
    elif pca is not None:
        target = "pca"
    elif shape["decoder_out_dim"] == shape["patch_size"] ** 2 * shape["in_chans"]:
        target = "norm_pixel" if norm_pix else "pixel"

    enc_heads, dec_heads = _heads_from_file(meta)
    if preset is not None:
        named = heads_of_preset(preset)
        if named is None:
            raise CheckpointError(f"unknown preset {preset!r} (see mae.models.PRESETS)")
        enc_heads, dec_heads = named
    shape_enc, shape_dec = _heads_from_shapes(shape)
    enc_heads = num_heads or enc_heads or shape_enc
    dec_heads = (decoder_num_heads or dec_heads or shape_dec) if shape["decoder_embed_dim"] is not None else None
    from mae.models.mae import PRESET_ALIASES, PRESETS
    named = preset or _named_preset(meta)
    named = PRESET_ALIASES.get(named, named) if named else None
    return CheckpointInfo(
        label=label, format=format, kind=kind, num_heads=enc_heads, decoder_num_heads=dec_heads, target=target,
        norm_pix=norm_pix, pca_components=pca, encoder_mask_token="encoder_mask_token" in sd,
        preset=named if named in PRESETS else _preset_of_shape(shape), model_config=model_cfg,
        **{k: shape[k] for k in ("embed_dim", "depth", "patch_size", "in_chans", "grid", "cls_token", "mlp_ratio",
                                 "decoder_embed_dim", "decoder_depth", "decoder_out_dim")})
