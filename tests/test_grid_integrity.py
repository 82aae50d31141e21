"""The grid and the ``mae`` command line share one truth about a run folder (issue: integrity II).

Each test replays one way a user could make the grid print a wrong label: a stage changed through the
command line and then reused, two processes in one folder, a --rerun-changed race, a resume under other
code, controls that ignore --set, --only dropping seeds, a refreshed verdict under the old collector's
commit, a zero-width interval from two seeds, a --set value that is silently ignored or mistyped."""
from __future__ import annotations

import argparse
import json
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest
from _stubs import register_protocol

from mae import cli, provenance
from mae.engine import rundir
from reproduce import grid
from reproduce.grid import Cell, GridError, Ref, Stage, run_grid


def quiet(*_a) -> None:
    pass


# --------------------------------------------------------------------------- stub protocol
@dataclass
class StubConfig:
    output_dir: str = "unset"
    resume: str | None = None
    finetune: str | None = None
    value: float = 1.0
    epochs: int = 1
    seed: int = 0


CALLS: list = []


def stub_run(cfg: StubConfig) -> dict:
    CALLS.append(cfg)
    d = Path(cfg.output_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "checkpoint-last.pth").write_text("weights")
    acc = cfg.value + 0.5 * cfg.seed + (0.25 if cfg.seed == 1 else 0.0)
    m = {"final": {"acc1": acc, "train_loss": 0.5}, "best": {"acc1": acc}, "history": [{"epoch_time_s": 0.1}],
         "finished": True, "provenance": {"commit": "abc1234", "dirty": False, "device": "cpu",
                                          "date": "2026-01-01T00:00:00+00:00", "command": "stub"}}
    (d / "metrics.json").write_text(json.dumps(m))
    return m


@pytest.fixture(autouse=True)
def stub_protocol(monkeypatch):
    register_protocol(monkeypatch, "integrity_stub", StubConfig, stub_run)
    CALLS.clear()
    yield


def smoke_pretrain(**over):
    from mae.protocols import pretrain
    return replace(pretrain.PRESETS["smoke"], data="synthetic:64", progress=False, tensorboard=False, num_workers=0,
                   **over)


def real_cell(value: float = 1.0, **pretrain_over) -> Cell:
    """A real smoke pre-training (what `mae pretrain` can resume) and a stub stage that reads it."""
    return Cell("a", {"x": 1}, [Stage("pretrain", "pretrain", smoke_pretrain(**pretrain_over)),
                                Stage("finetune", "integrity_stub", StubConfig(value=value),
                                      inputs={"finetune": Ref("pretrain")})])


def stub_cell(name: str = "a", value: float = 1.0, **key) -> Cell:
    return Cell(name, key or {"x": value}, [
        Stage("pretrain", "integrity_stub", StubConfig(value=value)),
        Stage("finetune", "integrity_stub", StubConfig(value=value + 10), inputs={"finetune": Ref("pretrain")})])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------ 1. a stage changed through the command line
