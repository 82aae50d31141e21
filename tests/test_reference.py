"""The paper's reference numbers: every CSV loads with the schema and matches the paper's values."""
from __future__ import annotations

import math

import pandas as pd
import pytest

import reproduce.reference as reference
from reproduce.reference import REGISTRY, baseline_key, get_spec, load_reference, names


def row(name: str, key: object) -> pd.Series:
    df = load_reference(name)
    return df.set_index(get_spec(name).key).loc[key]


@pytest.mark.parametrize("name", names())
def test_every_reference_loads_with_schema(name):
    spec = get_spec(name)
    df = load_reference(name)
    assert len(df) > 0
    assert df.columns[0] == spec.key
    for col in ("label", "approx", "source", "note", *spec.metrics, *spec.extra_refs):
        assert col in df.columns, (name, col)
    assert df[spec.key].is_unique and df[spec.key].notna().all()
    assert set(df["approx"].unique()) <= {0, 1}
    assert (df["source"].str.len() > 0).all()
    for m in (*spec.metrics, *spec.extra_refs):
        assert pd.api.types.is_numeric_dtype(df[m]), (name, m)


def test_registry_and_files_agree():
    on_disk = {p.stem for p in reference.REFERENCE_DIR.glob("*.csv")}
    assert on_disk == set(REGISTRY)
    required = {"table1a_decoder_depth", "table1b_decoder_width", "table1c_mask_token", "table1d_target",
                "table1e_augmentation", "table1f_mask_sampling", "fig5_masking_ratio", "table2_wallclock",
                "fig7_schedule", "fig8_model_size", "fig9_partial_ft", "table3_comparison", "table4_coco",
                "table5_ade20k", "table6_transfer", "table7_pixels_vs_tokens", "followup_vitdet_coco"}
    assert required <= set(REGISTRY)


def test_no_name_is_a_prefix_of_another():
    # results/<name>_<scale>.csv is found by prefix: no name may start with another name + "_".
    for a in REGISTRY:
        for b in REGISTRY:
            assert a == b or not b.startswith(a + "_"), (a, b)


def test_table1_spot_values():
    assert tuple(row("table1a_decoder_depth", 8)[["ft", "lin"]]) == (84.9, 73.5)
    assert tuple(row("table1a_decoder_depth", 1)[["ft", "lin"]]) == (84.8, 65.5)
    assert tuple(row("table1b_decoder_width", 1024)[["ft", "lin"]]) == (84.3, 73.1)
    r = row("table1c_mask_token", "with")
    assert (r["ft"], r["lin"], r["flops_rel"]) == (84.2, 59.6, 3.3)
    assert tuple(row("table1d_target", "token")[["ft", "lin"]]) == (85.3, 71.6)
    assert tuple(row("table1d_target", "norm_pixel")[["ft", "lin"]]) == (85.4, 73.9)
    assert tuple(row("table1e_augmentation", "none")[["ft", "lin"]]) == (84.0, 65.7)
    r = row("table1f_mask_sampling", "block_75")
    assert (r["strategy"], r["mask_ratio"], r["ft"], r["lin"]) == ("block", 0.75, 82.8, 63.9)


@pytest.mark.parametrize("name,default", [
    ("table1a_decoder_depth", 8), ("table1b_decoder_width", 512), ("table1c_mask_token", "without"),
    ("table1d_target", "pixel"), ("table1e_augmentation", "crop_rand"), ("table1f_mask_sampling", "random_75"),
])
def test_table1_baseline_is_the_papers_default(name, default):
    df = load_reference(name)
    assert int(df["baseline"].sum()) == 1
    assert baseline_key(name) == default
    assert tuple(row(name, default)[["ft", "lin"]]) == (84.9, 73.5)  # one run shared by all parts


def test_figure5_only_stated_points_have_numbers():
    df = load_reference("fig5_masking_ratio").set_index("mask_ratio")
    assert df["lin"].dropna().to_dict() == {0.10: 54.6, 0.75: 73.5}
    assert df["ft"].dropna().to_dict() == {0.75: 84.9}
    assert baseline_key("fig5_masking_ratio") == 0.75
    # every unstated point is flagged approx (plot-only) and carries no number
    blank = df[df["ft"].isna() & df["lin"].isna()]
    assert len(blank) > 0 and (blank["approx"] == 1).all()
    assert "lowest" in df.loc[0.10, "note"]


