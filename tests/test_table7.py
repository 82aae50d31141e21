"""downstream/table7.py: Table 7 assembled from the other scripts' CSVs; missing cells stay empty."""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from downstream import table7
from downstream.table7 import Table7Error, checkpoint_target
from reproduce.report import compare, provenance, verdict, write_results

REPO = Path(__file__).resolve().parents[1]


def _write(results: Path, table: str, rows: list[dict], scale: str = "smoke", name: str | None = None) -> Path:
    """A results CSV exactly as the reproduction / downstream scripts write it (reproduce.report)."""
    df = compare(table, pd.DataFrame(rows), scale=scale, prov=provenance(command="test"))
    path = results / (name or f"{table}_{scale}.csv")
    write_results(df, verdict(df, table), path)
    return path


def _ckpt(tmp: Path, name: str, **extra) -> Path:
    path = tmp / name
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 4)}, **extra}, path)
    return path


@pytest.fixture
def results(tmp_path):
    r = tmp_path / "results"
    r.mkdir()
    nan = float("nan")
    _write(r, "table1d_target", [{"target": "pixel", "ft": 10.0, "lin": 5.0},
                                 {"target": "norm_pixel", "ft": 12.0, "lin": 6.0},
                                 {"target": "pca", "ft": 9.0, "lin": 4.0},
                                 {"target": "token", "ft": nan, "lin": nan}])  # token cell not finished
    _write(r, "table3_comparison", [{"method": "mae", "ft_vit_base": 13.0, "ft_vit_large": 14.0},
                                    {"method": "scratch", "ft_vit_base": 7.0, "ft_vit_large": 8.0}])
    ours_ck = _ckpt(tmp_path, "ours.pth", config={"target": "pixel", "norm_pix_loss": True})  # -> norm_pixel
    _write(r, "table4_coco", [{"method": "mae", "ap_box_vit_base": 5.5, "ap_mask_vit_base": 4.0, "backbone": "smoke",
                               "ckpt": str(ours_ck)}])
    released = _ckpt(tmp_path, "released.pth")  # no config: target unknown
    _write(r, "table5_ade20k", [{"method": "mae", "miou_vit_base": 3.25, "backbone": "smoke", "ckpt": str(released)}])
    return r


def _table(df: pd.DataFrame) -> pd.DataFrame:
    return df.set_index("target")


def test_assembles_cells_from_each_source_and_leaves_the_rest_empty(results, capsys):
    df = _table(table7.run(["--scale", "smoke", "--results", str(results)]))
    assert list(df.index) == ["pixel", "norm_pixel", "token"]  # the paper's rows, no pca
    assert df.loc["pixel", "in1k_vit_base_ours"] == 10.0 and df.loc["norm_pixel", "in1k_vit_base_ours"] == 12.0
    assert df.loc["norm_pixel", "in1k_vit_large_ours"] == 14.0  # Table 3 fills what Table 1d does not
    assert df.loc["norm_pixel", "coco_box_vit_base_ours"] == 5.5  # target read from the checkpoint's config
    for t in ("pixel", "norm_pixel", "token"):
        assert math.isnan(df.loc[t, "ade_miou_vit_base_ours"])  # released checkpoint: target unknown, skipped
        assert math.isnan(df.loc[t, "in1k_vit_huge_ours"]) and math.isnan(df.loc[t, "coco_box_vit_large_ours"])
    assert df.loc["token"].filter(like="_ours").drop("sources_ours").isna().all()  # row kept, nothing invented
    assert math.isnan(df.loc["pixel", "in1k_vit_large_ours"])  # Table 3 is norm_pixel only
    # the paper's numbers beside ours; smoke-scale models are not the paper's: no difference, said in the label
    assert (df.loc["pixel", "in1k_vit_base_paper"], df.loc["token", "ade_miou_vit_large_paper"]) == (83.3, 53.4)
    assert df.filter(like="_diff").isna().all().all()
    assert df["label"].str.endswith("(n/a: not the paper's model: smoke-scale models)").all()
    assert "coco_box_vit_base<-table4_coco_smoke.csv" in df.loc["norm_pixel", "sources_ours"]
    assert "in1k_vit_base<-table1d_target_smoke.csv" in df.loc["norm_pixel", "sources_ours"]
    out = capsys.readouterr().out
    assert "table5_ade20k_smoke.csv: target unknown" in out and "not a Table 7 target" in out
    assert "in1k_vit_base<-table3_comparison_smoke.csv (Table 3 recipe (long schedule)) not used" in out
    written = pd.read_csv(results / "table7_pixels_vs_tokens_smoke.csv")
    assert written["scale"].unique().tolist() == ["smoke"] and written["commit"].notna().all()
    meta = json.loads((results / "table7_pixels_vs_tokens_smoke.meta.json").read_text())
    assert set(meta["provenance"]["inputs"]) == {"table1d_target_smoke.csv", "table3_comparison_smoke.csv",
                                                 "table4_coco_smoke.csv"}


