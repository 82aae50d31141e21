"""FLOPs of the MAE: per-image FLOPs of a pre-training step by formula, and a forward pass counted by torch.

:func:`step_flops` counts matrix products only (linear layers, the patch projection, attention's two
batched products), 2 per multiply-add, as is usual for MFU; layer norms, GELU, softmax and the loss
are left out. A training step is the forward plus a backward of twice the forward's products, except
for the patch projection, whose input (the image) needs no gradient. ``tests/test_bench.py`` checks
these formulas against ``torch.utils.flop_counter`` on small models. :func:`forward_flops` is that
counter run on one image (Table 1c's relative FLOPs, Table 2's GFLOPs per image).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mae.masking import num_keep
from mae.models.mae import MAEConfig


@dataclass(frozen=True)
class StepFlops:
    """Per-image FLOPs of one pre-training step."""

    patch_embed: float
    encoder: float
    decoder: float  # decoder_embed + decoder blocks + decoder_pred
    target: float  # PCA projection of the target (no gradient)

    @property
    def forward(self) -> float:
        return self.patch_embed + self.encoder + self.decoder + self.target

    @property
    def train(self) -> float:
        """Forward + backward: backward = 2x forward, minus the image gradient of the patch projection."""
        return self.forward + 2 * (self.encoder + self.decoder) + self.patch_embed


def _blocks(tokens: int, width: int, depth: int, mlp_ratio: float) -> float:
    """Forward FLOPs of ``depth`` ViT blocks on ``tokens`` tokens: qkv, proj, fc1, fc2, QK^T and AV."""
    hidden = int(width * mlp_ratio)
    linear = 2 * tokens * (3 * width * width + width * width + 2 * width * hidden)
    attention = 2 * 2 * tokens * tokens * width
    return float(depth * (linear + attention))


def step_flops(cfg: MAEConfig, mask_ratio: float = 0.75, out_dim: int | None = None) -> StepFlops:
    """FLOPs per image of a pre-training step of the model ``cfg`` at ``mask_ratio``.

    ``out_dim``: the decoder's output size per patch (default: pixels p*p*C, or ``pca_components``).
    """
    length = cfg.num_patches
    patch_dim = cfg.patch_size ** 2 * cfg.in_chans
    enc_tokens = 1 + (length if cfg.encoder_mask_token else num_keep(length, mask_ratio))
    dec_tokens = 1 + length
    if out_dim is None:
        out_dim = cfg.pca_components if cfg.target == "pca" else patch_dim
    if cfg.target == "token":
        raise ValueError("step_flops: the token target's tokenizer FLOPs are not modelled")
    d, dd = cfg.embed_dim, cfg.decoder_embed_dim
    decoder = (2 * enc_tokens * d * dd + _blocks(dec_tokens, dd, cfg.decoder_depth, cfg.mlp_ratio)
               + 2 * dec_tokens * dd * out_dim)
    target = 2.0 * length * patch_dim * out_dim if cfg.target == "pca" else 0.0
    return StepFlops(patch_embed=2.0 * length * patch_dim * d,
                     encoder=_blocks(enc_tokens, d, cfg.depth, cfg.mlp_ratio),
                     decoder=float(decoder), target=target)


def forward_flops(model: torch.nn.Module, img_size: int, mask_ratio: float = 0.75) -> float:
    """FLOPs of one pre-training forward pass (encoder + decoder + loss) on one image, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.randn(1, 3, img_size, img_size, device=device)
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, mask_ratio=mask_ratio)
    model.train(was)
    return float(counter.get_total_flops())
