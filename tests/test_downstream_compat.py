"""downstream/compat.py shims and scripts/install_mmcv.sh paths that can run without building anything."""
from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "install_mmcv.sh"


from _openmmlab import require_openmmlab  # noqa: E402

require_openmmlab()
pytestmark = pytest.mark.downstream

from downstream import compat  # noqa: E402


def _mmengine_style_checkpoint(path: Path) -> None:
    from mmengine.logging import HistoryBuffer
    buf = HistoryBuffer()
    buf.update(1.5)
    torch.save({"state_dict": {"w": torch.ones(2)}, "message_hub": {"log_scalars": {"loss": buf}}}, path)


def test_mmengine_checkpoints_need_and_get_the_loader_shim(tmp_path):
    from mmengine.runner.checkpoint import CheckpointLoader
    assert "mmengine-local-checkpoint-weights-only" in compat.APPLIED
    path = tmp_path / "iter_1.pth"
    _mmengine_style_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError, match="HistoryBuffer"):
        torch.load(path)  # what mmengine 0.10.7 does unpatched on torch >= 2.6
    ck = CheckpointLoader.load_checkpoint(str(path), map_location="cpu")
    assert ck["message_hub"]["log_scalars"]["loss"].current() == 1.5
    plain = tmp_path / "plain.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}}, plain)
    assert torch.equal(CheckpointLoader.load_checkpoint(str(plain), map_location="cpu")["state_dict"]["w"],
                       torch.ones(2))
    with pytest.raises(FileNotFoundError):
        CheckpointLoader.load_checkpoint(str(tmp_path / "absent.pth"))


def test_install_mmcv_does_nothing_when_mmcv_ops_import():
    proc = subprocess.run(["bash", str(SCRIPT), sys.prefix], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "already importable" in proc.stdout and "nothing to do" in proc.stdout


def test_install_mmcv_usage_and_missing_venv(tmp_path):
    usage = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "install_mmcv.sh VENV" in usage.stdout
    missing = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "nope")], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1 and "no python at" in missing.stderr
