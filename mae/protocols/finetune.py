"""End-to-end fine-tuning of a pre-trained MAE encoder (MAE Sec. 4, Appendix A.2, Table 3).

The recipe (REFERENCE.md): AdamW (0.9, 0.999), weight decay 0.05, effective batch 1024, 5 warm-up
epochs, cosine decay, layer-wise lr decay, drop path, RandAugment (9, 0.5), label smoothing 0.1,
mixup 0.8, cutmix 1.0, random erasing 0.25, global average pooling (``fc_norm``). Two sets of
per-size values, two preset families (:data:`RECIPES`):

- ``paper_vit_{base,large,huge}``: the paper's Appendix Table 9, for the 800-epoch pixel (w/o norm)
  models of Tables 1 and 2: blr 1e-3, layer decay 0.75; drop path 0.1 / 0.1 / 0.2; 100 / 50 / 50 epochs.
- ``release_vit_{base,large,huge}``: the release's FINETUNE.md, for its 1600-epoch norm-pix
  checkpoints (Table 3): ViT-B blr 5e-4, layer decay 0.65, drop path 0.1, 100 epochs; ViT-L 1e-3,
  0.75, 0.2, 50; ViT-H 1e-3, 0.75, 0.3, 50.

Without ``--finetune`` the model starts from random weights (supervised from scratch, same recipe).

This module also holds what every classification protocol shares (datasets, evaluation, the
evaluate-only path); :mod:`mae.protocols.partial` and :mod:`mae.protocols.linprobe` reuse it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from mae.atomic import atomic_write_text
from mae.config import TrainConfig, opt
from mae.engine.checkpoint import resolve_resume
from mae.engine.distributed import all_reduce_mean, is_main_process
from mae.engine.layer_decay import param_groups_layer_decay
from mae.engine.loop import Trainer, TrainHooks, seed_everything
from mae.engine.preemption import ignore_stop_signals
from mae.models.interop import load_classifier, load_pretrained_encoder
from mae.models.vit import ViTClassifier, create_vit

MIXUP_MODES = ("batch", "pair", "elem")


@dataclass
class Config(TrainConfig):
    """Fine-tuning recipe (defaults: the release's ViT-B/16 recipe, FINETUNE.md; preset paper_vit_base is Table 9's)."""

    model: str = opt("vit_base_patch16", "classifier preset (mae.models.vit.PRESETS); the mae_vit_* name of the encoder works too")
    finetune: str | None = opt(None, "pre-trained checkpoint to start from: an MAE pre-training file (ours or the "
                                     "official release) or a timm encoder state_dict; none = random init (from scratch)")
    allow_finetuned: bool = opt(False, "accept a classifier checkpoint as --finetune (intermediate fine-tuning)")
    eval_checkpoint: str | None = opt(None, "only evaluate this trained classifier checkpoint (ours or official) on "
                                            "the val set, then exit")
    nb_classes: int | None = opt(None, "number of classes (default: the dataset's)")
    global_pool: bool = opt(True, "classify the average of the patch tokens after fc_norm (paper); false = the cls token")
    drop_path: float = opt(0.1, "stochastic depth rate (Table 9: ViT-B/L 0.1, H 0.2; FINETUNE.md: B 0.1, L 0.2, H 0.3)")
    layer_decay: float = opt(0.65, "layer-wise lr decay (Table 9: 0.75; FINETUNE.md: ViT-B 0.65, L/H 0.75); 1 = none")
    head_init_std: float = opt(2e-5, "std of the new head's trunc-normal init (official: 2e-5)")
    smoothing: float = opt(0.1, "label smoothing")
    mixup: float = opt(0.8, "mixup alpha (0 = off)")
    cutmix: float = opt(1.0, "cutmix alpha (0 = off)")
    mixup_prob: float = opt(1.0, "probability of applying mixup or cutmix to a batch")
    mixup_switch_prob: float = opt(0.5, "probability of cutmix instead of mixup when both are on")
    mixup_mode: str = opt("batch", "mixup/cutmix parameters per 'batch', 'pair' or 'elem'")
    rand_aug: str | None = opt("rand-m9-mstd0.5-inc1", "timm RandAugment string (none = off)")
    reprob: float = opt(0.25, "random erasing probability")
    remode: str = opt("pixel", "random erasing fill: const | rand | pixel")
    recount: int = opt(1, "random erasing count")
    eval_batch_size: int | None = opt(None, "evaluation batch size (default: --batch_size)")
    # the paper's values for the shared fields (batch 32 x 32 processes = 1024; raise --accum_iter on fewer)
    blr: float = opt(5e-4, "base learning rate: lr = blr * effective batch / 256")
    min_lr: float = opt(1e-6, "lower bound of the cosine schedule")
    warmup_epochs: float = opt(5.0, "linear warm-up epochs")
    epochs: int = opt(100, "fine-tuning epochs")
    batch_size: int = opt(32, "batch size per process (effective = batch_size * accum_iter * world size)")

    def __post_init__(self) -> None:
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError(f"mixup / cutmix alphas must be >= 0, got {self.mixup} / {self.cutmix}")
        if self.mixup_mode not in MIXUP_MODES:
            raise ValueError(f"mixup_mode must be one of {MIXUP_MODES}, got {self.mixup_mode!r}")
        if self.mixup_active and self.batch_size % 2:
            raise ValueError(f"mixup/cutmix needs an even batch_size, got {self.batch_size}")
        if self.nb_classes is not None and self.nb_classes < 1:
            raise ValueError(f"nb_classes must be >= 1, got {self.nb_classes}")

    @property
    def mixup_active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def validate(self) -> None:
        """The shared checks, then this recipe's: the classifier, augmentation, the checkpoints it reads."""
        from mae.config import require, require_checkpoint
        super().validate()
        validate_classifier(self)
        for name in ("mixup_prob", "mixup_switch_prob"):
            require(0.0 <= getattr(self, name) <= 1.0, name, getattr(self, name), "a probability must be in [0, 1]")
        require(self.recount >= 1, "recount", self.recount, "must be >= 1")
        require(0.0 <= self.reprob <= 1.0, "reprob", self.reprob, "a probability must be in [0, 1]")
        require(self.remode in ("const", "rand", "pixel"), "remode", self.remode, "must be one of const, rand, pixel")
        from mae.data.transforms import finetune_transform
        try:  # the transform's own rule for the RandAugment string
            finetune_transform(self.img_size, True, rand_aug=self.rand_aug, re_prob=self.reprob, re_mode=self.remode,
                               re_count=self.recount)
        except ValueError as e:
            raise ValueError(f"--rand_aug {self.rand_aug}: {e}") from None
        require_checkpoint("finetune", self.finetune)
        require_checkpoint("eval_checkpoint", self.eval_checkpoint)


