"""reproduce/fig_reconstructions.py: Figs. 2, 3, 4, 6 from a tiny checkpoint, images, layouts, errors."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from mae.config import to_dict
from mae.data import DataError
from mae.data.embedded import PHOTO_NAMES
from mae.engine.checkpoint import save_checkpoint
from mae.models import create_mae
from mae.protocols.pretrain import PRESETS
from mae.viz import mask_noise, reconstruct
from reproduce import fig_reconstructions as fr


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An untrained mae_vit_smoke pre-training checkpoint in a run folder named 'smokerun'."""
    path = tmp_path_factory.mktemp("ck") / "smokerun" / "checkpoint-last.pth"
    cfg = replace(PRESETS["smoke"], target="norm_pixel")
    torch.manual_seed(0)
    m = create_mae(cfg.model, **cfg.model_overrides())
    save_checkpoint({"model": m.state_dict(), "config": to_dict(cfg), "epoch": 1}, path)
    return path


@pytest.fixture
def image_dir(tmp_path):
    """An ImageNet-like folder: two class folders and a hidden one, 7 images of different sizes."""
    rng = np.random.default_rng(0)
    for i in range(7):
        d = tmp_path / "imgs" / f"n0{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(d / f"img{i}.JPEG")
    (tmp_path / "imgs" / ".hidden").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / ".hidden" / "x.png")
    return tmp_path / "imgs"


def test_paper_settings_come_from_the_reference_csv():
    assert [s.mask_ratio for s in fr.paper_settings("2")] == [0.8]
    assert [s.mask_ratio for s in fr.paper_settings("4")] == [0.75, 0.85, 0.95]
    assert [(s.strategy, s.mask_ratio) for s in fr.paper_settings("6")] == [("random", 0.75), ("block", 0.5),
                                                                            ("grid", 0.75)]
    with pytest.raises(ValueError, match="unknown figure"):
        fr.paper_settings("5")


@pytest.mark.parametrize("fig", fr.FIGURES)
def test_every_figure_renders_from_a_tiny_checkpoint(fig, ckpt, tmp_path):
    res = fr.make_figure(fig, ckpt, n=2, seed=1, overlay=(fig != "3"), out_dir=tmp_path, device="cpu")
    stem = f"fig{fig}_reconstructions_smokerun"
    assert [p.name for p in res.paths] == [f"{stem}.png", f"{stem}.pdf", f"{stem}.meta.json"]
    png = np.asarray(Image.open(res.paths[0]))
    assert png.shape[0] > 100 and png.shape[1] > 200
    meta = json.loads(res.paths[2].read_text())
    assert meta["kind"] == fr.SIDECAR_KIND and meta["figure"] == fig
    assert meta["scale"] == "smoke" and meta["provenance"]["commit"]
    assert meta["checkpoints"][0]["source"] == "ours" and meta["images"]["names"] == list(PHOTO_NAMES[:2])


def test_fig6_takes_one_checkpoint_per_strategy(ckpt, tmp_path):
    res = fr.make_figure("6", [ckpt] * 3, n=1, out_dir=tmp_path, device="cpu", formats=("png",))
    assert len(res.meta["checkpoints"]) == 3
    with pytest.raises(ValueError, match="1 or 3"):
        fr.make_figure("6", [ckpt] * 2, out_dir=tmp_path, device="cpu")
    with pytest.raises(ValueError, match="takes 1"):
        fr.make_figure("2", [ckpt] * 2, out_dir=tmp_path, device="cpu")


def test_folder_images_are_picked_reproducibly_by_seed(image_dir):
    a, names_a, src = fr.load_images(32, 3, image_dir, seed=0)
    b, names_b, _ = fr.load_images(32, 3, image_dir, seed=0)
    _, names_c, _ = fr.load_images(32, 3, image_dir, seed=1)
    assert a.shape == (3, 3, 32, 32) and torch.equal(a, b) and names_a == names_b
    assert names_a != names_c
    assert len(fr.find_images(image_dir)) == 7  # the hidden folder is skipped
    assert all(n.endswith(".JPEG") for n in names_a) and "7 images" in src
    with pytest.raises(DataError, match="only 7 images"):
        fr.load_images(32, 8, image_dir)
    with pytest.raises(DataError, match="no such directory"):
        fr.load_images(32, 1, image_dir / "nope")


