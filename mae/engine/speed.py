"""The GPU fast path of pre-training: the same math (MAE Sec. 3), less time per step.

What it changes, each switch a field of :class:`FastPathConfig` (bench/README.md measures each one):

- ``compile``: ``torch.compile`` of the encoder + decoder + loss. With random/grid/block masking the
  kept count is ``int(L * (1 - ratio))`` for every image, so the gather-based masking keeps every
  shape static and the whole forward is one graph (per mask ratio). The mask *noise* is still drawn
  eagerly, outside the graph, from the same torch RNG stream as the eager model, so a seed gives the
  same masks with and without the fast path. The module is compiled in place: parameter names,
  ``state_dict`` and checkpoints are unchanged. Under DDP the blocks are compiled one by one instead
  (``compile_scope="auto"``), so gradients of early blocks can be all-reduced while later ones compute.
- ``fused_adamw``: the single-kernel CUDA AdamW (``mae.engine.optim.adamw`` picks it on GPU); off means
  the official code's default multi-tensor AdamW.
- ``cuda_graphs``: CUDA graphs of the compiled step (torch's "reduce-overhead" mode); shapes are static.
- ``channels_last``: NHWC images and patch projection.
- ``tf32``: TF32 matmuls for the float32 parts (changes float32 rounding; off by default).

bf16 autocast and fused attention (``F.scaled_dot_product_attention`` in timm's ``Block``) are already
the defaults of the training loop and the model, so they are not switches here.

On CPU nothing is applied unless ``force`` is set: CPU training stays bitwise what it was.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

FEATURES = ("compile", "fused_adamw", "cuda_graphs", "channels_last", "tf32")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
COMPILE_SCOPES = ("auto", "model", "blocks")
SETTINGS = ("auto", "on", "off")
DEFAULT_COMPILE_BACKEND = "inductor"  # tests on CPU swap in "aot_eager" (seconds instead of minutes)
_ATTR = "_mae_fast_path"  # the FastPathConfig a model was given, stored on the module


@dataclass(frozen=True)
class FastPathConfig:
    """Speed switches of a pre-training step; defaults are the GPU fast path."""

    compile: bool = True
    compile_mode: str = "default"  # or "max-autotune-no-cudagraphs" (longer compile, Triton GEMM search)
    compile_backend: str | Callable = DEFAULT_COMPILE_BACKEND
    compile_scope: str = "auto"  # auto (model; blocks under DDP) | model | blocks
    fused_adamw: bool = True
    cuda_graphs: bool = False
    channels_last: bool = False
    tf32: bool = False
    force: bool = False  # apply on a CPU device too (tests)

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r} "
                             "(CUDA graphs: set cuda_graphs=True instead of mode 'reduce-overhead')")
        if self.compile_scope not in COMPILE_SCOPES:
            raise ValueError(f"compile_scope must be one of {COMPILE_SCOPES}, got {self.compile_scope!r}")
        if self.cuda_graphs and not self.compile:
            raise ValueError("cuda_graphs=True needs compile=True (the graphs are captured by torch.compile)")

    @classmethod
    def off(cls) -> FastPathConfig:
        """Every switch off: the plain eager step of the official release."""
        return cls(compile=False, fused_adamw=False, cuda_graphs=False, channels_last=False, tf32=False)

    @property
    def enabled(self) -> bool:
        return any(getattr(self, f) for f in FEATURES)

    def features(self) -> dict[str, bool]:
        return {f: bool(getattr(self, f)) for f in FEATURES}

    def with_feature(self, feature: str, on: bool) -> FastPathConfig:
        """A copy with one switch of :data:`FEATURES` set (turning compile off also drops cuda_graphs)."""
        if feature not in FEATURES:
            raise ValueError(f"unknown fast-path feature {feature!r}; choose one of {FEATURES}")
        changes: dict[str, Any] = {feature: on}
        if feature == "compile" and not on:
            changes["cuda_graphs"] = False
        if feature == "cuda_graphs" and on:
            changes["compile"] = True
        return dataclasses.replace(self, **changes)

    def torch_compile_mode(self) -> str | None:
        """The ``mode`` argument of ``torch.compile`` for these switches."""
        if self.compile_mode == "default":
            return "reduce-overhead" if self.cuda_graphs else None
        return "max-autotune" if self.cuda_graphs else "max-autotune-no-cudagraphs"


def resolve_fast_path(setting: str | FastPathConfig, device: torch.device | str,
                      compile_mode: str = "default") -> FastPathConfig:
    """``auto``: the fast path on CUDA, everything off elsewhere; ``on``: forced (CPU too); ``off``."""
    if isinstance(setting, FastPathConfig):
        return setting
    if setting not in SETTINGS:
        raise ValueError(f"fast_path must be one of {SETTINGS}, got {setting!r}")
    if compile_mode not in COMPILE_MODES:  # checked on every device, also where it would not be used
        raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
    if setting == "off" or (setting == "auto" and torch.device(device).type != "cuda"):
        return FastPathConfig.off()
    return FastPathConfig(compile_mode=compile_mode, compile_backend=DEFAULT_COMPILE_BACKEND, force=setting == "on")


def fast_path_of(model: nn.Module) -> FastPathConfig | None:
    """The config applied to ``model`` by :func:`apply_fast_path`, or None."""
    return getattr(model, _ATTR, None)


def apply_fast_path(model: nn.Module, cfg: FastPathConfig, device: torch.device | str, *,
                    distributed: bool = False) -> nn.Module:
    """Apply the speed switches of ``cfg`` to ``model`` (in place) and return it.

    A no-op on non-CUDA devices unless ``cfg.force``. Compilation targets the MAE model
    (:class:`~mae.models.mae.MaskedAutoencoderViT`); other modules stay eager (a warning if forced).
    The optimiser switch (``fused_adamw``) is read by whoever builds the optimiser
    (:func:`adamw_fused_arg`).
    """
    from mae.models.mae import MaskedAutoencoderViT

    device = torch.device(device)
    if fast_path_of(model) is not None:
        raise ValueError("apply_fast_path: this model already has a fast path; call remove_fast_path first")
    if not cfg.enabled or (device.type != "cuda" and not cfg.force):
        return model
    if cfg.cuda_graphs and device.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs a CUDA device, got {device}")
    is_mae = isinstance(model, MaskedAutoencoderViT)
    if cfg.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.channels_last and is_mae:
        model.patch_embed.to(memory_format=torch.channels_last)
    if cfg.compile:
        if not is_mae:
            if cfg.force:  # asked for explicitly: say why nothing was compiled
                warnings.warn(f"apply_fast_path: compile is implemented for MaskedAutoencoderViT, not "
                              f"{type(model).__name__}; that model stays eager", stacklevel=2)
        else:
            scope = cfg.compile_scope if cfg.compile_scope != "auto" else ("blocks" if distributed else "model")
            if scope == "model":
                model.forward = CompiledMAEForward(model, cfg)
            else:
                for blk in (*model.blocks, *model.decoder_blocks):
                    blk.compile(backend=cfg.compile_backend, mode=cfg.torch_compile_mode(), dynamic=False)
    setattr(model, _ATTR, cfg)
    return model


def remove_fast_path(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_fast_path` on the module (global TF32 flags are left as they are)."""
    cfg = fast_path_of(model)
    if cfg is None:
        return model
    if isinstance(model.__dict__.get("forward"), CompiledMAEForward):
        del model.forward
    for m in model.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    if cfg.channels_last and hasattr(model, "patch_embed"):
        model.patch_embed.to(memory_format=torch.contiguous_format)
    delattr(model, _ATTR)
    return model


