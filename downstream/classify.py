"""Transfer to iNaturalist / Places classification with an MAE encoder: paper Table 6.

The paper (Sec. 5, Table 6) fine-tunes the ImageNet-1K pre-trained MAE on each label set with the
ImageNet fine-tuning recipe (REFERENCE.md: "iNat/Places: the ImageNet fine-tuning recipe on those
label sets"). This script does exactly that through :func:`mae.protocols.finetune.run` (one training
loop, one checkpoint module), feeding it :class:`mae.data.ListDataset` sets::

    python downstream/classify.py --dataset inat2018 --ckpt mae_pretrain_vit_base.pth --data data/inat2018 --scale paper
    python downstream/classify.py --dataset places365 --ckpt outputs/smoke/checkpoint-last.pth --scale smoke

Datasets (``DATASETS``; paths relative to ``--data``, each overridable by a flag)::

    name       classes  format  train list / val list                          images the lists point into
    inat2017   5089     inat    train2017.json / val2017.json                  the root (file_name: train_val_images/...)
    inat2018   8142     inat    train2018.json / val2018.json                  the root (file_name: train_val2018/...)
    inat2019   1010     inat    train2019.json / val2019.json                  the root (file_name: train_val2019/...)
    places205  205      places  trainvalsplit_places205/train_places205.csv    data/vision/torralba/deeplearning/images256
                                / trainvalsplit_places205/val_places205.csv    (both splits)
    places365  365      places  places365_train_standard.txt                   data_256 (train), val_256 (val); pass
                                / places365_val.txt,                           --train-images / --val-images for the
                                classes: categories_places365.txt              high-resolution data_large / val_large

The iNat lists are the official json files (``images`` / ``annotations`` / ``categories``); the Places
lists are the official "relative/path.jpg label" text files (Places205's ``.csv`` files are
space-separated the same way). Every list is read and every listed image checked before training
starts. With ``--data`` the head has the dataset's number of classes: a list that defines another
number (iNat ``categories``, the Places365 class index) or holds a label outside it is an error, not
a silently different head.

Scales: ``paper`` = the per-dataset recipe of ``TRANSFER_RECIPES`` (epochs, base lr, layer decay,
drop path, warmup for each dataset and ViT size, each entry naming its source) over the ImageNet
fine-tuning preset of :mod:`mae.protocols.finetune` for the checkpoint's ViT (augmentation, mixup,
optimizer, batch; ``--data`` required); ``smoke`` = the
``smoke`` preset (one epoch, CPU, seconds) on a generated fixture in the dataset's own layout
(4 classes, 32 train / 12 val images) unless ``--data`` is given. ``--set FIELD=VALUE`` overrides any
fine-tuning field (e.g. ``accum_iter=4``, ``img_size=448`` for the ViT-H448 row, ``resume=auto``).

Results: ``results/table6_transfer_<dataset>_<row>_<scale>.csv`` (``outputs/results/`` at the smoke scale,
whose numbers say nothing about the paper; + ``.meta.json``), written by
:mod:`reproduce.report` beside ``reproduce/reference/table6_transfer.csv``: our final top-1 (last
epoch, no selection on val) in the dataset's column of the checkpoint's row (vit_base / vit_large /
vit_huge / vit_huge_448). A model that is none of the paper's (smoke / mini sizes) gets a row of its
own, named after it (e.g. ``vit_smoke``) and labelled ``n/a: not the paper's model``: no paper number,
no difference. Scale, commit, device, date and command are on every row.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
TABLE = "table6_transfer"
SCALES = ("smoke", "paper")


class ClassifyError(ValueError):
    """A flag combination or a checkpoint that this script cannot run (raised before training)."""


@dataclass(frozen=True)
class TransferSet:
    """One target dataset of Table 6: label set, list format, default file layout, reference column."""

    name: str  # CLI name and the Table 6 column (reproduce/reference/table6_transfer.csv)
    title: str
    num_classes: int
    fmt: str  # mae.data.LIST_FORMATS: "inat" (json) | "places" (text list)
    train_list: str  # relative to the dataset root
    val_list: str
    train_images: str = ""  # image folder the train list's paths are relative to ("" = the root)
    val_images: str = ""
    class_index: str | None = None  # Places365: "name index" lines
    fixture_prefix: str = ""  # iNat: the folder the json's file_name values start with


DATASETS: dict[str, TransferSet] = {s.name: s for s in (
    TransferSet("inat2017", "iNaturalist 2017", 5089, "inat", "train2017.json", "val2017.json",
                fixture_prefix="train_val_images"),
    TransferSet("inat2018", "iNaturalist 2018", 8142, "inat", "train2018.json", "val2018.json",
                fixture_prefix="train_val2018"),
    TransferSet("inat2019", "iNaturalist 2019", 1010, "inat", "train2019.json", "val2019.json",
                fixture_prefix="train_val2019"),
    TransferSet("places205", "Places205", 205, "places", "trainvalsplit_places205/train_places205.csv",
                "trainvalsplit_places205/val_places205.csv", "data/vision/torralba/deeplearning/images256",
                "data/vision/torralba/deeplearning/images256"),
    TransferSet("places365", "Places365-Standard", 365, "places", "places365_train_standard.txt", "places365_val.txt",
                "data_256", "val_256", class_index="categories_places365.txt"),
)}

@dataclass(frozen=True)
class TransferRecipe:
    """The per-dataset part of a Table 6 fine-tuning recipe (the rest is the ImageNet preset's)."""

    epochs: int
    blr: float  # lr = blr * effective batch / 256
    layer_decay: float
    drop_path: float
    warmup_epochs: float
    source: str


# What the sources say (REFERENCE.md, "Downstream recipes"): Table 6 fine-tunes the released IN1K
# MAE models with "the ImageNet fine-tuning recipe on those label sets". The paper tuned the lr and
# epochs per dataset but neither it nor the release publishes those values, so every entry below is
# the ImageNet recipe of the release's FINETUNE.md for that ViT size (the one of the released
# checkpoints; REFERENCE.md, fine-tuning) until a published value replaces it -- with its source.
_IMAGENET_FT = "REFERENCE.md: the ImageNet fine-tuning recipe (release FINETUNE.md, {size}) on the label set; " \
               "per-dataset lr / epochs not published"
_PER_SIZE = {  # release FINETUNE.md (REFERENCE.md, fine-tuning)
    "vit_base_patch16": dict(epochs=100, blr=5e-4, layer_decay=0.65, drop_path=0.1, warmup_epochs=5.0),
    "vit_large_patch16": dict(epochs=50, blr=1e-3, layer_decay=0.75, drop_path=0.2, warmup_epochs=5.0),
    "vit_huge_patch14": dict(epochs=50, blr=1e-3, layer_decay=0.75, drop_path=0.3, warmup_epochs=5.0),
}
#: (dataset, classifier preset) -> recipe; edit an entry (and its source) to change one dataset's run
TRANSFER_RECIPES: dict[tuple[str, str], TransferRecipe] = {
    (ds, model): TransferRecipe(**values, source=_IMAGENET_FT.format(size=model))
    for ds in ("inat2017", "inat2018", "inat2019", "places205", "places365")
    for model, values in _PER_SIZE.items()
}

# classifier preset -> (fine-tuning recipe of mae.protocols.finetune.PRESETS, Table 6 row)
PAPER_MODELS: dict[str, tuple[str, str]] = {
    "vit_base_patch16": ("paper_vit_base", "vit_base"),
    "vit_large_patch16": ("paper_vit_large", "vit_large"),
    "vit_huge_patch14": ("paper_vit_huge", "vit_huge"),
}
HIGH_RES_ROW = {("vit_huge", 448): "vit_huge_448"}  # Table 6's ViT-H fine-tuned at 448 px
NOT_PAPER = "n/a: not the paper's model"  # the label of a row whose model has no Table 6 row
# fields classify.py sets itself; --set may not change them
OWN_FIELDS = ("data", "val_data", "finetune", "nb_classes", "output_dir", "model")

INT_COLUMNS = ("num_classes", "train_images", "val_images", "img_size", "epochs")
FIXTURE_CLASSES = 4
FIXTURE_TRAIN_PER_CLASS = 8  # 32 train images: two smoke batches of 16
FIXTURE_VAL_PER_CLASS = 3
FIXTURE_SIZE = 40


# ------------------------------------------------------------------------------------ model
def resolve_model(ckpt: str, model: str | None) -> str:
    """The classifier preset (mae.models.vit.PRESETS) for ``ckpt``: ``model`` checked, or inferred."""
    from mae.models.interop import read_state_dict
    from mae.models.vit import PRESETS, vit_for_mae

    if not os.path.exists(ckpt):  # a file, or a Hugging Face model folder
        raise FileNotFoundError(f"--ckpt {ckpt}: no such file (an MAE pre-training checkpoint, ours or official)")
    _, info = read_state_dict(ckpt)  # any format; raises for anything that is not a ViT / MAE
    label = info.label
    dim, depth, patch, grid = info.embed_dim, info.depth, info.patch_size, info.grid or 0
    if model is not None:
        name = vit_for_mae(model) if model.startswith("mae_") else model
        if name not in PRESETS:
            raise ClassifyError(f"--model {model}: unknown; available: {', '.join(sorted(PRESETS))}")
        c = PRESETS[name]
        if (c.embed_dim, c.depth, c.patch_size) != (dim, depth, patch):
            raise ClassifyError(f"--model {name} is a ViT of width {c.embed_dim}, depth {c.depth}, patch {c.patch_size}, "
                                f"but {label} holds width {dim}, depth {depth}, patch {patch}")
        return name
    hits = [n for n, c in PRESETS.items() if (c.embed_dim, c.depth, c.patch_size) == (dim, depth, patch)]
    if len(hits) > 1:
        hits = [n for n in hits if PRESETS[n].img_size == grid * patch] or hits
    if len(hits) != 1:
        raise ClassifyError(f"{label}: cannot tell the ViT preset of a width-{dim}, depth-{depth}, patch-{patch} "
                            f"encoder (candidates: {hits or 'none'}); pass --model")
    return hits[0]


def table6_row(model: str, img_size: int) -> str:
    """The Table 6 row a run fills: the checkpoint's size (ViT-H at 448 px: vit_huge_448); a model that is
    none of the paper's has a row of its own, its name (never compared with a paper number)."""
    if model not in PAPER_MODELS:
        return model
    row = PAPER_MODELS[model][1]
    return HIGH_RES_ROW.get((row, img_size), row)


def recipe(scale: str, model: str, dataset: str = "inat2018") -> Any:
    """The fine-tuning Config of a scale: the ImageNet preset of ``model`` with ``dataset``'s entry of
    ``TRANSFER_RECIPES`` (paper), or the smoke preset."""
    from mae.models.vit import PRESETS as VIT
    from mae.protocols import finetune

    if scale == "paper":
        if model not in PAPER_MODELS:
            raise ClassifyError(f"no paper fine-tuning recipe for {model}; paper scale covers "
                                f"{', '.join(PAPER_MODELS)} (use --scale smoke for small models)")
        if (dataset, model) not in TRANSFER_RECIPES:
            raise ClassifyError(f"TRANSFER_RECIPES has no entry for {dataset} / {model}")
        r = TRANSFER_RECIPES[(dataset, model)]
        return replace(finetune.PRESETS[PAPER_MODELS[model][0]], epochs=r.epochs, blr=r.blr,
                       layer_decay=r.layer_decay, drop_path=r.drop_path, warmup_epochs=r.warmup_epochs)
    return replace(finetune.PRESETS["smoke"], model=model, img_size=VIT[model].img_size)


def recipe_source(scale: str, model: str, dataset: str) -> str:
    """Where the run's recipe comes from (recorded on the CSV row)."""
    if scale == "paper":
        return TRANSFER_RECIPES[(dataset, model)].source
    return "smoke preset of mae.protocols.finetune (plumbing only)"


def apply_sets(cfg: Any, items: Sequence[str]) -> Any:
    """``--set FIELD=VALUE`` overrides (YAML values, as the mae CLI); unknown / reserved fields raise."""
    from mae.config import from_dict, to_dict

    names = {f.name for f in fields(cfg)}
    over: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ClassifyError(f"--set expects FIELD=VALUE (e.g. accum_iter=4), got {item!r}")
        if key not in names:
            raise ClassifyError(f"--set {key}: the fine-tuning Config has no such field "
                                f"(see `python -m mae finetune --help`)")
        if key in OWN_FIELDS:
            raise ClassifyError(f"--set {key}: set by classify.py itself (use its own flags: --data, --ckpt, "
                                f"--model, --work-dir, --train-list/--val-list)")
        text = text.strip()
        over[key] = None if text.lower() in ("none", "null", "~", "") else yaml.safe_load(text)
    try:
        return from_dict(type(cfg), {**to_dict(cfg), **over})
    except (TypeError, ValueError) as e:
        raise ClassifyError(f"--set {over}: {e}") from None


# ------------------------------------------------------------------------------------- data
def _atomic_bytes(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _fixture_image(rng: np.random.Generator, label: int, n_classes: int) -> Any:
    """A noisy image whose dominant hue and stripe period depend on ``label`` (learnable in principle)."""
    from PIL import Image

    s = FIXTURE_SIZE
    hue = np.array([np.cos(2 * np.pi * label / n_classes), np.sin(2 * np.pi * label / n_classes), 0.5]) * 80 + 120
    img = rng.normal(0, 25, size=(s, s, 3)) + hue
    img[:, :: 2 + label % 4] += 40
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_fixture(spec: TransferSet, root: str | Path, seed: int = 0) -> Path:
    """A tiny dataset in ``spec``'s own layout (lists, class index, image folders); returns ``root``.

    ``FIXTURE_CLASSES`` classes, ``FIXTURE_TRAIN_PER_CLASS`` / ``FIXTURE_VAL_PER_CLASS`` images each,
    ``FIXTURE_SIZE`` px JPEGs; the same ``seed`` writes the same files (each written atomically).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = [f"fixture_class_{k}" for k in range(FIXTURE_CLASSES)]
    per_split = (("train", FIXTURE_TRAIN_PER_CLASS), ("val", FIXTURE_VAL_PER_CLASS))
    if spec.fmt == "inat":
        cats = [{"id": k, "name": n, "supercategory": "Fixture"} for k, n in enumerate(names)]
        next_id = 0
        for split, per_class in per_split:
            images, anns = [], []
            for k in range(FIXTURE_CLASSES):
                for i in range(per_class):
                    rel = f"{spec.fixture_prefix}/Fixture/{names[k]}/{split}_{i:03d}.jpg"
                    img = _fixture_image(rng, k, FIXTURE_CLASSES)
                    _atomic_bytes(root / rel, lambda p, im=img: im.save(p, format="JPEG", quality=90))
                    images.append({"id": next_id, "file_name": rel, "width": FIXTURE_SIZE, "height": FIXTURE_SIZE})
                    anns.append({"id": next_id, "image_id": next_id, "category_id": k})
                    next_id += 1
            text = json.dumps({"info": {"description": f"{spec.title} smoke fixture", "seed": seed},
                               "images": images, "annotations": anns, "categories": cats})
            lst = root / (spec.train_list if split == "train" else spec.val_list)
            _atomic_bytes(lst, lambda p, t=text: p.write_text(t))
        return root
    # Places: "path label" lines; Places365 train paths start with "/" and its val images are flat
    for split, per_class in per_split:
        img_dir = root / (spec.train_images if split == "train" else spec.val_images)
        lines = []
        for k in range(FIXTURE_CLASSES):
            for i in range(per_class):
                if split == "val" and spec.class_index:
                    rel = f"Places365_val_{k * per_class + i + 1:08d}.jpg"
                else:
                    rel = f"{'/' if spec.class_index else ''}f/{names[k]}/{split}_{i:08d}.jpg"
                img = _fixture_image(rng, k, FIXTURE_CLASSES)
                _atomic_bytes(img_dir / rel.lstrip("/"), lambda p, im=img: im.save(p, format="JPEG", quality=90))
                lines.append(f"{rel} {k}")
        lst = root / (spec.train_list if split == "train" else spec.val_list)
        _atomic_bytes(lst, lambda p, t="\n".join(lines) + "\n": p.write_text(t))
    if spec.class_index:
        text = "".join(f"/f/{n} {k}\n" for k, n in enumerate(names))
        _atomic_bytes(root / spec.class_index, lambda p, t=text: p.write_text(t))
    return root


@dataclass(frozen=True)
class DataLayout:
    """Where one run's lists and images are (absolute paths)."""

    root: Path
    train_list: Path
    val_list: Path
    train_images: Path
    val_images: Path
    class_index: Path | None
    num_classes: int  # expected: the dataset's (the fixture's for a generated smoke set)
    generated: bool


def _under(root: Path, given: str | None, default: str) -> Path:
    p = Path(given).expanduser() if given else Path(default)
    return p if p.is_absolute() else root / p


def resolve_layout(spec: TransferSet, args: argparse.Namespace, work_dir: Path) -> DataLayout:
    """The run's files: flags over the dataset's defaults under ``--data`` (or a generated smoke fixture)."""
    custom = [f"--{n.replace('_', '-')}" for n in ("train_list", "val_list", "train_images", "val_images",
                                                    "class_index") if getattr(args, n)]
    if args.data:
        root = Path(args.data).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"--data {args.data}: no such directory ({spec.title} root)")
        generated, n = False, spec.num_classes
    elif args.scale == "paper":
        raise ClassifyError(f"--scale paper needs --data (the {spec.title} root holding {spec.train_list}); "
                            "the paper's recipe is not run on a generated fixture")
    elif custom:
        raise ClassifyError(f"{', '.join(custom)} need --data (the folder the lists and images live in)")
    else:
        root = make_fixture(spec, work_dir / "data" / spec.name)
        generated, n = True, FIXTURE_CLASSES
    if args.class_index and spec.fmt != "places":
        raise ClassifyError(f"--class-index is for Places lists; {spec.title} jsons carry their 'categories'")
    index = args.class_index or spec.class_index
    return DataLayout(root, _under(root, args.train_list, spec.train_list), _under(root, args.val_list, spec.val_list),
                      _under(root, args.train_images, spec.train_images),
                      _under(root, args.val_images, spec.val_images),
                      _under(root, index, index) if index else None, n, generated)


def check_class_count(spec: TransferSet, layout: DataLayout, train: Any) -> None:
    """The train list must use every class of the label set (5089 / 8142 / 1010 / 205 / 365): a list
    with fewer is another label set, or a truncated file -- a different Table 6 entry, not a run of it."""
    used = len(set(train.targets))
    if used != layout.num_classes:
        what = "the generated fixture" if layout.generated else spec.title
        from mae.data import DataError
        raise DataError(f"{layout.train_list}: its labels cover {used} classes, but {what} has {layout.num_classes} "
                        f"(TransferSet {spec.name!r}); is it the full {spec.title} train list?")


def build_sets(spec: TransferSet, layout: DataLayout) -> tuple[Any, Any]:
    """(train, val) ListDatasets, every list line and image file checked; classes must agree."""
    from mae.data import DataError, ListDataset

    sets = []
    for split, lst, images in (("train", layout.train_list, layout.train_images),
                               ("val", layout.val_list, layout.val_images)):
        try:
            sets.append(ListDataset(images, lst, spec.fmt, class_index=layout.class_index,
                                    num_classes=layout.num_classes))
        except DataError as e:
            what = "the generated fixture" if layout.generated else f"the {layout.num_classes}-class label set"
            raise DataError(f"{spec.title} {split} ({what}): {e}") from e
    train, val = sets
    check_class_count(spec, layout, train)
    if list(train.classes) != list(val.classes):
        only_t = sorted(set(train.classes) - set(val.classes))[:5]
        only_v = sorted(set(val.classes) - set(train.classes))[:5]
        raise DataError(f"{spec.title}: the train and val lists define different classes ({layout.train_list} vs "
                        f"{layout.val_list}): only in train {only_t}, only in val {only_v}")
    return train, val


# -------------------------------------------------------------------------------------- run
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="downstream/classify.py", description=__doc__.splitlines()[0],
                                epilog="Default list files per dataset: see the module docstring.")
    p.add_argument("--dataset", required=True, choices=list(DATASETS))
    p.add_argument("--ckpt", required=True, help="MAE pre-training checkpoint ({'model': state_dict}, official or ours)")
    p.add_argument("--scale", required=True, choices=SCALES,
                   help="smoke: one epoch on CPU (a generated fixture without --data); paper: the paper's recipe")
    p.add_argument("--data", default=None, help="dataset root (required at paper scale)")
    p.add_argument("--train-list", default=None, help="train list (json / txt), relative to --data or absolute")
    p.add_argument("--val-list", default=None, help="val list, relative to --data or absolute")
    p.add_argument("--train-images", default=None, help="folder the train list's paths are relative to")
    p.add_argument("--val-images", default=None, help="folder the val list's paths are relative to")
    p.add_argument("--class-index", default=None, help="Places class-index file ('name index' lines)")
    p.add_argument("--model", default=None,
                   help="classifier preset (vit_base_patch16 | vit_large_patch16 | vit_huge_patch14 | vit_smoke ...); "
                        "default: inferred from the checkpoint")
    p.add_argument("--work-dir", default=None, help="run folder (default outputs/downstream/classify_<dataset>_<scale>)")
    p.add_argument("--out", default=None,
                   help="results CSV (or its folder), rewritten (default results/table6_transfer_<dataset>_<row>_"
                        "<scale>.csv; outputs/results/ at the smoke scale)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="FIELD=VALUE",
                   help="override a fine-tuning Config field (repeatable), e.g. accum_iter=4, img_size=448, resume=auto")
    return p


