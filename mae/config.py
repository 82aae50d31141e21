"""Configs as data: dataclasses for every protocol, named presets per scale, and the helpers that
turn them into command-line flags and back (so ``--help`` documents every field).

A protocol module defines ``Config`` (a subclass of :class:`TrainConfig`), ``PRESETS`` (name ->
config) and ``run(cfg) -> dict``; ``mae.cli`` builds its sub-command from those alone.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
SCALES = ("smoke", "cpu", "mini", "paper")


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help text (shown by ``--help``)."""
    if isinstance(default, (list, dict, tuple)) and not isinstance(default, tuple):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Fields shared by every protocol: data, optimisation schedule, run directory, checkpoints."""

    output_dir: str = opt("outputs/run", "run directory: config, logs, checkpoints, figures")
    data: str | None = opt(None, "dataset: a folder (ImageNet layout) or embedded | synthetic[:N] | digits | photos[:N]")
    val_data: str | None = opt(None, "validation dataset spec (default: the val split of --data)")
    img_size: int = opt(224, "input resolution")
    epochs: int = opt(1, "epochs to train")
    batch_size: int = opt(64, "batch size per process (effective = batch_size * accum_iter * world size)")
    accum_iter: int = opt(1, "gradient accumulation steps")
    recipe_batch: int | None = opt(None, "the recipe's effective batch (paper presets: the paper's); a run at another "
                                         "effective batch warns, since lr = blr * effective batch / 256 moves with it")
    blr: float = opt(1e-3, "base learning rate: lr = blr * effective batch / 256")
    lr: float | None = opt(None, "absolute learning rate (overrides --blr)")
    min_lr: float = opt(0.0, "lower bound of the cosine schedule")
    warmup_epochs: float = opt(0.0, "linear warm-up epochs (per-iteration schedule)")
    weight_decay: float = opt(0.05, "weight decay (not applied to biases, norms, tokens)")
    betas: tuple[float, float] = opt((0.9, 0.999), "AdamW betas")
    clip_grad: float | None = opt(None, "clip gradient norm to this value")
    seed: int = opt(0, "random seed (data order, augmentation, masks, init)")
    num_workers: int = opt(2, "data loader worker processes")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N")
    amp: str = opt("auto", "mixed precision: auto (bf16 on GPU, none on CPU) | bf16 | fp16 | none")
    resume: str | None = opt(None, "checkpoint to resume from, or 'auto' for <output_dir>/checkpoint-last.pth")
    save_every: int = opt(1, "keep a numbered checkpoint every N epochs (checkpoint-last.pth is always written)")
    ckpt_every_iters: int = opt(0, "also write checkpoint-last.pth every N optimizer steps (0 = epoch ends only)")
    keep_last: int = opt(2, "numbered checkpoints to keep (0 = all)")
    log_every: int = opt(10, "log training metrics every N iterations")
    eval_every: int = opt(1, "evaluate every N epochs (and after the last)")
    max_iters: int | None = opt(None, "stop after this many iterations in total (smoke runs)")
    progress: bool = opt(True, "show tqdm progress bars")
    tensorboard: bool = opt(True, "write TensorBoard event files")
    # --- GPU fast path hook (mae.engine.speed, bench/README.md); added by the bench helper ---
    fast_path: str = opt("auto", "GPU speed path: auto (torch.compile + fused AdamW on CUDA; nothing on CPU) "
                                 "| on (also on CPU) | off")
    compile_mode: str = opt("default", "torch.compile mode of the fast path: default | max-autotune-no-cudagraphs")
    # --- CPU thread policy (mae.engine.threads); not part of the recipe ---
    threads: int | None = opt(None, "CPU threads of torch (default: OMP_NUM_THREADS if set, else all cores, cut to "
                                    "the container's CPU quota); OpenMP threads spin only briefly before sleeping, so "
                                    "runs sharing the cores do not collapse. Logged in log.txt and metrics.json "
                                    "(runtime); not part of the recipe (float sums may differ in the last bits)")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data dict of a config (tuples become lists), for checkpoints and JSON/YAML."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type[T], data: dict[str, Any], strict: bool = True) -> T:
    """Config of ``cls`` from a dict; unknown keys raise (``strict``) or are dropped.

    A class may map retired field names to their replacement (``RENAMED_FIELDS``: old name -> function of
    the old value giving new fields), so config files of older runs keep loading.
    """
    for old, convert in getattr(cls, "RENAMED_FIELDS", {}).items():
        if old in data:
            data = dict(data)
            data.update(convert(data.pop(old)))
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown and strict:
        raise ValueError(f"unknown {cls.__name__} field(s): {unknown}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            continue
        if isinstance(v, list) and typing.get_origin(hints[k]) is tuple:
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


def load_config_file(cls: type[T], path: str | Path, base: T | None = None) -> T:
    """Overlay a YAML/JSON file's keys onto ``base`` (or the class defaults)."""
    text = Path(path).read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of field: value")
    merged = {**(to_dict(base) if base is not None else {}), **data}
    return from_dict(cls, merged)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    from mae.atomic import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
