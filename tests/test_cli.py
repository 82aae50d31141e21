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
