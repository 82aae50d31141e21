"""The shared driver of ``coco_det.py`` and ``ade20k_seg.py``: flags, config file, checkpoint ->
backbone settings, an mmengine ``Runner`` (train, then evaluate), and the results CSV row(s).

Each task module supplies only what differs: its config files, data checks, the channel wiring of
its neck / heads, and how its metrics map to the paper's table. The CSV is written by
``reproduce.report`` (``compare`` / ``verdict`` / ``write_results``), like every other table.
"""
from __future__ import annotations

import argparse
import json
import numbers
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SCALES = ("smoke", "paper")


@dataclass(frozen=True)
class Task:
    """What one downstream script contributes to :func:`main`."""

    name: str  # 'coco_det' | 'ade20k_seg'
    config_stem: str  # configs/<stem>_<scale>.py
    prepare_data: Callable[[argparse.Namespace, Path], Path]  # -> data root (checked)
    configure_data: Callable[[Any, Path], None]  # point the config at the data root
    wire_channels: Callable[[Any, int], None]  # set neck / head input widths for a backbone width
    table_for: Callable[[str], str]  # ViT size -> reference table name (reproduce/reference/<name>.csv)
    ours: Callable[[dict[str, float], str], dict[str, float]]  # metrics, size -> that table's metric columns


def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--ckpt", required=True, help="MAE / ViT checkpoint ({'model': state_dict}, official or ours)")
    p.add_argument("--data", default=None, help="dataset root (default with --scale smoke: a generated fixture)")
    p.add_argument("--scale", required=True, choices=SCALES)
    p.add_argument("--work-dir", default=None, help="run folder (default outputs/downstream/<task>_<scale>)")
    p.add_argument("--out", default=None, help="results CSV, rewritten (default results/<table>_<scale>.csv)")
    p.add_argument("--num-heads", type=int, default=None,
                   help="attention heads of the checkpoint's ViT when they cannot be inferred")
    p.add_argument("--max-iters", type=int, default=None, help="override the schedule length (iterations)")
    p.add_argument("--resume", action="store_true", help="resume from the work dir's last checkpoint")
    p.add_argument("--launcher", default="none", choices=["none", "pytorch", "slurm"],
                   help="mmengine launcher (pytorch = torchrun)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="mmengine config overrides, e.g. train_dataloader.batch_size=2")
    return p


# --------------------------------------------------------------------------- config
def load_config(task: Task, scale: str) -> Any:
    from mmengine.config import Config
    path = CONFIG_DIR / f"{task.config_stem}_{scale}.py"
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    return Config.fromfile(str(path))


def configure_backbone(cfg: Any, task: Task, ckpt: str, scale: str, num_heads: int | None) -> str:
    """Fit the config's backbone / layer decay to the checkpoint's ViT; returns the size name used."""
    from mmengine.logging import print_log

    from downstream.backbone import infer_vit_arch
    arch = infer_vit_arch(ckpt, num_heads=num_heads)
    sizes = cfg.vit_sizes
    match = [n for n, s in sizes.items() if (s["embed_dim"], s["depth"]) == (arch.embed_dim, arch.depth)]
    if match:
        size = match[0]
    elif scale == "smoke":
        size = next(iter(sizes))
        print_log(f"{ckpt}: a ViT of width {arch.embed_dim} / depth {arch.depth} has no entry in vit_sizes; "
                  f"the smoke run uses the '{size}' recipe with the checkpoint's shape", "current", level=30)
    else:
        known = {n: (s["embed_dim"], s["depth"]) for n, s in sizes.items()}
        raise ValueError(f"{ckpt}: no recipe in {task.config_stem}_{scale}.py for a ViT of width {arch.embed_dim} "
                         f"and depth {arch.depth} (known (width, depth): {known}); add one to vit_sizes")
    recipe = sizes[size]
    bb = cfg.model.backbone
    bb.update(embed_dim=arch.embed_dim, depth=arch.depth, num_heads=arch.num_heads, mlp_ratio=arch.mlp_ratio,
              pretrain_img_size=arch.pretrain_img_size, drop_path_rate=recipe["drop_path_rate"],
              pretrained=str(Path(ckpt).resolve()))
    if bb.get("window_size") and "global_attn_indexes" in recipe:
        bb.global_attn_indexes = [i for i in recipe["global_attn_indexes"] if i < arch.depth]
    if "out_indices" in recipe:
        bb.out_indices = [i for i in recipe["out_indices"]]
    bad = [i for i in bb.get("out_indices", [-1]) if not -arch.depth <= i < arch.depth]
    if bad:
        raise ValueError(f"out_indices {bad} do not exist in a {arch.depth}-block ViT ({ckpt})")
    cfg.optim_wrapper.paramwise_cfg.layer_decay_rate = recipe["layer_decay_rate"]
    task.wire_channels(cfg, arch.embed_dim)
    return size


# --------------------------------------------------------------------------- run
def _metrics_hook(out_file: Path):
    from mmengine.hooks import Hook

    class RecordMetrics(Hook):
        """Keep the last validation metrics and write them to ``metrics.json`` in the work dir."""

        priority = "VERY_LOW"

        def __init__(self) -> None:
            self.metrics: dict[str, float] = {}

        def after_val_epoch(self, runner, metrics=None) -> None:  # noqa: ANN001 - mmengine signature
            self.metrics = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, numbers.Real)}
            if runner.rank == 0:
                out_file.write_text(json.dumps(self.metrics, indent=2))

    return RecordMetrics()


