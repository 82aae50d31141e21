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


#: what a loader of ours reads, said in every refusal
EXPECTED = ("a torch.save file (a zip archive, or the pre-1.6 pickle format) or a .safetensors file, holding a model "
            "state_dict (bare or under 'model' / 'state_dict')")
_ZIP_MAGIC = b"PK\x03\x04"
#: torch.save's format before torch 1.6: a pickle whose first object is this magic number (little-endian long)
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_OTHER_FORMATS = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                  (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"\x93NUMPY", "a NumPy .npy array"),
                  (b"\x7fELF", "an executable (ELF)"), (b"\x89HDF", "an HDF5 file (Keras / h5py)"))


def _describe(head: bytes, size: int) -> str:
    """Words for a file that is not a checkpoint, from its first bytes."""
    for magic, what in _OTHER_FORMATS:
        if head.startswith(magic):
            return f"{what} ({size} bytes)"
    text = head.decode("utf-8", errors="ignore")
    if len(text.encode()) < len(head) - 3 or not all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"a binary file of {size} bytes, neither a zip archive nor a pickle"
    first = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f"a text file of {size} bytes" + (f" starting {first!r}" if first else "")


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a checkpoint file of ours, from its size and first bytes only (no unpickling);
    None when it looks like one: a torch.save zip archive (holding ``data.pkl``), torch.save's pre-1.6
    pickle format, or a ``.safetensors`` file."""
    path = Path(path)
    if not path.exists():
        return f"{path}: no such file"
    if not path.is_file():
        return f"{path} is not a file"
    size = path.stat().st_size
    if size == 0:
        return f"{path} is empty (0 bytes): an interrupted copy?"
    with path.open("rb") as f:
        head = f.read(32)
    if head.startswith(_ZIP_MAGIC):
        import zipfile
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            return f"{path} is a truncated or corrupt zip archive ({size} bytes: {e}); expected {EXPECTED}"
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return (f"{path} is a zip archive without the data.pkl that torch.save writes (a NumPy .npz or another "
                    f"archive; it holds {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}); expected {EXPECTED}")
        return None
    is_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    if is_pickle and _LEGACY_MAGIC in head:  # torch.save's format before 1.6
        return None
    if is_pickle:
        return f"{path} is a Python pickle ({size} bytes) that torch.save did not write; expected {EXPECTED}"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:  # safetensors header
        if path.suffix == ".safetensors":
            return None
        return f"{path} is a safetensors file: give it the .safetensors suffix to load it as one"
    return f"{path} is not a PyTorch checkpoint: it is {_describe(head, size)}; expected {EXPECTED}"


def _load_failure(path: Path, e: Exception) -> str:
    """Our words for a torch.load failure; torch's own advice (to load with code execution allowed) is dropped."""
    size = path.stat().st_size
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    if found:
        return (f"{path} ({size} bytes) holds a Python object ({found.group(1)}) besides tensors and plain containers, "
                f"or is truncated: checkpoints are read without running code they contain, so it is refused; "
                f"expected {EXPECTED} (re-save the model's state_dict with torch.save)")
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    detail = f" ({type(e).__name__}: {first})" if first and "weights_only" not in first else ""
    return f"cannot read checkpoint {path} ({size} bytes): the file is truncated or corrupt{detail}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint dict with a clear error, in our words, for missing, truncated or foreign files.

    The file is unpickled with ``weights_only=True`` (no code from the file runs); a file that is not a
    checkpoint is named for what it is (:func:`checkpoint_problem`), never with torch's advice to allow code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise CheckpointError(problem)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for bad files
        raise CheckpointError(_load_failure(path, e)) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict (a state_dict, or one "
                              "holding it under 'model' / 'state_dict')")
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
def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's random."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
