"""The shared driver of ``coco_det.py`` and ``ade20k_seg.py``: flags, config file, checkpoint ->
backbone settings, an mmengine ``Runner`` (train, then evaluate), and the results CSV row(s).

Each task module supplies only what differs: its config files, data checks, the channel wiring of
its neck / heads, its model options (COCO: the pyramid), how a schedule of N optimizer steps is
written into the config, and how its metrics map to the paper's table. The CSV is written by
``reproduce.report`` (``compare`` / ``verdict`` / ``write_results``), like every other table.

Before any Runner exists the recipe is resolved for the world size (:mod:`downstream.plan`: the
effective batch and the number of optimizer steps are the recipe's whatever the GPU count) and the
memory per GPU is estimated (:mod:`downstream.memory`: picks the per-GPU batch and whether to use
activation checkpointing); it is printed, and ``--dry-run`` stops there.
"""
from __future__ import annotations

import argparse
import copy
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
    table_for: Callable[[str, argparse.Namespace], str]  # ViT size, flags -> reference table (reproduce/reference/)
    ours: Callable[[dict[str, float], str], dict[str, float]]  # metrics, size -> that table's metric columns
    set_schedule: Callable[[Any, int], None]  # write a schedule of N optimizer steps from cfg.recipe
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None  # task-only flags
    configure_model: Callable[[Any, argparse.Namespace, int, int], None] | None = None  # cfg, flags, depth, width
    row_fields: Callable[[argparse.Namespace], dict[str, Any]] | None = None  # extra CSV columns (e.g. pyramid)
    out_stem: Callable[[str, argparse.Namespace], str] | None = None  # <results>/<stem>_<scale>.csv (default: table)
    row_key: Callable[[str], str] = lambda table: "mae"  # our row's key in that reference table