def train_and_evaluate(cfg: Any) -> dict[str, float]:
    """Build an mmengine Runner from ``cfg``, train (evaluating at the end) and return the last metrics."""
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg)
    hook = _metrics_hook(Path(cfg.work_dir) / "metrics.json")
    runner.register_hook(hook)
    runner.train()
    if not hook.metrics:
        raise RuntimeError(f"training finished without validation metrics (work dir {cfg.work_dir})")
    return hook.metrics


def cli(task: Task, argv: list[str] | None = None, description: str = "") -> int:
    """Command-line entry: input errors (checkpoint, dataset, missing OpenMMLab stack) are one line, exit 2."""
    from mae.cli import guarded
    from downstream.checks import DatasetError

    try:
        import mmengine  # noqa: F401
    except ModuleNotFoundError as e:
        print(f"{task.name}: error: the OpenMMLab stack is not installed ({e}); run "
              "`bash scripts/install.sh --downstream` first", file=sys.stderr)
        return 2
    return guarded(task.name, main, task, argv, description, extra_errors=(DatasetError,))[0]


def main(task: Task, argv: list[str] | None = None, description: str = "") -> pd.DataFrame | None:
    """Parse flags, check inputs, train + evaluate, write the comparison CSV; returns it (rank 0)."""
    args = build_parser(description).parse_args(argv)
    work_dir = Path(args.work_dir or REPO / "outputs" / "downstream" / f"{task.name}_{args.scale}").resolve()
    if args.scale == "paper" and not args.data:
        raise SystemExit(f"{task.name}: --scale paper needs --data (the dataset root)")

    # every input is checked before a Runner exists
    from downstream.backbone import encoder_state_dict
    encoder_state_dict(args.ckpt)  # not a ViT -> NotAViTCheckpointError naming the keys found
    data_root = task.prepare_data(args, work_dir)
    cfg = load_config(task, args.scale)
    size = configure_backbone(cfg, task, args.ckpt, args.scale, args.num_heads)
    out = Path(args.out or REPO / "results" / f"{task.table_for(size)}_{args.scale}.csv")
    task.configure_data(cfg, data_root)
    cfg.work_dir = str(work_dir)
    cfg.launcher = args.launcher
    cfg.randomness = dict(seed=args.seed)
    if args.resume:
        cfg.resume = True
    if args.max_iters is not None:
        _set_max_iters(cfg, args.max_iters)
    if args.cfg_options:
        from mmengine.config import DictAction
        opts = argparse.ArgumentParser()
        opts.add_argument("--o", nargs="+", action=DictAction)
        cfg.merge_from_dict(opts.parse_args(["--o", *args.cfg_options]).o)

    metrics = train_and_evaluate(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    return write_comparison(task, metrics, size, args, cfg, work_dir, out)


def write_comparison(task: Task, metrics: dict[str, float], size: str, args: argparse.Namespace, cfg: Any,
                     work_dir: Path, out: Path) -> pd.DataFrame:
    """Our numbers beside the paper's (``reproduce.report``): CSV + ``.meta.json`` sidecar, printed too."""
    from reproduce.report import compare, format_table, provenance, verdict, write_results
    table = task.table_for(size)
    ours = pd.DataFrame([{"method": "mae", **task.ours(metrics, size), "backbone": size, "ckpt": str(args.ckpt),
                          "iters": int(cfg.train_cfg.max_iters), "work_dir": str(work_dir)}])
    df = compare(table, ours, scale=args.scale, prov=provenance())
    verdicts = verdict(df, table)
    write_results(df, verdicts, out)
    print(format_table(df, verdicts, title=f"[{task.name}] {table} -> {out}"))
    return df


def _set_max_iters(cfg: Any, n: int) -> None:
    """Shorten / lengthen the schedule: loop length, validation at the end, scheduler ends clipped."""
    if n < 1:
        raise ValueError(f"--max-iters must be >= 1, got {n}")
    cfg.train_cfg.max_iters = n
    cfg.train_cfg.val_interval = n
    kept = []
    for s in cfg.param_scheduler:
        if s.get("begin", 0) >= n:
            continue  # starts after the shortened run ends
        if s.get("end", n) > n:
            s["end"] = n
        if "milestones" in s:
            s["milestones"] = [m for m in s["milestones"] if m < n]
        kept.append(s)
    cfg.param_scheduler = kept
    cfg.default_hooks.checkpoint.interval = min(cfg.default_hooks.checkpoint.interval, n)