def run(argv: Sequence[str] | None = None) -> pd.DataFrame | None:
    """Check every input, fine-tune, write the Table 6 comparison CSV; returns it (rank 0), else None."""
    from mae.protocols import finetune
    from reproduce.driver import results_path

    args = build_parser().parse_args(argv)
    spec = DATASETS[args.dataset]
    work_dir = Path(args.work_dir or REPO / "outputs" / "downstream" / f"classify_{spec.name}_{args.scale}").resolve()
    if args.scale == "paper" and not args.data:
        raise ClassifyError(f"--scale paper needs --data (the {spec.title} root)")

    # every input is checked before the model or the Trainer exists
    model = resolve_model(args.ckpt, args.model)
    cfg = apply_sets(recipe(args.scale, model, spec.name), args.overrides)
    layout = resolve_layout(spec, args, work_dir)
    train, val = build_sets(spec, layout)
    cfg = replace(cfg, model=model, finetune=str(Path(args.ckpt).resolve()), data=str(layout.root), val_data=None,
                  nb_classes=layout.num_classes, output_dir=str(work_dir))
    row = table6_row(model, cfg.img_size)
    out = results_path(args.out, f"{TABLE}_{spec.name}_{row}", args.scale)  # smoke: outputs/results/
    out = out if args.out is not None else REPO / out

    result = finetune.run(cfg, datasets=(train, val, layout.num_classes))
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    if not result.get("finished") or "acc1" not in (result.get("final") or {}):
        raise RuntimeError(f"fine-tuning stopped before its last evaluation (max_iters or a signal?); resume with "
                           f"--set resume=auto --work-dir {work_dir}")
    return write_comparison(spec, row, model, cfg, result, layout, len(train), len(val), args, out)


