"""Figure 9 of MAE: partial fine-tuning, from 0 blocks (linear probing) to all blocks (full fine-tuning).

    python reproduce/fig9.py --scale smoke
    python reproduce/fig9.py --scale mini                  # a 12-block tiny ViT
    python reproduce/fig9.py --scale paper --data /path/to/imagenet

One pre-training (the Table 1 baseline of the scale, a helper cell shared by every row), then per row:
0 blocks = the linear probe (as in the paper), 0.5 = only the MLP sub-block of the last block, k blocks =
the last k blocks + final norm + head (mae/protocols/partial.py), all blocks = end-to-end fine-tuning.
Rows 0 and "all" read the baseline's own probe and fine-tune (run once, for Table 1 and here). With
``--seeds``, seed s of every row starts from the baseline's seed-s pre-training (paired seeds). The key
column keeps the paper's block counts (of ViT-L's 24); at smaller scales the same fraction of the
encoder's blocks is tuned (``tuned_blocks_used_ours``).
Results: <out>/fig9_partial_ft_<scale>.csv.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from reproduce.grid import Cell, GridResult, Ref, Stage, acc, cell_rows, train_seconds
from reproduce.driver import Report, TableJob, script_main
from reproduce.scales import ABLATIONS_ROOT, BASELINE_CELL, Scale

TABLE = "fig9_partial_ft"
PRETRAIN_CELL = BASELINE_CELL  # the baseline's pre-training, shared with Table 1 and Fig. 7


def build_cells(scale: Scale) -> list[Cell]:
    """The baseline cell (pre-training, linear probe, fine-tuning: the same runs as Table 1's baseline, with
    its seeds), then one cell per row; rows 0 and "all blocks" read the baseline's probe / fine-tune, not a rerun."""
    from reproduce.reference import load_reference
    paper_keys = [float(k) for k in load_reference(TABLE)["tuned_blocks"].tolist()]
    full = max(paper_keys)
    src = {"finetune": Ref("pretrain")}
    cells = [Cell(PRETRAIN_CELL, {}, [Stage("pretrain", "pretrain", scale.pretrain),
                                      Stage("linprobe", "linprobe", scale.linprobe, inputs=src),
                                      Stage("finetune", "finetune", scale.finetune, inputs=src)],
                  report=False, seeds=tuple(scale.seeds))]
    src = {"finetune": Ref("pretrain", cell=PRETRAIN_CELL)}
    for k in paper_keys:
        ours = scale.partial_blocks[k]
        key = int(k) if k == int(k) else k
        name = f"tuned_blocks_{key}"
        if k in (0, full):
            protocol = "linprobe" if k == 0 else "finetune"
            cells.append(Cell(name, {"tuned_blocks": key}, [], reads=Ref(protocol, cell=PRETRAIN_CELL),
                              info={"tuned_blocks_used": ours, "protocol_used": protocol}))
            continue
        stage = Stage("partial", "partial", replace(scale.partial, tune_blocks=float(ours)), inputs=src)
        cells.append(Cell(name, {"tuned_blocks": key}, [stage],
                          info={"tuned_blocks_used": ours, "protocol_used": stage.protocol}))
    return cells


def columns(cell: Cell, grid: GridResult) -> dict[str, Any]:
    r = grid.reported(cell)
    return {"ft": acc(r), "ft_best": acc(r, "best"), "time_s": train_seconds(r)}


def rows(grid: GridResult) -> list[dict[str, Any]]:
    """One row per reported cell (with the provenance its stage wrote when it ran)."""
    return cell_rows(grid, columns)


def build_jobs(args: Any, scale: Scale) -> list[TableJob]:
    notes = scale.notes + ("0 blocks is the linear probe (BatchNorm + linear head, LARS) as in the paper; "
                           "the others use the fine-tuning recipe",)
    return [TableJob(TABLE, build_cells(scale), [Report(TABLE, rows, "Figure 9: partial fine-tuning")], notes,
                     root_name=ABLATIONS_ROOT)]


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, build_jobs, argv)


if __name__ == "__main__":
    raise SystemExit(main())
