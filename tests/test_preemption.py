"""Pre-emption: SIGTERM / SIGUSR1 to the whole process group (SLURM, torchrun) saves checkpoint-last.pth,
exits with one line and status 75 (mae.engine.preemption.EXIT_PREEMPTED), and ``--resume auto`` continues
bitwise (CPU). Loader workers ignore the signals, so they do not die before the main process saves."""
from __future__ import annotations

import csv
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mae.cli import build_config
from mae.engine import checkpoint as ckpt
from mae.engine import loop, preemption
from mae.protocols import pretrain

REPO = Path(__file__).resolve().parents[1]
# smoke model on 64 generated images, 4 steps per epoch, a loader worker; epochs set the lr schedule
ARGS = ["--preset", "smoke", "--num_workers", "1", "--epochs", "50", "--warmup_epochs", "1", "--log_every", "1",
        "--no-progress", "--vis_every", "0"]


def losses(run_dir: Path) -> list[tuple[int, str]]:
    with open(run_dir / "train_log.csv") as f:
        return [(int(r["iteration"]), r["loss"]) for r in csv.DictReader(f)]


def rows_logged(run_dir: Path) -> int:
    try:
        return max(0, len((run_dir / "train_log.csv").read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def run_here(out: Path, *extra: str) -> dict:
    """One run in this process, on one thread as the subprocess (bitwise comparisons across processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return pretrain.run(build_config(pretrain, [*ARGS, "--output_dir", str(out), *extra], "mae pretrain"))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, preemption.EXIT_PREEMPTED),
                                         (signal.SIGINT, preemption.EXIT_INTERRUPTED)])
def test_a_stop_signal_to_the_process_group_saves_exits_and_resumes_bitwise(tmp_path, sig, status):
    """SIGTERM (SLURM, torchrun): exit 75; Ctrl-C (SIGINT to the foreground group): exit 130. Both save at the
    next step, say so in one line with the resume command, and --resume auto continues from that step."""
    run = tmp_path / "preempted"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "mae", "pretrain", *ARGS, "--output_dir", str(run)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a SLURM job step
    try:
        deadline = time.time() + 120
        while rows_logged(run) < 3 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it was signalled"
        os.killpg(proc.pid, sig)  # main process and loader worker alike
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == status and status in (75, 130), err[-3000:]
    assert "Traceback" not in err and "killed by signal" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith(f"[train] {sig.name}: saved ")]
    assert len(said) == 1 and f"exit {status}" in said[0] and "--resume auto" in said[0], err[-3000:]
    state = ckpt.load_checkpoint(run / ckpt.LAST)
    k = state["total_iters"]
    assert 3 <= k < 200 and str(run / ckpt.LAST) in said[0]
    assert not (run / "metrics.json").exists()

    # resume to k + 6 iterations (across an epoch boundary), and the same length without interruption
    stop = ["--max_iters", str(k + 6)]
    resumed = run_here(run, "--resume", "auto", *stop)
    reference = run_here(tmp_path / "reference", *stop)
    assert not resumed["finished"] and not reference["finished"]
    assert losses(run) == losses(tmp_path / "reference") and len(losses(run)) == k + 6
    a = ckpt.load_checkpoint(run / ckpt.LAST)
    b = ckpt.load_checkpoint(tmp_path / "reference" / ckpt.LAST)
    assert (a["total_iters"], a["global_step"]) == (b["total_iters"], b["global_step"]) == (k + 6, k + 6)
    assert all(torch.equal(a["model"][n], b["model"][n]) for n in b["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i][f], sb[i][f]) for i in sb for f in sb[i])


class _SignalAt(loop.Trainer):
    """A Trainer that sends ``SIG`` to its own process at overall iteration ``AT`` (inside a step)."""
    SIG, AT = signal.SIGUSR1, 5

    def train_step(self, m, b):
        if self.total_iters == self.AT:
            os.kill(os.getpid(), self.SIG)
        return super().train_step(m, b)


@pytest.mark.parametrize("at", [5, 7])  # mid-epoch; an epoch's last step (saved after its epoch end)
def test_sigusr1_in_process_raises_preempted_and_restores_the_handlers(tmp_path, monkeypatch, capsys, at):
    monkeypatch.setattr(_SignalAt, "AT", at)
    monkeypatch.setattr(pretrain, "Trainer", _SignalAt)
    cfg = dataclasses.replace(pretrain.PRESETS["smoke"], output_dir=str(tmp_path / "run"), progress=False,
                              num_workers=1, epochs=4)
    before = {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS}
    with pytest.raises(preemption.Preempted) as e:
        pretrain.run(cfg)
    assert e.value.code == 75 and e.value.signum == signal.SIGUSR1
    assert {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS} == before
    state = ckpt.load_checkpoint(tmp_path / "run" / ckpt.LAST)
    assert (state["epoch"], state["iter"]) == ((1, 2) if at == 5 else (2, 0))
    assert "[train] SIGUSR1: saved" in capsys.readouterr().err


def test_workers_ignore_the_stop_signals():
    """The loaders' worker_init_fn sets SIG_IGN (run here, then undone)."""
    before = {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS}
    try:
        preemption.ignore_stop_signals(0)
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in preemption.STOP_SIGNALS)
        os.kill(os.getpid(), signal.SIGUSR1)  # would end this process otherwise
    finally:
        for s, h in before.items():
            signal.signal(s, h)
