"""mae.viz: target inversion, the reconstruction panels, the renderer; mae.models.loader: the model a checkpoint
holds, for the figures."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from mae.config import to_dict
from mae.engine.checkpoint import CheckpointError, save_checkpoint
from mae.masking import num_keep
from mae.models.inspect import inspect_checkpoint
from mae.models.loader import config_from_shapes, load_mae_checkpoint
from mae.models import create_mae
from mae.protocols.pretrain import PRESETS
from mae.targets import fit_pca, normalize_patches
from mae.viz import (
    MASK_COLORS,
    MASK_FILL,
    denormalize_patches,
    mask_noise,
    prediction_to_patches,
    reconstruct,
    save_figure,
    save_grid,
    to_pixels,
)


def _imgs(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def _model(target: str = "pixel", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_mae("mae_vit_smoke", target=target, **kw)


# ------------------------------------------------------------------------ norm-pix inversion
def test_denormalize_hand_values():
    patches = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    std = math.sqrt(5.0 / 3.0 + 1e-6)  # unbiased var of 1..4 is 5/3
    out = denormalize_patches(torch.tensor([[[0.0, 1.0, -1.0, 2.0]]]), patches)
    assert torch.allclose(out, torch.tensor([[[2.5, 2.5 + std, 2.5 - std, 2.5 + 2 * std]]]), atol=1e-6)


def test_denormalize_inverts_the_norm_pix_target_round_trip():
    patches = torch.randn(2, 16, 192) * 3 + 1
    normed, _, _ = normalize_patches(patches)
    assert torch.allclose(denormalize_patches(normed, patches), patches, atol=1e-5)


def test_prediction_to_patches_inverts_the_models_own_target():
    imgs = _imgs()
    for target in ("pixel", "norm_pixel"):
        m = _model(target)
        patches = m.patchify(imgs)
        assert torch.allclose(prediction_to_patches(m, m.target(imgs, patches), imgs), patches, atol=1e-5)


def test_prediction_to_patches_inverts_a_complete_pca_target():
    m = _model("pca", pca_components=192)  # all 192 = 8*8*3 components: an exact change of basis
    imgs = _imgs(n=16)
    comps, mean = fit_pca(m.patchify(imgs), 192)
    m.target.components.copy_(comps)
    m.target.mean.copy_(mean)
    patches = m.patchify(imgs[:2])
    assert torch.allclose(prediction_to_patches(m, m.target(imgs[:2], patches), imgs[:2]), patches, atol=1e-4)


def test_token_target_cannot_be_drawn():
    class Tok(torch.nn.Module):
        vocab_size = 5

        def tokenize(self, imgs):
            return torch.zeros(imgs.shape[0], 16, dtype=torch.long)

    torch.manual_seed(0)
    m = create_mae("mae_vit_smoke", target="token", tokenizer=Tok())
    with pytest.raises(TypeError, match="token"):
        prediction_to_patches(m, torch.zeros(1, 16, 5), _imgs(1))


# ----------------------------------------------------------------------------- the panels
def _patch_view(panel: np.ndarray, p: int = 8) -> np.ndarray:
    """(N, H, W, 3) -> (N, L, p, p, 3) in raster patch order."""
    n, h, w, c = panel.shape
    return panel.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, -1, p, p, c)


@pytest.mark.parametrize("target", ["pixel", "norm_pixel"])
def test_overlay_visible_patches_equal_the_input_exactly(target):
    m = _model(target)
    rec = reconstruct(m, _imgs(), 0.75, seed=3)
    vis = rec.mask == 0
    assert vis.sum(1).tolist() == [num_keep(16, 0.75)] * 3
    pasted, orig, raw = (_patch_view(x) for x in (rec.pasted, rec.original, rec.reconstruction))
    assert np.array_equal(pasted[vis], orig[vis])  # bit for bit
    assert np.array_equal(pasted[~vis], raw[~vis])  # removed patches: the model's output
    assert not np.allclose(raw[vis], orig[vis])  # an untrained decoder does not copy its input


def test_masked_panel_hides_exactly_the_masked_patches():
    m = _model()
    imgs = _imgs()
    rec = reconstruct(m, imgs, 0.6, seed=1)
    masked, orig = _patch_view(rec.masked), _patch_view(rec.original)
    removed = rec.mask == 1
    assert removed.sum() == 3 * (16 - num_keep(16, 0.6))
    assert (masked[removed] == np.float32(MASK_FILL)).all()
    assert np.array_equal(masked[~removed], orig[~removed])
    assert not (orig[removed] == np.float32(MASK_FILL)).all(axis=(1, 2, 3)).any()  # the test can tell them apart
    # the mask is the model's own for that noise
    noise = mask_noise(m, 3, 0.6, seed=1)
    _, _, mask = m(imgs, mask_ratio=0.6, noise=noise)
    assert np.array_equal(rec.mask, mask.numpy())


def test_mask_image_draws_the_mask():
    rec = reconstruct(_model(), _imgs(2), 0.75, seed=0)
    img = _patch_view(rec.mask_image)
    assert (img[rec.mask == 1] == MASK_COLORS[1]).all()
    assert (img[rec.mask == 0] == MASK_COLORS[0]).all()


def test_reconstruct_leaves_global_rng_and_mode_alone():
    m = _model()
    m.train()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = reconstruct(m, _imgs(), 0.75, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert m.training
    b = reconstruct(m, _imgs(), 0.75, seed=5)
    c = reconstruct(m, _imgs(), 0.75, seed=6)
    assert np.array_equal(a.mask, b.mask) and not np.array_equal(a.mask, c.mask)


def test_strategy_overrides_the_models_own():
    rec = reconstruct(_model(), _imgs(1), 0.75, seed=0, strategy="grid")
    expected = np.array([[0, 1, 0, 1], [1, 1, 1, 1], [0, 1, 0, 1], [1, 1, 1, 1]], dtype=np.float32).reshape(1, 16)
    assert np.array_equal(rec.mask, expected)
    assert rec.strategy == "grid" and rec.mask_ratio == 0.75


def test_to_pixels_undoes_the_imagenet_normalisation():
    px = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert np.allclose(to_pixels((px - mean) / std)[0, 0, 0], [0.0, 0.5, 1.0], atol=1e-6)


# ------------------------------------------------------------------------------- rendering
def test_save_figure_and_grid(tmp_path):
    rec = reconstruct(_model(), _imgs(2), 0.75)
    p = save_figure(rec, tmp_path / "a.png", caption="a caption")
    assert p.is_file() and p.read_bytes()[:4] == b"\x89PNG"
    img = rec.original[0]
    paths = save_grid([[img, None, img], [img, img, None]], tmp_path / "g.png", col_titles=["a", "b", "c"],
                      row_titles=["r1", "r2"], title="t", caption="c\nd", gaps_before=[2], formats=("png", "pdf"))
    assert [x.suffix for x in paths] == [".png", ".pdf"] and all(x.stat().st_size > 0 for x in paths)
    assert paths[1].read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="titles"):
        save_grid([[img]], tmp_path / "x.png", col_titles=["a", "b"])
    with pytest.raises(ValueError, match="equal"):
        save_grid([[img], [img, img]], tmp_path / "x.png")


# --------------------------------------------------------------------------------- checkpoints
def _our_ckpt(path, target="norm_pixel", **over):
    cfg = replace(PRESETS["smoke"], target=target, **over)
    torch.manual_seed(1)
    m = create_mae(cfg.model, **cfg.model_overrides())
    save_checkpoint({"model": m.state_dict(), "config": to_dict(cfg), "epoch": 1}, path)
    return m


def test_load_our_checkpoint(tmp_path):
    m = _our_ckpt(tmp_path / "run" / "checkpoint-last.pth", mask_ratio=0.6)
    got = load_mae_checkpoint(tmp_path / "run" / "checkpoint-last.pth")
    assert got.source == "ours" and got.preset == "mae_vit_smoke" and got.target == "norm_pixel"
    assert got.train_mask_ratio == 0.6 and got.epoch == 1
    assert all(torch.equal(v, got.model.state_dict()[k]) for k, v in m.state_dict().items())
    with pytest.raises(CheckpointError, match="norm_pixel.*contradicts"):
        load_mae_checkpoint(tmp_path / "run" / "checkpoint-last.pth", norm_pix=False)


def test_load_official_layout_file_infers_the_architecture(tmp_path):
    m = _model("pixel")
    save_checkpoint({"model": m.state_dict()}, tmp_path / "official.pth")
    plain = load_mae_checkpoint(tmp_path / "official.pth")
    normed = load_mae_checkpoint(tmp_path / "official.pth", norm_pix=True)
    assert plain.source == "official" and plain.preset == "mae_vit_smoke"
    assert plain.target == "pixel" and normed.target == "norm_pixel"
    assert "assumed off" in plain.description
    imgs = _imgs(1)
    noise = mask_noise(m, 1, 0.75)
    assert torch.allclose(m.eval()(imgs, 0.75, noise)[1], plain.model(imgs, 0.75, noise)[1])


def test_infer_the_released_architectures_from_shapes():
    for name, patch in (("mae_vit_base_patch16", 16), ("mae_vit_huge_patch14", 14)):
        with torch.device("meta"):
            sd = create_mae(name).state_dict()
        info = inspect_checkpoint(sd, label=name)
        cfg = config_from_shapes(info, norm_pix=True)
        assert info.preset == name and cfg.patch_size == patch and cfg.img_size == 224
        assert cfg.target == "norm_pixel" and cfg.decoder_depth == 8 and cfg.decoder_embed_dim == 512
        assert cfg == create_mae(name, target="norm_pixel").config  # heads too


def test_wrong_kinds_of_checkpoint_are_named(tmp_path):
    m = _model()
    enc = {k: v for k, v in m.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    save_checkpoint({"model": enc}, tmp_path / "encoder.pth")
    with pytest.raises(CheckpointError, match="encoder-only.*no MAE decoder"):
        load_mae_checkpoint(tmp_path / "encoder.pth")
    ft = {**enc, "head.weight": torch.zeros(10, 32), "head.bias": torch.zeros(10), "fc_norm.weight": torch.ones(32)}
    save_checkpoint({"model": ft, "config": {"model": "vit_smoke"}}, tmp_path / "finetune.pth")
    with pytest.raises(CheckpointError, match=r"finetune\.pth is a fine-tune.*head\.weight"):
        load_mae_checkpoint(tmp_path / "finetune.pth")
    save_checkpoint({"model": {"conv1.weight": torch.zeros(4, 3, 3, 3)}}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match=r"resnet\.pth is not a ViT/MAE checkpoint.*conv1\.weight"):
        load_mae_checkpoint(tmp_path / "resnet.pth")
    tok = {**m.state_dict(), "target.tokenizer.codebook": torch.zeros(8, 4)}
    save_checkpoint({"model": tok}, tmp_path / "token.pth")
    with pytest.raises(CheckpointError, match="token target"):
        load_mae_checkpoint(tmp_path / "token.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_mae_checkpoint(tmp_path / "missing.pth")


def test_unknown_widths_need_a_preset(tmp_path):
    torch.manual_seed(0)
    m = create_mae("mae_vit_smoke", embed_dim=48, num_heads=3)
    with pytest.raises(CheckpointError, match="encoder width 48"):
        config_from_shapes(inspect_checkpoint(m.state_dict(), label="odd.pth"))
    cfg = config_from_shapes(inspect_checkpoint(m.state_dict(), label="odd.pth", preset="mae_vit_smoke"))
    assert cfg.embed_dim == 48 and cfg.num_heads == 2  # heads taken from the named preset
