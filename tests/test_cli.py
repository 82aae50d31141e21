import dataclasses
import subprocess
import sys

import pytest

from mae import cli
from mae.protocols import pretrain


@pytest.mark.parametrize("protocol", ["pretrain", "finetune", "linprobe", "partial"])
def test_help_documents_every_field(capsys, protocol):
    with pytest.raises(SystemExit) as e:
        cli.main([protocol, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(cli.protocol_module(protocol).Config):
        assert f"--{f.name}" in out, f.name
        assert f.metadata.get("help"), f"field {f.name} has no help text"


def test_precedence_preset_file_flags(tmp_path):
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text("epochs: 7\nmask_ratio: 0.6\n")
    cfg = cli.build_config(pretrain, ["--preset", "smoke", "--config", str(cfgfile), "--mask_ratio", "0.9",
                                      "--betas", "0.8", "0.9", "--no-progress", "--lr", "none"], "mae pretrain")
    assert cfg.model == "mae_vit_smoke" and cfg.epochs == 7 and cfg.mask_ratio == 0.9
    assert cfg.betas == (0.8, 0.9) and cfg.progress is False and cfg.lr is None


def test_unknown_preset_and_command(capsys):
    with pytest.raises(cli.UsageError, match="unknown preset"):
        cli.build_config(pretrain, ["--preset", "nope"], "mae pretrain")
    assert cli.main(["pretrain", "--preset", "nope"]) == 2  # an input error like any other: exit 2, one line
    assert capsys.readouterr().err.strip().startswith("mae pretrain: error: unknown preset 'nope'")
    assert cli.main(["bogus"]) == 2


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "mae", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "pretrain" in proc.stdout


# --------------------------------------------------------------------- every flag checked before anything starts
def _refused(capsys, argv: list[str], out_dir) -> str:
    """Run ``mae ARGV --output_dir OUT``: exit status 2, one line on stderr, nothing created; returns that line."""
    assert cli.main([*argv, "--output_dir", str(out_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert not out_dir.exists(), f"{argv} left {out_dir}"
    return err


@pytest.mark.parametrize("argv, says", [
    (["pretrain", "--preset", "smoke", "--mask_ratio", "1.5"], "--mask_ratio 1.5: the fraction of patches removed"),
    (["pretrain", "--preset", "smoke", "--mask_ratio", "-0.2"], "--mask_ratio -0.2: "),
    (["pretrain", "--preset", "smoke", "--data", "/nonexistent/images"], "--data: dataset '/nonexistent/images'"),
    (["pretrain", "--preset", "smoke", "--epochs", "0"], "--epochs 0: must be >= 1"),
    (["pretrain", "--preset", "smoke", "--model", "mae_vit_nope"], "--model mae_vit_nope: unknown MAE preset"),
    (["pretrain", "--preset", "smoke", "--img_size", "30"], "is not a multiple of patch_size"),
    (["pretrain", "--preset", "smoke", "--target", "token"], "--target token: needs --tokenizer"),
    (["pretrain", "--preset", "smoke", "--augmentation", "flip"], "--augmentation flip: must be one of"),
    (["pretrain", "--preset", "smoke", "--device", "gpu7"], "--device gpu7: not a device name"),
    (["finetune", "--preset", "smoke", "--finetune", "/nonexistent.pth"], "--finetune: /nonexistent.pth: no such file"),
    (["finetune", "--preset", "smoke", "--reprob", "2"], "--reprob 2.0: a probability must be in [0, 1]"),
    (["finetune", "--preset", "smoke", "--rand_aug", "xyz"], "--rand_aug xyz: unrecognised"),
    (["linprobe", "--preset", "smoke", "--model", "vit_nope"], "--model vit_nope: unknown ViT preset"),
    (["partial", "--preset", "smoke", "--tune_blocks", "5"], "--tune_blocks 5.0: exceeds the 2 blocks of vit_smoke"),
    (["readout", "--preset", "smoke", "--lbfgs_c", "0"], "--lbfgs_c 0.0: "),
    (["tokenizer", "--preset", "smoke", "--vocab_size", "1"], "--vocab_size must be >= 2"),
])
def test_a_bad_flag_is_one_line_and_exit_2_before_any_folder(capsys, tmp_path, argv, says):
    err = _refused(capsys, argv, tmp_path / "run")
    assert err.startswith(f"mae {argv[0]}: error: ") and says in err, err


def test_a_file_that_is_not_a_checkpoint_is_refused_in_our_words(capsys, tmp_path):
    text = tmp_path / "hostname"
    text.write_text("node17\n")
    for flag, protocol in (("--finetune", "finetune"), ("--resume", "pretrain"), ("--init", "pretrain")):
        err = _refused(capsys, [protocol, "--preset", "smoke", flag, str(text)], tmp_path / "run")
        assert f"{text} is not a PyTorch checkpoint: it is a text file of 7 bytes starting 'node17'" in err, err
        assert "expected a torch.save file" in err and "weights_only" not in err


def test_print_config_still_shows_a_preset_whose_data_is_a_placeholder(capsys):
    # the paper presets name /path/to/imagenet until --data is given: shown, but refused as a run
    with pytest.raises(SystemExit) as e:
        cli.main(["pretrain", "--preset", "paper_vit_base", "--print-config"])
    assert e.value.code == 0 and "/path/to/imagenet" in capsys.readouterr().out
    with pytest.raises(cli.UsageError, match="--data: dataset '/path/to/imagenet'"):
        cli.build_config(pretrain, ["--preset", "paper_vit_base"], "mae pretrain")
