"""Pre-training throughput of MAE: img/s, peak memory and MFU of a full step (forward, backward, AdamW).

    python bench/pretrain_throughput.py --device cpu --model mae_vit_smoke          # seconds on a CPU
    python bench/pretrain_throughput.py --models vit_b,vit_l,vit_h                  # one GPU (H100: see README)
    python bench/pretrain_throughput.py --models vit_l --inputs synthetic,jpeg_gpu,jpeg_cpu \\
        --variants baseline,fast,input_only --jpeg-generate 20000                   # the input pipeline

Every row is one (model, batch size, dtype, input, variant). The variant ``baseline`` is the plain eager
step of the official release on the identical model (same timm blocks, gather-based masking, bf16
autocast, multi-tensor fp32 AdamW, ``loss.item()`` every step); ``fast`` is the default fast path of
:mod:`mae.engine.speed` as the training loop runs it; ``fast-compile`` / ``baseline+compile`` switch one
feature of :data:`FEATURES` off / on (``host_sync``: the per-step ``loss.item()``; ``max_autotune``: the
compile mode). ``speedup_vs_baseline`` is measured in the same run; ``input_efficiency`` is a JPEG input's
rate over the synthetic-input rate of the same variant. GPU timings use CUDA events after warm-up
steps (which include compilation). See bench/README.md for each column. Numbers are never made up: a
variant that cannot run here (CUDA graphs on a CPU, out of memory) gets a ``status`` and no rate.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.flops import peak_tflops
from mae.engine.optim import adamw, param_groups_weight_decay, scaled_lr
from mae.engine.speed import FEATURES, FastPathConfig, adamw_fused_arg, apply_fast_path
from mae.flops import step_flops
from mae.provenance import require_same_checkout
from mae.models.mae import PRESETS, create_mae, mae_config

REPO = Path(__file__).resolve().parents[1]
MODEL_ALIASES = {"vit_b": "mae_vit_base_patch16", "vit_l": "mae_vit_large_patch16", "vit_h": "mae_vit_huge_patch14"}
FULL_SIZE = frozenset(MODEL_ALIASES.values())
DEFAULT_BATCH = {"mae_vit_base_patch16": 256, "mae_vit_large_patch16": 256, "mae_vit_huge_patch14": 128}
# Issue 6: the official release's model code (timm Blocks, fused attention, eager, AMP bf16) on one H100.
ISSUE_OFFICIAL_H100 = {("mae_vit_base_patch16", 256, "bf16"): 3150.0, ("mae_vit_large_patch16", 256, "bf16"): 1870.0,
                       ("mae_vit_huge_patch14", 128, "bf16"): 860.0}
VARIANT_FEATURES = (*FEATURES, "host_sync", "max_autotune")
# jpeg_cpu: the official loader (PIL crop + ToTensor + Normalize in workers, float batches); the others are
# the --input_path choices of `mae pretrain`: jpeg_cpu_u8 = pil (uint8 batches, normalised on the device),
# jpeg_gpu = gpu_decode (the device decodes), jpeg_worker = worker_decode (workers decode, the device resizes)
INPUTS = ("synthetic", "jpeg_gpu", "jpeg_worker", "jpeg_cpu_u8", "jpeg_cpu")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
GPU_VARIANTS = ("baseline", "fast", "fast-compile", "fast-fused_adamw", "fast-host_sync", "fast+cuda_graphs")
CPU_VARIANTS = ("baseline", "fast")


# ------------------------------------------------------------------------------------ variants
@dataclass(frozen=True)
class Variant:
    """One set of speed switches: a fast-path config plus the per-step host sync of the training loop."""

    name: str
    fast: FastPathConfig
    host_sync: bool = True

    @property
    def input_only(self) -> bool:
        return self.name == "input_only"

    def features(self) -> str:
        parts = [f"{k}={int(v)}" for k, v in self.fast.features().items()]
        parts += [f"host_sync={int(self.host_sync)}", f"compile_mode={self.fast.compile_mode}"]
        return " ".join(parts)


def parse_variant(spec: str, compile_backend: str = "inductor") -> Variant:
    """``baseline`` | ``fast`` | ``input_only``, optionally followed by ``+feature`` / ``-feature`` tokens
    (features: :data:`VARIANT_FEATURES`), e.g. ``fast-compile``, ``baseline+compile+fused_adamw``."""
    spec = spec.strip()
    if spec == "input_only":
        return Variant(spec, FastPathConfig.off(), host_sync=False)
    import re
    tokens = re.split(r"(?=[+-])", spec)
    base = tokens[0]
    if base == "baseline":
        fast, sync = FastPathConfig.off(), True
    elif base == "fast":
        fast, sync = FastPathConfig(), True
    else:
        raise ValueError(f"variant {spec!r}: must start with 'baseline', 'fast' or be 'input_only'")
    fast = dataclasses.replace(fast, compile_backend=compile_backend, force=True)  # explicit: CPU too
    for tok in tokens[1:]:
        on, feat = tok[0] == "+", tok[1:]
        if feat == "host_sync":
            sync = on
        elif feat == "max_autotune":
            fast = dataclasses.replace(fast, compile_mode="max-autotune-no-cudagraphs" if on else "default")
        elif feat in FEATURES:
            fast = fast.with_feature(feat, on)
        else:
            raise ValueError(f"variant {spec!r}: unknown feature {feat!r}; choose from {VARIANT_FEATURES}")
    return Variant(spec, fast, sync)


# ------------------------------------------------------------------------------------ timing
class Timer:
    """CUDA events on the current stream (GPU) or the wall clock (CPU); ``stop`` returns seconds."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def start(self) -> None:
        if self.cuda:
            self._t0 = torch.cuda.Event(enable_timing=True)
            self._t1 = torch.cuda.Event(enable_timing=True)
            self._t0.record()
        else:
            self._w0 = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            self._t1.record()
            self._t1.synchronize()
            return self._t0.elapsed_time(self._t1) / 1e3
        return time.perf_counter() - self._w0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ inputs
