"""Run folders: a resume continues the run's own recipe, a finished folder is never overwritten or mixed
with a second run, ``--overwrite`` starts over cleanly, and written files honour the umask."""
import json
import os
import shlex
from pathlib import Path

import pytest
import torch

from mae import cli
from mae.engine import checkpoint as ckpt
from mae.engine import rundir

# seconds on a CPU: the smoke preset has 4 iterations per epoch
SMOKE = ["--preset", "smoke", "--no-progress", "--num_workers", "0"]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under ``folder``: (bytes, mtime_ns, mode)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def epochs_logged(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "log.txt").read_text().splitlines()]


@pytest.mark.parametrize("protocol", ["pretrain", "finetune", "linprobe", "partial"])
def test_the_resume_hint_followed_verbatim_finishes_the_run_and_keeps_its_config(tmp_path, capsys, protocol):
    run = tmp_path / "D"
    assert cli.main([protocol, *SMOKE, "--epochs", "3", "--max_iters", "2", "--output_dir", str(run)]) == 0
    out = capsys.readouterr().out
    hint = [line.split("continue with: ", 1)[1] for line in out.splitlines() if "continue with: " in line]
    assert len(hint) == 1, out
    argv = shlex.split(hint[0])
    assert argv[:2] == ["mae", protocol] and "--resume" in argv and str(run) in argv
    config = (run / "config.yaml").read_bytes()
    assert not (run / "metrics.json").exists()

    assert cli.main(argv[1:]) == 0  # exactly the printed command (the console script is `mae`)
    out = capsys.readouterr().out
    assert f"[resume] recipe from {run / 'config.yaml'}; no field overridden" in out
    # not replaced by the default (demo) preset's; max_iters says where the run stopped now: at its end
    import yaml
    before, after = yaml.safe_load(config), yaml.safe_load((run / "config.yaml").read_text())
    assert before["max_iters"] == 2 and after["max_iters"] is None
    assert {**before, "max_iters": None} == after
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished"] and epochs_logged(run) == [0, 1, 2]
    assert ckpt.load_checkpoint(run / ckpt.LAST)["config"]["model"] == cli.protocol_module(protocol).PRESETS["smoke"].model


def test_explicit_flags_override_a_resumed_recipe_and_say_so(tmp_path, capsys):
    run = tmp_path / "D"
    assert cli.main(["pretrain", *SMOKE, "--epochs", "2", "--max_iters", "2", "--output_dir", str(run)]) == 0
    capsys.readouterr()
    cfg = cli.build_config(cli.protocol_module("pretrain"),
                           ["--resume", "auto", "--output_dir", str(run), "--epochs", "5", "--preset", "demo"],
                           "mae pretrain")
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[resume]")]
    assert len(said) == 1 and "epochs=5 (was 2)" in said[0] and "--preset demo ignored" in said[0], said
    assert (cfg.model, cfg.img_size, cfg.epochs, cfg.max_iters) == ("mae_vit_smoke", 32, 5, None)


def test_a_second_run_into_a_finished_folder_is_refused_and_changes_no_file(tmp_path, capsys):
    run = tmp_path / "D"
    argv = ["pretrain", *SMOKE, "--epochs", "1", "--output_dir", str(run)]
    assert cli.main(argv) == 0
    before = snapshot(run)
    assert {"metrics.json", "log.txt", "checkpoint-last.pth", "config.yaml"} <= set(before)
    capsys.readouterr()
    for again in (argv, ["pretrain", "--output_dir", str(run)], [*argv, "--epochs", "2", "--seed", "1"]):
        assert cli.main(again) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "finished run" in err[0] and str(run) in err[0], err
        assert "--resume auto" in err[0] and "--overwrite" in err[0] and "--output_dir" in err[0]
        assert snapshot(run) == before


@pytest.mark.parametrize("protocol", ["pretrain", "finetune", "linprobe", "partial"])
@pytest.mark.parametrize("marker", rundir.RUN_MARKERS)
def test_every_protocol_refuses_a_started_or_finished_folder(tmp_path, capsys, protocol, marker):
    run = tmp_path / "D"
    run.mkdir()
    (run / marker).write_text("{}")
    before = snapshot(run)
    assert cli.main([protocol, "--preset", "smoke", "--output_dir", str(run)]) == 2
    assert "--overwrite" in capsys.readouterr().err and snapshot(run) == before


