"""Pre-training end to end on CPU: learning, kill-and-resume equality, NaN guard, bad data, DDP."""
import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mae.data import DataError
from mae.engine import checkpoint as ckpt
from mae.engine import loop
from mae.protocols import pretrain

REPO = Path(__file__).resolve().parents[1]


def smoke_cfg(tmp_path, **kw):
    base = dataclasses.replace(pretrain.PRESETS["smoke"], output_dir=str(tmp_path / "run"), progress=False)
    return dataclasses.replace(base, **kw)


def losses(run_dir):
    with open(Path(run_dir) / "train_log.csv") as f:
        return [(int(r["iteration"]), r["loss"]) for r in csv.DictReader(f)]


def test_tiny_pretraining_lowers_the_loss(tmp_path):
    cfg = smoke_cfg(tmp_path, data="synthetic:128", epochs=15, warmup_epochs=1, blr=4e-3)
    result = pretrain.run(cfg)
    hist = [h["train_loss"] for h in result["history"]]
    assert hist[-1] < 0.8 * hist[0], hist
    run = Path(cfg.output_dir)
    assert (run / "checkpoint-last.pth").is_file() and (run / "metrics.json").is_file()
    sd = ckpt.extract_state_dict(ckpt.load_checkpoint(run / "checkpoint-last.pth"))
    assert "decoder_pred.weight" in sd and "mask_token" in sd  # official layout in the file


def test_checkpoints_record_the_model_config_and_old_ones_still_load(tmp_path):
    """Beside the run's config, a checkpoint holds the model's own (MAEConfig): a loader builds the model from it,
    without the protocol; a file written before that (run config only) loads as before."""
    from mae.models.loader import load_mae_checkpoint
    cfg = smoke_cfg(tmp_path, target="norm_pixel", decoder_embed_dim=16, save_init=True)
    pretrain.run(cfg)
    run = Path(cfg.output_dir)
    model = pretrain.build_model(cfg)
    for name in ("checkpoint-last.pth", pretrain.INIT_CHECKPOINT):
        state = ckpt.load_checkpoint(run / name)
        assert state["model_config"] == dataclasses.asdict(model.config) and state["model_config_class"] == "MAEConfig"
    loaded = load_mae_checkpoint(run / "checkpoint-last.pth")
    assert loaded.source == "ours" and loaded.model.config == model.config
    state = ckpt.load_checkpoint(run / "checkpoint-last.pth")
    old = {k: v for k, v in state.items() if not k.startswith("model_config")}  # as written before
    ckpt.save_checkpoint(old, tmp_path / "old.pth")
    again = load_mae_checkpoint(tmp_path / "old.pth")
    assert again.model.config == model.config and again.train_mask_ratio == cfg.mask_ratio
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in loaded.model.state_dict().items())


class _Crash(RuntimeError):
    pass


def _crashing_trainer(at_iteration):
    """A Trainer whose process 'dies' (an exception) when it reaches overall iteration ``at_iteration``."""
    class CrashingTrainer(loop.Trainer):
        def train_step(self, m, b):
            if self.total_iters >= at_iteration:
                raise _Crash("killed")
            return super().train_step(m, b)
    return CrashingTrainer


