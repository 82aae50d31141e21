# COCO Mask R-CNN, `smoke` scale: the paper recipe (coco_mask_rcnn_paper.py) shrunk to run in
# seconds on CPU -- the `mae_vit_smoke` encoder (width 32, 2 blocks, patch 8, pre-trained at 32 px),
# 64x64 images of the generated fixture (downstream/fixtures.py: rectangles / ellipses), thin heads,
# 4 iterations at batch 2, plain fp32. Checks the plumbing, not the numbers.
_base_ = ['./coco_mask_rcnn_paper.py']

image_size = (64, 64)
vit_sizes = dict(
    _delete_=True,
    smoke=dict(embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0, layer_decay_rate=0.7,
               global_attn_indexes=[1]),
)
recipe = dict(effective_batch=2, epoch_images=8, schedules=dict(paper=dict(epochs=1)), warmup_iters=2,
              warmup_factor=0.1, lr_steps=[0.75], head_gb=0.0)  # 4 steps, x0.1 at step 3
pyramids = dict(paper=dict(neck=dict(out_channels=32)),
                vitdet=dict(neck=dict(out_channels=32), bbox_head=dict(conv_out_channels=32)))
model = dict(
    data_preprocessor=dict(batch_augments=[dict(type='BatchFixedSizePad', size=image_size, pad_mask=True)]),
    backbone=dict(pretrain_img_size=32, img_size=image_size, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                  drop_path_rate=0.0, window_size=4, global_attn_indexes=[1], out_indices=[0, 0, 1, 1]),
    neck=dict(in_channels=[32, 32, 32, 32], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=2),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(num_convs=1, in_channels=32, conv_out_channels=32, num_classes=2)),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=64)),
        rpn_proposal=dict(nms_pre=200, max_per_img=100),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100), rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='Pad', size=image_size, pad_val=dict(img=(104, 116, 124))),  # the training square, as paper scale
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
metainfo = dict(classes=('rectangle', 'ellipse'))
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(metainfo=metainfo, filter_cfg=dict(filter_empty_gt=True, min_size=0), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 4
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=2e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters, milestones=[3], gamma=0.1),
]
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1),
    visualization=dict(type='DetVisualizationHook', draw=False))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
log_processor = dict(window_size=1)
