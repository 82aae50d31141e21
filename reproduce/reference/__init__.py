"""The MAE paper's numbers, one CSV per table/figure, and a registry of how to read them.

Every ``<name>.csv`` beside this file has the columns
``<key>, label, [descriptors...], <metrics...>, [extra references...], [baseline], approx, source, note``:
``<key>`` names the knob a row sets (e.g. ``decoder_depth``) and is unique per row; ``label`` is the
paper's wording; metric cells left empty are numbers the paper does not state (never filled in);
``approx`` is 1 where the paper gives the row's primary metrics only as a plot; ``baseline`` (Table 1
parts, Fig. 5) marks the paper's default setting. See ``README.md`` here for the file-to-paper map.

    >>> from reproduce.reference import load_reference, get_spec
    >>> float(load_reference("table1a_decoder_depth").set_index("decoder_depth").loc[8, "lin"])
    73.5
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import pandas as pd

REFERENCE_DIR = Path(__file__).resolve().parent
COMMON_COLUMNS = ("label", "approx", "source", "note")


@dataclass(frozen=True)
class TableSpec:
    """How to read one reference table/figure (MAE paper section named in ``label``).

    ``metrics`` are the comparable paper columns (ours vs paper); ``higher_is_better`` maps each
    metric to its direction; ``extra_refs`` are secondary reference columns carried beside the
    paper's (e.g. an independent reproduction); ``claims`` are the paper's qualitative statements.
    """

    name: str
    key: str
    metrics: tuple[str, ...]
    label: str
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    extra_refs: tuple[str, ...] = ()
    claims: tuple[str, ...] = ()
    x_label: str = ""
    # the paper's best setting per metric where its text states it but not every value is transcribed
    # (Fig. 5: "75% is best for both"); the verdict then ranks all our settings, not only the common ones
    stated_best: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = (set(self.higher_is_better) | set(self.stated_best)) - set(self.metrics)
        if unknown:
            raise ValueError(f"{self.name}: higher_is_better names unknown metrics {sorted(unknown)}")
        full = {m: self.higher_is_better.get(m, True) for m in self.metrics}
        object.__setattr__(self, "higher_is_better", full)

    @property
    def path(self) -> Path:
        return REFERENCE_DIR / f"{self.name}.csv"

    def better(self, metric: str) -> bool:
        """True when a larger value of ``metric`` is better."""
        if metric not in self.higher_is_better:
            raise KeyError(f"{self.name}: unknown metric {metric!r}; metrics: {list(self.metrics)}")
        return self.higher_is_better[metric]


_FT_LIN = ("ft", "lin")
_T1 = "ViT-L/16, 800 ep; ft / lin = ImageNet-1K top-1 (%)"

SPECS: tuple[TableSpec, ...] = (
    TableSpec("table1a_decoder_depth", "decoder_depth", _FT_LIN, "Table 1a: decoder depth",
              x_label="decoder depth (blocks)"),
    TableSpec("table1b_decoder_width", "decoder_width", _FT_LIN, "Table 1b: decoder width",
              x_label="decoder width (dim)"),
    TableSpec("table1c_mask_token", "encoder_mask_token", _FT_LIN + ("flops_rel",),
              "Table 1c: mask token in the encoder", {"flops_rel": False}, x_label="encoder mask token"),
    TableSpec("table1d_target", "target", _FT_LIN, "Table 1d: reconstruction target",
              x_label="reconstruction target"),
    TableSpec("table1e_augmentation", "augmentation", _FT_LIN, "Table 1e: data augmentation",
              x_label="augmentation"),
    TableSpec("table1f_mask_sampling", "mask_sampling", _FT_LIN, "Table 1f: mask sampling",
              x_label="mask sampling"),
    TableSpec("fig5_masking_ratio", "mask_ratio", _FT_LIN, "Fig. 5: masking ratio",
              claims=("ft is flat over 40-80% masking",
                      "every masking ratio beats ViT-L from scratch (82.5 ft)",
                      "75% is best for both ft and lin",
                      "lin rises from 54.6 (lowest ratio) to 73.5 at 75%"),
              x_label="masking ratio", stated_best={"ft": (0.75,), "lin": (0.75,)}),
    TableSpec("table2_wallclock", "setting", ("ft", "time_h", "speedup"), "Table 2: wall-clock time",
              {"time_h": False}, x_label="encoder, decoder depth",
              claims=("speedup is relative to the w/ [M] row of the same encoder",
                      "paper hardware: 128 TPU-v3 cores, 800 epochs")),
    TableSpec("fig7_schedule", "epochs", _FT_LIN, "Fig. 7: training schedule",
              extra_refs=("ft_mmselfsup", "lin_mmselfsup"),
              claims=("ft and lin both rise from 100 to 1600 epochs",
                      "lin has not saturated at 1600 epochs"),
              x_label="pre-training epochs", stated_best={"ft": (1600,), "lin": (1600,)}),
    TableSpec("fig8_model_size", "method", ("ft_vit_base", "ft_vit_large", "ft_vit_huge"),
              "Fig. 8: model size (IN1K fine-tuning)", x_label="model"),
    TableSpec("fig9_partial_ft", "tuned_blocks", ("ft",), "Fig. 9: partial fine-tuning (ViT-L)",
              claims=("4-6 tuned blocks come near full fine-tuning",
                      "MAE beats MoCo v3 once >= 1 block is tuned"),
              x_label="fine-tuned blocks (0.5 = MLP of the last block)", stated_best={"ft": (24,)}),
    TableSpec("table3_comparison", "method",
              ("ft_vit_base", "ft_vit_large", "ft_vit_huge", "ft_vit_huge_448",
               "lin_vit_base", "lin_vit_large", "lin_vit_huge"),
              "Table 3: comparison with previous results on IN1K", x_label="method"),
    TableSpec("table4_coco", "method",
              ("ap_box_vit_base", "ap_box_vit_large", "ap_mask_vit_base", "ap_mask_vit_large"),
              "Table 4: COCO detection and segmentation (Mask R-CNN)", x_label="pre-training"),
    TableSpec("table5_ade20k", "method", ("miou_vit_base", "miou_vit_large"),
              "Table 5: ADE20K semantic segmentation (UperNet)", x_label="pre-training"),
    TableSpec("table6_transfer", "model", ("inat2017", "inat2018", "inat2019", "places205", "places365"),
              "Table 6: transfer classification", x_label="model"),
    TableSpec("table7_pixels_vs_tokens", "target",
              ("in1k_vit_base", "in1k_vit_large", "in1k_vit_huge", "coco_box_vit_base",
               "coco_box_vit_large", "ade_miou_vit_base", "ade_miou_vit_large"),
              "Table 7: pixels vs tokens as MAE target", x_label="target"),
    TableSpec("followup_vitdet_coco", "method",
              ("ap_box_vit_base", "ap_box_vit_large", "ap_box_vit_huge",
               "ap_mask_vit_base", "ap_mask_vit_large", "ap_mask_vit_huge"),
              "ViTDet follow-up: COCO Mask R-CNN with MAE IN1K checkpoints", x_label="method"),
    TableSpec("sec4_vit_large_scratch", "recipe", ("ft",), "Sec. 4: ViT-L supervised from scratch",
              x_label="recipe"),
    TableSpec("sec3_loss_scope", "loss_on", ("ft_delta",), "Sec. 3: loss on masked patches only",
              claims=("computing the loss on all patches costs ~0.5% accuracy",), x_label="loss on"),
    TableSpec("fig_reconstructions", "panel", (), "Figs. 2/3/4/6: reconstruction figures (settings only)",
              claims=("no loss on visible patches, so their output is worse there; overlaying the "
                      "visible patches improves the picture",), x_label="panel"),
    TableSpec("release_throughput", "job", ("time_h", "img_s_per_gpu"),
              "Official release: wall-clock anchors (V100)", {"time_h": False}, x_label="job"),
)
REGISTRY: dict[str, TableSpec] = {s.name: s for s in SPECS}


def names() -> list[str]:
    """Every registered reference table/figure name."""
    return list(REGISTRY)


def get_spec(name: str) -> TableSpec:
    """The :class:`TableSpec` of ``name``; a clear error listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown reference table {name!r}; known: {', '.join(REGISTRY)}") from None


