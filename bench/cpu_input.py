"""The demo pre-training's step with synthetic input vs end to end, per input path and thread count.

    python bench/cpu_input.py                          # -> results/bench_cpu_input.csv (a few minutes on 2 cores)
    python bench/cpu_input.py --threads 1 --paths pil,batched --epochs 5

For each thread count (``OMP_NUM_THREADS``, in a fresh process each):

- ``synthetic``: the training step alone on a batch made once (uint8 -> normalise, forward with random
  masking, backward, AdamW step, ``loss.item()`` as the training loop's NaN guard does): the model,
  param groups and optimiser of ``mae pretrain`` for the preset. Rate = batch x steps / time, the median
  of ``--repeats`` runs of one epoch's worth of steps (after warm-up). Measured before and after the
  end-to-end runs of the thread count (a loaded machine drifts): the row holds their mean,
  ``step_before`` / ``step_after`` each.
- ``pil`` / ``batched``: ``mae pretrain --preset demo --epochs E --input_path X`` (monitor, figures,
  TensorBoard off; run through ``mae.cli.main`` in a fresh process that also reads the process's CPU
  time around each training epoch), the median ``imgs_per_s`` of epochs 2..E in log.txt: everything a
  training epoch does (data, step, logging).

``vs_step``: an end-to-end rate over the synthetic step rate at the same threads (the issue's target:
>= 0.9). ``img_per_cpu_s`` / ``cpu_vs_step``: the same per second of the process's CPU time, which
another job on the machine inflates much less than the wall clock (with one thread: the work per image;
with more, OpenMP's waiting counts too). Provenance columns as in bench/cpu_threads.py.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.cpu_threads import REPO, demo_command, rate_of, run_env, write_bench
from mae.provenance import require_same_checkout

PATHS = ("pil", "batched")
COLUMNS = ("input", "threads", "img_per_s", "vs_step", "img_per_cpu_s", "cpu_vs_step", "step_ms", "step_before",
           "step_after", "epochs_rated", "omp_wait_policy", "preset", "epochs", "batch_size", "extra", "load_before",
           "scale", "cpu", "cores", "torch", "python", "commit", "date", "command")


def step_rate(preset: str, extra: Sequence[str], warmup: int, repeats: int) -> dict[str, Any]:
    """Synthetic-input step rate in this process (its thread settings): see the module doc."""
    from mae.cli import build_config  # (mae before torch: its OpenMP wait policy applies)
    from mae.data import NormalizeBatch, build_dataset
    from mae.engine.loop import seed_everything
    from mae.engine.optim import adamw, param_groups_weight_decay, scaled_lr
    from mae.engine.threads import apply_thread_policy
    from mae.protocols import pretrain

    import torch

    runtime = apply_thread_policy(None)
    cfg = build_config(pretrain, ["--preset", preset, *extra], prog="cpu_input")
    seed_everything(cfg.seed)
    model = pretrain.build_model(cfg)
    model.train()
    groups = param_groups_weight_decay(model, cfg.weight_decay, skip_model_tokens=not cfg.decay_tokens)
    opt = adamw(groups, scaled_lr(cfg.blr, cfg.batch_size), cfg.betas, fused=False)
    imgs_u8 = torch.randint(0, 256, (cfg.batch_size, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8)
    normalize = NormalizeBatch()
    n_train = len(build_dataset(cfg.data, split="train", img_size=cfg.img_size, seed=cfg.seed))
    steps = max(1, n_train // cfg.batch_size)  # one epoch's worth

    def step() -> None:
        loss, _, _ = model(normalize.images(imgs_u8), mask_ratio=cfg.mask_ratio)
        float(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    rates, cpu_rates = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        rates.append(steps * cfg.batch_size / (time.perf_counter() - t0))
        cpu_rates.append(steps * cfg.batch_size / (time.process_time() - c0))
    rate = statistics.median(rates)
    return {"img_per_s": rate, "img_per_cpu_s": statistics.median(cpu_rates), "step_ms": 1e3 * cfg.batch_size / rate,
            "epochs_rated": repeats,
            "batch_size": cfg.batch_size, "threads": runtime["threads"], "omp_wait_policy": runtime["omp_wait_policy"]}


def step_rate_subprocess(threads: int, preset: str, extra: Sequence[str], warmup: int, repeats: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_step", "--preset", preset, "--warmup", str(warmup),
           "--repeats", str(repeats), "--extra", shlex.join(extra)]
    proc = subprocess.run(cmd, env=run_env({"OMP_NUM_THREADS": str(threads)}), capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def end_to_end(out_json: str, argv: Sequence[str]) -> None:
    """``mae pretrain argv`` in this process, appending each training epoch's (images, wall s, CPU s) to out_json."""
    from mae.cli import main  # (mae before torch)
    from mae.engine import loop

    inner = loop.Trainer._train_epoch

    def timed(self: Any) -> None:
        start, w0, c0 = self.iter_in_epoch, time.perf_counter(), time.process_time()
        inner(self)
        rec = {"images": (self.iter_in_epoch - start) * self.cfg.batch_size, "wall_s": time.perf_counter() - w0,
               "cpu_s": time.process_time() - c0}
        with open(out_json, "a") as f:
            f.write(json.dumps(rec) + "\n")

    loop.Trainer._train_epoch = timed
    code = main(list(argv))
    if code:
        raise SystemExit(code)


