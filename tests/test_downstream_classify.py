"""downstream/classify.py (Table 6): smoke runs write top-1 beside the paper; bad inputs fail before training."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from downstream import classify
from downstream.classify import DATASETS, ClassifyError, make_fixture
from mae.data import DataError
from mae.models import create_mae
from mae.models.interop import InteropError
from mae.protocols import finetune
from reproduce.reference import get_spec, load_reference

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "mae_smoke.pth"
    torch.save({"model": create_mae("mae_vit_smoke").state_dict()}, path)  # official layout
    return path


@pytest.fixture
def no_training(monkeypatch):
    """Any attempt to build the Trainer fails the test: errors must come before training."""
    def trainer(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(finetune, "Trainer", trainer)


def _args(ckpt, tmp, dataset, *extra):
    return ["--dataset", dataset, "--ckpt", str(ckpt), "--scale", "smoke", "--work-dir", str(tmp / "run"),
            "--out", str(tmp / "out.csv"), *extra]


def _check_written(tmp: Path, dataset: str) -> pd.Series:
    df = pd.read_csv(tmp / "out.csv")
    paper = load_reference("table6_transfer")
    # the paper's rows, and the micro ViT in a row of its own: never in the paper's ViT-B row
    assert df["model"].tolist() == [*paper["model"], "vit_smoke"]
    assert (tmp / "out.meta.json").is_file()
    ours = df.set_index("model").loc["vit_smoke"]
    metrics = json.loads((tmp / "run" / "metrics.json").read_text())
    assert ours[f"{dataset}_ours"] == pytest.approx(round(metrics["final"]["acc1"], 2))
    assert 0.0 <= ours[f"{dataset}_ours"] <= 100.0
    assert pd.isna(ours[f"{dataset}_paper"]) and pd.isna(ours[f"{dataset}_diff"])  # not compared with the paper
    assert ours["label"] == "vit_smoke (n/a: not the paper's model)"
    assert df.set_index("model").loc[list(paper["model"]), f"{dataset}_ours"].isna().all()  # no number invented
    assert df[f"{dataset}_diff"].isna().all()
    meta = json.loads((tmp / "out.meta.json").read_text())
    assert meta["scale"] == "smoke" and dataset in meta["verdicts"]
    assert (ours["classifier_ours"], ours["num_classes_ours"], ours["train_images_ours"], ours["val_images_ours"]) == \
        ("vit_smoke", classify.FIXTURE_CLASSES, 32, 12)
    assert ours["scale"] == "smoke" and ours["commit"] and ours["date"][:2] == "20"
    head = torch.load(tmp / "run" / "checkpoint-last.pth", weights_only=False)["model"]["head.weight"]
    assert head.shape[0] == classify.FIXTURE_CLASSES  # trained on the list dataset, not finetune's default data
    return ours


def test_smoke_inat_run_writes_top1_beside_the_paper(smoke_ckpt, tmp_path):
    df = classify.run(_args(smoke_ckpt, tmp_path, "inat2019"))
    ours = _check_written(tmp_path, "inat2019")
    # what run returns is what it wrote
    assert df.set_index("model").loc["vit_smoke", "inat2019_ours"] == pytest.approx(ours["inat2019_ours"])
    assert df["model"].tolist() == pd.read_csv(tmp_path / "out.csv")["model"].tolist()
    data = tmp_path / "run" / "data" / "inat2019"  # the fixture uses the dataset's own file names
    assert (data / "train2019.json").is_file() and (data / "val2019.json").is_file()


def test_smoke_places_run_writes_top1_beside_the_paper(smoke_ckpt, tmp_path):
    classify.run(_args(smoke_ckpt, tmp_path, "places365", "--set", "seed=1"))
    ours = _check_written(tmp_path, "places365")
    assert ours["data_ours"] == "generated fixture"
    data = tmp_path / "run" / "data" / "places365"
    assert (data / "categories_places365.txt").is_file() and any((data / "val_256").iterdir())


@pytest.mark.parametrize("name", list(DATASETS))
def test_fixture_of_every_dataset_reads_back(name, tmp_path):
    spec = DATASETS[name]
    args = classify.build_parser().parse_args(["--dataset", name, "--ckpt", "x", "--scale", "smoke"])
    layout = classify.resolve_layout(spec, args, tmp_path)
    train, val = classify.build_sets(spec, layout)
    assert (len(train), len(val), train.num_classes) == (32, 12, classify.FIXTURE_CLASSES)
    assert sorted(set(train.targets)) == list(range(classify.FIXTURE_CLASSES))
    assert layout.train_list == tmp_path / "data" / name / spec.train_list


def test_dataset_table_matches_table6_and_the_label_sets():
    assert set(DATASETS) == set(get_spec("table6_transfer").metrics)
    assert {n: s.num_classes for n, s in DATASETS.items()} == \
        {"inat2017": 5089, "inat2018": 8142, "inat2019": 1010, "places205": 205, "places365": 365}
    assert {s.fmt for n, s in DATASETS.items() if n.startswith("inat")} == {"inat"}
    assert DATASETS["places365"].class_index == "categories_places365.txt"


def test_model_rows_and_recipes(smoke_ckpt):
    assert classify.resolve_model(str(smoke_ckpt), None) == "vit_smoke"
    assert classify.table6_row("vit_huge_patch14", 448) == "vit_huge_448"
    assert classify.table6_row("vit_huge_patch14", 224) == "vit_huge"
    assert classify.table6_row("vit_large_patch16", 224) == "vit_large"
    assert classify.table6_row("vit_smoke", 32) == "vit_smoke"  # not the paper's ViT-B: a row of its own
    large = classify.recipe("paper", "vit_large_patch16")
    assert (large.model, large.blr, large.layer_decay, large.drop_path, large.epochs) == \
        ("vit_large_patch16", 1e-3, 0.75, 0.2, 50)
    assert classify.recipe("smoke", "vit_smoke").img_size == 32
    cfg = classify.apply_sets(classify.recipe("paper", "vit_huge_patch14"), ["img_size=448", "accum_iter=4"])
    assert (cfg.img_size, cfg.accum_iter, cfg.drop_path) == (448, 4, 0.3)


# ----------------------------------------------------------------------------------- bad input
def _real_layout(tmp_path: Path, name: str) -> Path:
    """A fixture placed where a real dataset would be (given with --data)."""
    return make_fixture(DATASETS[name], tmp_path / name)


def test_missing_list_file_fails_before_training(smoke_ckpt, tmp_path, no_training):
    root = _real_layout(tmp_path, "places205")
    (root / DATASETS["places205"].val_list).unlink()
    with pytest.raises(DataError, match="list file not found: .*val_places205.csv"):
        classify.run(_args(smoke_ckpt, tmp_path, "places205", "--data", str(root)))


def test_label_out_of_range_fails_before_training(smoke_ckpt, tmp_path, no_training):
    root = _real_layout(tmp_path, "places205")
    lst = root / DATASETS["places205"].train_list
    lst.write_text(lst.read_text() + "f/fixture_class_0/train_00000000.jpg 205\n")
    with pytest.raises(DataError, match=r"train_places205.csv:33: label 205 out of range for num_classes=205"):
        classify.run(_args(smoke_ckpt, tmp_path, "places205", "--data", str(root)))


def _four_class_table(monkeypatch, name: str) -> None:
    """Pretend the real label set of ``name`` has the fixture's 4 classes (to reach the checks after the count)."""
    monkeypatch.setitem(DATASETS, name, replace(DATASETS[name], num_classes=classify.FIXTURE_CLASSES))