def test_config_and_lock_alone_are_not_a_previous_run(tmp_path):
    """The grid writes config.yaml and .lock into a fresh run folder before it runs the stage."""
    (tmp_path / "config.yaml").write_text("epochs: 1\n")
    (tmp_path / ".lock").write_text("")
    assert rundir.previous_run(tmp_path) == []
    rundir.refuse_previous_run(tmp_path)  # no error


def test_overwrite_starts_over_without_the_old_runs_files(tmp_path, capsys):
    run = tmp_path / "D"
    assert cli.main(["pretrain", *SMOKE, "--epochs", "2", "--output_dir", str(run)]) == 0
    (run / "notes.txt").write_text("mine")
    assert cli.main(["pretrain", *SMOKE, "--epochs", "1", "--seed", "3", "--output_dir", str(run), "--overwrite"]) == 0
    assert epochs_logged(run) == [0]
    rows = (run / "train_log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,") and len(rows) == 1 + 4  # one header, one epoch of 4 iterations
    assert not (run / "checkpoint-1.pth").exists() and (run / "notes.txt").read_text() == "mine"
    assert ckpt.load_checkpoint(run / ckpt.LAST)["config"]["seed"] == 3
    assert "removed" in capsys.readouterr().out


def test_resume_and_overwrite_together_is_an_input_error(tmp_path, capsys):
    assert cli.main(["pretrain", *SMOKE, "--output_dir", str(tmp_path), "--resume", "auto", "--overwrite"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["pretrain", "--preset", "nope"], ["finetune", "--preset", "smoke", "--layer_decay", "2"]])
