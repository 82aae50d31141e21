"""The CPU thread policy (mae/engine/threads.py): the OpenMP wait policy set before torch loads unless the
user chose one (the short spin for a fixed count, torch's for the adaptive one), --threads / OMP_NUM_THREADS
honoured, the governor of the adaptive count, and the choice recorded in log.txt and metrics.json."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mae.engine import threads
from mae.protocols import pretrain

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_wait_policy_is_set_only_when_the_user_did_not_and_torch_is_not_loaded():
    env = {"OMP_NUM_THREADS": "2"}  # a fixed count: the short spin
    found = threads.configure_openmp_env(env, modules={})
    assert env["GOMP_SPINCOUNT"] == str(threads.SPIN_COUNT) and found["omp_wait_from"].startswith("mae")
    env = {"MAE_THREAD_GOVERNOR": "off"}  # no governor: fixed too
    threads.configure_openmp_env(env, modules={})
    assert env["GOMP_SPINCOUNT"] == str(threads.SPIN_COUNT)
    env = {}  # the adaptive count: torch's spin, untouched
    found = threads.configure_openmp_env(env, modules={})
    assert env == {} and found["omp_wait_policy"] == threads.OPENMP_DEFAULT and "adaptive" in found["omp_wait_from"]
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    found = threads.configure_openmp_env(env, modules={})
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"} and found == {"omp_wait_policy": "OMP_WAIT_POLICY=ACTIVE",
                                                               "omp_wait_from": "environment"}
    env = {}
    found = threads.configure_openmp_env(env, modules={"torch": object()})
    assert env == {} and "too late" in found["omp_wait_from"]
    env = {"MAE_OMP_POLICY": "off"}
    assert threads.configure_openmp_env(env, modules={})["omp_wait_from"] == "MAE_OMP_POLICY=off"
    assert "GOMP_SPINCOUNT" not in env
    inherited = threads.child_env(2, base={})
    assert inherited["OMP_NUM_THREADS"] == "2"
    assert "inherited" in threads.configure_openmp_env(dict(inherited), modules={})["omp_wait_from"]
    assert threads.child_env(None, base={}) == {}  # an adaptive child keeps torch's spin


def _fresh_python(code, **env):
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS",
                                                              "MAE_SET_GOMP_SPINCOUNT", "MAE_OMP_POLICY",
                                                              "MAE_THREAD_GOVERNOR")}
    clean.update(env, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_mae_first_sets_the_wait_policy_before_torch_loads():
    code = ("import json, os, mae; from mae.engine.threads import apply_thread_policy; "
            "print(json.dumps({**apply_thread_policy(), 'env': os.environ.get('GOMP_SPINCOUNT')}))")
    got = _fresh_python(code)  # adaptive: torch's spin and all cores
    assert got["env"] is None and got["omp_wait_policy"] == threads.OPENMP_DEFAULT
    assert got["threads_from"].startswith(("default: all cores", "cut to the"))
    assert got["threads_policy"] == "adaptive"
    got = _fresh_python(code, OMP_NUM_THREADS="2")  # fixed: the short spin
    assert got["env"] == "1000" and got["omp_wait_policy"] == "GOMP_SPINCOUNT=1000" and got["threads_policy"] == "fixed"
    got = _fresh_python(code, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    assert got["threads"] == 1 and got["threads_from"] == "OMP_NUM_THREADS"
    assert got["omp_wait_policy"] == "OMP_WAIT_POLICY=PASSIVE" and got["omp_wait_from"] == "environment"
    got = _fresh_python("import torch\n" + code.replace("; ", "\n"))
    assert "too late" in got["omp_wait_from"] and got["env"] is None


def test_explicit_threads_win_and_are_recorded(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    got = threads.apply_thread_policy(1)
    assert torch.get_num_threads() == 1 and got["threads"] == 1 and got["threads_from"] == "--threads"
    assert got["threads_policy"] == "fixed"
    torch.set_num_threads(2)
    assert threads.apply_thread_policy(None)["threads_from"] == "OMP_NUM_THREADS"
    torch.set_num_threads(1)  # a caller's own count stands when no --threads is given
    got = threads.apply_thread_policy(None)
    assert torch.get_num_threads() == 1 and got["threads_from"].startswith("set in-process")
    with pytest.raises(ValueError, match="--threads"):
        threads.apply_thread_policy(0)


def test_cpu_quota(tmp_path):
    assert threads.cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cpu_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cpu_quota(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cpu_quota(v1) is None


def test_a_run_records_its_thread_setting(tmp_path):
    cfg = dataclasses.replace(pretrain.PRESETS["smoke"], output_dir=str(tmp_path / "run"), progress=False,
                              data="synthetic:32", epochs=2, threads=1)
    pretrain.run(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.txt").read_text().splitlines()]
    assert records[0]["runtime"]["threads"] == 1 and records[0]["runtime"]["threads_from"] == "--threads"
    assert records[0]["runtime"]["threads_policy"] == "fixed" and not any("event" in r for r in records)
    assert {"omp_wait_policy", "omp_wait_from"} <= set(records[0]["runtime"]) and "runtime" not in records[1]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["runtime"]["threads"] == 1 and "runtime" not in metrics["final"]


def test_the_cli_applies_threads_and_the_flag_is_documented(tmp_path, capsys):
    from mae.cli import main
    assert main(["pretrain", "--preset", "smoke", "--data", "synthetic:32", "--epochs", "1", "--threads", "1",
                 "--no-progress", "--output_dir", str(tmp_path / "cli")]) == 0
    assert "[threads] 1 thread(s) (--threads)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    assert "--threads" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ governor
class FakeMachine:
    """A clock and /proc/stat-like counters: ``others`` cores of other work, this process on ``ours`` cores."""

    def __init__(self, others: float, ours: float = 2.0):
        self.t, self.busy, self.own, self.others, self.ours = 0.0, 0.0, 0.0, others, ours
        self.calls: list[int] = []

    def clock(self) -> float:
        return self.t

    def read(self) -> tuple[float, float]:
        return self.busy, self.own

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.busy += (self.others + self.ours) * seconds
        self.own += self.ours * seconds


def _governor(machine, cpus=2, max_threads=2, log=None):
    return threads.ThreadGovernor(max_threads, cpus=cpus, window_s=0.5, read=machine.read, clock=machine.clock,
                                  set_threads=machine.calls.append, log=log)


def _run(gov, machine, seconds, step=0.1):
    events = []
    for _ in range(round(seconds / step)):
        machine.advance(step)
        event = gov.observe()
        if event is not None:
            events.append((round(machine.t, 3), event))
    return events


def test_governor_keeps_all_cores_alone_and_drops_to_one_thread_when_another_run_shares_them():
    m = FakeMachine(others=0.05)  # alone: kernel noise only
    gov = _governor(m)
    assert _run(gov, m, 30) == [] and m.calls == [] and gov.threads == 2
    m = FakeMachine(others=1.0)  # two collapsed runs: each gets one core, sees the other at one core
    logged = []
    gov = _governor(m, log=logged.append)
    events = _run(gov, m, 10)
    assert [(t, e["threads"], e["threads_before"]) for t, e in events] == [(0.5, 1, 2)]  # the first window
    assert m.calls == [1] and logged == [events[0][1]] and events[0][1]["others_cores"] == 1.0
    assert events[0][1]["step_s_before"] == pytest.approx(0.1) and json.dumps(events[0][1])


def test_governor_keeps_all_cores_beside_light_other_work_and_yields_above_0_4_of_a_core():
    """Beside 0.3 of a core of other work two threads were faster than one and took nothing from it; beside
    0.5 one thread was faster (bench/README.md)."""
    for others, threads_after in ((0.3, 2), (0.38, 2), (0.45, 1), (0.5, 1)):
        m = FakeMachine(others=others)
        gov = _governor(m)
        _run(gov, m, 10)
        assert gov.threads == threads_after, others


def _to_window_end(gov, m, step):
    """Steps of ``step`` seconds until the governor's next window ends."""
    t0 = gov._start[0]
    while gov._start[0] == t0:
        _run(gov, m, step, step=step)


