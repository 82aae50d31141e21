"""The MAE model against the official conventions (REFERENCE.md) and an independent reference computation."""
import math

import pytest
import torch

from mae.engine.checkpoint import CheckpointError, extract_state_dict, load_checkpoint, load_state_dict_checked
from mae.models import create_mae, mae_config
from mae.models.pos_embed import get_2d_sincos_pos_embed


def official_layout(d, depth, dd, ddepth, p, L, c=3, out=None):
    """Key -> shape of an official pre-training state_dict, written from REFERENCE.md (not from our model)."""
    out = out or p * p * c
    shapes = {"cls_token": (1, 1, d), "pos_embed": (1, 1 + L, d),
              "patch_embed.proj.weight": (d, c, p, p), "patch_embed.proj.bias": (d,),
              "norm.weight": (d,), "norm.bias": (d,),
              "decoder_embed.weight": (dd, d), "decoder_embed.bias": (dd,), "mask_token": (1, 1, dd),
              "decoder_pos_embed": (1, 1 + L, dd), "decoder_norm.weight": (dd,), "decoder_norm.bias": (dd,),
              "decoder_pred.weight": (out, dd), "decoder_pred.bias": (out,)}
    for prefix, n, w in (("blocks", depth, d), ("decoder_blocks", ddepth, dd)):
        for i in range(n):
            b = f"{prefix}.{i}."
            shapes.update({b + "norm1.weight": (w,), b + "norm1.bias": (w,), b + "norm2.weight": (w,), b + "norm2.bias": (w,),
                           b + "attn.qkv.weight": (3 * w, w), b + "attn.qkv.bias": (3 * w,),
                           b + "attn.proj.weight": (w, w), b + "attn.proj.bias": (w,),
                           b + "mlp.fc1.weight": (4 * w, w), b + "mlp.fc1.bias": (4 * w,),
                           b + "mlp.fc2.weight": (w, 4 * w), b + "mlp.fc2.bias": (w,)})
    return shapes


@pytest.mark.parametrize("name,d,depth,p,L", [("mae_vit_base_patch16", 768, 12, 16, 196),
                                             ("mae_vit_huge_patch14", 1280, 32, 14, 256)])
def test_official_layout_of_presets(name, d, depth, p, L):
    with torch.device("meta"):
        model = create_mae(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_layout(d, depth, 512, 8, p, L)


def test_official_file_loads_strict(tmp_path):
    torch.manual_seed(0)
    shapes = official_layout(32, 2, 32, 1, 8, 16)
    sd = {k: torch.randn(s) for k, s in shapes.items()}
    path = tmp_path / "mae_pretrain_official_layout.pth"
    torch.save({"model": sd}, path)
    model = create_mae("mae_vit_smoke")
    loaded = extract_state_dict(load_checkpoint(path))
    load_state_dict_checked(model, loaded, strict=True)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, sd[k])


def test_wrong_architecture_names_keys_and_shapes():
    big = create_mae("mae_vit_smoke", embed_dim=64, depth=3).state_dict()
    with pytest.raises(CheckpointError) as e:
        load_state_dict_checked(create_mae("mae_vit_smoke"), big)
    msg = str(e.value)
    assert "blocks.2.attn.qkv.weight" in msg and "unexpected" in msg
    assert "shape mismatch (31)" in msg and "blocks.0.attn.proj.bias: checkpoint (64,) vs model (32,)" in msg


def test_patchify_pixel_order_and_roundtrip(smoke_model):
    imgs = torch.randn(2, 3, 32, 32)
    x = smoke_model.patchify(imgs)
    assert x.shape == (2, 16, 8 * 8 * 3)
    # patch 5 = row 1, col 1 in a 4x4 grid; element (r, c, ch) at index (r*8 + c)*3 + ch
    r, c, ch = 3, 6, 2
    assert x[1, 5, (r * 8 + c) * 3 + ch] == imgs[1, ch, 8 + r, 8 + c]
    torch.testing.assert_close(smoke_model.unpatchify(x), imgs, rtol=0, atol=0)


