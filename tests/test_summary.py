"""reproduce/summary.py: the results/README.md scoreboard, and that the committed one is up to date."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from reproduce import summary

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_scoreboard_is_up_to_date():
    assert summary.is_current(ROOT / "results"), "results/README.md is stale: run python reproduce/summary.py"


def _write(results: Path, verdicts: dict, rows: list[dict]) -> None:
    results.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(results / "fig5_masking_ratio_cpu.csv", index=False)
    meta = {"csv": "fig5_masking_ratio_cpu.csv", "scale": "cpu", "provenance": {"commit": "abc1234", "device": "cpu"},
            "verdicts": verdicts}
    (results / "fig5_masking_ratio_cpu.meta.json").write_text(json.dumps(meta))


def test_rows_carry_best_settings_ties_outcome_and_margin(tmp_path):
    res = tmp_path / "results"
    rows = [{"mask_ratio": 0.5, "lin_ours": 80.0, "lin_margin_ours": None, "n_seeds_ours": 1},
            {"mask_ratio": 0.75, "lin_ours": 81.0, "lin_margin_ours": 12.34, "lin_margin_std_ours": 0.56,
             "n_seeds_ours": 3},
            {"mask_ratio": 0.9, "lin_ours": None, "n_seeds_ours": 1}]
    _write(res, {"lin": {"best_paper": [0.75], "best_ours": [0.75], "ties_ours": [0.5, 0.75], "outcome": "match",
                         "spearman": 0.5, "n": 2, "seed_std": 0.7}}, rows)
    (res / "benchmark.meta.json").write_text(json.dumps({"csv": "benchmark.csv", "scale": "cpu"}))  # not a table
    recs = summary.collect(res)
    assert len(recs) == 1
    r = recs[0]
    assert (r["paper_best"], r["ours_best"], r["ties"], r["outcome"]) == ("0.75", "0.75", "0.5", "match")
    assert (r["measured"], r["rows"], r["seeds"], r["margin"], r["spearman"]) == (2, 3, "3", "12.3 +- 0.6", "0.50")
    assert r["figure"] == ""
    (res / "figures").mkdir()
    (res / "figures" / "fig5_masking_ratio_cpu.png").write_bytes(b"png")
    text = summary.render(summary.collect(res))
    assert "## Scale `cpu`" in text and "1 comparison(s): 1 match, 0 tie, 0 mismatch, 0 undecided." in text
    assert "[figure](figures/fig5_masking_ratio_cpu.png)" in text and "abc1234 (cpu)" in text


def test_check_fails_when_stale_and_passes_after_regeneration(tmp_path, capsys):
    res = tmp_path / "results"
    shutil.copytree(ROOT / "results", res)
    assert summary.main(["--results", str(res), "--check"]) == 0
    (res / "README.md").write_text("old\n")
    assert summary.main(["--results", str(res), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert summary.main(["--results", str(res)]) == 0
    assert summary.main(["--results", str(res), "--check"]) == 0
