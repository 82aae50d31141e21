"""img/s of the demo pre-training alone and with two runs sharing the cores, per thread setting / wait policy.

    python bench/cpu_threads.py                       # -> results/bench_cpu_threads.csv (a few minutes on 2 cores)
    python bench/cpu_threads.py --settings mae,torch_default --epochs 5
    python bench/cpu_threads.py --settings torch_default,mae,spin1000,threads1 --repeats 3   # interleaved rounds
    python bench/cpu_threads.py --settings torch_default,mae,threads1 --no-shared --background 0.3,0.5 \
        --out results/bench_cpu_threads_background.csv    # beside light other work

The CSV keeps the rows of other CPUs and replaces those of this one (``cpu`` and ``cpu_isa``), so it holds
one bench per CPU kind.

Each setting is an environment for ``python -m mae pretrain --preset demo --epochs E`` (the kNN monitor,
figures and TensorBoard off; they do not count in the img/s anyway). ``alone``: one run; ``shared``: two
runs started together. The rate of a run is the median ``imgs_per_s`` of its epochs 2..E in log.txt
(epoch 1 warms up). A run still going after ``--timeout`` seconds (the collapse this measures) is
stopped and rated on the epochs it finished (``timed_out``); with fewer than 2 its rate is
images / elapsed time. ``--background C`` (a comma list: one pass over the rounds per level) runs every
run beside other work: one process that keeps ``C`` of a core busy (CPU time in every 10 ms; what it got
is ``background_cores``). Settings (``mae`` is what ``mae`` does by default, mae/engine/threads.py):

- ``torch_default``: torch's own defaults (all cores, libgomp's 300,000-spin wait; ``MAE_OMP_POLICY=off``)
- ``mae``: the adaptive policy: all cores and torch's spin, the thread governor cutting the count while
  other work holds the cores (each change is a ``log.txt`` record: ``thread_changes``, ``threads_end``)
- ``passive``: all cores, ``OMP_WAIT_POLICY=PASSIVE`` (no spin), no governor
- ``threads1``: ``OMP_NUM_THREADS=1``
- ``spinN``: all cores, ``GOMP_SPINCOUNT=N``, no governor (``spin1000``: ``mae``'s former default)

Columns: ``setting``, ``env``, ``mode`` (alone / shared), ``repeat`` (the round, ``--repeats``: every
round runs every setting, each round in an order rotated by one), ``run``, ``img_per_s``, ``vs_alone``
(this setting's shared rate over its alone rate in the same round), ``vs_torch_default_alone`` (over
the median of torch's default alone), ``epochs_rated``, ``timed_out``,
``wall_s``, ``threads`` / ``threads_policy`` / ``omp_wait_policy`` (what the run logged at its start),
``thread_changes`` / ``threads_end`` (the governor's changes in log.txt, the count at the end),
``background`` / ``background_cores`` (the other work asked for, in cores, and what it got while
the runs ran; empty: none), ``load_before`` (1-minute load average before the runs started: the machine's other work), then provenance
(``cpu``: the model name, ``cpu_isa``: its vector / matrix extensions from the CPU flags, ``cores``,
``torch``, ``python``, ``commit``, ``date``, ``command``).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import io
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mae.atomic import atomic_write_text
from mae.provenance import cpu_model, pin_code_commit, require_same_checkout, versions

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SETTINGS = ("torch_default", "mae", "spin1000", "threads1")
COLUMNS = ("setting", "env", "mode", "repeat", "run", "img_per_s", "vs_alone", "vs_torch_default_alone", "epochs_rated",
           "timed_out", "wall_s", "threads", "threads_policy", "thread_changes", "threads_end", "omp_wait_policy",
           "preset", "epochs", "extra", "background", "background_cores", "load_before", "scale", "cpu", "cpu_isa", "cores", "torch", "python", "commit",
           "date", "command")
#: environment variables a setting may set; every run starts with them removed
CONTROLLED = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MAE_OMP_POLICY", "MKL_NUM_THREADS",
              "MAE_SET_GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MAE_THREAD_GOVERNOR")
#: CPU flags worth naming in a row (/proc/cpuinfo): the ISA the matmuls may use
ISA_FLAGS = (("avx512f", "avx512"), ("avx512_bf16", "avx512_bf16"), ("amx_tile", "amx"))


def setting_env(name: str) -> dict[str, str]:
    """The environment variables of a named setting (see the module doc)."""
    if name == "torch_default":
        return {"MAE_OMP_POLICY": "off"}
    if name == "mae":
        return {}
    if name == "passive":
        return {"OMP_WAIT_POLICY": "PASSIVE", "MAE_THREAD_GOVERNOR": "off"}
    if name.startswith("threads") and name[7:].isdigit():
        return {"OMP_NUM_THREADS": name[7:]}
    if name.startswith("spin") and name[4:].isdigit():
        return {"GOMP_SPINCOUNT": name[4:], "MAE_THREAD_GOVERNOR": "off"}
    raise ValueError(f"unknown setting {name!r}: torch_default, mae, passive, threadsN, spinN")


# ----------------------------------------------------------------------------------------------- provenance
def cpu_name() -> str:
    """The CPU model (mae.provenance: the one place that reads it)."""
    return cpu_model()


def cpu_isa(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's vector / matrix extensions that matter to torch's CPU kernels, e.g. ``avx2 avx512 amx``."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return ""
    flags = next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())
    names = ["avx2"] if "avx2" in flags else []
    return " ".join(names + [name for flag, name in ISA_FLAGS if flag in flags])


def provenance_cores() -> int | None:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def provenance(argv: Sequence[str]) -> dict[str, Any]:
    """A bench row's provenance: CPU, cores, versions, the commit of the code that ran (with -dirty; pinned when
    the bench started), UTC date, command."""
    cores = provenance_cores()
    v = versions()
    return {"scale": "cpu", "cpu": cpu_model(), "cpu_isa": cpu_isa(), "cores": cores, "torch": v["torch"],
            "python": v["python"], "commit": pin_code_commit(),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join(["python", *[str(a) for a in argv]])}


def write_csv(rows: list[dict[str, Any]], path: str | Path, columns: Sequence[str]) -> Path:
    """Write ``rows`` atomically (floats to 4 significant digits)."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
    return atomic_write_text(path, buf.getvalue())


