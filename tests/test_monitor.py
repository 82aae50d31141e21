"""The kNN representation monitor of pre-training: the classifier by hand, RNG neutrality, the logs."""
import csv
import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mae.data import DataError
from mae.engine import checkpoint as ckpt
from mae.engine.monitor import is_due, preserved_rng
from mae.knn import knn_predict, knn_top1
from mae.protocols import pretrain

# bank (unnormalised on purpose: the rule uses cosine similarity) and two queries, worked by hand:
# q0 = (0, 1): cosines 1.0 (label 1), 0.8 (0), 0.6 (0), 0.0 (1); the 3 nearest vote
#   T = 0.1: label 1 weighs e^10 = 22026, label 0 e^8 + e^6 = 3384  -> 1
#   T = 1:   label 1 weighs e^1 = 2.718,  label 0 e^.8 + e^.6 = 4.048 -> 0 (the plain majority)
# q1 = (-1, 0.1): cosines 0.0995 (1), -0.517 (0), -0.736 (0), -0.995 (1)
#   T = 0.1: e^0.995 = 2.70 vs e^-5.17 + e^-7.36 = 0.006 -> 1;  T = 1: 1.105 vs 0.596 + 0.479 = 1.075 -> 1
BANK = torch.tensor([[0.0, 2.0], [3.0, 4.0], [4.0, 3.0], [5.0, 0.0]])
BANK_LABELS = torch.tensor([1, 0, 0, 1])
QUERIES = torch.tensor([[0.0, 1.0], [-1.0, 0.1]])


def test_knn_vote_matches_the_hand_computed_example():
    assert knn_predict(BANK, BANK_LABELS, QUERIES, num_classes=2, k=3, temperature=0.1).tolist() == [1, 1]
    assert knn_predict(BANK, BANK_LABELS, QUERIES, num_classes=2, k=3, temperature=1.0).tolist() == [0, 1]
    assert knn_top1(BANK, BANK_LABELS, QUERIES, torch.tensor([1, 1]), k=3, temperature=1.0) == 50.0
    # k = 1 is nearest-neighbour; k beyond the bank is capped at its size (all 4 vote)
    assert knn_predict(BANK, BANK_LABELS, QUERIES, 2, k=1).tolist() == [1, 1]
    assert knn_predict(BANK, BANK_LABELS, QUERIES, 2, k=50, temperature=1.0).tolist() == \
        knn_predict(BANK, BANK_LABELS, QUERIES, 2, k=4, temperature=1.0).tolist()
    # chunking the queries changes nothing
    q = torch.randn(37, 2)
    assert torch.equal(knn_predict(BANK, BANK_LABELS, q, 2, k=3, chunk=5), knn_predict(BANK, BANK_LABELS, q, 2, k=3))


def test_preserved_rng_restores_every_generator():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    with preserved_rng():
        torch.rand(5), np.random.rand(5), random.random()
    after = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1]) and after[2] == expected[2]


def test_due_epochs():
    assert [e for e in range(7) if is_due(e, 2, 7)] == [1, 3, 5, 6]  # every 2nd and the last
    assert not any(is_due(e, 0, 7) for e in range(7))


def smoke_cfg(tmp_path, **kw):
    base = dataclasses.replace(pretrain.PRESETS["smoke"], output_dir=str(tmp_path / "run"), progress=False,
                               data="synthetic:64", batch_size=8, epochs=3)
    return dataclasses.replace(base, **kw)


def read_rows(run_dir):
    with open(Path(run_dir) / "train_log.csv") as f:
        return list(csv.DictReader(f))


def test_monitor_on_leaves_training_bitwise_unchanged(tmp_path):
    off = smoke_cfg(tmp_path / "off")
    on = smoke_cfg(tmp_path / "on", monitor_every=1, monitor_linear=True)
    pretrain.run(off)
    result = pretrain.run(on)
    assert all("knn_cls" in h and "knn_mean" in h for h in result["history"])
    loss = lambda cfg: [(r["iteration"], r["loss"]) for r in read_rows(cfg.output_dir)]
    assert loss(on) == loss(off)  # every logged loss, to the last printed digit
    a = ckpt.load_checkpoint(Path(off.output_dir) / "checkpoint-last.pth")
    b = ckpt.load_checkpoint(Path(on.output_dir) / "checkpoint-last.pth")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # bitwise-equal weights
    assert same(a["rng"], b["rng"])  # torch, numpy and python RNG states at the end: the same