def test_missing_images_fail_before_training(smoke_ckpt, tmp_path, no_training, monkeypatch):
    _four_class_table(monkeypatch, "inat2017")
    root = _real_layout(tmp_path, "inat2017")
    for p in list((root / "train_val_images").rglob("train_00[01].jpg"))[:3]:
        p.unlink()
    with pytest.raises(DataError, match=r"train2017.json: 3 of 32 listed images are missing"):
        classify.run(_args(smoke_ckpt, tmp_path, "inat2017", "--data", str(root)))


@pytest.mark.parametrize("name,found", [("inat2018", "8142"), ("places365", "365")])
def test_class_count_mismatch_with_the_dataset_table(smoke_ckpt, tmp_path, no_training, name, found):
    root = _real_layout(tmp_path, name)  # 4 classes where the real label set has thousands / 365
    with pytest.raises(DataError, match=rf"num_classes={found} but .* defines 4 classes"):
        classify.run(_args(smoke_ckpt, tmp_path, name, "--data", str(root)))


def test_class_lists_differ_with_the_right_count(smoke_ckpt, tmp_path, no_training, monkeypatch):
    _four_class_table(monkeypatch, "inat2019")
    root = _real_layout(tmp_path, "inat2019")
    val = json.loads((root / "val2019.json").read_text())
    val["categories"][0]["name"] = "renamed"
    (root / "val2019.json").write_text(json.dumps(val))
    with pytest.raises(DataError, match=r"train and val lists define different classes.*only in val \['renamed'\]"):
        classify.run(_args(smoke_ckpt, tmp_path, "inat2019", "--data", str(root)))


