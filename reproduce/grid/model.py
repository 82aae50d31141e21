"""The grid's data model: a table is :class:`Cell` s, a cell a chain of :class:`Stage` s (protocol configs)."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reproduce.grid.errors import LAST_CHECKPOINT


@dataclass(frozen=True)
class Ref:
    """A file of another stage's run directory: ``stage`` of ``cell`` (None = the same cell)."""

    stage: str
    cell: str | None = None
    file: str = LAST_CHECKPOINT


@dataclass
class Stage:
    """One protocol run of a cell. ``inputs`` maps a config field to the file of another stage."""

    name: str
    protocol: str  # pretrain | finetune | linprobe | partial, or a module path with Config/run (a tokenizer)
    config: Any
    inputs: dict[str, Ref] = field(default_factory=dict)
    local_only: bool = False  # small single-process stages: run in this process even with --launcher torchrun
    #: a control's recipe as a function of its cell (the stages it controls): applied again after ``--set``
    #: (reproduce/grid/plan.py ``derive_controls``), so that the control follows the recipe it is compared with
    derive: Callable[["Cell"], Any] | None = field(default=None, repr=False, compare=False)
    #: the stage each input reads, {field: (cell, stage)}: linked by ``check_grid`` so that a stage is current
    #: only while the stages it reads are (reproduce/grid/store.py ``check_identity``)
    upstream: dict[str, tuple[Any, Any]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.config):
            raise TypeError(f"stage {self.name!r}: config must be a protocol Config dataclass, got "
                            f"{type(self.config).__name__}")
        names = {f.name for f in dataclasses.fields(self.config)}
        bad = sorted(set(self.inputs) - names)
        if bad:
            raise ValueError(f"stage {self.name!r}: inputs {bad} are not fields of {type(self.config).__name__}")


@dataclass
class Cell:
    """One setting of a table: its key (the paper's key column), stages, and extra CSV columns."""

    name: str
    key: dict[str, Any]
    stages: list[Stage]
    info: dict[str, Any] = field(default_factory=dict)  # e.g. the setting actually used at this scale
    report: bool = True  # False for shared helper cells (a tokenizer, a shared pre-training)
    reads: Ref | None = None  # a cell with no stages of its own reports this stage of another cell
    seeds: tuple[int, ...] | None = None  # the cell's own seeds (the shared baseline: all of the scale's)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"bad cell name {self.name!r} (a folder name without '/')")
        names = [s.name for s in self.stages]
        if self.reads is not None and (self.stages or not self.reads.cell):
            raise ValueError(f"cell {self.name!r}: a cell that reads another cell's stage has no stages itself")
        if len(set(names)) != len(names):
            raise ValueError(f"cell {self.name!r}: duplicate stage names {names}")

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"cell {self.name!r} has no stage {name!r}; stages: {[s.name for s in self.stages]}")


@dataclass
class StageResult:
    """What a stage left: ``status`` is done (finished before), ran, resumed, failed, planned, submitted
    or missing (``--collect`` without a finished run); ``metrics`` is its metrics.json."""

    cell: str
    stage: str
    run_dir: Path
    status: str
    metrics: dict[str, Any] | None = None
    seconds: float = 0.0
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.metrics is not None


@dataclass
class GridResult:
    """Every stage's result of one grid run, addressable by (cell, stage)."""

    table: str
    scale: str
    root: Path
    cells: list[Cell]
    stages: dict[tuple[str, str], StageResult] = field(default_factory=dict)

    @property
    def failed(self) -> list[StageResult]:
        return [r for r in self.stages.values() if r.status == "failed"]

    @property
    def complete(self) -> bool:
        return all(r.finished for r in self.stages.values())

    def get(self, cell: str, stage: str) -> StageResult | None:
        return self.stages.get((cell, stage))

    def reported(self, cell: Cell, stage: str | None = None) -> StageResult | None:
        """The result a cell reports: its own ``stage`` (default: its first) or the stage it reads."""
        if cell.reads is not None:
            return self.get(cell.reads.cell, cell.reads.stage)
        return self.get(cell.name, stage or cell.stages[0].name)


@dataclass
class SlurmOptions:
    """submitit parameters for ``--launcher slurm`` (one job per cell)."""

    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int = 10
    timeout_min: int = 72 * 60
    mem_gb: int | None = None
    account: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    wait: bool = True