def same(x, y):
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
    if isinstance(x, torch.Tensor):
        return torch.equal(x, y)
    return x == y or (x != x and y != y)  # nan (an unset cached gaussian) equals nan


def test_monitor_columns_in_train_log_and_log_txt(tmp_path):
    cfg = smoke_cfg(tmp_path, monitor_every=2, vis_every=0)
    pretrain.run(cfg)
    rows = read_rows(cfg.output_dir)
    assert list(rows[0]) == ["epoch", "iteration", "lr", "loss", "knn_cls", "knn_mean"]
    filled = [(int(r["epoch"]), int(r["iteration"])) for r in rows if r["knn_cls"] != ""]
    assert filled == [(1, 15), (2, 23)]  # the last row of epochs 2 and 3 (the last epoch), numbered from 0
    assert all(r["knn_mean"] == "" for r in rows if (int(r["epoch"]), int(r["iteration"])) not in filled)
    assert all(0.0 <= float(r["knn_cls"]) <= 100.0 for r in rows if r["knn_cls"])
    records = [json.loads(line) for line in (Path(cfg.output_dir) / "log.txt").read_text().splitlines()]
    assert ["knn_cls" in r for r in records] == [False, True, True]
    by_epoch = {int(r["epoch"]): float(r["knn_cls"]) for r in rows if r["knn_cls"]}
    assert by_epoch == {r["epoch"]: r["knn_cls"] for r in records if "knn_cls" in r}
    assert (Path(cfg.output_dir) / "knn.png").is_file()  # the curve, drawn even without reconstruction figures


def test_monitor_off_keeps_the_log_columns(tmp_path):
    cfg = smoke_cfg(tmp_path, epochs=1)
    pretrain.run(cfg)
    assert list(read_rows(cfg.output_dir)[0]) == ["epoch", "iteration", "lr", "loss"]
    assert not (Path(cfg.output_dir) / "knn.png").exists()
    assert pretrain.Config().monitor_every == 0
    assert all(p.monitor_every == 0 for name, p in pretrain.PRESETS.items() if name != "demo")


def test_unlabelled_monitor_data_fails_before_training(tmp_path):
    with pytest.raises(DataError, match="unlabelled"):
        pretrain.run(smoke_cfg(tmp_path, monitor_every=1, monitor_data="photos:20"))
    assert not (tmp_path / "run" / "train_log.csv").exists()


def test_cost_benchmark_runs_at_toy_size(capsys):
    from bench import monitor_cost
    rows = monitor_cost.main(["--preset", "smoke", "--sizes", "16:8", "--rounds", "1", "--steps", "1"])
    assert rows[0]["bank"] == 16 and rows[0]["queries"] == 8 and rows[0]["ratio"] > 0
    assert "% of the epoch" in capsys.readouterr().out


def test_killed_and_resumed_run_logs_what_the_uninterrupted_run_logs(tmp_path, monkeypatch):
    from mae.engine import loop

    class Crash(RuntimeError):
        pass

    class CrashingTrainer(loop.Trainer):  # the process 'dies' at overall iteration 13 (mid epoch 1)
        def train_step(self, m, b):
            if self.total_iters >= 13:
                raise Crash("killed")
            return super().train_step(m, b)

    common = dict(monitor_every=1, ckpt_every_iters=2)
    ref = smoke_cfg(tmp_path / "ref", **common)
    pretrain.run(ref)
    cfg = smoke_cfg(tmp_path / "cut", **common)
    monkeypatch.setattr(pretrain, "Trainer", CrashingTrainer)
    with pytest.raises(Crash):
        pretrain.run(cfg)
    monkeypatch.setattr(pretrain, "Trainer", loop.Trainer)
    pretrain.run(dataclasses.replace(cfg, resume="auto"))
    assert read_rows(cfg.output_dir) == read_rows(ref.output_dir)  # losses and kNN columns alike