def test_table2_values_and_speedups():
    df = load_reference("table2_wallclock").set_index("setting")
    assert math.isnan(df.loc["vit_huge_with_mask_d8", "ft"])
    assert df.loc["vit_huge_with_mask_d8", "time_h"] == 119.6
    assert "estimated" in df.loc["vit_huge_with_mask_d8", "note"]
    assert tuple(df.loc["vit_large_d1", ["ft", "time_h", "speedup"]]) == (84.8, 11.6, 3.7)
    assert tuple(df.loc["vit_huge_d8", ["ft", "time_h", "speedup"]]) == (85.8, 34.5, 3.5)
    assert get_spec("table2_wallclock").better("time_h") is False


def test_table2_speedups_reproduce_the_papers_from_its_hours():
    from reproduce.report import table2_speedups

    df = load_reference("table2_wallclock").set_index("setting")
    got = table2_speedups(df["time_h"].to_dict())
    assert set(got) == {"vit_large_d8", "vit_large_d1", "vit_huge_d8", "vit_huge_d1"}
    for k, v in got.items():
        assert round(v, 1) == df.loc[k, "speedup"], k
    with pytest.raises(ValueError, match="unknown settings"):
        table2_speedups({"vit_small_d8": 1.0})


def test_fig7_fig8_fig9_values():
    r = row("fig7_schedule", 800)
    assert (r["ft"], r["lin"], r["ft_mmselfsup"], r["lin_mmselfsup"], r["approx"]) == (84.9, 73.5, 85.4, 73.7, 0)
    assert math.isnan(row("fig7_schedule", 100)["ft"])
    f8 = load_reference("fig8_model_size").set_index("method")
    assert tuple(f8.loc["mae_in1k", ["ft_vit_base", "ft_vit_large", "ft_vit_huge"]]) == (83.6, 85.9, 86.9)
    assert tuple(f8.loc["sup_jft300m_vit_paper", ["ft_vit_base", "ft_vit_large", "ft_vit_huge"]]) == (84.2, 87.1, 88.0)
    assert f8["approx"].to_dict() == {"mae_in1k": 0, "sup_in1k_paper_recipe": 0,
                                      "sup_in1k_vit_paper": 1, "sup_jft300m_vit_paper": 1}
    f9 = load_reference("fig9_partial_ft").set_index("tuned_blocks")["ft"].dropna().to_dict()
    assert f9 == {0.0: 73.5, 0.5: 79.1, 1.0: 81.0}


def test_table3_including_released_linear_probe_and_mmselfsup():
    t3 = load_reference("table3_comparison").set_index("method")
    mae = t3.loc["mae"]
    assert tuple(mae[["ft_vit_base", "ft_vit_large", "ft_vit_huge", "ft_vit_huge_448"]]) == (83.6, 85.9, 86.9, 87.8)
    assert tuple(mae[["lin_vit_base", "lin_vit_large", "lin_vit_huge"]]) == (68.0, 75.8, 76.6)
    assert tuple(t3.loc["scratch", ["ft_vit_base", "ft_vit_large", "ft_vit_huge"]]) == (82.3, 82.6, 83.1)
    assert t3.loc["dino", "ft_vit_base"] == 82.8 and math.isnan(t3.loc["dino", "ft_vit_large"])
    mm = t3[t3["source"].str.contains("mmselfsup")]
    assert set(mm.index) == {f"mmselfsup_mae_{e}ep" for e in (300, 400, 800, 1600)}
    assert tuple(mm.loc["mmselfsup_mae_300ep", ["lin_vit_base", "ft_vit_base"]]) == (60.8, 83.1)
    assert math.isnan(mm.loc["mmselfsup_mae_300ep", "ft_vit_large"])
    # the mmselfsup ViT-L numbers in Fig. 7 are the same as in Table 3's mmselfsup rows
    f7 = load_reference("fig7_schedule").set_index("epochs")
    for ep in (400, 800, 1600):
        assert f7.loc[ep, "ft_mmselfsup"] == mm.loc[f"mmselfsup_mae_{ep}ep", "ft_vit_large"]
        assert f7.loc[ep, "lin_mmselfsup"] == mm.loc[f"mmselfsup_mae_{ep}ep", "lin_vit_large"]
    # Fig. 8's lines are Table 3's rows
    f8 = load_reference("fig8_model_size").set_index("method")
    for col in ("ft_vit_base", "ft_vit_large", "ft_vit_huge"):
        assert f8.loc["mae_in1k", col] == mae[col]
        assert f8.loc["sup_in1k_paper_recipe", col] == t3.loc["scratch", col]


