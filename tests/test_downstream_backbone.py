"""MAEViT (downstream/backbone.py): parity with our MAE encoder, checkpoint loading, pyramid, windows, rel-pos."""
from __future__ import annotations

import argparse

import pytest
import torch



from _openmmlab import require_openmmlab  # noqa: E402

require_openmmlab()
pytestmark = pytest.mark.downstream

from mae.engine.checkpoint import CheckpointError  # noqa: E402
from mae.models import create_mae  # noqa: E402
from mae.models.inspect import NotAViTError  # noqa: E402
from downstream import backbone as B  # noqa: E402

SMOKE = dict(pretrain_img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def smoke_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_mae("mae_vit_smoke").eval()
    path = tmp_path_factory.mktemp("ck") / "mae_smoke.pth"
    torch.save({"model": model.state_dict(), "epoch": 1}, path)  # official layout, decoder included
    return model, path


def test_registered_in_mmdet_and_mmseg():
    from mmdet.registry import MODELS as DET
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
    from mmseg.registry import MODELS as SEG
    assert DET.get("MAEViT") is B.MAEViT and SEG.get("MAEViT") is B.MAEViT
    assert OPTIM_WRAPPER_CONSTRUCTORS.get("MAELayerDecayOptimizerConstructor") is B.MAELayerDecayOptimizerConstructor
    assert sorted(B.REGISTERED_IN) == ["mmdet", "mmseg"]


def test_patch_features_match_our_encoder(smoke_ckpt):
    """Same checkpoint -> the identity level (stride = patch size) equals encode(imgs)[:, 1:]."""
    model, path = smoke_ckpt
    bb = B.MAEViT(img_size=32, **SMOKE).eval()
    info = bb.load_mae_checkpoint(path)
    assert info["unexpected"] == []  # decoder and mask token were dropped, nothing else left over
    assert info["missing"] == ["pyramid.0.bias", "pyramid.0.weight"]
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.encode(imgs)[:, 1:]
        outs = bb(imgs)
    ident = outs[1]  # strides (4, 8, 16, 32) with patch 8: level 1 is the identity
    assert ident.shape == (2, 32, 4, 4)
    torch.testing.assert_close(ident.flatten(2).transpose(1, 2), ref, rtol=0, atol=1e-6)


def test_stride16_map_matches_encoder_for_patch16(tmp_path):
    torch.manual_seed(1)
    model = create_mae("mae_vit_smoke", img_size=64, patch_size=16).eval()
    path = tmp_path / "p16.pth"
    torch.save({"model": model.state_dict()}, path)
    bb = B.MAEViT(pretrain_img_size=64, img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2).eval()
    bb.load_mae_checkpoint(path)
    imgs = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model.encode(imgs)[:, 1:]
        outs = bb(imgs)
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    torch.testing.assert_close(outs[2].flatten(2).transpose(1, 2), ref, rtol=0, atol=1e-6)
    # max-pool level = 2x2 max of the identity level
    torch.testing.assert_close(outs[3], torch.nn.functional.max_pool2d(outs[2], 2))


def test_pos_embed_is_resampled_for_other_input_sizes(smoke_ckpt):
    _, path = smoke_ckpt
    bb = B.MAEViT(img_size=64, **SMOKE).eval()
    bb.load_mae_checkpoint(path)
    outs = bb(torch.randn(1, 3, 64, 48))  # 8 x 6 grid from a 4 x 4 pre-training table
    assert [tuple(o.shape) for o in outs] == [(1, 32, 16, 12), (1, 32, 8, 6), (1, 32, 4, 3), (1, 32, 2, 1)]
    # a checkpoint whose table is bigger than the backbone's is resampled at load time
    big = create_mae("mae_vit_smoke", img_size=64)
    p2 = path.parent / "img64.pth"
    torch.save({"model": big.state_dict()}, p2)
    bb.load_mae_checkpoint(p2)
    assert bb.pos_embed.shape == (1, 17, 32)


def test_four_out_indices_take_levels_from_those_blocks(smoke_ckpt):
    model, path = smoke_ckpt
    bb = B.MAEViT(img_size=32, out_indices=[0, 0, 1, 1], **SMOKE).eval()
    bb.load_mae_checkpoint(path)
    imgs = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        outs = bb(imgs)
        x = model.patch_embed(imgs) + model.pos_embed[:, 1:]
        x = torch.cat([model.cls_token + model.pos_embed[:, :1], x], dim=1)
        block0 = model.blocks[0](x)[:, 1:]
    # level 1 (stride 8 = identity) comes from block 0 without the final norm,
    # level 2 (stride 16 = 2x2 max-pool) from block 1 with it
    torch.testing.assert_close(outs[1].flatten(2).transpose(1, 2), block0, rtol=0, atol=1e-6)
    with torch.no_grad():
        last = model.encode(imgs)[:, 1:].transpose(1, 2).reshape(1, 32, 4, 4)
    torch.testing.assert_close(outs[2], torch.nn.functional.max_pool2d(last, 2), rtol=0, atol=1e-6)


def test_relative_position_bias_hand_computed():
    rp = B.RelativePositionBias((2, 2), num_heads=1)
    with torch.no_grad():
        rp.relative_position_bias_table.copy_(torch.arange(9.0).reshape(9, 1))
    expected = torch.tensor([[4., 3., 1., 0.],
                             [5., 4., 2., 1.],
                             [7., 6., 4., 3.],
                             [8., 7., 5., 4.]])
    torch.testing.assert_close(rp((2, 2))[0, 0], expected)
    with_cls = rp((2, 2), num_prefix=1)[0, 0]
    assert with_cls.shape == (5, 5)
    assert with_cls[0].abs().sum() == 0 and with_cls[:, 0].abs().sum() == 0
    torch.testing.assert_close(with_cls[1:, 1:], expected)
    assert rp((3, 2)).shape == (1, 1, 6, 6)  # another grid: the table is resized


def test_zero_rel_pos_changes_nothing_and_a_learned_one_does(smoke_ckpt):
    _, path = smoke_ckpt
    plain = B.MAEViT(img_size=32, **SMOKE).eval()
    rel = B.MAEViT(img_size=32, use_rel_pos=True, **SMOKE).eval()
    plain.load_mae_checkpoint(path)
    rel.load_mae_checkpoint(path)
    rel.pyramid.load_state_dict(plain.pyramid.state_dict())
    imgs = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rel(imgs)[1], plain(imgs)[1], rtol=0, atol=1e-6)
        rel.blocks[0].rel_pos.relative_position_bias_table.normal_()
        assert (rel(imgs)[1] - plain(imgs)[1]).abs().max() > 1e-3


