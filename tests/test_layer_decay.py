"""Layer-wise lr decay groups against hand-computed scales (official rule, MAE Appendix A.1)."""
import pytest
import torch

from mae.engine.layer_decay import layer_id_for_vit, param_groups_layer_decay
from mae.models.vit import create_vit


def by_name(groups):
    return {n: (g["lr_scale"], g["weight_decay"]) for g in groups for n in g["names"]}


def test_layer_ids_follow_the_official_rule():
    depth = 12
    assert layer_id_for_vit("cls_token", depth) == 0
    assert layer_id_for_vit("pos_embed", depth) == 0
    assert layer_id_for_vit("patch_embed.proj.weight", depth) == 0
    assert layer_id_for_vit("blocks.0.attn.qkv.weight", depth) == 1
    assert layer_id_for_vit("blocks.11.mlp.fc2.bias", depth) == 12
    for name in ("fc_norm.weight", "norm.bias", "head.weight", "head.1.bias"):
        assert layer_id_for_vit(name, depth) == 13


def test_scales_and_weight_decay_hand_computed():
    m = create_vit("vit_smoke", num_classes=3)  # depth 2 -> layer ids 0..3
    got = by_name(param_groups_layer_decay(m, weight_decay=0.05, layer_decay=0.5))
    assert set(got) == {n for n, _ in m.named_parameters()}
    # scale = 0.5 ** (depth + 1 - layer_id)
    assert got["cls_token"] == (0.125, 0.0)  # token: no weight decay
    assert got["pos_embed"] == (0.125, 0.0)
    assert got["patch_embed.proj.weight"] == (0.125, 0.05)
    assert got["patch_embed.proj.bias"] == (0.125, 0.0)
    assert got["blocks.0.attn.qkv.weight"] == (0.25, 0.05)
    assert got["blocks.0.norm1.weight"] == (0.25, 0.0)  # 1-d: no weight decay
    assert got["blocks.1.mlp.fc1.weight"] == (0.5, 0.05)
    assert got["blocks.1.mlp.fc1.bias"] == (0.5, 0.0)
    assert got["fc_norm.weight"] == (1.0, 0.0)
    assert got["head.weight"] == (1.0, 0.05)
    assert got["head.bias"] == (1.0, 0.0)


def test_paper_vit_b_scales():
    with torch.device("meta"):
        m = create_vit("vit_base_patch16")
    got = by_name(param_groups_layer_decay(m, weight_decay=0.05, layer_decay=0.65))
    assert got["patch_embed.proj.weight"][0] == pytest.approx(0.65 ** 13)  # ~0.0037
    assert got["blocks.11.attn.proj.weight"][0] == pytest.approx(0.65)
    assert got["head.weight"][0] == 1.0


def test_frozen_parameters_are_left_out_and_groups_work_in_an_optimizer():
    m = create_vit("vit_smoke", num_classes=3)
    m.freeze_except(lambda n: n.startswith(("blocks.1.", "fc_norm.", "head.")))
    groups = param_groups_layer_decay(m, layer_decay=0.75)
    names = {n for g in groups for n in g["names"]}
    assert names == {n for n, p in m.named_parameters() if p.requires_grad}
    assert {g["layer_id"] for g in groups} == {2, 3}
    torch.optim.AdamW(groups, lr=1e-3)  # extra keys (lr_scale, names, layer_id) are accepted


def test_bad_arguments():
    m = create_vit("vit_smoke")
    with pytest.raises(ValueError, match="layer_decay must be in"):
        param_groups_layer_decay(m, layer_decay=0.0)
    with pytest.raises(ValueError, match="no 'blocks'"):
        param_groups_layer_decay(torch.nn.Linear(2, 2))
