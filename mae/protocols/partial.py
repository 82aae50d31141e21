"""Partial fine-tuning (MAE Sec. 4.3, Fig. 9): fine-tune only the last k blocks of the encoder, plus
its final norm (``fc_norm`` with global pooling, ``norm`` with the cls token) and the head; every
other parameter is frozen (and its dropout / drop path stays in eval mode).

``--tune_blocks`` takes multiples of 0.5: ``k + 0.5`` also tunes the MLP sub-block (``norm2`` +
``mlp``) of the block just below the last k. Fig. 9's "half a block" is ``--tune_blocks 0.5``: the
MLP sub-block of the last block only. ``0`` tunes the final norm and the head only (close to, not
the same as, linear probing: no BatchNorm head, fine-tuning recipe).

Recipe: the end-to-end fine-tuning recipe of the Fig. 9 model (the 800-epoch ViT-L of Table 1: the
paper's Table 9 values, ``finetune.RECIPES["paper"]``), whose epoch count the paper picks per k from
{50, 100, 200} ("tuning fewer blocks requires a longer schedule").
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from mae.config import opt
from mae.models.vit import ViTClassifier
from mae.protocols import finetune


@dataclass
class Config(finetune.Config):
    """Partial fine-tuning recipe (defaults: ViT-L, one block)."""

    tune_blocks: float = opt(1.0, "fine-tune the last k blocks (+ final norm + head); multiples of 0.5, "
                                  "0.5 = only the MLP sub-block of the last block (Fig. 9)")
    model: str = opt("vit_large_patch16", "classifier preset (mae.models.vit.PRESETS); the mae_vit_* name works too")
    blr: float = opt(1e-3, "base learning rate: lr = blr * effective batch / 256")
    layer_decay: float = opt(0.75, "layer-wise lr decay (Table 9: 0.75)")
    drop_path: float = opt(0.1, "stochastic depth rate (Table 9, ViT-L: 0.1)")
    epochs: int = opt(50, "fine-tuning epochs (the paper picks 50, 100 or 200 per k)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tune_blocks < 0 or (2 * self.tune_blocks) % 1:
            raise ValueError(f"tune_blocks must be a multiple of 0.5 and >= 0, got {self.tune_blocks}")

    def validate(self) -> None:
        """Fine-tuning's checks, and no more tuned blocks than the encoder has."""
        from mae.config import require
        from mae.models.vit import vit_config
        super().validate()
        depth = vit_config(self.model).depth
        require(self.tune_blocks <= depth, "tune_blocks", self.tune_blocks, f"exceeds the {depth} blocks of {self.model}")


def trainable_prefixes(depth: int, tune_blocks: float) -> tuple[str, ...]:
    """Parameter-name prefixes left trainable when tuning the last ``tune_blocks`` of ``depth`` blocks."""
    if tune_blocks < 0 or (2 * tune_blocks) % 1:
        raise ValueError(f"tune_blocks must be a multiple of 0.5 and >= 0, got {tune_blocks}")
    if tune_blocks > depth:
        raise ValueError(f"tune_blocks={tune_blocks} exceeds the encoder's {depth} blocks")
    full = int(tune_blocks)
    prefixes = [f"blocks.{i}." for i in range(depth - full, depth)]
    if tune_blocks - full:  # the MLP half of the next block down
        i = depth - full - 1
        prefixes += [f"blocks.{i}.norm2.", f"blocks.{i}.mlp."]
    return tuple(prefixes) + ("norm.", "fc_norm.", "head.")


def freeze_for_partial(model: ViTClassifier, tune_blocks: float) -> list[str]:
    """Freeze everything but the last ``tune_blocks`` blocks, the final norm and the head; returns trainable names."""
    prefixes = trainable_prefixes(len(model.blocks), tune_blocks)
    names = model.freeze_except(lambda n: n.startswith(prefixes))
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    finetune.log(f"[partial] tuning {tune_blocks} of {len(model.blocks)} blocks: {n_train:,} of {n_all:,} parameters trainable")
    return names


_PAPER = Config(recipe_batch=1024, num_workers=10, data="/path/to/imagenet", img_size=224)  # --data is required
#: the cpu scale's partial fine-tuning (Fig. 9; reproduce/scales.py uses it as it is): its fine-tuning recipe
#: (finetune.CPU_BASELINE), tuning the last block
CPU_BASELINE = Config(**{**{f.name: getattr(finetune.CPU_BASELINE, f.name) for f in fields(finetune.Config)},
                         "output_dir": "outputs/partial_demo"}, tune_blocks=1)
PRESETS: dict[str, Config] = {
    # after `mae pretrain` (preset demo): the cpu scale's recipe on the demo checkpoint
    "demo": replace(CPU_BASELINE, finetune="outputs/demo/checkpoint-last.pth", progress=True, tensorboard=True,
                    log_every=10),
    "smoke": Config(model="vit_smoke", img_size=32, data="synthetic:64", tune_blocks=1, epochs=1, warmup_epochs=0,
                    batch_size=16, blr=1e-3, drop_path=0.0, num_workers=0, output_dir="outputs/partial_smoke",
                    log_every=1, tensorboard=False, progress=False),
    "mini": Config(model="vit_tiny_patch4_32", img_size=32, data="synthetic:50000", finetune="outputs/mini/checkpoint-last.pth",
                   tune_blocks=1, epochs=50, warmup_epochs=5, batch_size=256, blr=1e-3, drop_path=0.1, num_workers=8,
                   output_dir="outputs/partial_mini", log_every=50),
    "paper_vit_large": replace(_PAPER, output_dir="outputs/partial_vit_large"),
    "paper_vit_large_half_block": replace(_PAPER, tune_blocks=0.5, output_dir="outputs/partial_vit_large_half"),
}
DEFAULT_PRESET = "demo"


def run(cfg: Config) -> dict[str, Any]:
    """Partial fine-tuning through :func:`mae.protocols.finetune.run` with the encoder partly frozen."""
    return finetune.run(cfg, prepare=lambda model: freeze_for_partial(model, cfg.tune_blocks))
