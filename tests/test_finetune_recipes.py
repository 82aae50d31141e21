"""The two fine-tuning recipes (REFERENCE.md): the paper's Table 9 for the 800-epoch pixel models of
Tables 1/2 (and Figs. 7/9), the release's FINETUNE.md for the 1600-epoch norm-pix models of Table 3;
each paper-scale plan picks its own (planned only, nothing trained)."""
from __future__ import annotations

import argparse
from dataclasses import replace

import pytest

from mae.protocols import finetune, linprobe, partial, pretrain
from reproduce import fig7, fig9, table1, table2, table3
from reproduce.scales import get_scale

RECIPE_FIELDS = ("model", "blr", "layer_decay", "drop_path", "epochs")
TABLE9 = {"vit_base": (1e-3, 0.75, 0.1, 100), "vit_large": (1e-3, 0.75, 0.1, 50), "vit_huge": (1e-3, 0.75, 0.2, 50)}
FINETUNE_MD = {"vit_base": (5e-4, 0.65, 0.1, 100), "vit_large": (1e-3, 0.75, 0.2, 50),
               "vit_huge": (1e-3, 0.75, 0.3, 50)}
SHARED = dict(weight_decay=0.05, betas=(0.9, 0.999), warmup_epochs=5.0, recipe_batch=1024, smoothing=0.1, mixup=0.8,
              cutmix=1.0, reprob=0.25, rand_aug="rand-m9-mstd0.5-inc1", global_pool=True, img_size=224)


def values(cfg) -> tuple:
    return (cfg.blr, cfg.layer_decay, cfg.drop_path, cfg.epochs)


@pytest.mark.parametrize("recipe, table", [("paper", TABLE9), ("release", FINETUNE_MD)])
def test_presets_hold_the_recipes(recipe, table):
    for size, expected in table.items():
        cfg = finetune.PRESETS[f"{recipe}_{size}"]
        assert values(cfg) == expected, f"{recipe}_{size}"
        assert all(getattr(cfg, k) == v for k, v in SHARED.items()), f"{recipe}_{size}"
        assert cfg.model == finetune.PAPER_MODELS[size]
    dirs = [finetune.PRESETS[f"{r}_{s}"].output_dir for r in finetune.RECIPES for s in TABLE9]
    assert len(set(dirs)) == len(dirs)


def test_small_presets_are_unchanged():
    """The cpu / smoke / demo / mini recipes keep their own values (the demo takes the cpu scale's)."""
    assert values(finetune.PRESETS["demo"]) == (5e-3, 0.75, 0.1, 15)  # the cpu recipe
    assert values(finetune.PRESETS["smoke"]) == (1e-3, 0.75, 0.1, 1)
    assert values(finetune.PRESETS["mini"]) == (1e-3, 0.75, 0.1, 50)
    assert (partial.PRESETS["demo"].drop_path, partial.PRESETS["smoke"].drop_path, partial.PRESETS["mini"].drop_path) \
        == (0.1, 0.0, 0.1)
    cpu = get_scale("cpu")
    assert values(cpu.finetune) == (5e-3, 0.75, 0.1, 15) and values(cpu.partial)[:3] == (5e-3, 0.75, 0.1)
    assert not cpu.pretrain.decay_tokens and cpu.linprobe.cache_features and not cpu.linprobe.augment


def stages(cells, protocol: str) -> list:
    return [s for c in cells for s in c.stages if s.protocol == protocol]


def same_recipe(cfg, preset) -> bool:
    """Equal to ``preset`` up to where it runs and what it starts from."""
    return replace(cfg, data=preset.data, finetune=preset.finetune, output_dir=preset.output_dir, seed=preset.seed) \
        == preset


def test_paper_scale_plans_pick_the_recipe_of_their_table(tmp_path):
    scale = get_scale("paper", str(tmp_path))
    table9_l = finetune.PRESETS["paper_vit_large"]
    # Table 1 (every part, Fig. 5 included), Fig. 7, Fig. 9: the 800-epoch ViT-L pixel model -> Table 9
    t1 = [c for job in table1.build_jobs(argparse.Namespace(part=None), scale) for c in job.cells]
    for name, cells in (("table1", t1), ("fig7", fig7.build_cells(scale)), ("fig9", fig9.build_cells(scale))):
        ft = [s for s in stages(cells, "finetune") if s.name != "finetune_scratch"]
        assert ft and all(same_recipe(s.config, table9_l) for s in ft), name
        assert all(values(s.config) == TABLE9["vit_large"] for s in ft), name
        # scratch controls: the same recipe for the cell's pre-training + fine-tuning epochs
        scratch = [(c, s) for c in cells for s in c.stages if s.name == "finetune_scratch"]
        assert all(same_recipe(replace(s.config, epochs=table9_l.epochs), table9_l)
                   and s.config.epochs == c.stage("pretrain").config.epochs + table9_l.epochs for c, s in scratch), name
        assert all(s.config.decay_tokens for s in stages(cells, "pretrain")), name
        lin = stages(cells, "linprobe")
        assert lin and all(s.config.crop == "release" and s.config.augment for s in lin), name
    part = stages(fig9.build_cells(scale), "partial")
    assert part and all((s.config.blr, s.config.layer_decay, s.config.drop_path) == (1e-3, 0.75, 0.1) for s in part)
    assert all(same_recipe(replace(s.config, tune_blocks=1.0), partial.PRESETS["paper_vit_large"]) for s in part)
    # Table 2 times pre-training only (its ft column is Table 1's)
    assert not stages(table2.build_cells(scale), "finetune")
    # Table 3: the 1600-epoch norm-pix ViT-B/L/H -> FINETUNE.md, for the MAE rows and the scratch rows
    cells = table3.build_cells(scale)
    for size in ("vit_base", "vit_large", "vit_huge"):
        mine = [c for c in cells if c.key["model"] == size]
        assert {c.key["method"] for c in mine} == {"mae", "scratch"}
        ft = stages(mine, "finetune")
        assert len(ft) == 2 and all(same_recipe(s.config, finetune.PRESETS[f"release_{size}"]) for s in ft)
        assert all(values(s.config) == FINETUNE_MD[size] for s in ft)
        pre = stages(mine, "pretrain")
        assert [(p.config.epochs, p.config.target, p.config.decay_tokens) for p in pre] == [(1600, "norm_pixel", True)]
        assert stages(mine, "linprobe")[0].config.crop == "release"


def test_classifier_configs_names_its_recipe(tmp_path):
    scale = get_scale("paper", str(tmp_path))
    ft, lin = scale.classifier_configs("mae_vit_base_patch16")
    assert values(ft) == TABLE9["vit_base"] and lin.model == "vit_base_patch16"
    ft, _ = scale.classifier_configs("mae_vit_base_patch16", recipe="release")
    assert values(ft) == FINETUNE_MD["vit_base"]
    from reproduce.grid import GridError
    with pytest.raises(GridError, match="release"):
        scale.classifier_configs("mae_vit_base_patch16", recipe="table9")
    assert table3.FINETUNE_RECIPE == "release"
    assert pretrain.PRESETS["paper_vit_large"].decay_tokens and linprobe.PRESETS["paper_vit_large"].crop == "release"
