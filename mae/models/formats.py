"""Checkpoint formats: the one place that maps parameter names between the official MAE release's
layout (REFERENCE.md, "Official checkpoint conventions"; ours is the same) and the other public
layouts of the same network.

Formats (``--to`` of ``mae convert``; :data:`FORMATS`):

* ``official``: ``torch.save({'model': state_dict})`` with the release's names (``cls_token``,
  ``pos_embed``, ``patch_embed.proj``, ``blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
  ``norm``, ``decoder_*``, ``mask_token``). Our own run checkpoints are official files with more entries.
* ``timm``: a bare state_dict of timm's ``VisionTransformer`` (the ``vit_*_patch16_224.mae`` weights:
  ``num_classes=0``, cls-token pooling). timm's names *are* the official encoder's, so a timm file
  is an official encoder without the ``{'model': ...}`` wrapper; the decoder is not part of it.
* ``hf``: Hugging Face transformers ``ViTMAEForPreTraining`` (``vit.`` encoder + ``decoder.``) or,
  for an encoder alone, ``ViTMAEModel`` (no prefix). Written with the names of the released hub
  files (``encoder.layer.<i>.attention.attention.{query,key,value}`` ...), which every transformers
  version loads (5.x renames them on load); read in that layout and in transformers 5.x's in-memory
  one (``layers.<i>.attention.{q,k,v,o}_proj``, ``mlp.fc1/fc2``). The fused ``attn.qkv`` is split
  into query / key / value (rows ``[0:D]``, ``[D:2D]``, ``[2D:3D]``) and joined back.
  What is written: DST ending ``.pth`` / ``.pt`` / ``.bin``: a bare torch state_dict with the hub
  names (what a hub folder's ``pytorch_model.bin`` holds: ``load_state_dict`` takes it in transformers
  4.x, ``from_pretrained`` of a folder in every version); ``.safetensors``: the same as safetensors;
  anything else: a folder
  that ``ViTMAEForPreTraining.from_pretrained(DST)`` opens offline, holding ``config.json`` and
  ``model.safetensors`` (``pytorch_model.bin`` where safetensors is not installed). All of these,
  and sharded hub folders, are read back.
* ``mmpretrain``: mmpretrain / mmselfsup ``MAE``: ``{'meta': ..., 'state_dict': ...}`` with the
  ``MAEViT`` backbone under ``backbone.`` (``patch_embed.projection``, ``layers.<i>.{ln1,attn.qkv,
  attn.proj,ln2,ffn.layers.0.0,ffn.layers.1}``, final norm ``ln1``) and the ``MAEPretrainDecoder``
  under ``neck.`` (``decoder_blocks.<i>`` as the backbone's layers, its norm ``ln1``). Classifiers
  map too: ``backbone.ln2`` (average-pool norm) = ``fc_norm``, ``head.layers.head`` = ``head``; the
  linear probe's ``neck.bn`` + ``head.fc`` = ``head.0`` + ``head.1``. mmselfsup 0.x decoders with
  timm block names (``norm1``, ``mlp.fc1``, ``decoder_norm``) are read as well.

Entry points: :func:`read_checkpoint` (any path or state_dict -> official names; every loader of
the project goes through it), :func:`export_state_dict` / :func:`write_checkpoint` (official ->
a format) and :func:`convert` (file -> file, the ``mae convert`` command).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from mae.engine.checkpoint import CheckpointError, atomic_write, extract_state_dict, load_checkpoint
from mae.models.inspect import (DECODER_PREFIXES, HEAD_PREFIXES, MAE_ONLY_PREFIXES, OURS_ONLY_PREFIXES,
                                CheckpointInfo, describe_keys, inspect_checkpoint, norm_pix_of)
from mae.models.mae import LN_EPS

FORMATS = ("official", "timm", "hf", "mmpretrain")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

Source = str | Path | Mapping[str, Any]


class CheckpointFormatError(CheckpointError):
    """A checkpoint's key layout is not one of :data:`FORMATS`, or cannot be written in the one asked for."""


