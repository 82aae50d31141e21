# ADE20K UperNet, `smoke` scale: the paper recipe (ade20k_upernet_paper.py) shrunk to run in
# seconds on CPU -- the `mae_vit_smoke` encoder (width 32, 2 blocks, patch 8, pre-trained at 32 px),
# 64x64 crops of the generated fixture (downstream/fixtures.py), thin heads, 4 iterations at
# batch 2, fp32, whole-image test. Checks the plumbing, not the numbers.
_base_ = ['./ade20k_upernet_paper.py']

crop_size = (64, 64)
norm_cfg = dict(type='BN', requires_grad=True)
vit_sizes = dict(
    _delete_=True,
    smoke=dict(embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0, layer_decay_rate=0.65,
               out_indices=[0, 0, 1, 1]),
)
recipe = dict(effective_batch=2, epoch_images=8, schedules=dict(_delete_=True, paper=dict(epochs=1),
              mmseg160k=dict(iters=4)), warmup_iters=2, warmup_factor=0.1, head_gb=0.0)  # 4 steps either way
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(pretrain_img_size=32, img_size=crop_size, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                  drop_path_rate=0.0, out_indices=[0, 0, 1, 1]),
    decode_head=dict(in_channels=[32, 32, 32, 32], channels=32, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=32, channels=16, norm_cfg=norm_cfg),
    test_cfg=dict(_delete_=True, mode='whole'))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(128, 64), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 64), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 4
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=2e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=2, end=max_iters, by_epoch=False),
]
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1),
    visualization=dict(type='SegVisualizationHook', draw=False))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
log_processor = dict(window_size=1)
