"""Where one pre-training step of a scale's baseline cell spends its time: data, encoder, decoder,
loss, backward, optimiser.

    python bench/profile_cell.py [--scale cpu] [--steps 30] [--threads 1]

Builds the scale's baseline pre-training exactly as ``mae pretrain`` does (dataset and transform,
model, AdamW param groups), then times ``--steps`` steps phase by phase with ``time.perf_counter``
(after ``--warmup`` untimed steps): ``data`` = the DataLoader's next batch (decode, crop, collate,
normalise), ``encoder`` = masking + the encoder on the visible patches (``forward_encoder``),
``decoder`` = ``forward_decoder``, ``loss`` = ``forward_loss``, ``backward``, ``optimizer`` =
``AdamW.step`` + ``zero_grad``. Prints the median ms per phase and its share; numbers in bench/README.md.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mae.data import NormalizeBatch, build_dataset, pretrain_transform
from mae.engine.optim import param_groups_weight_decay
from mae.protocols import pretrain
from reproduce.scales import get_scale

PHASES = ("data", "encoder", "decoder", "loss", "backward", "optimizer")


def profile(cfg: pretrain.Config, steps: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per phase of one pre-training step of ``cfg``."""
    torch.manual_seed(cfg.seed)
    data = build_dataset(cfg.data, split="train", img_size=cfg.img_size, seed=cfg.seed,
                         transform=pretrain_transform(cfg.augmentation, cfg.img_size, normalize=False))
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                         num_workers=cfg.num_workers)
    normalize = NormalizeBatch()
    model = pretrain.build_model(cfg)
    model.train()
    groups = param_groups_weight_decay(model, cfg.weight_decay, skip_model_tokens=not cfg.decay_tokens)
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=cfg.betas)
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    it = iter(loader)
    for i in range(warmup + steps):
        t = [time.perf_counter()]
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        imgs = normalize.images(batch[0])
        t.append(time.perf_counter())
        latent, mask, ids_restore = model.forward_encoder(imgs, cfg.mask_ratio)
        t.append(time.perf_counter())
        pred = model.forward_decoder(latent, ids_restore)
        t.append(time.perf_counter())
        loss = model.forward_loss(imgs, pred, mask)
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        opt.step()
        opt.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        if i >= warmup:
            for name, a, b in zip(PHASES, t, t[1:]):
                times[name].append((b - a) * 1e3)
    return {p: statistics.median(v) for p, v in times.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", default="cpu", help="a scale of reproduce/scales.py (its baseline pre-training)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = get_scale(args.scale).pretrain
    ms = profile(cfg, args.steps, args.warmup)
    total = sum(ms.values())
    print(f"{args.scale} baseline pre-training step: {cfg.model} at {cfg.img_size} px, batch {cfg.batch_size}, "
          f"mask {cfg.mask_ratio}, decoder {cfg.decoder_depth} x {cfg.decoder_embed_dim}, {args.threads} thread(s)")
    for name in PHASES:
        print(f"  {name:<10} {ms[name]:8.1f} ms  {100 * ms[name] / total:5.1f}%")
    print(f"  {'total':<10} {total:8.1f} ms  ({cfg.batch_size / total * 1e3:.0f} img/s)")
    return ms


if __name__ == "__main__":
    main()
