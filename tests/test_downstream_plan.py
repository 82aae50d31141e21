"""downstream/plan.py: the effective batch and the schedule of Tables 4 / 5 on any number of GPUs (planned, not run)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from _openmmlab import require_openmmlab

from downstream.plan import (BatchPlan, BatchPlanError, apply_accumulation, per_gpu_choices, plan_batch, steps_for,
                             world_size)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("world,per_gpu,accum", [(1, 64, 1), (8, 8, 1), (16, 4, 1), (64, 1, 1)])
def test_coco_batch_64_on_1_8_16_64_gpus(world, per_gpu, accum):
    plan = plan_batch(64, world)
    assert (plan.per_gpu_batch, plan.accumulation, plan.effective_batch) == (per_gpu, accum, 64)


@pytest.mark.parametrize("world,cap,per_gpu,accum", [(1, 4, 4, 16), (8, 4, 4, 2), (16, 4, 4, 1), (64, 4, 1, 1),
                                                    (8, 3, 2, 4), (16, 1, 1, 4)])
def test_a_per_gpu_cap_is_made_up_by_accumulation(world, cap, per_gpu, accum):
    plan = plan_batch(64, world, max_per_gpu=cap)
    assert plan == BatchPlan(world, per_gpu, accum) and plan.effective_batch == 64


@pytest.mark.parametrize("world,per_gpu,accum", [(1, 2, 8), (8, 2, 1), (16, 1, 1)])
def test_ade20k_batch_16(world, per_gpu, accum):
    assert plan_batch(16, world, max_per_gpu=2) == BatchPlan(world, per_gpu, accum)


def test_combinations_that_cannot_keep_the_batch_are_refused():
    with pytest.raises(BatchPlanError, match="64 GPUs cannot keep the recipe's effective batch of 16"):
        plan_batch(16, 64)
    with pytest.raises(BatchPlanError, match=r"64 / 12 is not an integer.*\{1, 2, 4, 8, 16, 32, 64\}"):
        plan_batch(64, 12)
    with pytest.raises(BatchPlanError, match=">= 1"):
        plan_batch(64, 8, max_per_gpu=0)
    assert per_gpu_choices(64, 16) == [4, 2, 1]


def test_world_size_from_the_launcher_or_the_flag():
    assert world_size(None, {}) == 1
    assert world_size(None, {"WORLD_SIZE": "16"}) == 16
    assert world_size(64, {}) == 64  # planning another machine
    with pytest.raises(BatchPlanError, match="launcher started 8"):
        world_size(16, {"WORLD_SIZE": "8"})


def test_schedules_in_optimizer_steps():
    assert steps_for({"epochs": {"base": 100, "huge": 75}}, "base", 118000, 64) == (184375, 100.0)
    assert steps_for({"epochs": {"base": 100, "huge": 75}}, "huge", 118000, 64) == (138281, 75.0)  # ViTDet's 3/4
    assert steps_for({"epochs": 100}, "large", 20210, 16) == (126312, 100.0)  # ADE20K, paper A.4
    steps, epochs = steps_for({"iters": 160000}, "base", 20210, 16)
    assert steps == 160000 and epochs == pytest.approx(126.67, abs=0.01)
    with pytest.raises(BatchPlanError, match="not for the ViT size 'large'"):
        steps_for({"epochs": {"base": 100}}, "large", 118000, 64)


def test_accumulation_scales_every_iteration_count_of_the_config():
    require_openmmlab()
    from mmengine.config import Config
    cfg = Config(dict(
        optim_wrapper=dict(type="OptimWrapper"), train_cfg=dict(max_iters=100, val_interval=100),
        param_scheduler=[dict(type="LinearLR", begin=0, end=10), dict(type="MultiStepLR", begin=0, end=100,
                                                                      milestones=[80, 95])],
        default_hooks=dict(checkpoint=dict(interval=50), logger=dict(interval=5))))
    apply_accumulation(cfg, 4)
    assert cfg.optim_wrapper.accumulative_counts == 4
    assert (cfg.train_cfg.max_iters, cfg.train_cfg.val_interval) == (400, 400)
    assert [(s["begin"], s["end"]) for s in cfg.param_scheduler] == [(0, 40), (0, 400)]
    assert cfg.param_scheduler[1]["milestones"] == [320, 380]
    assert (cfg.default_hooks.checkpoint.interval, cfg.default_hooks.logger.interval) == (200, 20)


# ------------------------------------------------------------------------------ --dry-run (OpenMMLab)
def _stub_vit_b(path: Path) -> Path:
    """A ViT-B/16-shaped MAE checkpoint of a few KB (every tensor a stride-0 view: shapes only)."""
    import torch

    from mae.models import create_mae
    with torch.device("meta"):
        sd = create_mae("mae_vit_base_patch16").state_dict()
    torch.save({"model": {k: torch.zeros(1).expand(v.shape) for k, v in sd.items()}}, path)
    return path


def _dry_run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, str(REPO / "downstream" / script), "--scale", "paper", "--dry-run", *args],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.downstream
def test_coco_paper_dry_run_prints_the_resolved_recipe(tmp_path):
    require_openmmlab()
    from downstream.fixtures import make_coco_fixture
    data = make_coco_fixture(tmp_path / "coco", num_train=2, num_val=1)
    ckpt = _stub_vit_b(tmp_path / "vit_b.pth")
    out = _dry_run("coco_det.py", "--data", str(data), "--ckpt", str(ckpt), "--world-size", "16",
                   "--work-dir", str(tmp_path / "run"))
    assert "ViT size 'base', pyramid 'paper'" in out
    for line in ("world size        16", "per-GPU batch     4", "accumulation      1",
                 "effective batch   64 = 16 GPUs x 4 x 1", "100 epochs of 118,000 images = 184,375 optimizer steps",
                 "lr                0.0001"):
        assert line in out, out
    assert "memory per GPU    ~" in out and "GB estimated of 80 GB" in out and "without / with checkpointing" in out
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").glob("*.pth"))  # nothing trained


@pytest.mark.downstream
def test_ade20k_dry_run_keeps_batch_16_and_names_the_schedule(tmp_path):
    require_openmmlab()
    from downstream.fixtures import make_ade20k_fixture
    data = make_ade20k_fixture(tmp_path / "ade", num_train=2, num_val=1)
    ckpt = _stub_vit_b(tmp_path / "vit_b.pth")
    common = ["--data", str(data), "--ckpt", str(ckpt), "--work-dir", str(tmp_path / "run")]
    out = _dry_run("ade20k_seg.py", *common, "--world-size", "8")
    assert "'paper': 100 epochs of 20,210 images = 126,312 optimizer steps" in out
    assert "effective batch   16 = 8 GPUs x 2 x 1" in out
    out = _dry_run("ade20k_seg.py", *common, "--world-size", "1", "--per-gpu-batch", "2", "--schedule", "mmseg160k")
    assert "'mmseg160k'" in out and "= 160,000 optimizer steps (1,280,000 loop iterations)" in out
    assert "effective batch   16 = 1 GPUs x 2 x 8" in out


@pytest.mark.downstream
def test_a_world_size_that_cannot_keep_the_batch_is_one_line(tmp_path):
    require_openmmlab()
    from downstream import ade20k_seg
    from downstream.fixtures import make_ade20k_fixture
    data = make_ade20k_fixture(tmp_path / "ade", num_train=2, num_val=1)
    ckpt = _stub_vit_b(tmp_path / "vit_b.pth")
    with pytest.raises(BatchPlanError, match="64 GPUs cannot keep the recipe's effective batch of 16"):
        ade20k_seg.run(["--scale", "paper", "--data", str(data), "--ckpt", str(ckpt), "--world-size", "64",
                        "--dry-run", "--work-dir", str(tmp_path / "run")])
