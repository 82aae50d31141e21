"""Linear probing of the frozen pre-trained encoder (MAE Sec. 4, Appendix A.3; Table 1 "lin").

Recipe (REFERENCE.md): LARS, momentum 0.9, base lr 0.1, weight decay 0, effective batch 16384
(512 x 32 processes), 10 warm-up epochs, 90 epochs, RandomResizedCrop + flip (the release's own crop,
``--crop release``: one draw of area and aspect clamped to the image), the cls token after
the encoder's final norm, and a BatchNorm1d without affine (eps 1e-6) before the linear head.
Only the head trains: every encoder parameter has ``requires_grad=False`` and the encoder stays in
eval mode, so nothing in it drifts (the BatchNorm of the head does use batch statistics).

``--cache_features`` is a fast path: the encoder runs once, the head trains on stored features
(mae/protocols/features.py says when that equals this full path, and when not).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mae.config import TrainConfig, opt
from mae.engine.checkpoint import model_config_record, save_checkpoint
from mae.engine.lars import lars_factory
from mae.engine.distributed import init_distributed, is_main_process
from mae.engine.loop import Trainer, TrainHooks, resolve_amp, resolve_device, seed_everything
from mae.engine.optim import param_groups_weight_decay
from mae.models.vit import ViTClassifier, create_vit, init_head
from mae.protocols.features import FeatureHead, extract_features
from mae.protocols.finetune import classification_data, evaluate, evaluate_only, start_from_pretrained

CLASSIFIER_FILE = "classifier.pth"


@dataclass
class Config(TrainConfig):
    """Linear-probe recipe (defaults: the paper's ViT-L/16 recipe)."""

    model: str = opt("vit_large_patch16", "classifier preset (mae.models.vit.PRESETS); the mae_vit_* name works too")
    finetune: str | None = opt(None, "pre-trained checkpoint to probe (MAE pre-training file, ours or official, or a "
                                     "timm encoder); none = a randomly initialised encoder (a baseline)")
    eval_checkpoint: str | None = opt(None, "only evaluate this trained linear-probe checkpoint on the val set, then exit")
    nb_classes: int | None = opt(None, "number of classes (default: the dataset's)")
    global_pool: bool = opt(False, "probe the average of the patch tokens instead of the cls token (paper: cls token)")
    head_init_std: float = opt(0.01, "std of the head's trunc-normal init (official: 0.01)")
    augment: bool = opt(True, "train with RandomResizedCrop + flip (paper); false = the eval transform (deterministic)")
    crop: str = opt("release", "training crop with --augment: release (the official util/crop.RandomResizedCrop: one "
                               "draw of area and aspect, clamped to the image) | torchvision (10 tries, centre "
                               "fallback; the small presets)")
    cache_features: bool = opt(False, "fast path: run the frozen encoder once and train the head on stored "
                                      "features (no augmentation; see mae/protocols/features.py)")
    momentum: float = opt(0.9, "LARS momentum")
    trust_coefficient: float = opt(0.001, "LARS trust coefficient")
    eval_batch_size: int | None = opt(None, "evaluation / feature-extraction batch size (default: --batch_size)")
    # the paper's values for the shared fields (batch 512 x 32 processes = 16384)
    blr: float = opt(0.1, "base learning rate: lr = blr * effective batch / 256")
    weight_decay: float = opt(0.0, "weight decay (paper: 0)")
    min_lr: float = opt(0.0, "lower bound of the cosine schedule")
    warmup_epochs: float = opt(10.0, "linear warm-up epochs")
    epochs: int = opt(90, "linear-probe epochs")
    batch_size: int = opt(512, "batch size per process (effective = batch_size * accum_iter * world size)")

    def __post_init__(self) -> None:
        if self.momentum < 0 or self.trust_coefficient <= 0:
            raise ValueError(f"LARS needs momentum >= 0 and trust_coefficient > 0, got {self.momentum}, "
                             f"{self.trust_coefficient}")
        if self.nb_classes is not None and self.nb_classes < 1:
            raise ValueError(f"nb_classes must be >= 1, got {self.nb_classes}")
        from mae.data.transforms import LINPROBE_CROPS
        if self.crop not in LINPROBE_CROPS:
            raise ValueError(f"crop must be one of {', '.join(LINPROBE_CROPS)}, got {self.crop!r}")

    def validate(self) -> None:
        """The shared checks, then this recipe's: the classifier and the checkpoints it reads."""
        from mae.config import require_checkpoint
        from mae.protocols.finetune import validate_classifier
        super().validate()
        validate_classifier(self)
        require_checkpoint("finetune", self.finetune)
        require_checkpoint("eval_checkpoint", self.eval_checkpoint)


_PAPER = Config(recipe_batch=16384, num_workers=10, data="/path/to/imagenet", img_size=224)  # --data is required
# LARS moves each weight by lr * 0.001 of its norm per step: the paper's lr is 6.4 (blr 0.1 at batch
# 16384) over ~7k steps; the small presets take the same lr.
# (the small presets keep torchvision's crop, with which they were measured)
#: the cpu scale's probe (reproduce/scales.py uses it as it is): cls token, 90 epochs on cached features (a minute
#: on a CPU), quiet; no --finetune (the grid gives each cell its pre-training's checkpoint)
CPU_BASELINE = Config(model="vit_micro_patch4_32", img_size=16, data="digits", cache_features=True, augment=False,
                      epochs=90, warmup_epochs=10, batch_size=256, blr=6.4, num_workers=0, crop="torchvision",
                      progress=False, tensorboard=False, log_every=1000, output_dir="outputs/linprobe_demo")
PRESETS: dict[str, Config] = {
    # after `mae pretrain` (preset demo): the cpu scale's probe of the demo checkpoint (`--finetune ""` probes the
    # untrained encoder)
    "demo": replace(CPU_BASELINE, finetune="outputs/demo/checkpoint-last.pth", progress=True, tensorboard=True,
                    log_every=20),
    "smoke": Config(model="vit_smoke", img_size=32, data="synthetic:64", epochs=1, warmup_epochs=0, batch_size=16,
                    num_workers=0, output_dir="outputs/linprobe_smoke", log_every=1, tensorboard=False, progress=False,
                    crop="torchvision"),
    "mini": Config(model="vit_tiny_patch4_32", img_size=32, data="synthetic:50000", finetune="outputs/mini/checkpoint-last.pth",
                   epochs=90, warmup_epochs=10, batch_size=1024, blr=1.6, num_workers=8,
                   output_dir="outputs/linprobe_mini", log_every=50, crop="torchvision"),
    "paper_vit_base": replace(_PAPER, model="vit_base_patch16", output_dir="outputs/linprobe_vit_base"),
    "paper_vit_large": replace(_PAPER, model="vit_large_patch16", output_dir="outputs/linprobe_vit_large"),
    "paper_vit_huge": replace(_PAPER, model="vit_huge_patch14", output_dir="outputs/linprobe_vit_huge"),
}
DEFAULT_PRESET = "demo"


def build_model(cfg: Config, nb_classes: int) -> ViTClassifier:
    """Classifier with the BatchNorm + Linear head, encoder loaded from ``cfg.finetune`` and frozen."""
    model = create_vit(cfg.model, img_size=cfg.img_size, num_classes=nb_classes, global_pool=cfg.global_pool,
                       drop_path=0.0, head_type="bn_linear")
    if not cfg.eval_checkpoint:
        # the cached path's checkpoints hold the head only: a resume needs the encoder from --finetune too
        start_from_pretrained(cfg, model, cfg.head_init_std, when_resuming=cfg.cache_features)
        init_head(model, cfg.head_init_std)  # also with a random encoder: the same head init either way
    model.freeze_except(lambda n: n.startswith("head."))
    return model


def _step(m: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    x, y = batch
    return F.cross_entropy(m(x), y), {}


def run(cfg: Config) -> dict[str, Any]:
    """Linear-probe (or, with ``eval_checkpoint``, only evaluate); returns the Trainer's result."""
    from mae.data import eval_transform, linprobe_transform

    seed_everything(cfg.seed)
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    if cfg.eval_checkpoint:
        _, val_set, nb = classification_data(cfg, None, nb_classes=cfg.nb_classes)
        return evaluate_only(cfg, build_model(cfg, nb), val_set)
    if cfg.cache_features and cfg.augment:
        warnings.warn("--cache_features trains on one stored center-crop view per image: augmentation is off in this "
                      "path (pass --augment false to say so; see mae/protocols/features.py)", stacklevel=2)
    augment = cfg.augment and not cfg.cache_features
    train_tf = linprobe_transform(cfg.img_size, True, crop=cfg.crop) if augment else eval_transform(cfg.img_size)
    train_set, val_set, nb = classification_data(cfg, train_tf, nb_classes=cfg.nb_classes)
    model = build_model(cfg, nb)
    lars = lars_factory(cfg.momentum, cfg.trust_coefficient)
    if not cfg.cache_features:
        hooks = TrainHooks(step=_step, make_optimizer=lars, evaluate=lambda t, epoch: evaluate(
            t.model_without_ddp, val_set, eval_bs, cfg.num_workers))
        trainer = Trainer(cfg, model, train_set, hooks, best_metric="acc1",
                          param_groups=param_groups_weight_decay(model, cfg.weight_decay))
        return trainer.fit()

    device = resolve_device(cfg.device)  # this process's GPU; several processes: each extracts a shard
    amp = resolve_amp(cfg.amp, device)
    init_distributed(device.type)
    train_feats = extract_features(model, train_set, eval_bs, cfg.num_workers, device, amp)
    val_feats = extract_features(model, val_set, eval_bs, cfg.num_workers, device, amp)
    head = FeatureHead(model.head)
    hooks = TrainHooks(step=_step, make_optimizer=lars,
                       evaluate=lambda t, epoch: evaluate(t.model_without_ddp, val_feats, eval_bs))
    trainer = Trainer(cfg, head, train_feats, hooks, best_metric="acc1",
                      param_groups=param_groups_weight_decay(head, cfg.weight_decay))
    result = trainer.fit()
    if result.get("finished") and is_main_process():
        # the Trainer's checkpoints hold the head only; this file is the whole classifier (official layout)
        save_checkpoint({"model": model.state_dict(), "epoch": cfg.epochs - 1, "final": result["final"],
                         **model_config_record(model)},
                        cfg.run_dir / CLASSIFIER_FILE)
    return result