class InputSource:
    """``next() -> images on the device``; ``close()`` stops loader workers / threads."""

    def next(self) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SyntheticInput(InputSource):
    """One fixed batch of normalised-looking random images already on the device (compute only)."""

    def __init__(self, batch_size: int, img_size: int, device: torch.device, seed: int):
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.x = torch.randn(batch_size, 3, img_size, img_size, generator=g).to(device)

    def next(self) -> torch.Tensor:
        return self.x


def _endless_loader(dataset: Any, batch_size: int, workers: int, seed: int, **kw: Any) -> Any:
    from torch.utils.data import DataLoader, RandomSampler

    from mae.data.sampler import SeededDataset
    sampler = RandomSampler(dataset, replacement=True, num_samples=1 << 40,
                            generator=torch.Generator().manual_seed(seed))
    return DataLoader(SeededDataset(dataset, seed), batch_size=batch_size, sampler=sampler, num_workers=workers,
                      drop_last=True, persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                      **kw)


class JpegGpuInput(InputSource):
    """Workers read bytes + draw crops (``decode_on="worker"``: decode + crop too); a background thread
    finishes the batch on the device (mae.engine.gpu_input), as ``mae pretrain --input_path`` does."""

    def __init__(self, root: str, batch_size: int, img_size: int, device: torch.device, workers: int,
                 seed: int, depth: int = 3, decode_on: str = "device"):
        from mae.engine.gpu_input import BatchDecoder, CropSpec, PrefetchLoader, collate_encoded, encoded_image_folder
        spec = CropSpec.from_augmentation("crop_rand", img_size)
        loader = _endless_loader(encoded_image_folder(root, spec, decode_on), batch_size, workers, seed,
                                 collate_fn=collate_encoded, pin_memory=device.type == "cuda")
        self._it = iter(PrefetchLoader(loader, BatchDecoder(spec, device), device, depth=depth))

    def next(self) -> torch.Tensor:
        return next(self._it)[0]

    def close(self) -> None:
        self._it.close()


class JpegCpuU8Input(InputSource):
    """PIL crop + flip in workers, uint8 batches (pinned), ``NormalizeBatch`` on the device one batch ahead:
    the default (``--input_path pil``) of ``mae pretrain``."""

    def __init__(self, root: str, batch_size: int, img_size: int, device: torch.device, workers: int, seed: int,
                 depth: int = 3):
        from mae.data import NormalizeBatch, SafeImageFolder, pretrain_transform
        from mae.engine.prefetch import PrefetchLoader
        loader = _endless_loader(SafeImageFolder(root, pretrain_transform("crop_rand", img_size, normalize=False)),
                                 batch_size, workers, seed, pin_memory=device.type == "cuda")
        norm = NormalizeBatch()
        self._it = iter(PrefetchLoader(loader, lambda b: norm(b[0].to(device, non_blocking=True)), device,
                                       depth=depth))

    def next(self) -> torch.Tensor:
        return next(self._it)

    def close(self) -> None:
        self._it.close()


