"""Reproduction scripts for the MAE paper's tables and figures, and their shared results layer.

- ``reproduce.reference``: the paper's numbers (``reference/*.csv``) and a registry saying which
  setting key and metrics each table/figure has.
- ``reproduce.report``: provenance, ours-vs-paper comparison, verdicts, atomic results writing.
- ``reproduce.plots``: regenerates every figure from ``results/*.csv`` and the reference CSVs.
"""