def adamw_fused_arg(cfg: FastPathConfig) -> bool | None:
    """The ``fused`` argument for :func:`mae.engine.optim.adamw`: None = fused where all params are on a GPU."""
    return None if cfg.fused_adamw else False


class CompiledMAEForward:
    """Stands in for ``MaskedAutoencoderViT.forward`` on one model instance.

    ``(imgs, mask_ratio, noise=None) -> (loss, pred, mask)`` like the eager forward: the noise is drawn
    here, eagerly, exactly as the eager forward would draw it, and the rest runs as one compiled graph,
    one per mask ratio (the kept count is a constant of the graph). Only training steps are compiled
    (train mode, grad enabled); evaluation and reconstruction figures run the eager forward. It is a
    plain object, not a module, so it adds nothing to the model's ``state_dict``.
    """

    def __init__(self, model: nn.Module, cfg: FastPathConfig):
        self._model = model
        self._eager = type(model).forward.__get__(model)
        self._cfg = cfg
        self._compiled: dict[float, Callable] = {}

    def _for_ratio(self, mask_ratio: float) -> Callable:
        fn = self._compiled.get(mask_ratio)
        if fn is None:
            eager, ratio = self._eager, float(mask_ratio)

            def forward_given_noise(imgs: torch.Tensor, noise: torch.Tensor):
                return eager(imgs, ratio, noise)

            fn = torch.compile(forward_given_noise, backend=self._cfg.compile_backend,
                               mode=self._cfg.torch_compile_mode(), dynamic=False)
            self._compiled[mask_ratio] = fn
        return fn

    def __call__(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
        model = self._model
        if not (model.training and torch.is_grad_enabled()):  # eval / figures: eager, no compile per odd shape
            return self._eager(imgs, mask_ratio, noise)
        if noise is None:  # the eager forward draws it after patch_embed, which uses no RNG: same stream
            noise = model.sample_noise(imgs.shape[0], mask_ratio, imgs.device)
        if self._cfg.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        if self._cfg.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return self._for_ratio(mask_ratio)(imgs, noise)

    def __repr__(self) -> str:
        return f"CompiledMAEForward(ratios={sorted(self._compiled)}, mode={self._cfg.torch_compile_mode()})"
