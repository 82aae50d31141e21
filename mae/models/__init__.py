"""Models: the masked autoencoder and its ViT pieces, and their checkpoints (``inspect``: what a file holds;
``formats``: the public layouts; ``loader``: checkpoint -> MAE; ``interop``: encoder -> classifier, timm).

``mae_vit_base_patch16`` / ``mae_vit_large_patch16`` / ``mae_vit_huge_patch14`` (and their
``*_dec512d8b`` spellings) build the release's architectures under the release's names and keyword
arguments (``norm_pix_loss=True`` ...), so code written against its ``models_mae`` runs unchanged.
"""
from mae.models.mae import (PRESETS, MAEConfig, MaskedAutoencoderViT, create_mae, mae_config, mae_vit_base_patch16,
                            mae_vit_base_patch16_dec512d8b, mae_vit_huge_patch14, mae_vit_huge_patch14_dec512d8b,
                            mae_vit_large_patch16, mae_vit_large_patch16_dec512d8b)

__all__ = ["PRESETS", "MAEConfig", "MaskedAutoencoderViT", "create_mae", "mae_config", "mae_vit_base_patch16",
           "mae_vit_base_patch16_dec512d8b", "mae_vit_huge_patch14", "mae_vit_huge_patch14_dec512d8b",
           "mae_vit_large_patch16", "mae_vit_large_patch16_dec512d8b"]