def test_downstream_tables():
    t4 = load_reference("table4_coco").set_index("method")
    assert t4.loc["mae", "ap_box_vit_large"] == 53.3
    assert tuple(t4.loc["mocov3", ["ap_box_vit_base", "ap_box_vit_large", "ap_mask_vit_base", "ap_mask_vit_large"]]) \
        == (47.9, 49.3, 42.7, 44.0)
    t5 = load_reference("table5_ade20k").set_index("method")
    assert tuple(t5.loc["mae", ["miou_vit_base", "miou_vit_large"]]) == (48.1, 53.6)
    t6 = load_reference("table6_transfer").set_index("model")
    assert t6.loc["vit_huge_448", "inat2017"] == 83.4 and t6.loc["prev_best", "places365"] == 58.0
    t7 = load_reference("table7_pixels_vs_tokens").set_index("target")
    assert tuple(t7.loc["pixel"][list(get_spec("table7_pixels_vs_tokens").metrics)]) == \
        (83.3, 85.1, 86.2, 49.5, 52.8, 48.0, 51.8)
    vd = row("followup_vitdet_coco", "mae_vitdet")
    assert (vd["ap_box_vit_large"], vd["ap_mask_vit_huge"]) == (55.5, 50.2)
    assert "not from the MAE paper" in vd["note"]


def test_baselines_and_claims():
    assert row("sec4_vit_large_scratch", "paper_recipe")["ft"] == 82.5
    assert row("sec4_vit_large_scratch", "original_vit")["ft"] == 76.5
    r = row("sec3_loss_scope", "all")
    assert (r["ft_delta"], r["approx"]) == (-0.5, 1)
    r = row("fig_reconstructions", "fig2")
    assert (r["eval_mask_ratio"], r["visible_patches"], r["num_patches"]) == (0.8, 39, 196)
    assert any("75%" in c for c in get_spec("fig5_masking_ratio").claims)


def test_string_keys_are_not_read_as_missing():
    # pandas reads 'None'/'NA' as missing by default; keys must survive as written.
    df = load_reference("table1e_augmentation")
    assert df["augmentation"].tolist()[0] == "none"


def test_unknown_name_and_bad_csv_raise_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(KeyError, match="unknown reference table 'table9'.*table1a_decoder_depth"):
        load_reference("table9")
    monkeypatch.setattr(reference, "REFERENCE_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="table1a_decoder_depth.csv"):
        load_reference("table1a_decoder_depth")
    (tmp_path / "table1a_decoder_depth.csv").write_text(
        "decoder_depth,label,ft,lin,approx,source,note\n8,a,84.9,73.5,0,x,\n8,b,84.9,73.5,0,x,\n")
    with pytest.raises(ValueError, match=r"table1a_decoder_depth.csv: duplicate keys \[8\]"):
        load_reference("table1a_decoder_depth")
    (tmp_path / "table1a_decoder_depth.csv").write_text(
        "decoder_depth,label,ft,approx,source,note\n8,a,84.9,0,x,\n")
    with pytest.raises(ValueError, match=r"missing columns \['lin'\]"):
        load_reference("table1a_decoder_depth")
    (tmp_path / "table1a_decoder_depth.csv").write_text(
        "decoder_depth,label,ft,lin,approx,source,note\n8,a,84.9,73.5,2,x,\n")
    with pytest.raises(ValueError, match="'approx' must be 0 or 1"):
        load_reference("table1a_decoder_depth")


def test_spec_direction_and_validation():
    assert get_spec("table1c_mask_token").better("flops_rel") is False
    assert get_spec("table1a_decoder_depth").better("ft") is True
    with pytest.raises(KeyError, match="unknown metric"):
        get_spec("table1a_decoder_depth").better("miou")
    with pytest.raises(ValueError, match="unknown metrics"):
        reference.TableSpec("x", "k", ("ft",), "x", {"lin": True})
