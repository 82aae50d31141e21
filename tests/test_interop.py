"""Checkpoint interop: MAE pretrain -> classifier, fine-tune / linear-probe files, timm round trip."""
import pytest
import torch
import torch.nn.functional as F

from mae.engine.checkpoint import CheckpointError
from mae.models.inspect import NotAViTError, inspect_checkpoint
from mae.models.interop import (InteropError, create_timm_encoder, export_timm, load_classifier, load_pretrained_encoder,
                                load_timm_into_mae)
from mae.models.mae import create_mae
from mae.models.vit import create_vit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mae():
    torch.manual_seed(0)
    m = create_mae("mae_vit_smoke")
    with torch.no_grad():  # move every tensor off its init so that "loaded" is distinguishable from "fresh"
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


@pytest.fixture
def official_file(mae, tmp_path):
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": mae.state_dict(), "epoch": 799}, path)  # the official release's layout
    return path


def encoder_keys(sd):
    return {k for k in sd if not k.startswith(("decoder_", "mask_token"))}


def kind(sd):
    return inspect_checkpoint(sd).kind


def test_checkpoint_kinds(mae, tmp_path):
    sd = mae.state_dict()
    assert kind(sd) == "mae_pretrain"
    assert kind(export_timm(mae)) == "encoder"
    assert kind(create_vit("vit_smoke", num_classes=3).state_dict()) == "finetune"
    assert kind(create_vit("vit_smoke", num_classes=3, head_type="bn_linear").state_dict()) == "linprobe"
    with pytest.raises(NotAViTError, match="not a ViT/MAE checkpoint"):
        kind({"conv1.weight": torch.zeros(1)})
    torch.save({"model": {"blocks.0.norm1.weight": torch.ones(2)}}, tmp_path / "no_patch_embed.pth")
    with pytest.raises(InteropError, match="not a ViT/MAE checkpoint"):  # the loaders say it as an interop error
        load_pretrained_encoder(create_vit("vit_smoke", num_classes=3), tmp_path / "no_patch_embed.pth")