@pytest.mark.parametrize("step", [0.15, 0.6, 1.6])
def test_a_rise_undone_within_three_windows_doubles_the_hold_whatever_the_step_time(step):
    """Windows end at the first step after 0.5 s, so 'three windows' is counted in windows, not seconds."""
    for undone_in, doubled in ((1, True), (3, True), (4, False)):
        m = FakeMachine(others=1.0)
        gov = _governor(m)
        _to_window_end(gov, m, step)
        assert gov.threads == 1
        m.ours, m.others = 1.0, 0.0
        for _ in range(100):  # the other work left: a rise after two free windows and the hold
            _to_window_end(gov, m, step)
            if gov.threads == 2:
                break
        m.ours = 2.0
        for _ in range(undone_in - 1):
            _to_window_end(gov, m, step)
        m.ours, m.others = 1.0, 1.0  # back: the next window reads it whole
        _to_window_end(gov, m, step)
        assert gov.threads == 1
        assert (gov.hold_s == 2 * threads.ThreadGovernor.HOLD_S) == doubled, (step, undone_in, gov.hold_s)


def test_governor_rises_when_the_cores_free_up_and_backs_off_when_the_rise_does_not_hold():
    m = FakeMachine(others=1.0)
    gov = _governor(m)
    _run(gov, m, 1)
    assert gov.threads == 1
    m.ours = 1.0
    assert _run(gov, m, 20) == []  # the other run holds its core: stay
    m.others = 0.0  # it ended: back to 2 threads after two free windows
    [(t, up)] = _run(gov, m, 2)
    assert up["threads"] == 2 and up["reason"] == "cores free" and 21.9 <= t <= 22.3  # two windows of ~0.5 s
    m.ours, m.others = 2.0, 1.0  # the other work is back at once: the rise is undone, the next waits 4 s
    [(t_down, down)] = _run(gov, m, 1)
    assert down["threads"] == 1 and down["next_rise_after_s"] == 4.0
    m.ours, m.others = 1.0, 0.0
    [(t_up, _)] = _run(gov, m, 10)
    assert t_up - t_down == pytest.approx(4.0, abs=0.15)