def test_default_images_are_the_scikit_image_photos():
    x, names, src = fr.load_images(16, 2)
    assert x.shape == (2, 3, 16, 16) and names == list(PHOTO_NAMES[:2]) and "scikit-image" in src
    with pytest.raises(DataError, match="--images"):
        fr.load_images(16, len(PHOTO_NAMES) + 1)


def test_triplets_layout_pads_the_last_row():
    rec = reconstruct(create_mae("mae_vit_smoke"), torch.randn(5, 3, 32, 32), 0.75)
    lay = fr.triplets_layout(rec, overlay=False, per_row=2)
    assert len(lay.rows) == 3 and all(len(r) == 6 for r in lay.rows)
    assert lay.rows[2][3:] == [None, None, None] and lay.gaps_before == [3]
    assert lay.col_titles == ["masked", "reconstruction", "original"] * 2
    assert np.array_equal(lay.rows[1][2], rec.original[2])


def test_fig4_masks_are_nested():
    m = create_mae("mae_vit_smoke")
    noise = mask_noise(m, 4, 0.75, seed=0)
    masks = [reconstruct(m, torch.randn(4, 3, 32, 32), r, noise=noise).mask for r in (0.75, 0.85, 0.95)]
    assert (masks[1] >= masks[0]).all() and (masks[2] >= masks[1]).all()
    assert masks[0].sum() < masks[1].sum() < masks[2].sum()


def test_wrong_checkpoint_kind_fails_clearly_on_the_command_line(tmp_path, capsys):
    m = create_mae("mae_vit_smoke")
    enc = {k: v for k, v in m.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    save_checkpoint({"model": {**enc, "head.weight": torch.zeros(3, 32)}}, tmp_path / "ft.pth")
    rc = fr.main(["--fig", "2", "--ckpt", str(tmp_path / "ft.pth"), "--out", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "ft.pth is a fine-tune" in err and "head.weight" in err and "no MAE decoder" in err
    assert not list(tmp_path.glob("*.png"))


def test_rebuild_redraws_recorded_figures(ckpt, tmp_path):
    res = fr.make_figure("2", ckpt, n=1, out_dir=tmp_path, device="cpu", formats=("png",))
    png = res.paths[0]
    png.unlink()
    assert fr.main(["--rebuild", "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert png.is_file()
    meta = json.loads((tmp_path / "fig2_reconstructions_smokerun.meta.json").read_text())
    meta["settings"]["ckpts"] = [str(tmp_path / "gone.pth")]
    (tmp_path / "fig2_reconstructions_gone.meta.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="not found"):
        fr.rebuild_figures(tmp_path, device="cpu")


def test_plots_redraws_reconstructions_only_when_asked(ckpt, tmp_path, capsys):
    from reproduce import plots
    res = fr.make_figure("2", ckpt, n=1, out_dir=tmp_path, device="cpu", formats=("png",))
    png = res.paths[0]
    before = (png.read_bytes(), png.stat().st_mtime_ns)
    common = ["--results", str(tmp_path / "none"), "--out", str(tmp_path), "--only", "table1a_decoder_depth"]
    assert plots.main(common) == 0
    assert (png.read_bytes(), png.stat().st_mtime_ns) == before  # the recorded checkpoint exists: still not redrawn
    png.unlink()
    assert plots.main([*common, "--reconstructions", "--device", "cpu"]) == 0 and png.is_file()
    # --ckpt: drawn from that checkpoint, named after it (never under the recorded figure's name)
    other = tmp_path / "otherrun" / "checkpoint-last.pth"
    other.parent.mkdir()
    other.write_bytes(ckpt.read_bytes())
    assert plots.main([*common, "--ckpt", str(other), "--device", "cpu"]) == 0
    assert (tmp_path / "fig2_reconstructions_otherrun.png").is_file()
    assert plots.main([*common, "--ckpt", str(tmp_path / "gone.pth")]) == 2
    assert "gone.pth" in capsys.readouterr().err
