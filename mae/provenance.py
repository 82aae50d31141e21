"""Where a number came from: commit, device in words, library versions, date (written by the run itself).

Every protocol stamps :func:`stage_provenance` into its ``metrics.json`` when it finishes, so a results
table collected later, elsewhere, or from another commit carries the provenance of the runs that made
its numbers, never that of the process that collected them. Deliberately hostname-free (results are
committed).
"""
from __future__ import annotations

import datetime as _dt
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def git_commit(repo: str | Path | None = None) -> str:
    """Short commit of ``repo`` (default: this checkout), with ``-dirty`` when tracked files changed;
    changes under ``results/`` (measured outputs that a running grid rewrites, not code) do not count.

    ``"unknown"`` outside a git work tree, without any commit, or when git is not installed.
    """
    repo = Path(repo) if repo is not None else REPO_ROOT

    def git(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None

    head = git("rev-parse", "--short", "HEAD")
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return "unknown"
    commit = head.stdout.strip()
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    if status is not None and status.returncode == 0 and status.stdout.strip():
        commit += "-dirty"
    return commit


_CODE_COMMIT: list[str] = []  # pinned once per process by pin_code_commit


def pin_code_commit() -> str:
    """The commit (``-dirty`` included) of the code this process runs, read once: the first call pins it.

    Entry points call it when they start (the ``mae`` command line, every script through
    :func:`require_same_checkout`, the Trainer and the readout), so a commit made or a file edited while a
    long grid runs does not relabel the stages that ran the code loaded before it."""
    if not _CODE_COMMIT:
        _CODE_COMMIT.append(git_commit())
    return _CODE_COMMIT[0]


def checkout_of(path: str | Path) -> Path | None:
    """The checkout of this project that holds ``path``: its nearest folder with ``.git`` and
    ``mae/__init__.py``; None outside one (an installed package, a venv, a temporary file)."""
    try:
        p = Path(path).resolve()
    except OSError:
        return None
    for d in (p, *p.parents):
        if (d / ".git").exists() and (d / "mae" / "__init__.py").is_file():
            return d
    return None


def other_checkout(script: str | Path | None = None) -> Path | None:
    """The checkout of the running script (default ``sys.argv[0]``) when it is *another* checkout than the
    one ``mae`` is imported from (a virtual environment installed from a second clone); else None.

    Then the script's own recipes would run on the other checkout's code and every row would carry that
    checkout's commit: a label that is not true."""
    script = sys.argv[0] if script is None else script
    if not script or not str(script).endswith(".py"):
        return None
    here = checkout_of(script)
    return here if here is not None and here != checkout_of(REPO_ROOT / "mae" / "__init__.py") else None


def require_same_checkout(prog: str | None = None, script: str | Path | None = None) -> None:
    """Stop (exit 2, nothing run) when :func:`other_checkout` finds a mismatch; say how to fix it. Else pin
    the commit of the code this process runs (:func:`pin_code_commit`).

    Called first by every script of ``reproduce/``, ``bench/`` and ``downstream/`` that writes results."""
    there = other_checkout(script)
    if there is None:
        pin_code_commit()  # the code this process runs is the code it has now
        return
    name = prog or Path(str(script or sys.argv[0])).name
    raise SystemExit(f"{name}: error: this script is in {there} but imports mae from {REPO_ROOT} (the Python "
                     f"environment was installed from that checkout), so its results would carry the other "
                     f"checkout's code and commit. Run `bash scripts/install.sh` in {there} (it re-points the "
                     f"environment), or run with PYTHONPATH={there}.")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def detect_device(words: bool = False) -> str:
    """``"cpu"`` or the current CUDA device's name; ``words=True``: the CPU model and torch's thread count."""
    try:
        import torch
    except ImportError:
        return cpu_model() if words else "cpu"
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    if not words:
        return "cpu"
    return f"cpu: {cpu_model()}, {torch.get_num_threads()} thread(s)"


def versions() -> dict[str, str]:
    """torch / timm / python versions ("unavailable" when a library is missing)."""
    out = {"python": platform.python_version()}
    for name in ("torch", "timm"):
        try:
            out[name] = str(__import__(name).__version__)
        except ImportError:
            out[name] = "unavailable"
    return out


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def stage_provenance(seed: int | None = None, wall_s: float | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance a run writes into its own metrics.json when it finishes: the commit of the code it
    ran (pinned when the process started), and ``commit_at_finish`` when the checkout has moved since."""
    commit = pin_code_commit()
    now = git_commit()
    out: dict[str, Any] = {"commit": commit.removesuffix("-dirty"), "dirty": commit.endswith("-dirty"),
                           "device": detect_device(words=True), **versions(), "date": utc_now(),
                           "command": " ".join(shlex.quote(a) for a in sys.argv)}
    if now != commit:
        out["commit_at_finish"] = now
    if seed is not None:
        out["seed"] = int(seed)
    if wall_s is not None:
        out["wall_s"] = round(float(wall_s), 2)
    out.update(extra)
    return out
