"""Table 1 of MAE (ablations, ViT-L/16, 800 epochs) and Figure 5 (masking ratio), compared with the paper.
Each setting is pre-trained, then fine-tuned (ft) and linear-probed (lin).

    python reproduce/table1.py --part masking_ratio --scale smoke     # Fig. 5, CPU, about a minute
    python reproduce/table1.py --scale smoke                          # every part
    python reproduce/table1.py --part decoder_depth --scale mini      # one GPU
    python reproduce/table1.py --part target --scale paper --data /path/to/imagenet --launcher slurm
    python reproduce/table1.py --part decoder_depth --only decoder_depth=8 --dry-run

Parts: decoder_depth (1a), decoder_width (1b), mask_token (1c, with FLOPs relative to w/o [M]),
target (1d: pixel, norm_pixel, pca, token; plus loss_on=all, compared with Sec. 3's "~0.5% lower"),
augmentation (1e), mask_sampling (1f), masking_ratio (Fig. 5). Every row changes one switch of the
scale's baseline (the paper's: decoder 8 x 512, w/o [M], pixel target w/o norm, random-size crop,
random 75% masking). The dVAE-token row first trains a VQ tokenizer (reproduce/tokenizer.py, once).
Results: <out>/<table>_<scale>.csv per part (plus sec3_loss_scope_<scale>.csv for the target part).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from reproduce.grid import Cell, GridResult, cell_rows, standard_columns
from reproduce.driver import Report, TableJob, script_main
from reproduce.scales import (ABLATIONS_ROOT, Scale, pretrain_eval_cell, tokenizer_cell, tokenizer_ref,
                              with_shared_baseline)

# Table 1e's keys (the paper's rows) -> the pre-training augmentation names of mae.data
AUGMENTATIONS = {"none": "none", "crop_fixed": "crop_fixed", "crop_rand": "crop_rand",
                 "crop_rand_color_jitter": "crop_rand_jitter"}
TARGETS = ("pixel", "norm_pixel", "pca", "token")


@dataclass(frozen=True)
class Part:
    """One part of Table 1: the reference table it is compared with and its cells at a scale."""

    table: str
    cells: Callable[[Scale], list[Cell]]
    title: str


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _cell(scale: Scale, key: str, value: Any, info: dict[str, Any] | None = None, **pretrain_over: Any) -> Cell:
    return pretrain_eval_cell(scale, f"{key}_{_fmt(value)}", {key: value}, replace(scale.pretrain, **pretrain_over),
                              info=info)


def _paper_keys(table: str) -> list[Any]:
    from reproduce.reference import get_spec, load_reference
    return load_reference(table)[get_spec(table).key].tolist()


def decoder_depth_cells(scale: Scale) -> list[Cell]:
    return [_cell(scale, "decoder_depth", d, {"decoder_depth_used": scale.decoder_depth[d]},
                  decoder_depth=scale.decoder_depth[d]) for d in _paper_keys("table1a_decoder_depth")]


def decoder_width_cells(scale: Scale) -> list[Cell]:
    return [_cell(scale, "decoder_width", w, {"decoder_width_used": scale.decoder_width[w]},
                  decoder_embed_dim=scale.decoder_width[w]) for w in _paper_keys("table1b_decoder_width")]


def mask_token_cells(scale: Scale) -> list[Cell]:
    return [_cell(scale, "encoder_mask_token", v, encoder_mask_token=(v == "with"))
            for v in _paper_keys("table1c_mask_token")]


def target_cells(scale: Scale) -> list[Cell]:
    from mae.models import mae_config
    m = mae_config(scale.pretrain.model)
    pca_k = (m.patch_size ** 2 * m.in_chans) // 8  # the paper: 96 of 768 coefficients
    cells: list[Cell] = []
    if "token" in _paper_keys("table1d_target"):
        cells.append(tokenizer_cell(scale))
    for t in _paper_keys("table1d_target"):
        if t == "token":
            tok = scale.tokenizer
            cells.append(pretrain_eval_cell(scale, "target_token", {"target": t}, replace(scale.pretrain, target=t),
                                            info={"tokenizer_vocab_used": tok.vocab_size},
                                            pretrain_inputs={"tokenizer": tokenizer_ref()}))
        elif t == "pca":
            cells.append(_cell(scale, "target", t, {"pca_components_used": pca_k}, target=t, pca_components=pca_k))
        else:
            cells.append(_cell(scale, "target", t, target=t))
    # Sec. 3: the loss on all patches instead of the masked ones (pixel target, as the baseline)
    cells.append(_cell(scale, "loss_on", "all", loss_on="all"))
    return cells


def augmentation_cells(scale: Scale) -> list[Cell]:
    cells = []
    for key in _paper_keys("table1e_augmentation"):
        if key not in AUGMENTATIONS:
            raise KeyError(f"table1e key {key!r} has no augmentation in mae.data (known: {sorted(AUGMENTATIONS)})")
        cells.append(_cell(scale, "augmentation", key, {"augmentation_used": AUGMENTATIONS[key]},
                           augmentation=AUGMENTATIONS[key]))
    return cells


def mask_sampling_cells(scale: Scale) -> list[Cell]:
    from reproduce.reference import load_reference
    return [_cell(scale, "mask_sampling", r.mask_sampling, mask_strategy=r.strategy, mask_ratio=float(r.mask_ratio))
            for r in load_reference("table1f_mask_sampling").itertuples(index=False)]


def masking_ratio_cells(scale: Scale) -> list[Cell]:
    """Fig. 5: one cell per ratio. ``patches_kept`` / ``mask_ratio_used`` say what a ratio means on the
    scale's grid (``int(L * (1 - r))`` patches are kept, as in the release): on the cpu scale's 16
    patches 0.7 and 0.75 both keep 4, so those two cells are the same run."""
    from mae.masking import num_keep
    from mae.models.mae import mae_config
    n = mae_config(scale.pretrain.model, img_size=scale.pretrain.img_size).num_patches
    cells = []
    for r in _paper_keys("fig5_masking_ratio"):
        kept = num_keep(n, float(r))
        cells.append(_cell(scale, "mask_ratio", float(r), {"patches_kept": f"{kept}/{n}",
                                                           "mask_ratio_used": round(1 - kept / n, 4)},
                           mask_ratio=float(r)))
    return cells


PARTS: dict[str, Part] = {
    "decoder_depth": Part("table1a_decoder_depth", decoder_depth_cells, "Table 1a: decoder depth"),
    "decoder_width": Part("table1b_decoder_width", decoder_width_cells, "Table 1b: decoder width"),
    "mask_token": Part("table1c_mask_token", mask_token_cells, "Table 1c: mask token in the encoder"),
    "target": Part("table1d_target", target_cells, "Table 1d: reconstruction target"),
    "augmentation": Part("table1e_augmentation", augmentation_cells, "Table 1e: data augmentation"),
    "mask_sampling": Part("table1f_mask_sampling", mask_sampling_cells, "Table 1f: mask sampling"),
    "masking_ratio": Part("fig5_masking_ratio", masking_ratio_cells, "Figure 5: masking ratio"),
}


# ------------------------------------------------------------------------------------ rows
def _rows_with(key: str, extra: Callable[[Cell, GridResult], dict[str, Any]] | None = None
               ) -> Callable[[GridResult], list[dict[str, Any]]]:
    def rows(grid: GridResult) -> list[dict[str, Any]]:
        def columns(c: Cell, g: GridResult) -> dict[str, Any]:
            return {**standard_columns(c, g), **(extra(c, g) if extra else {})}
        return [r for r in cell_rows(grid, columns) if key in r]
    return rows


def _flops(cell: Cell) -> float:
    from mae.models import create_mae
    from mae.flops import forward_flops
    cfg = cell.stage("pretrain").config
    return forward_flops(create_mae(cfg.model, **cfg.model_overrides()), cfg.img_size, cfg.mask_ratio)


def mask_token_rows(grid: GridResult) -> list[dict[str, Any]]:
    """Table 1c rows with FLOPs of one pre-training forward relative to the encoder w/o [M]."""
    # FLOPs need no training: counted on freshly built models for every cell of the table
    flops = {c.key["encoder_mask_token"]: _flops(c) for c in grid.cells if "encoder_mask_token" in c.key}
    rows = _rows_with("encoder_mask_token")(grid)
    for r in rows:
        r["flops_rel"] = flops[r["encoder_mask_token"]] / flops["without"]
    return rows


def loss_scope_rows(grid: GridResult) -> list[dict[str, Any]]:
    """Sec. 3: ft (and lin) with the loss on all patches minus the masked-only baseline (pixel target), paired
    by seed (seed s of each; one row per seed, averaged by the driver), with the paired interval of ft_delta."""
    from reproduce.stats import compare as compare_seeds
    rows = cell_rows(grid, standard_columns)
    seed = lambda r: int(r.get("seed", 0) or 0)  # noqa: E731
    masked = {seed(r): r for r in rows if r.get("target") == "pixel"}
    pairs = [(r, masked[seed(r)]) for r in rows if "loss_on" in r and seed(r) in masked]
    out = []
    for a, m in pairs:
        prov = {k: ", ".join(dict.fromkeys(str(x[k]) for x in (a, m) if x.get(k))) for k in ("commit", "device", "command")}
        prov["date"] = max(str(a.get("date", "")), str(m.get("date", "")))  # the stages' own provenance, not ours
        out.append({"loss_on": "all", "seed": seed(a), "ft_delta": a["ft"] - m["ft"], "lin_delta": a["lin"] - m["lin"],
                    "ft_all": a["ft"], "ft_masked": m["ft"], "lin_all": a["lin"], "lin_masked": m["lin"], **prov})
    if len(out) >= 2:  # the paired interval of each delta, on every row (the driver averages the rows)
        for metric in ("ft", "lin"):
            c = compare_seeds({r["seed"]: r[f"{metric}_all"] for r in out}, {r["seed"]: r[f"{metric}_masked"] for r in out})
            for r in out:
                r.update({f"{metric}_delta_lo": c.lo, f"{metric}_delta_hi": c.hi})
                r[f"{metric}_delta_call"] = c.call
    return out


def reports(part: str) -> list[Report]:
    p = PARTS[part]
    key = {"decoder_depth": "decoder_depth", "decoder_width": "decoder_width", "mask_token": "encoder_mask_token",
           "target": "target", "augmentation": "augmentation", "mask_sampling": "mask_sampling",
           "masking_ratio": "mask_ratio"}[part]
    rows = mask_token_rows if part == "mask_token" else _rows_with(key)
    out = [Report(p.table, rows, p.title)]
    if part == "target":
        out.append(Report("sec3_loss_scope", loss_scope_rows, "Sec. 3: loss on all patches vs masked only (ft delta)"))
    return out


def build_jobs(args: Any, scale: Scale) -> list[TableJob]:
    parts = list(PARTS) if not args.part or "all" in args.part else list(dict.fromkeys(args.part))
    return [TableJob(PARTS[p].table, with_shared_baseline(scale, PARTS[p].cells(scale)), reports(p), scale.notes,
                     root_name=ABLATIONS_ROOT) for p in parts]


def _part_args(parser: Any) -> None:
    parser.add_argument("--part", action="append", choices=[*PARTS, "all"],
                        help="which part of Table 1 (repeatable; default: all). masking_ratio is Figure 5")


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, build_jobs, argv, extra_args=_part_args)


if __name__ == "__main__":
    raise SystemExit(main())
