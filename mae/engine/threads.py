"""CPU thread policy: how many threads torch uses, how its OpenMP threads wait, and the governor that adapts
the count while a run shares the cores.

Measured (bench/cpu_threads.py, results/bench_cpu_threads.csv, bench/README.md; demo pre-training, 2 cores):

- torch's defaults (all cores; libgomp threads spin 300,000 iterations at each of a step's thousands of small
  parallel regions) are the fastest alone, but two such runs sharing the cores spin away each other's time
  slices and collapse: each keeps 7-25% of a lone run's img/s on AMD EPYC (the CSV's AMD rows, the
  earlier AMD bench at commit c598e2f, and one measurement on a second AMD EPYC machine not in it); 4% on the
  Intel Xeon with AMX (CSV).
- A short spin (``GOMP_SPINCOUNT=1000``, this module's earlier default) shares fairly (each 48-73% of
  alone), but what it costs a lone run depends on the CPU and the day: 90% of torch's default (CSV) and
  92-97% (the earlier bench) on AMD EPYC, 70% on the second AMD machine (536 vs 764 img/s, measured once;
  one thread read 529, i.e. the second core bought nothing), 76% on the Intel Xeon (CSV). No spin count is
  both fast alone and fair shared there (10,000: ~80% alone there, collapses shared).
- One intra-op thread per run wastes nothing when two runs share 2 cores (each 89-105% of its own lone
  rate, 60-71% of torch's default alone): with one thread there is no parallel region, so nothing spins.

Hence the policy (the choice is per process):

1. **Adaptive** (the default: no ``--threads``, no ``OMP_NUM_THREADS``): keep torch's full speed, i.e.
   its default spin and all cores, and let :class:`ThreadGovernor` (the Trainer calls
   :meth:`ThreadGovernor.observe` after every iteration) cut the intra-op count while other work occupies
   the cores and give it back when they are free. It watches the machine, not the step time: every
   ``window_s`` (0.5 s) it reads the busy time of the CPUs this process may use (``/proc/stat``) minus its
   own CPU time and its DataLoader workers' (:class:`OwnCpuTime`); that difference is the other work's load,
   in cores. Our own epoch-end evaluation or checkpointing changes our step time but not the others' load,
   and two collapsed runs, which never saw a lone step, still each see the other at about one core. The
   target is the cores the others leave, ``floor(cpus - others + MARGIN)``, clamped to [1, all]: a drop
   happens at once (a collapse costs 5x per step), a rise after two windows in a row and a hold that
   doubles (2 s up to 64 s) each time a rise is undone within three windows (the first may straddle the
   other work's return and read only part of it). So two governed runs on 2 cores settle at one
   thread each within a window or two; when one ends the other returns to 2 threads about a second later.
   Each change is one ``log.txt`` record (``{"event": "threads", ...}``) and one ``[threads]`` line. Work
   outside the Trainer's loop (``mae readout``, linprobe's feature cache) runs at all cores, ungoverned.
2. **Fixed** (``--threads N``, ``OMP_NUM_THREADS``, a count below all cores set in-process,
   ``MAE_THREAD_GOVERNOR=off``, or a process the governor does not serve: GPU runs, DDP): the count stands
   all run, as bitwise resume needs (float sums may differ in the last bits between counts; the bitwise
   resume tests pin it, and tests/conftest.py turns the governor off). A fixed count cannot react, so where
   mae sets the wait policy (before torch loads, :func:`configure_openmp_env`) it sets
   ``GOMP_SPINCOUNT=1000`` for it, the fair one. The wait policy is read once, when torch loads
   OpenMP, so mae decides from the environment at ``import mae``: ``OMP_NUM_THREADS`` set (the grid's
   workers, scripts/test.sh) or the governor off means fixed; a ``--threads N`` given to an adaptive
   process keeps torch's spin (fair sharing then needs ``OMP_NUM_THREADS=N`` instead).

``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` set by the user are never changed; ``MAE_OMP_POLICY=off`` is torch's
defaults throughout (spin 300,000, all cores, no governor). When torch was imported before ``mae`` the runtime
already runs with its defaults; that is recorded. The thread count is not part of a run's recipe. The
choice is recorded: :func:`apply_thread_policy` returns ``{"threads", "threads_from", "threads_policy",
"omp_wait_policy", "omp_wait_from"}``, which the Trainer writes into its first epoch record of ``log.txt``
and ``metrics.json`` (``runtime``, with ``thread_changes`` and ``threads_end`` once the governor acted).
Measured (3 interleaved rounds each, bench/README.md, results/bench_cpu_threads.csv), a lone run against
torch's default and two runs sharing the cores against a lone run, each: on a 2-core Intel Xeon with AMX
98% and 70% (the former fixed short spin: 76% alone; torch's default shared: 4%); on a 2-core AMD EPYC
99-107% and 64-67% in two benches (fixed short spin: 90-95% alone; torch's default shared: 9-22%), and in 8
further paired rounds of lone runs there 102% (results/bench_cpu_threads_alone.csv): the governor costs a
lone run nothing measurable. With DataLoader workers and beside light other work: bench/README.md.
"""
from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: spin iterations before an idle OpenMP thread sleeps, for a fixed count (libgomp default 300,000; PASSIVE = 0).
#: Fair when shared on the 2-core machines of bench/README.md (10,000 already collapses)
SPIN_COUNT = 1000
#: environment variables that say the user chose the wait policy (then nothing is changed)
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
#: ``MAE_THREAD_GOVERNOR=off``: no adaptive count (tests/conftest.py sets it: in-process runs stay bitwise)
GOVERNOR_VAR = "MAE_THREAD_GOVERNOR"
_OFF = ("off", "0", "default", "no", "false")