def validate_classifier(cfg: Any) -> None:
    """``--model`` names a classifier preset that fits ``--img_size``; ``--head_init_std``, ``--eval_batch_size``
    are in range (the checks every classification protocol shares)."""
    from mae.config import require
    from mae.models.vit import vit_config
    try:
        vit_config(cfg.model, img_size=cfg.img_size)
    except ValueError as e:
        raise ValueError(f"--model {cfg.model}: {e}") from None
    require(cfg.head_init_std >= 0, "head_init_std", cfg.head_init_std, "must be >= 0")
    require(cfg.eval_batch_size is None or cfg.eval_batch_size >= 1, "eval_batch_size", cfg.eval_batch_size,
            "must be >= 1 (or none: --batch_size)")


_PAPER = Config(recipe_batch=1024, num_workers=10, data="/path/to/imagenet", img_size=224)  # --data is required
PAPER_MODELS = {"vit_base": "vit_base_patch16", "vit_large": "vit_large_patch16", "vit_huge": "vit_huge_patch14"}
#: per-size values of the two fine-tuning recipes (REFERENCE.md, fine-tuning); the rest is shared
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    # the paper's Appendix Table 9: the Table 1 / Table 2 models (800 epochs, pixels w/o norm)
    "paper": {"vit_base": dict(blr=1e-3, layer_decay=0.75, drop_path=0.1, epochs=100),
              "vit_large": dict(blr=1e-3, layer_decay=0.75, drop_path=0.1, epochs=50),
              "vit_huge": dict(blr=1e-3, layer_decay=0.75, drop_path=0.2, epochs=50)},
    # the release's FINETUNE.md: its 1600-epoch norm-pix checkpoints (Table 3, Fig. 8)
    "release": {"vit_base": dict(blr=5e-4, layer_decay=0.65, drop_path=0.1, epochs=100),
                "vit_large": dict(blr=1e-3, layer_decay=0.75, drop_path=0.2, epochs=50),
                "vit_huge": dict(blr=1e-3, layer_decay=0.75, drop_path=0.3, epochs=50)},
}
#: the cpu scale's fine-tuning (reproduce/scales.py uses it as it is): lighter regularisation than the paper's, as
#: mixup / cutmix / erasing and RandAugment slow a minutes-long run down (on 16 px digits RandAugment m9 cut 86% to
#: 76%); 15 epochs; quiet; no --finetune (the grid gives each cell its pre-training's checkpoint)
CPU_BASELINE = Config(model="vit_micro_patch4_32", img_size=16, data="digits", epochs=15, warmup_epochs=2,
                      batch_size=64, blr=5e-3, layer_decay=0.75, drop_path=0.1, mixup=0.0, cutmix=0.0, reprob=0.0,
                      rand_aug=None, num_workers=0, progress=False, tensorboard=False, log_every=1000,
                      output_dir="outputs/finetune_demo")