def load_reference(name: str) -> pd.DataFrame:
    """Load ``reference/<name>.csv`` and check its schema; empty cells become NaN (not stated)."""
    spec = get_spec(name)
    path = spec.path
    if not path.is_file():
        raise FileNotFoundError(f"reference CSV missing: {path}")
    # Only empty cells are missing: keys such as 'none' (Table 1e) must stay strings.
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    _check_schema(df, spec, path)
    df["note"] = df["note"].fillna("").astype(str)
    return df


def _check_schema(df: pd.DataFrame, spec: TableSpec, path: Path) -> None:
    need = (spec.key, *COMMON_COLUMNS, *spec.metrics, *spec.extra_refs)
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; has {list(df.columns)}")
    if df.columns[0] != spec.key:
        raise ValueError(f"{path}: first column must be the key {spec.key!r}, got {df.columns[0]!r}")
    keys = df[spec.key]
    if keys.isna().any():
        raise ValueError(f"{path}: empty key {spec.key!r} in rows {list(df.index[keys.isna()])}")
    dup = keys[keys.duplicated()].tolist()
    if dup:
        raise ValueError(f"{path}: duplicate keys {dup} in column {spec.key!r}")
    for col in (*spec.metrics, *spec.extra_refs):
        if not pd.api.types.is_numeric_dtype(df[col]):
            raise ValueError(f"{path}: metric column {col!r} is not numeric: {df[col].tolist()}")
    bad = ~df["approx"].isin([0, 1])
    if bad.any():
        raise ValueError(f"{path}: 'approx' must be 0 or 1, got {df.loc[bad, 'approx'].tolist()}")
    if "baseline" in df.columns and not df["baseline"].isin([0, 1]).all():
        raise ValueError(f"{path}: 'baseline' must be 0 or 1, got {df['baseline'].tolist()}")
    if df["source"].isna().any() or (df["source"].astype(str).str.strip() == "").any():
        raise ValueError(f"{path}: every row needs a 'source'")


def baseline_key(name: str) -> object | None:
    """The key of the paper's default setting (``baseline == 1``) in ``name``, or None."""
    df = load_reference(name)
    if "baseline" not in df.columns:
        return None
    rows = df.loc[df["baseline"] == 1, get_spec(name).key]
    return rows.iloc[0] if len(rows) else None