#: set beside GOMP_SPINCOUNT when mae set it, so child processes report where it came from
MARKER = "MAE_SET_GOMP_SPINCOUNT"
#: torch's own wait policy, as the records spell it
OPENMP_DEFAULT = "OpenMP default (libgomp: spin 300000)"

_WAIT: dict[str, str] = {}  # what configure_openmp_env found / did (filled once, at mae's import)


def _wait_from_env(environ: Any) -> str:
    return ", ".join(f"{k}={environ[k]}" for k in WAIT_VARS if environ.get(k))


def _is_off(environ: Any, var: str) -> bool:
    return str(environ.get(var, "")).strip().lower() in _OFF


def adaptive_env(environ: Any) -> bool:
    """Whether a process started with ``environ`` gets the adaptive count: no ``OMP_NUM_THREADS``, and neither
    ``MAE_OMP_POLICY`` nor ``MAE_THREAD_GOVERNOR`` off."""
    return (_omp_num_threads(environ) is None and not _is_off(environ, "MAE_OMP_POLICY")
            and not _is_off(environ, GOVERNOR_VAR))


def configure_openmp_env(environ: Any = None, modules: Any = None) -> dict[str, str]:
    """Set the OpenMP wait policy in the environment if the user did not and OpenMP is not loaded yet:
    ``GOMP_SPINCOUNT=1000`` for a fixed thread count, torch's own spin for an adaptive one (module doc).

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
        found = {"omp_wait_policy": OPENMP_DEFAULT, "omp_wait_from": "torch was imported before mae: too late to set"}
    elif _is_off(env, "MAE_OMP_POLICY"):
        found = {"omp_wait_policy": OPENMP_DEFAULT, "omp_wait_from": "MAE_OMP_POLICY=off"}
    elif adaptive_env(env):
        found = {"omp_wait_policy": OPENMP_DEFAULT,
                 "omp_wait_from": "mae: adaptive thread count (OMP_NUM_THREADS unset), torch's spin kept"}
    else:
        env["GOMP_SPINCOUNT"], env[MARKER] = str(SPIN_COUNT), "1"
        found = {"omp_wait_policy": f"GOMP_SPINCOUNT={SPIN_COUNT}",
                 "omp_wait_from": "mae (set before torch loaded): fixed thread count"}
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


def affinity_cpus() -> frozenset[int] | None:
    """The CPU ids this process may run on (None where the OS does not say)."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, cut to the cgroup quota (rounded up)."""
    cpus = affinity_cpus()
    n = len(cpus) if cpus else (os.cpu_count() or 1)
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
    returned dict (JSON-able): ``threads``, ``threads_from``, ``threads_policy`` (``adaptive``: the count
    is all cores and :func:`make_governor` may change it; ``fixed``), ``omp_wait_policy``, ``omp_wait_from``.
    ``announce``: print it as one line.
    """
    import torch

    if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
        raise ValueError(f"--threads must be a positive number of threads, got {threads!r}")
    env_count = _omp_num_threads(os.environ)
    adaptive = False
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
        # a count below all cores was chosen by someone (in-process): it stands
        adaptive = torch.get_num_threads() == cpus and adaptive_env(os.environ)
    out = {"threads": torch.get_num_threads(), "threads_from": source,
           "threads_policy": "adaptive" if adaptive else "fixed", **configure_openmp_env()}
    if announce:
        print(f"[threads] {out['threads']} thread(s) ({out['threads_from']}), {out['threads_policy']}; OpenMP wait: "
              f"{out['omp_wait_policy']} ({out['omp_wait_from']})", flush=True)
    return out


def child_env(threads: int | None = None, base: Any = None) -> dict[str, str]:
    """Environment for a child process (a grid worker, a bench run): ``threads`` as ``OMP_NUM_THREADS`` (if
    given) and the wait policy that goes with the child's count (a fixed count: the short spin)."""
    env = dict(os.environ if base is None else base)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(int(threads))
    if not _wait_from_env(env) and not _is_off(env, "MAE_OMP_POLICY") and not adaptive_env(env):
        env["GOMP_SPINCOUNT"], env[MARKER] = str(SPIN_COUNT), "1"
    return env