def test_window_partition_round_trip():
    x = torch.randn(2, 5, 7, 3)
    win, padded = B.window_partition(x, 3)
    assert padded == (6, 9) and win.shape == (2 * 2 * 3, 9, 3)
    back = B.window_unpartition(win, 3, padded, (5, 7))
    torch.testing.assert_close(back, x.reshape(2, 35, 3))


def test_window_block_equals_attention_within_each_window():
    torch.manual_seed(0)
    blk = B.MAEViTBlock(16, 2, 4.0, 0.0, window_size=2).eval()
    x = torch.randn(1, 16, 16)  # a 4 x 4 grid
    with torch.no_grad():
        got = blk(x, (4, 4))
        y = blk.norm1(x)
        attn_out = torch.zeros_like(y)
        for wy in range(2):
            for wx in range(2):
                idx = [(wy * 2 + i) * 4 + wx * 2 + j for i in range(2) for j in range(2)]
                attn_out[:, idx] = blk.attn(y[:, idx])
        ref = x + attn_out
        ref = ref + blk.mlp(blk.norm2(ref))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_windowed_backbone_runs_on_any_size_and_backpropagates(smoke_ckpt):
    _, path = smoke_ckpt
    bb = B.MAEViT(img_size=48, use_cls_token=False, window_size=4, global_attn_indexes=[1], use_rel_pos=True,
                  drop_path_rate=0.1, **SMOKE)
    bb.load_mae_checkpoint(path)
    assert not bb.cls_token.requires_grad
    outs = bb(torch.randn(2, 3, 50, 41))  # padded to 56 x 48 -> a 7 x 6 grid, windows padded to 8 x 8
    assert [tuple(o.shape[-2:]) for o in outs] == [(14, 12), (7, 6), (3, 3), (1, 1)]
    sum(o.sum() for o in outs).backward()
    assert bb.blocks[0].rel_pos.relative_position_bias_table.grad.abs().sum() > 0
    assert bb.patch_embed.proj.weight.grad.abs().sum() > 0


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="cls token"):
        B.MAEViT(window_size=4, use_cls_token=True, **SMOKE)
    with pytest.raises(ValueError, match="out_indices"):
        B.MAEViT(out_indices=[0, 1], **SMOKE)
    with pytest.raises(ValueError, match="out_indices"):
        B.MAEViT(out_indices=[5], **SMOKE)
    with pytest.raises(ValueError, match="rescale factor"):
        B.MAEViT(out_strides=[4, 8, 16, 128], **SMOKE)


