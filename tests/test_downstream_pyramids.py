"""coco_det.py's two pyramids (paper A.3 / ViTDet) build and train a step; test images see the training grid;
activation checkpointing changes memory, not results."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from _openmmlab import require_openmmlab  # noqa: E402

require_openmmlab()
pytestmark = pytest.mark.downstream

from downstream import backbone as B  # noqa: E402
from downstream import coco_det  # noqa: E402
from downstream.runner import load_config  # noqa: E402


def test_subset_ends_are_the_last_block_of_four_equal_subsets():
    assert coco_det.subset_ends(12) == [2, 5, 8, 11]
    assert coco_det.subset_ends(24) == [5, 11, 17, 23]
    assert coco_det.subset_ends(32) == [7, 15, 23, 31]
    assert coco_det.subset_ends(2) == [0, 0, 1, 1]


def _model(pyramid: str):
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    cfg = load_config(coco_det.TASK, "smoke")
    coco_det.configure_pyramid(cfg, pyramid, cfg.model.backbone.depth, cfg.model.backbone.embed_dim)
    init_default_scope("mmdet")
    torch.manual_seed(0)
    return cfg, MODELS.build(cfg.model)


def _batch(n: int = 2, size: int = 64):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    rng = np.random.default_rng(0)
    inputs, samples = [], []
    for _ in range(n):
        inputs.append(torch.from_numpy(rng.integers(0, 255, (3, size, size), dtype=np.uint8)))
        masks = np.zeros((2, size, size), dtype=np.uint8)
        masks[0, 8:30, 10:40] = 1
        masks[1, 35:60, 20:50] = 1
        gt = InstanceData(bboxes=torch.tensor([[10., 8., 40., 30.], [20., 35., 50., 60.]]),
                          labels=torch.tensor([0, 1]), masks=BitmapMasks(masks, size, size))
        s = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), scale_factor=(1.0, 1.0)))
        s.gt_instances = gt
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize("pyramid", coco_det.PYRAMIDS)
def test_both_pyramids_build_and_train_a_step(pyramid):
    cfg, model = _model(pyramid)
    bb = model.backbone
    if pyramid == "paper":  # 4 subsets -> strides 4/8/16/32 from blocks 0, 0, 1, 1, then FPN, standard heads
        assert bb.level_blocks == [0, 0, 1, 1] and bb.out_strides == (4, 8, 16, 32)
        assert cfg.model.backbone.pyramid_norm == "BN"  # Li et al. 2021 (the x4 path; patch 8 here needs x2 only)
        assert type(model.neck).__name__ == "FPN" and type(model.roi_head.bbox_head).__name__ == "Shared2FCBBoxHead"
        assert model.neck.in_channels == [32] * 4
    else:  # the last map alone -> ViTDet's simple pyramid (LayerNorm), 2-conv RPN, 4conv1fc box head
        assert bb.level_blocks == [1] and bb.out_strides == (8,)
        assert type(model.neck).__name__ == "SimpleFeaturePyramid"
        assert type(model.roi_head.bbox_head).__name__ == "Shared4Conv1FCBBoxHead"
        assert model.roi_head.bbox_head.num_shared_convs == 4 and model.roi_head.bbox_head.num_shared_fcs == 1
        assert len(model.rpn_head.rpn_conv) == 2
        norms = [type(m).__name__ for m in model.roi_head.mask_head.modules()]
        assert "LayerNorm2d" in norms
    model.train()
    data = model.data_preprocessor(_batch(), True)
    feats = model.extract_feat(data["inputs"])
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2, 1]  # strides 4 .. 64 of a 64 px input
    losses = model.loss(data["inputs"], data["data_samples"])
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(x.sum() for x in v) for k, v in losses.items()
                if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    assert bb.patch_embed.proj.weight.grad.abs().sum() > 0 and bb.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_the_config_default_model_is_the_paper_pyramid():
    cfg = load_config(coco_det.TASK, "paper")
    before = copy.deepcopy(cfg.model)
    coco_det.configure_pyramid(cfg, "paper", 12, 768)
    assert cfg.model.to_dict() == before.to_dict()  # the file's model dict is `paper` for ViT-B
    with pytest.raises(ValueError, match="unknown pyramid 'fpn'"):
        coco_det.configure_pyramid(cfg, "fpn", 12, 768)


@pytest.mark.parametrize("scale,train_side,patch", [("paper", 1024, 16), ("smoke", 64, 8)])
def test_test_images_are_padded_to_the_training_square(tmp_path, scale, train_side, patch):
    """A 640x427 image (COCO's typical shape) reaches the ViT at the training size: same token grid as training."""
    from mmcv.transforms import Compose
    from mmengine.registry import init_default_scope
    init_default_scope("mmdet")
    cfg = load_config(coco_det.TASK, scale)
    assert tuple(cfg.image_size) == (train_side, train_side)
    path = tmp_path / "im.jpg"
    Image.fromarray(np.full((427, 640, 3), 200, dtype=np.uint8)).save(path)
    pipeline = Compose([t for t in cfg.test_pipeline if t["type"] != "LoadAnnotations"])
    out = pipeline(dict(img_path=str(path), img_id=0))
    img = out["inputs"]
    assert tuple(img.shape[-2:]) == (train_side, train_side)
    sw, sh = out["data_samples"].scale_factor  # the resized image inside the pad (padding is bottom / right)
    scaled = (round(427 * sh), round(640 * sw))
    assert scaled[1] == train_side and scaled[0] < train_side
    test_grid = (img.shape[-2] // patch, img.shape[-1] // patch)
    assert test_grid == (train_side // patch, train_side // patch)  # 64 x 64 tokens at paper scale, not 64 x 43
    assert (img[:, scaled[0]:, :].float().mean(dim=(1, 2)) - torch.tensor([104., 116., 124.])).abs().max() < 1


def test_activation_checkpointing_changes_memory_not_results(tmp_path):
    kw = dict(pretrain_img_size=32, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
              use_cls_token=False, window_size=2, global_attn_indexes=[1], use_rel_pos=True)
    torch.manual_seed(0)
    plain = B.MAEViT(**kw).train()
    ck = B.MAEViT(act_checkpoint=True, **kw).train()
    ck.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for blk in (plain.blocks[0], ck.blocks[0]):
            torch.manual_seed(1)
            blk.rel_pos.relative_position_bias_table.normal_()
    x = torch.randn(2, 3, 32, 32)
    outs = [m(x) for m in (plain, ck)]
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)
    for m, o in zip((plain, ck), outs):
        sum(t.square().sum() for t in o).backward()
    for (n, p), (_, q) in zip(plain.named_parameters(), ck.named_parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_table7_names_the_pyramid_of_a_coco_cell(tmp_path):
    import pandas as pd

    from downstream import table7
    from reproduce.report import compare, provenance, verdict, write_results
    ck = tmp_path / "ours.pth"
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 4)}, "config": {"target": "pixel"}}, ck)
    rows = pd.DataFrame([{"method": "mae", "ap_box_vit_base": 5.5, "ckpt": str(ck), "pyramid": "paper"}])
    df = compare("table4_coco", rows, scale="smoke", prov=provenance(command="test"))
    write_results(df, verdict(df, "table4_coco"), tmp_path / "table4_coco_smoke.csv")
    found = table7.assemble(tmp_path, "smoke")
    assert "[pyramid paper]" in found.sources[("pixel", "coco_box_vit_base")]
