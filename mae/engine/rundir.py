"""Run directories: never overwrite a previous run, never mix two runs, resume with the run's own recipe.

- A folder holds a *previous run* when it has ``checkpoint-last.pth``, ``metrics.json`` or ``log.txt``
  (``config.yaml`` and the grid's ``.lock`` alone do not count: the grid writes them before a fresh
  run). ``mae <protocol>`` refuses to start a new run there (:func:`refuse_previous_run`) unless told
  ``--resume auto`` (continue) or ``--overwrite`` (:func:`clear_run`: start over without old files).
- A resume takes its recipe from the run's ``config.yaml`` (:func:`saved_config_path`), not from a preset;
  the run keeps that file unless a recipe field changed (:func:`write_config`).
- :func:`resume_command` is the complete command that continues a stopped run.
- One process at a time runs in a folder (:func:`run_lock`, the one lock the grid and the command line
  share; a stage that reads another holds it shared); ``--resume auto`` where a previous run left files but
  no checkpoint is refused (:func:`refuse_resume_without_checkpoint`).
- A folder the reproduction grid made (``identity.json``) is the grid's: the command line refuses to
  resume, overwrite or start a run there unless it is the grid's own child (:data:`GRID_ENV`) or is given
  ``--outside-grid`` (:func:`refuse_grid_stage`); ``--overwrite`` there moves the grid's run aside
  (:func:`move_run_aside`), never deletes it.
- Every process that runs in a folder records its commit (:data:`RUN_COMMITS`, :func:`run_commits`), so
  a run resumed under other code names every commit behind its numbers.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from mae.config import save_config, to_dict

CONFIG = "config.yaml"
#: files that say a folder holds a previous run (started: a checkpoint or an epoch logged; finished: metrics)
RUN_MARKERS = ("checkpoint-last.pth", "metrics.json", "log.txt")
#: what a run writes and ``--overwrite`` removes (globs in the run folder); other files are left alone
RUN_OUTPUTS = ("checkpoint-*.pth", ".checkpoint-*.tmp", "metrics.json", "log.txt", "train_log.csv", "tensorboard",
               "recon-epoch*.png", "knn.png", "classifier.pth", "tokenizer.pth", "recipe_changes.jsonl",
               "commits.jsonl")
#: fields that steer one invocation, not the recipe: a resume does not inherit them and they never
#: make a run rewrite its config.yaml
RUN_CONTROL = ("resume", "max_iters", "threads")
#: the file the reproduction grid writes into each stage's folder when the stage starts (reproduce/grid/store.py)
GRID_IDENTITY = "identity.json"
#: set by the grid for the ``mae`` process it launches into a stage (the folder's absolute path): that process
#: runs for the grid, which holds the folder's lock for it
GRID_ENV = "MAE_GRID_STAGE"
#: one JSON line per process that ran in the folder (its commit, when, where in the run it started)
RUN_COMMITS = "commits.jsonl"


class RunDirError(ValueError):
    """The run folder holds another run (exit status 2, one line)."""


class RunBusy(RunDirError):
    """Another process holds the run folder's lock."""


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


def told_grid(run_dir: str | Path) -> bool:
    """True in the process the grid launched into ``run_dir`` (:data:`GRID_ENV` names that folder)."""
    named = os.environ.get(GRID_ENV)
    return bool(named) and Path(named).resolve() == Path(run_dir).resolve()


