"""The pre-training throughput benchmark (bench/): FLOP formulas against torch's counter, variant
grammar, derived columns by hand, the CPU run end to end (CSV + provenance, no made-up GPU numbers),
and the generated JPEG folder."""
import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import pretrain_throughput as bench
from bench.flops import peak_tflops
from bench.jpeg_folder import make_jpeg_folder
from mae.flops import step_flops
from mae.models import create_mae

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _counted(model, mask_ratio):
    """(forward, forward + backward) FLOPs by torch's counter; attention as explicit matmuls so it counts."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False  # the CPU flash kernel is not counted; the math is the same
    x = torch.randn(2, 3, model.config.img_size, model.config.img_size)
    with FlopCounterMode(display=False) as fwd:
        model(x, mask_ratio)
    with FlopCounterMode(display=False) as both:
        model(x, mask_ratio)[0].backward()
    return fwd.get_total_flops() / 2, both.get_total_flops() / 2


@pytest.mark.parametrize("overrides,ratio", [({}, 0.75), ({"encoder_mask_token": True}, 0.75),
                                             ({"decoder_depth": 3, "decoder_embed_dim": 48}, 0.6),
                                             ({"target": "pca", "pca_components": 24}, 0.75)])
def test_step_flops_match_torchs_flop_counter(overrides, ratio):
    torch.manual_seed(0)
    model = create_mae("mae_vit_smoke", **overrides)
    fwd, train = _counted(model, ratio)
    f = step_flops(model.config, ratio)
    assert f.forward == fwd and f.train == train


def test_step_flops_of_vit_large_by_hand():
    """ViT-L/16, 224 px, 75% masked: 50 encoder tokens, 197 decoder tokens (hand arithmetic)."""
    from mae.models import mae_config
    f = step_flops(mae_config("mae_vit_large_patch16"))
    d, dd = 1024, 512
    enc = 24 * (2 * 50 * 12 * d * d + 4 * 50 * 50 * d)
    dec = 2 * 50 * d * dd + 8 * (2 * 197 * 12 * dd * dd + 4 * 197 * 197 * dd) + 2 * 197 * dd * 768
    assert f.encoder == enc and f.decoder == dec and f.patch_embed == 2 * 196 * 768 * d
    assert f.train / 1e9 == pytest.approx(3 * (enc + dec) / 1e9 + 2 * 2 * 196 * 768 * d / 1e9)
    from mae.models.mae import MAEConfig
    with pytest.raises(ValueError, match="token"):
        step_flops(MAEConfig(target="token"))


def test_peak_table_by_device_name():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("NVIDIA H200", "tf32") == 494.7
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "fp16") == 312.0
    assert peak_tflops("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 on V100
    assert peak_tflops("cpu", "fp32") is None


def test_variant_grammar():
    base = bench.parse_variant("baseline")
    assert not base.fast.enabled and base.host_sync and base.fast.force
    fast = bench.parse_variant("fast")
    assert fast.fast.compile and fast.fast.fused_adamw and fast.host_sync
    v = bench.parse_variant("fast-compile-host_sync")
    assert not v.fast.compile and v.fast.fused_adamw and not v.host_sync
    v = bench.parse_variant("baseline+cuda_graphs")
    assert v.fast.cuda_graphs and v.fast.compile  # graphs bring compile
    v = bench.parse_variant("fast+max_autotune", compile_backend="aot_eager")
    assert v.fast.compile_mode == "max-autotune-no-cudagraphs" and v.fast.compile_backend == "aot_eager"
    assert "compile=0" in bench.parse_variant("fast-compile").features()
    with pytest.raises(ValueError, match="unknown feature 'flash'"):
        bench.parse_variant("fast+flash")
    with pytest.raises(ValueError, match="must start with"):
        bench.parse_variant("turbo")


def test_derived_columns_by_hand():
    def row(variant, img_s, inp="synthetic", model="mae_vit_large_patch16", status="ok"):
        return {"model": model, "batch_size": 256, "dtype": "bf16", "overrides": "", "input": inp,
                "variant": variant, "img_per_s": img_s, "status": status}
    rows = [row("baseline", 2000.0), row("fast", 3000.0), row("fast", 2850.0, "jpeg_gpu"),
            row("baseline", 1000.0, "jpeg_gpu"), row("input_only", 6000.0, "jpeg_gpu"),
            row("fast-compile", math.nan, status="oom")]
    bench.derived_columns(rows, "NVIDIA H100 80GB HBM3")
    assert rows[0]["speedup_vs_baseline"] == 1.0 and rows[1]["speedup_vs_baseline"] == 1.5
    assert rows[2]["speedup_vs_baseline"] == 2.85  # against the baseline on the same input
    assert rows[2]["input_efficiency"] == 0.95 and math.isnan(rows[1]["input_efficiency"])
    assert rows[4]["input_efficiency"] == 2.0  # the loader alone vs the fast step on synthetic input
    assert math.isnan(rows[4]["speedup_vs_baseline"]) and math.isnan(rows[5]["speedup_vs_baseline"])
    assert rows[1]["vs_issue_official"] == pytest.approx(3000 / 1870)
    other = [row("fast", 3000.0)]
    bench.derived_columns(other, "NVIDIA A100-SXM4-80GB")  # the rates are H100 rates
    assert math.isnan(other[0]["vs_issue_official"])


def test_measure_step_on_cpu_same_loss_for_every_variant():
    kw = dict(device="cpu", warmup=1, steps=2, repeats=1)
    base = bench.measure_step("mae_vit_smoke", 4, variant="baseline", **kw)
    fast = bench.measure_step("mae_vit_smoke", 4, variant="fast", **kw)
    for r in (base, fast):
        assert r.status == "ok" and r.img_per_s > 0 and r.step_ms > 0 and r.dtype == "fp32"
        assert math.isnan(r.mfu) and math.isnan(r.peak_mem_gib)  # no peak for a CPU, no CUDA memory
    assert fast.compile_backend == "aot_eager" and base.compile_backend == ""
    assert fast.loss_step0 == pytest.approx(base.loss_step0, rel=1e-6)  # same init, data and masks
    from mae.models import mae_config
    assert base.train_gflops_per_img == step_flops(mae_config("mae_vit_smoke")).train / 1e9


def test_no_numbers_without_the_hardware():
    r = bench.measure_step("mae_vit_smoke", 4, variant="fast+cuda_graphs", device="cpu", warmup=0, steps=1, repeats=1)
    assert r.status.startswith("skipped") and math.isnan(r.img_per_s) and math.isnan(r.step_ms)
    r = bench.measure_step("mae_vit_smoke", 4, variant="input_only", device="cpu", warmup=0, steps=1, repeats=1)
    assert r.status.startswith("skipped") and math.isnan(r.img_per_s)
    with pytest.raises(ValueError, match="jpeg-dir"):
        bench.measure_step("mae_vit_smoke", 4, input="jpeg_gpu", device="cpu", warmup=0, steps=1, repeats=1)
    with pytest.raises(ValueError, match="dtype"):
        bench.measure_step("mae_vit_smoke", 4, dtype="int8", device="cpu")


def test_cli_on_cpu_writes_a_csv_with_provenance(tmp_path):
    out = tmp_path / "bench.csv"
    code = bench.main(["--device", "cpu", "--model", "mae_vit_smoke", "--batch-sizes", "4", "--warmup", "1",
                       "--steps", "2", "--repeats", "1", "--variants", "baseline,fast,fast+cuda_graphs",
                       "--override", "decoder_depth=2", "--out", str(out)])
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["variant"] for r in rows] == ["baseline", "fast", "fast+cuda_graphs"]
    assert list(rows[0]) == list(bench.COLUMNS)
    for r in rows:
        assert r["scale"] == "smoke" and r["device"] == "cpu" and r["model"] == "mae_vit_smoke"
        assert r["commit"] and r["date"] and r["torch"] == torch.__version__ and "--device cpu" in r["command"]
        assert r["overrides"] == "decoder_depth=2" and r["mfu"] == "" and r["vs_issue_official"] == ""
    assert float(rows[0]["speedup_vs_baseline"]) == 1.0 and float(rows[1]["img_per_s"]) > 0
    assert rows[2]["status"].startswith("skipped") and rows[2]["img_per_s"] == ""


def test_cli_jpeg_inputs_on_cpu(tmp_path):
    out = tmp_path / "bench.csv"
    code = bench.main(["--device", "cpu", "--model", "mae_vit_smoke", "--batch-sizes", "4", "--warmup", "1",
                       "--steps", "2", "--repeats", "1", "--variants", "baseline,input_only",
                       "--inputs", ",".join(bench.INPUTS), "--jpeg-generate", "12",
                       "--jpeg-cache", str(tmp_path / "jpegs"), "--workers", "0", "--out", str(out)])
    assert code == 0
    rows = {(r["input"], r["variant"]): r for r in csv.DictReader(out.open())}
    for inp in ("jpeg_gpu", "jpeg_worker", "jpeg_cpu_u8", "jpeg_cpu"):
        assert rows[(inp, "baseline")]["status"] == "ok" and float(rows[(inp, "baseline")]["input_efficiency"]) > 0
        assert float(rows[(inp, "input_only")]["img_per_s"]) > 0
    assert rows[("synthetic", "input_only")]["status"].startswith("skipped")


def test_cli_rejects_unknown_models_and_inputs(tmp_path):
    with pytest.raises(SystemExit, match="unknown model"):
        bench.main(["--device", "cpu", "--model", "vit_giant", "--out", str(tmp_path / "x.csv")])
    with pytest.raises(SystemExit, match="unknown input"):
        bench.main(["--device", "cpu", "--inputs", "webdataset", "--out", str(tmp_path / "x.csv")])
    with pytest.raises(SystemExit, match="jpeg-dir"):
        bench.main(["--device", "cpu", "--inputs", "jpeg_cpu", "--out", str(tmp_path / "x.csv")])


def test_generated_jpeg_folder(tmp_path):
    root = make_jpeg_folder(tmp_path / "a", 6, num_classes=3, seed=1)
    files = sorted(root.rglob("*.JPEG"))
    assert len(files) == 6 and len({f.parent for f in files}) == 3
    assert files[0].read_bytes()[:3] == b"\xff\xd8\xff"
    again = make_jpeg_folder(tmp_path / "b", 6, num_classes=3, seed=1)
    assert [f.read_bytes() for f in sorted(again.rglob("*.JPEG"))] == [f.read_bytes() for f in files]
    mtime = files[0].stat().st_mtime_ns
    make_jpeg_folder(root, 6, num_classes=3, seed=1)  # complete: reused, not rewritten
    assert files[0].stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="not empty"):
        make_jpeg_folder(root, 7, num_classes=3, seed=1)
    with pytest.raises(ValueError, match="num_images"):
        make_jpeg_folder(tmp_path / "c", 0)


def test_input_cost_per_worker_on_cpu(tmp_path):
    """bench/input_cost.py: one row per input path, with provenance; workers_for_R = R x seconds per image."""
    from bench import input_cost
    out = tmp_path / "cost.csv"
    code = input_cost.main(["--jpeg-generate", "6", "--jpeg-cache", str(tmp_path / "jpegs"), "--img-size", "32",
                            "--images", "4", "--repeats", "1", "--out", str(out)])
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == list(input_cost.PATHS) and list(rows[0]) == list(input_cost.COLUMNS)
    for r in rows:
        ms = float(r["ms_per_img"])
        assert ms > 0 and r["scale"] == "cpu_loader" and r["device"] == "cpu" and r["commit"] and r["date"]
        assert float(r["workers_for_1870"]) == pytest.approx(1870 * ms / 1e3, rel=1e-3)
        assert float(r["img_per_s_per_worker"]) == pytest.approx(1e3 / ms, rel=1e-3)
    with pytest.raises(ValueError, match="unknown input path"):
        input_cost.main(["--jpeg-dir", str(tmp_path / "jpegs"), "--paths", "dali"])
    with pytest.raises(FileNotFoundError, match="no such directory"):
        input_cost.main(["--jpeg-dir", str(tmp_path / "nope")])


def test_profile_cell_times_every_phase_of_a_smoke_step():
    from bench import profile_cell
    ms = profile_cell.main(["--scale", "smoke", "--steps", "2", "--warmup", "1"])
    assert set(ms) == set(profile_cell.PHASES) and all(v > 0 for v in ms.values())


def test_cpu_threads_bench_at_toy_size(tmp_path):
    """bench/cpu_threads.py: alone and shared rows per setting, the runs' own thread record, provenance."""
    from bench import cpu_threads
    out = tmp_path / "threads.csv"
    cpu_threads.main(["--preset", "smoke", "--epochs", "2", "--settings", "mae,threads1", "--timeout", "900",
                      "--extra", "--data synthetic:32", "--out", str(out)])  # a loaded machine is no collapse
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == list(cpu_threads.COLUMNS)
    assert [(r["setting"], r["mode"]) for r in rows] == [("mae", "alone"), ("mae", "shared"), ("mae", "shared"),
                                                        ("threads1", "alone"), ("threads1", "shared"),
                                                        ("threads1", "shared")]
    for r in rows:
        assert float(r["img_per_s"]) > 0 and r["cpu"] and r["torch"] and r["commit"] and r["date"]
        assert int(r["thread_changes"]) >= 0 and r["threads_end"]
    one = [r for r in rows if r["setting"] == "threads1"]  # a fixed count: the short spin, no governor
    assert {(r["threads"], r["threads_policy"], r["omp_wait_policy"], r["thread_changes"]) for r in one} == {
        ("1", "fixed", "GOMP_SPINCOUNT=1000", "0")}
    if len(os.sched_getaffinity(0)) > 1:  # the adaptive count keeps torch's spin
        assert {(r["threads_policy"], r["omp_wait_policy"]) for r in rows if r["setting"] == "mae"} == {
            ("adaptive", "OpenMP default (libgomp: spin 300000)")}
    assert cpu_threads.setting_env("torch_default") == {"MAE_OMP_POLICY": "off"}
    assert cpu_threads.setting_env("spin1000") == {"GOMP_SPINCOUNT": "1000", "MAE_THREAD_GOVERNOR": "off"}
    with pytest.raises(ValueError, match="unknown setting"):
        cpu_threads.setting_env("fastest")


