# COCO Mask R-CNN on an MAE ViT encoder: paper Table 4 (Appendix A.3), `paper` scale.
#
# Backbone: the pre-trained ViT-B/16 (other sizes: `vit_sizes` below, chosen by coco_det.py from
# the checkpoint), window attention (14x14) with 4 global blocks and relative position biases.
# Pyramid (`pyramids` below, coco_det.py --pyramid; the model dict is the default `paper` one for
# ViT-B): `paper` = the paper's design -- the intermediate maps of blocks d/4, d/2, 3d/4, d (the ends
# of 4 equal subsets) up/down-sampled inside `MAEViT` to strides 4/8/16/32, then FPN and the standard
# heads; `vitdet` = ViTDet's simple pyramid from the last map (LayerNorm, no FPN) with its heads.
# Recipe (`recipe` below; REFERENCE.md, ViTDet follow-up with the same MAE checkpoints): LSJ at
# 1024x1024, effective batch 64 on any number of GPUs, 100 epochs (ViT-B / L; 184,375 steps) or
# 75 (ViT-H), AdamW lr 1e-4 wd 0.1, layer decay 0.7/0.8/0.9 for B/L/H, drop path 0.1/0.4/0.5, AMP;
# test images resized to fit 1024 and padded to 1024x1024. Box and mask AP by pycocotools.
# `max_iters`, `param_scheduler` and the loader's batch size below are ViT-B's values on 16 GPUs;
# coco_det.py rewrites them from `recipe` for the checkpoint's size and the world size.
# Run: python downstream/coco_det.py --ckpt mae_pretrain_vit_base.pth --data data/coco --scale paper
default_scope = 'mmdet'
custom_imports = dict(imports=['downstream.backbone', 'downstream.simple_pyramid'], allow_failed_imports=False)

data_root = 'data/coco/'
image_size = (1024, 1024)
backend_args = None

# Per-size settings, applied by coco_det.py to the backbone / optimizer for the checkpoint given.
vit_sizes = dict(
    base=dict(embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.1, layer_decay_rate=0.7,
              global_attn_indexes=[2, 5, 8, 11]),
    large=dict(embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.4, layer_decay_rate=0.8,
               global_attn_indexes=[5, 11, 17, 23]),
    huge=dict(embed_dim=1280, depth=32, num_heads=16, drop_path_rate=0.5, layer_decay_rate=0.9,
              global_attn_indexes=[7, 15, 23, 31]),  # ViT-H/14: patch kernel resampled to 16
)

# The two pyramids, applied by coco_det.py over `model` (levels: "subsets" = out_indices at the ends
# of 4 equal block subsets, "last" = the last block's map alone, at the patch stride, for the neck to
# resample). Neck input widths and strides follow the ViT.
LN2d = dict(type='LN2d', eps=1e-6)
pyramids = dict(
    paper=dict(  # MAE A.3 / Li et al. 2021: 4 subsets -> strides 4/8/16/32, FPN, standard Mask R-CNN heads
        levels='subsets',
        backbone=dict(out_strides=[4, 8, 16, 32], pyramid_norm='BN'),
        neck=dict(type='FPN', in_channels=[768] * 4, out_channels=256, num_outs=5),
        rpn_head=dict(num_convs=1),
        bbox_head=dict(type='Shared2FCBBoxHead'),
        mask_head=dict(norm_cfg=None)),
    vitdet=dict(  # ViTDet: simple pyramid from the last map, 2-conv RPN, 4conv1fc box head, LayerNorm
        levels='last',
        neck=dict(type='SimpleFeaturePyramid', in_channels=[768], out_channels=256, out_strides=[4, 8, 16, 32]),
        rpn_head=dict(num_convs=2),
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=LN2d),
        mask_head=dict(norm_cfg=LN2d)),
)