@pytest.mark.parametrize("extra,err,match", [
    (["--scale", "paper"], ClassifyError, "--scale paper needs --data"),
    (["--train-list", "x.json"], ClassifyError, "--train-list need --data"),
    (["--model", "vit_base_patch16"], ClassifyError, "width 768, depth 12.*holds width 32, depth 2"),
    (["--model", "vit_nonexistent"], ClassifyError, "unknown"),
    (["--set", "nope=1"], ClassifyError, "no such field"),
    (["--set", "data=/x"], ClassifyError, "set by classify.py itself"),
    (["--set", "layer_decay=2"], ClassifyError, "layer_decay must be in"),
    (["--class-index", "c.txt", "--data", "."], ClassifyError, "--class-index is for Places"),
])
def test_bad_flags_fail_before_training(smoke_ckpt, tmp_path, no_training, extra, err, match):
    args = _args(smoke_ckpt, tmp_path, "inat2018")
    if "--scale" in extra:
        i = args.index("--scale")
        args[i + 1] = extra[1]
        extra = extra[2:]
    with pytest.raises(err, match=match):
        classify.run(args + extra)


def test_paper_scale_refuses_a_model_without_a_paper_recipe(smoke_ckpt, tmp_path, no_training):
    with pytest.raises(ClassifyError, match="no paper fine-tuning recipe for vit_smoke"):
        classify.run(["--dataset", "inat2018", "--ckpt", str(smoke_ckpt), "--scale", "paper", "--data", str(tmp_path)])


def test_bad_checkpoints_fail_before_training(tmp_path, no_training):
    with pytest.raises(FileNotFoundError, match="no such file"):
        classify.run(_args(tmp_path / "absent.pth", tmp_path, "inat2018"))
    bad = tmp_path / "notvit.pth"
    torch.save({"model": {"conv.weight": torch.zeros(2, 2)}}, bad)
    with pytest.raises(InteropError, match="not a ViT/MAE checkpoint"):
        classify.run(_args(bad, tmp_path, "inat2018"))


def test_cli_prints_one_line_and_exits_2(smoke_ckpt, tmp_path, capsys, no_training, monkeypatch):
    monkeypatch.delenv("MAE_DEBUG", raising=False)
    root = _real_layout(tmp_path, "inat2018")
    assert classify.main(_args(smoke_ckpt, tmp_path, "inat2018", "--data", str(root))) == 2
    err = capsys.readouterr().err
    assert err.startswith("classify: error: iNaturalist 2018 train") and "8142" in err


