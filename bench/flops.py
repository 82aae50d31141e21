"""Model FLOPs of one MAE pre-training step and the peak rates used for MFU.

FLOPs count matrix products only (linear layers, the patch projection, attention's two batched
products), 2 per multiply-add, as is usual for MFU; layer norms, GELU, softmax and the loss are left
out. A training step is the forward plus a backward of twice the forward's products, except for the
patch projection, whose input (the image) needs no gradient. ``tests/test_bench.py`` checks these
formulas against ``torch.utils.flop_counter`` on small models.
"""
from __future__ import annotations

from dataclasses import dataclass

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


# Dense (no sparsity) peak rates in TFLOP/s from the vendors' datasheets, by dtype; the first
# matching name fragment wins, so more specific names come first.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM5 / HBM3
    ("H200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("GH200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.1, "fp16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
)


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """Datasheet peak of ``device_name`` for ``dtype`` (bf16 | fp16 | tf32 | fp32), or None if unknown."""
    for fragment, table in PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            return table.get(dtype)
    return None
