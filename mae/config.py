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
from typing import Any, ClassVar, TypeVar

import yaml

T = TypeVar("T")
SCALES = ("smoke", "cpu", "mini", "paper")
#: --amp values (mae.engine.loop.resolve_amp)
AMP_MODES = ("auto", "bf16", "fp16", "none")


def require(ok: bool, name: str, value: Any, expected: str) -> None:
    """Refuse a field outside its range in one line naming the flag: ``--NAME VALUE: expected ...``."""
    if not ok:
        raise ValueError(f"--{name} {value}: {expected}")


def require_dataset(name: str, spec: str | None) -> None:
    """A dataset spec (``--data``, ``--val_data``, ...) that names an embedded set or an existing folder."""
    if spec is None:
        return
    from mae.data.builder import DataError, parse_spec
    try:
        parse_spec(spec)
    except DataError as e:
        raise ValueError(f"--{name}: {e}") from None


def require_checkpoint(name: str, path: str | None) -> None:
    """A checkpoint flag (``--finetune``, ``--init``, ``--resume``, ...) naming a file that can be one (read
    from its first bytes: :func:`mae.models.formats.source_problem`) or a Hugging Face model folder."""
    if not path:
        return
    from mae.models.formats import source_problem
    problem = source_problem(path)
    if problem is not None:
        raise ValueError(f"--{name}: {problem}")


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
    threads: int | None = opt(None, "CPU threads of torch, fixed for the run (default: OMP_NUM_THREADS if set, else "
                                    "adaptive: all cores, cut to one while other work holds the cores so that runs "
                                    "sharing them do not collapse, each change a log.txt record). Logged in log.txt "
                                    "and metrics.json (runtime); not part of the recipe (float sums may differ in "
                                    "the last bits: bitwise resume needs a fixed count)")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir)

    #: the smallest --epochs this protocol accepts (a readout trains nothing: 0)
    MIN_EPOCHS: ClassVar[int] = 1

    def validate(self) -> None:
        """Check every field before anything is created or started (``mae.cli.parse_command``): a ValueError
        naming the flag, in one line. Files and folders named by flags must exist and be of the right kind.
        Protocols extend it with their own fields."""
        for name in ("img_size", "batch_size", "accum_iter", "save_every", "log_every", "eval_every"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        for name in ("num_workers", "ckpt_every_iters", "keep_last"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        require(self.epochs >= self.MIN_EPOCHS, "epochs", self.epochs, f"must be >= {self.MIN_EPOCHS}")
        for name in ("recipe_batch", "max_iters", "threads"):
            v = getattr(self, name)
            require(v is None or v >= 1, name, v, "must be >= 1 (or none)")
        require(self.blr > 0, "blr", self.blr, "the base learning rate must be > 0")
        require(self.lr is None or self.lr > 0, "lr", self.lr, "the learning rate must be > 0 (or none: from --blr)")
        for name in ("min_lr", "warmup_epochs", "weight_decay"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        require(all(0 <= b < 1 for b in self.betas), "betas", " ".join(map(str, self.betas)), "each must be in [0, 1)")
        require(self.clip_grad is None or self.clip_grad > 0, "clip_grad", self.clip_grad, "must be > 0 (or none)")
        require(0 <= self.seed < 2**32, "seed", self.seed, "must be in [0, 2**32)")
        require(self.amp in AMP_MODES, "amp", self.amp, f"must be one of {', '.join(AMP_MODES)}")
        from mae.engine.speed import COMPILE_MODES, SETTINGS
        require(self.fast_path in SETTINGS, "fast_path", self.fast_path, f"must be one of {', '.join(SETTINGS)}")
        require(self.compile_mode in COMPILE_MODES, "compile_mode", self.compile_mode,
                f"must be one of {', '.join(COMPILE_MODES)}")
        if self.device != "auto":
            import torch
            try:
                torch.device(self.device)
            except RuntimeError:
                require(False, "device", self.device, "not a device name: use auto, cpu, cuda or cuda:N")
        require_dataset("data", self.data)
        require_dataset("val_data", self.val_data)
        if self.resume not in (None, "", "auto"):
            require_checkpoint("resume", self.resume)


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
