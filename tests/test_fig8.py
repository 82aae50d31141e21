"""reproduce/fig8.py: model sizes, our results from CSV, the figure files."""
from __future__ import annotations

import pandas as pd
import pytest

from mae.models import create_mae
from reproduce import fig8
from reproduce.report import compare, verdict, write_results

PROV = {"commit": "abc1234", "device": "cpu", "date": "2026-01-01T00:00:00+00:00", "command": "test"}


def _write(results, table, scale, ours):
    df = compare(table, pd.DataFrame(ours), scale, PROV)
    write_results(df, verdict(df, table), results / f"{table}_{scale}.csv")


@pytest.mark.parametrize("name", ["mae_vit_smoke", "mae_vit_micro_patch4_32"])
def test_encoder_params_count_the_learnable_encoder(name):
    m = create_mae(name)
    enc = sum(p.numel() for k, p in m.named_parameters()
              if p.requires_grad and not k.startswith(("decoder", "mask_token")))
    assert fig8.encoder_params(name) == enc


def test_encoder_params_of_the_paper_models():
    # hand count for ViT-B/16: patch 768*3*16*16 + 768, cls 768, 12 x (12 * 768^2 + 13 * 768), norm 2 * 768
    assert fig8.encoder_params("mae_vit_base_patch16") == 590592 + 768 + 12 * (12 * 768 ** 2 + 13 * 768) + 1536
    assert [fig8.fmt_params(fig8.encoder_params(p)) for p in fig8.PAPER_MODELS.values()] == ["86M", "303M", "630M"]


def test_paper_only_figure(tmp_path):
    recs = fig8.build_figure8(tmp_path / "no_results", tmp_path / "figs")
    assert len(recs) == 1 and recs[0].scale is None and "paper only" in recs[0].title
    assert sorted(p.name for p in recs[0].paths) == ["fig8_model_size_paper.pdf", "fig8_model_size_paper.png"]
    assert all(p.stat().st_size > 1000 for p in recs[0].paths)


def test_ours_from_fig8_csv_with_the_models_named(tmp_path):
    _write(tmp_path, "fig8_model_size", "smoke",
           {"method": ["mae_in1k"], "ft_vit_base": [40.0], "ft_vit_large": [45.5],
            "model_vit_base_ours": ["mae_vit_smoke"], "model_vit_large_ours": ["mae_vit_micro_patch4_32"]})
    ours = fig8.collect_ours(tmp_path)
    (line,) = ours["smoke"]
    assert line.method == "mae_in1k" and line.label == "MAE, IN1K" and line.provenance["commit"] == "abc1234"
    assert [(p.size, p.preset, p.value) for p in line.points] == [("vit_base", "mae_vit_smoke", 40.0),
                                                                  ("vit_large", "mae_vit_micro_patch4_32", 45.5)]
    assert line.points[1].params == fig8.encoder_params("mae_vit_micro_patch4_32")
    recs = fig8.build_figure8(tmp_path, tmp_path / "figs")
    assert [r.scale for r in recs] == ["smoke"] and recs[0].paths[0].name == "fig8_model_size_smoke.png"


def test_table3_rows_fill_in_and_fig8_csv_wins(tmp_path):
    _write(tmp_path, "table3_comparison", "paper",
           {"method": ["mae", "scratch", "dino"], "ft_vit_base": [83.0, 82.0, 80.0], "ft_vit_large": [85.0, None, None]})
    ours = fig8.collect_ours(tmp_path)["paper"]
    got = {ln.method: [(p.size, p.preset, p.value) for p in ln.points] for ln in ours}
    assert got == {"mae_in1k": [("vit_base", "mae_vit_base_patch16", 83.0), ("vit_large", "mae_vit_large_patch16", 85.0)],
                   "sup_in1k_paper_recipe": [("vit_base", "mae_vit_base_patch16", 82.0)]}  # dino is no Fig. 8 line
    _write(tmp_path, "fig8_model_size", "paper", {"method": ["mae_in1k"], "ft_vit_huge": [86.0]})
    ours = fig8.collect_ours(tmp_path)["paper"]
    got = {ln.method: [(p.size, p.value) for p in ln.points] for ln in ours}
    assert got == {"mae_in1k": [("vit_huge", 86.0)], "sup_in1k_paper_recipe": [("vit_base", 82.0)]}
    recs = fig8.build_figure8(tmp_path, tmp_path / "figs")
    assert [r.scale for r in recs] == ["paper"] and "ours (paper)" in recs[0].title


def test_mini_scale_uses_the_presets_it_defines(tmp_path):
    from reproduce.scales import get_scale

    models = get_scale("mini", check_data=False).table3_models
    _write(tmp_path, "table3_comparison", "mini", {"method": ["mae"], "ft_vit_base": [91.0]})
    (line,) = fig8.collect_ours(tmp_path)["mini"]
    assert line.points[0].preset == models["vit_base"]
    assert line.points[0].params == fig8.encoder_params(models["vit_base"])


def test_a_broken_results_file_still_gives_the_paper_figure(tmp_path):
    (tmp_path / "fig8_model_size_mini.csv").write_text("not,a\n\"broken")
    with pytest.warns(UserWarning):
        recs = fig8.build_figure8(tmp_path, tmp_path / "figs")
    assert recs[0].scale is None and recs[0].paths[0].is_file()


def test_cli(tmp_path, capsys):
    assert fig8.main(["--results", str(tmp_path), "--out", str(tmp_path / "f")]) == 0
    assert "fig8_model_size_paper.png" in capsys.readouterr().out

