"""COCO object detection and instance segmentation with an MAE encoder: paper Table 4.

Mask R-CNN + FPN on the ViT (simple feature pyramid, Appendix A.3), trained with mmdet 3.3 through
an mmengine Runner and evaluated by the COCO evaluator (pycocotools): box AP and mask AP.

    python downstream/coco_det.py --ckpt PATH [--data COCO_ROOT] --scale smoke|paper [--work-dir DIR] [--out CSV]

COCO_ROOT holds ``annotations/instances_{train,val}2017.json`` and ``{train,val}2017/``. With
``--scale smoke`` and no ``--data`` a tiny fixture is generated into ``<work-dir>/data``.
Results go to ``results/table4_coco_<scale>.csv`` (ViT-H: ``followup_vitdet_coco_<scale>.csv``) beside
the paper's numbers, written by ``reproduce.report``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from downstream.checks import check_coco  # noqa: E402
from downstream.runner import Task, main  # noqa: E402

TRAIN_ANN, TRAIN_IMG = "annotations/instances_train2017.json", "train2017"
VAL_ANN, VAL_IMG = "annotations/instances_val2017.json", "val2017"

# Which reference columns a run fills (reproduce/reference/table4_coco.csv): Table 4 has ViT-B and
# ViT-L; ViT-H is compared with the ViTDet follow-up (followup_vitdet_coco.csv). A smoke model has no
# paper row: its numbers sit in the ViT-B columns, and the CSV's scale column says "smoke".
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


def wire_channels(cfg: Any, width: int) -> None:
    cfg.model.neck.in_channels = [width] * 4


def table_for(size: str) -> str:
    return "followup_vitdet_coco" if size == "huge" else "table4_coco"


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
            wire_channels=wire_channels, table_for=table_for, ours=ours)


def run(argv: list[str] | None = None) -> Any:
    return main(TASK, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    from downstream.runner import cli
    raise SystemExit(cli(TASK, description=__doc__.splitlines()[0]))
