"""ADE20K semantic segmentation with an MAE encoder: paper Table 5.

UperNet (+ auxiliary FCN head) on the ViT, trained with mmseg 1.2.2 through an mmengine Runner and
evaluated by mmseg's IoUMetric: mIoU over the 150 classes. Schedules (``--schedule``): ``paper``
(default; Appendix A.4: 100 epochs at batch 16 over ADE20K's 20,210 training images = 126,312
optimizer steps) or ``mmseg160k`` (mmseg's MAE config: 160,000 steps at batch 16). The effective
batch is 16 on any number of GPUs (downstream/plan.py, gradient accumulation where needed); the
resolved recipe and the estimated memory per GPU are printed first, and ``--dry-run`` stops there.

    python downstream/ade20k_seg.py --ckpt PATH [--data ADE_ROOT] --scale smoke|paper [--schedule paper|mmseg160k]
        [--work-dir DIR] [--out CSV] [--world-size N] [--dry-run]

ADE_ROOT is ``ADEChallengeData2016`` (``images/{training,validation}/*.jpg``,
``annotations/{training,validation}/*.png``). With ``--scale smoke`` and no ``--data`` a tiny fixture
is generated into ``<work-dir>/data``. Results go to ``results/table5_ade20k_<scale>.csv`` (``outputs/results/``
at the smoke scale) beside the paper's numbers, written by ``reproduce.report``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from downstream.checks import check_ade20k
from downstream.runner import Task, main

# Which reference columns a run fills (reproduce/reference/table5_ade20k.csv). A smoke model has no
# paper row: its numbers sit in the ViT-B column, and the CSV's scale column says "smoke".
SUFFIX = {"base": "vit_base", "large": "vit_large"}

def prepare_data(args: argparse.Namespace, work_dir: Path) -> Path:
    """The dataset root, checked (generated first for a smoke run without --data)."""
    if args.data:
        root = Path(args.data).resolve()
    else:
        from downstream.fixtures import make_ade20k_fixture
        root = make_ade20k_fixture(work_dir / "data" / "ADEChallengeData2016")
    for split in ("training", "validation"):
        check_ade20k(root, split)
    return root


def configure_data(cfg: Any, root: Path) -> None:
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = str(root)


def wire_channels(cfg: Any, width: int) -> None:
    cfg.model.decode_head.in_channels = [width] * 4
    cfg.model.auxiliary_head.in_channels = width


def table_for(size: str, args: argparse.Namespace) -> str:
    return "table5_ade20k"


def set_schedule(cfg: Any, steps: int) -> None:
    """BEiT's / mmseg's schedule in optimizer steps: linear warmup, then poly (power 1) decay to 0."""
    r = cfg.recipe
    warm = min(int(r.warmup_iters), steps)
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=r.warmup_factor, by_epoch=False, begin=0, end=warm)]
    if warm < steps:
        cfg.param_scheduler.append(
            dict(type='PolyLR', eta_min=0.0, power=1.0, begin=warm, end=steps, by_epoch=False))


def ours(metrics: dict[str, float], size: str) -> dict[str, float]:
    """IoUMetric reports mIoU in percent, as the paper."""
    if "mIoU" not in metrics:
        raise RuntimeError(f"the ADE20K evaluation returned no mIoU; got {sorted(metrics)}")
    return {f"miou_{SUFFIX.get(size, 'vit_base')}": round(metrics["mIoU"], 2)}


TASK = Task(name="ade20k_seg", config_stem="ade20k_upernet", prepare_data=prepare_data,
            configure_data=configure_data, wire_channels=wire_channels, table_for=table_for, ours=ours,
            set_schedule=set_schedule)


def run(argv: list[str] | None = None) -> Any:
    return main(TASK, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    from downstream.runner import cli
    raise SystemExit(cli(TASK, description=__doc__.splitlines()[0]))