PRESETS: dict[str, Config] = {
    # after `mae pretrain` (preset demo): the cpu scale's recipe on the demo checkpoint, minutes on a CPU
    "demo": replace(CPU_BASELINE, finetune="outputs/demo/checkpoint-last.pth", progress=True, tensorboard=True,
                    log_every=10),
    # seconds on a CPU: tests and smoke grids (random init unless --finetune is given)
    "smoke": Config(model="vit_smoke", img_size=32, data="synthetic:64", epochs=1, warmup_epochs=0, batch_size=16,
                    blr=1e-3, layer_decay=0.75, num_workers=0, output_dir="outputs/finetune_smoke", log_every=1,
                    tensorboard=False, progress=False),
    # one GPU, minutes: after the `mini` pre-training
    "mini": Config(model="vit_tiny_patch4_32", img_size=32, data="synthetic:50000", finetune="outputs/mini/checkpoint-last.pth",
                   epochs=50, warmup_epochs=5, batch_size=256, blr=1e-3, layer_decay=0.75, drop_path=0.1,
                   num_workers=8, output_dir="outputs/finetune_mini", log_every=50),
    # the paper's (Table 9) and the release's (FINETUNE.md) recipes: paper_vit_base, ..., release_vit_huge
    **{f"{recipe}_{size}": replace(_PAPER, model=PAPER_MODELS[size], **values, output_dir=f"outputs/finetune_{size}"
                                   + ("" if recipe == "paper" else f"_{recipe}"))
       for recipe, per_size in RECIPES.items() for size, values in per_size.items()},
}
DEFAULT_PRESET = "demo"


# --------------------------------------------------------------------------- shared pieces
def log(msg: str) -> None:
    """Print on the main process only."""
    if is_main_process():
        print(msg, flush=True)


