"""Checkpoints for every protocol: atomic writes, keep-last-N, resume state, checked loading.

File layout (official-compatible): ``torch.save({'model': state_dict, 'optimizer': ..., 'scaler': ...,
'epoch': ..., ...})``. ``model`` always holds the unwrapped model's state_dict with the official key
names, so a released file loads here and our files load in the official code. Beside the protocol's
config (``config``), a checkpoint records the model's own config (``model_config``: the MAEConfig /
ViTConfig / TokenizerConfig it was built from, :func:`model_config_record`), so a loader builds the
model without knowing the protocol; files written before it lack the entry and load as before.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from mae.atomic import atomic_write, current_umask  # noqa: F401 (re-exported: one writer)

LAST = "checkpoint-last.pth"
BEST = "checkpoint-best.pth"
_NUMBERED = re.compile(r"^checkpoint-(\d+)\.pth$")

# Official checkpoints store their argparse Namespace under 'args'; allow it in weights-only loading.
torch.serialization.add_safe_globals([argparse.Namespace])


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, truncated or of the wrong kind."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` atomically: a temp file in the same folder, fsync, then rename over ``path``."""
    return atomic_write(path, lambda f: torch.save(state, f))


def model_config_record(model: nn.Module) -> dict[str, Any]:
    """``{'model_config': {...}, 'model_config_class': name}`` of a model built from a config dataclass (its
    ``config`` attribute), else ``{}``: the entries a checkpoint keeps beside the state_dict."""
    cfg = getattr(model, "config", None)
    if cfg is None or not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        return {}
    return {"model_config": dataclasses.asdict(cfg), "model_config_class": type(cfg).__name__}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint dict with a clear error for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted copy?")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for bad files
        raise CheckpointError(
            f"cannot read checkpoint {path} ({path.stat().st_size} bytes): the file is truncated, corrupt "
            f"or not a PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def extract_state_dict(obj: dict[str, Any], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model state_dict inside a checkpoint: ``obj['model']`` (official), ``obj['state_dict']``, or a bare one."""
    for key in ("model", "state_dict", "module"):
        if key in obj and isinstance(obj[key], dict):
            sd = obj[key]
            break
    else:
        sd = obj
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{source} holds no model state_dict (top-level keys: {sorted(obj)[:10]})")
    if all(k.startswith("module.") for k in sd):  # saved from a DDP-wrapped model
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def state_dict_mismatch(module: nn.Module, sd: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unexpected keys, 'key: checkpoint shape vs model shape' lines)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(sd)) if sd[k].shape != own[k].shape]
    return missing, unexpected, shapes


def describe_mismatch(missing: list[str], unexpected: list[str], shapes: list[str], limit: int = 12) -> str:
    parts = []
    for title, items in (("missing in checkpoint", missing), ("unexpected in checkpoint", unexpected),
                         ("shape mismatch", shapes)):
        if items:
            more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{title} ({len(items)}): " + ", ".join(items[:limit]) + more)
    return "; ".join(parts)


def load_state_dict_checked(module: nn.Module, sd: dict[str, torch.Tensor], strict: bool = True,
                            source: str = "checkpoint") -> tuple[list[str], list[str]]:
    """``load_state_dict`` that names every missing/unexpected key and shape mismatch on failure.

    Shape mismatches always raise; with ``strict=False`` missing/unexpected keys are returned instead.
    """
    missing, unexpected, shapes = state_dict_mismatch(module, sd)
    if shapes or (strict and (missing or unexpected)):
        raise CheckpointError(f"{source} does not fit {type(module).__name__}: "
                              + describe_mismatch(missing, unexpected, shapes))
    module.load_state_dict(sd, strict=False)
    return missing, unexpected


# ------------------------------------------------------------------ RNG state
def rng_state() -> dict[str, Any]:
    """Every RNG a run touches, in weights-only-loadable form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _py_state_to_tensor(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["key"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    random.setstate(_py_state_from_tensor(state["python"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_tensor(st: tuple) -> dict[str, Any]:
    version, internal, gauss = st
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss if gauss is not None else float("nan")}


def _py_state_from_tensor(d: dict[str, Any]) -> tuple:
    gauss = d["gauss"]
    gauss = None if gauss != gauss else gauss  # NaN encodes None
    return (d["version"], tuple(int(x) for x in d["internal"].tolist()), gauss)


# ------------------------------------------------------------ run directories
def numbered_checkpoints(run_dir: str | Path) -> list[Path]:
    """``checkpoint-<epoch>.pth`` files of a run, oldest first."""
    return [p for _, p in _numbered(run_dir)]


def _numbered(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of each ``checkpoint-<epoch>.pth``, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("checkpoint-*.pth") if (m := _NUMBERED.match(p.name))]
    return sorted(found)


def prune_checkpoints(run_dir: str | Path, keep_last: int, upto: int | None = None) -> list[Path]:
    """Delete all but the newest ``keep_last`` numbered checkpoints (0 keeps all). ``upto``: the epoch just
    saved; checkpoints numbered above it (left by a run resumed from an earlier one) are neither counted
    nor deleted, so a rollback never prunes its own new checkpoints in their favour."""
    if keep_last <= 0:
        return []
    found = [p for epoch, p in _numbered(run_dir) if upto is None or epoch <= upto]
    old = found[:-keep_last]
    for p in old:
        p.unlink(missing_ok=True)
    return old


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """``'auto'`` -> the run's checkpoint-last.pth if present; a path must exist."""
    if not resume:
        return None
    if resume == "auto":
        p = Path(run_dir) / LAST
        return p if p.is_file() else None
    p = Path(resume)
    if not p.is_file():
        raise CheckpointError(f"--resume {resume}: no such checkpoint file")
    return p