# --------------------------------------------------------------------------------------------- the governor
class OwnCpuTime:
    """CPU seconds of this run: this process's threads, its reaped children (``os.times``) and its live worker
    processes (a DataLoader's workers decode and augment for this run: they are its own work, not other work
    on the cores).

    Live workers are read from ``/proc/<pid>/stat`` (user + system time, their reaped children's included):
    the processes multiprocessing started (``multiprocessing.process._children``, read without
    ``active_children()``'s side effect of reaping them: a DataLoader names a crashed worker's exit code only
    if it reaps it itself), the ones ``/proc/self/task/*/children`` lists where the kernel has it, and a
    process of ours they run under (the forkserver: under that start method a worker is its child, not
    ours), kept once seen. Each is counted only if it is our child or our child's child, so the sum holds no
    time twice: a worker's time moves from its own line to its parent's reaped-children time when it is
    reaped, and a worker that started and ended between two reads is counted there too. Measured on AMD
    EPYC, a lone demo run with ``--num_workers 2``: counting this process alone, the governor read the
    workers as other work, changed the count 4 times a run and ran at 88-89% of torch's default; counting
    them, 0 changes and 99% (bench/README.md)."""

    def __init__(self, proc: str | Path = "/proc", pid: int | None = None):
        self.proc = Path(proc)
        self.pid = os.getpid() if pid is None else pid
        self._parents: set[int] = set()  # processes of ours that workers ran under (a forkserver)
        self._tick = os.sysconf("SC_CLK_TCK")

    def candidate_pids(self) -> set[int]:
        """Processes that may be this run's workers (each is checked by its parent id before it counts)."""
        import multiprocessing.process as mp_process
        try:
            started = tuple(getattr(mp_process, "_children", ()))
        except RuntimeError:  # the set changed while copied (a worker starting): the kernel's list, if any
            started = ()
        pids = {p.pid for p in started if getattr(p, "pid", None) is not None}
        try:
            for task in (self.proc / str(self.pid) / "task").iterdir():
                pids.update(int(x) for x in (task / "children").read_text().split())
        except (OSError, ValueError):  # no /proc, or a kernel without CONFIG_PROC_CHILDREN: multiprocessing's list
            pass
        return pids

    def _stat(self, pid: int) -> tuple[int, float] | None:
        """(parent pid, user + system + reaped children's seconds) of a process; None once it is gone."""
        try:
            raw = (self.proc / str(pid) / "stat").read_bytes()
            f = raw.rsplit(b")", 1)[1].split()  # after the command name (which may hold spaces and parentheses)
            return int(f[1]), sum(int(x) for x in f[11:15]) / self._tick  # fields 4 and 14-17 of proc(5)
        except (OSError, IndexError, ValueError):
            return None

    def __call__(self) -> float:
        t = os.times()
        stats = {pid: st for pid in self.candidate_pids() | self._parents if (st := self._stat(pid)) is not None}
        for ppid in {st[0] for st in stats.values()} - set(stats) - {self.pid}:
            st = self._stat(ppid)  # a worker under another process: counted if that one is ours
            if st is not None:
                stats[ppid] = st
        kids = {pid for pid, st in stats.items() if st[0] == self.pid}
        grandkids = {pid for pid, st in stats.items() if st[0] in kids}
        # a parent of ours stays read while it lives: its reaped workers' time is in its line from then on
        self._parents = kids & (self._parents | {stats[pid][0] for pid in grandkids})
        return (t.user + t.system + t.children_user + t.children_system
                + sum(stats[pid][1] for pid in kids | grandkids))


