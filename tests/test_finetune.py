"""Fine-tuning protocol: paper recipe presets, a smoke run through the Trainer, eval-only, resume."""
import dataclasses
from dataclasses import replace

import pytest
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from mae.cli import build_config
from mae.engine.checkpoint import load_checkpoint
from mae.models.interop import load_classifier
from mae.models.mae import create_mae
from mae.models.vit import create_vit
from mae.protocols import finetune


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pre") / "mae.pth"
    torch.save({"model": create_mae("mae_vit_smoke").state_dict()}, path)  # official layout
    return path


def smoke(tmp_path, **kw):
    return replace(finetune.PRESETS["smoke"], output_dir=str(tmp_path / "run"), **kw)


def test_paper_presets_follow_the_recipe():
    common = dict(weight_decay=0.05, betas=(0.9, 0.999), warmup_epochs=5.0, smoothing=0.1, mixup=0.8, cutmix=1.0,
                  reprob=0.25, rand_aug="rand-m9-mstd0.5-inc1", global_pool=True, img_size=224)
    want = {"paper_vit_base": ("vit_base_patch16", 1e-3, 0.75, 0.1, 100),  # Table 9
            "paper_vit_large": ("vit_large_patch16", 1e-3, 0.75, 0.1, 50),
            "paper_vit_huge": ("vit_huge_patch14", 1e-3, 0.75, 0.2, 50),
            "release_vit_base": ("vit_base_patch16", 5e-4, 0.65, 0.1, 100),  # FINETUNE.md (1600-ep norm-pix)
            "release_vit_large": ("vit_large_patch16", 1e-3, 0.75, 0.2, 50),
            "release_vit_huge": ("vit_huge_patch14", 1e-3, 0.75, 0.3, 50)}
    for name, (model, blr, ld, dp, ep) in want.items():
        c = finetune.PRESETS[name]
        assert (c.model, c.blr, c.layer_decay, c.drop_path, c.epochs) == (model, blr, ld, dp, ep), name
        assert all(getattr(c, k) == v for k, v in common.items()), name
        assert c.batch_size * c.accum_iter * 32 == 1024  # effective batch 1024 on 32 processes
    assert finetune.Config().model == "vit_base_patch16" and finetune.Config().layer_decay == 0.65


def test_every_field_has_help_and_cli_overrides():
    assert all(f.metadata.get("help") for f in dataclasses.fields(finetune.Config))
    cfg = build_config(finetune, ["--preset", "smoke", "--layer_decay", "0.5", "--rand_aug", "none"], "mae finetune")
    assert cfg.layer_decay == 0.5 and cfg.rand_aug is None and cfg.model == "vit_smoke"


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="even batch_size"):
        finetune.Config(batch_size=31)
    with pytest.raises(ValueError, match="layer_decay"):
        finetune.Config(layer_decay=0)
    with pytest.raises(ValueError, match="mixup_mode"):
        finetune.Config(mixup_mode="all")


def test_criterion_follows_mixup_and_smoothing(tmp_path):
    mix, crit = finetune.mixup_and_criterion(smoke(tmp_path), 10)
    assert mix is not None and isinstance(crit, SoftTargetCrossEntropy)
    x, y = mix((torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])))
    assert y.shape == (4, 10) and torch.allclose(y.sum(1), torch.ones(4))
    mix, crit = finetune.mixup_and_criterion(smoke(tmp_path, mixup=0.0, cutmix=0.0), 10)
    assert mix is None and isinstance(crit, LabelSmoothingCrossEntropy)
    mix, crit = finetune.mixup_and_criterion(smoke(tmp_path, mixup=0.0, cutmix=0.0, smoothing=0.0), 10)
    assert isinstance(crit, torch.nn.CrossEntropyLoss)


def test_smoke_run_writes_official_checkpoints_and_eval_only_agrees(tmp_path, pretrained):
    cfg = smoke(tmp_path, finetune=str(pretrained), epochs=2)
    result = finetune.run(cfg)
    assert result["finished"] and {"acc1", "acc5", "val_loss"} <= set(result["final"])
    assert 0 <= result["final"]["acc1"] <= result["final"]["acc5"] <= 100
    best = load_checkpoint(tmp_path / "run" / "checkpoint-best.pth")
    assert "fc_norm.weight" in best["model"] and "norm.weight" not in best["model"]  # official fine-tune layout
    load_classifier(create_vit("vit_smoke", num_classes=10), tmp_path / "run" / "checkpoint-best.pth")
    # the encoder moved away from the pre-trained weights (it is fine-tuned end to end)
    sd0 = torch.load(pretrained)["model"]
    last = load_checkpoint(tmp_path / "run" / "checkpoint-last.pth")["model"]
    assert not torch.equal(last["blocks.0.attn.qkv.weight"], sd0["blocks.0.attn.qkv.weight"])
    ev = finetune.run(replace(cfg, eval_checkpoint=str(tmp_path / "run" / "checkpoint-best.pth"),
                              output_dir=str(tmp_path / "eval")))
    assert ev["final"]["acc1"] == pytest.approx(result["best"]["acc1"])


def test_resume_continues_to_the_same_weights(tmp_path, pretrained):
    base = dict(finetune=str(pretrained), epochs=2)
    full = finetune.run(smoke(tmp_path / "a", **base))
    part = finetune.run(smoke(tmp_path / "b", max_iters=5, **base))  # 4 iterations per epoch: stops in epoch 2
    assert not part["finished"]
    resumed = finetune.run(smoke(tmp_path / "b", resume="auto", **base))
    assert resumed["finished"]
    a = load_checkpoint(tmp_path / "a" / "run" / "checkpoint-last.pth")["model"]
    b = load_checkpoint(tmp_path / "b" / "run" / "checkpoint-last.pth")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert resumed["final"]["acc1"] == pytest.approx(full["final"]["acc1"])


def test_missing_pretrained_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="--finetune .*nope.pth"):
        finetune.run(smoke(tmp_path, finetune=str(tmp_path / "nope.pth")))
