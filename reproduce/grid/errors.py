"""The grid's leaf module: its error type and run-directory constants (imported by everything else)."""
from __future__ import annotations

from pathlib import Path

METRICS_FILE = "metrics.json"
LAST_CHECKPOINT = "checkpoint-last.pth"
LAUNCHERS = ("local", "torchrun", "slurm")
MAE_PROTOCOLS = ("pretrain", "finetune", "linprobe", "partial", "readout")
DEFAULT_WORK_DIR = "outputs/reproduce"


class GridError(RuntimeError):
    """A grid cannot be planned or run as asked (bad --only, missing data, unfinished dependency...)."""


def resolve_data(scale: str, data: str | None, check: bool = True) -> str | None:
    """``--data`` for a scale: optional at smoke/mini (their embedded default), required at paper."""
    if scale == "paper":
        if not data:
            raise GridError("--scale paper needs --data /path/to/imagenet (ImageNet-1K with train/ and val/); "
                            "the paper's recipes are not run on stand-in data")
        if check and not Path(data).expanduser().is_dir():
            raise GridError(f"--data {data}: no such directory (expected ImageNet-1K with train/ and val/)")
    elif data and check and not (data in ("embedded", "digits") or data.startswith(("synthetic", "photos"))):
        if not Path(data).expanduser().is_dir():
            raise GridError(f"--data {data}: neither an embedded set (synthetic[:N], digits, photos[:N]) nor a folder")
    return data