def test_governor_shares_many_cores_by_the_others_load():
    m = FakeMachine(others=8.0, ours=8.0)  # 16 cores, the other run holds 8
    gov = _governor(m, cpus=16, max_threads=16)
    [(_, e)] = _run(gov, m, 2)
    assert e["threads"] == 8 and m.calls == [8]


def test_read_cpu_seconds_counts_busy_time_of_the_given_cpus(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  300 0 100 2000 20 5 5 2 0 0\n"
                    "cpu0 100 0 50 1000 10 0 0 0 0 0\n"
                    "cpu1 200 0 50 1000 10 5 5 2 0 0\n"
                    "intr 1 2 3\n")
    tick = os.sysconf("SC_CLK_TCK")
    busy, ours = threads.read_cpu_seconds(frozenset({1}), stat)
    assert busy == pytest.approx(262 / tick) and ours >= 0
    assert threads.read_cpu_seconds(None, stat)[0] == pytest.approx(412 / tick)
    stat.write_text("intr 1\n")
    with pytest.raises(ValueError):
        threads.read_cpu_seconds(None, stat)


def test_make_governor_serves_only_adaptive_cpu_runs():
    assert not threads.make_governor({"threads_policy": "fixed", "threads": 2}).active
    runtime = {"threads_policy": "adaptive", "threads": 2}
    assert not threads.make_governor(runtime, serve=False).active and runtime["threads_policy"].startswith("fixed (")
    gov = threads.make_governor({"threads_policy": "adaptive", "threads": 2})
    assert gov.active and gov.threads == 2


