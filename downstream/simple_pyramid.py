"""ViTDet's simple feature pyramid (Li et al. 2022, "Exploring plain ViT backbones"), the ``vitdet``
pyramid of ``coco_det.py`` -- the alternative to the paper's own design (Appendix A.3: four block
subsets + FPN, built inside ``MAEViT``).

From the last map alone (stride p = the patch size; no top-down path, no FPN), resampled to each
output stride: x4 = transposed conv to D/2, LayerNorm, GELU, transposed conv to D/4; x2 = transposed
conv to D/2; x1 = identity; x1/2 (x1/4) = 2x2 (4x4) max-pool (p = 16: strides 4 / 8 / 16 / 32). Each
level then gets a 1x1 conv to ``out_channels`` and a 3x3 conv, each followed by LayerNorm (no conv
biases); a sixth level (stride 64) is a stride-2 subsampling of the stride-32 one (max-pool of
kernel 1), as detectron2's ``LastLevelMaxPool``.

``LN2d`` (a channels-first LayerNorm) is registered for mmcv's ``build_norm_layer`` so that ViTDet's
heads -- a 4-conv + 1-fc box head and a 4-conv mask head with LayerNorm -- are plain mmdet configs.
"""
from __future__ import annotations

from typing import Sequence

from downstream import compat  # noqa: F401  (must run before the OpenMMLab imports below)

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.registry import MODELS as ROOT_MODELS
from timm.layers import LayerNorm2d

from mae.models.mae import LN_EPS

if ROOT_MODELS.get("LN2d") is None:
    ROOT_MODELS.register_module(name="LN2d", module=LayerNorm2d)


def _level(dim: int, scale: float) -> tuple[nn.Module, int]:
    """The resampling of one level and its output width."""
    if scale == 4:
        return nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, 2), LayerNorm2d(dim // 2, eps=LN_EPS), nn.GELU(),
                             nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2)), dim // 4
    if scale == 2:
        return nn.ConvTranspose2d(dim, dim // 2, 2, 2), dim // 2
    if scale == 1:
        return nn.Identity(), dim
    if scale in (0.5, 0.25):
        k = int(round(1 / scale))
        return nn.MaxPool2d(k, k), dim
    raise ValueError(f"SimpleFeaturePyramid: an output stride must be the input stride x (1/4, 1/2, 1, 2, 4), "
                     f"got a factor {scale}")


class SimpleFeaturePyramid(BaseModule):
    """One stride-``in_stride`` map -> ``len(out_strides) + 1`` maps (strides 4 / 8 / 16 / 32 / 64 by default).

    Args:
        in_channels: width of the backbone map (a one-element list, as the backbone returns a tuple).
        out_channels: width of every output level (256 for Mask R-CNN).
        in_stride: stride of the input map (the ViT's patch size).
        out_strides: strides of the outputs before the extra stride-2 level, smallest first.
    """

    def __init__(self, in_channels: int | Sequence[int], out_channels: int = 256, in_stride: int = 16,
                 out_strides: Sequence[int] = (4, 8, 16, 32), init_cfg: dict | None = None):
        super().__init__(init_cfg=init_cfg)
        dims = [in_channels] if isinstance(in_channels, int) else list(in_channels)
        if len(dims) != 1:
            raise ValueError(f"SimpleFeaturePyramid takes one input map, got in_channels={dims}")
        dim = dims[0]
        if dim % 4:
            raise ValueError(f"SimpleFeaturePyramid needs a width divisible by 4, got {dim}")
        self.resample = nn.ModuleList()
        self.lateral = nn.ModuleList()
        for s in out_strides:
            op, width = _level(dim, in_stride / s)
            self.resample.append(op)
            self.lateral.append(nn.Sequential(
                nn.Conv2d(width, out_channels, 1, bias=False), LayerNorm2d(out_channels, eps=LN_EPS),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels, eps=LN_EPS)))

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(inputs) != 1:
            raise ValueError(f"SimpleFeaturePyramid expects the backbone's last map alone, got {len(inputs)} maps "
                             "(set the backbone's out_strides=[16])")
        x = inputs[-1]
        outs = [lat(op(x)) for op, lat in zip(self.resample, self.lateral)]
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)


def _register() -> None:
    from mmdet.registry import MODELS
    MODELS.register_module(name="SimpleFeaturePyramid", module=SimpleFeaturePyramid, force=True)


_register()
