"""The masked autoencoder (MAE Sec. 3): a ViT encoder that sees only the visible patches and a
lightweight decoder that reconstructs the masked ones from the latent plus shared mask tokens.

Parameter names follow the official release exactly (REFERENCE.md), so its ``{'model': sd}`` files
load with ``strict=True`` and the encoder part loads into timm's ``VisionTransformer``. Ablation
switches of Table 1 change the layout only when switched on (extra ``encoder_mask_token`` for the
encoder w/ [M] of Table 1c, a ``target`` buffer/module for PCA or token targets of Table 1d).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from typing import Any, Mapping

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from mae.masking import STRATEGIES, mask_from_noise, sample_noise
from mae.models.pos_embed import get_2d_sincos_pos_embed
from mae.targets import TARGETS, build_target

LN_EPS = 1e-6  # LayerNorm eps of the official models


@dataclass(frozen=True)
class MAEConfig:
    """Architecture and ablation switches of one MAE model (defaults: ViT-L/16, decoder 512x8)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    target: str = "pixel"  # Table 1d: pixel | norm_pixel | pca | token
    pca_components: int = 96
    mask_strategy: str = "random"  # Table 1f: random | block | grid
    encoder_mask_token: bool = False  # Table 1c: encoder w/ [M]
    loss_on: str = "masked"  # Sec. 3: masked | all

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; choose one of {TARGETS}")
        if self.mask_strategy not in STRATEGIES:
            raise ValueError(f"unknown mask strategy {self.mask_strategy!r}; choose one of {STRATEGIES}")
        if self.loss_on not in ("masked", "all"):
            raise ValueError(f"loss_on must be 'masked' or 'all', got {self.loss_on!r}")
        for name, dim, heads in (("encoder", self.embed_dim, self.num_heads),
                                 ("decoder", self.decoder_embed_dim, self.decoder_num_heads)):
            if dim % heads:
                raise ValueError(f"{name} width {dim} is not divisible by its {heads} heads")
            if dim % 4:
                raise ValueError(f"{name} width {dim} must be divisible by 4 (2-D sin-cos table)")

    @property
    def grid_size(self) -> tuple[int, int]:
        g = self.img_size // self.patch_size
        return (g, g)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]


# Official presets (decoder 512 wide, 8 blocks, 16 heads) and small ones for CPU / one-GPU scales.
PRESETS: dict[str, dict[str, Any]] = {
    "mae_vit_base_patch16": dict(embed_dim=768, depth=12, num_heads=12),
    "mae_vit_large_patch16": dict(embed_dim=1024, depth=24, num_heads=16),
    "mae_vit_huge_patch14": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    "mae_vit_small_patch16": dict(embed_dim=384, depth=12, num_heads=6,
                                  decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8),
    "mae_vit_tiny_patch16": dict(embed_dim=192, depth=12, num_heads=3,
                                 decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4),
    # 32x32 images, 4x4 patches (64 patches): the `mini` scale on one GPU
    "mae_vit_tiny_patch4_32": dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3,
                                   decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4),
    # a few-minute CPU demo (README) and CPU learning tests
    "mae_vit_micro_patch4_32": dict(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4,
                                    decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4),
    # seconds on CPU: unit tests and smoke-scale grids
    "mae_vit_smoke": dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                          decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2),
}
PRESET_ALIASES = {
    "mae_vit_base_patch16_dec512d8b": "mae_vit_base_patch16",
    "mae_vit_large_patch16_dec512d8b": "mae_vit_large_patch16",
    "mae_vit_huge_patch14_dec512d8b": "mae_vit_huge_patch14",
}