@dataclass
class Checkpoint:
    """A checkpoint read into the official layout.

    ``state_dict`` has the official names whatever the file's format; ``meta`` holds the file's other
    top-level entries (``config``, ``args``, ``epoch``, mmengine's ``meta``; ``hf_config`` for a Hugging
    Face folder's config.json); ``dropped`` names keys outside the network (detector / segmentor heads).
    """

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]
    format: str
    source: str
    dropped: list[str] = field(default_factory=list)

    @property
    def norm_pix(self) -> bool | None:
        """Whether the file says it was trained with the per-patch normalised target (None: it does not say)."""
        return norm_pix_of(self.meta)

    def inspect(self, *, preset: str | None = None, num_heads: int | None = None,
                decoder_num_heads: int | None = None) -> CheckpointInfo:
        """What this checkpoint holds (:func:`mae.models.inspect.inspect_checkpoint`)."""
        return inspect_checkpoint(self.state_dict, self.meta, format=self.format, label=self.source, preset=preset,
                                  num_heads=num_heads, decoder_num_heads=decoder_num_heads)


# ----------------------------------------------------------------------------------- name tables
# Parameter names that end a key (everything before them is the module path that the tables map).
_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# Per-block module paths: official -> spellings of a format (the first is written, all are read).
_BLOCK_PARTS: dict[str, dict[str, tuple[str, ...]]] = {
    "hf": {"norm1": ("layernorm_before",), "norm2": ("layernorm_after",),
           "attn.proj": ("attention.output.dense", "attention.o_proj"),
           "mlp.fc1": ("intermediate.dense", "mlp.fc1"), "mlp.fc2": ("output.dense", "mlp.fc2")},
    "mmpretrain": {"norm1": ("ln1", "norm1"), "norm2": ("ln2", "norm2"), "attn.qkv": ("attn.qkv",),
                   "attn.proj": ("attn.proj",), "mlp.fc1": ("ffn.layers.0.0", "mlp.fc1"),
                   "mlp.fc2": ("ffn.layers.1", "mlp.fc2")},
}
# Hugging Face keeps query / key / value apart: (written spelling, transformers 5.x spelling).
_HF_QKV = (("attention.attention.query", "attention.attention.key", "attention.attention.value"),
           ("attention.q_proj", "attention.k_proj", "attention.v_proj"))

# Block lists: official list name -> the format's list paths (first written, all read).
_BLOCK_LISTS: dict[str, dict[str, tuple[str, ...]]] = {
    # transformers 5.x's save_pretrained writes the decoder list as decoder.decoder_encoder.layer (its
    # legacy renaming applied inside decoder_layers); its from_pretrained reads that back, so do we
    "hf": {"blocks": ("encoder.layer", "layers"),
           "decoder_blocks": ("decoder.decoder_layers", "decoder.decoder_encoder.layer")},
    "mmpretrain": {"blocks": ("backbone.layers",), "decoder_blocks": ("neck.decoder_blocks",)},
}

# Modules outside the blocks: official path -> the format's spellings (first written, all read).
# HF encoder paths are relative: ``vit.`` is prefixed when a decoder is present (ViTMAEForPreTraining).
_TOP: dict[str, dict[str, tuple[str, ...]]] = {
    "hf": {"cls_token": ("embeddings.cls_token",), "pos_embed": ("embeddings.position_embeddings",),
           "patch_embed.proj": ("embeddings.patch_embeddings.projection",), "norm": ("layernorm",),
           "decoder_embed": ("decoder.decoder_embed",), "mask_token": ("decoder.mask_token",),
           "decoder_pos_embed": ("decoder.decoder_pos_embed",), "decoder_norm": ("decoder.decoder_norm",),
           "decoder_pred": ("decoder.decoder_pred",)},
    "mmpretrain": {"cls_token": ("backbone.cls_token",), "pos_embed": ("backbone.pos_embed",),
                   "patch_embed.proj": ("backbone.patch_embed.projection",), "norm": ("backbone.ln1",),
                   "fc_norm": ("backbone.ln2",), "head": ("head.layers.head",),
                   "head.0": ("neck.bn",), "head.1": ("head.fc",),
                   "decoder_embed": ("neck.decoder_embed",), "mask_token": ("neck.mask_token",),
                   "decoder_pos_embed": ("neck.decoder_pos_embed",), "decoder_norm": ("neck.ln1", "neck.decoder_norm"),
                   "decoder_pred": ("neck.decoder_pred",)},
}


