import random

import numpy as np
import pytest
import torch

from mae.engine import checkpoint as ckpt


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint-last.pth"
    ckpt.save_checkpoint({"model": {"w": torch.ones(2)}}, path)
    real_save = torch.save

    def broken_save(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint({"model": {"w": torch.zeros(2)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-last.pth"]  # no temp file left behind


def test_truncated_empty_missing_and_foreign_files(tmp_path):
    good = tmp_path / "good.pth"
    ckpt.save_checkpoint({"model": {"w": torch.randn(100, 100)}}, good)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt"):
        ckpt.load_checkpoint(trunc)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="empty"):
        ckpt.load_checkpoint(tmp_path / "empty.pth")
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_checkpoint(tmp_path / "text.pth")
    with pytest.raises(ckpt.CheckpointError, match="no model state_dict"):
        ckpt.extract_state_dict({"epoch": 3})


def test_official_args_namespace_loads(tmp_path):
    import argparse
    p = tmp_path / "official.pth"
    torch.save({"model": {"w": torch.ones(1)}, "args": argparse.Namespace(lr=1e-3), "epoch": 799}, p)
    assert ckpt.load_checkpoint(p)["epoch"] == 799


def test_ddp_prefix_is_stripped():
    sd = ckpt.extract_state_dict({"model": {"module.a": torch.ones(1), "module.b": torch.ones(1)}})
    assert set(sd) == {"a", "b"}


def test_keep_last_n(tmp_path):
    for e in range(5):
        ckpt.save_checkpoint({"e": e}, tmp_path / f"checkpoint-{e}.pth")
    ckpt.prune_checkpoints(tmp_path, 2)
    assert [p.name for p in ckpt.numbered_checkpoints(tmp_path)] == ["checkpoint-3.pth", "checkpoint-4.pth"]


def test_rng_state_roundtrip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = ckpt.rng_state()
    ckpt.save_checkpoint({"rng": state}, tmp_path / "r.pth")
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path / "r.pth")["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_resolve_resume(tmp_path):
    assert ckpt.resolve_resume("auto", tmp_path) is None
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint"):
        ckpt.resolve_resume(str(tmp_path / "x.pth"), tmp_path)


def test_foreign_files_are_named_for_what_they_are_never_with_torchs_advice(tmp_path):
    """A file that is not a checkpoint says what it is and what was expected, in our words: torch's own hint
    (re-run torch.load with weights_only=False, i.e. execute the file's pickle) never reaches the user."""
    import pickle

    import numpy as np

    def refused(path) -> str:
        with pytest.raises(ckpt.CheckpointError) as e:
            ckpt.load_checkpoint(path)
        msg = str(e.value)
        assert "weights_only" not in msg and "trusted source" not in msg and len(msg.splitlines()) == 1, msg
        return msg

    (tmp_path / "hostname").write_text("node17\n")
    assert "is not a PyTorch checkpoint: it is a text file of 7 bytes starting 'node17'; expected a torch.save " \
           "file" in refused(tmp_path / "hostname")
    with open(tmp_path / "obj.pkl", "wb") as f:
        pickle.dump({"w": [1, 2]}, f)
    assert "is a Python pickle (" in refused(tmp_path / "obj.pkl") and "torch.save did not write" in \
        refused(tmp_path / "obj.pkl")
    np.savez(tmp_path / "jax.npz", w=np.zeros(3))
    assert "is a zip archive without the data.pkl that torch.save writes" in refused(tmp_path / "jax.npz")
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert "it is a PNG image (48 bytes)" in refused(tmp_path / "img.png")
    torch.save({"model": {"w": torch.ones(1)}, "extra": Unlisted()}, tmp_path / "objects.pth")
    msg = refused(tmp_path / "objects.pth")
    assert "holds a Python object (test_checkpoint.Unlisted)" in msg and "without running code" in msg
    torch.save(torch.ones(2), tmp_path / "tensor.pth")
    assert "holds a Tensor, expected a dict" in refused(tmp_path / "tensor.pth")


class Unlisted:
    """A class no checkpoint loader allows."""


def test_torch_saves_older_format_and_safetensors_still_load(tmp_path):
    old = tmp_path / "old.pth"
    torch.save({"model": {"w": torch.ones(3)}}, old, _use_new_zipfile_serialization=False)
    assert ckpt.checkpoint_problem(old) is None
    assert torch.equal(ckpt.load_checkpoint(old)["model"]["w"], torch.ones(3))
    from safetensors.torch import save_file
    save_file({"w": torch.ones(2)}, str(tmp_path / "m.safetensors"))
    assert ckpt.checkpoint_problem(tmp_path / "m.safetensors") is None
    (tmp_path / "m.bin").write_bytes((tmp_path / "m.safetensors").read_bytes())
    assert "give it the .safetensors suffix" in ckpt.checkpoint_problem(tmp_path / "m.bin")
