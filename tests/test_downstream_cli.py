"""coco_det.py / ade20k_seg.py: smoke runs train on CPU and write AP / mIoU rows; bad inputs fail before training."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


from _openmmlab import require_openmmlab  # noqa: E402

require_openmmlab()
pytestmark = pytest.mark.downstream

from downstream import ade20k_seg, coco_det  # noqa: E402
from downstream.checks import DatasetError  # noqa: E402
from downstream.fixtures import make_ade20k_fixture, make_coco_fixture  # noqa: E402
from mae.models import create_mae  # noqa: E402
from mae.models.inspect import NotAViTError  # noqa: E402


@pytest.fixture(scope="module")
def smoke_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "mae_smoke.pth"
    torch.save({"model": create_mae("mae_vit_smoke").state_dict()}, path)
    return path


def _run_script(script: str, ckpt: Path, tmp: Path, *extra: str) -> dict[str, str]:
    """Run the CLI as a user would; return our row of the comparison CSV (the smoke ViT's own row)."""
    out = tmp / "results.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "downstream" / script), "--ckpt", str(ckpt), "--scale", "smoke",
                           "--work-dir", str(tmp / "run"), "--out", str(out), *extra],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp / "results.meta.json").is_file()  # reproduce.report's verdict sidecar
    with open(out) as f:
        rows = list(csv.DictReader(f))
    # the paper's rows, and the micro ViT in a row of its own (never the paper's MAE ViT-B row)
    assert [r["method"] for r in rows] == ["supervised", "mocov3", "beit", "mae", "mae_vit_smoke"]
    mae = rows[-1]
    assert mae["scale"] == "smoke" and mae["ckpt_ours"] == str(ckpt) and mae["backbone_ours"] == "smoke"
    assert mae["label"] == "MAE, vit_smoke (n/a: not the paper's model)"
    assert not any(v for k, v in rows[3].items() if k.endswith(("_ours", "_diff")))  # nothing in the paper's row
    assert not any(v for k, v in mae.items() if k.endswith(("_paper", "_diff")))  # not compared with the paper
    assert mae["commit"] and mae["device"] and mae["date"][:2] == "20" and "--scale smoke" in mae["command"]
    return mae


@pytest.mark.slow
def test_coco_smoke_run_writes_box_and_mask_ap(smoke_ckpt, tmp_path):
    mae = _run_script("coco_det.py", smoke_ckpt, tmp_path)
    for metric in ("ap_box_vit_base", "ap_mask_vit_base"):
        assert 0.0 <= float(mae[f"{metric}_ours"]) <= 100.0
    assert mae["iters_ours"] == "4" and mae["pyramid_ours"] == "paper"  # the row says which pyramid ran
    assert (mae["world_size_ours"], mae["per_gpu_batch_ours"], mae["accumulation_ours"]) == ("1", "2", "1")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"coco/bbox_mAP", "coco/segm_mAP"} <= set(metrics)
    assert float(mae["ap_box_vit_base_ours"]) == pytest.approx(100 * metrics["coco/bbox_mAP"], abs=0.006)
    assert (tmp_path / "run" / "iter_4.pth").is_file()


@pytest.mark.slow
def test_ade20k_smoke_run_writes_miou(smoke_ckpt, tmp_path):
    mae = _run_script("ade20k_seg.py", smoke_ckpt, tmp_path, "--max-iters", "3",
                      "--cfg-options", "model.auxiliary_head.loss_decode.loss_weight=0.25")
    ours = float(mae["miou_vit_base_ours"])
    assert 0.0 <= ours <= 100.0
    assert mae["iters_ours"] == "3" and mae["schedule_ours"] == "paper"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["mIoU"] == pytest.approx(ours, abs=0.006)
    assert "loss_weight=0.25" in (tmp_path / "run" / "ade20k_upernet_smoke.py").read_text()  # --cfg-options


