"""MAELayerDecayOptimizerConstructor: per-parameter lr scale and weight decay, hand-computed."""
from __future__ import annotations


import pytest
import torch.nn as nn



from _openmmlab import require_openmmlab  # noqa: E402

require_openmmlab()
pytestmark = pytest.mark.downstream

from downstream.backbone import MAELayerDecayOptimizerConstructor, MAEViT, layer_id_for_param  # noqa: E402


class Detector(nn.Module):
    def __init__(self, **bb):
        super().__init__()
        self.backbone = MAEViT(pretrain_img_size=32, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                               **bb)
        self.head = nn.Linear(32, 3)


def _groups(model, rate=0.5, **paramwise):
    ctor = MAELayerDecayOptimizerConstructor(
        optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1.0, weight_decay=0.05)),
        paramwise_cfg=dict(layer_decay_rate=rate, **paramwise))
    wrapper = ctor(model)
    return {name: (g["lr"], g["weight_decay"]) for g in wrapper.optimizer.param_groups for name in g["param_names"]}


def test_layer_ids():
    assert layer_id_for_param("backbone.pos_embed", 12) == 0
    assert layer_id_for_param("backbone.patch_embed.proj.weight", 12) == 0
    assert layer_id_for_param("backbone.blocks.0.attn.qkv.weight", 12) == 1
    assert layer_id_for_param("backbone.blocks.11.mlp.fc2.bias", 12) == 12
    assert layer_id_for_param("backbone.norm.weight", 12) == 13
    assert layer_id_for_param("neck.fpn_convs.0.conv.weight", 12) == 13


def test_lr_scale_and_weight_decay_per_parameter():
    g = _groups(Detector(use_rel_pos=True))
    # depth 2, rate 0.5: embeddings 0.5^3, block 0 0.5^2, block 1 0.5^1, the rest 1
    assert g["backbone.pos_embed"] == (0.125, 0.0)
    assert g["backbone.cls_token"] == (0.125, 0.0)
    assert g["backbone.patch_embed.proj.weight"] == (0.125, 0.05)
    assert g["backbone.patch_embed.proj.bias"] == (0.125, 0.0)
    assert g["backbone.blocks.0.attn.qkv.weight"] == (0.25, 0.05)
    assert g["backbone.blocks.0.norm1.weight"] == (0.25, 0.0)
    assert g["backbone.blocks.0.rel_pos.relative_position_bias_table"] == (0.25, 0.0)
    assert g["backbone.blocks.1.mlp.fc1.weight"] == (0.5, 0.05)
    assert g["backbone.norm.weight"] == (1.0, 0.0)
    assert g["backbone.pyramid.0.weight"] == (1.0, 0.05)
    assert g["head.weight"] == (1.0, 0.05)
    assert g["head.bias"] == (1.0, 0.0)
    model = Detector(use_rel_pos=True)
    assert len(g) == sum(1 for p in model.parameters() if p.requires_grad)


def test_frozen_parameters_are_left_out_and_num_layers_can_be_given():
    g = _groups(Detector(use_cls_token=False, window_size=2), rate=0.5, num_layers=4)
    assert "backbone.cls_token" not in g  # unused without a cls token: frozen
    assert g["backbone.pos_embed"] == (0.5 ** 5, 0.0)
    assert g["backbone.blocks.1.mlp.fc1.weight"] == (0.5 ** 3, 0.05)


def test_bad_paramwise_cfg_is_refused():
    with pytest.raises(ValueError, match="unknown paramwise_cfg keys"):
        _groups(Detector(), layer_decay_typo=1)
    ctor = MAELayerDecayOptimizerConstructor(
        optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1.0)),
        paramwise_cfg=dict(layer_decay_rate=0.5))
    with pytest.raises(ValueError, match="backbone.depth"):
        ctor(nn.Sequential(nn.Linear(2, 2)))