def read_cpu_seconds(cpus: frozenset[int] | None = None, stat_path: str | Path = "/proc/stat",
                     own: Callable[[], float] | None = None) -> tuple[float, float]:
    """(busy seconds since boot of the CPUs ``cpus`` (all: None), CPU seconds of this run: ``own()``, default this
    process's threads only; the governor passes an :class:`OwnCpuTime`, which adds the run's workers).

    Busy = user + nice + system + irq + softirq + steal of ``/proc/stat`` (idle and iowait left out).
    Raises OSError / ValueError where ``/proc/stat`` is missing or unlike Linux's."""
    tick = os.sysconf("SC_CLK_TCK")
    busy, seen = 0, 0
    with open(stat_path) as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *fields = line.split()
            if not name[3:].isdigit() or (cpus is not None and int(name[3:]) not in cpus):
                continue
            v = [int(x) for x in fields[:8]] + [0] * (8 - len(fields[:8]))
            busy += sum(v) - v[3] - v[4]
            seen += 1
    if not seen:
        raise ValueError(f"{stat_path}: no per-CPU line")
    if own is not None:
        return busy / tick, own()
    t = os.times()
    return busy / tick, t.user + t.system


class ThreadGovernor:
    """The adaptive intra-op thread count of a CPU run (module doc): ``observe()`` after every iteration.

    ``read`` returns (busy CPU seconds of the ``cpus`` CPUs, this process's CPU seconds); ``set_threads`` /
    ``clock`` default to torch's and ``time.monotonic``; all three are injectable for tests. ``log`` gets each
    change's event (the Trainer: a ``log.txt`` record); ``record`` (the run's ``runtime``) its outcome."""

    #: a rise waits this long after a drop at first, doubling on each undone rise up to MAX_HOLD_S
    HOLD_S, MAX_HOLD_S = 2.0, 64.0
    #: target = floor(cpus - others + MARGIN): on 2 cores, other work above 0.4 of a core -> one thread. Measured
    #: (bench/README.md, AMD EPYC, a lone demo run beside one process busy a share of a core): beside 0.3 core
    #: torch's two threads read 2-15% faster than one thread (three benches) and the other work got its 0.30
    #: all the same; beside 0.4 one thread was 6-10% faster; beside 0.5 one thread was 14-24% faster and two
    #: cut the other work to 0.47
    MARGIN = 0.4
    #: seconds of machine accounting per decision (at 100 ticks/s: 50 ticks a core)
    WINDOW_S = 0.5
    active = True

    def __init__(self, max_threads: int, *, cpus: int, window_s: float | None = None, min_threads: int = 1,
                 read: Callable[[], tuple[float, float]] | None = None,
                 set_threads: Callable[[int], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 announce: bool = False, record: dict[str, Any] | None = None,
                 log: Callable[[dict[str, Any]], None] | None = None):
        if set_threads is None:
            import torch
            set_threads = torch.set_num_threads
        self.max_threads, self.min_threads, self.cpus = max(1, max_threads), max(1, min_threads), cpus
        self.window_s = self.WINDOW_S if window_s is None else window_s
        self.read, self.set_threads, self.clock = read or read_cpu_seconds, set_threads, clock
        self.announce, self.record, self.log = announce, record, log
        self.threads = self.max_threads
        self.hold_s = self.HOLD_S
        self.changes = 0
        # (time, busy, ours) at the window's start; the first from construction: the other work's load is
        # measured the same during set-up, so the first decision comes after the first step
        self._start: tuple[float, float, float] = (self.clock(), *self.read())
        self._last_observe: float | None = None
        self._steps: list[float] = []  # step seconds at the current count (reported with a change)
        self._rise_votes = 0
        self._last_change: float = -math.inf
        #: windows ended since the last rise still on trial (a drop within 3 undoes it); None: no rise on trial
        self._windows_since_rise: int | None = None

    def observe(self, step_seconds: float | None = None) -> dict[str, Any] | None:
        """Account one iteration (``step_seconds``; None: the time since the previous call); at a window's end
        maybe change the count. Returns the change as a JSON-able event (for ``log.txt``), else None."""
        now = self.clock()
        if step_seconds is None and self._last_observe is not None:
            step_seconds = now - self._last_observe
        self._last_observe = now
        if step_seconds is not None:
            self._steps.append(float(step_seconds))
        t0, busy0, ours0 = self._start
        if now - t0 < self.window_s or now <= t0:
            return None
        busy, ours = self.read()
        self._start = (now, busy, ours)
        if self._windows_since_rise is not None:
            self._windows_since_rise += 1
        others = max(0.0, ((busy - busy0) - (ours - ours0)) / (now - t0))
        target = min(self.max_threads, max(self.min_threads, math.floor(self.cpus - others + self.MARGIN)))
        if target < self.threads:
            if self._windows_since_rise is not None and self._windows_since_rise <= 3:
                self.hold_s = min(self.MAX_HOLD_S, 2 * self.hold_s)  # the rise did not hold
            self._windows_since_rise = None
            return self._change(target, now, others, "other work on the cores")
        if target > self.threads:
            self._rise_votes += 1
            if self._rise_votes >= 2 and now - self._last_change >= self.hold_s:
                self._windows_since_rise = 0
                return self._change(target, now, others, "cores free")
            return None
        self._rise_votes = 0
        if self._windows_since_rise is not None and self._windows_since_rise > 10:
            self.hold_s, self._windows_since_rise = self.HOLD_S, None  # a rise that held: the next drop starts afresh
        return None

    def _change(self, target: int, now: float, others: float, reason: str) -> dict[str, Any]:
        before, steps = self.threads, self._steps
        self.set_threads(target)
        self.threads, self._steps, self._rise_votes, self._last_change = target, [], 0, now
        self.changes += 1
        event = {"event": "threads", "threads": target, "threads_before": before, "reason": reason,
                 "others_cores": round(others, 2), "cpus": self.cpus,
                 "step_s_before": round(statistics.median(steps), 4) if steps else None,
                 "next_rise_after_s": self.hold_s}
        if self.record is not None:  # the run's runtime record (metrics.json) carries the outcome
            self.record.update(thread_changes=self.changes, threads_end=target)
        if self.log is not None:
            self.log(event)
        if self.announce:
            print(f"[threads] {before} -> {target} intra-op thread(s): {reason} (others {others:.2f} of "
                  f"{self.cpus} cores)", flush=True)
        return event


class _Fixed:
    """The governor of a fixed count: observes nothing."""

    active = False
    threads = None

    def observe(self, step_seconds: float | None = None) -> None:
        return None


def make_governor(runtime: dict[str, Any], *, serve: bool = True, announce: bool = False,
                  log: Callable[[dict[str, Any]], None] | None = None) -> ThreadGovernor | _Fixed:
    """The governor of a run whose :func:`apply_thread_policy` record is ``runtime``: active when the policy is
    ``adaptive``, ``serve`` (the Trainer: a CPU run in one process) and ``/proc/stat`` can be read; else a no-op.
    Updates ``runtime`` in place (``threads_policy``; ``thread_changes``, ``threads_end`` as it acts)."""
    if runtime.get("threads_policy") != "adaptive":
        return _Fixed()
    cpus = affinity_cpus()
    try:
        read_cpu_seconds(cpus)
    except (OSError, ValueError):
        serve, why = False, "fixed (adaptive needs /proc/stat)"
    else:
        why = "fixed (GPU or multi-process run)"
    if not serve or int(runtime.get("threads", 1)) < 2:
        runtime["threads_policy"] = why if not serve else "fixed (one CPU)"
        return _Fixed()
    own = OwnCpuTime()
    return ThreadGovernor(int(runtime["threads"]), cpus=len(cpus) if cpus else available_cpus(),
                          read=lambda: read_cpu_seconds(cpus, own=own), announce=announce, record=runtime, log=log)
