"""Models: the masked autoencoder and its ViT pieces."""
from mae.models.mae import PRESETS, MAEConfig, MaskedAutoencoderViT, create_mae, mae_config

__all__ = ["PRESETS", "MAEConfig", "MaskedAutoencoderViT", "create_mae", "mae_config"]
