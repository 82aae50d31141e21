"""COCO object detection and instance segmentation with an MAE encoder: paper Table 4.

Mask R-CNN on the ViT (Appendix A.3), trained with mmdet 3.3 through an mmengine Runner and evaluated
by the COCO evaluator (pycocotools): box AP and mask AP. Two feature pyramids (``--pyramid``):

* ``paper`` (default) -- the paper's design: the ViT's blocks in 4 equal subsets, the intermediate
  map of each subset's last block (d/4, d/2, 3d/4, d) up/down-sampled to strides 4 / 8 / 16 / 32
  (transposed convs with BatchNorm + GELU, identity, max-pool; following Li et al. 2021), then FPN
  and the standard Mask R-CNN heads;
* ``vitdet`` -- ViTDet's simple feature pyramid from the last map alone (LayerNorm in the pyramid,
  no FPN) with ViTDet's heads (2-conv RPN head, 4-conv + 1-fc box head and 4-conv mask head with
  LayerNorm); compared with the ViTDet follow-up's numbers (reproduce/reference/followup_vitdet_coco.csv).

Both use window attention with 4 global blocks and relative position biases, LSJ at 1024x1024, test
images resized to fit 1024 and padded to the 1024x1024 training square (so the position tables see
the training grid), effective batch 64 on any number of GPUs (downstream/plan.py) for 100 epochs
(ViT-B / L) or 75 (ViT-H)::

    python downstream/coco_det.py --ckpt PATH [--data COCO_ROOT] --scale smoke|paper [--pyramid paper|vitdet]
        [--work-dir DIR] [--out CSV] [--world-size N] [--dry-run]
    torchrun --nproc_per_node 8 downstream/coco_det.py --launcher pytorch --scale paper --ckpt PATH --data COCO_ROOT

COCO_ROOT holds ``annotations/instances_{train,val}2017.json`` and ``{train,val}2017/``. With
``--scale smoke`` and no ``--data`` a tiny fixture is generated into ``<work-dir>/data``. The resolved
recipe (world size, per-GPU batch, accumulation, steps, epochs, estimated memory per GPU) is printed
before training; ``--dry-run`` stops there. Results go to ``results/table4_coco_<scale>.csv`` (ViT-H,
or the vitdet pyramid: ``followup_vitdet_coco[_vitdet]_<scale>.csv``; ``outputs/results/`` at the smoke scale)
beside the paper's numbers,
written by ``reproduce.report``; the row records the pyramid.
"""
from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path
from typing import Any

from downstream.checks import check_coco
from downstream.runner import Task, main

TRAIN_ANN, TRAIN_IMG = "annotations/instances_train2017.json", "train2017"
VAL_ANN, VAL_IMG = "annotations/instances_val2017.json", "val2017"

# Which reference columns a run fills (reproduce/reference/table4_coco.csv): Table 4 has ViT-B and
# ViT-L; ViT-H and the vitdet pyramid are compared with the ViTDet follow-up (followup_vitdet_coco.csv).
# The paper has no ViT-H number: a ViT-H run with the paper's pyramid sits beside the follow-up's
# simple-pyramid numbers (its row's ``pyramid`` column says paper); like for like is --pyramid vitdet.
# A smoke model has no paper row: its numbers sit in the ViT-B columns, and the CSV's scale column
# says "smoke".
SUFFIX = {"base": "vit_base", "large": "vit_large", "huge": "vit_huge"}

def prepare_data(args: argparse.Namespace, work_dir: Path) -> Path:
    """The dataset root, checked (generated first for a smoke run without --data)."""
    if args.data:
        root = Path(args.data).resolve()
    else:
        from downstream.fixtures import make_coco_fixture
        root = make_coco_fixture(work_dir / "data" / "coco")
    check_coco(root, TRAIN_ANN, TRAIN_IMG)
    check_coco(root, VAL_ANN, VAL_IMG)
    return root


def configure_data(cfg: Any, root: Path) -> None:
    """Point loaders and evaluator at ``root``; classes and head widths follow its categories."""
    classes = tuple(check_coco(root, TRAIN_ANN, TRAIN_IMG))
    data_root = str(root) + "/"
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        ds = loader.dataset
        ds.data_root = data_root
        ds.metainfo = dict(classes=classes)
    cfg.val_evaluator.ann_file = data_root + VAL_ANN
    cfg.test_evaluator.ann_file = data_root + VAL_ANN
    cfg.model.roi_head.bbox_head.num_classes = len(classes)
    cfg.model.roi_head.mask_head.num_classes = len(classes)