def end_to_end_subprocess(threads: int, path: str, preset: str, epochs: int, extra: Sequence[str]) -> dict[str, Any]:
    import tempfile
    with tempfile.TemporaryDirectory(prefix="bench_cpu_input_") as tmp:
        run_dir, times = Path(tmp) / "run", Path(tmp) / "epochs.jsonl"
        argv = demo_command(run_dir, preset, epochs, ["--input_path", path, *extra])[3:]  # after "python -m mae"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_e2e", str(times), "--", *argv]
        t0 = time.time()
        proc = subprocess.run(cmd, env=run_env({"OMP_NUM_THREADS": str(threads)}), capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        r = rate_of(run_dir, time.time() - t0)
        epochs_t = [json.loads(line) for line in times.read_text().splitlines()][1:]
        r["img_per_cpu_s"] = statistics.median(e["images"] / e["cpu_s"] for e in epochs_t) if epochs_t else ""
        return r


def measure(threads: Sequence[int], paths: Sequence[str], preset: str = "demo", epochs: int = 5,
            extra: Sequence[str] = (), warmup: int = 5, repeats: int = 3) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for t in threads:
        load = os.getloadavg()[0]
        step = step_rate_subprocess(t, preset, extra, warmup, repeats)
        step.update(input="synthetic", load_before=round(load, 2), vs_step=1.0, step_before=step["img_per_s"])
        rows.append(step)
        print(f"[bench] {t} thread(s) synthetic step: {step['img_per_s']:7.1f} img/s (load before {load:.2f})",
              flush=True)
        ends = []
        for path in paths:
            load = os.getloadavg()[0]
            r = end_to_end_subprocess(t, path, preset, epochs, extra)
            r.update(input=path, load_before=round(load, 2), step_ms=1e3 * step["batch_size"] / r["img_per_s"],
                     batch_size=step["batch_size"])
            r["threads"] = r["threads"] or t
            rows.append(r)
            ends.append(r)
        after = step_rate_subprocess(t, preset, extra, warmup, repeats) if paths else dict(step)
        step["step_after"] = after["img_per_s"]
        step["img_per_s"] = (step["step_before"] + after["img_per_s"]) / 2
        step["img_per_cpu_s"] = (step["img_per_cpu_s"] + after["img_per_cpu_s"]) / 2
        step["cpu_vs_step"] = 1.0
        step["step_ms"] = 1e3 * step["batch_size"] / step["img_per_s"]
        print(f"[bench] {t} thread(s) synthetic step after: {after['img_per_s']:7.1f} img/s; mean "
              f"{step['img_per_s']:7.1f} img/s, {step['img_per_cpu_s']:7.1f} img per CPU s", flush=True)
        for r in ends:
            r["vs_step"] = r["img_per_s"] / step["img_per_s"]
            r["cpu_vs_step"] = r["img_per_cpu_s"] / step["img_per_cpu_s"] if r["img_per_cpu_s"] else ""
            print(f"[bench] {t} thread(s) {r['input']:9s} end to end: {r['img_per_s']:7.1f} img/s = {r['vs_step']:.2f} "
                  f"x step; per CPU s {r['img_per_cpu_s']:7.1f} = {r['cpu_vs_step']:.2f} x step "
                  f"(load before {r['load_before']:.2f})", flush=True)
    for r in rows:
        r.update(preset=preset, epochs=epochs if r["input"] != "synthetic" else "", extra=shlex.join(extra))
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--threads", default="1,2", help="comma list of OMP_NUM_THREADS values")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma list of {', '.join(PATHS)}")
    p.add_argument("--preset", default="demo")
    p.add_argument("--epochs", type=int, default=5, help="epochs per end-to-end run (rated: 2..E)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps of the synthetic step")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs' worth of synthetic steps (median)")
    p.add_argument("--extra", default="", help="more mae pretrain flags, e.g. '--data synthetic:64'")
    p.add_argument("--out", default=str(REPO / "results" / "bench_cpu_input.csv"))
    p.add_argument("--_step", action="store_true", help=argparse.SUPPRESS)  # internal: one step measurement
    p.add_argument("--_e2e", default=None, help=argparse.SUPPRESS)  # internal: one end-to-end run
    p.add_argument("mae_argv", nargs="*", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    require_same_checkout()
    extra = shlex.split(args.extra)
    if args._e2e:
        end_to_end(args._e2e, args.mae_argv)
        return []
    if args._step:
        print(json.dumps(step_rate(args.preset, extra, args.warmup, args.repeats)))
        return []
    if args.epochs < 2:
        raise SystemExit("--epochs must be >= 2 (epoch 1 is the warm-up)")
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    bad = [p for p in paths if p not in PATHS]
    if bad:
        raise SystemExit(f"unknown input path(s) {bad}; choose from {PATHS}")
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    rows = measure(threads, paths, args.preset, args.epochs, extra, args.warmup, args.repeats)
    write_bench(rows, args.out, COLUMNS, "bench/cpu_input.py", argv)
    return rows


if __name__ == "__main__":
    main()