def write_bench(rows: list[dict[str, Any]], path: str | Path, columns: Sequence[str], script: str,
                argv: Sequence[str]) -> Path:
    """Stamp every row with the run's provenance (``script`` + ``argv`` as the command), write the CSV after the
    rows ``path`` holds for other CPUs (another ``cpu`` or ``cpu_isa``; a row without ``cpu_isa`` is by ``cpu``)."""
    prov = provenance([script, *argv])
    for r in rows:
        r.update(prov)
    kept: list[dict[str, Any]] = []
    if Path(path).is_file():
        with open(path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if r.get("cpu") != prov["cpu"]
                    or r.get("cpu_isa", prov["cpu_isa"]) not in (prov["cpu_isa"], "")]
        if kept:
            print(f"[bench] kept {len(kept)} row(s) of other CPUs ({', '.join(sorted({r['cpu'] for r in kept}))})")
    out = write_csv([*kept, *rows], path, columns)
    print(f"[bench] wrote {out}")
    return out


# ------------------------------------------------------------------------------------------------ the runs
def demo_command(out_dir: Path, preset: str, epochs: int, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "mae", "pretrain", "--preset", preset, "--epochs", str(epochs),
            "--output_dir", str(out_dir), "--no-progress", "--no-tensorboard", "--vis_every", "0",
            "--monitor_every", "0", *extra]


def run_env(setting: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONTROLLED}
    env.update(setting)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def rate_of(run_dir: Path, elapsed: float, images_per_epoch: int | None = None) -> dict[str, Any]:
    """Median img/s of epochs 2.. of a run's log.txt, with what the run logged about its threads (the governor's
    changes are records of their own, ``"event": "threads"``)."""
    lines = []
    log = run_dir / "log.txt"
    if log.is_file():
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    events = [r for r in lines if r.get("event") == "threads"]
    records = [r for r in lines if "imgs_per_s" in r]
    runtime = next((r["runtime"] for r in records if isinstance(r.get("runtime"), dict)), {})
    rated = [float(r["imgs_per_s"]) for r in records[1:]]
    if rated:
        rate = statistics.median(rated)
    elif records:  # only the warm-up epoch finished
        rate = float(records[0]["imgs_per_s"])
    else:  # not one epoch in the time given: at most this fast
        rate = (images_per_epoch or 0) / max(elapsed, 1e-9)
    return {"img_per_s": rate, "epochs_rated": len(rated), "threads": runtime.get("threads", ""),
            "threads_policy": runtime.get("threads_policy", ""), "thread_changes": len(events),
            "threads_end": events[-1]["threads"] if events else runtime.get("threads", ""),
            "omp_wait_policy": runtime.get("omp_wait_policy", "")}


#: the other work of ``--background``: busy ``duty`` of a core (CPU time) in every 10 ms; on SIGTERM it writes
#: the cores it got (CPU seconds per wall second) to the file named by its second argument. It ends with the
#: bench: when its parent is gone it stops
BACKGROUND = """
import os, signal, sys, time
duty, out, period, parent = float(sys.argv[1]), sys.argv[2], 0.01, os.getppid()
t0, c0 = time.perf_counter(), time.process_time()
def stop(*_):
    with open(out, "w") as f:
        f.write(repr((time.process_time() - c0) / max(time.perf_counter() - t0, 1e-9)))
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while os.getppid() == parent:
    t, c = time.perf_counter(), time.process_time()
    while time.process_time() - c < duty * period:
        pass
    time.sleep(max(0.0, period - (time.perf_counter() - t)))
"""


