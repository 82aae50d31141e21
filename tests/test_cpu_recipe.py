"""The cpu scale's recipe is frozen (issue: chosen on the baseline, then every cell changes one switch).

tests/frozen_cpu_recipe.json is the resolved recipe of every stage of the cpu scale (``to_dict`` of each
config), the one the committed ``results/*_cpu.csv`` were measured with. The recipes are written once, as
the protocols' ``CPU_BASELINE`` configs (mae/protocols/), which the ``demo`` presets derive from; a change
to them, to a demo preset or to a config default must not leak into the scale. Every field is compared:
one added, removed or changed fails (a new field needs the file rewritten, on purpose, after checking that
the scale's other fields did not move).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mae.config import to_dict
from mae.protocols import finetune, linprobe, partial, pretrain
from reproduce.scales import get_scale

FROZEN = json.loads((Path(__file__).with_name("frozen_cpu_recipe.json")).read_text())
STAGES = ("pretrain", "finetune", "linprobe", "partial", "tokenizer", "readout")


def test_every_stage_is_frozen():
    assert sorted(FROZEN) == sorted(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_cpu_scale_recipe_is_unchanged(stage):
    now = json.loads(json.dumps(to_dict(getattr(get_scale("cpu"), stage)), default=str))
    frozen = FROZEN[stage]
    changed = {k: (frozen.get(k, "<absent>"), now.get(k, "<absent>")) for k in sorted(set(frozen) | set(now))
               if frozen.get(k, "<absent>") != now.get(k, "<absent>")}
    assert not changed, f"cpu-scale {stage} recipe changed (frozen value, now): {changed}"


def test_the_demo_presets_are_the_cpu_recipes_shown_as_they_run():
    """One literal per recipe: a demo preset differs from the cpu scale's only in how it shows its run (and the
    demo keeps its starting weights, checkpoint-init.pth, for the README's controls)."""
    shown = {"progress", "tensorboard", "log_every", "save_every", "vis_every", "monitor_every", "finetune", "save_init"}
    for module in (pretrain, finetune, linprobe, partial):
        demo, cpu = to_dict(module.PRESETS["demo"]), to_dict(module.CPU_BASELINE)
        assert {k for k in demo if demo[k] != cpu[k]} <= shown, module.__name__
        assert to_dict(getattr(get_scale("cpu"), module.__name__.rsplit(".", 1)[1])) == cpu