def test_an_adaptive_run_logs_its_thread_changes(tmp_path, monkeypatch):
    """The Trainer's hook: the governor's change is a log.txt record and the outcome is in metrics.json."""
    monkeypatch.delenv("MAE_THREAD_GOVERNOR", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    monkeypatch.setattr(threads, "affinity_cpus", lambda: frozenset({0, 1}))
    monkeypatch.setattr(threads.ThreadGovernor, "WINDOW_S", 0.0)  # a decision at every iteration
    import time as _time
    t0 = _time.monotonic()
    # another run holds one of the two cores all along: busy = 2 cores, this process 1
    monkeypatch.setattr(threads, "read_cpu_seconds", lambda cpus=None, **_: (2 * (_time.monotonic() - t0),
                                                                        _time.monotonic() - t0))
    torch.set_num_threads(2)
    cfg = dataclasses.replace(pretrain.PRESETS["smoke"], output_dir=str(tmp_path / "run"), progress=False,
                              data="synthetic:32", epochs=2, threads=None, tensorboard=False)
    pretrain.run(cfg)
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.txt").read_text().splitlines()]
    events = [r for r in lines if r.get("event") == "threads"]
    assert [(e["threads_before"], e["threads"]) for e in events] == [(2, 1)] and torch.get_num_threads() == 1
    assert isinstance(events[0]["epoch"], int) and events[0]["iteration"] >= 1
    epochs = [r for r in lines if "event" not in r]
    assert [r["epoch"] for r in epochs] == [0, 1] and epochs[0]["runtime"]["threads_policy"] == "adaptive"
    runtime = json.loads((tmp_path / "run" / "metrics.json").read_text())["runtime"]
    assert runtime["thread_changes"] == 1 and runtime["threads_end"] == 1


def _burn(seconds: float, spent=None) -> None:
    """A worker busy ``seconds`` of CPU; ``spent`` (a shared value) gets its whole CPU time, that of the
    processes it ran and reaped included, and the worker ends there."""
    import time as _t
    end = _t.process_time() + seconds
    while _t.process_time() < end:
        pass
    if spent is not None:
        spent.value = sum(os.times()[:4])
        os._exit(0)  # no interpreter shutdown after the reading (with torch loaded it takes a CPU second)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux's /proc")
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_own_cpu_time_counts_the_run_s_worker_processes(method):
    """A DataLoader's workers are the run's own work, under every start method, read while they run or
    started and ended between two reads (an evaluation's workers); read as other work, a lone run with
    --num_workers 2 cut its own threads 4 times a run."""
    import multiprocessing
    import time as _t
    ctx = multiprocessing.get_context(method)
    warm = ctx.Process(target=_burn, args=(0.0,))  # start the forkserver (ours too) before measuring
    warm.start()
    warm.join()
    own = threads.OwnCpuTime()
    for read_while_running in (True, False):
        spent = ctx.Value("d", 0.0)
        worker = ctx.Process(target=_burn, args=(1.0, spent))
        before, before_self = own(), sum(os.times()[:2])
        worker.start()
        while worker.is_alive():
            if read_while_running:
                own()
            worker.join(0.05)
        assert worker.exitcode == 0
        grown = own() - before - (sum(os.times()[:2]) - before_self)
        # the worker's whole CPU time (its start-up included: a spawned one imports this module), once
        assert abs(grown - spent.value) < 0.15, (method, read_while_running, grown, spent.value)


def test_own_cpu_time_sums_the_run_s_process_tree_once(tmp_path, monkeypatch):
    """Workers count if they are our children or our child's children (a forkserver's), each once; other
    processes never; a parent of ours stays counted once its workers have ended (their time is in its line)."""
    tick = os.sysconf("SC_CLK_TCK")
    me = 100

    def stat(pid, ppid, ticks, reaped=0):
        d = tmp_path / str(pid)
        d.mkdir(exist_ok=True)
        # field 2 is "(comm)", which may hold spaces and parentheses; 4 ppid; 14-17 utime stime cutime cstime
        fields = ["S", str(ppid), *["0"] * 9, str(ticks), "0", str(reaped), "0", *["0"] * 4, "1"]
        (d / "stat").write_text(f"{pid} (pt worker) x) " + " ".join(fields) + "\n")

    own = threads.OwnCpuTime(proc=tmp_path, pid=me)
    listed: set[int] = set()
    monkeypatch.setattr(own, "candidate_pids", lambda: set(listed))
    monkeypatch.setattr(os, "times", lambda: os.times_result((3.0, 1.0, 0.5, 0.5, 0.0)))  # this process: fixed
    base = own()
    assert base == 5.0

    def grown():
        return round((own() - base) * tick)  # in ticks

    stat(10, me, 100)  # a forked worker
    stat(20, me, 5)  # the forkserver: ours, but multiprocessing lists only its workers
    stat(21, 20, 40)  # a forkserver worker
    stat(30, 1, 999)  # a process that is not ours (listed by mistake, or a pid reused)
    listed.update({10, 21, 30})
    assert grown() == 100 + 5 + 40
    stat(20, me, 5, reaped=40)  # the forkserver reaped its worker: the time moved into its line
    listed.discard(21)
    (tmp_path / "21" / "stat").unlink()
    assert grown() == 100 + 5 + 40  # not lost with the worker's line, although no live worker leads to it


@pytest.mark.skipif(not hasattr(os, "waitid"), reason="needs os.waitid")
def test_own_cpu_time_does_not_reap_an_ended_worker():
    """A DataLoader reports a crashed worker's exit code only if the worker is still there to reap."""
    import multiprocessing
    import time as _t
    worker = multiprocessing.get_context("fork").Process(target=os._exit, args=(3,))
    worker.start()
    deadline = _t.monotonic() + 10
    while os.waitid(os.P_PID, worker.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        assert _t.monotonic() < deadline
        _t.sleep(0.01)
    threads.OwnCpuTime()()
    info = os.waitid(os.P_PID, worker.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    assert info is not None and info.si_status == 3  # still unreaped, its exit code there for its owner
    worker.join()
    assert worker.exitcode == 3
