"""Partial fine-tuning (Fig. 9): exactly the requested parameters train, the rest stays put."""
import dataclasses
from dataclasses import replace

import pytest
import torch

from mae.engine.checkpoint import load_checkpoint
from mae.models.vit import create_vit
from mae.protocols import partial


def test_trainable_prefixes_hand_checked():
    tail = ("norm.", "fc_norm.", "head.")
    assert partial.trainable_prefixes(4, 0) == tail
    assert partial.trainable_prefixes(4, 1) == ("blocks.3.",) + tail
    assert partial.trainable_prefixes(4, 2) == ("blocks.2.", "blocks.3.") + tail
    assert partial.trainable_prefixes(4, 0.5) == ("blocks.3.norm2.", "blocks.3.mlp.") + tail
    assert partial.trainable_prefixes(4, 1.5) == ("blocks.3.", "blocks.2.norm2.", "blocks.2.mlp.") + tail
    with pytest.raises(ValueError, match="multiple of 0.5"):
        partial.trainable_prefixes(4, 0.3)
    with pytest.raises(ValueError, match="exceeds the encoder's 4 blocks"):
        partial.trainable_prefixes(4, 5)
    with pytest.raises(ValueError, match="multiple of 0.5"):
        partial.Config(tune_blocks=1.25)


def test_freeze_marks_exactly_the_requested_parameters():
    m = create_vit("vit_micro_patch4_32", num_classes=10)  # 4 blocks, global pool
    names = partial.freeze_for_partial(m, 0.5)
    want = {f"blocks.3.{s}" for s in ("norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                                      "mlp.fc2.weight", "mlp.fc2.bias")} | {"fc_norm.weight", "fc_norm.bias",
                                                                            "head.weight", "head.bias"}
    assert set(names) == want == {n for n, p in m.named_parameters() if p.requires_grad}
    names = partial.freeze_for_partial(m, 2)
    assert {n.split(".")[1] for n in names if n.startswith("blocks.")} == {"2", "3"}
    assert len(names) == 2 * 12 + 4  # 12 tensors per block, fc_norm and head


def test_paper_presets_and_help():
    c = partial.PRESETS["paper_vit_large"]
    assert (c.model, c.tune_blocks, c.blr, c.layer_decay, c.drop_path, c.epochs) == ("vit_large_patch16", 1, 1e-3, 0.75, 0.1, 50)
    assert partial.PRESETS["paper_vit_large_half_block"].tune_blocks == 0.5
    assert all(f.metadata.get("help") for f in dataclasses.fields(partial.Config))


@pytest.mark.parametrize("k,changed,frozen", [
    (1, ["blocks.1.attn.qkv.weight", "blocks.1.mlp.fc1.weight"], ["blocks.0.mlp.fc1.weight", "patch_embed.proj.weight",
                                                                  "cls_token", "pos_embed"]),
    (0.5, ["blocks.1.mlp.fc1.weight", "blocks.1.norm2.weight"], ["blocks.1.attn.qkv.weight", "blocks.1.norm1.weight",
                                                                 "blocks.0.mlp.fc2.bias"]),
])
def test_run_changes_only_the_tuned_parameters(tmp_path, pretrained, k, changed, frozen):
    cfg = replace(partial.PRESETS["smoke"], output_dir=str(tmp_path), finetune=str(pretrained), tune_blocks=k,
                  epochs=2, lr=1e-2)
    result = partial.run(cfg)
    assert result["finished"] and "acc1" in result["final"]
    sd0 = torch.load(pretrained)["model"]
    last = load_checkpoint(tmp_path / "checkpoint-last.pth")["model"]
    for name in changed:
        assert not torch.equal(last[name], sd0[name]), name
    for name in frozen:
        assert torch.equal(last[name], sd0[name]), name