def _split(key: str) -> tuple[str, str]:
    """``'blocks.0.norm1.weight' -> ('blocks.0.norm1', 'weight')``; tokens have no parameter part."""
    path, _, last = key.rpartition(".")
    return (path, last) if path and last in _PARAMS else (key, "")


def _join(path: str, param: str) -> str:
    return f"{path}.{param}" if param else path


# -------------------------------------------------------------------------------------- detect
_HF_PATTERN = re.compile(r"^(vit\.)?(embeddings\.patch_embeddings\.|encoder\.layer\.\d|layers\.\d+\.layernorm_before)"
                         r"|^decoder\.decoder_(embed|layers|pred)")
_MM_PATTERN = re.compile(r"^(backbone\.)?(patch_embed\.projection\.|layers\.\d+\.(ln1|ffn)\.)|^neck\.decoder_embed\.")


def detect_format(sd: Mapping[str, Any], label: str = "state_dict") -> str:
    """``'official'`` (timm files included: same names), ``'hf'`` or ``'mmpretrain'``, from the keys alone."""
    keys = list(sd)
    if any(k.startswith(("patch_embed.proj.", "blocks.", "backbone.patch_embed.proj.")) for k in keys):
        return "official"
    if any(_HF_PATTERN.match(k) for k in keys):
        return "hf"
    if any(_MM_PATTERN.match(k) for k in keys):
        return "mmpretrain"
    hint = ""
    if any(k.startswith(("conv1.", "layer1.", "bn1.", "backbone.conv1.", "backbone.layer1.")) for k in keys):
        hint = " (it looks like a ResNet)"
    elif any(k.startswith(("stages.", "features.", "layers.", "backbone.stages.", "backbone.layers.")) for k in keys):
        hint = " (it looks like a hierarchical / non-ViT model)"
    raise CheckpointFormatError(
        f"{label} is not a ViT/MAE checkpoint in any known layout{hint}: no official/timm (patch_embed.proj, "
        f"blocks.*), Hugging Face ViTMAE (embeddings.patch_embeddings, encoder.layer.*) or mmpretrain "
        f"(backbone.patch_embed.projection, backbone.layers.*) keys; first keys: {describe_keys(keys)}")


