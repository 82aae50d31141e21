"""Pre-training weight-decay groups: the paper presets follow the official release (timm's rule with no
skip list: only 1-d parameters and biases are exempt, cls_token and mask_token decayed); the small
presets keep the token exemption (``--decay_tokens false``)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch.nn as nn
from timm.optim import param_groups_weight_decay as timm_groups

from mae.protocols import pretrain

PAPER = ("paper_vit_base", "paper_vit_large", "paper_vit_huge",
         "paper_vit_base_1600ep", "paper_vit_large_1600ep", "paper_vit_huge_1600ep")
SMALL = ("demo", "smoke", "mini")


class _Captured(Exception):
    pass


def groups_of_run(cfg: pretrain.Config, monkeypatch: pytest.MonkeyPatch) -> tuple[nn.Module, list[dict]]:
    """The model and the param groups ``pretrain.run`` hands to the Trainer (nothing is trained)."""
    seen = {}

    def fake_trainer(cfg, model, train_set, hooks, *, param_groups, **kw):
        seen.update(model=model, groups=param_groups)
        raise _Captured

    monkeypatch.setattr(pretrain, "Trainer", fake_trainer)
    with pytest.raises(_Captured):
        pretrain.run(cfg)
    return seen["model"], seen["groups"]


def names_by_decay(model: nn.Module, groups: list[dict]) -> dict[float, set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[float, set[str]] = {}
    for g in groups:
        out.setdefault(g["weight_decay"], set()).update(names[id(p)] for p in g["params"])
    return out


def small_run(preset: str, tmp_path) -> pretrain.Config:
    """A preset's optimisation rule on the smoke model and data."""
    return replace(pretrain.PRESETS[preset], model="mae_vit_smoke", img_size=32, data="synthetic:16", num_workers=0,
                   output_dir=str(tmp_path / preset), vis_every=0, tensorboard=False, progress=False)


@pytest.mark.parametrize("preset", PAPER)
def test_paper_presets_use_the_official_groups(preset, tmp_path, monkeypatch):
    assert pretrain.PRESETS[preset].decay_tokens
    model, groups = groups_of_run(small_run(preset, tmp_path), monkeypatch)
    ours = names_by_decay(model, groups)
    official = names_by_decay(model, timm_groups(model, 0.05))
    assert ours == official
    assert {"cls_token", "mask_token"} <= ours[0.05]
    assert "blocks.0.attn.qkv.weight" in ours[0.05] and "decoder_pred.weight" in ours[0.05]
    assert all(n.endswith(".bias") or "norm" in n for n in ours[0.0])
    everything = {n for n, p in model.named_parameters() if p.requires_grad}
    assert ours[0.0] | ours[0.05] == everything and not ours[0.0] & ours[0.05]
    assert "pos_embed" not in everything and "decoder_pos_embed" not in everything  # frozen sin-cos tables


@pytest.mark.parametrize("preset", SMALL)
def test_small_presets_keep_the_token_exemption(preset, tmp_path, monkeypatch):
    assert not pretrain.PRESETS[preset].decay_tokens
    model, groups = groups_of_run(small_run(preset, tmp_path), monkeypatch)
    ours = names_by_decay(model, groups)
    official = names_by_decay(model, timm_groups(model, 0.05))
    assert official[0.05] - ours[0.05] == {"cls_token", "mask_token"}
    assert ours[0.0] - official[0.0] == {"cls_token", "mask_token"}
