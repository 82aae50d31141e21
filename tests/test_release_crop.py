"""The linear probe's crop: the release's util/crop.RandomResizedCrop (one draw, clamped to the image)."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from mae.data import LINPROBE_CROP_SCALE, ReleaseRandomResizedCrop, linprobe_transform
from mae.protocols import linprobe

W, H = 500, 375
RATIO = (3 / 4, 4 / 3)


def expected_area(width: int, height: int, scale=LINPROBE_CROP_SCALE, ratio=RATIO, n: int = 1500) -> float:
    """E[w * h] / (W * H) by the midpoint rule over (area, log-aspect): no random numbers."""
    s = scale[0] + (np.arange(n) + 0.5) / n * (scale[1] - scale[0])
    lr = math.log(ratio[0]) + (np.arange(n) + 0.5) / n * (math.log(ratio[1]) - math.log(ratio[0]))
    a, r = np.meshgrid(s * width * height, np.exp(lr), indexing="ij")
    w = np.minimum(np.round(np.sqrt(a * r)), width)
    h = np.minimum(np.round(np.sqrt(a / r)), height)
    return float((w * h).mean() / (width * height))


def test_mean_area_on_a_500x375_image_is_the_release_value():
    exp = expected_area(W, H)
    assert exp == pytest.approx(0.519, abs=0.002)  # REFERENCE.md: ~0.52 (torchvision's ~0.43)
    torch.manual_seed(0)
    draws = [ReleaseRandomResizedCrop.get_params(W, H, LINPROBE_CROP_SCALE, RATIO) for _ in range(4000)]
    areas = np.array([h * w for _, _, h, w in draws]) / (W * H)
    assert areas.mean() == pytest.approx(exp, abs=0.015)  # 4 standard errors (std of one draw ~0.24)
    assert all(0 <= i <= H - h and 0 <= j <= W - w and 1 <= h <= H and 1 <= w <= W for i, j, h, w in draws)
    clamped = np.mean([w == W or h == H for _, _, h, w in draws])
    assert 0.2 < clamped < 0.32  # ~26% of draws are cut at the border (torchvision would redraw them)
    img = Image.new("RGB", (W, H))
    torch.manual_seed(0)
    tv = np.mean([h * w for _, _, h, w in (T.RandomResizedCrop.get_params(img, list(LINPROBE_CROP_SCALE), list(RATIO))
                                          for _ in range(2000))]) / (W * H)
    assert tv == pytest.approx(0.435, abs=0.02) and areas.mean() - tv > 0.06


def test_a_draw_larger_than_the_image_is_clamped_not_redrawn():
    torch.manual_seed(3)
    i, j, h, w = ReleaseRandomResizedCrop.get_params(W, H, (1.0, 1.0), (2.0, 2.0))
    assert (w, h, j) == (W, round(math.sqrt(W * H / 2)), 0)  # 612 x 306 asked, width cut to 500
    assert 0 <= i <= H - h
    i, j, h, w = ReleaseRandomResizedCrop.get_params(W, H, (1.0, 1.0), (0.5, 0.5))
    assert (h, w, i) == (H, round(math.sqrt(W * H / 2)), 0)  # 306 x 612 asked, height cut to 375


def test_one_draw_of_each_number_no_retry_loop():
    """Four numbers from torch's RNG per crop (area, aspect, top, left), whatever the draw."""
    for seed in range(20):
        torch.manual_seed(seed)
        ReleaseRandomResizedCrop.get_params(W, H, (0.9, 1.0), (0.3, 3.0))  # mostly oversize draws
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        torch.empty(1).uniform_(0, 1), torch.empty(1).uniform_(0, 1)
        torch.randint(0, 2, size=(1,)), torch.randint(0, 2, size=(1,))
        assert torch.equal(after, torch.get_rng_state())


def test_forward_is_a_seeded_resized_crop():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (37, 50, 3), dtype=np.uint8))
    crop = ReleaseRandomResizedCrop(16)
    torch.manual_seed(5)
    out = crop(img)
    torch.manual_seed(5)
    i, j, h, w = ReleaseRandomResizedCrop.get_params(50, 37, crop.scale, crop.ratio)
    ref = TF.resized_crop(img, i, j, h, w, [16, 16], T.InterpolationMode.BICUBIC)
    assert out.size == (16, 16) and np.array_equal(np.asarray(out), np.asarray(ref))
    with pytest.raises(ValueError, match="scale"):
        ReleaseRandomResizedCrop(16, scale=(0.5, 0.1))


def test_probe_transforms_and_presets_pick_their_crop():
    assert isinstance(linprobe_transform(24, True, crop="release").transforms[0], ReleaseRandomResizedCrop)
    assert type(linprobe_transform(24, True).transforms[0]) is T.RandomResizedCrop
    assert linprobe_transform(24, True, crop="release")(Image.new("RGB", (40, 30))).shape == (3, 24, 24)
    with pytest.raises(ValueError, match="torchvision"):
        linprobe_transform(24, True, crop="tf")
    with pytest.raises(ValueError, match="crop"):
        linprobe.Config(crop="tf")
    for name in ("paper_vit_base", "paper_vit_large", "paper_vit_huge"):
        assert linprobe.PRESETS[name].crop == "release" and linprobe.PRESETS[name].augment
    for name in ("demo", "smoke", "mini"):
        assert linprobe.PRESETS[name].crop == "torchvision"


class _Captured(Exception):
    pass


def test_the_paper_probe_run_trains_on_the_release_crop(tmp_path, monkeypatch):
    seen = {}

    def fake_data(cfg, train_tf, **kw):
        seen["tf"] = train_tf
        raise _Captured

    monkeypatch.setattr(linprobe, "classification_data", fake_data)
    cfg = replace(linprobe.PRESETS["paper_vit_large"], model="vit_smoke", img_size=32, data="synthetic:16",
                  output_dir=str(tmp_path))
    with pytest.raises(_Captured):
        linprobe.run(cfg)
    assert isinstance(seen["tf"].transforms[0], ReleaseRandomResizedCrop)