class JpegCpuInput(InputSource):
    """The official loader: ImageFolder + PIL RandomResizedCrop/flip in workers, pinned memory."""

    def __init__(self, root: str, batch_size: int, img_size: int, device: torch.device, workers: int, seed: int):
        from mae.data import SafeImageFolder, pretrain_transform
        loader = _endless_loader(SafeImageFolder(root, pretrain_transform("crop_rand", img_size)), batch_size,
                                 workers, seed, pin_memory=device.type == "cuda")
        self._it, self.device = iter(loader), device

    def next(self) -> torch.Tensor:
        return next(self._it)[0].to(self.device, non_blocking=True)

    def close(self) -> None:
        del self._it
        gc.collect()


def make_input(kind: str, batch_size: int, img_size: int, device: torch.device, *, jpeg_dir: str | None,
               workers: int, seed: int) -> InputSource:
    if kind == "synthetic":
        return SyntheticInput(batch_size, img_size, device, seed)
    if kind not in INPUTS:
        raise ValueError(f"unknown input {kind!r}; choose from {INPUTS}")
    if not jpeg_dir:
        raise ValueError(f"input {kind!r} needs --jpeg-dir DIR or --jpeg-generate N")
    if kind == "jpeg_cpu":
        return JpegCpuInput(jpeg_dir, batch_size, img_size, device, workers, seed)
    if kind == "jpeg_cpu_u8":
        return JpegCpuU8Input(jpeg_dir, batch_size, img_size, device, workers, seed)
    return JpegGpuInput(jpeg_dir, batch_size, img_size, device, workers, seed,
                        decode_on="worker" if kind == "jpeg_worker" else "device")


# ------------------------------------------------------------------------------------ one measurement
@dataclass
class StepResult:
    """One measured (model, batch size, dtype, input, variant)."""

    model: str
    batch_size: int
    dtype: str
    input: str
    variant: str
    features: str
    status: str = "ok"
    img_per_s: float = math.nan
    step_ms: float = math.nan
    step_ms_min: float = math.nan
    step_ms_max: float = math.nan
    peak_mem_gib: float = math.nan
    train_gflops_per_img: float = math.nan
    achieved_tflops: float = math.nan
    peak_tflops: float = math.nan
    mfu: float = math.nan
    loss_step0: float = math.nan
    warmup_s: float = math.nan
    warmup: int = 0
    steps: int = 0
    repeats: int = 0
    compile_backend: str = ""
    overrides: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(d.pop("extra"))
        return d


def resolve_device(name: str) -> torch.device:
    from mae.engine.loop import resolve_device as _resolve
    return _resolve(name)


