"""Checkpoint formats (mae/models/formats.py): official <-> timm / Hugging Face ViTMAE / mmpretrain,
verified on the networks' outputs, and every loader taking every format."""
import json
import subprocess
import sys

import pytest
import torch

from _openmmlab import require_openmmlab

from mae import cli
from mae.engine.checkpoint import CheckpointError
from mae.models import create_mae
from mae.models.formats import (CheckpointFormatError, convert, detect_format, export_state_dict, read_checkpoint,
                                write_checkpoint)
from mae.models.interop import create_timm_encoder, load_pretrained_encoder, load_timm_into_mae
from mae.models.vit import create_vit

pytestmark = pytest.mark.usefixtures("one_thread")
L = 16  # patches of the smoke model: 32 px images, 8 px patches
ATOL = 1e-5


def _perturb(module):
    """Move every tensor (fixed sin-cos tables too) off its init, so that a wrong mapping shows."""
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.add_(0.1 * torch.randn_like(t))
    return module.eval()


@pytest.fixture(scope="module")
def mae():
    torch.manual_seed(0)
    return _perturb(create_mae("mae_vit_smoke", target="norm_pixel"))


@pytest.fixture
def official_file(mae, tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"model": mae.state_dict(), "epoch": 3}, path)
    return path


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 32, 32, generator=g), torch.rand(2, L, generator=g)


def _same_tensors(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


# ------------------------------------------------------------------------------ Hugging Face
def _hf_config(transformers, **over):
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=32,
              patch_size=8, decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
              decoder_intermediate_size=128, layer_norm_eps=1e-6, norm_pix_loss=True, mask_ratio=0.75)
    return transformers.ViTMAEConfig(**{**kw, **over})


def test_hf_noise_convention_is_ours(mae):
    """HF's noise -> (ids_shuffle = argsort ascending, keep the first int(L(1-r)), ids_restore, mask) as mae/masking.py."""
    transformers = pytest.importorskip("transformers")
    from mae.masking import mask_from_noise
    hf = transformers.ViTMAEModel(_hf_config(transformers)).eval()
    x, noise = _inputs()
    with torch.no_grad():
        out = hf(pixel_values=x, noise=noise)
    info = mask_from_noise(noise, 0.75)
    assert torch.equal(out.ids_restore, info.ids_restore) and torch.equal(out.mask, info.mask)


def test_ours_to_hf_folder_same_encoder_features_and_reconstruction(mae, official_file, tmp_path):
    transformers = pytest.importorskip("transformers")
    rep = convert(official_file, tmp_path / "hf", "hf", norm_pix_loss=True)
    assert rep.src_format == "official" and rep.dst_format == "hf"
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architectures"] == ["ViTMAEForPreTraining"] and cfg["num_attention_heads"] == 2
    assert cfg["layer_norm_eps"] == 1e-6 and cfg["norm_pix_loss"] is True and cfg["image_size"] == 32
    hf = transformers.ViTMAEForPreTraining.from_pretrained(str(tmp_path / "hf")).eval()
    x, noise = _inputs()
    with torch.no_grad():
        out = hf(pixel_values=x, noise=noise)
        enc = hf.vit(pixel_values=x, noise=noise)
        latent, mask, ids_restore = mae.forward_encoder(x, 0.75, noise)
        loss, pred, _ = mae(x, 0.75, noise)
    torch.testing.assert_close(enc.last_hidden_state, latent, rtol=0, atol=ATOL)  # encoder features
    torch.testing.assert_close(out.logits, pred, rtol=0, atol=ATOL)  # decoder reconstruction
    torch.testing.assert_close(out.loss, loss, rtol=0, atol=ATOL)  # norm-pix loss on masked patches
    assert torch.equal(out.mask, mask) and torch.equal(out.ids_restore, ids_restore)


def test_hf_to_ours_same_outputs_in_memory_names_and_saved_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(2)
    hf = _perturb(transformers.ViTMAEForPreTraining(_hf_config(transformers)))
    x, noise = _inputs(3)
    with torch.no_grad():
        ref = hf(pixel_values=x, noise=noise)
    # the installed version's own names (transformers 5.x: layers.<i>.attention.q_proj ...), a bare torch file
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    # and a folder that transformers writes itself
    hf.save_pretrained(str(tmp_path / "saved"))
    for src in (tmp_path / "pytorch_model.bin", tmp_path / "saved"):
        ck = read_checkpoint(src)
        assert ck.format == "hf" and ck.dropped == []
        ours = create_mae("mae_vit_smoke", target="norm_pixel").eval()
        ours.load_state_dict(ck.state_dict, strict=True)
        with torch.no_grad():
            loss, pred, mask = ours(x, 0.75, noise)
        torch.testing.assert_close(pred, ref.logits, rtol=0, atol=ATOL)
        torch.testing.assert_close(loss, ref.loss, rtol=0, atol=ATOL)
        assert torch.equal(mask, ref.mask)
    assert read_checkpoint(tmp_path / "saved").norm_pix is True  # read from its config.json