def test_sincos_tables_are_fixed(smoke_model):
    cfg = smoke_model.config
    expected = torch.from_numpy(get_2d_sincos_pos_embed(cfg.embed_dim, cfg.grid_size, cls_token=True))
    torch.testing.assert_close(smoke_model.pos_embed[0], expected)
    assert not smoke_model.pos_embed.requires_grad and not smoke_model.decoder_pos_embed.requires_grad


# ---------------------------------------------------------------- reference computation
def _ln(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-6) * w + b


def _block(x, sd, prefix, heads):
    n, t, d = x.shape
    h = _ln(x, sd[prefix + "norm1.weight"], sd[prefix + "norm1.bias"])
    qkv = h @ sd[prefix + "attn.qkv.weight"].t() + sd[prefix + "attn.qkv.bias"]
    q, k, v = qkv.split(d, dim=-1)
    split = lambda z: z.view(n, t, heads, d // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    a = (att @ v).transpose(1, 2).reshape(n, t, d)
    x = x + a @ sd[prefix + "attn.proj.weight"].t() + sd[prefix + "attn.proj.bias"]
    h = _ln(x, sd[prefix + "norm2.weight"], sd[prefix + "norm2.bias"])
    h = h @ sd[prefix + "mlp.fc1.weight"].t() + sd[prefix + "mlp.fc1.bias"]
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return x + h @ sd[prefix + "mlp.fc2.weight"].t() + sd[prefix + "mlp.fc2.bias"]


def reference_mae_loss(sd, imgs, noise, ratio, p, heads, dec_heads, depth, dec_depth, norm_pix):
    """Sec. 3 of the paper written out with loops and explicit index bookkeeping."""
    n, c, hh, ww = imgs.shape
    gh, gw = hh // p, ww // p
    L = gh * gw
    patches = torch.stack([torch.stack([imgs[i, :, r * p:(r + 1) * p, q * p:(q + 1) * p].permute(1, 2, 0).reshape(-1)
                                        for r in range(gh) for q in range(gw)]) for i in range(n)])
    conv = torch.stack([imgs[:, :, r * p:(r + 1) * p, q * p:(q + 1) * p] for r in range(gh) for q in range(gw)], 1)
    tokens = torch.einsum("nlchw,dchw->nld", conv, sd["patch_embed.proj.weight"]) + sd["patch_embed.proj.bias"]
    tokens = tokens + sd["pos_embed"][:, 1:]
    keep = int(L * (1 - ratio))
    outs, masks, kept_ids = [], [], []
    for i in range(n):
        order = sorted(range(L), key=lambda j: noise[i, j].item())
        kept = order[:keep]
        kept_ids.append(kept)
        masks.append(torch.tensor([0.0 if j in kept else 1.0 for j in range(L)]))
        outs.append(torch.cat([sd["cls_token"][0] + sd["pos_embed"][0, :1], tokens[i, kept]]))
    x = torch.stack(outs)
    for b in range(depth):
        x = _block(x, sd, f"blocks.{b}.", heads)
    x = _ln(x, sd["norm.weight"], sd["norm.bias"])
    y = x @ sd["decoder_embed.weight"].t() + sd["decoder_embed.bias"]
    full = []
    for i in range(n):
        seq = [y[i, 0]] + [None] * L
        for slot, j in enumerate(kept_ids[i]):
            seq[1 + j] = y[i, 1 + slot]
        seq = [s if s is not None else sd["mask_token"][0, 0] for s in seq]
        full.append(torch.stack(seq))
    z = torch.stack(full) + sd["decoder_pos_embed"]
    for b in range(dec_depth):
        z = _block(z, sd, f"decoder_blocks.{b}.", dec_heads)
    z = _ln(z, sd["decoder_norm.weight"], sd["decoder_norm.bias"])
    pred = (z @ sd["decoder_pred.weight"].t() + sd["decoder_pred.bias"])[:, 1:]
    target = patches
    if norm_pix:
        mean = target.mean(-1, keepdim=True)
        var = target.var(-1, keepdim=True, unbiased=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    mask = torch.stack(masks)
    per_patch = ((pred - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum(), pred, mask


@pytest.mark.parametrize("target", ["pixel", "norm_pixel"])
def test_loss_matches_reference_computation(target):
    torch.manual_seed(0)
    model = create_mae("mae_vit_smoke", depth=2, decoder_depth=2, target=target).double()
    with torch.no_grad():  # non-trivial weights everywhere
        for prm in model.parameters():
            if prm.requires_grad:
                prm.add_(0.05 * torch.randn_like(prm))
    imgs = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    noise = torch.rand(3, 16, dtype=torch.float64)
    loss, pred, mask = model(imgs, mask_ratio=0.75, noise=noise)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    ref_loss, ref_pred, ref_mask = reference_mae_loss(sd, imgs, noise, 0.75, 8, 2, 2, 2, 2, target == "norm_pixel")
    torch.testing.assert_close(mask.double(), ref_mask.double())
    torch.testing.assert_close(pred, ref_pred, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-10)


def test_same_noise_same_loss_and_noise_fixes_mask(smoke_model):
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    a = smoke_model(imgs, 0.75, noise)
    b = smoke_model(imgs, 0.75, noise.clone())
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert torch.equal(a[2], b[2])


class _Spy(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.lengths = inner, []

    def forward(self, x):
        self.lengths.append(x.shape[1])
        return self.inner(x)


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9])
def test_encoder_sees_only_visible_patches(ratio):
    model = create_mae("mae_vit_smoke")
    spy = _Spy(model.blocks[0])
    model.blocks[0] = spy
    latent, mask, _ = model.forward_encoder(torch.randn(2, 3, 32, 32), ratio)
    assert spy.lengths == [1 + int(16 * (1 - ratio))]
    assert latent.shape[1] == 1 + int(16 * (1 - ratio))


def test_encoder_with_mask_tokens_sees_all_patches():
    model = create_mae("mae_vit_smoke", encoder_mask_token=True)
    assert "encoder_mask_token" in model.state_dict() and "mask_token" not in model.state_dict()
    spy = _Spy(model.blocks[0])
    model.blocks[0] = spy
    imgs = torch.randn(2, 3, 32, 32)
    loss, pred, mask = model(imgs, 0.75)
    assert spy.lengths == [17] and pred.shape == (2, 16, 192)
    # removed patches really are replaced: changing their pixels does not change the encoder output
    noise = torch.rand(2, 16)
    lat1, m, _ = model.forward_encoder(imgs, 0.75, noise)
    imgs2 = imgs.clone()
    removed = model.unpatchify(m.unsqueeze(-1).expand(-1, -1, 192)).bool()
    imgs2[removed] = 100.0
    lat2, _, _ = model.forward_encoder(imgs2, 0.75, noise)
    torch.testing.assert_close(lat1, lat2)


def test_loss_on_all_patches():
    model = create_mae("mae_vit_smoke", loss_on="all")
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    loss, pred, _ = model(imgs, 0.75, noise)
    torch.testing.assert_close(loss, ((pred - model.patchify(imgs)) ** 2).mean())


def test_encode_is_raster_order_without_masking(smoke_model):
    imgs = torch.randn(2, 3, 32, 32)
    feats = smoke_model.encode(imgs)
    latent, _, _ = smoke_model.forward_encoder(imgs, 0.0, noise=torch.arange(16.).expand(2, 16))
    torch.testing.assert_close(feats, latent)


def test_bad_config_errors():
    with pytest.raises(ValueError, match="unknown MAE preset"):
        create_mae("mae_vit_gigantic")
    with pytest.raises(ValueError, match="not a multiple"):
        mae_config("mae_vit_smoke", img_size=30)
    with pytest.raises(ValueError, match="unknown MAE config field"):
        mae_config("mae_vit_smoke", decoder_layers=3)