def test_a_grid_stage_resumed_through_the_cli_with_another_recipe_is_never_reused(tmp_path, capsys):
    """Attack 1a: a killed grid stage, resumed by `mae pretrain --resume auto` with --blr added, then the
    grid rerun. The command line refuses the grid's folder (naming the grid's command and the flag); told
    --outside-grid it runs, and the grid then refuses the stage as changed instead of reusing it."""
    stage = tmp_path / "t_smoke" / "a" / "pretrain"
    killed = real_cell(epochs=2, max_iters=3)  # stops after 3 of 8 iterations (an operational field)
    run_grid([killed], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    assert grid.stage_status(stage) == "resume"
    before = snapshot(stage)
    capsys.readouterr()
    argv = ["pretrain", "--resume", "auto", "--output_dir", str(stage), "--blr", "0.015"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage of a reproduction grid" in err[0] and "--outside-grid" in err[0], err
    assert "grid's command (" in err[0]  # the command that made it
    assert snapshot(stage) == before
    assert cli.main([*argv, "--outside-grid"]) == 0
    assert json.loads((stage / "metrics.json").read_text())["finished"]
    with pytest.raises(GridError, match=r"a/pretrain: changed: blr: 0\.0015 -> 0\.015 on resume"):
        run_grid([real_cell(epochs=2)], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    g = run_grid([real_cell(epochs=2)], table="t", scale="smoke", work_dir=tmp_path, echo=quiet, collect_only=True)
    assert g.get("a", "pretrain").status == "stale" and g.get("a", "pretrain").metrics is None


def test_a_config_yaml_edited_by_hand_makes_a_finished_stage_changed(tmp_path):
    """The grid compares what the folder says it ran (config.yaml) with the identity before reuse."""
    run_grid([stub_cell()], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    cfg = tmp_path / "t_smoke" / "a" / "pretrain" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("value: 1.0", "value: 3.0"))
    status, diff = grid.check_identity((tmp_path / "t_smoke").resolve(), stub_cell(), stub_cell().stages[0])
    assert status == "changed" and diff == ["config.yaml value: 3.0 -> 1.0"]


def test_a_stage_overwritten_through_the_cli_is_moved_aside_and_not_reused(tmp_path, capsys):
    """Attack 1b: `mae pretrain --overwrite` into the baseline's pre-training folder. Refused without
    --outside-grid; with it the grid's run is moved aside (kept whole), and the grid's next run reuses
    neither the new pre-training nor the stage that read the old one."""
    run_grid([real_cell(epochs=1)], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    stage = tmp_path / "t_smoke" / "a" / "pretrain"
    old = snapshot(stage)
    argv = ["pretrain", "--preset", "smoke", "--epochs", "1", "--blr", "0.01", "--no-progress", "--num_workers", "0",
            "--overwrite", "--output_dir", str(stage)]
    capsys.readouterr()
    assert cli.main(argv) == 2 and "--outside-grid" in capsys.readouterr().err
    assert snapshot(stage) == old
    assert cli.main([*argv, "--outside-grid"]) == 0
    aside = list(stage.parent.glob("pretrain.replaced-*"))
    assert len(aside) == 1 and snapshot(aside[0]) == old  # nothing deleted
    assert not (stage / grid.IDENTITY_FILE).exists() and (stage / "metrics.json").is_file()
    with pytest.raises(GridError, match=r"a/pretrain: unknown.*a/finetune: changed: input finetune"):
        run_grid([real_cell(epochs=1)], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    g = run_grid([real_cell(epochs=1)], table="t", scale="smoke", work_dir=tmp_path, echo=quiet, collect_only=True)
    assert {r.status for r in g.stages.values()} == {"stale"}


# ------------------------------------------------------- 2. one lock for the grid and the CLI
def test_the_cli_is_refused_while_the_grid_runs_the_stage_and_the_grid_waits_for_the_cli(tmp_path, capsys):
    """Attack 2: `mae pretrain --resume auto` into a stage the grid is training is refused at once (the same
    lock), even with --outside-grid; a stage the command line is running is deferred by the grid."""
    killed = real_cell(epochs=2, max_iters=3)
    run_grid([killed], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    stage = tmp_path / "t_smoke" / "a" / "pretrain"
    before = snapshot(stage)
    with grid.stage_lock(stage, echo=quiet):  # what the grid holds while it runs the stage
        assert cli.main(["pretrain", "--resume", "auto", "--output_dir", str(stage), "--outside-grid"]) == 2
        assert "another process is running in" in capsys.readouterr().err
    assert snapshot(stage) == before
    with rundir.run_lock(stage):  # what `mae` holds while it runs there
        with pytest.raises(grid.launch.StageBusy):
            grid.execute_stage((tmp_path / "t_smoke").resolve(), killed, killed.stages[0], wait=False)


def test_a_lock_waited_for_follows_the_folder_not_a_run_moved_aside(tmp_path):
    """A process waiting on a folder that is moved aside meanwhile locks the folder now at that path."""
    d = tmp_path / "s"
    got: list = []
    holder = rundir.run_lock(d)
    holder.__enter__()

    def waiter() -> None:
        with rundir.run_lock(d, wait=True):
            got.append(d.stat().st_ino)

    t = threading.Thread(target=waiter)
    t.start()
    t.join(0.3)
    old_inode = d.stat().st_ino
    d.rename(tmp_path / "s.replaced")
    holder.__exit__(None, None, None)
    t.join(10)
    assert got and got[0] != old_inode and d.is_dir()


# ---------------------------------------------------------------- 3. --rerun-changed races
def test_rerun_changed_moves_nothing_while_a_stage_is_read_or_run_elsewhere(tmp_path):
    """Attack 3: process A fine-tunes from the pre-training (it holds that folder shared) while B, with a
    changed recipe and --rerun-changed, would move it aside: B refuses before moving anything, also when
    only the last of several changed stages is busy."""
    root = tmp_path / "t_smoke"
    cells = [stub_cell("a"), stub_cell("b")]
    run_grid(cells, table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    changed = [stub_cell("a", 2.0), stub_cell("b", 2.0)]
    with grid.stage_lock(root / "a" / "pretrain", echo=quiet, shared=True):  # A reads it
        with pytest.raises(GridError, match=r"in use by another process.*a/pretrain.*nothing was moved aside"):
            run_grid(changed, table="t", scale="smoke", work_dir=tmp_path, echo=quiet, rerun_changed=True)
    with grid.stage_lock(root / "b" / "finetune", echo=quiet):  # the last changed stage runs elsewhere
        with pytest.raises(GridError, match=r"b/finetune; nothing was moved aside"):
            run_grid(changed, table="t", scale="smoke", work_dir=tmp_path, echo=quiet, rerun_changed=True)
    assert not list(root.rglob("*.replaced-*")) and len(CALLS) == 4
    run_grid(changed, table="t", scale="smoke", work_dir=tmp_path, echo=quiet, rerun_changed=True)
    assert len(list(root.rglob("*.replaced-*"))) == 4


def test_a_stage_never_starts_on_an_unfinished_or_replaced_upstream(tmp_path):
    """Attack 3: A's fine-tune must not read a pre-training that another process is rerunning (busy), that
    is half-written (a checkpoint, no metrics), or that B replaced with its recipe (A would record B's
    hash and B would then reuse A's fine-tune as its own)."""
    root = (tmp_path / "t_smoke").resolve()
    a = stub_cell("a")
    grid.check_grid([a])
    pre = root / "a" / "pretrain"
    pre.mkdir(parents=True)
    with rundir.run_lock(pre):  # B is rerunning it
        with pytest.raises(grid.launch.StageBusy):
            grid.execute_stage(root, a, a.stages[1], wait=False)
    (pre / "checkpoint-last.pth").write_text("half")  # B's run, stopped before finishing
    grid.store.write_identity(pre, grid.planned_identity(root, a, a.stages[0]))
    with pytest.raises(GridError, match=r"a/finetune: input finetune: stage a/pretrain is not finished"):
        grid.execute_stage(root, a, a.stages[1])
    b = stub_cell("a", 2.0)  # B's recipe finished there
    grid.check_grid([b])
    (pre / "checkpoint-last.pth").unlink()
    (pre / grid.IDENTITY_FILE).unlink()
    grid.execute_stage(root, b, b.stages[0])
    with pytest.raises(GridError, match=r"a/finetune: input finetune: stage a/pretrain is changed \(value: 2.0 -> 1.0"):
        grid.execute_stage(root, a, a.stages[1])
    assert not (root / "a" / "finetune" / grid.IDENTITY_FILE).exists()
    # and a finished stage whose input is no longer finished is not reused
    grid.execute_stage(root, b, b.stages[1])
    (pre / "metrics.json").unlink()
    status, diff = grid.check_identity(root, b, b.stages[1])
    assert status == "changed" and "is not finished" in diff[0]


# ------------------------------------------------------- 4 / 10. every commit behind a number
def test_a_stage_resumed_under_other_code_names_both_commits(tmp_path, monkeypatch):
    """Attack 4: stopped under one commit, resumed under another: the row says mixed with both, the
    CSV's meta and the printed table name every commit; attack 10: a later run reusing it says so."""
    from reproduce import driver, report
    monkeypatch.setattr(provenance, "_CODE_COMMIT", ["aaa1111"])
    run_grid([real_cell(epochs=2, max_iters=3)], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    monkeypatch.setattr(provenance, "_CODE_COMMIT", ["bbb2222"])
    cell = real_cell(epochs=2)
    g = run_grid([cell], table="t", scale="smoke", work_dir=tmp_path, echo=quiet)
    assert g.get("a", "pretrain").status == "resumed"
    assert grid.stage_commits(g.get("a", "pretrain")) == ["aaa1111", "bbb2222"]
    rows = grid.cell_rows(g, lambda c, gr: {"decoder_depth": 8, "ft": grid.acc(gr.get("a", "finetune"))})
    assert rows[0]["commit"] == "mixed: aaa1111, bbb2222, abc1234"  # and the stub stage that read it
    args = argparse.Namespace(out=str(tmp_path / "res"), scale="smoke", dry_run=False)
    lines: list[str] = []
    df, _, csv = driver.write_table("table1a_decoder_depth", rows, args, echo=lines.append)
    assert df.loc[df["ft_ours"].notna(), "commit"].tolist() == ["mixed: aaa1111, bbb2222, abc1234"]
    meta = json.loads(report.meta_path(csv).read_text())
    assert meta["commits"] == ["aaa1111", "abc1234", "bbb2222"]
    assert "commits=aaa1111, abc1234, bbb2222" in "\n".join(lines)
    monkeypatch.setattr(provenance, "_CODE_COMMIT", ["ccc3333"])
    said: list[str] = []
    run_grid([real_cell(epochs=2)], table="t", scale="smoke", work_dir=tmp_path, echo=said.append)
    assert any("finished before, skipped (ran at commit aaa1111, bbb2222, abc1234; this process runs ccc3333)" in s
               for s in said), said


# ----------------------------------------------------------- 5. controls follow their recipe
def _jobs(module, argv: list[str], overrides: list[str]):
    from reproduce.scales import get_scale
    args = argparse.Namespace(part=argv or None)
    jobs = module.build_jobs(args, get_scale("smoke"))
    for job in jobs:
        grid.apply_overrides(job.cells, grid.parse_set(overrides))
    return jobs


def test_the_scratch_control_trains_pretraining_plus_finetuning_epochs_after_set(tmp_path):
    """Attack 5: --set pretrain.epochs=3 --set finetune.epochs=2: the scratch control runs 5 epochs (its
    config.yaml says so) and the CSV row records that recipe beside ft_scratch."""
    from reproduce import table1
    from reproduce.grid.model import GridResult
    job = _jobs(table1, ["mask_token"], ["pretrain.epochs=3", "finetune.epochs=2"])[0]
    base = next(c for c in job.cells if c.name == "baseline")
    grid.check_grid(job.cells)
    scratch = base.stage("finetune_scratch")
    assert scratch.config.epochs == 5 and scratch.config.finetune is None and not scratch.inputs
    root = (tmp_path / "ablations_smoke").resolve()
    r = grid.execute_stage(root, base, scratch)
    import yaml
    assert yaml.safe_load((r.run_dir / "config.yaml").read_text())["epochs"] == 5
    assert len(r.metrics["history"]) == 5
    g = GridResult("table1c_mask_token", "smoke", root, [base], {("baseline", "finetune_scratch"): r})
    cols = grid.standard_columns(base, g)
    assert cols["ft_scratch_recipe"].startswith("epochs=5 ")


def test_every_control_derives_from_the_recipe_it_controls():
    """Fig. 7's scratch controls follow --set finetune.epochs (schedule + 3); the probe's initialisation
    control takes the probe's --set blr; a control named itself keeps its own --set."""
    from reproduce import fig7, table1
    from reproduce.scales import get_scale
    schedule = get_scale("smoke").schedule
    cells = _jobs(fig7, [], ["finetune.epochs=3"])[0].cells
    for c in cells:
        assert c.stage("finetune_scratch").config.epochs == c.stage("pretrain").config.epochs + 3, c.name
    assert sorted(c.stage("finetune_scratch").config.epochs for c in cells) == sorted(e + 3 for e in schedule.values())
    job = _jobs(table1, ["decoder_depth"], ["linprobe.blr=0.2", "readout.k=5", "finetune_scratch.epochs=9"])[0]
    base = next(c for c in job.cells if c.name == "baseline")
    assert base.stage("linprobe_init").config.blr == 0.2 and base.stage("linprobe_randinit").config.blr == 0.2
    assert base.stage("readout_init").config.k == 5 and base.stage("readout_pixels").config.k == 5
    assert base.stage("readout_pixels").config.source == "pixels"
    assert base.stage("finetune_scratch").config.epochs == 9


# ------------------------------------------------------------ 6. --only keeps every seed
def _decoder_job() -> "object":
    from reproduce.driver import Report, TableJob
    cells = [stub_cell(f"d{d}", float(70 + d), decoder_depth=d) for d in (2, 8)]
    return TableJob("table1a_decoder_depth", cells,
                    [Report("table1a_decoder_depth", lambda g: grid.cell_rows(g, grid.standard_columns))])


def _args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    from reproduce.driver import add_grid_args
    p = argparse.ArgumentParser()
    add_grid_args(p)
    args = p.parse_args(["--work-dir", str(tmp_path / "w"), "--out", str(tmp_path / "res"), *extra])
    args.seeds_parsed = grid.parse_seeds(args.seeds, (0,))
    return args


def test_only_and_collect_keep_every_finished_seed(tmp_path):
    """Attack 6: a 3-seed CSV, then `--only decoder_depth=8` (no --seeds), then `--collect`: still 3 seeds."""
    from reproduce.driver import run_jobs
    csv = tmp_path / "res" / "table1a_decoder_depth_smoke.csv"

    def seeds_of(depth: int) -> tuple[int, str]:
        row = pd.read_csv(csv).set_index("decoder_depth").loc[depth]
        return int(row["n_seeds_ours"]), row["ft_seeds_ours"]

    assert run_jobs([_decoder_job()], _args(tmp_path, "--seeds", "3"), echo=quiet) == 0
    assert seeds_of(8)[0] == 3 and seeds_of(2)[0] == 3
    n_calls = len(CALLS)
    assert run_jobs([_decoder_job()], _args(tmp_path, "--only", "decoder_depth=8"), echo=quiet) == 0
    assert len(CALLS) == n_calls  # seed 0 was there: nothing ran
    assert seeds_of(8) == (3, "0:88.0000;1:88.7500;2:89.0000") and seeds_of(2)[0] == 3
    assert run_jobs([_decoder_job()], _args(tmp_path, "--collect"), echo=quiet) == 0
    assert seeds_of(8)[0] == 3 and seeds_of(2)[0] == 3


# ------------------------------------------------- 7. a refreshed verdict names who refreshed it
def test_refresh_meta_stamps_the_commit_that_recomputed_the_verdicts(tmp_path, monkeypatch):
    from reproduce import summary
    res = tmp_path / "results"
    res.mkdir()
    rows = [{"mask_ratio": 0.5, "lin_ours": 80.0, "lin_paper": 70.0, "n_seeds_ours": 1, "commit": "old1111"},
            {"mask_ratio": 0.75, "lin_ours": 81.0, "lin_paper": 73.5, "n_seeds_ours": 1, "paper_baseline": 1,
             "commit": "old1111"}]
    pd.DataFrame(rows).to_csv(res / "fig5_masking_ratio_cpu.csv", index=False)
    meta = {"csv": "fig5_masking_ratio_cpu.csv", "scale": "cpu",
            "provenance": {"collected_by": {"commit": "old1111"}}, "verdicts": {"lin": {"outcome": "mismatch"}}}
    (res / "fig5_masking_ratio_cpu.meta.json").write_text(json.dumps(meta))
    monkeypatch.setattr(provenance, "pin_code_commit", lambda: "new2222")
    assert len(summary.refresh_meta(res)) == 1
    after = json.loads((res / "fig5_masking_ratio_cpu.meta.json").read_text())
    assert after["provenance"]["verdicts_by"]["commit"] == "new2222"
    assert after["provenance"]["collected_by"] == {"commit": "old1111"}
    assert after["verdicts"]["lin"]["outcome"] != "mismatch"
    monkeypatch.setattr(provenance, "pin_code_commit", lambda: "other333")
    assert summary.refresh_meta(res) == []  # nothing changed: neither the verdicts nor who computed them


# ---------------------------------------------------- 8. a failed seed, a zero-width interval
def test_two_pairs_without_spread_are_not_an_interval():
    """Attack 8: seed 2 failed on one side; the two pairs left differ by the same amount (sd 0): no
    zero-width 'equal within +-2'. Identical numbers on 3+ seeds (the same run twice) are equal."""
    from reproduce.stats import compare
    c = compare({0: 80.0, 1: 82.0}, {0: 79.0, 1: 81.0, 2: 85.0})
    assert c.call == "unresolved" and "without spread" in c.method and c.n == 2 and c.delta == 1.0
    c = compare({0: 80.0, 1: 82.0}, {0: 79.0, 1: 81.0, 2: 85.0}, n_val=360)
    assert c.call == "unresolved" and "validation images" in c.method and c.hi - c.lo > 4
    c = compare({0: 80.0, 1: 82.0, 2: 81.0}, {0: 80.0, 1: 82.0, 2: 81.0}, n_val=360)
    assert c.call.startswith("equal") and "identical" in c.method
    assert "identical" not in compare({0: 80.0, 1: 82.0, 2: 81.0}, {0: 80.0, 1: 82.0, 2: 81.0}).method  # n_val unknown


def test_the_scoreboard_counts_each_metrics_own_seeds():
    """Attack 8: the seeds column counts the seeds behind each metric's numbers, not the row's maximum."""
    from reproduce.summary import _seed_range
    df = pd.DataFrame([{"ft_ours": 80.0, "ft_seeds_ours": "0:80;1:80", "lin_ours": 70.0,
                        "lin_seeds_ours": "0:70;1:70;2:70", "n_seeds_ours": 3}])
    assert _seed_range(df, "ft") == "2" and _seed_range(df, "lin") == "3" and _seed_range(df) == "3"


# ------------------------------------------------------------- 9. --set is checked and typed
def test_set_rejects_seed_and_unknown_fields_and_parses_numbers_like_the_cli():
    """Attack 9: --set seed / pretrain.seed were silently ignored; pretrain.blr=15e-4 was a string."""
    cells = [Cell("c", {"x": 1}, [Stage("pretrain", "pretrain", smoke_pretrain())])]
    for item in ("seed=5", "pretrain.seed=5"):
        with pytest.raises(GridError, match=r"--set seed: not a recipe field here, set per cell by --seeds"):
            grid.apply_overrides(cells, grid.parse_set([item]))
    grid.apply_overrides(cells, grid.parse_set(["pretrain.blr=15e-4", "pretrain.norm_pix_loss=true"]))
    cfg = cells[0].stages[0].config
    assert cfg.blr == 0.0015 and isinstance(cfg.blr, float) and cfg.norm_pix_loss is True
    with pytest.raises(GridError, match=r"--set epochs=2.5: expected an int for Config.epochs"):
        grid.apply_overrides(cells, grid.parse_set(["pretrain.epochs=2.5"]))
    with pytest.raises(GridError, match=r"has no field 'nope'; fields: .*\bblr\b"):
        grid.apply_overrides(cells, grid.parse_set(["pretrain.nope=1"]))
    with pytest.raises(GridError, match=r"no stage of this table has a field 'nope'; fields: .*\bepochs\b"):
        grid.apply_overrides(cells, grid.parse_set(["nope=1"]))


def test_a_child_given_the_lock_keeps_the_stage_locked_after_the_grid_dies(tmp_path):
    """The torchrun launcher passes its lock's descriptor to the stage's process: a grid killed mid-stage leaves
    the folder locked while the training runs on, so a second grid cannot train into it meanwhile."""
    import subprocess
    import time
    stage = tmp_path / "stage"
    grid_like = ("import subprocess, sys\n"
                 "from mae.engine import rundir\n"
                 f"with rundir.run_lock({str(stage)!r}):\n"
                 f"    fd = rundir.held_lock_fd({str(stage)!r})\n"
                 "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(4)'], pass_fds=(fd,),\n"
                 "                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
                 "    print(child.pid, flush=True)\n")  # then the 'grid' exits, the child runs on
    out = subprocess.run([sys.executable, "-c", grid_like], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    child = int(out.stdout.split()[0])
    with pytest.raises(rundir.RunBusy):
        with rundir.run_lock(stage):
            pass
    while Path(f"/proc/{child}").exists() and "zombie" not in Path(f"/proc/{child}/status").read_text():
        time.sleep(0.1)
    with rundir.run_lock(stage):  # the child ended: free
        assert rundir.held_lock_fd(stage) is not None
    assert rundir.held_lock_fd(stage) is None


def test_the_torchrun_launcher_hands_its_lock_to_the_stage(tmp_path, monkeypatch):
    import subprocess

    from reproduce.grid import launch
    seen = {}

    def fake_run(cmd, **kw):
        seen.update(kw)
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(launch.subprocess, "run", fake_run)
    cfg = smoke_pretrain(output_dir=str(tmp_path / "s"))
    stage = grid.Stage("pretrain", "pretrain", cfg)
    with rundir.run_lock(tmp_path / "s"):
        launch._run_torchrun(stage, cfg, 2)
        assert seen["pass_fds"] == (rundir.held_lock_fd(tmp_path / "s"),)


def test_the_resume_hint_of_a_grid_stage_is_the_grids_command(tmp_path):
    """A stage stopped by a signal prints how to continue: through the grid (the mae command would be refused)."""
    cfg = smoke_pretrain(output_dir=str(tmp_path / "stage"))
    assert rundir.resume_command(cfg).startswith("mae pretrain --resume auto")
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / rundir.GRID_IDENTITY).write_text(json.dumps({"grid_command": "cd /w && python t.py"}))
    assert rundir.resume_command(cfg).startswith("cd /w && python t.py")


def test_identical_numbers_from_a_coarse_accuracy_are_not_called_the_same_run():
    """12 validation images move accuracy in steps of 8.3 points: equal numbers on 3 seeds may be chance."""
    from reproduce.stats import compare
    same = {0: 16.6667, 1: 33.3333, 2: 16.6667}
    assert compare(same, dict(same), n_val=12).call == "unresolved"
    fine = {0: 90.0, 1: 91.0, 2: 92.0}
    assert compare(fine, dict(fine), n_val=360).method.startswith("identical on 3 paired seeds")


def test_set_checks_ranges_and_tuple_lengths_like_the_cli(tmp_path):
    from reproduce.grid.plan import apply_overrides
    cell = Cell("c", {"x": 1}, [Stage("pretrain", "pretrain", smoke_pretrain(output_dir=str(tmp_path / "p")))])
    for bad, said in (("mask_ratio", "1.5"), ("betas", "0.9"), ("blr", "-1")):
        with pytest.raises(GridError, match=f"--set {bad}="):
            apply_overrides([cell], [("pretrain", bad, said)])
    with pytest.raises(GridError, match="not a recipe field"):
        apply_overrides([cell], [("pretrain", "max_iters", "2")])
    apply_overrides([cell], [("pretrain", "betas", "[0.9, 0.99]"), ("pretrain", "mask_ratio", "0.6")])
    assert cell.stages[0].config.betas == (0.9, 0.99) and cell.stages[0].config.mask_ratio == 0.6