def test_cpu_threads_background_is_other_work_that_says_what_it_got():
    """--background: a process busy a share of one core beside the runs; the rows say what it got."""
    import time as _t
    from bench import cpu_threads
    with cpu_threads.background_load(0.0) as none:
        pass
    assert none == {"background": "", "background_cores": ""}
    with cpu_threads.background_load(0.5) as got:
        _t.sleep(1.5)
    assert 0.05 < got["background_cores"] <= 1.0 and got["background"] == 0.5
    for bad in ("1.5", "-0.1", "x"):
        with pytest.raises(SystemExit, match="--background"):
            cpu_threads.main(["--background", bad, "--out", "unused.csv"])
    rows = [{"setting": s, "mode": "alone", "img_per_s": v, "vs_torch_default_alone": v / 100, "vs_alone": 1,
             "background": b, "background_cores": b} for s, v, b in
            [("torch_default", 100.0, ""), ("mae", 99.0, ""), ("torch_default", 80.0, 0.3), ("mae", 90.0, 0.3)]]
    lines = cpu_threads.summary(rows)
    assert len(lines) == 4 and lines[0].startswith("torch_default") and lines[3].startswith("beside 0.3 core (got 0.30): mae")
    rows = [{**r, "background_cores": ""} for r in rows]  # the other work said nothing: its level still shows
    assert cpu_threads.summary(rows)[3].startswith("beside 0.3 core: mae")


