import math

import numpy as np
import torch

from mae.models.pos_embed import get_2d_sincos_pos_embed, interpolate_pos_embed


def test_sincos_hand_checked_2x2():
    # D = 4: two channels per axis, one frequency (omega = 1): [sin w, cos w, sin h, cos h]
    emb = get_2d_sincos_pos_embed(4, 2, cls_token=True)
    assert emb.shape == (5, 4)
    np.testing.assert_array_equal(emb[0], np.zeros(4))  # cls row
    expected = []
    for h in range(2):  # raster order: row-major over (h, w)
        for w in range(2):
            expected.append([math.sin(w), math.cos(w), math.sin(h), math.cos(h)])
    np.testing.assert_allclose(emb[1:], np.array(expected), atol=1e-6)


def test_sincos_frequencies_8_channels():
    emb = get_2d_sincos_pos_embed(8, 3)
    # per axis D' = 4 -> omega = [1, 1/10000^(1/2)] = [1, 0.01]; columns: sin(w*o0), sin(w*o1), cos(w*o0), cos(w*o1), then h
    h, w = 2, 1
    row = emb[h * 3 + w]
    np.testing.assert_allclose(row, [math.sin(w), math.sin(w * 0.01), math.cos(w), math.cos(w * 0.01),
                                     math.sin(h), math.sin(h * 0.01), math.cos(h), math.cos(h * 0.01)], atol=1e-6)


def test_interpolate_pos_embed_identity_and_resize():
    pe = torch.from_numpy(get_2d_sincos_pos_embed(16, 4, cls_token=True)).unsqueeze(0)
    assert interpolate_pos_embed(pe, (4, 4)) is pe
    out = interpolate_pos_embed(pe, (6, 6))
    assert out.shape == (1, 37, 16)
    torch.testing.assert_close(out[:, 0], pe[:, 0])
