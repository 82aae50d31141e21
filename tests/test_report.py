"""Ours-vs-paper comparison, verdicts, provenance and atomic results writing.

Every "ours" frame below is FABRICATED inside the test to exercise the code; none is a result.
"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reproduce import report
from reproduce.reference import load_reference
from reproduce.report import compare, format_table, provenance, spearman, verdict, write_results

PROV = {"commit": "abc1234", "device": "cpu", "date": "2030-01-01T00:00:00+00:00", "command": "pytest"}


def fabricated_depth(values: dict[int, tuple[float, float]]) -> pd.DataFrame:
    """A made-up 'ours' frame for Table 1a: decoder_depth -> (ft, lin)."""
    return pd.DataFrame({"decoder_depth": list(values), "ft": [v[0] for v in values.values()],
                         "lin": [v[1] for v in values.values()]})


# ---------------------------------------------------------------------------------- compare
def test_compare_columns_and_diffs():
    ours = fabricated_depth({8: (50.0, 30.0), 1: (40.0, 20.0)})
    ours["time_h"] = [0.1, 0.2]
    df = compare("table1a_decoder_depth", ours, "smoke", PROV)
    assert list(df.columns) == ["decoder_depth", "label", "ft_ours", "ft_paper", "ft_diff",
                                "lin_ours", "lin_paper", "lin_diff", "paper_approx", "paper_baseline",
                                "time_h_ours", "scale", "commit", "device", "date", "command"]
    assert df["decoder_depth"].tolist() == [1, 2, 4, 8, 12]  # paper order, all paper rows kept
    r8 = df.set_index("decoder_depth").loc[8]
    assert (r8["ft_ours"], r8["ft_paper"], r8["lin_paper"]) == (50.0, 84.9, 73.5)
    assert r8["ft_diff"] == pytest.approx(50.0 - 84.9)
    assert r8["lin_diff"] == pytest.approx(30.0 - 73.5)
    assert r8["time_h_ours"] == 0.1 and r8["paper_baseline"] == 1
    r2 = df.set_index("decoder_depth").loc[2]
    assert math.isnan(r2["ft_ours"]) and r2["ft_paper"] == 84.9 and math.isnan(r2["ft_diff"])
    assert (df["scale"] == "smoke").all() and (df["commit"] == "abc1234").all()
    assert (df["command"] == "pytest").all() and (df["device"] == "cpu").all()


def test_compare_never_labels_ours_as_paper():
    ours = fabricated_depth({8: (11.0, 12.0), 4: (13.0, 14.0), 1: (15.0, 16.0)})
    df = compare("table1a_decoder_depth", ours, "smoke", PROV)
    paper_cols = [c for c in df.columns if c.endswith("_paper")]
    ours_vals = {11.0, 12.0, 13.0, 14.0, 15.0, 16.0}
    for c in paper_cols:
        assert not (set(df[c].dropna()) & ours_vals), c
    with pytest.raises(ValueError, match="reserved"):
        compare("table1a_decoder_depth", ours.assign(ft_paper=1.0), "smoke", PROV)


def test_compare_keeps_settings_the_paper_lacks_and_matches_numeric_keys():
    ours = pd.DataFrame({"mask_ratio": [0.65, "0.75"], "lin": [35.0, 40.0]})  # '0.75' as text on purpose
    df = compare("fig5_masking_ratio", ours, "mini", PROV)
    assert "ft_ours" not in df.columns  # only the metrics we measured
    assert df["mask_ratio"].tolist()[-1] == 0.65  # ours-only setting last
    r = df.set_index("mask_ratio")
    assert r.loc[0.75, "lin_ours"] == 40.0 and r.loc[0.75, "lin_paper"] == 73.5
    assert math.isnan(r.loc[0.65, "lin_paper"]) and r.loc[0.65, "label"] == ""
    assert len(df) == len(load_reference("fig5_masking_ratio")) + 1


def test_compare_carries_secondary_reference_separately():
    ours = pd.DataFrame({"epochs": [400, 800], "ft": [70.0, 71.0]})
    df = compare("fig7_schedule", ours, "mini", PROV).set_index("epochs")
    assert df.loc[800, "ft_paper"] == 84.9 and df.loc[800, "ft_mmselfsup"] == 85.4
    assert math.isnan(df.loc[400, "ft_paper"]) and df.loc[400, "ft_mmselfsup"] == 85.2
    assert "lin_mmselfsup" not in df.columns


@pytest.mark.parametrize("ours,match", [
    (pd.DataFrame({"depth": [8], "ft": [1.0]}), "missing key column 'decoder_depth'"),
    (pd.DataFrame({"decoder_depth": [8], "acc": [1.0]}), "none of the metrics"),
    (pd.DataFrame({"decoder_depth": [8, 8], "ft": [1.0, 2.0]}), r"duplicate 'decoder_depth' values \[8\]"),
    (pd.DataFrame({"decoder_depth": ["eight"], "ft": [1.0]}), r"key values \['eight'\] are not numeric"),
    (pd.DataFrame({"decoder_depth": [8], "ft": ["high"]}), "metric 'ft' is not numeric"),
])
def test_compare_bad_input(ours, match):
    with pytest.raises(ValueError, match=match):
        compare("table1a_decoder_depth", ours, "smoke", PROV)


def test_compare_needs_provenance_and_metrics():
    ours = fabricated_depth({8: (1.0, 2.0)})
    with pytest.raises(ValueError, match=r"prov lacks \['commit'\]"):
        compare("table1a_decoder_depth", ours, "smoke", {"device": "cpu", "date": "x"})
    with pytest.raises(ValueError, match="settings-only"):
        compare("fig_reconstructions", pd.DataFrame({"panel": ["fig2"]}), "smoke", PROV)


# ---------------------------------------------------------------------------------- spearman
def test_spearman_hand_computed():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    # ties: ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4] -> r = 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(spearman([1, 2], [1, 2]))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_spearman_matches_scipy_when_available():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 12), rng.integers(0, 5, 12)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


# ----------------------------------------------------------------------------------- verdict
def test_verdict_perfect_and_reversed_ranking():
    # lin paper: 1:65.5 2:70.0 4:71.9 8:73.5 12:73.3 -> ranks 1 2 3 5 4
    same = fabricated_depth({1: (1.0, 10.0), 2: (2.0, 20.0), 4: (3.0, 30.0), 8: (4.0, 50.0), 12: (5.0, 40.0)})
    v = verdict(compare("table1a_decoder_depth", same, "smoke", PROV), "table1a_decoder_depth")
    assert v["lin"]["spearman"] == pytest.approx(1.0)
    assert v["lin"]["best_ours"] == [8] and v["lin"]["best_paper"] == [8] and v["lin"]["best_match"] is True
    assert v["lin"]["n"] == 5 and v["lin"]["scale"] == "smoke"
    rev = fabricated_depth({1: (1.0, 50.0), 2: (2.0, 40.0), 4: (3.0, 30.0), 8: (4.0, 10.0), 12: (5.0, 20.0)})
    v = verdict(compare("table1a_decoder_depth", rev, "smoke", PROV), "table1a_decoder_depth")
    assert v["lin"]["spearman"] == pytest.approx(-1.0)
    assert v["lin"]["best_ours"] == [1] and v["lin"]["best_match"] is False


def test_verdict_paper_ties_and_direction():
    # paper ft ties at 84.9 for depths 2, 4, 8: our best at 4 counts as a match
    ours = fabricated_depth({1: (80.0, 1.0), 4: (83.0, 2.0), 12: (79.0, 3.0)})
    v = verdict(compare("table1a_decoder_depth", ours, "smoke", PROV), "table1a_decoder_depth")
    assert v["ft"]["best_paper"] == [4] and v["ft"]["best_ours"] == [4]
    full = fabricated_depth({1: (80.0, 1.0), 2: (81.0, 2.0), 4: (83.0, 3.0), 8: (82.0, 4.0), 12: (79.0, 5.0)})
    v = verdict(compare("table1a_decoder_depth", full, "smoke", PROV), "table1a_decoder_depth")
    assert v["ft"]["best_paper"] == [2, 4, 8] and v["ft"]["best_match"] is True
    # lower is better for FLOPs: best = the w/o [M] encoder (1.0x)
    t1c = pd.DataFrame({"encoder_mask_token": ["with", "without"], "flops_rel": [3.0, 1.0]})
    v = verdict(compare("table1c_mask_token", t1c, "smoke", PROV), "table1c_mask_token")
    assert v["flops_rel"]["best_paper"] == ["without"] and v["flops_rel"]["best_ours"] == ["without"]
    assert v["flops_rel"]["best_match"] is True and v["flops_rel"]["higher_is_better"] is False


def test_verdict_too_few_points():
    ours = fabricated_depth({8: (1.0, 2.0), 1: (0.5, 1.0)})
    v = verdict(compare("table1a_decoder_depth", ours, "smoke", PROV), "table1a_decoder_depth")
    assert math.isnan(v["ft"]["spearman"]) and v["ft"]["n"] == 2
    assert "< 3" in v["ft"]["note"]
    assert v["lin"]["best_match"] is True  # lin: 8 beats 1 in both
    one = fabricated_depth({8: (1.0, 2.0)})
    v = verdict(compare("table1a_decoder_depth", one, "smoke", PROV), "table1a_decoder_depth")
    assert v["ft"]["best_match"] is None and v["ft"]["n"] == 1
    none = pd.DataFrame({"mask_ratio": [0.5], "ft": [1.0]})
    v = verdict(compare("fig5_masking_ratio", none, "smoke", PROV), "fig5_masking_ratio")
    assert v["ft"]["n"] == 0 and "no setting" in v["ft"]["note"]


def test_verdict_counts_approx_points_and_rejects_mixed_scales():
    ours = pd.DataFrame({"epochs": [100, 800], "ft": [1.0, 2.0]})
    df = compare("fig7_schedule", ours, "smoke", PROV)
    v = verdict(df, "fig7_schedule")
    assert v["ft"]["n"] == 1 and v["ft"]["n_approx"] == 0  # 100 ep has no paper number
    df.loc[0, "scale"] = "mini"
    with pytest.raises(ValueError, match="mix scales"):
        verdict(df, "fig7_schedule")


# ------------------------------------------------------------------------------------ writing
def test_write_results_csv_and_sidecar(tmp_path):
    ours = fabricated_depth({1: (1.0, 10.0), 4: (3.0, 30.0), 8: (4.0, 50.0)})
    df = compare("table1a_decoder_depth", ours, "smoke", PROV)
    v = verdict(df, "table1a_decoder_depth")
    csv, meta = write_results(df, v, tmp_path / "res" / "table1a_decoder_depth_smoke.csv")
    assert meta.name == "table1a_decoder_depth_smoke.meta.json"
    back = pd.read_csv(csv)
    assert list(back.columns) == list(df.columns) and len(back) == 5
    assert back.set_index("decoder_depth").loc[8, "ft_ours"] == 4.0
    m = json.loads(meta.read_text())  # strict JSON: NaN written as null
    assert m["provenance"]["commit"] == "abc1234" and m["scale"] == "smoke" and m["rows"] == 5
    assert m["verdicts"]["lin"]["best_ours"] == [8] and m["verdicts"]["lin"]["spearman"] == pytest.approx(1.0)
    assert [p.name for p in csv.parent.iterdir() if p.name.startswith(".")] == []


def test_write_results_is_atomic(tmp_path, monkeypatch):
    ours = fabricated_depth({8: (1.0, 2.0)})
    df = compare("table1a_decoder_depth", ours, "smoke", PROV)
    path = tmp_path / "table1a_decoder_depth_smoke.csv"
    path.write_text("previous contents\n")

    def boom(src, dst):
        raise OSError("disk full")

    from mae import atomic
    monkeypatch.setattr(atomic.os, "replace", boom)  # the one atomic writer (mae/atomic.py)
    with pytest.raises(OSError, match="disk full"):
        write_results(df, verdict(df, "table1a_decoder_depth"), path)
    assert path.read_text() == "previous contents\n"  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind


def test_write_results_bad_input(tmp_path):
    with pytest.raises(ValueError, match="must end in .csv"):
        write_results(pd.DataFrame(), {}, tmp_path / "x.txt")
    with pytest.raises(ValueError, match="lack provenance columns"):
        write_results(pd.DataFrame({"decoder_depth": [8]}), {}, tmp_path / "x.csv")


def test_format_table_shows_ours_paper_and_verdicts():
    ours = fabricated_depth({1: (1.0, 10.0), 4: (3.0, 30.0), 8: (4.0, 50.0)})
    df = compare("table1a_decoder_depth", ours, "smoke", PROV)
    text = format_table(df, verdict(df, "table1a_decoder_depth"), title="Table 1a")
    assert text.splitlines()[0] == "Table 1a"
    assert "scale=smoke" in text and "commit=abc1234" in text
    assert "ft_ours" in text and "ft_paper" in text and "84.90" in text
    # one seed each, no seed spread, no image count: our best is the paper's, but not resolved vs the runner-up
    assert "verdict lin: best ours=8 paper=8 -> match, not resolved; Spearman=+1.00 (n=3, scale=smoke)" in text
    assert "verdict ft: best ours=8 paper=4, 8 -> match, not resolved" in text


# --------------------------------------------------------------------------------- provenance
def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false",
                    *args], cwd=cwd, check=True, capture_output=True)


def test_provenance_fields_and_git_states(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    outside = tmp_path / "plain"
    outside.mkdir()
    p = provenance(command="python reproduce/table1.py --part a", device="cpu", repo=outside)
    assert p["commit"] == "unknown" and p["device"] == "cpu"
    assert p["command"] == "python reproduce/table1.py --part a"
    assert p["date"].endswith("+00:00") and "T" in p["date"]
    assert set(p) == {"commit", "device", "torch", "python", "date", "command"}
    host = socket.gethostname()
    if len(host) >= 6:
        assert host not in json.dumps(p)

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    assert report.git_commit(repo) == "unknown"  # no commit yet
    (repo / "f.txt").write_text("a\n")
    _git(repo, "add", "f.txt")
    _git(repo, "commit", "-q", "-m", "x")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert report.git_commit(repo) == head
    (repo / "new.txt").write_text("untracked files do not make the tree dirty\n")
    assert report.git_commit(repo) == head
    (repo / "results").mkdir()
    (repo / "results" / "t_cpu.csv").write_text("a\n")
    _git(repo, "add", "results/t_cpu.csv")
    _git(repo, "commit", "-q", "-m", "results")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    (repo / "results" / "t_cpu.csv").write_text("b\n")  # a grid rewriting its results: not a code change
    assert report.git_commit(repo) == head
    (repo / "f.txt").write_text("b\n")
    assert report.git_commit(repo) == f"{head}-dirty"


def test_provenance_defaults_detect_device_and_argv():
    p = provenance(repo=os.devnull)
    assert p["device"] == report.detect_device()
    assert p["command"]  # this process's argv


def test_verdict_all_tied_ours_is_not_a_match():
    """Near-chance smoke runs often tie everywhere: that must not count as matching the paper."""
    import pandas as pd

    from reproduce.report import compare, verdict
    ours = pd.DataFrame({"decoder_depth": [1, 2, 4, 8, 12], "ft": [10.0] * 5, "lin": [10.0] * 5})
    df = compare("table1a_decoder_depth", ours, "smoke", {"commit": "x", "device": "cpu", "date": "d", "command": "c"})
    v = verdict(df, "table1a_decoder_depth")
    assert v["lin"]["best_match"] is None and "tie" in v["lin"]["note"]


def _depth_rows(seeds12: list[float], seeds8: list[float]) -> "pd.DataFrame":
    """Table 1a results with paired seeds for depth 8 (the paper's baseline) and 12, one seed elsewhere."""
    ref = pd.read_csv(Path(__file__).resolve().parents[1] / "reproduce/reference/table1a_decoder_depth.csv")
    fmt = lambda vals: ";".join(f"{i}:{v}" for i, v in enumerate(vals))  # noqa: E731
    df = pd.DataFrame({"decoder_depth": ref["decoder_depth"], "ft_paper": ref["ft"],
                       "paper_baseline": ref["baseline"], "scale": "cpu",
                       "ft_ours": [70.0, 75.0, 80.0, sum(seeds8) / 3, sum(seeds12) / 3],
                       "ft_seeds_ours": ["0:70", "0:75", "0:80", fmt(seeds8), fmt(seeds12)],
                       "n_seeds_ours": [1, 1, 1, 3, 3]})
    return df


def test_an_outcome_is_resolved_only_in_the_direction_of_best():
    """Our best is chosen by its mean over all its seeds, the interval is paired over the seeds both rows
    have: when those say the opposite, the outcome is not called resolved (not a mismatch, not a match)."""
    from reproduce.report import verdict
    df = _depth_rows([88.0, 88.1, 88.9], [89.0, 89.0, 90.0])
    df.loc[4, "ft_seeds_ours"] = "0:88.0;1:88.1;2:88.9;3:99.0;4:99.0"  # depth 12: 5 seeds, best by its mean
    df.loc[4, "ft_ours"], df.loc[4, "n_seeds_ours"] = 92.6, 5
    v = verdict(df, "table1a_decoder_depth")["ft"]
    assert v["best_ours"] == [12] and v["best_vs_paper"]["call"] == "better"  # on seeds 0-2, 8 beats 12
    assert v["outcome"] == "unresolved"
    # the same on the match side: 8 (the paper's best) best by its mean, but worse on the common seeds
    df = _depth_rows([89.0, 89.0, 90.0], [88.0, 88.1, 88.9])
    df.loc[3, "ft_seeds_ours"] = "0:88.0;1:88.1;2:88.9;3:99.0;4:99.0"
    df.loc[3, "ft_ours"], df.loc[3, "n_seeds_ours"] = 92.6, 5
    v = verdict(df, "table1a_decoder_depth")["ft"]
    assert v["best_match"] and v["best_vs_runner_up"]["call"] == "worse" and v["outcome"] == "match, not resolved"


def test_a_metric_counts_its_own_seeds_not_the_rows():
    """n_seeds counts the seeds a row ran; a metric whose stage failed for some of them is compared over
    the seeds it has (t quantile and label), not the row's count."""
    from reproduce.report import verdict
    df = _depth_rows([95.0, 97.0, 94.0], [89.0, 89.0, 90.0])
    df.loc[3, "n_seeds_ours"] = 5  # depth 8 ran 5 seeds; its ft exists for 3
    df.loc[4, ["ft_seeds_ours", "ft_ours", "n_seeds_ours"]] = ["0:95.0", 95.0, 1]
    s12 = verdict(df, "table1a_decoder_depth")["ft"]["settings"]["12"]
    assert s12["method"] == "1 seed vs 3 seeds (their seed std)"


def test_verdict_outcome_rests_on_the_paired_interval():
    from reproduce.report import verdict
    # 12 - 8 per seed: +0.5, -0.3, +0.1 -> mean 0.1, sd 0.4, half-width t(2) 4.303 * 0.4 / sqrt(3) = 0.994
    v = verdict(_depth_rows([89.5, 88.7, 90.1], [89.0, 89.0, 90.0]), "table1a_decoder_depth")["ft"]
    assert v["best_ours"] == [12] and 8 in v["best_paper"] and v["best_match"] is False
    c = v["best_vs_paper"]  # the paper's best setting we measured best (8) minus ours (12)
    assert (c["paper_setting"], c["our_setting"]) == (8, 12)
    assert c["delta"] == pytest.approx(-0.1) and c["hi"] - c["delta"] == pytest.approx(0.9934, abs=1e-3)
    assert c["method"] == "paired t over 3 seeds" and v["outcome"] == "tie"  # inside +-2
    s12 = v["settings"]["12"]
    assert s12["call"] == "equal within +-2" and s12["vs"] == "baseline" and v["baseline"] == 8
    # +6, +8, +4: mean 6, sd 2 -> [1.03, 10.97]: the paper's best is resolved worse -> mismatch
    v = verdict(_depth_rows([95.0, 97.0, 94.0], [89.0, 89.0, 90.0]), "table1a_decoder_depth")["ft"]
    assert v["outcome"] == "mismatch" and v["settings"]["12"]["call"] == "better"
    # t quantiles: n = 9: (2.306 + 0.889) * 2 / 3 = 2.13 > 2; n = 10: (2.262 + 0.883) * 2 / sqrt(10) = 1.99
    assert v["settings"]["12"]["seeds_needed"] == 10
    # +1, +3, -2: mean 0.67, sd 2.52 -> [-5.6, 6.9]: cannot tell
    v = verdict(_depth_rows([90.0, 92.0, 88.0], [89.0, 89.0, 90.0]), "table1a_decoder_depth")["ft"]
    assert v["outcome"] == "unresolved" and v["settings"]["12"]["call"] == "unresolved"
    # one seed each (depth 1 vs the baseline's 3 seeds): the baseline's seed spread stands in
    assert v["settings"]["1"]["method"] == "1 seed vs 3 seeds (their seed std)"


def test_stats_intervals_by_hand():
    from reproduce.stats import call_of, compare, seeds_needed
    c = compare({0: 90.0, 1: 92.0, 2: 91.0}, {0: 88.0, 1: 89.0, 2: 90.0})  # d = 2, 3, 1
    assert c.delta == pytest.approx(2.0) and c.sd == pytest.approx(1.0)
    assert c.lo == pytest.approx(2.0 - 4.302653 / 3 ** 0.5, abs=1e-5) and c.call == "unresolved"  # [-0.48, 4.48]
    assert compare({0: 93.0, 1: 95.0, 2: 94.0}, {0: 88.0, 1: 89.0, 2: 90.0}).call == "better"  # 5 +- 2.48
    b = compare({0: 90.0}, {0: 80.0}, n_val=100)  # binomial: se = 100 * sqrt(.09/100 + .16/100) = 5
    assert b.hi - b.delta == pytest.approx(1.959964 * 5.0) and b.call == "better" and "images" in b.method
    assert call_of(-1.5, 1.9) == "equal within +-2" and call_of(-2.5, 1.0) == "unresolved"
    assert call_of(0.1, 5) == "better" and call_of(-5, -0.1) == "worse"
    # n = 4: (3.182 + 0.978) * 1 / 2 = 2.08 > 2; n = 5: (2.776 + 0.941) / sqrt(5) = 1.66 <= 2
    assert seeds_needed(1.0) == 5 and seeds_needed(0.0) == 2 and seeds_needed(float("nan")) is None
    assert seeds_needed(3.0) == 20 and seeds_needed(100.0) is None  # more than 1000 seeds: None


def test_a_chance_level_table_is_not_called_match():
    """The smoke scale's Fig. 5: every setting at chance (a test of the plumbing, not of the paper)."""
    ours = pd.DataFrame({"mask_ratio": [0.5, 0.75], "ft": [16.67, 16.67], "lin": [8.33, 16.0],
                         "chance": [10.0, 10.0], "n_val": [12.0, 12.0]})
    v = verdict(compare("fig5_masking_ratio", ours, "smoke", PROV), "fig5_masking_ratio")
    assert v["lin"]["outcome"] == "n/a: at chance" and v["ft"]["outcome"] == "n/a: at chance"
    ours["lin_margin"] = [None, -8.3]
    ours["lin"] = [60.0, 80.0]
    v = verdict(compare("fig5_masking_ratio", ours, "smoke", PROV), "fig5_masking_ratio")
    assert v["lin"]["outcome"] == "n/a: no margin over the initialisation"


def test_a_stated_paper_best_ranks_every_measured_setting():
    """Fig. 5 transcribes only 10% and 75%, but the paper states 75% is best: all our ratios are ranked."""
    ratios = [0.1, 0.2, 0.5, 0.75, 0.8]
    ours = pd.DataFrame({"mask_ratio": ratios, "ft": [80.0, 81.0, 82.0, 83.0, 85.0],
                         "lin": [60.0, 61.0, 70.0, 72.0, 71.5], "lin_std": [None, None, None, 0.5, None],
                         "ft_std": [None, None, None, 0.5, None], "n_seeds": [1, 1, 1, 3, 1]})
    v = verdict(compare("fig5_masking_ratio", ours, "cpu", PROV), "fig5_masking_ratio")
    assert v["ft"]["best_paper"] == [0.75] and v["ft"]["best_ours"] == [0.8]
    # 83 - 85 with the 75% row's 3-seed std 0.5: -2 +- 4.303 * 0.5 * sqrt(1 + 1/3) -> [-4.5, 0.5]: unresolved
    assert v["ft"]["outcome"] == "unresolved" and v["ft"]["best_vs_paper"]["hi"] == pytest.approx(0.4842, abs=1e-3)
    assert v["lin"]["best_ours"] == [0.75] and v["lin"]["outcome"] == "match, not resolved"  # 72 vs 71.5
    assert v["lin"]["best_vs_runner_up"]["runner_up"] == 0.8
    assert "stated in its text" in v["lin"]["note"] and v["lin"]["n"] == 2  # Spearman still on common points


def test_the_no_margin_check_reads_the_baselines_control_not_another_rows():
    """Fig. 7 has a scratch control per schedule: a short schedule that loses to its own scratch run does
    not make the whole table 'no margin'; our best setting's own control does, else the baseline's."""
    from reproduce.report import baseline_rows, verdict
    df = pd.DataFrame({"epochs": [100, 200, 400, 800, 1600], "ft_paper": [float("nan")] * 3 + [84.9, float("nan")],
                       "ft_ours": [68.0, 73.0, 78.0, 84.6, 89.8], "scale": "cpu",
                       "ft_margin_ours": [-3.0, -1.0, 1.0, 0.4, 2.0],
                       "lin_init_ours": [float("nan")] * 3 + [89.8, float("nan")]})
    assert baseline_rows(df)["epochs"].tolist() == [800]
    no_margin = "n/a: no margin over scratch trained as long"  # the fine-tune's control, named
    assert verdict(df, "fig7_schedule")["ft"]["outcome"] != no_margin  # our best (1600) beats its scratch run
    df.loc[4, "ft_margin_ours"] = -2.3  # the best schedule loses to scratch trained as long: not credited
    assert verdict(df, "fig7_schedule")["ft"]["outcome"] == no_margin
    df.loc[4, "ft_margin_ours"] = float("nan")  # no control of its own: the baseline's decides
    assert verdict(df, "fig7_schedule")["ft"]["outcome"] != no_margin
    df.loc[3, "ft_margin_ours"] = -0.5
    assert verdict(df, "fig7_schedule")["ft"]["outcome"] == no_margin


def fake_checkout(root: Path) -> Path:
    """Another clone of this project: a folder with .git and mae/__init__.py."""
    (root / ".git").mkdir(parents=True)
    (root / "mae").mkdir()
    (root / "mae" / "__init__.py").write_text("")
    (root / "reproduce").mkdir()
    script = root / "reproduce" / "table3.py"
    script.write_text("")
    return script


def test_a_script_of_another_checkout_than_the_imported_mae_is_refused(tmp_path, monkeypatch):
    """A venv installed from clone A runs clone B's script: B's recipes on A's code, rows labelled with A's
    commit. Refused before anything runs; this checkout's scripts, `python -m` and loose files pass."""
    from mae import provenance
    script = fake_checkout(tmp_path / "clone")
    assert provenance.other_checkout(script) == (tmp_path / "clone").resolve()
    with pytest.raises(SystemExit, match=r"table3.py: error: this script is in .*clone but imports mae from "):
        provenance.require_same_checkout(script=script)
    assert provenance.other_checkout(provenance.REPO_ROOT / "reproduce" / "table3.py") is None
    loose = tmp_path / "x.py"
    loose.write_text("")
    assert provenance.other_checkout(loose) is None and provenance.other_checkout("-m") is None
    # a reproduce script stops before planning anything
    from reproduce import table3
    monkeypatch.setattr(sys, "argv", [str(script), "--scale", "smoke", "--dry-run"])
    with pytest.raises(SystemExit, match="PYTHONPATH="):
        table3.main(["--scale", "smoke", "--dry-run"])


def test_a_stage_carries_the_commit_of_the_code_it_ran(monkeypatch):
    """The commit is pinned when the process starts; one made (or a file edited) while a long grid runs is
    recorded beside it (commit_at_finish), not instead of it."""
    from mae import provenance
    monkeypatch.setattr(provenance, "_CODE_COMMIT", [])
    head = ["aaaaaaa"]
    monkeypatch.setattr(provenance, "git_commit", lambda repo=None: head[0])
    assert provenance.pin_code_commit() == "aaaaaaa"
    assert "commit_at_finish" not in provenance.stage_provenance(seed=0)
    head[0] = "bbbbbbb-dirty"
    p = provenance.stage_provenance(seed=0)
    assert (p["commit"], p["dirty"], p["commit_at_finish"]) == ("aaaaaaa", False, "bbbbbbb-dirty")
    assert provenance.pin_code_commit() == "aaaaaaa"


def test_a_row_without_its_own_provenance_never_takes_the_collectors():
    """Rows carry their stages' provenance; a measured row whose stages wrote none says unknown, a row with
    only the paper's numbers says nothing; without provenance columns at all, ``prov`` made every row."""
    ours = pd.DataFrame({"mask_ratio": [0.5, 0.75], "ft": [80.0, 81.0], "lin": [60.0, 61.0],
                         "commit": ["f00dfee", None], "device": ["cpu", None], "date": ["d", None],
                         "command": ["c", None]})
    df = compare("fig5_masking_ratio", ours, "cpu", PROV).set_index("mask_ratio")
    assert df.loc[0.5, "commit"] == "f00dfee" and df.loc[0.75, "commit"] == "unknown"
    assert df.loc[0.1, "commit"] == "" and PROV["commit"] not in set(df["commit"])  # 0.1: the paper's only
    df = compare("fig5_masking_ratio", ours.drop(columns=["commit", "device", "date", "command"]), "cpu", PROV)
    assert set(df["commit"]) == {PROV["commit"]}