def _children_of(pid: int) -> set[int]:
    kids = set()
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.add(int(d.name))
        except (OSError, IndexError, ValueError):
            pass
    return kids


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux's /proc")
def test_cpu_threads_stopped_leaves_no_run_or_other_work_behind(tmp_path):
    """A bench stopped by SIGTERM ends its training runs and its --background process with it."""
    import signal
    import time as _t
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "cpu_threads.py"), "--preset", "smoke",
                              "--epochs", "50", "--settings", "threads1", "--no-shared", "--background", "0.2",
                              "--timeout", "900", "--extra", "--data synthetic:32", "--out", str(tmp_path / "t.csv")],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, kids = _t.monotonic() + 120, set()
    while len(kids) < 2 and _t.monotonic() < deadline:  # the other work and the training run
        _t.sleep(0.2)
        kids = _children_of(proc.pid)
    assert len(kids) >= 2, "the bench never started its run and its other work"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    deadline = _t.monotonic() + 10
    while any(_alive(k) for k in kids) and _t.monotonic() < deadline:
        _t.sleep(0.1)
    assert not [k for k in kids if _alive(k)]


def test_cpu_threads_keeps_other_cpus_rows_and_names_the_isa(tmp_path, monkeypatch):
    """results/bench_cpu_threads.csv holds one bench per CPU kind: a run replaces its own CPU's rows only."""
    from bench import cpu_threads
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: X\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert cpu_threads.cpu_isa(info) == "avx2 avx512 avx512_bf16 amx"
    assert cpu_threads.cpu_isa(tmp_path / "none") == ""
    prov = {"cpu": "Intel X", "cpu_isa": "avx2 amx", "commit": "c"}
    monkeypatch.setattr(cpu_threads, "provenance", lambda argv: dict(prov))
    out = tmp_path / "t.csv"
    cpu_threads.write_csv([{"setting": "mae", "cpu": "AMD EPYC", "img_per_s": 1.0},
                           {"setting": "old", "cpu": "Intel X", "img_per_s": 2.0},
                           {"setting": "other_isa", "cpu": "Intel X", "cpu_isa": "avx2", "img_per_s": 3.0}],
                          out, cpu_threads.COLUMNS)
    cpu_threads.write_bench([{"setting": "new", "img_per_s": 4.0}], out, cpu_threads.COLUMNS, "b.py", [])
    rows = list(csv.DictReader(out.open()))
    assert [(r["setting"], r["cpu"], r["cpu_isa"]) for r in rows] == [
        ("mae", "AMD EPYC", ""), ("other_isa", "Intel X", "avx2"), ("new", "Intel X", "avx2 amx")]