# Batch and schedule, kept on any number of GPUs by downstream/plan.py (coco_det.py --dry-run prints them).
recipe = dict(
    effective_batch=64,  # images per optimizer step (ViTDet; REFERENCE.md)
    epoch_images=118000,  # an epoch as ViTDet counts COCO train2017: 100 epochs = 184,375 steps at 64
    schedules=dict(paper=dict(epochs=dict(base=100, large=100, huge=75))),
    warmup_iters=250,
    warmup_factor=0.001,
    lr_steps=[8 / 9, 26 / 27],  # x0.1 at 163,889 and 177,546 of 184,375 steps (ViTDet)
    head_gb=1.0,  # neck + heads activations per 1024x1024 image, rough (downstream/memory.py)
)

model = dict(
    type='MaskRCNN',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],  # ImageNet statistics in RGB, as in MAE pre-training
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_mask=True,
        pad_size_divisor=32,
        batch_augments=[dict(type='BatchFixedSizePad', size=image_size, pad_mask=True)]),
    backbone=dict(
        type='MAEViT',
        pretrain_img_size=224,
        img_size=image_size,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        drop_path_rate=0.1,
        out_indices=[2, 5, 8, 11],  # the last block of each of 4 equal subsets (paper A.3; set per size)
        out_strides=[4, 8, 16, 32],
        pyramid_norm='BN',  # between the two transposed convs of stride 4 (Li et al. 2021)
        act_checkpoint=False,  # set by coco_det.py (--act-checkpoint auto: on where the batch would not fit)
        use_cls_token=False,
        window_size=14,
        global_attn_indexes=[2, 5, 8, 11],
        use_rel_pos=True,
        pretrained=None),  # set by coco_det.py --ckpt
    neck=dict(type='FPN', in_channels=[768, 768, 768, 768], out_channels=256, num_outs=5),
    rpn_head=dict(
        type='RPNHead',
        in_channels=256,
        feat_channels=256,
        num_convs=1,
        anchor_generator=dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0],
                              strides=[4, 8, 16, 32, 64]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0], target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    roi_head=dict(
        type='StandardRoIHead',
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32]),
        bbox_head=dict(
            type='Shared2FCBBoxHead',
            in_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                            target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_class_agnostic=False,
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
        mask_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32]),
        mask_head=dict(
            type='FCNMaskHead',
            num_convs=4,
            in_channels=256,
            conv_out_channels=256,
            num_classes=80,
            norm_cfg=None,
            loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))),
    train_cfg=dict(
        rpn=dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                          match_low_quality=True, ignore_iof_thr=-1),
            sampler=dict(type='RandomSampler', num=256, pos_fraction=0.5, neg_pos_ub=-1, add_gt_as_proposals=False),
            allowed_border=-1,
            pos_weight=-1,
            debug=False),
        rpn_proposal=dict(nms_pre=2000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                          match_low_quality=True, ignore_iof_thr=-1),
            sampler=dict(type='RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
            mask_size=28,
            pos_weight=-1,
            debug=False)),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100, mask_thr_binary=0.5)))

# ---- data: large-scale jitter (scale 0.1-2.0, crop 1024) + flip; test at 1024 (longer side), padded to 1024^2
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_type='absolute_range', crop_size=image_size, recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
# test: fit in the training square, then pad to it (as detectron2 / mmdet ViTDet), so that position
# tables see the training grid; the pad value is the mean colour (0 after normalisation, as training's
# BatchFixedSizePad)
test_pad = dict(type='Pad', size=image_size, pad_val=dict(img=(104, 116, 124)))  # BGR mean
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    test_pad,
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,  # per GPU; set by coco_det.py from recipe.effective_batch and the world size
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type='CocoDataset',
        data_root=data_root,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CocoDataset',
        data_root=data_root,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val2017.json',
                     metric=['bbox', 'segm'], format_only=False, backend_args=backend_args)
test_evaluator = val_evaluator

# ---- schedule: 100 epochs of 118k images at batch 64 (ViT-B; rewritten from `recipe`)
max_iters = 184375
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='AmpOptimWrapper',
    constructor='MAELayerDecayOptimizerConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.7),
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters, milestones=[163889, 177546], gamma=0.1),
]
auto_scale_lr = dict(enable=False, base_batch_size=64)

# ---- runtime
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
