"""The grid runner behind every reproduction script (one code path for Tables 1-3 and Figs. 5, 7, 9).

A table is a list of :class:`Cell` s (one setting each, e.g. ``decoder_depth=8``); a cell is a chain of
:class:`Stage` s (pretrain -> finetune / linprobe / readout / partial), each a protocol ``Config``. Every
stage gets its own run directory::

    <work_dir>/<table>_<scale>/<cell>/<stage>/   identity.json, config.yaml, log.txt, train_log.csv,
                                                 checkpoint-last.pth, metrics.json (when finished)

A run reads plan -> launch -> collect, one module each:

- ``model``: cells, stages, inputs (``Ref``: a file of another stage) and results;
- ``store``: run directories, a stage's identity (its resolved config and its inputs' identities) and
  status: a finished stage is reused only under the same identity and while its folder still ran that
  recipe (config.yaml, recipe_changes.jsonl); a changed or unknown one is refused (``--rerun-changed``
  keeps it aside and reruns, ``--adopt`` records pre-identity runs that match);
- ``plan``: ``--only`` selection, checks, ``--set`` overrides, paired seeds, the ``--dry-run`` text;
- ``launch``: one stage in this process, under torchrun, or one SLURM job per cell, under its folder's lock
  (the one the ``mae`` command line takes, so two processes never run one stage) and a shared lock on the
  folders it reads (nothing moves or reruns them meanwhile);
- ``runner``: the loop over cells (and ``--collect``, which only reads);
- ``columns``: metrics, controls and seed aggregation into table rows.

The script driver (flags, CSVs) is ``reproduce/driver.py``; the verdicts ``reproduce/report.py``.
"""
from reproduce.grid.columns import (READOUT_COLUMNS, acc, aggregate_seeds, cell_rows, readout_columns, stage_commits,
                                    stage_provenance, standard_columns, train_seconds)
from reproduce.grid.errors import (DEFAULT_WORK_DIR, LAST_CHECKPOINT, LAUNCHERS, MAE_PROTOCOLS, METRICS_FILE, GridError,
                                   resolve_data)
from reproduce.grid.launch import CellJob, execute_stage, protocol_module, stage_command, stage_lock
from reproduce.grid.model import Cell, GridResult, Ref, SlurmOptions, Stage, StageResult
from reproduce.grid.plan import (apply_overrides, check_grid, derive_controls, describe_plan, only_text, parse_only,
                                 parse_seeds, parse_set, select_cells, seeded_name, with_seeds)
from reproduce.grid.runner import collect, reconcile, run_grid
from reproduce.grid.store import (IDENTITY_FILE, check_identity, grid_root, planned_identity, read_identity,
                                  read_metrics, ref_path, resolve_stage_config, stage_dir, stage_status)

__all__ = [n for n in dir() if not n.startswith("_")]