# ------------------------------------------------------------------------------------- import
def _reverse_tables(fmt: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    top = {spelling: off for off, spellings in _TOP[fmt].items() for spelling in spellings}
    parts = {spelling: off for off, spellings in _BLOCK_PARTS[fmt].items() for spelling in spellings}
    lists = {spelling: off for off, spellings in _BLOCK_LISTS[fmt].items() for spelling in spellings}
    return top, parts, lists


def _block_key(path: str, lists: dict[str, str]) -> tuple[str, int, str] | None:
    """``'encoder.layer.3.output.dense' -> ('blocks', 3, 'output.dense')`` for a block list of the format."""
    for spelling, off in lists.items():
        m = re.match(rf"^{re.escape(spelling)}\.(\d+)\.(.+)$", path)
        if m:
            return off, int(m.group(1)), m.group(2)
    return None


def _import_foreign(sd: Mapping[str, torch.Tensor], fmt: str, label: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an ``hf`` / ``mmpretrain`` state_dict to official names; returns (state_dict, dropped keys)."""
    sd = dict(sd)
    if fmt == "hf" and any(k.startswith("vit.") for k in sd):  # ViTMAEForPreTraining: the encoder sits under vit.
        sd = {k[len("vit."):] if k.startswith("vit.") else k: v for k, v in sd.items()}
    if fmt == "mmpretrain" and not any(k.startswith("backbone.") for k in sd):  # a bare MAEViT backbone
        sd = {k if k.startswith(("neck.", "head.")) else f"backbone.{k}": v for k, v in sd.items()}
    top, parts, lists = _reverse_tables(fmt)
    network = ("embeddings.", "encoder.", "layers.", "layernorm.", "decoder.") if fmt == "hf" else ("backbone.",)
    if fmt == "mmpretrain" and "neck.decoder_embed.weight" in sd:
        network += ("neck.",)  # the MAE decoder: every neck key must map
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, int, str], dict[int, torch.Tensor]] = {}
    unknown, dropped = [], []
    for key, value in sd.items():
        path, param = _split(key)
        if path in top:
            out[_join(top[path], param)] = value
            continue
        blk = _block_key(path, lists)
        if blk is not None:
            off_list, i, part = blk
            if part in parts:
                out[_join(f"{off_list}.{i}.{parts[part]}", param)] = value
                continue
            if fmt == "hf":
                hit = [(spellings.index(part)) for spellings in _HF_QKV if part in spellings]
                if hit:
                    qkv.setdefault((off_list, i, param), {})[hit[0]] = value
                    continue
        (unknown if key.startswith(network) else dropped).append(key)
    for (off_list, i, param), pieces in sorted(qkv.items()):
        if sorted(pieces) != [0, 1, 2]:
            raise CheckpointFormatError(f"{label}: block {i} of {off_list} has only {len(pieces)} of query / key / value "
                                        f"{param or 'tensors'}")
        out[_join(f"{off_list}.{i}.attn.qkv", param)] = torch.cat([pieces[0], pieces[1], pieces[2]], dim=0)
    if unknown:
        raise CheckpointFormatError(
            f"{label}: {len(unknown)} key(s) of its {fmt} network have no counterpart in the official MAE "
            f"layout (another architecture, e.g. relative position bias or layer scale?): {describe_keys(unknown, 12)}")
    return out, sorted(dropped)


def to_official(sd: Mapping[str, torch.Tensor], fmt: str | None = None, label: str = "state_dict"
                ) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """(state_dict with official names, the detected format, dropped keys) of a state_dict in any format."""
    fmt = fmt or detect_format(sd, label)
    if fmt in ("official", "timm"):
        sd = dict(sd)
        if "backbone.patch_embed.proj.weight" in sd:  # an mmdet / mmseg model around our backbone
            dropped = sorted(k for k in sd if not k.startswith("backbone."))
            return {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}, "official", dropped
        return sd, "official", []
    if fmt not in _TOP:
        raise CheckpointFormatError(f"unknown checkpoint format {fmt!r}; choose one of {FORMATS}")
    out, dropped = _import_foreign(sd, fmt, label)
    return out, fmt, dropped


# ----------------------------------------------------------------------------------- reading
def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise CheckpointError(f"{path} is a safetensors file: install safetensors to read it") from e
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted copy?")
    try:
        return dict(load_file(str(path)))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error kinds for bad files
        raise CheckpointError(f"cannot read safetensors file {path} ({path.stat().st_size} bytes): truncated or "
                              f"corrupt ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e


def _load_weights_file(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    return load_checkpoint(path)


def _read_hf_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    meta: dict[str, Any] = {}
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        try:
            meta["hf_config"] = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e
    for name in HF_WEIGHTS:
        if (folder / name).is_file():
            return extract_state_dict(_load_weights_file(folder / name), str(folder / name)), meta
    for name in HF_INDEXES:
        index_path = folder / name
        if index_path.is_file():
            try:
                shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as e:
                raise CheckpointError(f"{index_path}: not a weight index (needs a 'weight_map'): {e}") from e
            sd: dict[str, torch.Tensor] = {}
            for shard in shards:
                sd.update(extract_state_dict(_load_weights_file(folder / shard), str(folder / shard)))
            return sd, meta
    present = sorted(p.name for p in folder.iterdir())[:10]
    raise CheckpointError(f"{folder} is a folder without model weights: expected one of {', '.join(HF_WEIGHTS + HF_INDEXES)} "
                          f"(a Hugging Face model folder); found {present}")


def source_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a checkpoint source of :func:`read_checkpoint`, judged without loading it (a file's
    first bytes: :func:`mae.engine.checkpoint.checkpoint_problem`; a folder's weight files); None when it can."""
    from mae.engine.checkpoint import checkpoint_problem
    path = Path(path)
    if path.is_dir():
        if any((path / name).is_file() for name in HF_WEIGHTS + HF_INDEXES):
            return None
        present = sorted(p.name for p in path.iterdir())[:10]
        return (f"{path} is a folder without model weights: expected one of {', '.join(HF_WEIGHTS + HF_INDEXES)} "
                f"(a Hugging Face model folder); found {present}")
    return checkpoint_problem(path)


def read_checkpoint(source: Source) -> Checkpoint:
    """Read a checkpoint of any format into official names (the one loader behind every ``--finetune``,
    ``--init``, ``--ckpt`` and figure): a ``.pth`` / ``.bin`` / ``.safetensors`` file, a Hugging Face
    model folder, a checkpoint dict or a bare state_dict. Wrappers (``model``, ``state_dict``,
    ``module``; DDP's ``module.`` prefix) are removed; the format is detected from the keys."""
    if isinstance(source, (str, Path)):
        label = str(source)
        if Path(source).is_dir():
            raw, meta = _read_hf_folder(Path(source))
            wrapped = False
        else:
            obj = _load_weights_file(Path(source))
            raw, meta, wrapped = _unwrap(obj, label)
    elif isinstance(source, Mapping):
        label = "state_dict"
        raw, meta, wrapped = _unwrap(dict(source), label)
    else:
        raise CheckpointFormatError(f"expected a checkpoint path or a state_dict, got {type(source).__name__}")
    sd, fmt, dropped = to_official(raw, label=label)
    if fmt == "official" and not wrapped and not dropped and not any(k.startswith(DECODER_PREFIXES) for k in sd):
        fmt = "timm"  # a bare encoder / classifier state_dict: timm's own files look like this
    return Checkpoint(sd, meta, fmt, label, dropped)


def _unwrap(obj: dict[str, Any], label: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], bool]:
    """(state_dict, the other top-level entries, whether the state_dict sat under a wrapper key)."""
    wrapped = any(isinstance(obj.get(k), dict) for k in ("model", "state_dict", "module"))
    meta = {k: v for k, v in obj.items() if k not in ("model", "state_dict", "module")
            and not isinstance(v, torch.Tensor)} if wrapped else {}
    return extract_state_dict(obj, label), meta, wrapped


# ------------------------------------------------------------------------------------- export
def _refuse(fmt: str, sd: Mapping[str, torch.Tensor]) -> None:
    ours = sorted(k for k in sd if k.startswith(OURS_ONLY_PREFIXES))
    if ours:
        what = ("an encoder w/ [M] (Table 1c)" if "encoder_mask_token" in sd
                else "a PCA / token reconstruction target (Table 1d)")
        raise CheckpointFormatError(
            f"this MAE has {what} ({describe_keys(ours, 4)}), which the {fmt} layout cannot hold; export its "
            "encoder with --to timm, or keep it --to official")


def export_state_dict(sd: Mapping[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """A state_dict with official names renamed to ``fmt`` (:data:`FORMATS`).

    ``timm`` keeps the encoder (and a classifier's ``fc_norm`` / ``head``) and drops the decoder;
    ``hf`` holds MAE pre-training or encoder checkpoints (no classification head: transformers'
    ViTMAE has none); ``mmpretrain`` holds all the official kinds.
    """
    if fmt not in FORMATS:
        raise CheckpointFormatError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}")
    sd = {k: v.detach() for k, v in sd.items()}
    if fmt == "official":
        return dict(sd)
    linprobe = "head.0.running_mean" in sd or "head.1.weight" in sd
    if fmt == "timm":
        if linprobe:
            raise CheckpointFormatError("a linear-probe classifier (BatchNorm + Linear head) has no timm equivalent; "
                                        "export the pre-trained encoder, or use --to official / mmpretrain")
        return {k: v for k, v in sd.items() if not k.startswith(MAE_ONLY_PREFIXES)}
    _refuse(fmt, sd)
    if fmt == "hf":
        heads = sorted(k for k in sd if k.startswith(HEAD_PREFIXES))
        if heads:
            raise CheckpointFormatError(
                f"transformers' ViTMAE has no classification head ({describe_keys(heads, 4)} in this checkpoint): "
                "export a pre-training or encoder checkpoint, or the classifier with --to timm / official")
    enc_prefix = "vit." if fmt == "hf" and any(k.startswith(DECODER_PREFIXES) for k in sd) else ""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        path, param = _split(key)
        m = re.match(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)$", path)
        if m:
            lst, i, part = m.group(1), m.group(2), m.group(3)
            base = _BLOCK_LISTS[fmt][lst][0]
            base = f"{enc_prefix}{base}" if lst == "blocks" else base
            if fmt == "hf" and part == "attn.qkv":
                for spelling, piece in zip(_HF_QKV[0], value.chunk(3, dim=0)):
                    out[_join(f"{base}.{i}.{spelling}", param)] = piece.clone()
                continue
            if part not in _BLOCK_PARTS[fmt]:
                raise CheckpointFormatError(f"{key}: no {fmt} counterpart for block part {part!r}")
            out[_join(f"{base}.{i}.{_BLOCK_PARTS[fmt][part][0]}", param)] = value
            continue
        if path not in _TOP[fmt]:
            raise CheckpointFormatError(f"{key}: no {fmt} counterpart (not part of an MAE / ViT in the official layout)")
        new = _TOP[fmt][path][0]
        out[_join(f"{enc_prefix}{new}" if not new.startswith("decoder.") else new, param)] = value
    return out


# ------------------------------------------------------------------------- Hugging Face config
def hf_config(sd: Mapping[str, torch.Tensor], info: CheckpointInfo, norm_pix_loss: bool = False,
              mask_ratio: float = 0.75) -> dict[str, Any]:
    """The ``config.json`` of a transformers ViTMAE model for this (official-name) state_dict, whose
    architecture ``info`` describes (its heads included: :meth:`CheckpointInfo.heads` raises without them)."""
    num_heads, decoder_num_heads = info.heads()
    if info.grid is None or not info.cls_token:
        shape = tuple(sd["pos_embed"].shape) if "pos_embed" in sd else None
        raise CheckpointFormatError(f"pos_embed {shape} is not a square grid plus a cls row")
    cfg: dict[str, Any] = {
        "architectures": ["ViTMAEForPreTraining" if info.has_decoder else "ViTMAEModel"], "model_type": "vit_mae",
        "hidden_size": info.embed_dim, "num_hidden_layers": info.depth,
        "num_attention_heads": int(num_heads), "intermediate_size": int(sd["blocks.0.mlp.fc1.weight"].shape[0]),
        "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02, "layer_norm_eps": LN_EPS, "image_size": info.img_size,
        "patch_size": info.patch_size, "num_channels": info.in_chans, "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
        "mask_ratio": mask_ratio, "norm_pix_loss": bool(norm_pix_loss)}
    if info.has_decoder:
        cfg.update(decoder_hidden_size=info.decoder_embed_dim, decoder_num_attention_heads=int(decoder_num_heads),
                   decoder_num_hidden_layers=info.decoder_depth,
                   decoder_intermediate_size=int(sd["decoder_blocks.0.mlp.fc1.weight"].shape[0]))
    for name, heads, width in (("encoder", num_heads, info.embed_dim),
                               ("decoder", decoder_num_heads, info.decoder_embed_dim)):
        if width and width % heads:
            raise CheckpointFormatError(f"{name} width {width} is not divisible by {heads} heads")
    return cfg


# ------------------------------------------------------------------------------------- writing
def _safetensors_bytes(sd: Mapping[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save
    return save({k: v.contiguous().clone() for k, v in sd.items()}, metadata={"format": "pt"})


def _have_safetensors() -> bool:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def _write_weights(sd: Mapping[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        if not _have_safetensors():
            raise CheckpointFormatError(f"{path}: writing .safetensors needs the safetensors package")
        data = _safetensors_bytes(sd)
        return atomic_write(path, lambda f: f.write(data))
    return atomic_write(path, lambda f: torch.save(dict(sd), f))


_KEEP_META = ("config", "config_class", "model_config", "model_config_class", "args", "epoch")


def write_checkpoint(ckpt: Checkpoint, dst: str | Path, fmt: str, *, num_heads: int | None = None,
                     decoder_num_heads: int | None = None, preset: str | None = None,
                     norm_pix_loss: bool | None = None) -> Path:
    """Write ``ckpt`` (official names) to ``dst`` in ``fmt``, atomically (see the module docstring for files).

    Only a Hugging Face folder needs more than the weights: its config.json's head counts (``num_heads``
    / ``decoder_num_heads``, else ``preset``'s, else what :func:`mae.models.inspect.inspect_checkpoint`
    reads) and ``norm_pix_loss`` (else what the file says, else off).
    """
    return _write(ckpt, export_state_dict(ckpt.state_dict, fmt), dst, fmt, num_heads, decoder_num_heads, preset,
                  norm_pix_loss)


def _write(ckpt: Checkpoint, out: dict[str, torch.Tensor], dst: str | Path, fmt: str, num_heads: int | None,
           decoder_num_heads: int | None, preset: str | None, norm_pix_loss: bool | None) -> Path:
    dst = Path(dst)
    is_folder = dst.is_dir() or (dst.suffix == "" and fmt == "hf")
    if is_folder and fmt != "hf":
        raise CheckpointFormatError(f"{dst}: give a file name (only --to hf writes a folder)")
    if dst.suffix == ".safetensors" and fmt in ("official", "mmpretrain"):
        raise CheckpointFormatError(f"{dst}: the {fmt} layout is a wrapped torch file; name it .pth")
    if fmt == "official":
        meta = {k: ckpt.meta[k] for k in _KEEP_META if k in ckpt.meta}
        return _write_weights({"model": out, **meta}, dst)  # type: ignore[dict-item]
    if fmt == "mmpretrain":
        meta = {"converted_from": ckpt.format, "source": ckpt.source}
        if isinstance(ckpt.meta.get("epoch"), int):
            meta["epoch"] = ckpt.meta["epoch"]
        return atomic_write(dst, lambda f: torch.save({"meta": meta, "state_dict": out}, f))
    if fmt == "timm" or not is_folder:
        return _write_weights(out, dst)
    # a Hugging Face model folder: config.json + weights
    try:
        info = ckpt.inspect(preset=preset, num_heads=num_heads, decoder_num_heads=decoder_num_heads)
        ours = ckpt.meta.get("config") if isinstance(ckpt.meta.get("config"), dict) else {}
        cfg = hf_config(ckpt.state_dict, info, norm_pix_loss=bool(ckpt.norm_pix if norm_pix_loss is None
                                                                    else norm_pix_loss),
                        mask_ratio=float(ours.get("mask_ratio", 0.75)))
    except CheckpointFormatError:
        raise
    except CheckpointError as e:  # heads the file does not say: an error of this conversion
        raise CheckpointFormatError(str(e)) from e
    dst.mkdir(parents=True, exist_ok=True)
    weights = dst / (HF_WEIGHTS[0] if _have_safetensors() else HF_WEIGHTS[1])
    _write_weights(out, weights)
    for stale in HF_WEIGHTS:  # a second weights file left from an earlier export would shadow this one
        if stale != weights.name and (dst / stale).exists():
            (dst / stale).unlink()
    text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
    atomic_write(dst / "config.json", lambda f: f.write(text.encode()))
    return dst


@dataclass
class ConvertReport:
    """What :func:`convert` did."""

    src: str
    dst: str
    src_format: str
    dst_format: str
    tensors: int
    dropped: list[str]

    def summary(self) -> str:
        s = f"{self.src} ({self.src_format}) -> {self.dst} ({self.dst_format}): {self.tensors} tensors"
        return s + (f"; dropped {len(self.dropped)} ({describe_keys(self.dropped, 4)})" if self.dropped else "")


def convert(src: Source, dst: str | Path, to: str, *, preset: str | None = None, num_heads: int | None = None,
            decoder_num_heads: int | None = None, norm_pix_loss: bool | None = None) -> ConvertReport:
    """Read ``src`` in any format and write it to ``dst`` in format ``to`` (the ``mae convert`` command)."""
    if to not in FORMATS:
        raise CheckpointFormatError(f"unknown target format {to!r}; choose one of {', '.join(FORMATS)}")
    ckpt = read_checkpoint(src)
    exported = export_state_dict(ckpt.state_dict, to)
    written = _write(ckpt, exported, dst, to, num_heads, decoder_num_heads, preset, norm_pix_loss)
    dropped = ckpt.dropped + (sorted(k for k in ckpt.state_dict if k.startswith(MAE_ONLY_PREFIXES))
                              if to == "timm" else [])
    return ConvertReport(ckpt.source, str(written), ckpt.format, to, len(exported), dropped)
