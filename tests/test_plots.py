"""plots.py rebuilds every figure from results CSVs alone, with or without our results.

The results CSVs here are FABRICATED by the test (made-up numbers through compare()); none is a result.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from reproduce import plots
from reproduce.reference import get_spec, load_reference
from reproduce.report import compare, verdict, write_results

PROV = {"commit": "feed123", "device": "cpu", "date": "2030-01-01T00:00:00+00:00", "command": "pytest"}
REPO = Path(__file__).resolve().parents[1]


def fabricated_ours(name: str) -> pd.DataFrame:
    """Made-up ours for every paper setting of ``name`` (Table 2: hours only, speedup derived)."""
    spec = get_spec(name)
    keys = load_reference(name)[spec.key].tolist()
    metrics = ["time_h"] if name == "table2_wallclock" else list(spec.metrics)
    data = {spec.key: keys}
    for j, m in enumerate(metrics):
        data[m] = np.linspace(10.0 + j, 20.0 + j, len(keys))
    return pd.DataFrame(data)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("results")
    for name in plots.FIGURE_NAMES:
        df = compare(name, fabricated_ours(name), "smoke", PROV)
        write_results(df, verdict(df, name), d / f"{name}_smoke.csv")
    return d


def _check_files(rec: plots.FigureRecord) -> None:
    assert [p.suffix for p in rec.paths] == [".png", ".pdf"]
    png, pdf = rec.paths
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_every_figure_from_synthetic_results(results_dir, tmp_path):
    records = plots.build_all(results_dir, tmp_path / "figs")
    assert sorted(r.name for r in records) == sorted(plots.FIGURE_NAMES)
    for rec in records:
        assert rec.scale == "smoke"
        assert "ours (smoke) vs paper" in rec.title, rec.title
        assert rec.paths[0].name == f"{rec.name}_smoke.png"
        _check_files(rec)


def test_every_figure_without_any_results(tmp_path):
    records = plots.build_all(tmp_path / "no_results", tmp_path / "figs")
    assert sorted(r.name for r in records) == sorted(plots.FIGURE_NAMES)
    for rec in records:
        assert rec.scale is None and "paper only" in rec.title
        assert rec.paths[0].name == f"{rec.name}_paper.png"
        _check_files(rec)


def test_unusable_results_fall_back_to_the_paper(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "fig5_masking_ratio_bad.csv").write_text("ratio,acc\n0.75,1.0\n")
    with pytest.warns(UserWarning, match="no key column 'mask_ratio'"):
        (rec,) = plots.build_all(res, tmp_path / "figs", names=["fig5_masking_ratio"])
    assert "paper only" in rec.title and "fig5_masking_ratio_bad.csv" in rec.title
    _check_files(rec)
    with pytest.raises(ValueError, match="no figure named"):
        plots.build_all(res, tmp_path / "figs", names=["fig42"])


def test_ours_is_drawn_on_its_own_axis(results_dir):
    (res,) = plots.find_results(results_dir, "fig5_masking_ratio")
    assert res.scale == "smoke" and len(res.df) == len(fabricated_ours("fig5_masking_ratio"))
    fig = plt.figure()
    try:
        plots.draw_curves(fig, get_spec("fig5_masking_ratio"), load_reference("fig5_masking_ratio"), res)
        assert len(fig.axes) == 4  # ft and lin panels, each with a twin axis for ours
        twin = fig.axes[2]
        (line,) = [ln for ln in twin.get_lines() if ln.get_label() == "ours (smoke)"]
        want = fabricated_ours("fig5_masking_ratio").sort_values("mask_ratio")
        np.testing.assert_allclose(line.get_ydata(), want["ft"])
        np.testing.assert_allclose(line.get_xdata(), want["mask_ratio"])
        # the paper's axis carries only stated numbers: ft 84.9 at 75% (no invented points)
        paper_y = np.concatenate([ln.get_ydata() for ln in fig.axes[0].get_lines()
                                  if ln.get_label() == "paper"])
        assert paper_y.tolist() == [84.9]
    finally:
        plt.close(fig)


def test_table2_speedup_is_derived_from_our_hours(results_dir):
    (res,) = plots.find_results(results_dir, "table2_wallclock")
    fig = plt.figure()
    try:
        plots.draw_wallclock(fig, get_spec("table2_wallclock"), load_reference("table2_wallclock"), res)
        ax = fig.axes[0]
        ours = [b for c in ax.containers if c.get_label() == "ours (smoke)" for b in c]
        hours = fabricated_ours("table2_wallclock").set_index("setting")["time_h"]
        assert [b.get_height() for b in ours] == pytest.approx(
            [hours["vit_large_with_mask_d8"] / hours[k]
             for k in ("vit_large_d8", "vit_large_d1")]
            + [hours["vit_huge_with_mask_d8"] / hours[k] for k in ("vit_huge_d8", "vit_huge_d1")])
    finally:
        plt.close(fig)


def test_cli_runs_as_a_script(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "reproduce" / "plots.py"), "--results",
                          str(tmp_path / "none"), "--out", str(tmp_path / "figs"), "--only",
                          "table1a_decoder_depth"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "paper only" in out.stdout
    assert (tmp_path / "figs" / "table1a_decoder_depth_paper.pdf").is_file()


def test_figures_are_the_same_bytes_when_redrawn_from_the_same_inputs(results_dir, tmp_path, monkeypatch):
    """No save date, no library version in the files: redrawing committed figures changes nothing."""
    import matplotlib

    from mae.viz import save_curves

    def draw(out: Path, epoch: int, version: str) -> list[Path]:
        monkeypatch.setenv("SOURCE_DATE_EPOCH", str(epoch))  # what matplotlib would stamp as the date
        monkeypatch.setattr(matplotlib, "__version__", version, raising=False)
        paths = [p for name in ("table1a_decoder_depth", "fig5_masking_ratio")
                 for rec in plots.build_all(results_dir if name.startswith("fig5") else tmp_path / "none", out,
                                            names=[name]) for p in rec.paths]
        return paths + [save_curves({"a": ([0, 1], [1.0, 2.0])}, out / "curve.png"),
                        save_curves({"a": ([0, 1], [1.0, 2.0])}, out / "curve.pdf")]

    first, second = draw(tmp_path / "a", 0, "3.0.0"), draw(tmp_path / "b", 2_000_000_000, "9.9.9")
    assert [p.name for p in first] == [p.name for p in second] and len(first) == 6
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_plots_draws_no_reconstruction_figure_unless_asked(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "reproduce" / "plots.py"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--reconstructions" in out.stdout and "checkpoint" in out.stdout


def test_our_points_are_labelled_with_the_values_run_not_only_the_papers(tmp_path):
    """The cpu scale runs 12.5% masking in the 10% slot and a 64-d decoder in the 512 slot: the figures
    mark what ran."""
    import pandas as pd

    from reproduce.plots import OursResult, used_values
    df = pd.DataFrame({"mask_ratio": [0.1, 0.5, 0.75], "mask_ratio_used_ours": [0.125, 0.5, 0.75]})
    res = OursResult("fig5_masking_ratio", "cpu", tmp_path / "x.csv", df)
    assert used_values(res, "mask_ratio", percent=True) == {0.1: "12.5%"}
    df = pd.DataFrame({"decoder_width": [256, 512], "decoder_width_used_ours": [32.0, 64.0]})
    assert used_values(OursResult("t", "cpu", tmp_path / "y.csv", df), "decoder_width") == {256: "32", 512: "64"}
    assert used_values(OursResult("t", "cpu", tmp_path / "z.csv", df.drop(columns=["decoder_width_used_ours"])),
                       "decoder_width") == {}


def test_a_paper_only_title_names_the_results_folder_given(tmp_path):
    mine = tmp_path / "outputs" / "results"
    for rec in plots.build_all(mine, tmp_path / "figs", names=["fig8_model_size", "table1a_decoder_depth"]):
        assert f"no {mine}/" in rec.title and "no results/" not in rec.title, rec.title


def test_curves_keep_legends_and_labels_off_the_data_and_each_other(tmp_path):
    """Fig. 5 at the cpu scale: legends under the axes, the values run (12.5%, ..., 93.75%) on a row of their
    own without overlaps, and both y-axes of every panel saying what they measure and whose they are."""
    ref = load_reference("fig5_masking_ratio")
    keys = ref["mask_ratio"].tolist()
    used = [round(round(16 * k) / 16, 4) if k != 0.75 else 0.75 for k in keys]  # 16 patches: 12.5% steps
    df = pd.DataFrame({"mask_ratio": keys, "ft_ours": np.linspace(80, 85, len(keys)),
                       "lin_ours": np.linspace(90, 95, len(keys)), "mask_ratio_used_ours": used})
    res = plots.OursResult("fig5_masking_ratio", "cpu", tmp_path / "x.csv", df)
    fig = plt.figure(figsize=(8.4, 5.8))
    try:
        plots.draw_curves(fig, get_spec("fig5_masking_ratio"), ref, res)
        fig.tight_layout()
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        panels, twins = fig.axes[:2], fig.axes[2:]
        for ax, twin in zip(panels, twins):
            assert ax.get_ylabel().startswith("paper: ") and "top-1 (%)" in ax.get_ylabel()
            assert twin.get_ylabel().startswith("ours (cpu): ") and "top-1 (%)" in twin.get_ylabel()
            box = ax.get_window_extent(renderer)
            legend = ax.get_legend().get_window_extent(renderer)
            xlabel = ax.xaxis.label.get_window_extent(renderer)
            assert legend.y1 <= xlabel.y0 <= box.y0, "the legend must sit under the axis label, off the data"
            run = [t for t in ax.texts if t.get_rotation() == 90]
            assert sorted(t.get_text() for t in run) == sorted(plots.used_values(res, "mask_ratio", True).values())
            extents = [t.get_window_extent(renderer) for t in run]
            assert all(e.y0 >= box.y1 for e in extents), "values run sit above the axes"
            for i, a in enumerate(extents):
                for b in extents[i + 1:]:
                    assert a.x1 <= b.x0 or b.x1 <= a.x0, "labels of the values run overlap"
    finally:
        plt.close(fig)
