"""Table 2 of MAE: wall-clock pre-training time of the encoder w/ [M] vs w/o [M], decoder 8 vs 1 blocks.

    python reproduce/table2.py --scale smoke          # tiny stand-ins on the CPU, seconds
    python reproduce/table2.py --scale mini           # real ViT-L/16 and ViT-H/14 shapes, this GPU
    python reproduce/table2.py --scale paper          # the same, more timed iterations

Each setting of the paper (ViT-L / ViT-H; w/ [M] 8 blocks, 8 blocks, 1 block; decoder 512 wide, mask
ratio 0.75) is timed here: pre-training steps (forward, backward, AdamW) on random images of the
model's size (the paper: 4096 over 128 TPU-v3 cores, 32 per core; here one GPU, many times a core, runs
128 per step for ViT-L and 64 for ViT-H), then extrapolated to 800 ImageNet epochs on this one device
(``time_h``). What compares across hardware is the speedup
vs the w/ [M] row of the same encoder (paper: 2.8x / 3.7x for ViT-L, 3.5x / 4.1x for ViT-H);
forward FLOPs per image and their ratio are reported beside it. At smoke scale the encoders are
tiny stand-ins on the CPU, so only the pipeline is checked. No data is read (--data is unused).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mae.config import opt, save_config, to_dict
from mae.flops import forward_flops
from mae.provenance import stage_provenance as run_provenance
from reproduce.grid import Cell, GridError, GridResult, Stage, acc, stage_provenance
from reproduce.driver import Report, TableJob, script_main
from reproduce.report import atomic_write_text

TABLE = "table2_wallclock"


@dataclass
class TimingConfig:
    """One timed setting of Table 2 (a grid stage: ``run`` writes metrics.json in ``output_dir``)."""

    output_dir: str = opt("outputs/table2", "run directory")
    model: str = opt("mae_vit_large_patch16", "MAE preset")
    encoder_mask_token: bool = opt(False, "encoder w/ [M] (mask tokens in the encoder)")
    decoder_depth: int = opt(8, "decoder blocks")
    decoder_embed_dim: int = opt(512, "decoder width")
    mask_ratio: float = opt(0.75, "mask ratio")
    batch_size: int = opt(32, "images per step on this device")
    warmup_iters: int = opt(10, "untimed steps first")
    timed_iters: int = opt(50, "timed steps")
    device: str = opt("auto", "auto | cpu | cuda")
    amp: str = opt("auto", "auto (bf16 on GPU) | bf16 | fp16 | none")
    epochs: int = opt(800, "epochs the time is extrapolated to (Table 2: 800)")
    dataset_size: int = opt(1_281_167, "images per epoch (ImageNet-1K train)")
    seed: int = opt(0, "seed of the random images and the init")

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.timed_iters < 1 or self.warmup_iters < 0:
            raise ValueError(f"batch_size and timed_iters must be >= 1, warmup_iters >= 0; got {self.batch_size}, "
                             f"{self.timed_iters}, {self.warmup_iters}")


def _build(cfg: TimingConfig) -> torch.nn.Module:
    from mae.models import create_mae
    return create_mae(cfg.model, encoder_mask_token=cfg.encoder_mask_token, decoder_depth=cfg.decoder_depth,
                      decoder_embed_dim=cfg.decoder_embed_dim)


def measure(cfg: TimingConfig) -> dict[str, Any]:
    """Seconds per pre-training step, images/s, hours for ``epochs`` x ``dataset_size``, GFLOPs/image."""
    from mae.engine.loop import resolve_amp, resolve_device

    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    amp = resolve_amp(cfg.amp, device)
    model = _build(cfg).to(device)
    img = model.config.img_size
    gflops = forward_flops(model, img, cfg.mask_ratio) / 1e9
    opt_ = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))
    x = torch.randn(cfg.batch_size, 3, img, img, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = model(x, mask_ratio=cfg.mask_ratio)[0]
        loss.backward()
        opt_.step()
        opt_.zero_grad(set_to_none=True)

    model.train()
    try:
        for _ in range(cfg.warmup_iters):
            step()
        sync()
        t0 = time.perf_counter()
        for _ in range(cfg.timed_iters):
            step()
        sync()
    except torch.cuda.OutOfMemoryError as e:
        raise torch.cuda.OutOfMemoryError(
            f"{e}\nTable 2: {cfg.model} (w/{'' if cfg.encoder_mask_token else 'o'} [M], decoder {cfg.decoder_depth}) "
            f"at batch {cfg.batch_size} does not fit this GPU; rerun with --set timing.batch_size=N "
            "(one batch for every row keeps the speedups comparable)") from e
    s_per_iter = (time.perf_counter() - t0) / cfg.timed_iters
    img_s = cfg.batch_size / s_per_iter
    return {"s_per_iter": s_per_iter, "img_per_s": img_s,
            "time_h": cfg.epochs * cfg.dataset_size / img_s / 3600.0, "gflops": gflops,
            "img_size": img, "batch_size": cfg.batch_size, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "amp": str(amp).replace("torch.", "") if amp is not None else "none"}


def run(cfg: TimingConfig) -> dict[str, Any]:
    """Measure one setting; writes config.yaml and metrics.json ({"final": measurements}) to ``output_dir``.

    Started in every task of a job (``--launcher slurm``): rank 0 alone measures, on its GPU; the other
    tasks wait for its metrics.json (two timings on one GPU would slow each other down)."""
    from mae.engine.distributed import placement
    out = Path(cfg.output_dir)
    if not placement().is_main:
        return _wait_for_rank0(out / "metrics.json", since=time.time())
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    t0 = time.time()
    final = measure(cfg)
    print(f"[table2] {cfg.model} w/{'' if cfg.encoder_mask_token else 'o'} [M], decoder {cfg.decoder_depth}: "
          f"{final['s_per_iter'] * 1e3:.1f} ms/step, {final['img_per_s']:.0f} img/s, {final['gflops']:.2f} GFLOPs")
    result = {"history": [], "final": final, "best": {}, "finished": True, "config": to_dict(cfg),
              "provenance": run_provenance(seed=cfg.seed, wall_s=time.time() - t0)}
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=1))
    return result


def _wait_for_rank0(path: Path, since: float, timeout_s: float = 3600.0) -> dict[str, Any]:
    """Rank 0's result: ``path`` once written after ``since`` (the timing takes minutes at most)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if path.is_file() and path.stat().st_mtime >= since - 1:
            return json.loads(path.read_text())
        time.sleep(1.0)
    raise TimeoutError(f"rank 0 wrote no {path} within {timeout_s:.0f} s: see its log")