def classification_data(cfg: TrainConfig, train_transform: Callable | None, eval_tf: Callable | None = None,
                        nb_classes: int | None = None) -> tuple[Dataset, Dataset, int]:
    """(train set, val set, number of classes); val uses the eval transform (resize + center crop)."""
    from mae.data import build_dataset, eval_transform, num_classes_of

    eval_tf = eval_tf or eval_transform(cfg.img_size)
    train_set = build_dataset(cfg.data, split="train", transform=train_transform, img_size=cfg.img_size, seed=cfg.seed)
    val_set = build_dataset(cfg.val_data or cfg.data, split="val", transform=eval_tf, img_size=cfg.img_size, seed=cfg.seed)
    c_train, c_val = getattr(train_set, "classes", None), getattr(val_set, "classes", None)
    if c_train is not None and c_val is not None and list(c_train) != list(c_val):
        only_t, only_v = sorted(set(c_train) - set(c_val)), sorted(set(c_val) - set(c_train))
        raise ValueError(f"train and val class lists differ (labels would not match): only in train {only_t[:5]}, "
                         f"only in val {only_v[:5]} ({len(c_train)} vs {len(c_val)} classes)")
    n_data = num_classes_of(train_set)
    n = nb_classes if nb_classes is not None else n_data
    if n < n_data:
        raise ValueError(f"nb_classes={n} is smaller than the {n_data} classes of {cfg.data!r}")
    return train_set, val_set, n


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, num_workers: int = 0) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over ``dataset``; sharded over processes if distributed."""
    dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if dist_on else 1
    rank = torch.distributed.get_rank() if dist_on else 0
    shard = Subset(dataset, range(rank, len(dataset), world)) if world > 1 else dataset
    device = next(model.parameters()).device
    # workers ignore SIGTERM / SIGUSR1: a pre-emption during evaluation is the training loop's to handle
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", worker_init_fn=ignore_stop_signals)
    was_training = model.training
    model.eval()
    n = top1 = top5 = loss_sum = 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        top1 += hit[:, 0].sum().item()
        top5 += hit.any(dim=1).sum().item()
        n += len(y)
    model.train(was_training)
    if world > 1:
        n, top1, top5, loss_sum = (all_reduce_mean(v, device) * world for v in (n, top1, top5, loss_sum))
    if n == 0:
        raise ValueError("the evaluation set is empty")
    return {"acc1": 100.0 * top1 / n, "acc5": 100.0 * top5 / n, "val_loss": loss_sum / n}


def evaluate_only(cfg: TrainConfig, model: ViTClassifier, val_set: Dataset) -> dict[str, Any]:
    """Load ``cfg.eval_checkpoint`` strictly into ``model`` and evaluate it (official ``--eval``)."""
    from mae.engine.distributed import init_distributed
    from mae.engine.loop import resolve_device

    report = load_classifier(model, cfg.eval_checkpoint)
    log(f"[eval] {report.summary()}")
    device = resolve_device(cfg.device)  # this process's GPU; several processes: each evaluates a shard
    init_distributed(device.type)
    model.to(device)
    metrics = evaluate(model, val_set, getattr(cfg, "eval_batch_size", None) or cfg.batch_size, cfg.num_workers)
    log(f"[eval] {cfg.eval_checkpoint}: acc1 {metrics['acc1']:.2f}  acc5 {metrics['acc5']:.2f}")
    result = {"history": [], "final": metrics, "best": {}, "finished": True, "eval_checkpoint": cfg.eval_checkpoint}
    if is_main_process():
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg.run_dir / "metrics.json", json.dumps(result, indent=1))
    return result


def will_resume(cfg: TrainConfig) -> bool:
    """True when the Trainer is going to load a resume checkpoint (then --finetune is not read)."""
    return resolve_resume(cfg.resume, cfg.run_dir) is not None


def start_from_pretrained(cfg: Any, model: ViTClassifier, head_init_std: float, when_resuming: bool = False) -> None:
    """Load ``cfg.finetune`` into the classifier (unless resuming, or ``when_resuming``: the resume checkpoint
    does not hold the encoder); says what it did."""
    if not cfg.finetune or (will_resume(cfg) and not when_resuming):
        if not cfg.finetune:
            log(f"[init] no --finetune checkpoint: {cfg.model} starts from random weights")
        return
    if not os.path.exists(cfg.finetune):
        raise FileNotFoundError(f"--finetune {cfg.finetune}: no such file (pre-train first, e.g. `mae pretrain` "
                                "for the demo checkpoint, or give the path of a released MAE checkpoint)")
    report = load_pretrained_encoder(model, cfg.finetune, allow_finetuned=getattr(cfg, "allow_finetuned", False),
                                     head_init_std=head_init_std)
    log(f"[init] {report.summary()}")


def build_model(cfg: Config, nb_classes: int) -> ViTClassifier:
    """The classifier of ``cfg.model`` at ``cfg.img_size``, initialised from ``cfg.finetune`` if given."""
    model = create_vit(cfg.model, img_size=cfg.img_size, num_classes=nb_classes, global_pool=cfg.global_pool,
                       drop_path=cfg.drop_path)
    if not cfg.eval_checkpoint:
        start_from_pretrained(cfg, model, cfg.head_init_std)
    return model


def mixup_and_criterion(cfg: Config, nb_classes: int) -> tuple[Callable | None, nn.Module]:
    """timm Mixup/CutMix (label smoothing inside) + SoftTargetCrossEntropy, else (smoothed) cross-entropy."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if cfg.mixup_active:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                      switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
                      num_classes=nb_classes)
        return (lambda batch: mixup(batch[0], batch[1])), SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return None, nn.CrossEntropyLoss()