def test_input_errors_exit_2_with_one_line(tmp_path, capsys, argv):
    assert cli.main([*argv, "--output_dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mae {argv[0]}: error: "), err


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_checkpoints_and_converted_files_honour_the_umask(tmp_path, umask):
    from mae.models import create_mae
    from mae.models.formats import convert
    old = os.umask(umask)
    try:
        path = ckpt.save_checkpoint({"model": create_mae("mae_vit_smoke").state_dict()}, tmp_path / "a.pth")
        converted = Path(convert(path, tmp_path / "b.pth", "timm").dst)
    finally:
        os.umask(old)
    for p in (path, converted):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, (p, oct(p.stat().st_mode))
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_fresh_start_drops_the_logs_of_an_attempt_that_left_no_checkpoint(tmp_path):
    import dataclasses

    from mae.protocols import pretrain
    cfg = dataclasses.replace(pretrain.PRESETS["smoke"], output_dir=str(tmp_path), progress=False, epochs=1)
    (tmp_path / "train_log.csv").write_text("epoch,iteration,lr,loss\n0,0,0.1,9.0\n0,1,0.1,9.0\n")
    pretrain.run(cfg)
    rows = (tmp_path / "train_log.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and "9.0" not in "".join(rows[1:])
    assert torch.isfinite(torch.tensor([float(r.split(",")[3]) for r in rows[1:]])).all()


def test_a_second_process_in_a_running_folder_is_refused(tmp_path, capsys):
    """Two runs started into one folder before either logged an epoch would both run and mix their files."""
    run = tmp_path / "D"
    argv = ["pretrain", *SMOKE, "--epochs", "1", "--output_dir", str(run)]
    with rundir.run_lock(run):  # another process is running there (a second descriptor conflicts like one)
        before = snapshot(run)
        assert cli.main(argv) == 2
        assert "another process is running in" in capsys.readouterr().err and snapshot(run) == before
    assert cli.main(argv) == 0  # once it has gone


def test_resume_auto_without_a_checkpoint_never_starts_over_a_previous_run(tmp_path, capsys):
    run = tmp_path / "D"
    assert cli.main(["pretrain", *SMOKE, "--epochs", "1", "--output_dir", str(run)]) == 0
    (run / "checkpoint-last.pth").unlink()
    before = snapshot(run)
    capsys.readouterr()
    assert cli.main(["pretrain", "--resume", "auto", "--output_dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint-last.pth to continue from" in err and "--overwrite" in err and snapshot(run) == before


def test_a_failed_resume_leaves_the_runs_config_as_it_was(tmp_path, capsys):
    run = tmp_path / "D"
    assert cli.main(["pretrain", *SMOKE, "--epochs", "2", "--max_iters", "2", "--output_dir", str(run)]) == 0
    config = (run / "config.yaml").read_bytes()
    last = run / "checkpoint-last.pth"
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    assert cli.main(["pretrain", "--resume", "auto", "--output_dir", str(run), "--blr", "3e-3"]) == 2
    assert "truncated" in capsys.readouterr().err and (run / "config.yaml").read_bytes() == config


def test_a_resumed_runs_metrics_keep_the_epochs_before_the_stop(tmp_path, capsys):
    run = tmp_path / "D"
    assert cli.main(["pretrain", *SMOKE, "--epochs", "3", "--max_iters", "6", "--output_dir", str(run)]) == 0
    assert epochs_logged(run) == [0]  # stopped in epoch 1 (4 iterations an epoch)
    assert cli.main(["pretrain", "--resume", "auto", "--output_dir", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2] and epochs_logged(run) == [0, 1, 2]


def test_a_resume_cannot_shorten_a_run_below_what_it_trained(tmp_path, capsys):
    run = tmp_path / "D"
    assert cli.main(["pretrain", *SMOKE, "--epochs", "3", "--max_iters", "10", "--output_dir", str(run)]) == 0
    before = snapshot(run)
    capsys.readouterr()
    assert cli.main(["pretrain", "--resume", "auto", "--output_dir", str(run), "--epochs", "1"]) == 2
    assert "cannot shorten a run" in capsys.readouterr().err and snapshot(run) == before


def test_a_recipe_changed_on_resume_is_recorded_in_the_runs_metrics(tmp_path, capsys):
    """Overriding a recipe field on resume is allowed and said; the run's numbers then carry the change
    (when, where, old and new value), not only the last recipe."""
    run = tmp_path / "D"
    assert cli.main(["pretrain", *SMOKE, "--epochs", "2", "--max_iters", "6", "--output_dir", str(run)]) == 0
    assert cli.main(["pretrain", "--resume", "auto", "--output_dir", str(run), "--blr", "0.003"]) == 0
    changes = json.loads((run / "metrics.json").read_text())["provenance"]["recipe_changes"]
    assert len(changes) == 1 and changes[0]["at"] == "epoch 1, iteration 2"
    assert changes[0]["changes"]["blr"][1] == 0.003 and changes[0]["changes"]["blr"][0] != 0.003
    assert "blr: 0.003" in (run / "config.yaml").read_text()
    # a run under one recipe has none; --overwrite starts without the record
    assert cli.main(["pretrain", *SMOKE, "--epochs", "1", "--output_dir", str(run), "--overwrite"]) == 0
    assert "recipe_changes" not in json.loads((run / "metrics.json").read_text())["provenance"]


def test_overwrite_removes_every_output_a_protocol_writes(tmp_path):
    for name in ("tokenizer.pth", "classifier.pth", "recipe_changes.jsonl", "metrics.json", "checkpoint-3.pth"):
        (tmp_path / name).write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    rundir.clear_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_pruning_after_a_rollback_keeps_the_new_checkpoints(tmp_path):
    """Resumed from checkpoint-1 with checkpoint-5 of the abandoned run still there: saving epoch 2 with
    keep_last 2 keeps 1 and 2 (5 is neither counted nor deleted)."""
    for e in (0, 1, 2, 5):
        (tmp_path / f"checkpoint-{e}.pth").write_text("x")
    removed = ckpt.prune_checkpoints(tmp_path, 2, upto=2)
    assert [p.name for p in removed] == ["checkpoint-0.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1.pth", "checkpoint-2.pth", "checkpoint-5.pth"]


def test_a_resume_of_a_finished_run_writes_nothing(tmp_path, capsys):
    run = tmp_path / "done"
    assert cli.main(["pretrain", *SMOKE, "--tensorboard", "--output_dir", str(run)]) == 0
    import shutil
    shutil.rmtree(run / "tensorboard")
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert cli.main(["pretrain", "--resume", "auto", "--tensorboard", "--output_dir", str(run)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # no events file, nothing rewritten
