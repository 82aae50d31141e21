"""Downstream transfer of MAE encoders (paper Sec. 5, Tables 4-5) on the OpenMMLab stack.

``downstream.compat`` patches the stack for torch 2.14 / numpy 2; ``downstream.backbone`` registers
the ``MAEViT`` backbone and the ``MAELayerDecayOptimizerConstructor``; ``coco_det.py`` and
``ade20k_seg.py`` are the command-line entry points. Nothing here is imported by ``mae``.
"""
