"""Figure 7 of MAE: the pre-training schedule (100 to 1600 epochs), fine-tuned (ft) and linear-probed (lin).

    python reproduce/fig7.py --scale smoke
    python reproduce/fig7.py --scale mini                  # 6, 12, 25, 50, 100 epochs of a tiny ViT
    python reproduce/fig7.py --scale paper --data /path/to/imagenet --launcher slurm

One cell per schedule length of the paper (the key column keeps the paper's epochs; the epochs
actually run at this scale are in ``epochs_used_ours``). The warm-up is the baseline's, capped at 40%
of short schedules (the paper: 40 warm-up epochs, also for 100). Results: <out>/fig7_schedule_<scale>.csv,
with the paper's plotted points (approx) and the independent mmselfsup reproduction beside ours.
Each schedule has its own scratch control (``ft_scratch``): the fine-tuning recipe from random weights for
that schedule's pre-training + fine-tuning epochs, so a longer schedule is never credited for training longer.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from reproduce.grid import Cell, GridResult, cell_rows, standard_columns
from reproduce.driver import Report, TableJob, script_main
from reproduce.scales import (ABLATIONS_ROOT, Scale, is_baseline, pretrain_eval_cell, scratch_control,
                              with_shared_baseline)

TABLE = "fig7_schedule"


def build_cells(scale: Scale) -> list[Cell]:
    from reproduce.reference import load_reference
    cells = []
    for paper_epochs in load_reference(TABLE)["epochs"].tolist():
        ours = scale.schedule[int(paper_epochs)]
        pre = replace(scale.pretrain, epochs=ours, warmup_epochs=scale.warmup_for(ours))
        cell = pretrain_eval_cell(scale, f"epochs_{paper_epochs}", {"epochs": int(paper_epochs)}, pre,
                                  info={"epochs_used": ours})
        if not is_baseline(scale, cell):  # the baseline's own controls come with the shared baseline
            cell.stages.append(scratch_control(scale.finetune, ours))
        cells.append(cell)
    return cells


def rows(grid: GridResult) -> list[dict[str, Any]]:
    return cell_rows(grid, standard_columns)


def build_jobs(args: Any, scale: Scale) -> list[TableJob]:
    return [TableJob(TABLE, with_shared_baseline(scale, build_cells(scale)),
                     [Report(TABLE, rows, "Figure 7: training schedules")], scale.notes, root_name=ABLATIONS_ROOT)]


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, build_jobs, argv)


if __name__ == "__main__":
    raise SystemExit(main())