@contextlib.contextmanager
def run_lock(run_dir: str | Path, *, wait: bool = False, shared: bool = False, create: bool = True,
             on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold a flock on the run folder itself: exclusive while a run writes there (the ``mae`` command line
    and the grid take this same lock), ``shared`` while a stage reads its files (a fine-tune reading a
    pre-training's checkpoint), so that nothing moves or rewrites a folder another process uses.

    Busy: :class:`RunBusy` at once, or with ``wait`` block until free (``on_wait()`` is called first). A
    folder renamed (moved aside) while this process waited is not the folder asked for: the lock is taken
    again on what is at ``run_dir`` now. The process the grid launched into ``run_dir`` takes no exclusive
    lock (:func:`told_grid`: the grid holds it). No file is created; the lock goes with the process."""
    import fcntl
    run_dir = Path(run_dir)
    if not shared and told_grid(run_dir):
        yield
        return
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    while True:
        if create:
            run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise RunBusy(f"another process is running in {run_dir}: wait for it, or give another "
                                  "--output_dir") from None
                if on_wait is not None:
                    on_wait()
                fcntl.flock(fd, mode)
            try:
                here = os.stat(run_dir)
            except FileNotFoundError:
                here = None
            mine = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if here is not None and (here.st_ino, here.st_dev) == (mine.st_ino, mine.st_dev):
            break
        os.close(fd)  # moved aside while we waited: lock what is there now
        if not create and here is None:
            raise FileNotFoundError(f"{run_dir} was moved away")
    key = str(run_dir.resolve())
    if not shared:
        _HELD[key] = fd
    try:
        yield
    finally:
        if _HELD.get(key) == fd:
            del _HELD[key]
        os.close(fd)  # closing the descriptor releases the lock (once no child holds it too: held_lock_fd)


#: run folder -> the descriptor of this process's exclusive lock on it (run_lock)
_HELD: dict[str, int] = {}


def held_lock_fd(run_dir: str | Path) -> int | None:
    """The descriptor of this process's exclusive lock on ``run_dir`` (None if it holds none). A child started
    with it (``subprocess.run(..., pass_fds=(fd,))``) holds the lock too, for as long as it lives: a stage the
    grid launched stays locked when the grid itself is killed, until the stage's own process ends."""
    return _HELD.get(str(Path(run_dir).resolve()))


def grid_stage(run_dir: str | Path) -> bool:
    """True when ``run_dir`` is a stage folder of the reproduction grid (it holds :data:`GRID_IDENTITY`)."""
    return (Path(run_dir) / GRID_IDENTITY).is_file()


def refuse_grid_stage(run_dir: str | Path, outside_grid: bool) -> None:
    """The command line in a grid stage's folder: refused (one line naming the grid's command and
    ``--outside-grid``) unless the grid launched it there or ``outside_grid`` is given."""
    if outside_grid or told_grid(run_dir) or not grid_stage(run_dir):
        return
    try:
        command = json.loads((Path(run_dir) / GRID_IDENTITY).read_text()).get("grid_command")
    except (OSError, ValueError, AttributeError):
        command = None
    by = f" ({command})" if command else ""
    raise RunDirError(f"{run_dir} is a stage of a reproduction grid (identity.json): rerun the grid's command{by} "
                      "to resume or redo it, give another --output_dir, or pass --outside-grid to run here anyway "
                      "(the grid then reuses the stage only if its recipe is still the grid's; with --overwrite "
                      "the grid's run is moved aside, not deleted)")


def aside_path(run_dir: str | Path) -> Path:
    """A free sibling name for a run moved aside: ``<name>.replaced-<time>`` (``-2``, ``-3``... when taken)."""
    run_dir = Path(run_dir)
    base = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def move_run_aside(run_dir: str | Path) -> Path | None:
    """Move everything in ``run_dir`` into a new sibling folder (:func:`aside_path`), leaving ``run_dir``
    itself (and the lock this process holds on it) in place and empty; returns the new folder (None when
    there was nothing to move). Nothing is deleted."""
    run_dir = Path(run_dir)
    entries = sorted(run_dir.iterdir()) if run_dir.is_dir() else []
    if not entries:
        return None
    aside = aside_path(run_dir)
    aside.mkdir()
    for p in entries:
        p.rename(aside / p.name)
    return aside


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
    record_commit(run_dir, resuming, position)
    if resuming and path.is_file():
        try:
            old = read_saved_config(path)
        except (yaml.YAMLError, RunDirError):
            old = None
        new = to_dict(cfg)
        changed = changed_fields(old, new) if old is not None else []
        if old is not None and not changed:
            if old.get("max_iters") != new.get("max_iters"):  # the file says where this run will stop now
                import dataclasses
                keep = {k: old[k] for k in ("resume", "threads") if k in old and hasattr(cfg, k)}
                save_config(dataclasses.replace(cfg, **keep), path)
            return
        if changed:
            import datetime as dt
            record = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "at": position,
                      "changes": {k: [old.get(k), new[k]] for k in changed}}
            with (Path(run_dir) / RECIPE_CHANGES).open("a") as f:
                f.write(json.dumps(record, default=str) + "\n")
    save_config(cfg, path)


def recipe_changes(run_dir: str | Path) -> list[dict[str, Any]]:
    """The recipe changes recorded on resume (:func:`write_config`); [] for a run under one recipe."""
    path = Path(run_dir) / RECIPE_CHANGES
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_commit(run_dir: str | Path, resuming: bool, position: str = "") -> None:
    """Record the commit of the code this process runs in :data:`RUN_COMMITS` (a fresh start begins the file
    anew, a resume adds a line), so that numbers trained partly under other code name every commit."""
    from mae.atomic import atomic_write_text
    from mae.provenance import pin_code_commit, utc_now
    path = Path(run_dir) / RUN_COMMITS
    line = json.dumps({"commit": pin_code_commit(), "date": utc_now(), "at": position or "start"}) + "\n"
    earlier = path.read_text() if resuming and path.is_file() else ""
    if resuming and not earlier:  # a run started before commits were recorded: its first part's is not known
        earlier = json.dumps({"commit": "unknown", "date": "", "at": "start"}) + "\n"
    atomic_write_text(path, earlier + line)


def run_commits(run_dir: str | Path) -> list[str]:
    """The commits (``-dirty`` included) of every process that ran in ``run_dir``, in order, each once;
    [] when none was recorded (a run made before :data:`RUN_COMMITS`)."""
    path = Path(run_dir) / RUN_COMMITS
    if not path.is_file():
        return []
    out: list[str] = []
    for line in path.read_text().splitlines():
        try:
            commit = json.loads(line).get("commit")
        except (ValueError, AttributeError):
            continue
        if commit and commit not in out:
            out.append(str(commit))
    return out


def protocol_of(cfg: Any) -> str:
    """``pretrain`` for a ``mae.protocols.pretrain.Config`` (the ``mae`` sub-command that runs it)."""
    return type(cfg).__module__.rsplit(".", 1)[-1]


def resume_command(cfg: Any, max_iters: int | None = None) -> str:
    """The complete command that continues the run in ``cfg.output_dir`` (its recipe comes from its config.yaml).
    A stage of the reproduction grid continues through the grid: its command, as identity.json recorded it."""
    if grid_stage(cfg.output_dir):
        try:
            grid = json.loads((Path(cfg.output_dir) / GRID_IDENTITY).read_text()).get("grid_command")
        except (OSError, ValueError):
            grid = None
        if grid:
            return f"{grid}  (the reproduction grid's command: it resumes this stage)"
    words = ["mae", protocol_of(cfg), "--resume", "auto", "--output_dir", str(cfg.output_dir)]
    if max_iters is not None:
        words += ["--max_iters", str(max_iters)]
    return shlex.join(words)
