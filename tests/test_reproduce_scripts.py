"""The reproduction scripts (reproduce/table1.py, table2.py, table3.py, fig7.py, fig9.py) and their
scales: CLI behaviour, plans at every scale, and one smoke run of everything with the CSV schema
and the ours-vs-paper columns checked. Smoke numbers are near chance: only the pipeline is tested."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reproduce import fig7, fig9, table1, table2, table3
from reproduce.reference import get_spec, load_reference
from reproduce.report import PROVENANCE_COLUMNS, meta_path
from reproduce.scales import get_scale

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"table1": table1, "table2": table2, "table3": table3, "fig7": fig7, "fig9": fig9}


def dirs(tmp_path: Path) -> list[str]:
    return ["--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "results")]


# ---------------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize("name", list(SCRIPTS))
def test_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        SCRIPTS[name].main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--scale", "--data", "--out", "--only", "--dry-run", "--launcher", "--collect", "--set"):
        assert flag in out
    assert "{smoke,cpu,mini,paper}" in out and "{local,torchrun,slurm}" in out


def test_unknown_part_and_bad_only_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        table1.main(["--part", "decoder_size"])
    assert e.value.code == 2 and "invalid choice: 'decoder_size'" in capsys.readouterr().err
    assert table1.main(["--part", "decoder_depth", "--only", "depth=8", "--dry-run", *dirs(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'depth'" in err and "decoder_depth" in err
    assert table1.main(["--part", "decoder_depth", "--only", "decoder_depth=3", "--dry-run", *dirs(tmp_path)]) == 2
    assert "values: 8, 1, 2, 4, 12" in capsys.readouterr().err  # the baseline cell runs first
    assert table1.main(["--only", "nonsense=1", "--dry-run", *dirs(tmp_path)]) == 2
    assert "no selected table has the key(s) ['nonsense']" in capsys.readouterr().err
    assert fig7.main(["--set", "pretrain.no_such_field=1", "--dry-run", *dirs(tmp_path)]) == 2
    assert "has no field 'no_such_field'" in capsys.readouterr().err
    assert table1.main(["--part", "target", "--dry-run", "--out", str(tmp_path / "one.csv")]) == 2
    assert "names one CSV but this run writes 2 tables" in capsys.readouterr().err


def test_paper_scale_needs_imagenet(tmp_path, capsys):
    for mod in (table1, table3, fig7, fig9):
        assert mod.main(["--scale", "paper", "--dry-run", *dirs(tmp_path)]) == 2
        assert "--scale paper needs --data /path/to/imagenet" in capsys.readouterr().err
    assert fig7.main(["--scale", "paper", "--data", str(tmp_path / "nowhere"), *dirs(tmp_path)]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_dry_runs_plan_every_script_and_run_nothing(tmp_path, capsys):
    for name, mod in SCRIPTS.items():
        assert mod.main(["--scale", "smoke", "--dry-run", *dirs(tmp_path)]) == 0, name
    out = capsys.readouterr().out
    assert not (tmp_path / "work").exists() and not (tmp_path / "results").exists()
    for table in ("table1a_decoder_depth", "table1d_target", "fig5_masking_ratio", "table2_wallclock",
                  "table3_comparison", "fig7_schedule", "fig9_partial_ft"):
        assert f"{table}_smoke" in out
    assert "tokenizer  ([helper]" not in out and "[helper]" in out  # the tokenizer / shared pre-training
    assert "-m mae pretrain --config" in out and "-m mae partial --config" in out


def test_only_with_every_part_runs_the_parts_that_have_the_key(tmp_path, capsys):
    assert table1.main(["--only", "mask_ratio=0.75", "--dry-run", *dirs(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fig5_masking_ratio_smoke" in out and "table1a" not in out
    assert "plan: 1 cell(s)" in out and "baseline  (mask_ratio=0.75)" in out


@pytest.mark.parametrize("scale", ["mini", "paper"])
def test_larger_scales_plan_with_their_recipes(scale, tmp_path, capsys):
    data = ["--data", str(tmp_path)] if scale == "paper" else []
    for name, mod in SCRIPTS.items():
        assert mod.main(["--scale", scale, *data, "--dry-run", *dirs(tmp_path)]) == 0, name
    out = capsys.readouterr().out
    assert f"table1b_decoder_width_{scale}" in out
    if scale == "paper":
        assert "mae_vit_base" in out or "mae_vit_huge" in out  # Table 3's three model sizes
        assert out.count("table3_comparison_paper/mae_vit_") >= 3


# -------------------------------------------------------------------------------- the scales
@pytest.mark.parametrize("scale_name", ["smoke", "mini", "paper"])
def test_scales_are_consistent(scale_name, tmp_path):
    from mae.models import mae_config
    from mae.models.vit import vit_for_mae
    scale = get_scale(scale_name, str(tmp_path) if scale_name == "paper" else None)
    m = mae_config(scale.pretrain.model)
    # the baseline of Table 1 is the paper's decoder 8 x 512, mapped
    assert scale.pretrain.decoder_depth in (None, 8) and scale.decoder_depth[8] == (scale.pretrain.decoder_depth or m.decoder_depth)
    assert scale.decoder_width[512] == (scale.pretrain.decoder_embed_dim or m.decoder_embed_dim)
    heads = scale.pretrain.decoder_num_heads or m.decoder_num_heads
    assert all(w % heads == 0 and w % 4 == 0 for w in scale.decoder_width.values())
    assert set(scale.decoder_depth) == set(load_reference("table1a_decoder_depth")["decoder_depth"])
    assert set(scale.decoder_width) == set(load_reference("table1b_decoder_width")["decoder_width"])
    sched = [scale.schedule[e] for e in sorted(scale.schedule)]
    assert set(scale.schedule) == set(load_reference("fig7_schedule")["epochs"]) and sched == sorted(set(sched))
    assert scale.schedule[800] in (scale.pretrain.epochs, 4)  # smoke's schedule is a stand-in
    blocks = [scale.partial_blocks[k] for k in sorted(scale.partial_blocks)]
    assert set(scale.partial_blocks) == set(load_reference("fig9_partial_ft")["tuned_blocks"])
    assert blocks == sorted(blocks) and blocks[-1] == m.depth and blocks[0] == 0
    for cfg in (scale.finetune, scale.linprobe, scale.partial):
        assert cfg.model == vit_for_mae(scale.pretrain.model) and cfg.finetune is None
        assert cfg.data == scale.pretrain.data and cfg.img_size == m.img_size
    tok = scale.tokenizer
    assert (tok.patch_size, tok.img_size) == (m.patch_size, m.img_size)
    if scale_name == "paper":
        assert scale.pretrain.epochs == 800 and scale.pretrain.target == "pixel" and scale.linprobe.epochs == 90
        assert scale.finetune.epochs == 50 and scale.finetune.layer_decay == 0.75 and scale.long_epochs == 1600
        assert scale.pretrain.data == str(tmp_path)


def test_table1_cells_change_one_switch_each():
    scale = get_scale("smoke")
    base = scale.pretrain
    cells = table1.target_cells(scale)
    by_name = {c.name: c for c in cells}
    assert by_name["target_pca"].stage("pretrain").config.pca_components == 24  # 192-dim patches / 8 (96 of 768)
    assert by_name["target_token"].stage("pretrain").inputs["tokenizer"].cell == "tokenizer"
    assert not by_name["tokenizer"].report
    assert by_name["loss_on_all"].stage("pretrain").config.loss_on == "all"
    aug = {c.key["augmentation"]: c.stage("pretrain").config.augmentation for c in table1.augmentation_cells(scale)}
    assert aug["crop_rand_color_jitter"] == "crop_rand_jitter" and aug["none"] == "none"
    fsamp = {c.key["mask_sampling"]: c.stage("pretrain").config for c in table1.mask_sampling_cells(scale)}
    assert (fsamp["block_50"].mask_strategy, fsamp["block_50"].mask_ratio) == ("block", 0.5)
    for part in table1.PARTS.values():
        for c in part.cells(scale):
            if not c.report:
                continue
            cfg = c.stage("pretrain").config
            changed = {f for f in vars(cfg) if getattr(cfg, f) != getattr(base, f)}
            assert len(changed) <= 2, (c.name, changed)  # mask_sampling sets strategy + ratio, pca its k


def test_fig9_reads_the_baselines_probe_and_finetune_instead_of_rerunning_them():
    scale = get_scale("cpu")
    cells = {c.name: c for c in fig9.build_cells(scale)}
    base = cells[fig9.PRETRAIN_CELL]
    assert [s.name for s in base.stages] == ["pretrain", "linprobe", "finetune"]
    assert base.stage("linprobe").config == scale.linprobe and base.stage("finetune").config == scale.finetune
    assert cells["tuned_blocks_0"].stages == [] and cells["tuned_blocks_0"].reads.stage == "linprobe"
    assert cells["tuned_blocks_24"].stages == [] and cells["tuned_blocks_24"].reads.stage == "finetune"
    assert all(s.protocol == "partial" for n, c in cells.items() if n not in ("baseline", "tuned_blocks_0",
                                                                             "tuned_blocks_24") for s in c.stages)


# ------------------------------------------------------------------------------ smoke run
def check_results(path: Path, table: str, expect: set[str]) -> pd.DataFrame:
    """Schema of a results CSV: key first, label, ours/paper/diff per metric, provenance; meta verdicts."""
    spec = get_spec(table)
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    assert df.columns[0] == spec.key and "label" in df.columns
    for c in PROVENANCE_COLUMNS:
        assert c in df.columns, c
    assert set(df["scale"]) == {"smoke"}
    ran = df[[f"{m}_ours" for m in expect if f"{m}_ours" in df.columns]].notna().any(axis=1)
    assert df.loc[ran, "device"].str.startswith("cpu").all()
    # a measured row names the commit it ran at; a row with only the paper's numbers names none
    assert df.loc[ran, "commit"].notna().all() and df.loc[~ran, "commit"].isna().all()
    measured = {m for m in spec.metrics if f"{m}_ours" in df.columns}
    assert measured == expect, (table, measured)
    for m in measured:
        assert {f"{m}_paper", f"{m}_diff"} <= set(df.columns)
        both = df[[f"{m}_ours", f"{m}_paper"]].notna().all(axis=1)
        np.testing.assert_allclose(df.loc[both, f"{m}_diff"], df.loc[both, f"{m}_ours"] - df.loc[both, f"{m}_paper"])
    ref = load_reference(table)
    assert set(ref[spec.key].astype(str)) <= set(df[spec.key].astype(str))  # every paper row is there
    meta = json.loads(meta_path(path).read_text())
    from reproduce.report import READOUT_METRICS
    assert measured <= set(meta["verdicts"]) <= measured | set(READOUT_METRICS) and meta["scale"] == "smoke"
    assert meta["provenance"]["collected_by"]["command"]
    for v in meta["verdicts"].values():
        assert {"best_ours", "best_paper", "best_match", "spearman", "n"} <= set(v)
    return df


def finite(values) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


def test_every_script_at_smoke_scale(tmp_path, capsys):
    """The CI run: every script and every Table 1 part at smoke scale, the CSVs and the comparisons."""
    res = tmp_path / "results"
    # as users run it: a separate process, from the repo root
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "reproduce/table1.py", "--part", "masking_ratio", "--scale", "smoke",
                           *dirs(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Figure 5: masking ratio" in proc.stdout and "verdict lin:" in proc.stdout
    assert "ft_ours  ft_paper  ft_diff" in proc.stdout
    df = check_results(res / "fig5_masking_ratio_smoke.csv", "fig5_masking_ratio", {"ft", "lin"})
    assert finite(df["ft_ours"]) and finite(df["lin_ours"]) and df["ft_ours"].between(0, 100).all()

    parts = [p for p in table1.PARTS if p != "masking_ratio"]
    assert table1.main([*(a for p in parts for a in ("--part", p)), *dirs(tmp_path)]) == 0
    for mod in (table2, table3, fig7, fig9):
        assert mod.main(dirs(tmp_path)) == 0, mod.__name__
    out = capsys.readouterr().out
    assert "FAILED" not in out

    for part in parts:
        table = table1.PARTS[part].table
        expect = {"ft", "lin", "flops_rel"} if part == "mask_token" else {"ft", "lin"}
        df = check_results(res / f"{table}_smoke.csv", table, expect)
        paper_rows = df[df["ft_paper"].notna()]
        assert finite(paper_rows["ft_ours"]) and finite(paper_rows["lin_ours"]), table
        assert "pretrain_time_s_ours" in df.columns and "ft_best_ours" in df.columns
    d = pd.read_csv(res / "table1c_mask_token_smoke.csv").set_index("encoder_mask_token")
    assert d.at["without", "flops_rel_ours"] == 1.0 and d.at["with", "flops_rel_ours"] > 1.0
    d = check_results(res / "sec3_loss_scope_smoke.csv", "sec3_loss_scope", {"ft_delta"})
    assert d["ft_delta_ours"].iloc[0] == pytest.approx(d["ft_all_ours"].iloc[0] - d["ft_masked_ours"].iloc[0])
    d = check_results(res / "table1b_decoder_width_smoke.csv", "table1b_decoder_width", {"ft", "lin"})
    assert d.set_index("decoder_width").at[512, "decoder_width_used_ours"] == 32

    t2 = check_results(res / "table2_wallclock_smoke.csv", "table2_wallclock", {"time_h", "speedup"}).set_index("setting")
    assert finite(t2["time_h_ours"]) and (t2["gflops_ours"] > 0).all()
    no_mask = [s for s in t2.index if "with_mask" not in s]
    assert finite(t2.loc[no_mask, "speedup_ours"]) and t2.loc[no_mask, "flops_speedup_ours"].gt(1).all()
    t3 = check_results(res / "table3_comparison_smoke.csv", "table3_comparison",
                       {"ft_vit_base", "lin_vit_base"}).set_index("method")
    assert finite(t3.loc[["mae", "scratch"], "ft_vit_base_ours"]) and t3.at["mae", "model_vit_base_ours"] == "mae_vit_smoke"
    f7 = check_results(res / "fig7_schedule_smoke.csv", "fig7_schedule", {"ft", "lin"}).set_index("epochs")
    assert f7["epochs_used_ours"].tolist() == [1, 2, 3, 4, 5] and "ft_mmselfsup" in f7.columns
    f9 = check_results(res / "fig9_partial_ft_smoke.csv", "fig9_partial_ft", {"ft"}).set_index("tuned_blocks")
    assert f9.at[0, "protocol_used_ours"] == "linprobe" and f9.at[24, "protocol_used_ours"] == "finetune"
    assert f9.at[0.5, "protocol_used_ours"] == "partial" and finite(f9["ft_ours"])

    # rerun one cell: everything is finished, nothing trains, and the CSV keeps every row
    assert table1.main(["--part", "decoder_depth", "--only", "decoder_depth=4", *dirs(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "decoder_depth_4: finished before, skipped" in out and "running" not in out
    again = pd.read_csv(res / "table1a_decoder_depth_smoke.csv")
    assert again["ft_ours"].notna().sum() == 5
    # --collect writes the table from disk without running anything
    (res / "fig7_schedule_smoke.csv").unlink()
    assert fig7.main(["--collect", *dirs(tmp_path)]) == 0
    assert (res / "fig7_schedule_smoke.csv").is_file() and "running" not in capsys.readouterr().out

    # every script's rows carry the provenance their stages wrote, never the collecting process's
    for m in (tmp_path / "work").rglob("metrics.json"):
        d = json.loads(m.read_text())
        m.write_text(json.dumps({**d, "provenance": {**d.get("provenance", {}), "commit": "aaa1111", "dirty": False}}))
    for mod, table, metric in ((table2, "table2_wallclock", "time_h"), (table3, "table3_comparison", "ft_vit_base"),
                               (fig7, "fig7_schedule", "ft"), (fig9, "fig9_partial_ft", "ft")):
        assert mod.main(["--collect", *dirs(tmp_path)]) == 0
        df = pd.read_csv(res / f"{table}_smoke.csv")
        assert set(df.loc[df[f"{metric}_ours"].notna(), "commit"]) == {"aaa1111"}, table


def test_table2_gpu_batches_are_per_encoder_and_shared_by_its_rows():
    """On a GPU each encoder's rows share one batch (speedups compare within an encoder): 128 for ViT-L, 64 for ViT-H."""
    from reproduce.scales import get_scale
    cells = table2.build_cells(get_scale("mini"))
    batch = {c.key["setting"]: c.stages[0].config.batch_size for c in cells}
    assert {batch[s] for s in batch if s.startswith("vit_large")} == {128}
    assert {batch[s] for s in batch if s.startswith("vit_huge")} == {64}
    assert {c.stages[0].config.batch_size for c in table2.build_cells(get_scale("smoke"))} == {8}


