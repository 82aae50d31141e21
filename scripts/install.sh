#!/usr/bin/env bash
# One install script for the README, tox and CI.
#
#   bash scripts/install.sh [--venv DIR] [--downstream] [--no-dev] [--print-hash]
#
# Creates (or reuses) a virtual environment, installs torch==2.14.1 + torchvision==0.29.1
# (pinned exactly), the project (editable) and its extras. With --downstream it also installs
# the OpenMMLab stack: mmcv 2.1.0 with ops (a prebuilt wheel from ../shared/wheels or
# $MAE_MMCV_WHEEL_DIR when one matches this Python/torch, otherwise built from the sdist:
# 20+ min on 2 cores), mmengine, mmdet 3.3.0 and mmsegmentation 1.2.2.
#
# The environment records a hash of the dependency files; a rerun with the same hash and the
# same options (or fewer: a --downstream venv serves a plain request) does nothing, so CI can
# keep its venv outside the clone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MAE_VENV:-$ROOT/.venv}"
DOWNSTREAM=0
DEV=1
PRINT_HASH=0
PYTHON="${PYTHON:-python3}"
TORCH_PIN="torch==2.14.1"
TORCHVISION_PIN="torchvision==0.29.1"
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) VENV="$2"; shift 2 ;;
    --downstream) DOWNSTREAM=1; shift ;;
    --no-dev) DEV=0; shift ;;
    --python) PYTHON="$2"; shift 2 ;;
    --print-hash) PRINT_HASH=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

hash_deps() {
  local f
  for f in "$ROOT/pyproject.toml" "$ROOT/scripts/install.sh" "$ROOT/scripts/install_mmcv.sh"; do
    if [ -f "$f" ]; then cat "$f"; fi
  done | sha256sum | cut -c1-16
}
if [ "$PRINT_HASH" = 1 ]; then hash_deps; exit 0; fi
HASH="$(hash_deps)"
STAMP="$VENV/.mae-install-$HASH-ds$DOWNSTREAM-dev$DEV"
# a venv installed with more (the OpenMMLab stack, the dev extras) serves a request for less: `bash scripts/test.sh`
# (no --downstream) reuses CI's or a user's --downstream venv as it is, OpenMMLab stack and all
FOUND=""
for ds in "$DOWNSTREAM" 1; do
  for dev in "$DEV" 1; do
    if [ -z "$FOUND" ] && [ -f "$VENV/.mae-install-$HASH-ds$ds-dev$dev" ]; then FOUND="$VENV/.mae-install-$HASH-ds$ds-dev$dev"; fi
  done
done
if [ -n "$FOUND" ]; then
  echo "[install] $VENV is up to date ($(basename "$FOUND"))"
  # editable install points at this checkout; re-point it when the venv is shared between clones
  # (-I and cd /: neither this folder nor PYTHONPATH may stand in for the installed packages)
  if ! (cd / && "$VENV/bin/python" -I -c "
import sys, bench, downstream, mae, reproduce
sys.exit(0 if all(m.__file__.startswith('$ROOT/') for m in (bench, downstream, mae, reproduce)) else 1)") 2>/dev/null; then
    echo "[install] re-pointing the editable install at $ROOT"
    "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT"
  fi
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# pip, minus two kinds of noise: the warnings about index locations a machine's pip.conf names but lacks
# ("WARNING: Location '...' is ignored: ..."), and setuptools' advice block on editable installs ("Please be
# careful with folders in your working directory ...")
pip_quiet() {
  "$VENV/bin/python" -m pip "$@" 2>&1 | { grep --line-buffered -v -E "^WARNING: Location '.*' is ignored: " || true; } \
    | awk '/BuildBackendWarning: Editable installation/ {skip = 1} skip && /with strategy, WheelFile/ {skip = 0; next} !skip {print; fflush()}'
  return "${PIPESTATUS[0]}"
}
PIP=(pip_quiet)
"${PIP[@]}" install -q --upgrade "pip>=24" "setuptools>=77" wheel
echo "[install] $TORCH_PIN $TORCHVISION_PIN"
"${PIP[@]}" install -q "$TORCH_PIN" "$TORCHVISION_PIN"
EXTRAS="slurm"
[ "$DEV" = 1 ] && EXTRAS="dev,$EXTRAS"
echo "[install] mae-harness [$EXTRAS] (editable)"
"${PIP[@]}" install -q -e "$ROOT[$EXTRAS]" "$TORCH_PIN" "$TORCHVISION_PIN"
if [ "$DOWNSTREAM" = 1 ]; then
  bash "$ROOT/scripts/install_mmcv.sh" "$VENV"
  "${PIP[@]}" install -q -e "$ROOT[downstream]" "$TORCH_PIN" "$TORCHVISION_PIN" "setuptools>=77"
fi
rm -f "$VENV"/.mae-install-*
touch "$STAMP"
echo "[install] done: $VENV"
