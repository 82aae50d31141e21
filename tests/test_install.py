"""scripts/install.sh, install_mmcv.sh, test.sh: what a fresh clone's two commands do, checked with a stub
interpreter (nothing is downloaded, installed or built), and the one-line skip of the downstream tests."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"

#: a stand-in for VENV/bin/python: logs each call (and whether the downstream stack is required); for
#: install_mmcv.sh it reports CPython 3.11 / torch 2.14.1 on CPU, mmcv importable once a wheel was "installed";
#: pip calls print the location warnings a pip.conf naming missing folders causes
STUB = r"""#!/usr/bin/env bash
D="$(cd "$(dirname "$0")/.." && pwd)"
echo "python $* [require=${MAE_REQUIRE_DOWNSTREAM-}]" >> "$D/calls.log"
if [ "${1-}" = "-" ]; then
  cat > /dev/null
  if [ "${2-}" = "2.1.0" ]; then [ -f "$D/mmcv-installed" ]; exit $?; fi
  echo "cp311 linux_x86_64 2.14.1 cpu 0"; exit 0
fi
if [ "${1-}" = "-m" ] && [ "${2-}" = "pip" ]; then
  echo "WARNING: Location 'file:///opt/pypi/simple/x/' is ignored: it is neither a file nor a directory."
  echo "WARNING: Location '/gone' is ignored: it is either a non-existing path or lacks a specific scheme."
  case "$*" in *mmcv-2.1.0-*.whl*) touch "$D/mmcv-installed" ;; esac
fi
exit 0
"""


def _stub_venv(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").write_text(STUB)
    (root / "bin" / "python").chmod(0o755)
    return root


def _run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("MAE_INSTALL_ARGS", "MAE_REQUIRE_DOWNSTREAM")}
    return subprocess.run(["bash", str(SCRIPTS / script), *args], env={**full, **(env or {})}, capture_output=True,
                          text=True, timeout=120)


def _hash() -> str:
    return _run("install.sh", "--print-hash").stdout.strip()


def test_a_plain_request_reuses_a_venv_installed_with_the_openmmlab_stack(tmp_path):
    venv = _stub_venv(tmp_path / "venv")
    (venv / f".mae-install-{_hash()}-ds1-dev1").touch()
    for args in ((), ("--downstream",), ("--no-dev",)):
        proc = _run("install.sh", *args, env={"MAE_VENV": str(venv)})
        assert proc.returncode == 0, proc.stderr
        assert f"is up to date (.mae-install-{_hash()}-ds1-dev1)" in proc.stdout
    assert "-m pip" not in (venv / "calls.log").read_text()  # nothing installed


def test_the_test_command_installs_the_openmmlab_stack_only_when_asked(tmp_path):
    venv = _stub_venv(tmp_path / "venv")
    proc = _run("test.sh", "tests/test_layers.py", env={"MAE_VENV": str(venv)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = (venv / "calls.log").read_text()
    assert "[dev,slurm]" in calls and "[downstream]" not in calls and "python - 2.1.0" not in calls
    assert "-m pytest -q tests/test_layers.py [require=]" in calls
    assert "is ignored" not in proc.stdout + proc.stderr
    assert (venv / f".mae-install-{_hash()}-ds0-dev1").is_file()

    (venv / "calls.log").unlink()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "mmcv-2.1.0-cp311-cp311-linux_x86_64.whl").touch()
    proc = _run("test.sh", "-k", "x", env={"MAE_VENV": str(venv), "MAE_INSTALL_ARGS": "--downstream",
                                           "MAE_MMCV_WHEEL_DIR": str(wheels), "MAE_WHEEL_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = (venv / "calls.log").read_text()
    assert "python - 2.1.0" in calls and "[downstream]" in calls  # the stack checked, then installed ...
    assert "-m pytest -q -k x [require=1]" in calls  # ... and its tests must run: a missing stack fails them
    assert "is ignored" not in proc.stdout + proc.stderr
    assert (venv / f".mae-install-{_hash()}-ds1-dev1").is_file()


def test_install_mmcv_takes_a_matching_prebuilt_wheel_quietly(tmp_path):
    venv = _stub_venv(tmp_path / "venv")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "mmcv-2.1.0-cp311-cp311-linux_x86_64.whl").touch()
    proc = _run("install_mmcv.sh", str(venv), env={"MAE_MMCV_WHEEL_DIR": str(wheels),
                                                   "MAE_WHEEL_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mmcv 2.1.0 with ops installed from the prebuilt wheel" in proc.stdout
    assert "is ignored" not in proc.stdout + proc.stderr  # pip.conf's missing index folders: not the user's concern


# ------------------------------------------------------------------------------ the downstream tests' one line
HIDE = '''
import sys
from importlib.abc import MetaPathFinder


class Hide(MetaPathFinder):  # a clone installed without --downstream
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mmcv", "mmdet", "mmseg", "mmengine", "pycocotools"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, Hide())
'''


def _pytest_without_the_stack(tmp_path: Path, *extra_env: tuple[str, str]) -> subprocess.CompletedProcess:
    hide = tmp_path / "hide"
    hide.mkdir(exist_ok=True)
    (hide / "sitecustomize.py").write_text(HIDE)
    env = {**os.environ, "PYTHONPATH": str(hide), "OMP_NUM_THREADS": "1", **dict(extra_env)}
    env.pop("MAE_REQUIRE_DOWNSTREAM", None)
    env.update(dict(extra_env))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider",
                           "tests/test_downstream_optim.py", "tests/test_downstream_backbone.py",
                           "tests/test_downstream_plan.py"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_without_the_stack_its_tests_skip_in_one_line_naming_the_install(tmp_path):
    proc = _pytest_without_the_stack(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1, skipped
    assert "bash scripts/install.sh --downstream" in skipped[0] and "20+ min" in skipped[0]
    assert "MAE_INSTALL_ARGS=--downstream bash scripts/test.sh" in skipped[0]


def test_a_stack_asked_for_but_missing_fails_instead_of_skipping(tmp_path):
    proc = _pytest_without_the_stack(tmp_path, ("MAE_REQUIRE_DOWNSTREAM", "1"))
    assert proc.returncode != 0 and "MAE_REQUIRE_DOWNSTREAM=1 but the downstream stack" in proc.stdout


# -------------------------------------------------------------------------------------------- packaging
def test_building_the_package_prints_no_setuptools_warning(tmp_path):
    """downstream/configs holds mmengine config files, not a package: the build says nothing about it."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("mae", "reproduce", "downstream", "bench"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "absent from the `packages` configuration" not in proc.stdout + proc.stderr
    import zipfile
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "downstream/configs/coco_mask_rcnn_smoke.py" in names  # the configs still ship
    assert "reproduce/reference/table1a_decoder_depth.csv" in names