def test_help_runs_as_a_script():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "downstream" / "classify.py"), "--help"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "--dataset" in proc.stdout and "places365" in proc.stdout


def test_smoke_run_on_a_given_dataset_root_uses_its_label_set(smoke_ckpt, tmp_path, monkeypatch):
    _four_class_table(monkeypatch, "places205")
    root = _real_layout(tmp_path, "places205")
    classify.run(_args(smoke_ckpt, tmp_path, "places205", "--data", str(root)))
    ours = pd.read_csv(tmp_path / "out.csv").set_index("model").loc["vit_smoke"]
    assert ours["num_classes_ours"] == classify.FIXTURE_CLASSES and ours["data_ours"] == str(root.resolve())
    assert 0.0 <= ours["places205_ours"] <= 100.0 and pd.isna(ours["places205_paper"])
    assert ours["recipe_source_ours"].startswith("smoke preset")


def test_a_list_covering_fewer_classes_than_the_label_set_is_refused(smoke_ckpt, tmp_path, no_training):
    root = _real_layout(tmp_path, "places205")  # labels 0..3 only: not the 205-class Places205 list
    with pytest.raises(DataError, match=r"train_places205.csv: its labels cover 4 classes, but Places205 has 205"):
        classify.run(_args(smoke_ckpt, tmp_path, "places205", "--data", str(root)))


def test_per_dataset_recipe_table_states_its_source():
    assert {ds for ds, _ in classify.TRANSFER_RECIPES} == set(DATASETS)
    for (ds, model), r in classify.TRANSFER_RECIPES.items():
        assert r.source.startswith("REFERENCE.md") and "not published" in r.source
        cfg = classify.recipe("paper", model, ds)
        assert (cfg.epochs, cfg.blr, cfg.layer_decay, cfg.drop_path, cfg.warmup_epochs) == \
            (r.epochs, r.blr, r.layer_decay, r.drop_path, r.warmup_epochs)
        # what the sources give: the release's ImageNet recipe of that size (FINETUNE.md)
        release = finetune.RECIPES["release"][classify.PAPER_MODELS[model][1]]
        assert (r.blr, r.layer_decay, r.drop_path, r.epochs) == \
            (release["blr"], release["layer_decay"], release["drop_path"], release["epochs"])
    with pytest.raises(ClassifyError, match="no entry for cifar"):
        classify.recipe("paper", "vit_base_patch16", "cifar")


def test_a_changed_table_entry_changes_that_dataset_only(monkeypatch):
    key = ("places365", "vit_large_patch16")
    monkeypatch.setitem(classify.TRANSFER_RECIPES, key,
                        replace(classify.TRANSFER_RECIPES[key], epochs=30, blr=2e-3, source="test"))
    assert (classify.recipe("paper", "vit_large_patch16", "places365").epochs,
            classify.recipe("paper", "vit_large_patch16", "places365").blr) == (30, 2e-3)
    assert classify.recipe("paper", "vit_large_patch16", "inat2017").epochs == 50


def test_smoke_results_default_to_outputs_results(smoke_ckpt, tmp_path, monkeypatch):
    """A smoke run says nothing about the paper: without --out its CSV goes to outputs/results/, never results/
    (reproduce.driver.results_path, as for the reproduction scripts); --out may name a folder too."""
    seen = []
    monkeypatch.setattr(finetune, "run", lambda cfg, datasets=None: {"finished": True, "final": {"acc1": 1.0}})
    monkeypatch.setattr(classify, "write_comparison", lambda *a: seen.append(a[-1]))
    args = ["--dataset", "inat2019", "--ckpt", str(smoke_ckpt), "--scale", "smoke", "--work-dir", str(tmp_path / "r")]
    classify.run(args)
    classify.run([*args, "--out", str(tmp_path / "mine")])
    name = "table6_transfer_inat2019_vit_smoke_smoke.csv"
    assert seen == [classify.REPO / "outputs" / "results" / name, tmp_path / "mine" / name]