# ----------------------------------------------------------------------------------- cells
def build_cells(scale: Any) -> list[Cell]:
    """One timing cell per row of the paper's Table 2 (reference/table2_wallclock.csv)."""
    from reproduce.reference import load_reference

    rec = scale.table2
    cells = []
    for row in load_reference(TABLE).itertuples(index=False):
        model = rec.models[row.encoder]
        cfg = TimingConfig(model=model, encoder_mask_token=row.encoder_mask_token == "with",
                           decoder_depth=int(row.decoder_depth), decoder_embed_dim=rec.decoder_width,
                           batch_size=rec.batch_for(row.encoder), warmup_iters=rec.warmup_iters, timed_iters=rec.timed_iters,
                           device=rec.device, amp=rec.amp, epochs=rec.epochs, dataset_size=rec.dataset_size)
        cells.append(Cell(row.setting, {"setting": row.setting}, [Stage("timing", "reproduce.table2", cfg, local_only=True)],
                          info={"model_used": model, "decoder_width_used": rec.decoder_width}))
    return cells


def rows(grid: GridResult) -> list[dict[str, Any]]:
    from reproduce.report import table2_speedups

    out, hours, gflops = [], {}, {}
    for c in grid.cells:
        r = grid.get(c.name, "timing")
        m = (r.metrics or {}).get("final", {}) if r else {}
        row = {"setting": c.key["setting"], **c.info, "time_h": acc(r, metric="time_h"),
               "s_per_iter": acc(r, metric="s_per_iter"), "img_per_s": acc(r, metric="img_per_s"),
               "gflops": acc(r, metric="gflops"), "measured_on": m.get("device_name", ""), **stage_provenance([r])}
        if row["time_h"] == row["time_h"]:  # not NaN
            hours[c.key["setting"]] = row["time_h"]
            gflops[c.key["setting"]] = row["gflops"]
        out.append(row)
    speed = table2_speedups(hours)
    flops_ratio = {s: gflops[b] / gflops[s] for s, b in _with_mask_rows().items() if s in gflops and b in gflops}
    for row in out:
        row["speedup"] = speed.get(row["setting"], float("nan"))
        row["flops_speedup"] = flops_ratio.get(row["setting"], float("nan"))
    return out


def _with_mask_rows() -> dict[str, str]:
    """setting -> the w/ [M] setting of the same encoder (for every w/o [M] row)."""
    from reproduce.reference import load_reference

    ref = load_reference(TABLE)
    base = {r.encoder: r.setting for r in ref.itertuples(index=False) if r.encoder_mask_token == "with"}
    return {r.setting: base[r.encoder] for r in ref.itertuples(index=False)
            if r.encoder_mask_token != "with" and r.encoder in base}


def build_jobs(args: Any, scale: Any) -> list[TableJob]:
    if (scale.table2.device != "cpu" and not torch.cuda.is_available() and not (args.dry_run or args.collect)
            and scale.name != "smoke"):
        raise GridError(f"Table 2 at --scale {scale.name} times ViT-L/H on a GPU and none is available here; "
                        "on a CPU run --scale smoke")
    notes = ("time_h: this device alone, extrapolated to 800 ImageNet epochs; the paper used 128 TPU-v3 cores, "
             "so compare speedups, not hours",)
    if scale.name == "smoke":
        notes += ("smoke: tiny stand-in encoders on the CPU; the speedups only check the pipeline",)
    return [TableJob(TABLE, build_cells(scale), [Report(TABLE, rows, "Table 2: wall-clock time (pre-training)")],
                     notes)]


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, build_jobs, argv)


if __name__ == "__main__":
    raise SystemExit(main())