def test_hf_encoder_only_is_vitmae_model(mae, tmp_path):
    """An encoder alone is ViTMAEModel's layout (no ``vit.`` prefix); all patches kept = our ``encode``."""
    transformers = pytest.importorskip("transformers")
    enc = {k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder_", "mask_token"))}
    write_checkpoint(read_checkpoint({"model": enc}), tmp_path / "enc", "hf", preset="mae_vit_smoke")
    assert json.loads((tmp_path / "enc" / "config.json").read_text())["architectures"] == ["ViTMAEModel"]
    hf = transformers.ViTMAEModel.from_pretrained(str(tmp_path / "enc"), mask_ratio=0.0).eval()
    x, _ = _inputs()
    with torch.no_grad():  # sorted noise keeps raster order
        out = hf(pixel_values=x, noise=torch.arange(L, dtype=torch.float).expand(2, L))
    torch.testing.assert_close(out.last_hidden_state, mae.encode(x), rtol=0, atol=ATOL)
    # back: a classifier starts from the HF encoder exactly as from ours
    a, b = create_vit("vit_smoke", num_classes=0, global_pool=False), create_vit("vit_smoke", num_classes=0, global_pool=False)
    load_pretrained_encoder(a, tmp_path / "enc")
    load_pretrained_encoder(b, {"model": enc})
    _same_tensors(a.state_dict(), b.state_dict())


def test_hf_bare_files_and_refusals(mae, tmp_path):
    sd = export_state_dict(mae.state_dict(), "hf")
    assert "vit.encoder.layer.0.attention.attention.query.weight" in sd  # the hub files' names
    assert "decoder.decoder_layers.0.intermediate.dense.weight" in sd and "vit.layernorm.weight" in sd
    torch.testing.assert_close(torch.cat([sd[f"vit.encoder.layer.1.attention.attention.{n}.bias"]
                                          for n in ("query", "key", "value")]), mae.blocks[1].attn.qkv.bias)
    for name in ("m.bin", "m.safetensors"):
        convert({"model": mae.state_dict()}, tmp_path / name, "hf")
        ck = read_checkpoint(tmp_path / name)
        assert ck.format == "hf"
        _same_tensors(ck.state_dict, mae.state_dict())
    clf = create_vit("vit_smoke", num_classes=3).state_dict()
    with pytest.raises(CheckpointFormatError, match="no classification head"):
        convert({"model": clf}, tmp_path / "clf", "hf")
    assert not (tmp_path / "clf").exists()
    pca = create_mae("mae_vit_smoke", target="pca", pca_components=8).state_dict()
    with pytest.raises(CheckpointFormatError, match="PCA / token"):
        export_state_dict(pca, "hf")


def test_hf_folder_needs_heads_it_cannot_see(tmp_path):
    odd = create_mae("mae_vit_smoke", embed_dim=48, num_heads=3).state_dict()
    with pytest.raises(CheckpointFormatError, match="--preset NAME or --num_heads"):
        convert({"model": odd}, tmp_path / "odd", "hf")
    convert({"model": odd}, tmp_path / "odd", "hf", num_heads=3, decoder_num_heads=2)
    cfg = json.loads((tmp_path / "odd" / "config.json").read_text())
    assert (cfg["num_attention_heads"], cfg["decoder_num_attention_heads"], cfg["hidden_size"]) == (3, 2, 48)


# -------------------------------------------------------------------------------------- timm
def test_timm_round_trip_forward_features(mae, official_file, tmp_path):
    convert(official_file, tmp_path / "timm.pth", "timm")
    t = create_timm_encoder(mae).eval()
    t.load_state_dict(torch.load(tmp_path / "timm.pth", weights_only=True), strict=True)
    x, _ = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(t.forward_features(x), mae.encode(x), rtol=0, atol=ATOL)
    # timm's own file (the hub's vit_*_patch16_224.mae are bare safetensors) into a fresh MAE encoder
    torch.manual_seed(4)
    t2 = _perturb(create_timm_encoder(mae))
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in t2.state_dict().items()}, str(tmp_path / "model.safetensors"))
    ck = read_checkpoint(tmp_path / "model.safetensors")
    assert ck.format == "timm"
    fresh = create_mae("mae_vit_smoke").eval()
    load_timm_into_mae(fresh, tmp_path / "model.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode(x), t2.forward_features(x), rtol=0, atol=ATOL)
    with pytest.raises(CheckpointFormatError, match="no timm equivalent"):
        export_state_dict(create_vit("vit_smoke", num_classes=3, head_type="bn_linear").state_dict(), "timm")


# -------------------------------------------------------------------------------- mmpretrain
def _mmpretrain_keys(depth=2, decoder_depth=1):
    """The key layout of mmpretrain's MAE (MAEViT backbone + MAEPretrainDecoder neck), written out by hand
    from its module names, independently of the tables in mae/models/formats.py."""
    def layer(prefix):
        return [f"{prefix}.{m}.{p}" for m in ("ln1", "attn.qkv", "attn.proj", "ln2", "ffn.layers.0.0", "ffn.layers.1")
                for p in ("weight", "bias")]
    keys = ["backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.projection.weight",
            "backbone.patch_embed.projection.bias", "backbone.ln1.weight", "backbone.ln1.bias",
            "neck.mask_token", "neck.decoder_pos_embed", "neck.decoder_embed.weight", "neck.decoder_embed.bias",
            "neck.ln1.weight", "neck.ln1.bias", "neck.decoder_pred.weight", "neck.decoder_pred.bias"]
    for i in range(depth):
        keys += layer(f"backbone.layers.{i}")
    for i in range(decoder_depth):
        keys += layer(f"neck.decoder_blocks.{i}")
    return sorted(keys)


def test_mmpretrain_layout_and_round_trip(mae, official_file, tmp_path):
    convert(official_file, tmp_path / "mm.pth", "mmpretrain")
    obj = torch.load(tmp_path / "mm.pth", weights_only=True)
    assert sorted(obj) == ["meta", "state_dict"] and obj["meta"]["epoch"] == 3
    assert sorted(obj["state_dict"]) == _mmpretrain_keys()
    assert torch.equal(obj["state_dict"]["backbone.layers.1.ffn.layers.0.0.weight"], mae.blocks[1].mlp.fc1.weight)
    assert torch.equal(obj["state_dict"]["neck.ln1.bias"], mae.decoder_norm.bias)
    ck = read_checkpoint(tmp_path / "mm.pth")
    assert ck.format == "mmpretrain"
    _same_tensors(ck.state_dict, mae.state_dict())
    back = tmp_path / "back.pth"
    convert(tmp_path / "mm.pth", back, "official")
    _same_tensors(torch.load(back, weights_only=True)["model"], mae.state_dict())


def test_mmpretrain_variants_classifiers_and_detectors(mae, tmp_path):
    sd = export_state_dict(mae.state_dict(), "mmpretrain")
    # mmselfsup 0.x: the decoder was made of timm Blocks (norm1 / mlp.fc1 ...) and its norm was decoder_norm
    old = {}
    for k, v in sd.items():
        k = k.replace("neck.ln1.", "neck.decoder_norm.")
        if k.startswith("neck.decoder_blocks."):
            k = k.replace(".ln1.", ".norm1.").replace(".ln2.", ".norm2.").replace(".ffn.layers.0.0.", ".mlp.fc1.")
            k = k.replace(".ffn.layers.1.", ".mlp.fc2.")
        old[k] = v
    _same_tensors(read_checkpoint({"state_dict": old, "meta": {}}).state_dict, mae.state_dict())
    # a bare MAEViT backbone (no backbone. prefix)
    bare = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    enc = read_checkpoint(bare).state_dict
    assert sorted(enc) == sorted(k for k in mae.state_dict() if not k.startswith(("decoder_", "mask_token")))
    # a detector around an mmpretrain backbone: its FPN neck and heads are dropped, not misread
    det = {**{k: v for k, v in sd.items() if k.startswith("backbone.")}, "neck.lateral_convs.0.conv.weight":
           torch.zeros(1), "rpn_head.rpn_conv.weight": torch.zeros(1)}
    ck = read_checkpoint({"state_dict": det})
    assert ck.dropped == ["neck.lateral_convs.0.conv.weight", "rpn_head.rpn_conv.weight"] and sorted(ck.state_dict) == sorted(enc)
    # fine-tuned (average-pool ln2 + head.layers.head) and linear-probe (neck.bn + head.fc) classifiers
    for clf in (create_vit("vit_smoke", num_classes=3), create_vit("vit_smoke", num_classes=3, global_pool=False,
                                                                      head_type="bn_linear")):
        mm = export_state_dict(clf.state_dict(), "mmpretrain")
        assert ("head.layers.head.weight" in mm) != ("head.fc.weight" in mm)
        _same_tensors(read_checkpoint({"state_dict": mm}).state_dict, clf.state_dict())
    # a BEiT-style backbone (layer scale) has keys no MAE holds: named, not silently dropped
    beit = {**sd, "backbone.layers.0.gamma_1": torch.ones(32)}
    with pytest.raises(CheckpointFormatError, match="gamma_1"):
        read_checkpoint({"state_dict": beit})
    with pytest.raises(CheckpointFormatError, match="encoder w/ \\[M\\]"):
        export_state_dict(create_mae("mae_vit_smoke", encoder_mask_token=True).state_dict(), "mmpretrain")


def test_detect_format_and_errors(mae, tmp_path):
    sd = mae.state_dict()
    assert detect_format(sd) == "official"
    assert detect_format(export_state_dict(sd, "hf")) == "hf"
    assert detect_format(export_state_dict(sd, "mmpretrain")) == "mmpretrain"
    assert detect_format({f"backbone.{k}": v for k, v in sd.items()}) == "official"  # our mmdet/mmseg backbone
    with pytest.raises(CheckpointFormatError, match="not a ViT/MAE checkpoint.*ResNet.*conv1.weight"):
        detect_format({"conv1.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1)})
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match="without model weights"):
        read_checkpoint(tmp_path / "empty_dir")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{trunc")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(bad)


# ------------------------------------------------------------------------------- every loader
@pytest.fixture
def every_format(mae, tmp_path):
    """The same pre-trained MAE as ours (run config + model config), official (the release's args), mmpretrain,
    Hugging Face (a bare file and a model folder) and timm (encoder only) files."""
    import argparse
    from dataclasses import asdict, replace

    from mae.config import to_dict
    from mae.protocols import pretrain
    official_file = tmp_path / "official.pth"
    torch.save({"model": mae.state_dict(), "args": argparse.Namespace(norm_pix_loss=True), "epoch": 3}, official_file)
    ours = tmp_path / "ours.pth"
    recipe = replace(pretrain.PRESETS["smoke"], target="norm_pixel")
    torch.save({"model": mae.state_dict(), "config": to_dict(recipe), "config_class": "Config", "epoch": 3,
                "model_config": asdict(mae.config), "model_config_class": "MAEConfig"}, ours)
    files = {"ours": ours, "official": official_file}
    for fmt, name in (("mmpretrain", "mm.pth"), ("hf", "hf.bin"), ("hf_folder", "hf_folder"), ("timm", "timm.pth")):
        files[fmt] = tmp_path / name
        convert(official_file, files[fmt], fmt.split("_")[0], norm_pix_loss=True)
    return files


def test_every_loader_accepts_the_same_files(mae, every_format, tmp_path):
    """One reading (mae.models.inspect) behind every loader: a file one accepts, all accept (the loaders that need a
    decoder refuse the encoder-only timm file, all with the same words)."""
    import dataclasses

    from downstream.classify import resolve_model
    from mae.models.inspect import CheckpointInfo
    from mae.models.loader import load_mae_checkpoint
    from mae.protocols import pretrain
    arch = ("embed_dim", "depth", "patch_size", "in_chans", "grid", "cls_token", "mlp_ratio", "num_heads")
    with_decoder = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads", "decoder_out_dim", "target", "preset")
    enc_ref = create_vit("vit_smoke", num_classes=5, global_pool=False)
    load_pretrained_encoder(enc_ref, every_format["official"], head_init_std=None)
    infos: dict[str, CheckpointInfo] = {}
    for fmt, path in every_format.items():
        info = infos[fmt] = read_checkpoint(path).inspect()
        assert [getattr(info, k) for k in arch] == [32, 2, 8, 3, 4, True, 4.0, 2], fmt
        # mae convert
        assert cli.main(["convert", str(path), str(tmp_path / f"{fmt}-back.pth"), "--to", "official"]) == 0, fmt
        back = torch.load(tmp_path / f"{fmt}-back.pth", weights_only=True)["model"]
        _same_tensors(back, mae.state_dict() if info.has_decoder else export_state_dict(mae.state_dict(), "timm"))
        # fine-tune / linear probe / partial / readouts
        clf = create_vit("vit_smoke", num_classes=5, global_pool=False)
        clf.head.load_state_dict(enc_ref.head.state_dict())
        load_pretrained_encoder(clf, path, head_init_std=None)
        _same_tensors(clf.state_dict(), enc_ref.state_dict())
        # transfer (downstream/classify.py's model)
        assert resolve_model(str(path), None) == "vit_smoke", fmt
        if not info.has_decoder:
            continue
        says = fmt in ("ours", "official", "hf_folder")  # the bare files do not say norm_pix_loss: pixels assumed
        target = "norm_pixel" if says else "pixel"
        assert [getattr(info, k) for k in with_decoder] == [32, 1, 2, 192, target, "mae_vit_smoke"], fmt
        # pre-training --init and the reconstruction figures
        model = pretrain.build_model(dataclasses.replace(pretrain.PRESETS["smoke"], init=str(path),
                                                         target="norm_pixel"))
        _same_tensors(model.state_dict(), mae.state_dict())
        loaded = load_mae_checkpoint(path)
        assert loaded.target == target and loaded.preset == "mae_vit_smoke", fmt
        _same_tensors(loaded.model.state_dict(), mae.state_dict())
    assert {fmt for fmt, i in infos.items() if not i.has_decoder} == {"timm"}
    assert [infos[f].format for f in every_format] == ["official", "official", "mmpretrain", "hf", "hf", "timm"]
    assert infos["ours"].model_config == dataclasses.asdict(mae.config)
    timm_file = every_format["timm"]
    with pytest.raises(CheckpointError, match="encoder-only checkpoint: it has no MAE decoder"):
        load_mae_checkpoint(timm_file)
    with pytest.raises(CheckpointError, match="encoder-only checkpoint: it has no MAE decoder"):
        pretrain.build_model(dataclasses.replace(pretrain.PRESETS["smoke"], init=str(timm_file)))


def test_downstream_backbone_reads_every_format(mae, every_format):
    require_openmmlab()
    from downstream.backbone import backbone_info, encoder_state_dict
    want, _ = encoder_state_dict(every_format["official"])
    for fmt, path in every_format.items():
        got, _ = encoder_state_dict(path)
        _same_tensors(got, want)
        info = backbone_info(path)
        assert (info.embed_dim, info.depth, info.num_heads, info.img_size) == (32, 2, 2, 32), fmt


# ------------------------------------------------------------------------------------- the CLI
def test_convert_help_and_round_trip_on_the_command_line(mae, official_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["convert", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--to {official,timm,hf,mmpretrain}" in out and "config.json" in out
    assert cli.main(["convert", str(official_file), str(tmp_path / "a.pth"), "--to", "mmpretrain"]) == 0
    assert cli.main(["convert", str(tmp_path / "a.pth"), str(tmp_path / "hfdir"), "--to", "hf"]) == 0
    assert cli.main(["convert", str(tmp_path / "hfdir"), str(tmp_path / "b.pth"), "--to", "official"]) == 0
    assert "(hf) ->" in capsys.readouterr().out
    _same_tensors(torch.load(tmp_path / "b.pth", weights_only=True)["model"], mae.state_dict())
    # clear errors, exit status 2, nothing written
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(official_file.read_bytes()[:300])
    assert cli.main(["convert", str(trunc), str(tmp_path / "c.pth"), "--to", "timm"]) == 2
    assert cli.main(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "c.pth"), "--to", "hf"]) == 2
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, tmp_path / "resnet.pth")
    assert cli.main(["convert", str(tmp_path / "resnet.pth"), str(tmp_path / "c.pth"), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and "not found" in err and "ResNet" in err
    assert not (tmp_path / "c.pth").exists()
    with pytest.raises(SystemExit):
        cli.main(["convert", str(official_file), str(tmp_path / "c.pth"), "--to", "onnx"])


def test_python_dash_m_convert(official_file, tmp_path):
    r = subprocess.run([sys.executable, "-m", "mae", "convert", str(official_file), str(tmp_path / "t.pth"),
                        "--to", "timm"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "(official) ->" in r.stdout and "(timm)" in r.stdout
