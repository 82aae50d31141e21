"""A rough model of training memory per GPU for the downstream recipes (what ``--dry-run`` prints).

    total = state + per_gpu_batch * activations per image

* state: 18 bytes per trainable parameter -- fp32 weights (4), fp32 gradients (4), AdamW's two
  moments (8), and the fp16 copies autocast keeps of the weights during a step (2).
* activations per image, AMP, summed over the ViT blocks that run (s tokens, width h, a heads):
  ``LINEAR_BYTES * s * h`` for the linear / LayerNorm / MLP tensors kept for backward (34 bytes for
  fp16 activations, Korthikanti et al. 2022, "Reducing activation recomputation", plus 4 for the two
  LayerNorm inputs that autocast keeps in fp32), and ``SCORE_BYTES * a * s_att**2 * n_att`` for
  the attention scores (fp16 logits 2 + fp32 softmax 4 + fp16 probabilities 2; assumed materialised
  because of the learned relative-position bias), where a windowed block attends within
  ``n_att`` windows of ``s_att = window**2`` tokens (the grid zero-padded to whole windows) and a
  global block over all s tokens; plus the neck and heads (``head_gb``, a per-task constant of the
  config's recipe, a few per cent of the total at the paper's sizes).
* with activation checkpointing per block: each block keeps only its fp32 input (4 * s * h bytes)
  and the largest block is recomputed once during backward, so activations per image become
  ``sum(4 * s * h) + max(block) + head_gb``.

Sanity check against published numbers (tests/test_downstream_memory.py): ViTDet Mask R-CNN at one
1024x1024 image per GPU, AMP, no checkpointing, measured 10.9 / 20.9 / 31.5 GB for ViT-B / L / H
(detectron2 projects/ViTDet/README.md); this model gives them within 15%. It ignores the CUDA context,
allocator fragmentation and cuDNN workspaces: :func:`fits` keeps 10% of the budget free for those.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

GB = 1e9
STATE_BYTES = 18
LINEAR_BYTES = 38
SCORE_BYTES = 8
CHECKPOINT_INPUT_BYTES = 4
HEADROOM = 0.9  # fraction of the budget the estimate may use


@dataclass(frozen=True)
class BackboneShape:
    """What the model needs of the encoder and the input."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    image_size: tuple[int, int]
    window_size: int = 0  # 0: every block global
    global_blocks: Sequence[int] = ()
    blocks_run: int | None = None  # blocks up to the last tapped one (default: all)
    cls_token: bool = False


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated bytes per GPU (GB) for one training step."""

    params: int
    per_gpu_batch: int
    act_checkpoint: bool
    state_gb: float
    activations_per_image_gb: float

    @property
    def total_gb(self) -> float:
        return self.state_gb + self.per_gpu_batch * self.activations_per_image_gb


def _block_bytes(shape: BackboneShape) -> list[tuple[float, float]]:
    """Per block: (activation bytes without checkpointing, bytes of its kept input with checkpointing)."""
    gh, gw = (math.ceil(x / shape.patch_size) for x in shape.image_size)
    tokens = gh * gw + (1 if shape.cls_token else 0)
    h, a = shape.embed_dim, shape.num_heads
    out = []
    for i in range(shape.blocks_run if shape.blocks_run is not None else shape.depth):
        ws = shape.window_size
        if ws and i not in shape.global_blocks:
            n_win = math.ceil(gh / ws) * math.ceil(gw / ws)
            s_att, s = ws * ws, n_win * ws * ws  # padded tokens run through the block
        else:
            n_win, s_att, s = 1, tokens, tokens
        out.append((LINEAR_BYTES * s * h + SCORE_BYTES * a * s_att ** 2 * n_win, CHECKPOINT_INPUT_BYTES * s * h))
    return out


def estimate_memory(shape: BackboneShape, params: int, per_gpu_batch: int, act_checkpoint: bool,
                    head_gb: float) -> MemoryEstimate:
    """The estimate above for one configuration (``params``: trainable parameters of the whole model)."""
    blocks = _block_bytes(shape)
    if act_checkpoint:
        act = sum(kept for _, kept in blocks) + max(full for full, _ in blocks)
    else:
        act = sum(full for full, _ in blocks)
    return MemoryEstimate(params, per_gpu_batch, act_checkpoint, STATE_BYTES * params / GB, act / GB + head_gb)


def fits(estimate: MemoryEstimate, budget_gb: float) -> bool:
    """Whether the estimate leaves 10% of ``budget_gb`` free (context, fragmentation, workspaces)."""
    return estimate.total_gb <= HEADROOM * budget_gb


def choose(shape: BackboneShape, params: int, choices: Sequence[int], head_gb: float, budget_gb: float,
           act_checkpoint: bool | None) -> MemoryEstimate:
    """The largest per-GPU batch of ``choices`` that fits ``budget_gb``.

    ``act_checkpoint=None`` (auto): without checkpointing when that fits, else with it, trying each
    batch in turn -- so checkpointing is switched on only where the batch would not fit without it.
    Returns the smallest batch's estimate (which does not fit) when nothing does; callers report it.
    """
    modes = (False, True) if act_checkpoint is None else (act_checkpoint,)
    last = None
    for b in choices:
        for ck in modes:
            last = estimate_memory(shape, params, b, ck, head_gb)
            if fits(last, budget_gb):
                return last
    assert last is not None, "no per-GPU batch to try"
    return last
