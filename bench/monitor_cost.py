"""Cost of the kNN representation monitor (mae/engine/monitor.py) relative to a pre-training epoch.

For a pre-training preset (default: ``demo``) this times, in one process and interleaved over
``--rounds`` rounds (so a busy machine slows both alike):

- a training step at the preset's batch (forward, backward, AdamW; batches already in memory, so the
  data loading the workers do in parallel is left out: the epoch estimate is a lower bound and the
  ratio an upper bound), times the iterations of one epoch;
- one monitor measurement (``RepresentationMonitor.measure``: encode bank + queries, two kNN votes)
  for each ``--sizes`` pair ``BANK:QUERIES``;

and prints the medians, the ratio measurement / epoch, and the one-time setup (rendering and caching
the monitor's images). ``python bench/monitor_cost.py`` (1-2 minutes on one CPU thread); numbers in bench/README.md.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from mae.data import build_dataset
from mae.engine.monitor import build_monitor
from mae.protocols import pretrain


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="demo", choices=list(pretrain.PRESETS))
    p.add_argument("--sizes", default="400:200,1000:500",
                   help="comma-separated BANK:QUERIES monitor sizes to time")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=4, help="training steps timed per round")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = replace(pretrain.PRESETS[args.preset], device="cpu")
    torch.manual_seed(0)
    model = pretrain.build_model(cfg)
    n_train = len(build_dataset(cfg.data, split="train", img_size=cfg.img_size, seed=cfg.seed))
    iters = n_train // cfg.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=cfg.betas)
    batch = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size)

    def step() -> None:
        loss, _, _ = model(batch, mask_ratio=cfg.mask_ratio)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    monitors = {}
    for size in args.sizes.split(","):
        bank, queries = (int(v) for v in size.split(":"))
        monitors[size] = build_monitor(cfg.monitor_data or cfg.data, cfg.img_size, cfg.seed, bank_size=bank,
                                       query_size=queries, batch_size=256)
    step()
    for mon in monitors.values():
        mon.measure(model)  # warm-up
    steps: list[float] = []
    meas: dict[str, list[float]] = {s: [] for s in monitors}
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        steps.append((time.perf_counter() - t0) / args.steps)
        for s, mon in monitors.items():
            t0 = time.perf_counter()
            mon.measure(model)
            meas[s].append(time.perf_counter() - t0)
    step_s = statistics.median(steps)
    epoch_s = step_s * iters
    print(f"preset {args.preset}: {cfg.model}, {cfg.img_size} px, {n_train} train images, batch {cfg.batch_size}, "
          f"{iters} iterations; {args.threads} thread(s)")
    print(f"training step {step_s * 1e3:.0f} ms -> epoch (compute only) {epoch_s:.1f} s")
    rows = []
    for s, mon in monitors.items():
        m = statistics.median(meas[s])
        rows.append({"bank": len(mon.bank), "queries": len(mon.queries), "measure_s": m, "epoch_s": epoch_s,
                     "ratio": m / epoch_s, "setup_s": mon.setup_s})
        print(f"monitor {len(mon.bank):5d} bank + {len(mon.queries):4d} queries: {m:5.2f} s per measurement = "
              f"{100 * m / epoch_s:4.1f}% of the epoch; setup (render + cache once) {mon.setup_s:.1f} s")
    return rows


if __name__ == "__main__":
    main()