def test_target_flag_assigns_a_downstream_csv(results):
    df = _table(table7.run(["--scale", "smoke", "--results", str(results), "--target", "table5_ade20k_smoke.csv=pixel"]))
    assert df.loc["pixel", "ade_miou_vit_base_ours"] == 3.25
    assert "target from --target" in df.loc["pixel", "sources_ours"]
    assert math.isnan(df.loc["norm_pixel", "ade_miou_vit_base_ours"])


def test_checkpoint_target_reads_ours_and_official_configs(tmp_path):
    assert checkpoint_target(_ckpt(tmp_path, "a.pth", config={"target": "token", "norm_pix_loss": False}))[0] == "token"
    assert checkpoint_target(_ckpt(tmp_path, "b.pth", config={"target": "pixel", "norm_pix_loss": False}))[0] == "pixel"
    official = _ckpt(tmp_path, "c.pth", args=argparse.Namespace(norm_pix_loss=True, model="mae_vit_base_patch16"))
    assert checkpoint_target(official) == ("norm_pixel", "its args.norm_pix_loss")
    assert checkpoint_target(_ckpt(tmp_path, "d.pth"))[0] is None
    assert checkpoint_target(tmp_path / "absent.pth") == (None, f"checkpoint {tmp_path / 'absent.pth'} not found")


def test_table1_model_column_follows_the_scales():
    assert table7.table1_column("smoke") == "vit_base" and table7.table1_column("mini") == "vit_base"
    assert table7.table1_column("paper") == "vit_large"


def test_two_files_for_the_same_cell_is_an_error(results, tmp_path):
    ck = _ckpt(tmp_path, "again.pth", config={"target": "norm_pixel"})
    _write(results, "table4_coco", [{"method": "mae", "ap_box_vit_base": 6.0, "ckpt": str(ck)}],
           name="table4_coco_second_smoke.csv")
    with pytest.raises(Table7Error, match="two results for norm_pixel / coco_box_vit_base"):
        table7.run(["--scale", "smoke", "--results", str(results)])


def test_a_csv_of_another_scale_is_refused(results):
    _write(results, "table5_ade20k", [{"method": "mae", "miou_vit_base": 1.0}], scale="mini",
           name="table5_ade20k_x_smoke.csv")
    with pytest.raises(Table7Error, match=r"table5_ade20k_x_smoke.csv: rows of scale \['mini'\], expected 'smoke'"):
        table7.run(["--scale", "smoke", "--results", str(results)])


@pytest.mark.parametrize("flag,match", [("table5_ade20k_smoke.csv=pca", "not a Table 7 target"),
                                        ("nofile.csv=pixel", "not found for scale"),
                                        ("pixel", "FILE=TARGET"),
                                        ("table3_comparison_smoke.csv=pixel", "norm_pixel target by construction")])
def test_bad_target_flags(results, flag, match):
    with pytest.raises(Table7Error, match=match):
        table7.run(["--scale", "smoke", "--results", str(results), "--target", flag])


def test_no_inputs_is_a_clear_error(tmp_path, capsys):
    assert table7.main(["--scale", "paper", "--results", str(tmp_path)]) == 2
    assert "no results for scale 'paper'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_help_runs_as_a_script():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "downstream" / "table7.py"), "--help"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "--target FILE=TARGET" in proc.stdout and "table4_coco" in proc.stdout


def test_only_paper_scale_numbers_are_compared_with_the_paper(tmp_path):
    r = tmp_path / "results"
    r.mkdir()
    _write(r, "table3_comparison", [{"method": "mae", "ft_vit_base": 83.0}], scale="paper")
    df = _table(table7.run(["--scale", "paper", "--results", str(r)]))
    assert df.loc["norm_pixel", "in1k_vit_base_diff"] == pytest.approx(83.0 - df.loc["norm_pixel", "in1k_vit_base_paper"])
    assert "n/a" not in " ".join(df["label"])


def test_a_downstream_row_named_after_its_model_fills_a_smoke_cell(tmp_path):
    r = tmp_path / "results"
    r.mkdir()
    ck = _ckpt(tmp_path, "ours.pth", config={"target": "pixel"})
    _write(r, "table5_ade20k", [{"method": "mae_vit_smoke", "miou_vit_base": 2.5, "ckpt": str(ck)}])
    df = _table(table7.run(["--scale", "smoke", "--results", str(r)]))
    assert df.loc["pixel", "ade_miou_vit_base_ours"] == 2.5 and math.isnan(df.loc["pixel", "ade_miou_vit_base_diff"])
