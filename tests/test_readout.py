"""mae/protocols/readout.py: kNN / k-shot / converged-probe readouts, the pixel control, and the exact
initialisation control (pretrain's checkpoint-init.pth)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from mae.protocols import readout


def _blobs(n_per: int, seed: int, shift: float = 6.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(n_per, 8, generator=g) + shift * torch.eye(8)[c] for c in range(3)])
    return x, torch.arange(3).repeat_interleave(n_per)


def test_readouts_separate_blobs_and_count_per_image():
    tx, ty = _blobs(30, 0)
    vx, vy = _blobs(10, 1)
    cfg = readout.Config(shot_draws=5)
    m, correct = readout.readouts(tx, ty, vx, vy, 3, cfg)
    assert m["knn"] == 100.0 and m["lbfgs"] == 100.0 and m["lbfgs_converged"] == 1.0
    assert m["shot10"] == 100.0 and 0 <= m["shot1_se"] < 20
    assert len(correct["knn"]) == 30 and sum(correct["lbfgs"]) == 30
    # labels shuffled against features: the readouts fall to about chance
    m, _ = readout.readouts(tx, ty[torch.randperm(90, generator=torch.Generator().manual_seed(0))], vx, vy, 3, cfg)
    assert m["lbfgs"] < 70 and m["knn"] < 70


def test_shot_indices_take_k_per_class():
    labels = np.array([0] * 5 + [1] * 2 + [2] * 9)
    idx = readout.shot_indices(labels, 3, np.random.default_rng(0))
    assert sorted(np.bincount(labels[idx]).tolist()) == [2, 3, 3]  # class 1 has only 2
    assert len(set(idx.tolist())) == len(idx)


def test_pixel_readout_is_deterministic_and_writes_metrics(tmp_path):
    cfg = replace(readout.PRESETS["smoke"], source="pixels", output_dir=str(tmp_path / "a"))
    a = readout.run(cfg)
    b = readout.run(replace(cfg, output_dir=str(tmp_path / "b")))
    assert a["final"] == b["final"] and a["final"]["n_val"] == 12 and a["final"]["num_classes"] == 10
    assert "knn_mean" not in a["final"]  # one pixel feature, no second token
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["finished"] and m["provenance"]["device"].startswith("cpu") and len(m["correct"]["knn"]) == 12
    with pytest.raises(ValueError, match="source"):
        readout.Config(source="tokens")


def test_checkpoint_init_holds_the_exact_starting_weights(tmp_path):
    from mae.engine.checkpoint import load_checkpoint
    from mae.engine.loop import seed_everything
    from mae.protocols import pretrain
    cfg = replace(pretrain.PRESETS["smoke"], output_dir=str(tmp_path / "pre"), save_init=True, progress=False)
    pretrain.run(cfg)
    seed_everything(cfg.seed)
    fresh = pretrain.build_model(cfg).state_dict()  # what run() builds before the first step
    init = load_checkpoint(tmp_path / "pre" / pretrain.INIT_CHECKPOINT)["model"]
    last = load_checkpoint(tmp_path / "pre" / "checkpoint-last.pth")["model"]
    assert set(init) == set(fresh) and all(torch.equal(init[k], fresh[k]) for k in fresh)
    assert any(not torch.equal(init[k], last[k]) for k in init)  # training moved the weights
    # the readout loads it like any pre-training checkpoint (the encoder's weights, decoder dropped)
    model = readout.build_encoder(replace(readout.PRESETS["smoke"], finetune=str(tmp_path / "pre" /
                                                                            pretrain.INIT_CHECKPOINT)), 10)
    assert torch.equal(model.pos_embed, init["pos_embed"]) and torch.equal(model.blocks[0].attn.qkv.weight,
                                                                            init["blocks.0.attn.qkv.weight"])


def test_the_logistic_regressions_run_on_one_blas_thread(monkeypatch):
    """A multi-threaded BLAS made the smoke scale's raw-pixel readout take a minute on 2 busy cores (spinning
    threads on a 64 x 3072 problem); the fits run on one thread, whatever the process's BLAS default."""
    from threadpoolctl import threadpool_info, threadpool_limits
    seen = []
    real = readout._logreg

    def spy(*args, **kwargs):
        seen.append({lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"})
        return real(*args, **kwargs)

    monkeypatch.setattr(readout, "_logreg", spy)
    tx, ty = _blobs(10, 0)
    vx, vy = _blobs(4, 1)
    with threadpool_limits(limits=2, user_api="blas"):  # what an unset OMP_NUM_THREADS gives on 2 cores
        readout.readouts(tx, ty, vx, vy, 3, readout.Config(shot_draws=2, shots=(1,)))
    assert len(seen) == 3 and all(threads == {1} for threads in seen), seen
