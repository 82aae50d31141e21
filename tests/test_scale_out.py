"""Scale-out on CPU (gloo): the launch contract (torchrun, srun, submitit), resume across process counts, per-rank
randomness through a checkpoint, a pre-training independent of its process count, ranks that stop together."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mae.engine import checkpoint as ckpt
from mae.engine.distributed import DistInfo, first_host, resolve_placement

REPO = Path(__file__).resolve().parents[1]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")
# smoke model on 64 generated images; the same global batch (16) on 1 x 16 and 2 x 8
SMOKE = ["pretrain", "--preset", "smoke", "--no-progress", "--data", "synthetic:64", "--log_every", "1",
         "--warmup_epochs", "1"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mae_run(args: list[str], nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """``mae ARGS`` in one process, or under torchrun with ``nproc`` processes (gloo)."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    return subprocess.run([*launcher, "-m", "mae", *args], env=clean_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def epoch_losses(run: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run / "log.txt").read_text().splitlines()]


def iteration_losses(run: Path) -> dict[int, float]:
    import csv
    with open(run / "train_log.csv") as f:
        return {int(r["iteration"]): float(r["loss"]) for r in csv.DictReader(f)}


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


# --------------------------------------------------------------------------------------------- placement
def test_placement_reads_slurm_variables_once_and_exports_torchruns_names():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "1",
           "SLURM_JOB_NODELIST": "gpu[03-04,9]", "SLURM_JOB_ID": "123456", "SLURM_STEP_TASKS_PER_NODE": "4(x4)"}
    where = resolve_placement(env)
    assert where == DistInfo(5, 16, 1, None, "slurm")
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("5", "16", "1", "4")
    assert env["MASTER_ADDR"] == "gpu03" and env["MASTER_PORT"] == str(20000 + 123456 % 20000)
    step1 = {**{k: v for k, v in env.items() if k.startswith("SLURM_")}, "SLURM_STEP_ID": "1", "SLURM_NODEID": "3",
             "SLURM_STEP_TASKS_PER_NODE": "4(x3),2"}
    resolve_placement(step1)  # a second srun step of the job: another port; the last node runs 2 tasks
    assert step1["MASTER_PORT"] != env["MASTER_PORT"] and step1["LOCAL_WORLD_SIZE"] == "2"
    # torchrun's variables win; a batch script (no job step, no MASTER_ADDR) is one process
    assert resolve_placement({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "SLURM_PROCID": "0"}).rank == 1
    assert resolve_placement({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) == DistInfo()
    with pytest.raises(RuntimeError, match="outside a job"):
        resolve_placement({"RANK": "2", "WORLD_SIZE": "2"})


@pytest.mark.parametrize("nodes, first", [("node7", "node7"), ("a[1-3]", "a1"), ("gpu[003,010-012],cpu1", "gpu003"),
                                          ("x-1,x-2", "x-1")])
def test_first_host_of_a_slurm_node_list(nodes, first):
    assert first_host(nodes) == first


def test_srun_style_launch_is_one_two_process_job(tmp_path):
    """Two tasks with SLURM's variables only (no RANK): one job, both exit 0 (before: a deadlock)."""
    out = tmp_path / "srun"
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "mae", *SMOKE, "--epochs", "2", "--batch_size", "8",
                               "--output_dir", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=clean_env(SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r),
                                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (so, se) in zip(procs, results):
        assert p.returncode == 0, so[-2000:] + se[-3000:]
    assert "2 process(es) (slurm)" in results[0][0] and "[train]" not in results[1][0]  # rank 0 alone prints
    assert results[0][0].count("final:") == 1 and "final:" not in results[1][0]
    state = ckpt.load_checkpoint(out / "checkpoint-last.pth")
    assert state["world_size"] == 2 and state["epoch"] == 2 and len(state["rng_ranks"]) == 2


# ------------------------------------------------------------------------------------------ invariance
def test_pretraining_does_not_depend_on_the_process_count(tmp_path):
    """1 x 16 and 2 x 8 at the same seed: the same samples, crops and masks per step, so the same losses."""
    one, two = tmp_path / "1x16", tmp_path / "2x8"
    assert_ok(mae_run([*SMOKE, "--epochs", "3", "--batch_size", "16", "--output_dir", str(one)]))
    assert_ok(mae_run([*SMOKE, "--epochs", "3", "--batch_size", "8", "--output_dir", str(two)], nproc=2))
    a, b = epoch_losses(one), epoch_losses(two)
    assert len(a) == len(b) == 3
    assert a == pytest.approx(b, rel=1e-4)
    ia, ib = iteration_losses(one), iteration_losses(two)  # logged per step: the global batch's loss
    assert sorted(ia) == sorted(ib) and [ia[i] for i in ia] == pytest.approx([ib[i] for i in ia], rel=1e-4)
    # and it is a real test: another seed gives other losses
    other = tmp_path / "seed1"
    assert_ok(mae_run([*SMOKE, "--epochs", "3", "--batch_size", "16", "--seed", "1", "--output_dir", str(other)]))
    assert epoch_losses(other) != pytest.approx(a, rel=1e-4)


# -------------------------------------------------------------------------------------------- resume
def test_two_process_mid_epoch_resume_gives_the_uninterrupted_losses(tmp_path):
    """torchrun x 2, stopped at iteration 3 of 4 and resumed: the same per-epoch and per-step losses, and every
    rank's own RNG states in the checkpoint (the masks come from the shared stream, the rest per rank)."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    args = [*SMOKE, "--epochs", "3", "--batch_size", "8"]
    assert_ok(mae_run([*args, "--output_dir", str(full)], nproc=2))
    assert_ok(mae_run([*args, "--output_dir", str(cut), "--max_iters", "3"], nproc=2))
    state = ckpt.load_checkpoint(cut / "checkpoint-last.pth")
    assert state["iter"] == 3 and state["samples_in_epoch"] == 3 * 16 and len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])
    assert [st["loss_n"] for st in state["rank_states"]] == [3, 3]
    assert_ok(mae_run([*args, "--output_dir", str(cut), "--resume", "auto"], nproc=2))
    assert epoch_losses(cut) == pytest.approx(epoch_losses(full), rel=1e-12, abs=0)
    assert iteration_losses(cut) == iteration_losses(full)


def test_a_one_process_checkpoint_resumes_on_two_processes(tmp_path):
    """Stopped mid-epoch on 1 x 16, resumed on 2 x 8: the position is samples of the epoch (before: 'start_index
    160 outside 0..128'), and the losses are the uninterrupted 1 x 16 run's."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert_ok(mae_run([*SMOKE, "--epochs", "2", "--batch_size", "16", "--output_dir", str(full)]))
    assert_ok(mae_run([*SMOKE, "--epochs", "2", "--batch_size", "16", "--output_dir", str(cut), "--max_iters", "2"]))
    proc = mae_run([*SMOKE, "--batch_size", "8", "--output_dir", str(cut), "--resume", "auto"], nproc=2)
    assert_ok(proc)
    assert "written by 1 process(es) x 16, now 2 x 8" in proc.stdout
    assert epoch_losses(cut) == pytest.approx(epoch_losses(full), rel=1e-4)
    ia, ib = iteration_losses(full), iteration_losses(cut)
    assert sorted(ia) == sorted(ib) and [ib[i] for i in ia] == pytest.approx([ia[i] for i in ia], rel=1e-4)


def test_a_position_that_is_not_a_whole_step_here_rounds_down_and_says_so(tmp_path, capsys):
    from mae.engine.checkpointer import Checkpointer
    from mae.protocols import pretrain
    cfg = pretrain.PRESETS["smoke"]
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cp = Checkpointer(cfg, model, opt, torch.amp.GradScaler("cpu", enabled=False), is_main=True, world_size=1)
    assert cp._iteration_here({"samples_in_epoch": 48}, "x") == 3  # 48 / 16
    assert cp._iteration_here({"samples_in_epoch": 40}, "x") == 2  # 40 is 2.5 steps of 16
    assert "8 sample(s) are seen twice" in capsys.readouterr().out
    # files from before positions were samples: iterations x their batch x their process count
    assert cp._iteration_here({"iter": 2, "world_size": 2, "config": {"batch_size": 8}}, "x") == 2


# ----------------------------------------------------------------------------------------- stop together
NAN_SCRIPT = """
import sys, torch
from mae.engine.loop import Trainer, TrainHooks, NonFiniteLossError
from mae.protocols import pretrain
from mae.engine.distributed import placement
cfg = pretrain.Config(output_dir=sys.argv[1], epochs=2, batch_size=4, device="cpu", progress=False,
                      tensorboard=False, log_every=100, warmup_epochs=0)
model = torch.nn.Linear(3, 1)
data = torch.utils.data.TensorDataset(torch.randn(64, 3))
def step(m, batch):
    loss = m(batch[0]).pow(2).mean()
    if placement().rank == 1 and trainer.total_iters == 2:
        loss = loss * float("nan")
    return loss, {}
trainer = Trainer(cfg, model, data, TrainHooks(step=step))
try:
    trainer.fit()
except NonFiniteLossError as e:
    print(f"rank {placement().rank} stopped: {e}", flush=True)
    sys.exit(3)
"""


def test_a_nan_on_one_rank_stops_every_rank(tmp_path):
    script = tmp_path / "nan_rank1.py"
    script.write_text(NAN_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path / "run")], env=clean_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "rank 0 stopped: process 1's loss is not finite" in out, out[-3000:]
    assert "rank 1 stopped: loss is nan at epoch 0, iteration 2" in out, out[-3000:]
    assert not (tmp_path / "run" / "checkpoint-last.pth").exists()  # the NaN never reached a checkpoint


# ------------------------------------------------------------------------------------------- signals
def test_sigint_and_usr2_are_stop_signals(tmp_path):
    from mae.engine import preemption
    assert {signal.SIGINT, signal.SIGUSR2} <= set(preemption.STOP_SIGNALS)
    guard = preemption.PreemptionGuard(DistInfo(), torch.device("cpu"), 1)
    with guard:
        signal.raise_signal(signal.SIGUSR2)
        assert guard.requested(0) and guard.signum == signal.SIGUSR2
    stop = guard.exit(tmp_path / "checkpoint-last.pth", "here", "mae pretrain --resume auto")
    assert stop.code == preemption.EXIT_PREEMPTED
    with guard:
        guard.signum = None
        signal.raise_signal(signal.SIGINT)  # Ctrl-C: a save at the next step, exit 130
        assert guard.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C again: stop now
            signal.raise_signal(signal.SIGINT)
    assert preemption.Preempted(signal.SIGINT, tmp_path).code == preemption.EXIT_INTERRUPTED == 130


# ------------------------------------------------------------------------------------------- submit
def test_submit_checks_the_run_and_prints_the_paper_batch(tmp_path, capsys):
    from mae.cli import main
    common = ["--partition", "p", "--preset", "paper_vit_large", "--data", "synthetic:64",
              "--output_dir", str(tmp_path / "run"), "--dry-run"]
    assert main(["submit", "pretrain", "--nodes", "8", "--gpus-per-node", "8", *common]) == 0
    out = capsys.readouterr().out
    assert "8 node(s) x 8 task(s) = 64 processes; effective batch 4096 = 64 x accum 1 x 64" in out
    assert "--resume auto" in out
    assert main(["submit", "pretrain", "--nodes", "1", "--gpus-per-node", "8", "--accum_iter", "8", *common]) == 0
    assert "effective batch 4096 = 64 x accum 8 x 8" in capsys.readouterr().out
    assert main(["submit", "pretrain", "--nodes", "1", "--gpus-per-node", "8", *common]) == 0
    assert "effective batch 512" in (o := capsys.readouterr().out) and "--accum_iter 8 matches it" in o
    assert main(["submit", "pretrain", *common, "--mask_ratio", "x"]) == 2  # the run's own flags are checked now
    assert main(["submit", "pretrain", *common, "--overwrite"]) == 2


def test_submit_parameters_name_the_slurm_options():
    from mae.submit import build_parser, job_parameters
    args, rest = build_parser().parse_known_args(["pretrain", "--nodes", "2", "--gpus-per-node", "4", "--partition",
                                                  "gpu", "--qos", "high", "--timeout-min", "60", "--preset", "mini"])
    params = job_parameters(args, "n")
    assert params["nodes"] == 2 and params["tasks_per_node"] == 4 and params["gpus_per_node"] == 4
    assert params["slurm_partition"] == "gpu" and params["slurm_qos"] == "high" and params["slurm_signal_delay_s"] == 120
    assert rest == ["--preset", "mini"]


def test_a_preempted_task_saves_then_hands_the_signal_to_submitit(monkeypatch, tmp_path):
    """USR2 (submitit's time-limit signal) stops training at a step (a save); then submitit's own handler runs
    (rank 0 requeues the job), and the task exits 75."""
    from mae import cli, submit
    from mae.engine.preemption import EXIT_PREEMPTED, Preempted
    seen = []
    old = signal.signal(signal.SIGUSR2, lambda s, f: seen.append(s))
    try:
        def preempted(argv):
            raise Preempted(signal.SIGUSR2, tmp_path / "checkpoint-last.pth")
        with pytest.raises(Preempted) as stop:
            submit.RunJob("pretrain", ["--preset", "smoke"], preempted)()
        assert stop.value.code == EXIT_PREEMPTED and seen == [signal.SIGUSR2]
        again = submit.RunJob("pretrain", ["--preset", "smoke"], cli.main).checkpoint()
        assert again.function.command() == ["pretrain", "--preset", "smoke", "--resume", "auto"]
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_submit_runs_a_two_task_job_on_submitits_local_executor(tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "mae", "submit", "pretrain", "--cluster", "local", "--gpus-per-node",
                           "0", "--tasks-per-node", "2", "--cpus-per-task", "1", *SMOKE[1:], "--epochs", "2",
                           "--batch_size", "8", "--output_dir", str(out)], env=clean_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert_ok(proc)
    job_id = proc.stdout.split("[submit] job ")[1].split(";")[0]
    import submitit
    result = submitit.LocalJob(folder=out / "submitit", job_id=job_id, tasks=(0, 1)).results()
    assert result == [0, 0]
    state = ckpt.load_checkpoint(out / "checkpoint-last.pth")
    assert state["world_size"] == 2 and state["epoch"] == 2


def test_a_two_process_checkpoint_resumes_on_one_process(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert_ok(mae_run([*SMOKE, "--epochs", "2", "--batch_size", "16", "--output_dir", str(full)]))
    assert_ok(mae_run([*SMOKE, "--epochs", "2", "--batch_size", "8", "--output_dir", str(cut), "--max_iters", "3"],
                      nproc=2))
    proc = mae_run([*SMOKE, "--batch_size", "16", "--output_dir", str(cut), "--resume", "auto"])
    assert_ok(proc)
    assert "written by 2 process(es) x 8, now 1 x 16" in proc.stdout
    assert epoch_losses(cut) == pytest.approx(epoch_losses(full), rel=1e-4)


def test_table2_times_once_per_job(tmp_path, monkeypatch):
    """Started in every task of a job: rank 0 times; another rank waits for its metrics.json, measuring nothing."""
    import threading

    from mae.engine import distributed
    from reproduce import table2
    monkeypatch.setattr(distributed, "_PLACEMENT", DistInfo(1, 2, 1, None, "slurm"))
    monkeypatch.setattr(table2, "measure", lambda cfg: pytest.fail("rank 1 measured"))
    out = tmp_path / "timing"
    out.mkdir()
    written = {"final": {"img_per_s": 1.0}, "finished": True}
    threading.Timer(0.3, lambda: (out / "metrics.json").write_text(json.dumps(written))).start()
    assert table2.run(table2.TimingConfig(output_dir=str(out))) == written


def test_the_grids_torchrun_launcher_spans_the_nodes_of_an_allocation(monkeypatch):
    from reproduce.grid.launch import GridError, TorchrunLayout
    assert TorchrunLayout().rendezvous() == ["--standalone"] and TorchrunLayout().prefix() == []
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    two = TorchrunLayout(nnodes=2)
    assert two.prefix()[:3] == ["srun", "--nodes=2", "--ntasks-per-node=1"]
    assert "--rdzv-endpoint=gpu07:29500" in two.rendezvous() and "--nnodes=2" in two.rendezvous()
    assert "--rdzv-endpoint=head:1234" in TorchrunLayout(2, "head:1234").rendezvous()
    monkeypatch.delenv("SLURM_JOB_NODELIST")
    monkeypatch.delenv("SLURM_NODELIST", raising=False)
    with pytest.raises(GridError, match="SLURM allocation"):
        two.rendezvous()


def test_amp_auto_is_fp16_with_a_scaler_where_the_gpu_has_no_bf16(monkeypatch):
    from mae.engine.loop import resolve_amp
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a V100 / T4
    assert resolve_amp("auto", torch.device("cuda", 0)) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_amp("auto", torch.device("cuda", 0)) is torch.bfloat16
    assert resolve_amp("auto", torch.device("cpu")) is None


def test_device_auto_says_when_it_falls_back_to_the_cpu(monkeypatch, capsys):
    from mae.engine.loop import describe_device, resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert resolve_device("auto") == torch.device("cpu") and capsys.readouterr().err == ""
    assert resolve_device("auto", expect_gpu=True) == torch.device("cpu")
    assert "chose the CPU although this recipe is meant for GPUs" in capsys.readouterr().err
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    resolve_device("auto")
    assert "CUDA_VISIBLE_DEVICES=0,1" in capsys.readouterr().err
    assert describe_device(torch.device("cpu"), None).startswith("cpu (") and "fp32" in describe_device(
        torch.device("cpu"), None)


def test_a_torchrun_worker_whose_agent_died_saves_and_stops(tmp_path):
    """SIGUSR1 (or SIGKILL) to torchrun's agent alone kills it; its workers, re-parented, stop at the next step
    with a checkpoint (exit 75), instead of training on, orphaned."""
    run = tmp_path / "orphan"
    parent = tmp_path / "agent.py"
    parent.write_text(
        "import os, subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-m', 'mae', *{[*SMOKE, '--epochs', '50', '--batch_size', '8']!r},"
        f" '--output_dir', {str(run)!r}], stderr=open({str(tmp_path / 'child.err')!r}, 'w'))\n"
        "print(child.pid, flush=True)\n"
        f"while not os.path.exists({str(run / 'train_log.csv')!r}): time.sleep(0.05)\n"
        "time.sleep(0.5)\n"
        "os._exit(0)\n")
    agent = subprocess.run([sys.executable, str(parent)], env=clean_env(TORCHELASTIC_RUN_ID="test"), cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    child = int(agent.stdout.split()[0])
    import time
    deadline = time.time() + 120
    while time.time() < deadline and os.path.exists(f"/proc/{child}") and \
            "zombie" not in open(f"/proc/{child}/status").read():
        time.sleep(0.1)
    err = (tmp_path / "child.err").read_text()
    assert "the launcher" in err and "exited: saving at this step" in err, err[-2000:]
    assert "[train] SIGHUP: saved" in err and "exit 75" in err, err[-2000:]
    state = ckpt.load_checkpoint(run / "checkpoint-last.pth")
    assert 0 < state["total_iters"] < 50 * 8


def test_a_resume_on_another_layout_counts_iterations_and_the_epoch_loss_as_the_new_layout(tmp_path):
    """2 x 8 stopped at iteration 3, resumed as 1 x 8 with accum 2 (the same effective batch): iterations are
    counted as a run started at 1 x 8 counts them (--max_iters means the same sample), the epoch's loss is
    weighted by samples, and a resume that would change the effective batch says so."""
    cut, full = tmp_path / "cut", tmp_path / "full"
    assert_ok(mae_run([*SMOKE, "--epochs", "2", "--batch_size", "8", "--output_dir", str(cut), "--max_iters", "3"],
                      nproc=2))
    proc = mae_run([*SMOKE, "--batch_size", "8", "--output_dir", str(cut), "--resume", "auto", "--max_iters", "12"])
    assert_ok(proc)  # (1 x 8 without --accum_iter: half the effective batch; stopped early, only to see the note)
    assert "effective batch 8 now, 16 at the checkpoint" in proc.stdout and "--accum_iter 2 keeps it" in proc.stdout
    assert ckpt.load_checkpoint(cut / "checkpoint-last.pth")["total_iters"] == 12  # 6 (= 3 x 16 / 8) + 6
    cut2 = tmp_path / "cut2"
    assert_ok(mae_run([*SMOKE, "--epochs", "2", "--batch_size", "8", "--output_dir", str(cut2), "--max_iters", "3"],
                      nproc=2))
    assert_ok(mae_run([*SMOKE, "--batch_size", "8", "--accum_iter", "2", "--output_dir", str(cut2), "--resume",
                       "auto"]))
    assert_ok(mae_run([*SMOKE, "--epochs", "2", "--batch_size", "8", "--accum_iter", "2", "--output_dir", str(full)]))
    a, b = ckpt.load_checkpoint(cut2 / "checkpoint-last.pth"), ckpt.load_checkpoint(full / "checkpoint-last.pth")
    assert (a["total_iters"], a["global_step"]) == (b["total_iters"], b["global_step"]) == (16, 8)
    assert epoch_losses(cut2) == pytest.approx(epoch_losses(full), rel=1e-5)


def test_a_two_process_evaluation_reports_the_saved_models_numbers(tmp_path):
    """Each rank evaluates its shard with rank 0's BatchNorm statistics (the saved model's), so the logged
    val_loss is what evaluating the saved checkpoint gives."""
    run = tmp_path / "probe"
    args = ["linprobe", "--preset", "smoke", "--data", "synthetic:64", "--no-progress", "--epochs", "2"]
    assert_ok(mae_run([*args, "--batch_size", "8", "--augment", "--output_dir", str(run)], nproc=2))
    logged = json.loads((run / "log.txt").read_text().splitlines()[-1])["val_loss"]
    ev = tmp_path / "eval"
    assert_ok(mae_run([*args, "--eval_checkpoint", str(run / "checkpoint-last.pth"), "--output_dir", str(ev)]))
    assert json.loads((ev / "metrics.json").read_text())["final"]["val_loss"] == pytest.approx(logged, rel=1e-6)


SHARD_SCRIPT = """
import torch, torch.distributed as dist
from mae.engine.distributed import gather_shards, shard_indices
dist.init_process_group("gloo")
for n in (1, 5, 6):
    idx = shard_indices(n)
    local = torch.tensor([[float(i)] for i in idx]).view(len(idx), 1)
    assert gather_shards(local, n).view(-1).tolist() == [float(i) for i in range(n)], n
dist.destroy_process_group()
print("ok", flush=True)
"""


def test_shards_gather_back_in_order_also_with_fewer_items_than_ranks(tmp_path):
    script = tmp_path / "shards.py"
    script.write_text(SHARD_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], env=clean_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert_ok(proc)
    assert proc.stdout.count("ok") == 2
