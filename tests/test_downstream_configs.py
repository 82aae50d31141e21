"""downstream/configs: every file parses and builds; the paper recipe adapts to the checkpoint's ViT size."""
from __future__ import annotations


import pytest



from _openmmlab import require_openmmlab  # noqa: E402

require_openmmlab()
pytestmark = pytest.mark.downstream

from downstream import ade20k_seg, backbone, coco_det  # noqa: E402
from downstream.runner import configure_backbone, load_config  # noqa: E402

VIT_B_ENCODER_PARAMS = 85_798_656  # ViT-B/16 at 224 without a head (timm vit_base_patch16_224 minus 769,000)


def _build(cfg):
    from mmengine.registry import DefaultScope, init_default_scope
    init_default_scope(cfg.default_scope)
    scope = DefaultScope.get_current_instance().scope_name
    registry = {"mmdet": "mmdet.registry", "mmseg": "mmseg.registry"}[scope]
    return __import__(registry, fromlist=["MODELS"]).MODELS.build(cfg.model)


@pytest.mark.parametrize("task", [coco_det.TASK, ade20k_seg.TASK], ids=["coco", "ade20k"])
def test_paper_config_builds_a_vit_b_model(task):
    cfg = load_config(task, "paper")
    model = _build(cfg)
    bb = model.backbone
    assert isinstance(bb, backbone.MAEViT) and (bb.embed_dim, bb.depth, bb.num_heads) == (768, 12, 12)
    encoder = sum(p.numel() for n, p in bb.named_parameters() if not n.startswith("pyramid") and "rel_pos" not in n)
    assert encoder == VIT_B_ENCODER_PARAMS
    assert cfg.optim_wrapper.constructor == "MAELayerDecayOptimizerConstructor"
    assert cfg.optim_wrapper.optimizer.lr == 1e-4
    if task is coco_det.TASK:  # Table 4 recipe: windows + 4 global blocks, decay 0.7, 184,375 iterations
        assert [b.window_size for b in bb.blocks] == [14, 14, 0, 14, 14, 0, 14, 14, 0, 14, 14, 0]
        assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.7 and cfg.train_cfg.max_iters == 184375
        assert bb.level_blocks == [2, 5, 8, 11]  # the paper's pyramid: the last block of 4 equal subsets
        assert cfg.recipe.effective_batch == 64 and cfg.recipe.schedules.paper.epochs.huge == 75
    else:  # Table 5 recipe: global attention, levels from blocks 3/5/7/11, decay 0.65, 100 epochs at batch 16
        assert bb.level_blocks == [3, 5, 7, 11] and all(b.window_size == 0 for b in bb.blocks)
        assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.65 and cfg.train_cfg.max_iters == 126312
        assert cfg.recipe.effective_batch == 16 and list(cfg.recipe.schedules) == ["paper", "mmseg160k"]
        assert cfg.recipe.schedules.mmseg160k.iters == 160000


@pytest.mark.parametrize("task", [coco_det.TASK, ade20k_seg.TASK], ids=["coco", "ade20k"])
def test_smoke_config_builds(task):
    model = _build(load_config(task, "smoke"))
    assert (model.backbone.embed_dim, model.backbone.depth, model.backbone.patch_size) == (32, 2, 8)


def test_paper_recipe_follows_a_vit_l_checkpoint(monkeypatch):
    from mae.models.inspect import CheckpointInfo
    monkeypatch.setattr(backbone, "backbone_info", lambda path, num_heads=None: CheckpointInfo(
        label=str(path), format="official", kind="mae_pretrain", embed_dim=1024, depth=24, patch_size=16, in_chans=3,
        grid=14, cls_token=True, mlp_ratio=4.0, num_heads=16))
    cfg = load_config(coco_det.TASK, "paper")
    assert configure_backbone(cfg, coco_det.TASK, "vit_l.pth", "paper", None) == "large"
    bb = cfg.model.backbone
    assert (bb.embed_dim, bb.depth, bb.num_heads, bb.drop_path_rate) == (1024, 24, 16, 0.4)
    assert bb.global_attn_indexes == [5, 11, 17, 23] and bb.pretrained.endswith("vit_l.pth")
    assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.8
    assert cfg.model.neck.in_channels == [1024] * 4
    seg = load_config(ade20k_seg.TASK, "paper")
    assert configure_backbone(seg, ade20k_seg.TASK, "vit_l.pth", "paper", None) == "large"
    assert seg.model.backbone.out_indices == [7, 11, 15, 23]
    assert seg.model.decode_head.in_channels == [1024] * 4 and seg.model.auxiliary_head.in_channels == 1024
