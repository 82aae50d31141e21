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


def test_rows_carry_best_settings_outcome_interval_and_margin(tmp_path):
    res = tmp_path / "results"
    rows = [{"mask_ratio": 0.5, "lin_ours": 80.0, "lin_paper": None, "lin_margin_ours": None, "n_seeds_ours": 1},
            {"mask_ratio": 0.75, "lin_ours": 81.0, "lin_paper": 73.5, "lin_margin_ours": 12.34,
             "lin_margin_std_ours": 0.56, "lin_seeds_ours": "0:80.5;1:81.0;2:81.5", "n_seeds_ours": 3,
             "lin_vs_pixels_ours": -3.0, "paper_baseline": 1},
            {"mask_ratio": 0.9, "lin_ours": None, "lin_paper": None, "n_seeds_ours": 1}]
    # the meta's old verdict is not trusted: the scoreboard recomputes it from the CSV
    _write(res, {"lin": {"best_paper": [0.75], "best_ours": [0.5], "outcome": "mismatch"}}, rows)
    (res / "benchmark.meta.json").write_text(json.dumps({"csv": "benchmark.csv", "scale": "cpu"}))  # not a table
    recs = summary.collect(res)
    assert len(recs) == 1
    r = recs[0]
    assert (r["paper_best"], r["ours_best"], r["outcome"]) == ("0.75", "0.75", "match, not resolved")
    assert r["interval"].startswith("+1.0 [") and r["interval"].endswith("(vs 0.5)")
    assert (r["measured"], r["rows"], r["seeds"], r["margin"], r["vs_pixels"]) == (2, 3, "1-3", "12.3 +- 0.6", "-3.0")
    assert r["figure"] == ""
    (res / "figures").mkdir()
    (res / "figures" / "fig5_masking_ratio_cpu.png").write_bytes(b"png")
    text = summary.render(summary.collect(res))
    assert "## Scale `cpu`" in text and "1 comparison(s): 0 match, 1 match, not resolved, 0 tie" in text
    assert "[figure](figures/fig5_masking_ratio_cpu.png)" in text


def test_check_fails_when_stale_and_passes_after_regeneration(tmp_path, capsys):
    res = tmp_path / "results"
    shutil.copytree(ROOT / "results", res)
    assert summary.main(["--results", str(res), "--check"]) == 0
    (res / "README.md").write_text("old\n")
    assert summary.main(["--results", str(res), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert summary.main(["--results", str(res)]) == 0
    assert summary.main(["--results", str(res), "--check"]) == 0


def test_every_setting_row_says_which_readouts_resolve_it_or_that_none_does():
    """Issue: a setting that no readout resolves is stated as the result, with the seeds that would."""
    def rec(metric, settings):
        return {"table": "fig5_masking_ratio", "metric": metric, "key": "mask_ratio", "baseline": 0.75,
                "settings": settings}
    worse = {"delta": -8.5, "lo": -13.6, "hi": -3.4, "n": 3, "call": "worse", "seeds_needed": 4}
    equal = {"delta": 0.1, "lo": -0.9, "hi": 1.1, "n": 3, "call": "equal within +-2", "seeds_needed": 3}
    unres = {"delta": -1.3, "lo": -6.0, "hi": 3.4, "n": 3, "call": "unresolved", "seeds_needed": 9}
    unres_knn = {**unres, "seeds_needed": 6}
    lines = summary.settings_table([rec("ft", {"0.9": worse, "0.1": unres, "0.5": equal}),
                                    rec("knn", {"0.9": unres, "0.1": unres_knn, "0.5": unres})])
    header = next(line for line in lines if line.startswith("| table"))
    assert header.split(" | ")[3:5] == ["ft", "knn"]  # only the metrics measured, in the fixed order
    row = {line.split(" | ")[1]: line for line in lines if line.startswith("| `fig5")}
    assert row["mask_ratio=0.9 (vs 0.75)"].endswith("| **-8.5 worse** | -1.3 ? | ft worse |")
    assert row["mask_ratio=0.5 (vs 0.75)"].endswith("| +0.1 = | -1.3 ? | equal within +-2 on ft |")
    assert row["mask_ratio=0.1 (vs 0.75)"].endswith(
        "| none: no readout resolves it at these seeds; 6 paired seeds would resolve 2 points on knn |")
    assert summary.settings_table([rec("ft", {})]) == []


def test_the_scoreboard_names_the_value_run_beside_the_papers():
    """A setting named by the paper's value carries the value run at its scale where they differ."""
    from reproduce.summary import _fmt_keys
    assert _fmt_keys([0.1, 0.75], {"0.1": "12.5%"}) == "0.1 (run: 12.5%), 0.75"
    assert _fmt_keys(["4.0"], {"4": "2"}) == "4.0 (run: 2)" and _fmt_keys([], {}) == "-"
