"""The cpu scale's recipe is frozen (issue: chosen on the baseline, then every cell changes one switch).

tests/frozen_cpu_recipe.json is the resolved baseline recipe the committed ``results/*_cpu.csv`` were
measured with. The cpu scale derives its configs from the protocols' ``demo`` presets, so a change to a
demo preset or to a config default must not leak into it: every field recorded there must still have
its recorded value (fields added later are not in the file and are not checked).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from reproduce.scales import get_scale

FROZEN = json.loads((Path(__file__).with_name("frozen_cpu_recipe.json")).read_text())


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


@pytest.mark.parametrize("stage", sorted(FROZEN))
def test_cpu_scale_recipe_is_unchanged(stage):
    cfg = dataclasses.asdict(getattr(get_scale("cpu"), stage))
    now = json.loads(json.dumps({k: _plain(v) for k, v in cfg.items()}, default=str))
    changed = {k: (v, now.get(k, "<removed>")) for k, v in FROZEN[stage].items() if now.get(k, "<removed>") != v}
    assert not changed, f"cpu-scale {stage} recipe changed (frozen value, now): {changed}"