def test_cpu_scale_plans_with_a_shared_seeded_baseline(tmp_path, capsys):
    """--scale cpu: the baseline is one cell of the shared tree, run once per seed with its controls."""
    assert table1.main(["--part", "masking_ratio", "--part", "decoder_depth", "--scale", "cpu", "--dry-run",
                        *dirs(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fig5_masking_ratio_cpu: plan: 12 cell(s)" in out and "table1a_decoder_depth_cpu: plan: 7 cell(s)" in out
    assert out.count("ablations_cpu/baseline/pretrain\n") == 2  # the same run directory for both tables
    assert "baseline_seed1" in out and "baseline_seed2" in out
    assert "linprobe_init" in out and "finetune_scratch" in out
    assert not (tmp_path / "work").exists()


def test_fig7_schedules_each_have_a_scratch_control_as_long_as_they_train():
    """Fig. 7: every schedule's scratch control trains for its pre-training + fine-tuning epochs; the
    baseline's comes with the shared baseline's controls (one stage of that name per cell)."""
    from reproduce.scales import get_scale
    scale = get_scale("cpu")
    cells = fig7.build_jobs(None, scale)[0].cells
    for c in cells:
        names = [s.name for s in c.stages]
        assert names.count("finetune_scratch") == 1, c.name
        scratch = c.stage("finetune_scratch").config
        assert scratch.epochs == c.stage("pretrain").config.epochs + scale.finetune.epochs, c.name
        assert not c.stage("finetune_scratch").inputs and scratch.finetune in (None, "")


def test_fig9_seeds_pair_each_row_with_the_baselines_own_seed():
    """--seeds: seed s of every Fig. 9 row tunes the baseline's seed-s pre-training, and rows 0 / all read
    the seed-s probe / fine-tune (paired), not seed 0's encoder under another fine-tuning seed."""
    from reproduce.grid import with_seeds
    from reproduce.scales import get_scale
    cells = with_seeds(fig9.build_cells(get_scale("cpu")), lambda c: tuple(dict.fromkeys([*(c.seeds or ()), 0, 1])))
    by = {c.name: c for c in cells}
    assert {"baseline", "baseline_seed1", "baseline_seed2"} <= set(by) and not by["baseline_seed1"].report
    part = by["tuned_blocks_1_seed1"].stage("partial")
    assert part.inputs["finetune"].cell == "baseline_seed1" and part.config.seed == 1
    assert by["tuned_blocks_1"].stage("partial").inputs["finetune"].cell == "baseline"
    assert by["tuned_blocks_0_seed1"].reads.cell == "baseline_seed1" and by["tuned_blocks_0_seed1"].info["seed"] == 1
    assert by["tuned_blocks_24_seed1"].reads.stage == "finetune"
    assert by["tuned_blocks_24_seed1"].reads.cell == "baseline_seed1"


def test_a_seed_the_input_cell_does_not_run_is_refused():
    from reproduce.grid import Cell, GridError, Ref, Stage, with_seeds
    from reproduce.scales import get_scale
    scale = get_scale("smoke")
    base = Cell("base", {}, [Stage("pretrain", "pretrain", scale.pretrain)], report=False, seeds=(0,))
    row = Cell("row", {"k": 1}, [Stage("ft", "finetune", scale.finetune, inputs={"finetune": Ref("pretrain", cell="base")})])
    with pytest.raises(GridError, match="seed 1 reads cell 'base'"):
        with_seeds([base, row], lambda c: c.seeds if c.name == "base" else (0, 1))


def test_aggregate_seeds_mean_std_and_count():
    import pandas as pd

    from reproduce.grid import aggregate_seeds
    rows = pd.DataFrame([{"k": 1, "ft": 80.0, "seed": 0}, {"k": 1, "ft": 82.0, "seed": 1},
                         {"k": 1, "ft": 84.0, "seed": 2}, {"k": 2, "ft": 70.0}])
    out = aggregate_seeds(rows, "k", ["ft"]).set_index("k")
    assert out.at[1, "ft"] == 82.0 and out.at[1, "ft_std"] == pytest.approx(2.0) and out.at[1, "n_seeds"] == 3
    assert out.at[1, "seed"] == "0,1,2" and out.at[2, "n_seeds"] == 1 and math.isnan(out.at[2, "ft_std"])
    assert out.at[1, "ft_seeds"] == "0:80.0000;1:82.0000;2:84.0000" and out.at[2, "ft_seeds"] == "0:70.0000"


def test_a_default_smoke_run_never_touches_the_committed_results(tmp_path, monkeypatch):
    """`python reproduce/table1.py --part ...` (default scale smoke, default --out / --work-dir) writes into
    ./outputs, which git ignores, and leaves results/ as it was."""
    from reproduce import table1
    root = Path(__file__).resolve().parents[1]
    before = {p.name: p.stat().st_mtime_ns for p in (root / "results").iterdir()}
    monkeypatch.chdir(tmp_path)
    assert table1.main(["--part", "mask_token", "--only", "encoder_mask_token=with"]) == 0
    assert (tmp_path / "outputs" / "results" / "table1c_mask_token_smoke.csv").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in (root / "results").iterdir()} == before
    ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "outputs/results/x.csv"], check=False)
    assert ignored.returncode == 0  # a default run from the checkout leaves `git status` clean