def train_transform(cfg: Config) -> Callable:
    from mae.data import finetune_transform

    return finetune_transform(cfg.img_size, True, rand_aug=cfg.rand_aug, re_prob=cfg.reprob, re_mode=cfg.remode,
                              re_count=cfg.recount)


# ----------------------------------------------------------------------------------- run
def given_data(datasets: tuple[Dataset, Dataset, int], cfg: TrainConfig, train_tf: Callable | None,
               nb_classes: int | None = None) -> tuple[Dataset, Dataset, int]:
    """Datasets built by the caller (e.g. iNat/Places lists), with this recipe's transforms set on them."""
    from mae.data import eval_transform

    train_set, val_set, n = datasets
    if nb_classes is not None and nb_classes != n:
        raise ValueError(f"nb_classes={nb_classes} but the given datasets have {n} classes")
    if train_tf is not None:
        train_set.transform = train_tf
    val_set.transform = eval_transform(cfg.img_size)
    return train_set, val_set, n


def run(cfg: Config, prepare: Callable[[ViTClassifier], Any] | None = None,
        datasets: tuple[Dataset, Dataset, int] | None = None) -> dict[str, Any]:
    """Fine-tune (or, with ``eval_checkpoint``, only evaluate); returns the Trainer's result.

    ``prepare(model)`` runs after the model is built and initialised (partial fine-tuning freezes
    parameters there). ``datasets=(train, val, num_classes)`` replaces the ones ``cfg.data`` names
    (their ``transform`` is set to the recipe's). Checkpoints: checkpoint-last.pth (resume),
    checkpoint-best.pth (best acc1), both with ``model`` in the official fine-tune key layout.
    """
    def data(train_tf: Callable | None) -> tuple[Dataset, Dataset, int]:
        if datasets is not None:
            return given_data(datasets, cfg, train_tf, cfg.nb_classes)
        return classification_data(cfg, train_tf, nb_classes=cfg.nb_classes)

    seed_everything(cfg.seed)
    if cfg.eval_checkpoint:
        _, val_set, nb = data(None)
        model = build_model(cfg, nb)
        if prepare is not None:
            prepare(model)
        return evaluate_only(cfg, model, val_set)
    train_set, val_set, nb = data(train_transform(cfg))
    model = build_model(cfg, nb)
    if prepare is not None:
        prepare(model)
    mixup_fn, criterion = mixup_and_criterion(cfg, nb)

    def step(m: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = batch
        return criterion(m(x), y), {}

    eval_bs = cfg.eval_batch_size or cfg.batch_size
    hooks = TrainHooks(step=step, prepare_batch=mixup_fn,
                       evaluate=lambda t, epoch: evaluate(t.model_without_ddp, val_set, eval_bs, cfg.num_workers))
    trainer = Trainer(cfg, model, train_set, hooks, best_metric="acc1",
                      param_groups=param_groups_layer_decay(model, cfg.weight_decay, cfg.layer_decay))
    return trainer.fit()
