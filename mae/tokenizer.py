"""A small VQ tokenizer for the "dVAE token" target of MAE Table 1d.

The paper's token row uses BEiT's pre-trained DALL-E dVAE, which cannot be downloaded here, so the
reproduction trains its own discrete tokenizer as an explicit first stage (mae/protocols/tokenizer.py).
This is a VQ-VAE (van den Oord et al. 2017) shaped to the MAE patch grid: the encoder's first layer
is a ``patch_size``-strided convolution, so each MAE patch gets exactly one token id, in the same
raster order as ``MaskedAutoencoderViT.patchify``. A few 3x3 residual convolutions give each code
some context from the neighbouring patches, as a dVAE's convolutional encoder does.

Quantisation is a nearest-neighbour lookup of the L2-normalised encoder output in an L2-normalised
codebook (cosine similarity, which keeps more codes in use); training uses the straight-through
estimator with the codebook and commitment losses, the codebook is initialised from encoder
outputs of the first training batch, and codes unused for a while are re-seeded from the batch.

    tok = VQTokenizer(TokenizerConfig(img_size=32, patch_size=8, vocab_size=64))
    ids = tok.tokenize(imgs)          # (N, L) long, L = (32 / 8) ** 2
    tok.save("tokenizer.pth"); tok2 = load_tokenizer("tokenizer.pth")
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from mae.engine.checkpoint import CheckpointError, load_checkpoint, load_state_dict_checked, save_checkpoint

KIND = "mae.tokenizer.VQTokenizer"


@dataclass(frozen=True)
class TokenizerConfig:
    """Architecture of the tokenizer; ``img_size`` / ``patch_size`` must match the MAE model's."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    vocab_size: int = 8192
    code_dim: int = 32
    hidden_dim: int = 128
    res_blocks: int = 2
    beta: float = 0.25  # commitment loss weight (VQ-VAE)
    usage_decay: float = 0.99  # EMA of how often each code is picked (dead-code restarts)
    dead_threshold: float = 0.01  # codes whose usage EMA falls below this / vocab_size are re-seeded

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "vocab_size", "code_dim", "hidden_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TokenizerConfig.{name} must be a positive int, got {v!r}")
        if self.vocab_size < 2:
            raise ValueError(f"TokenizerConfig.vocab_size must be >= 2, got {self.vocab_size}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.res_blocks < 0:
            raise ValueError(f"res_blocks must be >= 0, got {self.res_blocks}")
        if not 0.0 <= self.usage_decay < 1.0:
            raise ValueError(f"usage_decay must be in [0, 1), got {self.usage_decay}")

    @property
    def grid_size(self) -> tuple[int, int]:
        g = self.img_size // self.patch_size
        return (g, g)

    @property
    def num_tokens(self) -> int:
        return self.grid_size[0] * self.grid_size[1]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _ResBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.GELU(), nn.Conv2d(dim, dim, 3, padding=1), nn.GELU(), nn.Conv2d(dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class VQTokenizer(nn.Module):
    """Image -> one discrete token per MAE patch (``tokenize``); trained as a VQ-VAE (``forward``)."""

    def __init__(self, config: TokenizerConfig | None = None, **kwargs: Any):
        super().__init__()
        cfg = config or TokenizerConfig(**kwargs)
        if config is not None and kwargs:
            cfg = TokenizerConfig(**{**asdict(config), **kwargs})
        self.config = cfg
        p, h = cfg.patch_size, cfg.hidden_dim
        self.encoder = nn.Sequential(nn.Conv2d(cfg.in_chans, h, p, stride=p),
                                     *[_ResBlock(h) for _ in range(cfg.res_blocks)],
                                     nn.GELU(), nn.Conv2d(h, cfg.code_dim, 1))
        self.codebook = nn.Embedding(cfg.vocab_size, cfg.code_dim)
        nn.init.normal_(self.codebook.weight)
        self.decoder = nn.Sequential(nn.Conv2d(cfg.code_dim, h, 1),
                                     *[_ResBlock(h) for _ in range(cfg.res_blocks)],
                                     nn.GELU(), nn.ConvTranspose2d(h, cfg.in_chans, p, stride=p))
        self.register_buffer("usage", torch.full((cfg.vocab_size,), 1.0 / cfg.vocab_size))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    # -------------------------------------------------------------- encoding
    def _check(self, imgs: torch.Tensor) -> None:
        c, p = self.config.in_chans, self.config.patch_size
        if imgs.dim() != 4 or imgs.shape[1] != c or imgs.shape[2] % p or imgs.shape[3] % p:
            raise ValueError(f"tokenizer expects images (N, {c}, H, W) with H, W multiples of the patch size {p}; "
                             f"got {tuple(imgs.shape)}")

    def encode(self, imgs: torch.Tensor) -> torch.Tensor:
        """L2-normalised code vectors, one per patch: (N, code_dim, H/p, W/p)."""
        self._check(imgs)
        return F.normalize(self.encoder(imgs), dim=1)

    def _normed_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook.weight, dim=1)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the closest (cosine) codebook entry for each vector of ``z`` (M, code_dim)."""
        return (z @ self._normed_codebook().t()).argmax(dim=1)

    @torch.no_grad()
    def tokenize(self, imgs: torch.Tensor) -> torch.Tensor:
        """One token id per patch, raster order (as MAE's ``patchify``): (N, L) long."""
        z = self.encode(imgs.float())
        n, d, gh, gw = z.shape
        ids = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, d))
        return ids.view(n, gh * gw)

    @torch.no_grad()
    def decode_tokens(self, ids: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Images (N, C, H, W) reconstructed from token ids (N, L)."""
        gh, gw = grid or self.config.grid_size
        if ids.dim() != 2 or ids.shape[1] != gh * gw:
            raise ValueError(f"token ids {tuple(ids.shape)} do not match a {gh}x{gw} grid")
        q = self._normed_codebook()[ids]  # (N, L, d)
        return self.decoder(q.transpose(1, 2).reshape(ids.shape[0], -1, gh, gw))

    # -------------------------------------------------------------- training
    @torch.no_grad()
    def _seed_codes(self, z: torch.Tensor, which: torch.Tensor) -> None:
        """Replace the codebook rows ``which`` by encoder outputs drawn from ``z`` (M, d)."""
        k = int(which.numel())
        if k == 0 or z.shape[0] == 0:
            return
        pick = torch.randint(0, z.shape[0], (k,), device=z.device) if z.shape[0] < k else torch.randperm(z.shape[0], device=z.device)[:k]
        self.codebook.weight.data[which] = z[pick].to(self.codebook.weight.dtype)
        if _distributed():  # every process keeps rank 0's codebook (DDP does not sync in-place edits)
            dist.broadcast(self.codebook.weight.data, src=0)

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """VQ-VAE step: (loss, reconstruction, stats). Loss = recon MSE + codebook + beta * commitment."""
        cfg = self.config
        z = self.encode(imgs)  # (N, d, gh, gw)
        n, d, gh, gw = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and not bool(self.initialized):
            self._seed_codes(flat.detach().float(), torch.arange(cfg.vocab_size, device=flat.device))
            self.initialized.fill_(True)
        ids = self.nearest(flat.detach().float())
        q = self._normed_codebook()[ids].to(flat.dtype)
        codebook_loss = F.mse_loss(q.float(), flat.detach().float())
        commit_loss = F.mse_loss(flat.float(), q.detach().float())
        q_st = flat + (q - flat).detach()  # straight-through estimator
        recon = self.decoder(q_st.view(n, gh, gw, d).permute(0, 3, 1, 2))
        recon_loss = F.mse_loss(recon.float(), imgs.float())
        loss = recon_loss + codebook_loss + cfg.beta * commit_loss
        counts = torch.bincount(ids, minlength=cfg.vocab_size).float()
        if self.training and _distributed():  # the same usage statistics on every process
            dist.all_reduce(counts)
        probs = counts / counts.sum()
        if self.training:
            with torch.no_grad():
                self.usage.mul_(cfg.usage_decay).add_(probs, alpha=1 - cfg.usage_decay)
                dead = (self.usage < cfg.dead_threshold / cfg.vocab_size).nonzero().flatten()
                if dead.numel():
                    self._seed_codes(flat.detach().float(), dead)
                    self.usage[dead] = 1.0 / cfg.vocab_size
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-12))).sum())
        stats = {"recon_loss": recon_loss.detach(), "codebook_loss": codebook_loss.detach(),
                 "commit_loss": commit_loss.detach(), "perplexity": perplexity.detach(),
                 "codes_used": (counts > 0).sum().float()}
        return loss, recon, stats

    # -------------------------------------------------------------- files
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``{'model', 'tokenizer_config', 'kind', ...extra}`` atomically."""
        state = {"model": self.state_dict(), "tokenizer_config": asdict(self.config), "kind": KIND, **(extra or {})}
        return save_checkpoint(state, path)


def load_tokenizer(path: str | Path, map_location: str | torch.device = "cpu") -> VQTokenizer:
    """A frozen tokenizer (eval mode, no grad) from a file written by :meth:`VQTokenizer.save`."""
    state = load_checkpoint(path, map_location=map_location)
    if state.get("kind") != KIND or "tokenizer_config" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not a tokenizer file (expected keys 'kind'={KIND!r}, 'tokenizer_config', "
                              f"'model'; found {sorted(state)[:8]}); train one with `mae tokenizer`")
    raw = dict(state["tokenizer_config"])
    known = {f.name for f in fields(TokenizerConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CheckpointError(f"{path}: unknown tokenizer_config field(s) {unknown}")
    tok = VQTokenizer(TokenizerConfig(**raw))
    load_state_dict_checked(tok, state["model"], strict=True, source=str(path))
    return tok.eval().requires_grad_(False)