def test_timm_round_trip_features_equal(mae):
    sd = export_timm(mae)
    assert set(sd) == encoder_keys(mae.state_dict())
    t = create_timm_encoder(mae)
    t.load_state_dict(sd, strict=True)
    t.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(t.forward_features(x), mae.encode(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(t(x), mae.encode(x)[:, 0], rtol=0, atol=1e-6)  # timm's pooled output: cls token
    # and back into a fresh MAE: same encoder, decoder untouched
    fresh = create_mae("mae_vit_smoke").eval()
    dec_before = fresh.decoder_embed.weight.clone()
    rep = load_timm_into_mae(fresh, t.state_dict())
    assert rep.kind == "encoder" and all(k.startswith(("decoder_", "mask_token")) for k in rep.new)
    torch.testing.assert_close(fresh.encode(x), mae.encode(x), rtol=0, atol=0)
    assert torch.equal(fresh.decoder_embed.weight, dec_before)


def test_paper_sizes_use_timm_names_and_layout():
    # (an MAE cannot be built on the meta device; its encoder is the classifier without head, test_vit)
    with torch.device("meta"):
        enc = create_vit("mae_vit_base_patch16", num_classes=0, global_pool=False)
    t = create_timm_encoder("mae_vit_base_patch16", device="meta")
    assert t.default_cfg["architecture"] == "vit_base_patch16_224"
    assert {k: v.shape for k, v in t.state_dict().items()} == {k: v.shape for k, v in enc.state_dict().items()}


def test_pretrain_checkpoint_into_finetune_classifier(mae, official_file):
    vit = create_vit("vit_smoke", num_classes=5)  # global pool: fc_norm new, norm dropped
    rep = load_pretrained_encoder(vit, official_file)
    assert rep.kind == "mae_pretrain"
    assert set(rep.new) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert "norm.weight" in rep.dropped and "mask_token" in rep.dropped and "decoder_pred.weight" in rep.dropped
    msd = mae.state_dict()
    for k, v in vit.state_dict().items():
        if k in msd:
            assert torch.equal(v, msd[k]), k
    assert vit.head.bias.abs().sum() == 0 and vit.head.weight.std() < 1e-4  # trunc-normal std 2e-5


def test_pretrain_into_cls_token_classifier_gives_encoder_features(mae, official_file):
    vit = create_vit("vit_smoke", num_classes=5, global_pool=False, head_type="bn_linear").eval()
    rep = load_pretrained_encoder(vit, official_file, head_init_std=0.01)
    assert "norm.weight" in rep.loaded
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(vit.forward_features(x), mae.encode(x), rtol=0, atol=1e-6)


def test_pos_embed_interpolated_when_resolution_differs(mae, official_file):
    vit = create_vit("vit_smoke", num_classes=5, img_size=48)  # grid 4x4 -> 6x6
    rep = load_pretrained_encoder(vit, official_file)
    assert rep.pos_embed_resized == ((4, 4), (6, 6))
    old = mae.pos_embed.detach()
    new = vit.pos_embed.detach()
    assert new.shape == (1, 1 + 36, 32)
    assert torch.equal(new[:, :1], old[:, :1])  # cls row kept
    grid = old[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 36, 32)
    torch.testing.assert_close(new[:, 1:], want)
    assert vit(torch.randn(1, 3, 48, 48)).shape == (1, 5)


def test_finetune_checkpoint_round_trip_and_hints(tmp_path):
    torch.manual_seed(1)
    a = create_vit("vit_smoke", num_classes=5).eval()
    path = tmp_path / "checkpoint-best.pth"
    torch.save({"model": a.state_dict(), "epoch": 3}, path)
    b = create_vit("vit_smoke", num_classes=5).eval()
    assert load_classifier(b, path).kind == "finetune"
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    with pytest.raises(InteropError, match="global_pool=True"):
        load_classifier(create_vit("vit_smoke", num_classes=5, global_pool=False), path)
    with pytest.raises(InteropError, match="head_type='linear'"):
        load_classifier(create_vit("vit_smoke", num_classes=5, head_type="bn_linear"), path)
    with pytest.raises(InteropError, match=r"shape mismatch.*head.weight"):
        load_classifier(create_vit("vit_smoke", num_classes=9), path)
    # a fine-tune checkpoint is not a pre-trained encoder ... unless asked for on purpose
    with pytest.raises(InteropError, match="is a finetune checkpoint .* not a pretrain one"):
        load_pretrained_encoder(create_vit("vit_smoke", num_classes=3), path)
    c = create_vit("vit_smoke", num_classes=3)
    rep = load_pretrained_encoder(c, path, allow_finetuned=True)
    assert set(rep.new) == {"head.weight", "head.bias"} and torch.equal(c.fc_norm.weight, a.fc_norm.weight)


def test_wrong_checkpoints_raise_clear_errors(mae, official_file, tmp_path):
    with pytest.raises(InteropError, match="MAE pre-training checkpoint .* not a fine-tuned classifier"):
        load_classifier(create_vit("vit_smoke", num_classes=5), official_file)
    with pytest.raises(InteropError, match="checkpoint has 2 blocks, the model 3.*blocks.2.attn.proj.bias"):
        load_pretrained_encoder(create_vit("vit_smoke", depth=3), official_file)
    with pytest.raises(InteropError, match="pos_embed width 32 does not match the model's embed_dim 64"):
        load_pretrained_encoder(create_vit("vit_smoke", embed_dim=64), official_file)
    with pytest.raises(InteropError, match=r"patch_embed.proj.weight: checkpoint \(32, 3, 8, 8\) vs model \(32, 3, 4, 4\)"):
        load_pretrained_encoder(create_vit("vit_smoke", patch_size=4, img_size=16), official_file)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(official_file.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated"):
        load_pretrained_encoder(create_vit("vit_smoke"), truncated)
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained_encoder(create_vit("vit_smoke"), tmp_path / "nope.pth")
    gp = create_vit("vit_smoke", num_classes=0)
    with pytest.raises(InteropError, match="fc_norm"):
        load_timm_into_mae(create_mae("mae_vit_smoke"), gp.state_dict())
    with pytest.raises(InteropError, match="MAE pre-training checkpoint, not a timm state_dict"):
        load_timm_into_mae(create_mae("mae_vit_smoke"), mae.state_dict())
    with pytest.raises(InteropError, match="no timm equivalent"):
        export_timm(create_vit("vit_smoke", head_type="bn_linear"))


def test_timm_classifier_state_dict_loads_and_predicts_the_same():
    import timm

    from mae.models.vit import timm_kwargs, vit_config

    cfg = vit_config("vit_smoke", num_classes=4)
    torch.manual_seed(3)
    t = timm.create_model("vit_base_patch16_224", pretrained=False, **timm_kwargs(cfg)).eval()
    ours = create_vit("vit_smoke", num_classes=4).eval()
    assert load_classifier(ours, t.state_dict()).kind == "finetune"
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), t(x), rtol=0, atol=0)


def test_inspect_reads_the_official_layout():
    from mae.models import create_mae
    sd = create_mae("mae_vit_smoke").state_dict()
    s = inspect_checkpoint(sd)
    assert (s.embed_dim, s.depth, s.patch_size, s.in_chans, s.grid, s.cls_token, s.mlp_ratio, s.img_size) == \
        (32, 2, 8, 3, 4, True, 4.0, 32)
    assert (s.decoder_embed_dim, s.decoder_depth, s.decoder_out_dim, s.num_heads, s.decoder_num_heads) == (32, 1, 192, 2, 2)
    assert (s.kind, s.target, s.norm_pix, s.preset, s.encoder_mask_token) == ("mae_pretrain", "pixel", None,
                                                                              "mae_vit_smoke", False)
    no_cls = {**sd, "pos_embed": sd["pos_embed"][:, 1:]}
    assert inspect_checkpoint(no_cls).cls_token is False and inspect_checkpoint(no_cls).grid == 4
    gap = {k: v for k, v in sd.items() if not k.startswith("blocks.0.")}
    with pytest.raises(NotAViTError, match="non-contiguous blocks"):
        inspect_checkpoint(gap)
    assert inspect_checkpoint(sd, {"args": {"norm_pix_loss": True}}).target == "norm_pixel"
