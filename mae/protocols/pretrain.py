"""MAE pre-training (Sec. 3, Appendix A.1): recipe presets per scale and ``run(cfg)``.

The paper's recipe: AdamW (0.9, 0.95), weight decay 0.05, base lr 1.5e-4 scaled by batch/256,
effective batch 4096, 40 warm-up epochs, cosine decay, RandomResizedCrop(0.2-1) + flip, mask ratio
0.75, decoder 8 x 512. Every Table 1 switch is a field here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import torch

from mae.config import TrainConfig, opt
from mae.engine.loop import Trainer, TrainHooks, seed_everything
from mae.engine.optim import param_groups_weight_decay
from mae.models.loader import load_mae_weights
from mae.models.mae import MaskedAutoencoderViT, create_mae, recipe_overrides


@dataclass
class Config(TrainConfig):
    """Pre-training recipe (defaults: the paper's ViT-L, Table 1 baseline)."""

    model: str = opt("mae_vit_large_patch16", "MAE preset (mae.models.PRESETS)")
    mask_ratio: float = opt(0.75, "fraction of patches removed (Fig. 5)")
    mask_strategy: str = opt("random", "random | block | grid (Table 1f)")
    target: str = opt("pixel", "reconstruction target: pixel | norm_pixel | pca | token (Table 1d)")
    norm_pix_loss: bool = opt(False, "official flag: same as --target norm_pixel")
    loss_on: str = opt("masked", "compute the loss on masked patches only, or on all (Sec. 3)")
    encoder_mask_token: bool = opt(False, "encoder w/ [M]: mask tokens inside the encoder (Table 1c)")
    decoder_depth: int | None = opt(None, "override the preset's decoder depth (Table 1a)")
    decoder_embed_dim: int | None = opt(None, "override the preset's decoder width (Table 1b)")
    decoder_num_heads: int | None = opt(None, "override the preset's decoder heads")
    pca_components: int = opt(96, "PCA target: coefficients kept (96 for 16x16x3 patches)")
    pca_fit_images: int = opt(512, "PCA target: images used to fit the components")
    tokenizer: str | None = opt(None, "token target: path to a tokenizer checkpoint (`mae tokenizer` writes one)")
    augmentation: str = opt("crop_rand", "none | crop_fixed | crop_rand | crop_rand_jitter (Table 1e)")
    decay_tokens: bool = opt(False, "weight decay on cls/mask tokens too: the official release's param groups (timm "
                                    "add_weight_decay, no skip list: only 1-d params and biases exempt), the "
                                    "paper presets' rule; false = tokens exempt as well (the small presets)")
    input_path: str = opt("pil", "pil: workers decode and augment with PIL and send uint8 crops, normalised on the "
                                 "device (the official pipeline's result); gpu_decode: workers read JPEG bytes and "
                                 "draw crops, the device decodes (nvJPEG), crops, resizes, flips; worker_decode: "
                                 "workers decode and crop, the device resizes and flips. The two last: image "
                                 "folders and crop_rand only (bench/README.md compares the three); batched: an "
                                 "embedded set (digits, synthetic, photos) held as one uint8 tensor, cropped, resized "
                                 "and flipped a batch at a time with per-sample hashed parameters (another random "
                                 "stream than pil's; none | crop_fixed | crop_rand; mae/data/batched.py)")
    init: str | None = opt(None, "start from the weights of this checkpoint (not a resume)")
    save_init: bool = opt(False, "write checkpoint-init.pth: the exact weights training starts from (the readouts' "
                                 "initialisation control), before the first step of a fresh run")
    vis_every: int = opt(1, "save a reconstruction figure every N epochs (0 = never)")
    vis_images: int = opt(4, "images in the reconstruction figure")
    # representation monitor (mae.engine.monitor): off unless monitor_every > 0
    monitor_every: int = opt(0, "measure kNN top-1 of the cls token and of the mean patch token every N epochs "
                                "(and after the last); 0 = off")
    monitor_data: str | None = opt(None, "labelled dataset of the monitor: its train split is the kNN bank, its val "
                                         "split the queries (default: --data)")
    monitor_bank: int = opt(1000, "monitor: bank images (a fixed random subsample of the train split); cost: "
                                  "bench/README.md")
    monitor_queries: int = opt(500, "monitor: query images (a fixed random subsample of the val split)")
    monitor_k: int = opt(20, "monitor: neighbours that vote (DINO's k)")
    monitor_temperature: float = opt(0.07, "monitor: temperature of the exp(similarity / T) vote weights (DINO's T)")
    monitor_linear: bool = opt(False, "monitor: also a ridge-regression linear probe on the bank, scored on the queries")
    # paper values for the shared fields
    blr: float = opt(1.5e-4, "base learning rate: lr = blr * effective batch / 256")
    betas: tuple[float, float] = opt((0.9, 0.95), "AdamW betas")
    warmup_epochs: float = opt(40.0, "linear warm-up epochs")
    epochs: int = opt(800, "pre-training epochs")

    # config files of older runs: --gpu_decode became --input_path gpu_decode
    RENAMED_FIELDS: ClassVar[dict[str, Callable[[Any], dict[str, Any]]]] = {
        "gpu_decode": lambda on: {"input_path": "gpu_decode"} if on else {}}

    def model_overrides(self) -> dict[str, Any]:
        """The MAEConfig overrides of this recipe (:func:`mae.models.mae.recipe_overrides`)."""
        return recipe_overrides({f.name: getattr(self, f.name) for f in fields(self)})

    def validate(self) -> None:
        """The shared checks, then this recipe's: mask ratio, switches, the model it builds, the files it reads."""
        from mae.config import require, require_checkpoint, require_dataset
        from mae.data.transforms import PRETRAIN_AUGMENTATIONS
        from mae.masking import STRATEGIES
        from mae.models.mae import mae_config
        from mae.targets import TARGETS
        super().validate()
        require(0.0 <= self.mask_ratio < 1.0, "mask_ratio", self.mask_ratio,
                "the fraction of patches removed must be in [0, 1)")
        for name, valid in (("mask_strategy", STRATEGIES), ("target", TARGETS), ("loss_on", ("masked", "all")),
                            ("augmentation", tuple(PRETRAIN_AUGMENTATIONS)), ("input_path", INPUT_PATHS)):
            require(getattr(self, name) in valid, name, getattr(self, name), f"must be one of {', '.join(valid)}")
        for name in ("decoder_depth", "decoder_embed_dim", "decoder_num_heads"):
            v = getattr(self, name)
            require(v is None or v >= 1, name, v, "must be >= 1 (or none: the preset's)")
        for name in ("pca_components", "pca_fit_images", "vis_images", "monitor_bank", "monitor_queries", "monitor_k"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        for name in ("vis_every", "monitor_every"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0 (0 = never)")
        require(self.monitor_temperature > 0, "monitor_temperature", self.monitor_temperature, "must be > 0")
        try:
            arch = mae_config(self.model, **self.model_overrides())
        except ValueError as e:
            raise ValueError(f"--model {self.model}: {e}") from None
        patch_dim = arch.patch_size ** 2 * arch.in_chans
        if arch.target == "pca":
            require(self.pca_components <= patch_dim, "pca_components", self.pca_components,
                    f"exceeds the patch dimension {patch_dim} of {self.model}")
        if arch.target == "token":
            require(bool(self.tokenizer), "target", "token", "needs --tokenizer PATH (train one with `mae tokenizer`)")
            require_checkpoint("tokenizer", self.tokenizer)
        require_checkpoint("init", self.init)
        require_dataset("monitor_data", self.monitor_data)


# ImageNet-1K is required: the placeholder path fails with a clear error until --data is given.
# decay_tokens: the release's main_pretrain.py decays cls_token and mask_token (REFERENCE.md, pre-training).
# save_every=20: a numbered checkpoint every 20 epochs and after the last, as the release's main_pretrain.py
# (checkpoint-last.pth, the resume state, is still written every epoch)
_PAPER = Config(recipe_batch=4096, batch_size=64, accum_iter=1, weight_decay=0.05, num_workers=10, data="/path/to/imagenet",
                img_size=224, decay_tokens=True, save_every=20)
#: the cpu scale's baseline pre-training (reproduce/scales.py uses it as it is; the measurements that chose it are
#: there): mae_vit_micro_patch4_32 at 16 px on scikit-learn's digits, decoder 8 x 64, 40 epochs, batch 128, blr
#: 1.5e-3, 4 warm-up epochs, pixel target w/o norm; quiet (no progress bar, TensorBoard or figures), the kNN
#: monitor every 10 epochs (RNG-neutral)
CPU_BASELINE = Config(model="mae_vit_micro_patch4_32", img_size=16, data="digits", epochs=40, batch_size=128,
                      blr=1.5e-3, warmup_epochs=4, target="pixel", decoder_depth=8, decoder_embed_dim=64,
                      num_workers=0, progress=False, tensorboard=False, log_every=1000, save_every=1000, vis_every=0,
                      monitor_every=10, output_dir="outputs/demo")
PRESETS: dict[str, Config] = {
    # README main job: the cpu scale's baseline recipe (measured there, seed 0: the probe reads 91.9% after it vs
    # 88.9% for its own starting weights), about two minutes on a CPU, shown as it runs: progress bar, TensorBoard,
    # the kNN monitor every 5 epochs, checkpoints every epoch, reconstruction figures every 10, checkpoint-init.pth
    "demo": replace(CPU_BASELINE, progress=True, tensorboard=True, log_every=5, save_every=1, vis_every=10,
                    monitor_every=5, save_init=True),
    # seconds on a CPU: tests and smoke grids
    "smoke": Config(model="mae_vit_smoke", img_size=32, data="synthetic:64", epochs=1, batch_size=16,
                    blr=1.5e-3, warmup_epochs=0, num_workers=0, vis_every=0, output_dir="outputs/smoke",
                    log_every=1, tensorboard=False),
    # one GPU, minutes: a small ViT on a small labelled image set
    "mini": Config(model="mae_vit_tiny_patch4_32", img_size=32, data="synthetic:50000", epochs=100,
                   batch_size=256, blr=1.5e-4, warmup_epochs=10, num_workers=8, vis_every=20,
                   output_dir="outputs/mini", log_every=50),
    # the paper's recipes (effective batch 4096 = 64 per GPU x 64 GPUs; on fewer GPUs raise --accum_iter)
    "paper_vit_base": replace(_PAPER, model="mae_vit_base_patch16", output_dir="outputs/pretrain_vit_base"),
    "paper_vit_large": replace(_PAPER, model="mae_vit_large_patch16", output_dir="outputs/pretrain_vit_large"),
    "paper_vit_huge": replace(_PAPER, model="mae_vit_huge_patch14", output_dir="outputs/pretrain_vit_huge"),
    # Table 3 / the released checkpoints: 1600 epochs with the per-patch normalised pixel target
    **{f"paper_vit_{size}_1600ep": replace(_PAPER, model=f"mae_vit_{size}_patch{patch}", epochs=1600,
                                           target="norm_pixel", output_dir=f"outputs/pretrain_vit_{size}_1600ep")
       for size, patch in (("base", 16), ("large", 16), ("huge", 14))},
}
DEFAULT_PRESET = "demo"


def build_model(cfg: Config) -> MaskedAutoencoderViT:
    tokenizer = None
    target = cfg.model_overrides()["target"]
    if target == "token":
        if not cfg.tokenizer:
            raise ValueError("--target token needs --tokenizer PATH (train one with `mae tokenizer`)")
        from mae.tokenizer import load_tokenizer
        tokenizer = load_tokenizer(cfg.tokenizer)
    model = create_mae(cfg.model, tokenizer=tokenizer, **cfg.model_overrides())
    if cfg.init:  # any format (official, Hugging Face, mmpretrain), as long as it holds the decoder too
        load_mae_weights(model, cfg.init)
    return model


def fit_pca_target(model: MaskedAutoencoderViT, dataset: torch.utils.data.Dataset, n_images: int) -> None:
    """Fit the PCA target's components on patches of the first ``n_images`` training images (Table 1d)."""
    from mae.targets import PCATarget, fit_pca
    assert isinstance(model.target, PCATarget)
    k = model.target.out_dim
    if k > model.patch_dim:
        raise ValueError(f"--pca_components {k} exceeds the patch dimension {model.patch_dim}")
    n = min(n_images, len(dataset))
    imgs = torch.stack([dataset[i][0] for i in range(n)])
    comps, mean = fit_pca(model.patchify(imgs), k)
    model.target.components.copy_(comps)
    model.target.mean.copy_(mean)


INPUT_PATHS = ("pil", "gpu_decode", "worker_decode", "batched")
INIT_CHECKPOINT = "checkpoint-init.pth"


def gpu_input_hooks(cfg: Config) -> tuple[Any, Any, Any]:
    """(dataset of encoded JPEGs, collate_fn, batch decoder) for ``--input_path gpu_decode|worker_decode``."""
    import os
    from pathlib import Path

    from mae.data import DataError
    from mae.engine.gpu_input import trainer_hooks
    from mae.engine.loop import resolve_device

    root = Path(cfg.data or "")
    if not cfg.data or not root.is_dir():
        raise DataError(f"--input_path {cfg.input_path} needs an image folder as --data, got {cfg.data!r}")
    if (root / "train").is_dir():
        root = root / "train"
    device = resolve_device(cfg.device)  # this process's GPU (mae.engine.distributed.local_device)
    return trainer_hooks(root, cfg.img_size, device, cfg.augmentation,
                         decode_on="device" if cfg.input_path == "gpu_decode" else "worker")


def run(cfg: Config) -> dict[str, Any]:
    """Pre-train; returns the Trainer's result (history, final epoch record)."""
    from mae.data import NormalizeBatch, build_dataset, eval_transform, pretrain_transform
    from mae.viz import reconstruct, save_figure

    if cfg.input_path not in INPUT_PATHS:
        raise ValueError(f"--input_path must be one of {', '.join(INPUT_PATHS)}, got {cfg.input_path!r}")
    seed_everything(cfg.seed)
    collate_fn = None
    if cfg.input_path == "batched":  # an embedded set as one uint8 tensor, augmented per batch (mae/data/batched.py)
        from mae.data.batched import batched_embedded_set, collate_batched
        train_set = batched_embedded_set(cfg.data, split="train", img_size=cfg.img_size, seed=cfg.seed,
                                         augmentation=cfg.augmentation)
        collate_fn, batch_transform = collate_batched, NormalizeBatch()
    elif cfg.input_path != "pil":
        train_set, collate_fn, batch_transform = gpu_input_hooks(cfg)
    else:  # uint8 crops from the workers, ToTensor + Normalize on the device (bitwise the same values)
        train_set = build_dataset(cfg.data, split="train", img_size=cfg.img_size, seed=cfg.seed,
                                  transform=pretrain_transform(cfg.augmentation, cfg.img_size, normalize=False))
        batch_transform = NormalizeBatch()
    model = build_model(cfg)
    vis_set = build_dataset(cfg.data, split="train", transform=eval_transform(cfg.img_size),
                            img_size=cfg.img_size, seed=cfg.seed)
    from mae.engine.checkpoint import resolve_resume
    if model.config.target == "pca" and not cfg.init and resolve_resume(cfg.resume, cfg.run_dir) is None:
        fit_pca_target(model, vis_set, cfg.pca_fit_images)

    def step(m: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        # the masks of the whole global batch from the stream every rank shares, this rank's rows kept: a sample's
        # mask depends on its place in the epoch, not on the process count (1 x 16 and 2 x 8 train alike)
        imgs = batch[0]
        noise = trainer.rows_of_global(model.sample_noise(imgs.shape[0] * trainer.dist.world_size, cfg.mask_ratio,
                                                          imgs.device, generator=trainer.shared_generator))
        loss, _, _ = m(imgs, mask_ratio=cfg.mask_ratio, noise=noise)
        return loss, {}

    monitor = None
    if cfg.monitor_every > 0:  # kNN top-1 of the encoder's features every N epochs (mae/engine/monitor.py)
        from mae.engine.monitor import build_monitor
        monitor = build_monitor(cfg.monitor_data or cfg.data, cfg.img_size, cfg.seed, bank_size=cfg.monitor_bank,
                                query_size=cfg.monitor_queries, k=cfg.monitor_k, temperature=cfg.monitor_temperature,
                                linear=cfg.monitor_linear, batch_size=max(cfg.batch_size, 256))
        monitor.load_history(cfg.run_dir / "log.txt")  # a resumed run's earlier measurements, for the curve

    def measure(trainer: Trainer, epoch: int) -> dict[str, float]:
        from mae.engine.monitor import is_due
        if monitor is None or not trainer.is_main or not is_due(epoch, cfg.monitor_every, cfg.epochs):
            return {}
        return monitor.measure(trainer.model_without_ddp, trainer.device, trainer.amp_dtype, epoch=epoch)

    def visualize(trainer: Trainer, epoch: int) -> None:
        if trainer.is_main and monitor is not None and epoch in monitor.history:
            from mae.viz import save_curves
            save_curves(monitor.curves(), trainer.run_dir / "knn.png", xlabel="epoch", ylabel="top-1 (%)",
                        title=f"kNN monitor (k={cfg.monitor_k}): {cfg.model}")
        if not trainer.is_main or cfg.vis_every <= 0 or model.config.target == "token":
            return
        if (epoch + 1) % cfg.vis_every and trainer.epoch < cfg.epochs:
            return
        imgs = torch.stack([vis_set[i][0] for i in range(min(cfg.vis_images, len(vis_set)))]).to(trainer.device)
        rec = reconstruct(trainer.model_without_ddp, imgs, cfg.mask_ratio, seed=cfg.seed)
        save_figure(rec, trainer.run_dir / f"recon-epoch{epoch:04d}.png",
                    caption=f"{cfg.model}, epoch {epoch}, mask ratio {cfg.mask_ratio}")  # as log.txt: from 0

    from mae.engine.distributed import is_main_process
    if cfg.save_init and resolve_resume(cfg.resume, cfg.run_dir) is None and is_main_process():
        # the starting weights: the control of every readout
        from mae.engine.checkpoint import model_config_record, save_checkpoint
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint({"model": model.state_dict(), "epoch": -1, **model_config_record(model)},
                        cfg.run_dir / INIT_CHECKPOINT)
    groups = param_groups_weight_decay(model, cfg.weight_decay, skip_model_tokens=not cfg.decay_tokens)
    hooks = TrainHooks(step=step, end_epoch=visualize, collate=collate_fn, prepare_batch=batch_transform,
                       prefetch_prepare=True, evaluate=measure if monitor is not None else None,
                       log_columns=monitor.metrics if monitor is not None else ())
    trainer = Trainer(cfg, model, train_set, hooks, param_groups=groups)
    return trainer.fit()