def test_not_a_vit_checkpoint_names_what_was_found(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(8, 3, 7, 7), "bn1.weight": torch.zeros(8),
                               "layer1.0.conv1.weight": torch.zeros(8, 8, 3, 3)}}, path)
    with pytest.raises(NotAViTError, match=r"not a ViT.*ResNet.*conv1\.weight"):
        B.encoder_state_dict(path)
    bb = B.MAEViT(img_size=32, **SMOKE)
    with pytest.raises(NotAViTError):
        bb.load_mae_checkpoint(path)


def test_checkpoint_of_another_depth_or_width_is_refused(tmp_path):
    deeper = create_mae("mae_vit_smoke", depth=3)
    p = tmp_path / "d3.pth"
    torch.save({"model": deeper.state_dict()}, p)
    with pytest.raises(CheckpointError, match="3 blocks"):
        B.MAEViT(img_size=32, **SMOKE).load_mae_checkpoint(p)
    wider = create_mae("mae_vit_smoke", embed_dim=48, num_heads=2)
    p2 = tmp_path / "w48.pth"
    torch.save({"model": wider.state_dict()}, p2)
    with pytest.raises(CheckpointError, match="width 48"):
        B.MAEViT(img_size=32, **SMOKE).load_mae_checkpoint(p2)


def test_patch_kernel_is_resampled_for_another_patch_size(tmp_path):
    small = create_mae("mae_vit_smoke", patch_size=4)  # like ViT-H/14 -> 16 in ViTDet
    p = tmp_path / "p4.pth"
    torch.save({"model": small.state_dict()}, p)
    bb = B.MAEViT(img_size=32, **SMOKE)
    bb.load_mae_checkpoint(p)  # 8x8 table at patch 4 (32 px) -> 4x4 at patch 8
    assert bb.patch_embed.proj.weight.shape == (32, 3, 8, 8)


def test_backbone_info_from_checkpoint_and_its_metadata(smoke_ckpt, tmp_path):
    _, path = smoke_ckpt
    arch = B.backbone_info(path)
    assert (arch.embed_dim, arch.depth, arch.num_heads, arch.patch_size, arch.img_size, arch.mlp_ratio) == \
        (32, 2, 2, 8, 32, 4.0)
    odd = create_mae("mae_vit_smoke", embed_dim=48, num_heads=3)
    p = tmp_path / "odd.pth"
    torch.save({"model": odd.state_dict()}, p)
    with pytest.raises(CheckpointError, match="--num-heads"):
        B.backbone_info(p)
    assert B.backbone_info(p, num_heads=3).num_heads == 3
    torch.save({"model": odd.state_dict(), "args": argparse.Namespace(model="mae_vit_base_patch16")}, p)
    assert B.backbone_info(p).num_heads == 12  # the official files' args.model names the preset
    torch.save({"model": odd.state_dict(), "config": {"model": "mae_vit_tiny_patch16", "epochs": 1}}, p)
    assert B.backbone_info(p).num_heads == 3  # our pre-training checkpoints store their config
    torch.save({"model": odd.state_dict(), "model_config": {**create_mae("mae_vit_smoke").config.__dict__,
                                                            "embed_dim": 48, "num_heads": 4}}, p)
    assert B.backbone_info(p).num_heads == 4  # the model config a checkpoint records wins


def test_encoder_state_dict_drops_decoder_and_strips_backbone_prefix(smoke_ckpt, tmp_path):
    model, path = smoke_ckpt
    sd, info = B.encoder_state_dict(path)
    assert info.kind == "mae_pretrain" and info.format == "official" and info.label == str(path)
    assert not [k for k in sd if k.startswith(("decoder", "mask_token"))]
    assert "blocks.1.mlp.fc2.weight" in sd and "norm.weight" in sd
    p = tmp_path / "det.pth"
    torch.save({"state_dict": {**{f"backbone.{k}": v for k, v in sd.items()}, "neck.conv.weight": torch.zeros(1)}}, p)
    sd2, _ = B.encoder_state_dict(p)
    assert sorted(sd2) == sorted(sd)


def test_blocks_after_the_last_tap_are_frozen_and_skipped(smoke_ckpt):
    _, path = smoke_ckpt
    bb = B.MAEViT(img_size=32, out_indices=[0], **SMOKE)
    bb.load_mae_checkpoint(path)
    assert not any(p.requires_grad for p in bb.blocks[1].parameters())
    assert not any(p.requires_grad for p in bb.norm.parameters())
    assert all(p.requires_grad for p in bb.blocks[0].parameters())
    sum(o.sum() for o in bb(torch.randn(1, 3, 32, 32))).backward()
    assert all(p.grad is None for p in bb.blocks[1].parameters())
    assert bb.blocks[0].mlp.fc2.weight.grad is not None
