"""Linear probing: frozen encoder (no gradient, eval mode), BN head, LARS, the feature-cache fast path."""
import dataclasses
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from mae.engine.checkpoint import load_checkpoint
from mae.protocols import linprobe


def smoke(tmp_path, **kw):
    return replace(linprobe.PRESETS["smoke"], output_dir=str(tmp_path), **kw)


def test_paper_presets_follow_the_recipe():
    for name, model in (("paper_vit_base", "vit_base_patch16"), ("paper_vit_large", "vit_large_patch16"),
                        ("paper_vit_huge", "vit_huge_patch14")):
        c = linprobe.PRESETS[name]
        assert (c.model, c.blr, c.weight_decay, c.warmup_epochs, c.epochs, c.momentum) == (model, 0.1, 0.0, 10, 90, 0.9)
        assert c.batch_size * c.accum_iter * 32 == 16384 and c.global_pool is False and c.augment
        assert c.trust_coefficient == 0.001 and c.head_init_std == 0.01
    assert all(f.metadata.get("help") for f in dataclasses.fields(linprobe.Config))


def test_frozen_encoder_gets_no_gradient_and_stays_in_eval_mode(tmp_path, pretrained):
    model = linprobe.build_model(smoke(tmp_path, finetune=str(pretrained)), nb_classes=10)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.1.weight", "head.1.bias"}
    model.train()
    assert not model.blocks.training and not model.norm.training and model.head[0].training  # BN: batch stats
    F.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.arange(8)).backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in trainable), n
    assert model.head[0].num_batches_tracked == 1


def test_run_trains_only_the_head_with_lars(tmp_path, pretrained):
    result = linprobe.run(smoke(tmp_path, finetune=str(pretrained), epochs=2))
    assert result["finished"] and "acc1" in result["final"]
    ck = load_checkpoint(tmp_path / "checkpoint-last.pth")
    sd0 = torch.load(pretrained)["model"]
    for k in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.1.mlp.fc2.weight", "norm.weight"):
        assert torch.equal(ck["model"][k], sd0[k]), k
    assert set(ck["model"]) >= {"head.0.running_mean", "head.1.weight"}
    assert all("mu" in s for s in ck["optimizer"]["state"].values())  # LARS momentum buffers
    assert len(ck["optimizer"]["state"]) == 2  # head weight and bias only


def test_cached_features_equal_the_full_path_without_augmentation(tmp_path, pretrained):
    # lr 50: LARS moves each weight matrix by ~lr * 0.001 of its norm per step, so the head moves visibly
    kw = dict(finetune=str(pretrained), epochs=3, lr=50.0)
    full = linprobe.run(smoke(tmp_path / "full", augment=False, **kw))
    fast = linprobe.run(smoke(tmp_path / "fast", augment=False, cache_features=True, **kw))
    linprobe.run(smoke(tmp_path / "aug", augment=True, **kw))
    a = load_checkpoint(tmp_path / "full" / "checkpoint-last.pth")["model"]
    b = load_checkpoint(tmp_path / "fast" / "checkpoint-last.pth")["model"]
    c = load_checkpoint(tmp_path / "aug" / "checkpoint-last.pth")["model"]
    assert set(b) == {k for k in a if k.startswith("head.")}
    for k in b:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=1e-5, atol=1e-6, msg=k)
    # with the paper's augmentation the full path trains on other views: not the same head
    assert (c["head.1.weight"] - b["head.1.weight"]).abs().max() > 1e-3
    assert fast["final"]["acc1"] == pytest.approx(full["final"]["acc1"])
    assert fast["final"]["val_loss"] == pytest.approx(full["final"]["val_loss"], rel=1e-4)
    # the whole classifier of the fast path, in the official linear-probe layout, evaluates the same
    ev = linprobe.run(smoke(tmp_path / "ev", eval_checkpoint=str(tmp_path / "fast" / linprobe.CLASSIFIER_FILE)))
    assert ev["final"]["acc1"] == pytest.approx(fast["final"]["acc1"])


def test_cache_with_augmentation_says_it_is_off(tmp_path, pretrained):
    with pytest.warns(UserWarning, match="augmentation is off"):
        linprobe.run(smoke(tmp_path, finetune=str(pretrained), cache_features=True))


def test_cached_path_resumes_on_the_pretrained_encoder(tmp_path, pretrained):
    """The cached path's checkpoints hold the head only: a resume re-extracts the features with --finetune's
    encoder (not a random one) and ends where the uninterrupted run ends."""
    kw = dict(finetune=str(pretrained), epochs=2, lr=50.0, augment=False, cache_features=True)
    full = linprobe.run(smoke(tmp_path / "full", **kw))
    assert not linprobe.run(smoke(tmp_path / "cut", max_iters=3, **kw))["finished"]  # 4 iterations per epoch
    resumed = linprobe.run(smoke(tmp_path / "cut", resume="auto", **kw))
    assert resumed["final"]["val_loss"] == pytest.approx(full["final"]["val_loss"], rel=1e-5)
    a = load_checkpoint(tmp_path / "full" / linprobe.CLASSIFIER_FILE)["model"]
    b = load_checkpoint(tmp_path / "cut" / linprobe.CLASSIFIER_FILE)["model"]
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=1e-5, atol=1e-6, msg=k)