# ------------------------------------------------------------------- bad inputs: errors before training
def _args(ckpt: Path, tmp: Path, data: Path | None = None, scale: str = "smoke") -> list[str]:
    a = ["--ckpt", str(ckpt), "--scale", scale, "--work-dir", str(tmp / "run"), "--out", str(tmp / "r.csv")]
    return a + (["--data", str(data)] if data else [])


def _assert_not_trained(tmp: Path) -> None:
    run = tmp / "run"
    assert not list(run.glob("*.pth")) and not (run / "metrics.json").exists() and not (tmp / "r.csv").exists()


def test_non_vit_checkpoint_is_refused_by_both_scripts(tmp_path):
    bad = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(4, 3, 7, 7), "layer1.0.bn1.weight": torch.zeros(4)}}, bad)
    for script in (coco_det, ade20k_seg):
        with pytest.raises(NotAViTError, match=r"resnet\.pth is not a ViT.*conv1\.weight"):
            script.run(_args(bad, tmp_path))
    _assert_not_trained(tmp_path)
    assert not (tmp_path / "run" / "data").exists()  # refused before even generating the fixture


def test_coco_missing_annotation_file_stops_the_run(smoke_ckpt, tmp_path):
    root = make_coco_fixture(tmp_path / "coco", num_train=2, num_val=1)
    (root / "annotations" / "instances_train2017.json").unlink()
    with pytest.raises(DatasetError, match="instances_train2017.json"):
        coco_det.run(_args(smoke_ckpt, tmp_path, root))
    _assert_not_trained(tmp_path)


def test_coco_image_absent_stops_the_run(smoke_ckpt, tmp_path):
    root = make_coco_fixture(tmp_path / "coco", num_train=2, num_val=1)
    victim = sorted((root / "val2017").iterdir())[0]
    victim.unlink()
    with pytest.raises(DatasetError, match=victim.name):
        coco_det.run(_args(smoke_ckpt, tmp_path, root))
    _assert_not_trained(tmp_path)


def test_ade20k_label_out_of_range_stops_the_run(smoke_ckpt, tmp_path):
    root = make_ade20k_fixture(tmp_path / "ade", num_train=2, num_val=1)
    victim = sorted((root / "annotations" / "training").iterdir())[-1]
    lab = np.asarray(Image.open(victim)).copy()
    lab[3, 3] = 200
    Image.fromarray(lab).save(victim)
    with pytest.raises(DatasetError, match=rf"{victim.name} holds class id\(s\) 200"):
        ade20k_seg.run(_args(smoke_ckpt, tmp_path, root))
    _assert_not_trained(tmp_path)


def test_paper_scale_needs_data(smoke_ckpt, tmp_path):
    with pytest.raises(DatasetError, match="--data"):
        coco_det.run(_args(smoke_ckpt, tmp_path, scale="paper"))
    from downstream.runner import cli
    assert cli(coco_det.TASK, _args(smoke_ckpt, tmp_path, scale="paper")) == 2  # exit 2, as every input error


def test_paper_scale_refuses_a_vit_without_a_recipe(smoke_ckpt, tmp_path):
    root = make_coco_fixture(tmp_path / "coco", num_train=2, num_val=1)
    with pytest.raises(ValueError, match=r"no recipe .* width 32 and depth 2"):
        coco_det.run(_args(smoke_ckpt, tmp_path, root, scale="paper"))
    _assert_not_trained(tmp_path)


def test_smoke_results_default_to_outputs_results(smoke_ckpt, tmp_path, monkeypatch):
    """Without --out a smoke run's CSV goes to outputs/results/ (reproduce.driver.results_path), never results/."""
    from downstream import runner
    seen = []
    monkeypatch.setattr(runner, "train_and_evaluate", lambda cfg: {})
    monkeypatch.setattr(runner, "write_comparison", lambda *a: seen.append(a[-1]))
    for script in (coco_det, ade20k_seg):
        script.run(["--ckpt", str(smoke_ckpt), "--scale", "smoke", "--work-dir", str(tmp_path / "run")])
    assert seen == [REPO / "outputs" / "results" / "table4_coco_smoke.csv",
                    REPO / "outputs" / "results" / "table5_ade20k_smoke.csv"]