PYRAMIDS = ("paper", "vitdet")
FOLLOWUP = "followup_vitdet_coco"


def wire_channels(cfg: Any, width: int) -> None:
    """Neck input widths: one per backbone level."""
    cfg.model.neck.in_channels = [width] * len(cfg.model.backbone.get("out_strides", [4, 8, 16, 32]))


def subset_ends(depth: int) -> list[int]:
    """The last block of each of 4 equal subsets of ``depth`` blocks (paper A.3): 12 -> [2, 5, 8, 11]."""
    return [max(0, math.ceil(depth * k / 4) - 1) for k in range(1, 5)]


def configure_pyramid(cfg: Any, name: str, depth: int, width: int) -> None:
    """Apply ``cfg.pyramids[name]`` (backbone levels, neck, RPN / box / mask head settings) for a ViT."""
    if name not in cfg.pyramids:
        raise ValueError(f"unknown pyramid {name!r}; the config defines {sorted(cfg.pyramids)}")
    spec = copy.deepcopy(cfg.pyramids[name])
    levels = spec.pop("levels")
    bb = cfg.model.backbone
    bb.update(spec.pop("backbone", {}))
    cfg.model.neck = spec.pop("neck")
    if levels == "subsets":
        bb.out_indices = subset_ends(depth)
    elif levels == "last":
        bb.out_indices, bb.out_strides = [-1], [bb.patch_size]
        cfg.model.neck.in_stride = bb.patch_size
    else:
        raise ValueError(f"pyramid {name!r}: levels must be 'subsets' or 'last', got {levels!r}")
    cfg.model.rpn_head.update(spec.pop("rpn_head", {}))
    cfg.model.roi_head.bbox_head.update(spec.pop("bbox_head", {}))
    cfg.model.roi_head.mask_head.update(spec.pop("mask_head", {}))
    if spec:
        raise ValueError(f"pyramid {name!r}: unknown keys {sorted(spec)}")
    wire_channels(cfg, width)


def configure_model(cfg: Any, args: argparse.Namespace, depth: int, width: int) -> None:
    configure_pyramid(cfg, args.pyramid, depth, width)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pyramid", default="paper", choices=PYRAMIDS,
                   help="paper: 4 block subsets + FPN (Appendix A.3); vitdet: ViTDet's simple pyramid and heads")


def table_for(size: str, args: argparse.Namespace) -> str:
    """Table 4 has ViT-B / L with the paper's design; ViTDet's pyramid (and ViT-H) compare with the follow-up."""
    return FOLLOWUP if size == "huge" or args.pyramid == "vitdet" else "table4_coco"


def out_stem(size: str, args: argparse.Namespace) -> str:
    table = table_for(size, args)
    return f"{table}_vitdet" if args.pyramid == "vitdet" else table


def row_key(table: str) -> str:
    return "mae_vitdet" if table == FOLLOWUP else "mae"


def set_schedule(cfg: Any, steps: int) -> None:
    """ViTDet's schedule in optimizer steps: linear warmup, then x0.1 at ``recipe.lr_steps`` fractions."""
    r = cfg.recipe
    milestones = [m for m in (round(f * steps) for f in r.lr_steps) if 0 < m < steps]
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=r.warmup_factor, by_epoch=False, begin=0, end=min(r.warmup_iters, steps)),
        dict(type='MultiStepLR', by_epoch=False, begin=0, end=steps, milestones=milestones, gamma=0.1),
    ]


def ours(metrics: dict[str, float], size: str) -> dict[str, float]:
    """CocoMetric reports AP in [0, 1]; the paper in percent."""
    suffix = SUFFIX.get(size, "vit_base")
    out = {}
    for name, key in (("ap_box", "coco/bbox_mAP"), ("ap_mask", "coco/segm_mAP")):
        if key not in metrics:
            raise RuntimeError(f"the COCO evaluation returned no {key}; got {sorted(metrics)}")
        out[f"{name}_{suffix}"] = round(100.0 * metrics[key], 2)
    return out


TASK = Task(name="coco_det", config_stem="coco_mask_rcnn", prepare_data=prepare_data, configure_data=configure_data,
            wire_channels=wire_channels, table_for=table_for, ours=ours, set_schedule=set_schedule,
            add_arguments=add_arguments, configure_model=configure_model,
            row_fields=lambda args: {"pyramid": args.pyramid}, out_stem=out_stem, row_key=row_key)


def run(argv: list[str] | None = None) -> Any:
    return main(TASK, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    from downstream.runner import cli
    raise SystemExit(cli(TASK, description=__doc__.splitlines()[0]))
