"""The grid's leaf module: its error type and run-directory constants (imported by everything else)."""
from __future__ import annotations

from pathlib import Path

from mae.data.builder import DataError, parse_spec

METRICS_FILE = "metrics.json"
LAST_CHECKPOINT = "checkpoint-last.pth"
LAUNCHERS = ("local", "torchrun", "slurm")
MAE_PROTOCOLS = ("pretrain", "finetune", "linprobe", "partial", "readout", "tokenizer")
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
    elif data and check:
        try:  # mae.data's own spec parser, not a second one
            parse_spec(data)
        except DataError as e:
            raise GridError(f"--data {data}: {e}") from None
    return data
