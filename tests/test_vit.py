"""The fine-tune / linear-probe classifier: presets, timm layout, pooling, frozen parts."""
import pytest
import timm
import torch

from mae.models.mae import PRESETS as MAE_PRESETS
from mae.models.mae import create_mae
from mae.models.vit import PRESETS, ViTClassifier, create_vit, init_head, vit_config, vit_for_mae

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_mae_preset_has_a_matching_classifier():
    for name in MAE_PRESETS:
        vname = vit_for_mae(name)
        assert vname == name[len("mae_"):] and vname in PRESETS
    assert vit_for_mae("mae_vit_large_patch16_dec512d8b") == "vit_large_patch16"
    # the classifier's encoder keys and shapes are exactly the MAE encoder's
    mae = create_mae("mae_vit_smoke")
    vit = create_vit("vit_smoke", global_pool=False, num_classes=0)
    enc = {k: v.shape for k, v in mae.state_dict().items() if not k.startswith(("decoder_", "mask_token"))}
    assert {k: v.shape for k, v in vit.state_dict().items()} == enc


@pytest.mark.parametrize("ours,timm_name,n_params", [
    ("vit_base_patch16", "vit_base_patch16_224", 86_567_656),
    ("vit_large_patch16", "vit_large_patch16_224", 304_326_632),
    ("vit_huge_patch14", "vit_huge_patch14_224", 632_045_800),
])
def test_paper_presets_match_timm_layout_and_size(ours, timm_name, n_params):
    with torch.device("meta"):
        m = create_vit(ours)
    t = timm.create_model(timm_name, pretrained=False, num_classes=1000, global_pool="avg", fc_norm=True,
                          device="meta")
    assert {k: v.shape for k, v in m.state_dict().items()} == {k: v.shape for k, v in t.state_dict().items()}
    assert sum(p.numel() for p in m.parameters()) == n_params  # ViT-B 86.6M, L 304.3M, H 632.0M
    assert "norm.weight" not in m.state_dict() and "fc_norm.weight" in m.state_dict()


def test_global_pool_and_cls_token_heads_compute_what_they_claim():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    gp = create_vit("vit_smoke", num_classes=4).eval()
    tokens = gp.forward_features(x)  # no final norm in the global-pool layout
    want = gp.head(gp.fc_norm(tokens[:, 1:].mean(1)))
    torch.testing.assert_close(gp(x), want)
    cls = create_vit("vit_smoke", num_classes=4, global_pool=False).eval()
    tokens = cls.forward_features(x)
    torch.testing.assert_close(cls(x), cls.head(tokens[:, 0]))


def test_linear_probe_head_layout():
    m = create_vit("vit_smoke", num_classes=7, global_pool=False, head_type="bn_linear")
    bn, lin = m.head
    assert isinstance(bn, torch.nn.BatchNorm1d) and bn.affine is False and bn.eps == 1e-6
    assert m.linear is lin and lin.out_features == 7
    assert {"head.0.running_mean", "head.1.weight", "norm.weight"} <= set(m.state_dict())
    init_head(m, std=0.01)
    assert lin.bias.abs().sum() == 0 and 0.003 < lin.weight.std() < 0.02


def test_frozen_parts_stay_in_eval_mode_and_drop_path_off():
    torch.manual_seed(0)
    m = create_vit("vit_smoke", num_classes=3, drop_path=0.9)
    m.freeze_except(lambda n: n.startswith(("head.", "fc_norm.")))
    m.train()
    assert not m.blocks[0].training and not m.blocks[1].drop_path1.training and m.head.training
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m.features(x), m.features(x))  # deterministic: no drop path on frozen blocks
    # MLP half of the last block trainable: its attention branch stays deterministic, its MLP one does not
    m.freeze_except(lambda n: n.startswith(("blocks.1.mlp.", "blocks.1.norm2.", "head.", "fc_norm.")))
    m.train()
    assert m.blocks[1].training and m.blocks[1].drop_path2.training and not m.blocks[1].drop_path1.training
    with pytest.raises(ValueError, match="no trainable"):
        m.freeze_except(lambda n: False)


def test_bad_presets_and_fields_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown ViT preset 'vit_gigantic'"):
        vit_config("vit_gigantic")
    with pytest.raises(ValueError, match="unknown MAE preset"):
        vit_for_mae("mae_vit_nope")
    with pytest.raises(ValueError, match=r"unknown ViT config field\(s\) \['drop_pth'\]"):
        create_vit("vit_smoke", drop_pth=0.1)
    with pytest.raises(ValueError, match="head_type"):
        ViTClassifier(vit_config("vit_smoke", head_type="mlp"))
    with pytest.raises(ValueError, match="not a multiple"):
        vit_config("vit_smoke", img_size=36)
