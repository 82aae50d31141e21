"""The CPU thread policy (mae/engine/threads.py): the OpenMP wait policy set before torch loads unless the
user chose one, --threads / OMP_NUM_THREADS honoured, and the choice recorded in log.txt and metrics.json."""
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
    env = {}
    found = threads.configure_openmp_env(env, modules={})
    assert env["GOMP_SPINCOUNT"] == str(threads.SPIN_COUNT) and found["omp_wait_from"].startswith("mae")
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


def _fresh_python(code, **env):
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS",
                                                              "MAE_SET_GOMP_SPINCOUNT", "MAE_OMP_POLICY")}
    clean.update(env, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_mae_first_sets_the_wait_policy_before_torch_loads():
    code = ("import json, os, mae; from mae.engine.threads import apply_thread_policy; "
            "print(json.dumps({**apply_thread_policy(), 'env': os.environ.get('GOMP_SPINCOUNT')}))")
    got = _fresh_python(code)
    assert got["env"] == "1000" and got["omp_wait_policy"] == "GOMP_SPINCOUNT=1000"
    assert got["threads_from"].startswith(("default: all cores", "torch's count", "cut to the"))
    got = _fresh_python(code, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    assert got["threads"] == 1 and got["threads_from"] == "OMP_NUM_THREADS"
    assert got["omp_wait_policy"] == "OMP_WAIT_POLICY=PASSIVE" and got["omp_wait_from"] == "environment"
    got = _fresh_python("import torch\n" + code.replace("; ", "\n"))
    assert "too late" in got["omp_wait_from"] and got["env"] is None


def test_explicit_threads_win_and_are_recorded(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    got = threads.apply_thread_policy(1)
    assert torch.get_num_threads() == 1 and got["threads"] == 1 and got["threads_from"] == "--threads"
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
