"""Run directories: never overwrite a previous run, never mix two runs, resume with the run's own recipe.

- A folder holds a *previous run* when it has ``checkpoint-last.pth``, ``metrics.json`` or ``log.txt``
  (``config.yaml`` and the grid's ``.lock`` alone do not count: the grid writes them before a fresh
  run). ``mae <protocol>`` refuses to start a new run there (:func:`refuse_previous_run`) unless told
  ``--resume auto`` (continue) or ``--overwrite`` (:func:`clear_run`: start over without old files).
- A resume takes its recipe from the run's ``config.yaml`` (:func:`saved_config_path`), not from a preset;
  the run keeps that file unless a recipe field changed (:func:`write_config`).
- :func:`resume_command` is the complete command that continues a stopped run.
- One process at a time runs in a folder (:func:`run_lock`); ``--resume auto`` where a previous run left
  files but no checkpoint is refused (:func:`refuse_resume_without_checkpoint`).
"""
from __future__ import annotations

import contextlib
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from mae.config import save_config, to_dict

CONFIG = "config.yaml"
#: files that say a folder holds a previous run (started: a checkpoint or an epoch logged; finished: metrics)
RUN_MARKERS = ("checkpoint-last.pth", "metrics.json", "log.txt")
#: what a run writes and ``--overwrite`` removes (globs in the run folder); other files are left alone
RUN_OUTPUTS = ("checkpoint-*.pth", ".checkpoint-*.tmp", "metrics.json", "log.txt", "train_log.csv", "tensorboard",
               "recon-epoch*.png", "knn.png", "classifier.pth", "tokenizer.pth", "recipe_changes.jsonl")
#: fields that steer one invocation, not the recipe: a resume does not inherit them and they never
#: make a run rewrite its config.yaml
RUN_CONTROL = ("resume", "max_iters", "threads")


class RunDirError(ValueError):
    """The run folder holds another run (exit status 2, one line)."""


def previous_run(run_dir: str | Path) -> list[str]:
    """The :data:`RUN_MARKERS` present in ``run_dir`` (empty: nothing to protect)."""
    run_dir = Path(run_dir)
    return [name for name in RUN_MARKERS if (run_dir / name).is_file()]


def refuse_previous_run(run_dir: str | Path) -> None:
    """Raise :class:`RunDirError` when ``run_dir`` holds a previous run (nothing is read or written)."""
    found = previous_run(run_dir)
    if found:
        kind = "finished" if "metrics.json" in found else "started"
        raise RunDirError(f"a {kind} run is in {run_dir} ({', '.join(found)}): pass --resume auto to continue it, "
                          f"--overwrite to start over, or another --output_dir")


def clear_run(run_dir: str | Path) -> list[Path]:
    """Remove a previous run's outputs (:data:`RUN_OUTPUTS`) from ``run_dir``; returns what was removed."""
    run_dir = Path(run_dir)
    removed: list[Path] = []
    if not run_dir.is_dir():
        return removed
    for pattern in RUN_OUTPUTS:
        for p in sorted(run_dir.glob(pattern)):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold an exclusive flock on the run folder itself while a run writes there; a second process is
    refused at once (no file is created: a refused command leaves the folder as it was).

    Without it two runs started into one folder before either logged an epoch would both run and mix
    their checkpoints, logs and metrics. The lock goes with the process (a killed run frees it)."""
    import fcntl
    import os
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"another process is running in {run_dir}: wait for it, or give another "
                              "--output_dir") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def refuse_resume_without_checkpoint(resume: str | None, run_dir: str | Path) -> None:
    """``--resume auto`` into a folder with a previous run's files but no ``checkpoint-last.pth``: refuse
    (starting over there would silently replace that run's logs and metrics)."""
    run_dir = Path(run_dir)
    if resume != "auto" or (run_dir / "checkpoint-last.pth").is_file():
        return
    found = previous_run(run_dir)
    if found:
        raise RunDirError(f"--resume auto: {run_dir} has no checkpoint-last.pth to continue from, but a previous "
                          f"run's files ({', '.join(found)}): --overwrite to start over, or another --output_dir")


def saved_config_path(resume: str | None, output_dir: str | Path) -> Path | None:
    """The recipe a resume continues: ``--resume auto``: ``<output_dir>/config.yaml``; ``--resume PATH``: the
    config.yaml beside that checkpoint (the recipe of its state), else ``<output_dir>``'s; None when there is
    none (then the preset / flags are the recipe)."""
    if not resume:
        return None
    candidates = [Path(output_dir) / CONFIG]
    if resume != "auto":
        candidates.insert(0, Path(resume).parent / CONFIG)
    return next((p for p in candidates if p.is_file()), None)


def read_saved_config(path: str | Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise RunDirError(f"{path} holds no run config (a mapping of field: value)")
    return data


def changed_fields(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = RUN_CONTROL) -> list[str]:
    """Fields of ``new`` whose value differs from ``old``'s (plain-data dicts), ``ignore`` left out."""
    return [k for k in new if k not in ignore and (k not in old or old[k] != new[k])]


#: the recipe changes made on resume, one JSON line each (a run's metrics.json repeats them)
RECIPE_CHANGES = "recipe_changes.jsonl"


def write_config(cfg: Any, run_dir: str | Path, resuming: bool, position: str = "") -> None:
    """Write the run's config.yaml; a resume keeps the one there unless a recipe field changed, and then
    records the change (:data:`RECIPE_CHANGES`: when, where in the run, each field's old and new value),
    so numbers trained partly under another recipe never carry only the last one."""
    path = Path(run_dir) / CONFIG
    if resuming and path.is_file():
        try:
            old = read_saved_config(path)
        except (yaml.YAMLError, RunDirError):
            old = None
        new = to_dict(cfg)
        changed = changed_fields(old, new) if old is not None else []
        if old is not None and not changed:
            return
        if changed:
            import datetime as dt
            import json
            record = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "at": position,
                      "changes": {k: [old.get(k), new[k]] for k in changed}}
            with (Path(run_dir) / RECIPE_CHANGES).open("a") as f:
                f.write(json.dumps(record, default=str) + "\n")
    save_config(cfg, path)


def recipe_changes(run_dir: str | Path) -> list[dict[str, Any]]:
    """The recipe changes recorded on resume (:func:`write_config`); [] for a run under one recipe."""
    import json
    path = Path(run_dir) / RECIPE_CHANGES
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def protocol_of(cfg: Any) -> str:
    """``pretrain`` for a ``mae.protocols.pretrain.Config`` (the ``mae`` sub-command that runs it)."""
    return type(cfg).__module__.rsplit(".", 1)[-1]


def resume_command(cfg: Any, max_iters: int | None = None) -> str:
    """The complete command that continues the run in ``cfg.output_dir`` (its recipe comes from its config.yaml)."""
    words = ["mae", protocol_of(cfg), "--resume", "auto", "--output_dir", str(cfg.output_dir)]
    if max_iters is not None:
        words += ["--max_iters", str(max_iters)]
    return shlex.join(words)
