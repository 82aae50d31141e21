"""Stage 0 of Table 1d's "dVAE token" row: train the VQ tokenizer of ``mae/tokenizer.py`` (``mae tokenizer``).

The paper's token target comes from BEiT's pre-trained DALL-E dVAE; no pre-trained tokenizer can be
downloaded here, so this protocol trains a small one on the pre-training images (explicitly a
stand-in: the scale column of every result says how it was made). It runs through the one training
loop (resumable, ``metrics.json`` when finished) and writes ``tokenizer.pth`` in its run directory,
which pre-training's ``--tokenizer`` reads. The reproduction grid runs it once per scale as the
``tokenizer`` stage (reproduce/scales.py); ``reproduce/tokenizer.py`` is its command line there.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mae.config import TrainConfig, opt
from mae.tokenizer import TokenizerConfig, VQTokenizer

TOKENIZER_FILE = "tokenizer.pth"


@dataclass
class Config(TrainConfig):
    """Tokenizer training recipe (defaults: 224 px, 16 px patches, 8192 codes as BEiT's dVAE)."""

    patch_size: int = opt(16, "patch size: must equal the MAE model's (one token per patch)")
    vocab_size: int = opt(8192, "number of codes (BEiT's dVAE: 8192)")
    code_dim: int = opt(32, "width of a code vector")
    hidden_dim: int = opt(128, "width of the convolutional encoder/decoder")
    res_blocks: int = opt(2, "3x3 residual blocks in the encoder and in the decoder")
    beta: float = opt(0.25, "commitment loss weight")
    augmentation: str = opt("crop_rand", "pre-training augmentation of the training images (Table 1e names)")
    eval_images: int = opt(512, "validation images for the reconstruction error and code usage")
    img_size: int = opt(224, "input resolution (must equal the MAE model's)")
    blr: float = opt(1e-3, "base learning rate: lr = blr * effective batch / 256")
    weight_decay: float = opt(0.0, "weight decay")
    epochs: int = opt(10, "training epochs")
    batch_size: int = opt(64, "batch size per process")

    def validate(self) -> None:
        """The shared checks, then the tokenizer's architecture (:class:`mae.tokenizer.TokenizerConfig`'s own
        rules), its loss weight, augmentation and evaluation set."""
        from mae.config import require
        from mae.data.transforms import PRETRAIN_AUGMENTATIONS
        super().validate()
        try:
            self.tokenizer_config()
        except ValueError as e:
            raise ValueError(str(e).replace("TokenizerConfig.", "--")) from None
        require(self.beta >= 0, "beta", self.beta, "the commitment loss weight must be >= 0")
        require(self.eval_images >= 1, "eval_images", self.eval_images, "must be >= 1")
        require(self.augmentation in PRETRAIN_AUGMENTATIONS, "augmentation", self.augmentation,
                f"must be one of {', '.join(PRETRAIN_AUGMENTATIONS)}")

    def tokenizer_config(self) -> TokenizerConfig:
        return TokenizerConfig(img_size=self.img_size, patch_size=self.patch_size, vocab_size=self.vocab_size,
                               code_dim=self.code_dim, hidden_dim=self.hidden_dim, res_blocks=self.res_blocks,
                               beta=self.beta)


PRESETS: dict[str, Config] = {
    # matches mae_vit_smoke (32 px, 8 px patches): seconds on a CPU
    "smoke": Config(img_size=32, patch_size=8, vocab_size=32, code_dim=8, hidden_dim=16, res_blocks=1,
                    data="synthetic:64", epochs=1, batch_size=16, num_workers=0, eval_images=16, log_every=1,
                    output_dir="outputs/tokenizer_smoke", tensorboard=False, progress=False),
    # the cpu scale (16 px digits, 4 px patches): about a minute on 2 CPU cores
    "cpu": Config(img_size=16, patch_size=4, vocab_size=128, code_dim=16, hidden_dim=32, res_blocks=1,
                  data="digits", epochs=10, batch_size=128, num_workers=0, eval_images=256, log_every=1000,
                  output_dir="outputs/tokenizer_cpu", tensorboard=False, progress=False),
    # matches mae_vit_tiny_patch4_32 (32 px, 4 px patches): a few minutes on one GPU
    "mini": Config(img_size=32, patch_size=4, vocab_size=512, code_dim=32, hidden_dim=64, res_blocks=2,
                   data="synthetic:20000", epochs=10, batch_size=256, num_workers=8, log_every=50,
                   output_dir="outputs/tokenizer_mini"),
    # ImageNet, 224 px, 16 px patches, 8192 codes (BEiT's vocabulary size)
    "paper": Config(img_size=224, patch_size=16, vocab_size=8192, code_dim=32, hidden_dim=256, res_blocks=2,
                    data="/path/to/imagenet", epochs=10, batch_size=128, num_workers=10, log_every=100,
                    output_dir="outputs/tokenizer_paper"),
}
DEFAULT_PRESET = "smoke"


def tokenizer_path(run_dir: str | Path) -> Path:
    """Where a finished stage leaves its tokenizer."""
    return Path(run_dir) / TOKENIZER_FILE


def _eval_set(cfg: Config) -> torch.utils.data.Dataset:
    from torch.utils.data import Subset

    from mae.data import DataError, build_dataset, eval_transform
    try:
        ds = build_dataset(cfg.val_data or cfg.data, split="val", transform=eval_transform(cfg.img_size),
                           img_size=cfg.img_size, seed=cfg.seed)
    except DataError:  # a plain class folder has no val split: score on training images instead
        ds = build_dataset(cfg.data, split="train", transform=eval_transform(cfg.img_size), img_size=cfg.img_size,
                           seed=cfg.seed)
    return Subset(ds, range(min(cfg.eval_images, len(ds))))


@torch.no_grad()
def evaluate(model: VQTokenizer, dataset: torch.utils.data.Dataset, batch_size: int) -> dict[str, float]:
    """Reconstruction MSE (normalised pixels), code perplexity and codes used over ``dataset``."""
    from torch.utils.data import DataLoader

    device = next(model.parameters()).device
    was = model.training
    model.eval()
    counts = torch.zeros(model.vocab_size, device=device)
    err, n = 0.0, 0
    for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = x.to(device)
        ids = model.tokenize(x)
        rec = model.decode_tokens(ids, (x.shape[2] // model.patch_size, x.shape[3] // model.patch_size))
        err += float(((rec.float() - x) ** 2).mean(dim=(1, 2, 3)).sum())
        n += x.shape[0]
        counts += torch.bincount(ids.flatten(), minlength=model.vocab_size).float()
    model.train(was)
    probs = counts / counts.sum().clamp_min(1)
    ppl = float(torch.exp(-(probs * torch.log(probs.clamp_min(1e-12))).sum()))
    return {"val_recon_mse": err / max(n, 1), "val_perplexity": ppl, "val_codes_used": int((counts > 0).sum())}


def run(cfg: Config) -> dict[str, Any]:
    """Train the tokenizer; on the last epoch ``<output_dir>/tokenizer.pth`` is written (before metrics.json)."""
    from mae.data import build_dataset, pretrain_transform
    from mae.engine.loop import Trainer, TrainHooks, seed_everything

    seed_everything(cfg.seed)
    model = VQTokenizer(cfg.tokenizer_config())
    train_set = build_dataset(cfg.data, split="train", transform=pretrain_transform(cfg.augmentation, cfg.img_size),
                              img_size=cfg.img_size, seed=cfg.seed)
    eval_set = _eval_set(cfg)

    def step(m: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        loss, _, stats = m(batch[0])
        return loss, stats

    def export(trainer: Trainer, epoch: int) -> None:
        if trainer.is_main and trainer.epoch >= cfg.epochs:
            model.save(tokenizer_path(trainer.run_dir), extra={"trained_epochs": trainer.epoch, "data": cfg.data})
            print(f"[tokenizer] wrote {tokenizer_path(trainer.run_dir)}")

    hooks = TrainHooks(step=step, end_epoch=export,
                       evaluate=lambda t, epoch: evaluate(t.model_without_ddp, eval_set, cfg.batch_size))
    trainer = Trainer(cfg, model, train_set, hooks)
    return trainer.fit()
