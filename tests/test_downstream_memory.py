"""downstream/memory.py: the rough memory model against ViTDet's published training memory, and its choices."""
from __future__ import annotations

from dataclasses import replace

import pytest

from _openmmlab import require_openmmlab  # noqa: E402

require_openmmlab()
pytestmark = pytest.mark.downstream

from downstream import coco_det, memory  # noqa: E402
from downstream.runner import backbone_shape, count_trainable_params, load_config  # noqa: E402

# detectron2 projects/ViTDet/README.md: Mask R-CNN, 1 image of 1024x1024 per GPU, AMP, no checkpointing
VITDET_TRAIN_MEM_GB = {"base": 10.9, "large": 20.9, "huge": 31.5}


def _vitdet_config(size: str):
    cfg = load_config(coco_det.TASK, "paper")
    s = cfg.vit_sizes[size]
    cfg.model.backbone.update(embed_dim=s["embed_dim"], depth=s["depth"], num_heads=s["num_heads"],
                              global_attn_indexes=s["global_attn_indexes"])
    coco_det.configure_pyramid(cfg, "vitdet", s["depth"], s["embed_dim"])
    return cfg


@pytest.fixture(scope="module")
def vitdet_models():
    out = {}
    for size in VITDET_TRAIN_MEM_GB:
        cfg = _vitdet_config(size)
        out[size] = (backbone_shape(cfg), count_trainable_params(cfg), float(cfg.recipe.head_gb))
    return out


def test_parameter_counts_are_vitdet_sized(vitdet_models):
    params = {k: v[1] / 1e6 for k, v in vitdet_models.items()}
    assert params["base"] == pytest.approx(111.6, abs=1.0)  # ViTDet-B Mask R-CNN: ~111 M
    assert 320 < params["large"] < 345 and 650 < params["huge"] < 680


@pytest.mark.parametrize("size", list(VITDET_TRAIN_MEM_GB))
def test_estimate_within_15_percent_of_vitdet_measurements(vitdet_models, size):
    shape, params, head = vitdet_models[size]
    est = memory.estimate_memory(shape, params, 1, False, head)
    assert est.total_gb == pytest.approx(VITDET_TRAIN_MEM_GB[size], rel=0.15)


def test_checkpointing_and_batch(vitdet_models):
    shape, params, head = vitdet_models["huge"]
    plain = memory.estimate_memory(shape, params, 4, False, head)
    ck = memory.estimate_memory(shape, params, 4, True, head)
    assert ck.state_gb == plain.state_gb and ck.activations_per_image_gb < plain.activations_per_image_gb / 3
    assert plain.total_gb == pytest.approx(plain.state_gb + 4 * plain.activations_per_image_gb)


def test_choose_turns_checkpointing_on_only_where_the_batch_does_not_fit(vitdet_models):
    shape, params, head = vitdet_models["huge"]
    at64 = memory.choose(shape, params, [1], head, 80, None)  # 64 GPUs: one image each fits as is
    assert (at64.per_gpu_batch, at64.act_checkpoint) == (1, False)
    at8 = memory.choose(shape, params, [8, 4, 2, 1], head, 80, None)  # 8 GPUs: 8 images need checkpointing
    assert (at8.per_gpu_batch, at8.act_checkpoint) == (8, True) and memory.fits(at8, 80)
    off = memory.choose(shape, params, [8, 4, 2, 1], head, 80, False)  # forced off: accumulate instead
    assert not off.act_checkpoint and off.per_gpu_batch < 8 and memory.fits(off, 80)
    tiny = memory.choose(shape, params, [1], head, 10, None)
    assert not memory.fits(tiny, 10)  # nothing fits: the caller reports it


def test_windowed_blocks_cost_less_than_global_ones(vitdet_models):
    shape, params, head = vitdet_models["base"]
    all_global = replace(shape, window_size=0)
    assert memory.estimate_memory(all_global, params, 1, False, head).total_gb > \
        memory.estimate_memory(shape, params, 1, False, head).total_gb + 10