def write_comparison(spec: TransferSet, row: str, model: str, cfg: Any, result: dict[str, Any], layout: DataLayout,
                     n_train: int, n_val: int, args: argparse.Namespace, out: Path) -> pd.DataFrame:
    """Our final top-1 in the dataset's Table 6 column, beside the paper's (``reproduce.report``)."""
    from reproduce.reference import load_reference
    from reproduce.report import compare, format_table, provenance, verdict, write_results

    final, best = result["final"], result.get("best") or {}
    ours = pd.DataFrame([{
        "model": row, spec.name: round(float(final["acc1"]), 2), "acc5": round(float(final.get("acc5", np.nan)), 2),
        "acc1_best": round(float(best.get("acc1", np.nan)), 2), "classifier": model, "ckpt": str(args.ckpt),
        "data": "generated fixture" if layout.generated else str(layout.root), "num_classes": layout.num_classes,
        "train_images": n_train, "val_images": n_val, "img_size": cfg.img_size, "epochs": cfg.epochs,
        "blr": cfg.blr, "layer_decay": cfg.layer_decay, "drop_path": cfg.drop_path,
        "recipe_source": recipe_source(args.scale, model, spec.name), "work_dir": cfg.output_dir}])
    df = compare(TABLE, ours, scale=args.scale, prov=provenance())
    for col in INT_COLUMNS:  # the outer join with the paper's rows made them float
        df[f"{col}_ours"] = df[f"{col}_ours"].astype("Int64")
    if row not in set(load_reference(TABLE)["model"]):  # compare() left its paper number and difference empty
        df.loc[df["model"] == row, "label"] = f"{model} ({NOT_PAPER})"
    verdicts = verdict(df, TABLE)
    write_results(df, verdicts, out)
    print(format_table(df, verdicts, title=f"[classify] {spec.title} ({TABLE}) -> {out}"))
    return df


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: input errors become one line on stderr and exit status 2 (MAE_DEBUG=1: traceback)."""
    from mae.cli import guarded
    from mae.provenance import require_same_checkout

    require_same_checkout()
    from mae.models.interop import InteropError

    return guarded("classify", run, argv, extra_errors=(ClassifyError, InteropError))[0]


if __name__ == "__main__":
    raise SystemExit(main())
