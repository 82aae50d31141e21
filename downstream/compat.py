"""Every shim the OpenMMLab stack (mmcv 2.1 / mmengine 0.10.7 / mmdet 3.3 / mmseg 1.2.2) needs on
torch 2.14 + numpy 2.x, in one place. Import this module before building mmdet / mmseg models
(``downstream.backbone`` does, and every downstream entry point imports that).

Each shim says what breaks without it; a shim is added only for a failure seen on this stack.
What was checked and needed *no* shim (mmcv 2.1.0 built for torch 2.14.1, see
scripts/install_mmcv.sh): mmdet 3.3 / mmseg 1.2.2 accept mmcv 2.1.0 in their version assertions;
mmcv.ops RoIAlign / NMS run on CPU; pycocotools 2.0.11 and mmdet's CocoMetric / mmseg's IoUMetric
run on numpy 2.x; the MAE encoder checkpoints load through ``mae.engine.checkpoint`` with
``weights_only=True``.
"""
from __future__ import annotations

import pickle

import torch

APPLIED: list[str] = []


def _mmengine_local_checkpoint_loader() -> None:
    """mmengine's checkpoints (``--resume``, ``load_from``) under torch >= 2.6.

    Breaks without it: ``Runner.resume`` -> ``load_from_local`` calls ``torch.load(filename)``, whose
    default became ``weights_only=True`` in torch 2.6; mmengine's own checkpoints pickle the message
    hub (``mmengine.logging.HistoryBuffer`` holding numpy arrays, rebuilt through ``builtins.getattr``),
    so every resume fails with "Weights only load failed ... Unsupported global: GLOBAL
    mmengine.logging.history_buffer.HistoryBuffer". Allow-listing ``getattr`` would void the
    weights-only guarantee, so instead: try ``weights_only=True`` first and fall back to a full
    unpickle (mmengine's behaviour under the torch it was written for) with a warning naming the file.
    Only resume from / ``load_from`` checkpoints you trust.
    """
    import os.path as osp

    from mmengine.logging import print_log
    from mmengine.runner.checkpoint import CheckpointLoader

    def load_from_local(filename, map_location):  # noqa: ANN001 - mmengine's loader signature
        filename = osp.expanduser(filename)
        if not osp.isfile(filename):
            raise FileNotFoundError(f"{filename} can not be found.")
        try:
            return torch.load(filename, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            print_log(f"{filename} is an mmengine checkpoint with non-tensor state (message hub); loading it "
                      "with weights_only=False (trusted files only)", "current", level=30)
            return torch.load(filename, map_location=map_location, weights_only=False)

    CheckpointLoader.register_scheme(prefixes="", loader=load_from_local, force=True)
    APPLIED.append("mmengine-local-checkpoint-weights-only")


def apply() -> list[str]:
    """Apply every shim once; returns their names."""
    if not APPLIED:
        _mmengine_local_checkpoint_loader()
    return APPLIED


apply()