def resolve_dtype(name: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA, fp32 on CPU; ``none`` is fp32 (the training loop's spelling)."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    name = "fp32" if name == "none" else name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}, none; got {name!r}")
    return name


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _free(device: torch.device) -> None:
    gc.collect()
    torch._dynamo.reset()  # compiled graphs (and CUDA graph pools) of the last model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_step(model: str, batch_size: int, *, variant: str | Variant = "fast", overrides: dict | None = None,
                 device: str | torch.device = "auto", dtype: str = "auto", mask_ratio: float = 0.75,
                 warmup: int = 10, steps: int = 20, repeats: int = 3, input: str = "synthetic",
                 jpeg_dir: str | None = None, workers: int = 8, seed: int = 0,
                 compile_backend: str | None = None, peak: float | None = None) -> StepResult:
    """Time full pre-training steps of one setting (the function ``reproduce/table2.py`` can call).

    The model is built from ``seed`` (identical weights for every variant), trained ``warmup`` steps
    (compilation included), then ``repeats`` x ``steps`` timed steps; the median repeat is reported.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model = MODEL_ALIASES.get(model, model)
    overrides = dict(overrides or {})
    backend = compile_backend or ("inductor" if dev.type == "cuda" else "aot_eager")
    var = variant if isinstance(variant, Variant) else parse_variant(variant, backend)
    cfg = mae_config(model, **overrides)
    res = StepResult(model=model, batch_size=batch_size, dtype=dt, input=input, variant=var.name,
                     features=var.features(), warmup=warmup, steps=steps, repeats=repeats,
                     compile_backend=backend if var.fast.compile else "",
                     overrides=" ".join(f"{k}={v}" for k, v in sorted(overrides.items())))
    if warmup < 0 or steps < 1 or repeats < 1 or batch_size < 1:
        raise ValueError(f"need warmup >= 0, steps >= 1, repeats >= 1, batch_size >= 1; got {warmup}, {steps}, "
                         f"{repeats}, {batch_size}")
    if var.fast.cuda_graphs and dev.type != "cuda":
        res.status = "skipped: CUDA graphs need a GPU"
        return res
    if var.input_only and input == "synthetic":
        res.status = "skipped: input_only measures a JPEG input"
        return res
    flops = step_flops(cfg, mask_ratio) if cfg.target != "token" else None
    if flops is not None:
        res.train_gflops_per_img = flops.train / 1e9
    if peak is None and dev.type == "cuda":
        peak = peak_tflops(_device_name(dev), "tf32" if dt == "fp32" and var.fast.tf32 else dt)
    res.peak_tflops = peak if peak is not None else math.nan
    source, step = None, None
    state: dict[str, Any] = {}
    try:
        source = make_input(input, batch_size, cfg.img_size, dev, jpeg_dir=jpeg_dir, workers=workers, seed=seed)
        if var.input_only:
            step = _input_step
        else:
            step = _train_step(model, overrides, var, dev, dt, mask_ratio, batch_size, seed, state)
        timer = Timer(dev)
        t0 = time.perf_counter()
        torch.manual_seed(seed + 1)  # same masks for every variant
        for _ in range(warmup):
            step(source)
        _sync(dev)
        res.warmup_s = time.perf_counter() - t0
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times = []
        for _ in range(repeats):
            timer.start()
            for _ in range(steps):
                step(source)
            times.append(timer.stop() / steps)
        res.loss_step0 = state.get("loss_step0", math.nan)
        if dev.type == "cuda":
            res.peak_mem_gib = torch.cuda.max_memory_allocated(dev) / 2**30
        med = statistics.median(times)
        res.step_ms, res.step_ms_min, res.step_ms_max = med * 1e3, min(times) * 1e3, max(times) * 1e3
        res.img_per_s = batch_size / med
        if flops is not None and not var.input_only:
            res.achieved_tflops = flops.train * res.img_per_s / 1e12
            if res.peak_tflops == res.peak_tflops:
                res.mfu = res.achieved_tflops / res.peak_tflops
    except torch.cuda.OutOfMemoryError:
        res.status = "oom"
    finally:
        if source is not None:
            source.close()
        source = step = None
        state.clear()
        _free(dev)
    return res


def _input_step(src: InputSource) -> None:
    src.next()


def _train_step(model_name: str, overrides: dict, var: Variant, dev: torch.device, dt: str, mask_ratio: float,
                batch_size: int, seed: int, state: dict) -> Callable[[InputSource], None]:
    """Build model + AdamW (the paper's recipe: betas 0.9/0.95, wd 0.05) and return one training step.

    ``state`` receives the model and optimiser (so the caller can free them) and ``loss_step0``."""
    torch.manual_seed(seed)
    net = create_mae(model_name, **overrides).to(dev)
    net.train()
    apply_fast_path(net, var.fast, dev)
    opt = adamw(param_groups_weight_decay(net, 0.05), scaled_lr(1.5e-4, batch_size), (0.9, 0.95),
                fused=adamw_fused_arg(var.fast))
    amp = DTYPES[dt]
    scaler = torch.amp.GradScaler(dev.type, enabled=amp == torch.float16)
    state.update(model=net, opt=opt)  # freed by the caller

    def step(src: InputSource) -> None:
        imgs = src.next()
        with torch.autocast(dev.type, dtype=amp) if amp is not None else nullcontext():
            loss = net(imgs, mask_ratio=mask_ratio)[0]
        if var.host_sync or "loss_step0" not in state:
            value = loss.item()  # the training loop's NaN guard does this every step
            if not math.isfinite(value):
                raise FloatingPointError(f"{var.name}: loss is {value}")
            state.setdefault("loss_step0", value)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    return step


# ------------------------------------------------------------------------------------ grid + CSV
def derived_columns(rows: list[dict[str, Any]], device_name: str) -> None:
    """Add speedup_vs_baseline, input_efficiency and the issue's official-rate ratio, in place."""
    def key(r: dict, *extra: str) -> tuple:
        return (r["model"], r["batch_size"], r["dtype"], r["overrides"], *[r[e] for e in extra])

    base = {key(r, "input"): r["img_per_s"] for r in rows if r["variant"] == "baseline" and r["status"] == "ok"}
    synth = {key(r, "variant"): r["img_per_s"] for r in rows if r["input"] == "synthetic" and r["status"] == "ok"}
    for r in rows:
        ok = r["status"] == "ok" and r["variant"] != "input_only"
        b = base.get(key(r, "input"))
        r["speedup_vs_baseline"] = r["img_per_s"] / b if ok and b else math.nan
        s = synth.get(key(r, "variant")) if r["variant"] != "input_only" else synth.get(key(r) + ("fast",))
        r["input_efficiency"] = r["img_per_s"] / s if r["status"] == "ok" and s and r["input"] != "synthetic" else math.nan
        official = ISSUE_OFFICIAL_H100.get((r["model"], r["batch_size"], r["dtype"]))
        use = official and "H100" in device_name and not r["overrides"] and ok
        r["issue_official_img_per_s"] = official if use else math.nan
        r["vs_issue_official"] = r["img_per_s"] / official if use else math.nan


COLUMNS = ("scale", "device", "model", "batch_size", "dtype", "input", "variant", "status", "img_per_s",
           "speedup_vs_baseline", "vs_issue_official", "input_efficiency", "step_ms", "step_ms_min", "step_ms_max",
           "peak_mem_gib", "train_gflops_per_img", "achieved_tflops", "peak_tflops", "mfu", "loss_step0",
           "warmup_s", "warmup", "steps", "repeats", "features", "compile_backend", "overrides",
           "issue_official_img_per_s", "commit", "date", "torch", "cuda", "python", "command")


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the rows (atomically) with the columns of :data:`COLUMNS`."""
    from reproduce.report import atomic_write_csv
    return atomic_write_csv(rows, path, COLUMNS, float_digits=6)


def format_table(rows: list[dict[str, Any]]) -> str:
    cols = ("model", "batch_size", "dtype", "input", "variant", "img_per_s", "speedup_vs_baseline",
            "input_efficiency", "peak_mem_gib", "mfu", "status")
    heads = ("model", "bs", "dtype", "input", "variant", "img/s", "x base", "in eff", "GiB", "MFU", "status")
    table = [heads] + [tuple(str(_short(r.get(c, ""))) for c in cols) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(heads))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(t, widths)) for t in table)


def _short(v: Any) -> Any:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"
    if isinstance(v, str) and v.startswith("mae_vit_"):
        return v[len("mae_vit_"):]
    return v


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")[:40] or "device"


def _parse_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--override expects KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    for conv in (int, float):
        try:
            return k, conv(v)
        except ValueError:
            pass
    return k, {"true": True, "false": False}.get(v.lower(), v)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--models", "--model", dest="models", default=None,
                   help="comma list: vit_b, vit_l, vit_h or MAE presets (default: vit_l on GPU, mae_vit_smoke on CPU)")
    p.add_argument("--batch-sizes", default=None, help="comma list (default: 256 for B/L, 128 for H, 8 for small)")
    p.add_argument("--dtypes", default="auto", help="comma list of bf16, fp16, fp32 (autocast dtype; auto: bf16 on GPU)")
    p.add_argument("--variants", default=None,
                   help=f"comma list (GPU default: {','.join(GPU_VARIANTS)}; CPU default: {','.join(CPU_VARIANTS)})")
    p.add_argument("--inputs", default="synthetic", help=f"comma list of {', '.join(INPUTS)}")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first, compile included (GPU 15, CPU 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat (GPU 30, CPU 3)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--override", action="append", type=_parse_override, default=[],
                   help="model config KEY=VALUE (e.g. decoder_depth=1, encoder_mask_token=true); repeatable")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (GPU: inductor; CPU: aot_eager, "
                   "which checks the code path in seconds but is not a speed feature)")
    p.add_argument("--jpeg-dir", default=None, help="class folders of JPEGs for the jpeg_* inputs")
    p.add_argument("--jpeg-generate", type=int, default=0, help="generate this many JPEGs (see bench/jpeg_folder.py)")
    p.add_argument("--jpeg-cache", default="outputs/bench_jpeg", help="where --jpeg-generate writes (reused)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers of the jpeg inputs (default: CPUs)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: datasheet by device name)")
    p.add_argument("--scale", default=None, help="scale column (default: paper for ViT-B/L/H, smoke otherwise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="CSV path (default: results/bench_pretrain_throughput_<scale>_<device>.csv)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_same_checkout()
    from reproduce.report import provenance

    dev = resolve_device(args.device)
    gpu = dev.type == "cuda"
    models = [MODEL_ALIASES.get(m, m) for m in _parse_list(args.models or ("vit_l" if gpu else "mae_vit_smoke"))]
    for m in models:
        if m not in PRESETS:
            raise SystemExit(f"unknown model {m!r}; use vit_b, vit_l, vit_h or one of {sorted(PRESETS)}")
    variants = [parse_variant(v, args.compile_backend or ("inductor" if gpu else "aot_eager"))
                for v in _parse_list(args.variants or ",".join(GPU_VARIANTS if gpu else CPU_VARIANTS))]
    inputs = _parse_list(args.inputs)
    bad = [i for i in inputs if i not in INPUTS]
    if bad:
        raise SystemExit(f"unknown input(s) {bad}; choose from {INPUTS}")
    dtypes = [resolve_dtype(d, dev) for d in _parse_list(args.dtypes)]
    jpeg_dir = args.jpeg_dir
    workers = args.workers if args.workers is not None else min(16, os.cpu_count() or 1)
    if any(i != "synthetic" for i in inputs) and not jpeg_dir:
        if not args.jpeg_generate:
            raise SystemExit("jpeg inputs need --jpeg-dir DIR or --jpeg-generate N")
        from bench.jpeg_folder import make_jpeg_folder
        t0 = time.perf_counter()
        jpeg_dir = str(make_jpeg_folder(args.jpeg_cache, args.jpeg_generate, workers=workers))
        print(f"[bench] JPEG folder {jpeg_dir}: {args.jpeg_generate} images ({time.perf_counter() - t0:.0f} s)")
    warmup = args.warmup if args.warmup is not None else (15 if gpu else 2)
    steps = args.steps if args.steps is not None else (30 if gpu else 3)
    overrides = dict(args.override)
    dev_name = _device_name(dev)
    prov = provenance(command=" ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
                      device=dev_name)
    prov["cuda"] = torch.version.cuda or ""
    rows: list[dict[str, Any]] = []
    failed = False
    for model in models:
        batches = ([int(b) for b in _parse_list(args.batch_sizes)] if args.batch_sizes
                   else [DEFAULT_BATCH.get(model, 8)])
        scale = args.scale or ("paper" if model in FULL_SIZE else "smoke")
        for bs in batches:
            for dt in dtypes:
                for inp in inputs:
                    for var in variants:
                        label = f"{model} bs={bs} {dt} {inp} {var.name}"
                        print(f"[bench] {label} ...", flush=True)
                        try:
                            r = measure_step(model, bs, variant=var, overrides=overrides, device=dev, dtype=dt,
                                             mask_ratio=args.mask_ratio, warmup=warmup, steps=steps,
                                             repeats=args.repeats, input=inp, jpeg_dir=jpeg_dir, workers=workers,
                                             seed=args.seed, compile_backend=args.compile_backend,
                                             peak=args.peak_tflops)
                        except Exception as exc:  # noqa: BLE001 - one broken variant must not lose the others
                            traceback.print_exc()
                            failed = True
                            r = StepResult(model=model, batch_size=bs, dtype=dt, input=inp, variant=var.name,
                                           features=var.features(), status=f"error: {type(exc).__name__}: {exc}"[:300],
                                           overrides=" ".join(f"{k}={v}" for k, v in sorted(overrides.items())))
                        row = {"scale": scale, **r.row(), **prov}
                        rows.append(row)
                        print(f"[bench]   {r.status}: {_short(r.img_per_s)} img/s, {_short(r.step_ms)} ms/step, "
                              f"peak {_short(r.peak_mem_gib)} GiB, warm-up {_short(r.warmup_s)} s", flush=True)
    derived_columns(rows, dev_name)
    scales = sorted({r["scale"] for r in rows})
    out = args.out or str(REPO / "results" / f"bench_pretrain_throughput_{'_'.join(scales)}_{_slug(dev_name)}.csv")
    path = write_csv(rows, out)
    print(format_table(rows))
    print(f"[bench] wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    from mae.cli import guarded
    code, result = guarded("pretrain_throughput", main)
    raise SystemExit(code or result)