def build_parser(description: str, task: Task | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--ckpt", required=True, help="MAE / ViT checkpoint ({'model': state_dict}, official or ours)")
    p.add_argument("--data", default=None, help="dataset root (default with --scale smoke: a generated fixture)")
    p.add_argument("--scale", required=True, choices=SCALES)
    p.add_argument("--work-dir", default=None, help="run folder (default outputs/downstream/<task>_<scale>)")
    p.add_argument("--out", default=None, help="results CSV (or its folder), rewritten (default "
                                               "results/<table>_<scale>.csv; outputs/results/ at the smoke scale)")
    p.add_argument("--num-heads", type=int, default=None,
                   help="attention heads of the checkpoint's ViT when they cannot be inferred")
    p.add_argument("--max-iters", type=int, default=None,
                   help="override the schedule length (optimizer steps; warmup and decay follow it)")
    p.add_argument("--schedule", default=None,
                   help="a named schedule of the config's recipe (default: its first, the paper's)")
    p.add_argument("--world-size", type=int, default=None,
                   help="plan for this many GPUs (default: WORLD_SIZE of the launcher, else 1); under a launcher "
                        "it must match")
    p.add_argument("--per-gpu-batch", type=int, default=None,
                   help="largest per-GPU batch to use; the rest of the effective batch by gradient accumulation")
    p.add_argument("--act-checkpoint", default="auto", choices=["auto", "on", "off"],
                   help="activation checkpointing of the ViT blocks (auto: on where the per-GPU batch would not "
                        "fit --gpu-mem-gb without it)")
    p.add_argument("--gpu-mem-gb", type=float, default=80.0, help="memory per GPU the plan must fit (default 80)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the inputs, print the resolved recipe and the memory estimate, train nothing")
    p.add_argument("--resume", action="store_true", help="resume from the work dir's last checkpoint")
    p.add_argument("--launcher", default="none", choices=["none", "pytorch", "slurm"],
                   help="mmengine launcher (pytorch = torchrun)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="mmengine config overrides, e.g. model.backbone.drop_path_rate=0.2 (applied last)")
    if task is not None and task.add_arguments is not None:
        task.add_arguments(p)
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

    from downstream.backbone import backbone_info
    arch = backbone_info(ckpt, num_heads=num_heads)
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
              pretrain_img_size=arch.img_size, drop_path_rate=recipe["drop_path_rate"],
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
    """Command-line entry: input errors (checkpoint, dataset, recipe, missing OpenMMLab stack) are one line, exit 2."""
    from mae.cli import guarded
    from downstream.checks import DatasetError
    from downstream.plan import BatchPlanError

    try:
        import mmengine  # noqa: F401
    except ModuleNotFoundError as e:
        print(f"{task.name}: error: the OpenMMLab stack is not installed ({e}); run "
              "`bash scripts/install.sh --downstream` first", file=sys.stderr)
        return 2
    return guarded(task.name, main, task, argv, description, extra_errors=(DatasetError, BatchPlanError))[0]


# --------------------------------------------------------------------------- recipe for the world size
@dataclass(frozen=True)
class Resolved:
    """The recipe as it will run: what ``--dry-run`` prints and the CSV row records."""

    task: str
    scale: str
    size: str
    schedule: str
    steps: int  # optimizer steps
    epochs: float
    epoch_images: int
    plan: Any  # downstream.plan.BatchPlan
    lr: float
    memory: Any  # downstream.memory.MemoryEstimate (the chosen one)
    memory_without_checkpointing: Any
    memory_with_checkpointing: Any
    act_checkpoint_mode: str
    budget_gb: float
    options: dict[str, Any]
    alternative: Any = None  # auto chose checkpointing: the plan without it (more accumulation), if one fits

    @property
    def fits(self) -> bool:
        from downstream.memory import fits
        return fits(self.memory, self.budget_gb)

    def describe(self) -> str:
        p, m = self.plan, self.memory
        ck = "on" if m.act_checkpoint else "off"
        lines = [
            f"[{self.task}] resolved recipe: scale {self.scale}, ViT size '{self.size}'"
            + "".join(f", {k} '{v}'" for k, v in self.options.items()),
            f"  world size        {p.world_size}",
            f"  per-GPU batch     {p.per_gpu_batch}",
            f"  accumulation      {p.accumulation}",
            f"  effective batch   {p.effective_batch} = {p.world_size} GPUs x {p.per_gpu_batch} x {p.accumulation}",
            f"  schedule          '{self.schedule}': {self.epochs:g} epochs of {self.epoch_images:,} images = "
            f"{self.steps:,} optimizer steps ({self.steps * p.accumulation:,} loop iterations)",
            f"  lr                {self.lr:g} (the recipe's: the effective batch does not change with the GPU count)",
            f"  act. checkpoint   {ck} ({self.act_checkpoint_mode})",
            f"  memory per GPU    ~{m.total_gb:.1f} GB estimated of {self.budget_gb:g} GB "
            f"({'fits' if self.fits else 'DOES NOT FIT'}): {m.params / 1e6:.1f} M trainable parameters, state "
            f"{m.state_gb:.1f} GB + {p.per_gpu_batch} x {m.activations_per_image_gb:.2f} GB activations per image",
            f"                    per image without / with checkpointing: "
            f"{self.memory_without_checkpointing.activations_per_image_gb:.2f} / "
            f"{self.memory_with_checkpointing.activations_per_image_gb:.2f} GB "
            "(rough model: downstream/memory.py)",
        ]
        alt = self.alternative
        if alt is not None:
            k = self.plan.effective_batch // (self.plan.world_size * alt.per_gpu_batch)
            lines.append(f"  alternative       --per-gpu-batch {alt.per_gpu_batch} --act-checkpoint off: accumulation {k}, "
                         f"~{alt.total_gb:.1f} GB (no recomputation, smaller micro-batches)")
        return "\n".join(lines)

    def row(self) -> dict[str, Any]:
        p = self.plan
        return {"schedule": self.schedule, "iters": self.steps, "epochs": round(self.epochs, 3),
                "world_size": p.world_size, "per_gpu_batch": p.per_gpu_batch, "accumulation": p.accumulation,
                "effective_batch": p.effective_batch, "act_checkpoint": bool(self.memory.act_checkpoint),
                **self.options}


def count_trainable_params(cfg: Any) -> int:
    """Trainable parameters of ``cfg.model``, built on the meta device (no memory, no weights loaded)."""
    import torch
    from mmengine.registry import DefaultScope, init_default_scope

    init_default_scope(cfg.default_scope)
    scope = DefaultScope.get_current_instance().scope_name
    registry = {"mmdet": "mmdet.registry", "mmseg": "mmseg.registry"}[scope]
    models = __import__(registry, fromlist=["MODELS"]).MODELS
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.pretrained = None
    with torch.device("meta"):
        model = models.build(model_cfg)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def backbone_shape(cfg: Any) -> Any:
    """The config's backbone and input, as the memory model needs them."""
    from downstream.memory import BackboneShape
    bb = cfg.model.backbone
    img = bb.img_size
    hw = (img, img) if isinstance(img, int) else tuple(img)
    depth = bb.depth
    taps = [i % depth for i in bb.get("out_indices", [-1])]
    return BackboneShape(embed_dim=bb.embed_dim, depth=depth, num_heads=bb.num_heads, patch_size=bb.patch_size,
                         image_size=hw, window_size=bb.get("window_size", 0) or 0,
                         global_blocks=tuple(bb.get("global_attn_indexes", ())), blocks_run=max(taps) + 1,
                         cls_token=bool(bb.get("use_cls_token", False)))


def resolve_recipe(cfg: Any, task: Task, args: argparse.Namespace, size: str) -> Resolved:
    """Schedule, batch split and memory for the world size; writes them into ``cfg`` (see the module doc)."""
    from downstream import memory
    from downstream.plan import BatchPlan, BatchPlanError, apply_accumulation, per_gpu_choices, steps_for, world_size

    recipe = cfg.recipe
    schedules = recipe.schedules
    name = args.schedule or next(iter(schedules))
    if name not in schedules:
        raise BatchPlanError(f"--schedule {name}: the {task.config_stem}_{args.scale} recipe has {sorted(schedules)}")
    eb, n_img = int(recipe.effective_batch), int(recipe.epoch_images)
    steps, epochs = steps_for(schedules[name], size, n_img, eb)
    if args.max_iters is not None:
        if args.max_iters < 1:
            raise ValueError(f"--max-iters must be >= 1, got {args.max_iters}")
        steps, epochs = args.max_iters, args.max_iters * eb / n_img
    task.set_schedule(cfg, steps)
    cfg.train_cfg.max_iters = steps
    cfg.train_cfg.val_interval = min(int(cfg.train_cfg.get("val_interval", steps)), steps)
    cfg.default_hooks.checkpoint.interval = min(cfg.default_hooks.checkpoint.interval, steps)

    world = world_size(args.world_size)
    choices = per_gpu_choices(eb, world)
    if args.per_gpu_batch is not None:
        if args.per_gpu_batch < 1:
            raise BatchPlanError(f"--per-gpu-batch must be >= 1, got {args.per_gpu_batch}")
        choices = [b for b in choices if b <= args.per_gpu_batch]
    shape, params = backbone_shape(cfg), count_trainable_params(cfg)
    head_gb = float(recipe.get("head_gb", 0.0))
    mode = {"auto": None, "on": True, "off": False}[args.act_checkpoint]
    chosen = memory.choose(shape, params, choices, head_gb, args.gpu_mem_gb, mode)
    plan = BatchPlan(world, chosen.per_gpu_batch, eb // (world * chosen.per_gpu_batch))
    alternative = None
    if mode is None and chosen.act_checkpoint:
        alt = memory.choose(shape, params, choices, head_gb, args.gpu_mem_gb, False)
        alternative = alt if memory.fits(alt, args.gpu_mem_gb) else None
    resolved = Resolved(
        task=task.name, scale=args.scale, size=size, schedule=name, steps=steps, epochs=epochs, epoch_images=n_img,
        plan=plan, lr=float(cfg.optim_wrapper.optimizer.lr), memory=chosen,
        memory_without_checkpointing=memory.estimate_memory(shape, params, plan.per_gpu_batch, False, head_gb),
        memory_with_checkpointing=memory.estimate_memory(shape, params, plan.per_gpu_batch, True, head_gb),
        act_checkpoint_mode=args.act_checkpoint, budget_gb=args.gpu_mem_gb,
        options=task.row_fields(args) if task.row_fields else {}, alternative=alternative)

    cfg.model.backbone.act_checkpoint = bool(chosen.act_checkpoint)
    cfg.train_dataloader.batch_size = plan.per_gpu_batch
    apply_accumulation(cfg, plan.accumulation)
    return resolved


# --------------------------------------------------------------------------- main
def main(task: Task, argv: list[str] | None = None, description: str = "") -> pd.DataFrame | Resolved | None:
    """Parse flags, check inputs, resolve the recipe for the world size, train + evaluate, write the
    comparison CSV; returns it (rank 0), or the resolved recipe with ``--dry-run``."""
    args = build_parser(description, task).parse_args(argv)
    from mae.provenance import require_same_checkout
    require_same_checkout()
    work_dir = Path(args.work_dir or REPO / "outputs" / "downstream" / f"{task.name}_{args.scale}").resolve()
    if args.scale == "paper" and not args.data:  # an input error like the others: one line, exit status 2
        from downstream.checks import DatasetError
        raise DatasetError("--scale paper needs --data (the dataset root)")

    # every input is checked before a Runner exists
    from downstream.backbone import backbone_info, encoder_state_dict
    encoder_state_dict(args.ckpt)  # not a ViT -> NotAViTError naming the keys found
    data_root = task.prepare_data(args, work_dir)
    cfg = load_config(task, args.scale)
    size = configure_backbone(cfg, task, args.ckpt, args.scale, args.num_heads)
    if task.configure_model is not None:
        arch = backbone_info(args.ckpt, num_heads=args.num_heads)
        task.configure_model(cfg, args, arch.depth, arch.embed_dim)
    table = task.table_for(size, args)
    stem = task.out_stem(size, args) if task.out_stem else table
    from reproduce.driver import results_path
    out = results_path(args.out, stem, args.scale)  # smoke: outputs/results/, like the reproduce scripts
    out = out if args.out is not None else REPO / out
    task.configure_data(cfg, data_root)
    cfg.work_dir = str(work_dir)
    cfg.launcher = args.launcher
    cfg.randomness = dict(seed=args.seed)
    if args.resume:
        cfg.resume = True
    resolved = resolve_recipe(cfg, task, args, size)
    if args.cfg_options:
        from mmengine.config import DictAction
        opts = argparse.ArgumentParser()
        opts.add_argument("--o", nargs="+", action=DictAction)
        cfg.merge_from_dict(opts.parse_args(["--o", *args.cfg_options]).o)

    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0:
        print(resolved.describe(), flush=True)
    if args.dry_run:
        return resolved
    if not resolved.fits and args.scale == "paper":
        from downstream.plan import BatchPlanError
        raise BatchPlanError(f"the estimated {resolved.memory.total_gb:.1f} GB per GPU at per-GPU batch 1 does not fit "
                             f"--gpu-mem-gb {args.gpu_mem_gb:g} (rough model, downstream/memory.py); use more GPUs, "
                             "--act-checkpoint on, or raise --gpu-mem-gb if the GPUs have more memory")
    metrics = train_and_evaluate(cfg)
    if not rank0:
        return None
    return write_comparison(task, metrics, size, args, resolved, table, work_dir, out)


#: the paper's ViTs (width, depth) per recipe size; any other encoder is not the paper's model
PAPER_VITS = {"base": (768, 12), "large": (1024, 24), "huge": (1280, 32)}
NOT_PAPER = "n/a: not the paper's model"


def not_paper_model(ckpt: str, size: str, num_heads: int | None = None) -> str | None:
    """None when ``ckpt`` holds the paper's ViT of ``size``; else the name of the ViT it holds (its preset in
    mae.models.vit, e.g. ``vit_smoke``), under which its row is written."""
    from downstream.backbone import backbone_info
    from mae.models.vit import PRESETS

    arch = backbone_info(ckpt, num_heads=num_heads)
    if PAPER_VITS.get(size) == (arch.embed_dim, arch.depth):
        return None
    shape = (arch.embed_dim, arch.depth, arch.patch_size)
    hits = [n for n, c in PRESETS.items() if (c.embed_dim, c.depth, c.patch_size) == shape]
    return hits[0] if hits else f"vit_w{arch.embed_dim}_d{arch.depth}_p{arch.patch_size}"


def write_comparison(task: Task, metrics: dict[str, float], size: str, args: argparse.Namespace, resolved: Resolved,
                     table: str, work_dir: Path, out: Path) -> pd.DataFrame:
    """Our numbers beside the paper's (``reproduce.report``): CSV + ``.meta.json`` sidecar, printed too."""
    from reproduce.report import compare, format_table, provenance, verdict, write_results
    model = not_paper_model(args.ckpt, size, getattr(args, "num_heads", None))
    # a model that is not the paper's ViT of that size gets a row of its own, never the paper's MAE row
    key = task.row_key(table) if model is None else f"{task.row_key(table)}_{model}"
    ours = pd.DataFrame([{"method": key, **task.ours(metrics, size), "backbone": size,
                          "ckpt": str(args.ckpt), **resolved.row(), "work_dir": str(work_dir)}])
    df = compare(table, ours, scale=args.scale, prov=provenance())
    if model is not None:  # compare() found no paper row for it: no paper number, no difference
        df.loc[df["method"] == key, "label"] = f"MAE, {model} ({NOT_PAPER})"
    for col in ("iters", "world_size", "per_gpu_batch", "accumulation", "effective_batch"):
        df[f"{col}_ours"] = df[f"{col}_ours"].astype("Int64")  # the outer join with the paper's rows made them float
    verdicts = verdict(df, table)
    write_results(df, verdicts, out)
    print(format_table(df, verdicts, title=f"[{task.name}] {table} -> {out}"))
    return df
