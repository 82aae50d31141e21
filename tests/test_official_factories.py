"""The release's model names (models_mae.mae_vit_{base,large}_patch16, mae_vit_huge_patch14, *_dec512d8b)."""
from functools import partial

import pytest
import torch
import torch.nn as nn

import mae.models
import mae.models.mae as models_mae
from mae.models import mae_config

pytestmark = pytest.mark.usefixtures("one_thread")


def expected_params(d, depth, patch, img=224, dd=512, ddepth=8, chans=3):
    """Parameter count of the release's MaskedAutoencoderViT, from its layer list (sin-cos tables included)."""
    n = (img // patch) ** 2
    block = lambda w: 12 * w * w + 13 * w  # qkv + proj + fc1 + fc2 (ratio 4) + two LayerNorms
    encoder = patch * patch * chans * d + d + d + (n + 1) * d + depth * block(d) + 2 * d
    decoder = d * dd + dd + dd + (n + 1) * dd + ddepth * block(dd) + 2 * dd + dd * patch * patch * chans + patch * patch * chans
    return encoder + decoder


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_vit_base_as_the_release_builds_it():
    m = mae.models.mae_vit_base_patch16(norm_pix_loss=True)
    assert m.norm_pix_loss and m.config == mae_config("mae_vit_base_patch16", target="norm_pixel")
    assert count(m) == expected_params(768, 12, 16) == 111_907_840
    assert mae.models.mae_vit_base_patch16 is mae.models.mae_vit_base_patch16_dec512d8b


@pytest.mark.parametrize("name, d, depth, heads, patch", [("mae_vit_large_patch16", 1024, 24, 16, 16),
                                                        ("mae_vit_huge_patch14", 1280, 32, 16, 14)])
def test_large_and_huge_on_the_meta_device(name, d, depth, heads, patch):
    with torch.device("meta"):  # no memory, no init cost
        m = models_mae.__dict__[name]()  # the release's `models_mae.__dict__[args.model](...)` idiom
    c = m.config
    assert (c.embed_dim, c.depth, c.num_heads, c.patch_size, c.img_size) == (d, depth, heads, patch, 224)
    assert (c.decoder_embed_dim, c.decoder_depth, c.decoder_num_heads, c.target) == (512, 8, 16, "pixel")
    assert count(m) == expected_params(d, depth, patch)
    assert getattr(mae.models, name) is getattr(mae.models, name + "_dec512d8b")


def test_release_keyword_arguments():
    tiny = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                decoder_num_heads=2)
    m = mae.models.mae_vit_base_patch16(norm_layer=partial(nn.LayerNorm, eps=1e-6), norm_pix_loss=False, **tiny)
    loss, pred, mask = m(torch.randn(2, 3, 32, 32), mask_ratio=0.75)
    assert loss.ndim == 0 and pred.shape == (2, 16, 192) and mask.sum() == 2 * 12
    with pytest.raises(ValueError, match="eps=1e-06"):
        mae.models.mae_vit_base_patch16(norm_layer=nn.LayerNorm, **tiny)
    with pytest.raises(ValueError, match="contradicts"):
        mae.models.mae_vit_base_patch16(norm_pix_loss=True, target="pca", **tiny)
