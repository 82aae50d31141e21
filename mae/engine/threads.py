"""CPU thread policy: how many threads torch uses and how its OpenMP threads wait, for every entry point.

With torch's defaults a CPU run takes every core and its OpenMP threads spin for a long time (libgomp:
300,000 iterations) at each of the thousands of small parallel regions of a step. Alone that is fastest;
but two such runs sharing the cores spin away each other's time slices and collapse (two demo
pre-trainings on 2 cores: 15% of a solo run's img/s each, bench/README.md). The policy here:

1. **Wait policy** (:func:`configure_openmp_env`, called at the top of ``mae/__init__.py``, before torch
   is imported: the OpenMP runtime reads its environment once, when torch loads it). Unless the user set
   ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``, set ``GOMP_SPINCOUNT=1000``: a thread spins only briefly
   before it sleeps. Measured (bench/cpu_threads.py, results/bench_cpu_threads.csv, bench/README.md):
   two runs sharing the cores each keep about half of a solo run's rate (torch's default: ~1/5); alone it
   reads 92-97% of torch's default in the same round of an interleaved bench (3 rounds; single runs on
   the bench machine drift by up to 20%, which is what an earlier one-run reading of 60-84% was;
   ``MAE_OMP_POLICY=off`` restores torch's defaults); ``OMP_WAIT_POLICY=PASSIVE`` (no spin) shares
   better but costs a lone run about a third. When torch was imported before ``mae`` (a script that
   imports torch first), the runtime already runs with its defaults; that is recorded, not hidden.
2. **Thread count** (:func:`apply_thread_policy`, called by the ``mae`` command line, by the Trainer's
   setup and by the grid for its workers): an explicit ``--threads N`` wins; else ``OMP_NUM_THREADS``
   (torch applied it at start-up); else torch's count stands (all cores: the fastest alone, measured),
   cut to the CPU quota of the container (cgroup ``cpu.max``) where that is smaller. A count the caller
   set in-process (``torch.set_num_threads``) is left alone when no ``--threads`` is given.

The choice is recorded: :func:`apply_thread_policy` returns ``{"threads", "threads_from",
"omp_wait_policy", "omp_wait_from"}``, which the Trainer writes into the first ``log.txt`` record of
each process start and ``metrics.json`` (``runtime``). The thread count is not part of a run's recipe
(the grid's stage identity leaves it out), though float sums may differ in the last bits between counts.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

#: spin iterations before an idle OpenMP thread sleeps (libgomp default 300,000; PASSIVE = 0). Measured
#: best alone and fair when shared on the 2-core machine of bench/README.md (10,000 already collapses)
SPIN_COUNT = 1000
#: environment variables that say the user chose the wait policy (then nothing is changed)
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

#: set beside GOMP_SPINCOUNT when mae set it, so child processes report where it came from
MARKER = "MAE_SET_GOMP_SPINCOUNT"

_WAIT: dict[str, str] = {}  # what configure_openmp_env found / did (filled once, at mae's import)


def _wait_from_env(environ: Any) -> str:
    return ", ".join(f"{k}={environ[k]}" for k in WAIT_VARS if environ.get(k))


def configure_openmp_env(environ: Any = None, modules: Any = None) -> dict[str, str]:
    """Set the OpenMP wait policy in the environment if the user did not and OpenMP is not loaded yet.

    Must run before torch is imported (``mae/__init__.py`` calls it first thing). Idempotent: the first
    call's finding is kept (and returned) for the process. ``environ`` / ``modules`` are for tests.
    """
    if _WAIT and environ is None:
        return dict(_WAIT)
    env = os.environ if environ is None else environ
    mods = sys.modules if modules is None else modules
    user = _wait_from_env(env)
    ours = env.get(MARKER) == "1" and env.get("GOMP_SPINCOUNT") == str(SPIN_COUNT) and not env.get("OMP_WAIT_POLICY")
    if user and ours:
        found = {"omp_wait_policy": user, "omp_wait_from": "mae (inherited from the parent process)"}
    elif user:
        found = {"omp_wait_policy": user, "omp_wait_from": "environment"}
    elif "torch" in mods:
        found = {"omp_wait_policy": "OpenMP default (libgomp: spin 300000)",
                 "omp_wait_from": "torch was imported before mae: too late to set"}
    elif env.get("MAE_OMP_POLICY", "").lower() in ("off", "0", "default"):
        found = {"omp_wait_policy": "OpenMP default (libgomp: spin 300000)", "omp_wait_from": "MAE_OMP_POLICY=off"}
    else:
        env["GOMP_SPINCOUNT"], env[MARKER] = str(SPIN_COUNT), "1"
        found = {"omp_wait_policy": f"GOMP_SPINCOUNT={SPIN_COUNT}", "omp_wait_from": "mae (set before torch loaded)"}
    if environ is None:
        _WAIT.update(found)
    return found


def cpu_quota(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """CPUs this process may use by its cgroup's CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None: no quota."""
    root = Path(root)
    try:
        max_file = root / "cpu.max"
        if max_file.is_file():
            quota, period = (max_file.read_text().split() + ["100000"])[:2]
            return None if quota == "max" else int(quota) / int(period)
        q, p = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if q.is_file() and p.is_file():
            quota_us = int(q.read_text())
            return None if quota_us <= 0 else quota_us / int(p.read_text())
    except (OSError, ValueError):
        return None
    return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, cut to the cgroup quota (rounded up)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _omp_num_threads(environ: Any) -> int | None:
    text = str(environ.get("OMP_NUM_THREADS", "")).split(",")[0].strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def apply_thread_policy(threads: int | None = None, announce: bool = False) -> dict[str, Any]:
    """Set torch's intra-op thread count by the policy of the module doc; return what was chosen and why.

    ``threads``: an explicit count (``--threads``; the grid gives each local process its share). The
    returned dict (JSON-able): ``threads``, ``threads_from``, ``omp_wait_policy``, ``omp_wait_from``.
    ``announce``: print it as one line.
    """
    import torch

    if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
        raise ValueError(f"--threads must be a positive number of threads, got {threads!r}")
    env_count = _omp_num_threads(os.environ)
    if threads is not None:
        torch.set_num_threads(int(threads))
        source = "--threads"
    elif env_count is not None:
        source = "OMP_NUM_THREADS"
        if torch.get_num_threads() != env_count:
            source = "set in-process (torch.set_num_threads)"
    else:
        cpus = available_cpus()
        current = torch.get_num_threads()
        if current > cpus:  # e.g. a container's CPU quota below the cores torch sees
            torch.set_num_threads(cpus)
            source = f"cut to the {cpus} CPU(s) available (affinity, container quota)"
        else:
            source = "default: all cores" if current == cpus else f"torch's count ({current} of {cpus} CPUs)"
    out = {"threads": torch.get_num_threads(), "threads_from": source, **configure_openmp_env()}
    if announce:
        print(f"[threads] {out['threads']} thread(s) ({out['threads_from']}); OpenMP wait: "
              f"{out['omp_wait_policy']} ({out['omp_wait_from']})", flush=True)
    return out


def child_env(threads: int | None = None, base: Any = None) -> dict[str, str]:
    """Environment for a child process (a grid worker, a bench run): ``threads`` as ``OMP_NUM_THREADS`` (if
    given) and the wait policy of this process, so the child starts with both in place."""
    env = dict(os.environ if base is None else base)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(int(threads))
    if not _wait_from_env(env) and env.get("MAE_OMP_POLICY", "").lower() not in ("off", "0", "default"):
        env["GOMP_SPINCOUNT"], env[MARKER] = str(SPIN_COUNT), "1"
    return env