def test_cpu_threads_rates_epochs_and_counts_thread_changes(tmp_path):
    """rate_of: the governor's records in log.txt are counted, not rated; epoch 1 (the warm-up) is left out."""
    import json
    from bench import cpu_threads
    lines = [{"epoch": 0, "iteration": 3, "event": "threads", "threads": 1, "threads_before": 2},
             {"epoch": 0, "imgs_per_s": 10.0, "runtime": {"threads": 2, "threads_policy": "adaptive",
                                                          "omp_wait_policy": "w"}},
             {"epoch": 1, "imgs_per_s": 30.0}, {"epoch": 2, "imgs_per_s": 50.0}]
    (tmp_path / "log.txt").write_text("".join(json.dumps(r) + "\n" for r in lines))
    got = cpu_threads.rate_of(tmp_path, 1.0)
    assert got == {"img_per_s": 40.0, "epochs_rated": 2, "threads": 2, "threads_policy": "adaptive",
                   "thread_changes": 1, "threads_end": 1, "omp_wait_policy": "w"}


def test_cpu_threads_rounds_rotate_and_summarise(monkeypatch):
    """--repeats: every round runs every setting, each round starts one later; vs torch's default alone is
    over its median across rounds; shared runs compare with their own round's alone run."""
    from bench import cpu_threads
    assert [cpu_threads.rotated(["a", "b", "c"], r) for r in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    rate = {("torch_default", 1): [100.0, 300.0], ("mae", 1): [90.0, 80.0], ("mae", 2): [40.0, 30.0],
            ("torch_default", 2): [20.0, 10.0]}
    calls: list[tuple[str, int]] = []

    def fake(n, env, *a, **k):
        name = "torch_default" if env else "mae"
        calls.append((name, n))
        x = rate[(name, n)].pop(0)
        return [{"run": i, "img_per_s": x, "timed_out": False, "threads": 2, "omp_wait_policy": ""} for i in range(n)]
    monkeypatch.setattr(cpu_threads, "run_together", fake)
    rows = cpu_threads.measure(["torch_default", "mae"], shared=True, repeats=2)
    assert [c for c in calls if c[1] == 1] == [("torch_default", 1), ("mae", 1), ("mae", 1), ("torch_default", 1)]
    assert [r["repeat"] for r in rows if r["mode"] == "alone"] == [0, 0, 1, 1]
    base = 200.0  # median of torch's default alone over the rounds (100, 300)
    assert [r["vs_torch_default_alone"] for r in rows if r["setting"] == "mae" and r["mode"] == "alone"] == [90 / base, 80 / base]
    assert {r["vs_alone"] for r in rows if r["setting"] == "mae" and r["mode"] == "shared" and r["repeat"] == 1} == {30 / 80}
    lines = cpu_threads.summary(rows)
    assert lines[0].startswith("torch_default  alone  median   200.0 img/s [100, 300], 100%")


def test_cpu_input_bench_at_toy_size(tmp_path):
    """bench/cpu_input.py: the synthetic step and each input path end to end, vs_step = their ratio."""
    from bench import cpu_input
    out = tmp_path / "input.csv"
    cpu_input.main(["--preset", "smoke", "--epochs", "2", "--threads", "1", "--warmup", "1", "--repeats", "1",
                    "--extra", "--data synthetic:32", "--out", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == list(cpu_input.COLUMNS)
    assert [r["input"] for r in rows] == ["synthetic", "pil", "batched"] and {r["threads"] for r in rows} == {"1"}
    step = float(rows[0]["img_per_s"])
    for r in rows:
        assert float(r["img_per_s"]) > 0 and r["commit"] and r["cpu"]
        assert float(r["vs_step"]) == pytest.approx(float(r["img_per_s"]) / step, rel=1e-3)