@contextlib.contextmanager
def background_load(cores: float) -> Iterator[dict[str, Any]]:
    """Other work on the machine while the block runs: one process busy ``cores`` (0..1) of a core. Yields a
    dict that gets ``background_cores`` (what it got) when the block ends; nothing runs for ``cores`` 0."""
    got: dict[str, Any] = {"background": cores or "", "background_cores": ""}
    if not cores:
        yield got
        return
    with tempfile.TemporaryDirectory(prefix="bench_background_") as tmp:
        out = Path(tmp) / "got"
        proc = subprocess.Popen([sys.executable, "-c", BACKGROUND, str(cores), str(out)])
        try:
            yield got
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if out.is_file():
                got["background_cores"] = round(float(out.read_text()), 3)


def run_together(n: int, setting: dict[str, str], preset: str, epochs: int, timeout: float,
                 extra: Sequence[str] = (), background: float = 0.0) -> list[dict[str, Any]]:
    """Start ``n`` demo pre-trainings at once under ``setting`` (beside ``background`` cores of other work);
    their rates."""
    with background_load(background) as other:
        rows = _run_together(n, setting, preset, epochs, timeout, extra)
    return [{**r, **other} for r in rows]


def _run_together(n: int, setting: dict[str, str], preset: str, epochs: int, timeout: float,
                  extra: Sequence[str]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench_cpu_threads_") as tmp:
        dirs = [Path(tmp) / f"run{i}" for i in range(n)]
        t0 = time.time()
        logs = [open(Path(tmp) / f"run{i}.err", "w+") for i in range(n)]
        procs: list[subprocess.Popen[str]] = []
        timed_out = False
        try:
            for d, f in zip(dirs, logs):
                procs.append(subprocess.Popen(demo_command(d, preset, epochs, extra), env=run_env(setting),
                                              stdout=subprocess.DEVNULL, stderr=f, text=True))
            for p in procs:
                try:
                    p.wait(timeout=max(1.0, timeout - (time.time() - t0)))
                except subprocess.TimeoutExpired:
                    timed_out = True
        finally:  # timed out, or the bench stopped (Ctrl-C, SIGTERM): no run outlives it
            for p in procs:
                if p.poll() is None:  # only its log.txt is read: no need to let it save
                    p.kill()
                    p.wait()
        wall = time.time() - t0
        rows = []
        for i, (p, d) in enumerate(zip(procs, dirs)):
            logs[i].seek(0)
            err = logs[i].read()
            logs[i].close()
            if p.returncode != 0 and not timed_out:
                raise RuntimeError(f"{shlex.join(demo_command(d, preset, epochs, extra))} failed "
                                   f"({p.returncode}): {err[-2000:]}")
            rows.append({"run": i, "timed_out": timed_out, "wall_s": wall, **rate_of(d, wall)})
        return rows


def rotated(settings: Sequence[str], repeat: int) -> list[str]:
    """The settings in the order of round ``repeat``: each round starts one setting later, so a drift of
    the machine (other tenants, clocks) over the rounds falls on every setting alike."""
    k = repeat % len(settings) if settings else 0
    return [*settings[k:], *settings[:k]]


def measure(settings: Sequence[str], preset: str = "demo", epochs: int = 5, timeout: float = 150.0,
            shared: bool = True, extra: Sequence[str] = (), repeats: int = 1,
            background: Sequence[float] = (0.0,)) -> list[dict[str, Any]]:
    """Every setting alone (and shared) once per round, ``repeats`` rounds in rotated order, per level of
    ``background`` (other work, in cores; 0: none).

    ``vs_alone``: a shared run over its setting's alone run of the same round; ``vs_torch_default_alone``:
    over the median of torch's default alone over the rounds at the same background."""
    rows: list[dict[str, Any]] = []
    for level in background:
        rows += _measure_rounds(settings, preset, epochs, timeout, shared, extra, repeats, level)
    return rows


def _measure_rounds(settings: Sequence[str], preset: str, epochs: int, timeout: float, shared: bool,
                    extra: Sequence[str], repeats: int, background: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    beside = f" beside {background:g} core(s) of other work" if background else ""
    for rep in range(repeats):
        for name in rotated(settings, rep):
            env = setting_env(name)
            modes = [("alone", 1)] + ([("shared", 2)] if shared else [])
            alone = None
            for mode, n in modes:
                load = os.getloadavg()[0]
                for r in run_together(n, env, preset, epochs, timeout, extra, background):
                    r.update(setting=name, env=" ".join(f"{k}={v}" for k, v in env.items()) or "(none)", mode=mode,
                             repeat=rep, preset=preset, epochs=epochs, extra=" ".join(extra),
                             load_before=round(load, 2))
                    if mode == "alone":
                        alone = r["img_per_s"]
                    r["vs_alone"] = r["img_per_s"] / alone if alone else ""
                    rows.append(r)
                    changes = f" -> {r.get('threads_end')} ({r.get('thread_changes')} change(s))" if r.get(
                        "thread_changes") else ""
                    print(f"[bench] round {rep} {name:14s} {mode:6s} run {r['run']}: {r['img_per_s']:7.1f} img/s"
                          f"{' (timed out)' if r['timed_out'] else ''}  threads {r['threads']}{changes}, "
                          f"wait {r['omp_wait_policy'] or '?'}  (load before {load:.2f}){beside}", flush=True)
    base_runs = [r["img_per_s"] for r in rows if r["setting"] == "torch_default" and r["mode"] == "alone"]
    base = statistics.median(base_runs) if base_runs else None
    for r in rows:
        r["vs_torch_default_alone"] = r["img_per_s"] / base if base else ""
    return rows


def summary(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per background, setting and mode: median img/s and vs torch's default alone over the rounds,
    and the range."""
    lines = []
    keys = list(dict.fromkeys((r.get("background", ""), r["setting"], r["mode"]) for r in rows))
    for level, name, mode in keys:
        group = [r for r in rows if (r.get("background", ""), r["setting"], r["mode"]) == (level, name, mode)]
        rates = [r["img_per_s"] for r in group]
        rel = [r["vs_torch_default_alone"] for r in group if r["vs_torch_default_alone"] != ""]
        got = [r["background_cores"] for r in group if r.get("background_cores") not in ("", None)]
        prefix = ""
        if level not in ("", None):
            prefix = f"beside {float(level):g} core" + (f" (got {statistics.median(got):.2f})" if got else "") + ": "
        line = f"{prefix}{name:14s} {mode:6s} median {statistics.median(rates):7.1f} img/s [{min(rates):.0f}, {max(rates):.0f}]"
        if rel:
            line += f", {statistics.median(rel):.0%} of torch's default alone"
        own = [r["vs_alone"] for r in group if mode != "alone" and r.get("vs_alone") not in ("", None)]
        if own:
            line += f", each {statistics.median(own):.0%} of its own alone"
        lines.append(line + f" ({len(rates)} runs)")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--settings", default=",".join(DEFAULT_SETTINGS), help="comma list (see above)")
    p.add_argument("--preset", default="demo", help="mae pretrain preset to run")
    p.add_argument("--epochs", type=int, default=5, help="epochs per run (rated: 2..E)")
    p.add_argument("--timeout", type=float, default=150.0, help="seconds before a (collapsing) run is stopped")
    p.add_argument("--no-shared", dest="shared", action="store_false", help="only the solo runs")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds over the settings, each in rotated order (a noisy machine: 3 or more)")
    p.add_argument("--extra", default="", help="more mae pretrain flags, e.g. '--data synthetic:64'")
    p.add_argument("--background", default="0",
                   help="other work beside every run, in cores of one process (0..1; a comma list: a pass per level)")
    p.add_argument("--out", default=str(REPO / "results" / "bench_cpu_threads.csv"))
    return p


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)

    require_same_checkout()
    if args.epochs < 2:
        raise SystemExit("--epochs must be >= 2 (epoch 1 is the warm-up)")
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in settings:
        setting_env(s)  # fail early on a bad name
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    try:
        background = [float(x) for x in args.background.split(",") if x.strip()] or [0.0]
    except ValueError:
        raise SystemExit(f"--background: numbers in 0..1, comma separated (got {args.background!r})") from None
    if any(not 0.0 <= b <= 1.0 for b in background):
        raise SystemExit(f"--background: each level is a share of one core, 0..1 (got {args.background!r})")
    print(f"[bench] CPU: {cpu_model()} ({cpu_isa() or 'ISA unknown'}), {provenance_cores()} core(s); "
          f"1-minute load {os.getloadavg()[0]:.2f}", flush=True)
    rows = measure(settings, args.preset, args.epochs, args.timeout, args.shared, shlex.split(args.extra),
                   args.repeats, background)
    for line in summary(rows):
        print(f"[bench] {line}")
    here = Path(__file__)
    write_bench(rows, args.out, COLUMNS, str(here.relative_to(REPO)) if here.is_relative_to(REPO) else str(here), argv)
    return rows


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: the runs and the other work end too
    main()