@pytest.mark.parametrize("accum,workers,strategy", [(1, 0, "random"), (2, 2, "block")])
def test_kill_mid_epoch_and_resume_is_bitwise_identical(tmp_path, monkeypatch, accum, workers, strategy):
    common = dict(data="synthetic:64", epochs=3, batch_size=8, accum_iter=accum, warmup_epochs=1,
                  ckpt_every_iters=1, num_workers=workers, mask_strategy=strategy, augmentation="crop_rand_jitter")
    ref = smoke_cfg(tmp_path / "a", **common)
    pretrain.run(ref)
    full = losses(ref.output_dir)
    assert len(full) == 3 * 8
    # run B dies at iteration 13 (epoch 1, iteration 5: mid-epoch, after the step-6 checkpoint when accum=2)
    cfg = smoke_cfg(tmp_path / "b", **common)
    monkeypatch.setattr(pretrain, "Trainer", _crashing_trainer(13))
    with pytest.raises(_Crash):
        pretrain.run(cfg)
    state = ckpt.load_checkpoint(Path(cfg.output_dir) / "checkpoint-last.pth")
    assert state["epoch"] == 1 and 0 < state["iter"] < 8  # a mid-epoch checkpoint
    monkeypatch.setattr(pretrain, "Trainer", loop.Trainer)
    pretrain.run(dataclasses.replace(cfg, resume="auto"))
    assert losses(cfg.output_dir) == full  # same per-iteration losses, to the last printed digit
    a = ckpt.extract_state_dict(ckpt.load_checkpoint(Path(ref.output_dir) / "checkpoint-last.pth"))
    b = ckpt.extract_state_dict(ckpt.load_checkpoint(Path(cfg.output_dir) / "checkpoint-last.pth"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise-equal final weights


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = smoke_cfg(tmp_path, data="synthetic:64", epochs=2, batch_size=8, ckpt_every_iters=2)

    class NaNTrainer(loop.Trainer):
        def train_step(self, m, b):
            loss, metrics = super().train_step(m, b)
            return (loss * float("nan") if self.total_iters == 5 else loss), metrics

    monkeypatch.setattr(pretrain, "Trainer", NaNTrainer)
    with pytest.raises(loop.NonFiniteLossError, match="loss is nan at epoch 0, iteration 5.*last good checkpoint"):
        pretrain.run(cfg)
    state = ckpt.load_checkpoint(Path(cfg.output_dir) / "checkpoint-last.pth")
    assert state["total_iters"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_missing_or_empty_data_fails_before_training(tmp_path):
    with pytest.raises(DataError, match="nope"):
        pretrain.run(smoke_cfg(tmp_path, data=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        pretrain.run(smoke_cfg(tmp_path, data=str(tmp_path / "empty")))
    assert not (tmp_path / "run" / "checkpoint-last.pth").exists()


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    from PIL import Image
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (40, 40), (i * 20, 100, 50)).save(root / c / f"{i}.jpg")
    (root / "a" / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "b" / "trunc.jpg").write_bytes((root / "b" / "0.jpg").read_bytes()[:30])
    cfg = smoke_cfg(tmp_path, data=str(root), epochs=1, batch_size=6)
    with pytest.warns(UserWarning):
        result = pretrain.run(cfg)
    assert result["final"]["skipped_images"] == 2


def test_truncated_resume_checkpoint_is_a_clear_error(tmp_path):
    cfg = smoke_cfg(tmp_path, data="synthetic:32", batch_size=8)
    pretrain.run(cfg)
    last = Path(cfg.output_dir) / "checkpoint-last.pth"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(ckpt.CheckpointError, match="truncated"):
        pretrain.run(dataclasses.replace(cfg, resume="auto"))


def test_pca_target_is_fitted_and_trains(tmp_path):
    cfg = smoke_cfg(tmp_path, data="synthetic:32", batch_size=8, target="pca", pca_components=24, pca_fit_images=16)
    result = pretrain.run(cfg)
    sd = ckpt.load_checkpoint(Path(cfg.output_dir) / "checkpoint-last.pth")["model"]
    assert sd["target.components"].shape == (24, 192) and sd["target.components"].abs().sum() > 0
    assert sd["decoder_pred.weight"].shape[0] == 24 and result["finished"]


def test_two_process_gloo_ddp_run(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mae", "pretrain", "--preset", "smoke", "--output_dir", str(out), "--no-progress",
           "--data", "synthetic:64", "--batch_size", "8", "--epochs", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = ckpt.load_checkpoint(out / "checkpoint-last.pth")
    assert state["world_size"] == 2 and state["global_step"] == 2 * (64 // (8 * 2))
    records = [json.loads(l) for l in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]


@pytest.mark.parametrize("input_path", ["gpu_decode", "worker_decode"])
def test_jpeg_input_paths_train_on_a_jpeg_folder(tmp_path, input_path):
    """--input_path gpu_decode (workers read bytes, the device decodes; CPU fallback here) and
    worker_decode (workers decode + crop, the device resizes): same loop, same checkpoints."""
    from PIL import Image
    root = tmp_path / "jpegs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (48, 40), (i * 30, 90, 160)).save(root / c / f"{i}.jpg")
    cfg = smoke_cfg(tmp_path, data=str(root), input_path=input_path, batch_size=8, epochs=2)
    result = pretrain.run(cfg)
    assert result["finished"] and len(losses(cfg.output_dir)) == 4
    with pytest.raises(DataError, match=f"input_path {input_path} needs an image folder"):
        pretrain.run(smoke_cfg(tmp_path, data="synthetic:32", input_path=input_path))


def test_unknown_input_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--input_path must be one of pil, gpu_decode, worker_decode"):
        pretrain.run(smoke_cfg(tmp_path, input_path="dali"))


def test_uint8_batches_give_the_float_pipelines_losses(tmp_path, monkeypatch):
    """The PIL path sends uint8 crops and normalises per batch (NormalizeBatch): the per-iteration
    losses are bitwise those of per-image ToTensor + Normalize in the workers."""
    from mae.data import NormalizeBatch, transforms
    cfg = smoke_cfg(tmp_path / "u8", batch_size=8, epochs=1)
    pretrain.run(cfg)
    ref = losses(cfg.output_dir)

    real = transforms.pretrain_transform
    monkeypatch.setattr("mae.data.pretrain_transform", lambda *a, normalize=True, **k: real(*a, **k))
    monkeypatch.setattr(NormalizeBatch, "images", lambda self, x: pytest.fail("float batches expected")
                        if x.dtype == torch.uint8 else x)
    cfg_f = smoke_cfg(tmp_path / "f32", batch_size=8, epochs=1)
    pretrain.run(cfg_f)
    assert losses(cfg_f.output_dir) == ref and len(ref) > 0


def test_deferred_loss_check_never_lets_a_nan_reach_a_checkpoint(tmp_path, monkeypatch):
    """The GPU mode of the guard (no per-step host sync), forced on CPU: same error, same kept checkpoint."""
    cfg = smoke_cfg(tmp_path, data="synthetic:64", epochs=2, batch_size=8, ckpt_every_iters=2, log_every=4)

    class DeferredNaNTrainer(loop.Trainer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.defer_loss_check = True

        def train_step(self, m, b):
            loss, metrics = super().train_step(m, b)
            return (loss * float("nan") if self.total_iters == 5 else loss), metrics

    monkeypatch.setattr(pretrain, "Trainer", DeferredNaNTrainer)
    with pytest.raises(loop.NonFiniteLossError, match="loss is nan at epoch 0, iteration 5 "):
        pretrain.run(cfg)
    state = ckpt.load_checkpoint(Path(cfg.output_dir) / "checkpoint-last.pth")
    assert state["total_iters"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_deferred_loss_check_gives_the_same_losses(tmp_path):
    from mae.engine.runlog import LossMonitor
    calls = []
    for deferred in (False, True):
        mon = LossMonitor(torch.device("cpu"), deferred, lambda v, i: calls.append((v, i)))
        for i, x in enumerate([1.5, 2.25, 0.125]):
            mon.add(torch.tensor(x), i)
        assert mon.last() == 0.125 and mon.mean() == pytest.approx((1.5 + 2.25 + 0.125) / 3)
    assert calls == []


def test_weight_decay_groups_tokens_per_reference_or_official():
    from mae.engine.optim import param_groups_weight_decay
    from mae.models import create_mae
    model = create_mae("mae_vit_smoke")
    names = {id(p): n for n, p in model.named_parameters()}

    def decayed(groups):
        return {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    ref = decayed(param_groups_weight_decay(model, 0.05))
    official = decayed(param_groups_weight_decay(model, 0.05, skip_model_tokens=False))
    assert "cls_token" not in ref and "mask_token" not in ref and "blocks.0.attn.qkv.weight" in ref
    assert official - ref == {"cls_token", "mask_token"}
    assert not any(n.endswith(".bias") or "norm" in n or "pos_embed" in n for n in official)


def test_effective_batch_is_printed_and_a_recipe_mismatch_warns(tmp_path, capsys):
    """lr = blr * eff / 256: a paper preset on fewer GPUs silently trains another recipe unless told."""
    cfg = smoke_cfg(tmp_path, data="synthetic:32", batch_size=8, accum_iter=2, epochs=1, recipe_batch=64)
    with pytest.warns(loop.RecipeBatchWarning, match=r"effective batch 16 differs from the recipe's 64.*--accum_iter 8"):
        pretrain.run(cfg)
    assert "effective batch 16 = 8 x accum 2 x 1 process(es); lr" in capsys.readouterr().out
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", loop.RecipeBatchWarning)
        pretrain.run(smoke_cfg(tmp_path / "ok", data="synthetic:32", batch_size=8, accum_iter=2, epochs=1,
                               recipe_batch=16))
    for name in ("paper_vit_base", "paper_vit_large", "paper_vit_huge"):
        assert pretrain.PRESETS[name].recipe_batch == 4096


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_prefetch_gives_the_synchronous_losses(tmp_path):
    """On CUDA with loader workers the batches are normalised a batch ahead on a side stream; the losses
    equal those of the synchronous path (num_workers=0), fast path off so both run the same kernels."""
    kw = dict(data="synthetic:64", batch_size=16, epochs=2, device="cuda", fast_path="off", amp="none")
    pretrain.run(smoke_cfg(tmp_path / "sync", num_workers=0, **kw))
    pretrain.run(smoke_cfg(tmp_path / "prefetch", num_workers=2, **kw))
    a, b = losses(tmp_path / "sync" / "run"), losses(tmp_path / "prefetch" / "run")
    assert len(a) == len(b) > 0
    assert all(x[0] == y[0] and float(x[1]) == pytest.approx(float(y[1]), rel=1e-5) for x, y in zip(a, b))


def test_config_files_of_older_runs_with_gpu_decode_still_load(tmp_path):
    from mae.config import load_config_file
    old = tmp_path / "config.yaml"
    old.write_text("epochs: 3\ngpu_decode: true\n")
    cfg = load_config_file(pretrain.Config, old)
    assert cfg.input_path == "gpu_decode" and cfg.epochs == 3
    old.write_text("gpu_decode: false\n")
    assert load_config_file(pretrain.Config, old).input_path == "pil"


def test_prefetch_thread_keeps_losses_and_mid_epoch_resume(tmp_path, monkeypatch):
    """The training loop's prefetch branch (CUDA-only in use) run on the CPU: a background thread prepares
    each batch; per-iteration losses, also across a mid-epoch stop + resume, are those of the plain loop."""
    kw = dict(data="synthetic:48", batch_size=8, epochs=2, num_workers=1, log_every=1)
    pretrain.run(smoke_cfg(tmp_path / "plain", **kw))
    ref = losses(tmp_path / "plain" / "run")
    monkeypatch.setattr(loop.Trainer, "prefetches", property(lambda self: self.prefetch))
    pretrain.run(smoke_cfg(tmp_path / "thread", **kw))
    assert losses(tmp_path / "thread" / "run") == ref
    cut = smoke_cfg(tmp_path / "resumed", max_iters=8, **kw)  # 6 iterations per epoch: stops in epoch 2
    assert not pretrain.run(cut)["finished"]
    assert pretrain.run(dataclasses.replace(cut, max_iters=None, resume="auto"))["finished"]
    assert losses(cut.output_dir) == ref