def mae_config(name: str, **overrides: Any) -> MAEConfig:
    """Config of a named preset with field overrides (unknown fields raise a clear error)."""
    name = PRESET_ALIASES.get(name, name)
    if name not in PRESETS:
        raise ValueError(f"unknown MAE preset {name!r}; available: {sorted(PRESETS)}")
    valid = {f.name for f in fields(MAEConfig)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise ValueError(f"unknown MAE config field(s) {bad}; valid: {sorted(valid)}")
    return replace(MAEConfig(**PRESETS[name]), **overrides)


class MaskedAutoencoderViT(nn.Module):
    """MAE with a ViT backbone. ``forward(imgs, mask_ratio, noise) -> (loss, pred, mask)``."""

    def __init__(self, config: MAEConfig | None = None, *, tokenizer: nn.Module | None = None, **kwargs: Any):
        super().__init__()
        cfg = replace(config or MAEConfig(), **kwargs) if kwargs else (config or MAEConfig())
        self.config = cfg
        norm_layer = partial(nn.LayerNorm, eps=LN_EPS)
        d, dd = cfg.embed_dim, cfg.decoder_embed_dim
        num_patches = cfg.num_patches

        # --- encoder (Sec. 3 "MAE encoder") ---
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, d), requires_grad=False)
        if cfg.encoder_mask_token:
            self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, d))
        dpr = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # stochastic depth rule
        self.blocks = nn.ModuleList([
            Block(d, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True, norm_layer=norm_layer, drop_path=dpr[i])
            for i in range(cfg.depth)])
        self.norm = norm_layer(d)

        # --- decoder (Sec. 3 "MAE decoder") ---
        self.decoder_embed = nn.Linear(d, dd, bias=True)
        if not cfg.encoder_mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dd), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            Block(dd, cfg.decoder_num_heads, cfg.mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(cfg.decoder_depth)])
        self.decoder_norm = norm_layer(dd)
        self.target = build_target(cfg.target, self.patch_dim, pca_components=cfg.pca_components, tokenizer=tokenizer)
        self.decoder_pred = nn.Linear(dd, self.target.out_dim, bias=True)
        self.initialize_weights()

    # ----------------------------------------------------------------- setup
    @property
    def patch_dim(self) -> int:
        return self.config.patch_size ** 2 * self.config.in_chans

    @property
    def norm_pix_loss(self) -> bool:
        return self.config.target == "norm_pixel"

    def initialize_weights(self) -> None:
        """The official initialisation: fixed sin-cos tables, xavier Linear/patch-proj, N(0, .02) tokens."""
        grid = self.config.grid_size
        self.pos_embed.data.copy_(torch.from_numpy(get_2d_sincos_pos_embed(self.config.embed_dim, grid, cls_token=True)).unsqueeze(0))
        self.decoder_pos_embed.data.copy_(
            torch.from_numpy(get_2d_sincos_pos_embed(self.config.decoder_embed_dim, grid, cls_token=True)).unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.normal_(self.cls_token, std=0.02)
        for name in ("mask_token", "encoder_mask_token"):
            if hasattr(self, name):
                nn.init.normal_(getattr(self, name), std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def no_weight_decay(self) -> set[str]:
        """Token parameters excluded from weight decay (biases and norms are excluded by ndim)."""
        return {"cls_token", "pos_embed", "mask_token", "decoder_pos_embed", "encoder_mask_token"}

    # ------------------------------------------------------------- patches
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), pixel order (row-in-patch, col-in-patch, channel), raster patches."""
        p, c = self.config.patch_size, self.config.in_chans
        n, ci, hh, ww = imgs.shape
        if ci != c or hh % p or ww % p:
            raise ValueError(f"images of shape {tuple(imgs.shape)} do not fit {c} channels and patch {p}")
        h, w = hh // p, ww // p
        x = imgs.reshape(n, c, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, h * w, p * p * c)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W), the inverse of :meth:`patchify`."""
        p, c = self.config.patch_size, self.config.in_chans
        h, w = grid or self.config.grid_size
        if x.shape[1] != h * w or x.shape[2] != p * p * c:
            raise ValueError(f"patch tensor {tuple(x.shape)} does not match grid {h}x{w} of {p}x{p}x{c} patches")
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    # ------------------------------------------------------------- encoder
    def sample_noise(self, n: int, mask_ratio: float, device: torch.device | str,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise of this model's mask strategy (Table 1f); lower noise = kept. ``generator``: the stream to
        draw from (default: torch's global RNG)."""
        return sample_noise(self.config.mask_strategy, n, self.config.grid_size, mask_ratio, device, generator)

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches: returns (latent (N, 1+keep, D), mask (N, L), ids_restore (N, L)).

        With ``encoder_mask_token`` (Table 1c, w/ [M]) the encoder instead sees all L patches, the
        removed ones replaced by a learned token, and the latent is (N, 1+L, D).
        """
        x = self.patch_embed(imgs)
        n, length, d = x.shape
        if noise is None:
            noise = self.sample_noise(n, mask_ratio, x.device)
        elif noise.shape != (n, length):
            raise ValueError(f"noise must have shape {(n, length)}, got {tuple(noise.shape)}")
        info = mask_from_noise(noise, mask_ratio)
        if self.config.encoder_mask_token:
            m = info.mask.unsqueeze(-1).to(x.dtype)
            x = x * (1 - m) + self.encoder_mask_token.to(x.dtype) * m
            x = x + self.pos_embed[:, 1:, :]
        else:
            x = x + self.pos_embed[:, 1:, :]
            x = torch.gather(x, dim=1, index=info.ids_keep.unsqueeze(-1).expand(-1, -1, d))
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), info.mask, info.ids_restore

    def encode(self, imgs: torch.Tensor) -> torch.Tensor:
        """All patches, raster order, no masking: (N, 1+L, D) after the final norm (features for transfer)."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    # ------------------------------------------------------------- decoder
    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Latent + mask tokens, unshuffled to raster order -> per-patch prediction (N, L, out_dim)."""
        x = self.decoder_embed(x)
        n, length = ids_restore.shape
        if not self.config.encoder_mask_token:
            mask_tokens = self.mask_token.to(x.dtype).expand(n, length + 1 - x.shape[1], -1)
            x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
            x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
            x = torch.cat([x[:, :1, :], x_], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, 1:, :]

    # ---------------------------------------------------------------- loss
    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-patch loss averaged over removed patches (or over all with ``loss_on='all'``)."""
        target = self.target(imgs, self.patchify(imgs))
        loss = self.target.per_patch_loss(pred, target)
        if self.config.loss_on == "all":
            return loss.mean()
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask


#: fields of a pre-training recipe (mae.protocols.pretrain.Config) that are MAEConfig fields as they are
RECIPE_FIELDS = ("img_size", "mask_strategy", "loss_on", "encoder_mask_token", "pca_components")
#: recipe fields that override the preset's only when set (None keeps the preset's)
RECIPE_OPTIONAL_FIELDS = ("decoder_depth", "decoder_embed_dim", "decoder_num_heads")


def recipe_overrides(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The MAEConfig overrides that a pre-training recipe's fields ask of its preset (``recipe['model']``).

    ``norm_pix_loss`` (the release's flag) with ``target='pixel'`` means ``target='norm_pixel'``. Fields
    the recipe lacks keep the preset's values (a checkpoint's config from before a field existed).
    """
    target = recipe.get("target", "pixel")
    if recipe.get("norm_pix_loss") and target == "pixel":
        target = "norm_pixel"
    over: dict[str, Any] = {k: recipe[k] for k in RECIPE_FIELDS if k in recipe}
    over["target"] = target
    over.update({k: recipe[k] for k in RECIPE_OPTIONAL_FIELDS if recipe.get(k) is not None})
    return over


def create_mae(name: str = "mae_vit_base_patch16", *, tokenizer: nn.Module | None = None, **overrides: Any) -> MaskedAutoencoderViT:
    """Build a named preset (official names included) with optional config overrides."""
    return MaskedAutoencoderViT(mae_config(name, **overrides), tokenizer=tokenizer)


def config_dict(model: MaskedAutoencoderViT) -> dict[str, Any]:
    return asdict(model.config)


# ------------------------------------------------------------------ the release's model names
def official_kwargs(norm_pix_loss: bool = False, norm_layer: Any = None, **kwargs: Any) -> dict[str, Any]:
    """The keyword arguments of the release's ``models_mae.MaskedAutoencoderViT`` as config overrides.

    ``norm_pix_loss=True`` is ``target='norm_pixel'``; ``norm_layer`` must build the release's
    LayerNorm (eps 1e-6), the only one the official checkpoints were trained with.
    """
    if norm_layer is not None:
        probe = norm_layer(4)
        if not isinstance(probe, nn.LayerNorm) or probe.eps != LN_EPS:
            raise ValueError(f"norm_layer must build nn.LayerNorm(eps={LN_EPS}) as in the release, got {probe!r}")
    if norm_pix_loss:
        if kwargs.get("target", "norm_pixel") != "norm_pixel":
            raise ValueError(f"norm_pix_loss=True contradicts target={kwargs['target']!r}")
        kwargs["target"] = "norm_pixel"
    return kwargs


def mae_vit_base_patch16_dec512d8b(**kwargs: Any) -> MaskedAutoencoderViT:
    """ViT-B/16 encoder, decoder 512 wide x 8 blocks: the release's ``models_mae.mae_vit_base_patch16``."""
    return create_mae("mae_vit_base_patch16", **official_kwargs(**kwargs))


def mae_vit_large_patch16_dec512d8b(**kwargs: Any) -> MaskedAutoencoderViT:
    """ViT-L/16 encoder, decoder 512 wide x 8 blocks: the release's ``models_mae.mae_vit_large_patch16``."""
    return create_mae("mae_vit_large_patch16", **official_kwargs(**kwargs))


def mae_vit_huge_patch14_dec512d8b(**kwargs: Any) -> MaskedAutoencoderViT:
    """ViT-H/14 encoder, decoder 512 wide x 8 blocks: the release's ``models_mae.mae_vit_huge_patch14``."""
    return create_mae("mae_vit_huge_patch14", **official_kwargs(**kwargs))


# the release's short names (its recommended architectures: decoder 512 dim, 8 blocks)
mae_vit_base_patch16 = mae_vit_base_patch16_dec512d8b
mae_vit_large_patch16 = mae_vit_large_patch16_dec512d8b
mae_vit_huge_patch14 = mae_vit_huge_patch14_dec512d8b
