#!/usr/bin/env bash
# Install mmcv 2.1.0 *with its compiled ops* (mmcv.ops: RoIAlign, NMS, ...) into a venv.
#
#   bash scripts/install_mmcv.sh VENV
#
# Called by `scripts/install.sh --downstream`. PyPI only has an sdist of mmcv 2.1.0 and
# OpenMMLab's prebuilt wheels do not cover torch 2.14, so the choice is:
#   1. mmcv 2.1.0 with ops already importable in VENV          -> nothing to do;
#   2. a prebuilt wheel in ${MAE_MMCV_WHEEL_DIR:-<repo>/../shared/wheels} whose Python tag
#      and platform match and whose torch (MAE_MMCV_WHEEL_TORCH, default 2.14.1, the torch
#      those wheels were built against) equals VENV's torch   -> install it;
#   3. a wheel built earlier by this script for the same Python / torch / CPU-or-CUDA flavour,
#      cached in ${MAE_WHEEL_CACHE:-$HOME/.cache/mae-wheels}   -> install it;
#   4. otherwise build from the sdist (see ../shared/wheels/README.md): setuptools<70 (mmcv's
#      setup.py imports pkg_resources), every -std=c++14/17 raised to -std=c++20 (torch 2.14's
#      headers demand C++20), MMCV_WITH_OPS=1, MAX_JOBS=nproc, --no-build-isolation; CUDA ops
#      are compiled when nvcc and a GPU are present (for the visible GPU's architecture unless
#      TORCH_CUDA_ARCH_LIST says otherwise). The wheel is cached for step 3.
# setuptools>=77 is restored at the end whatever happened (torch 2.14.1 asks for it).
# A prebuilt CPU-only wheel is skipped when a GPU + nvcc are present (mmcv's CPU ops cannot run
# RoIAlign on CUDA tensors); set MAE_MMCV_ALLOW_CPU_WHEEL=1 to take it anyway.
set -euo pipefail

if [ $# -ne 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,21p' "$0"
  [ $# -eq 1 ] && exit 0 || exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$1"
PY="$VENV/bin/python"
MMCV_VERSION="2.1.0"
WHEEL_DIR="${MAE_MMCV_WHEEL_DIR:-$ROOT/../shared/wheels}"
WHEEL_TORCH="${MAE_MMCV_WHEEL_TORCH:-2.14.1}"
CACHE_ROOT="${MAE_WHEEL_CACHE:-$HOME/.cache/mae-wheels}"
log() { echo "[install_mmcv] $*"; }
# pip, minus the warnings about index locations a machine's pip.conf names but lacks (as scripts/install.sh)
pip_quiet() {
  "$PY" -m pip "$@" 2>&1 | { grep --line-buffered -v -E "^WARNING: Location '.*' is ignored: " || true; }
  return "${PIPESTATUS[0]}"
}
die() { echo "[install_mmcv] ERROR: $*" >&2; exit 1; }

[ -x "$PY" ] || die "no python at $PY (create the venv first: bash scripts/install.sh --venv $VENV)"

# mmcv with ops importable and the compiled extension loadable (import mmcv.ops loads mmcv._ext)
mmcv_ok() {
  "$PY" - "$MMCV_VERSION" <<'EOF' >/dev/null 2>&1
import sys
import mmcv
assert mmcv.__version__ == sys.argv[1], mmcv.__version__
import mmcv.ops  # noqa: F401  (fails with "undefined symbol" when built for another torch)
EOF
}

if mmcv_ok; then
  log "mmcv $MMCV_VERSION with ops is already importable in $VENV: nothing to do"
  exit 0
fi

read -r PYTAG PLAT TORCH_VER CUDA_FLAVOUR HAVE_GPU < <("$PY" - <<'EOF'
import sys, sysconfig
try:
    import torch
except ImportError:
    print("cp%d%d" % sys.version_info[:2], "none", "none", "none", 0)
    raise SystemExit
plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
ver = torch.__version__.split("+")[0]
cuda = ("cu" + torch.version.cuda.replace(".", "")) if torch.version.cuda else "cpu"
print("cp%d%d" % sys.version_info[:2], plat, ver, cuda, int(torch.cuda.is_available()))
EOF
)
[ "$TORCH_VER" != "none" ] || die "torch is not installed in $VENV; install torch==2.14.1 first (scripts/install.sh does)"
HAVE_NVCC=0
if command -v nvcc >/dev/null 2>&1 || [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then HAVE_NVCC=1; fi
WITH_CUDA=0
if [ "$HAVE_GPU" = 1 ] && [ "$HAVE_NVCC" = 1 ] && [ "$CUDA_FLAVOUR" != "cpu" ]; then WITH_CUDA=1; fi
FLAVOUR="cpu"
[ "$WITH_CUDA" = 1 ] && FLAVOUR="$CUDA_FLAVOUR"
log "venv $VENV: python $PYTAG, platform $PLAT, torch $TORCH_VER ($CUDA_FLAVOUR), GPU=$HAVE_GPU, nvcc=$HAVE_NVCC -> ops flavour: $FLAVOUR"

# Install one wheel file and check that its ops load; on failure uninstall it and return 1.
try_wheel() {
  local whl="$1" what="$2"
  log "installing $what: $whl"
  if ! pip_quiet install -q "$whl"; then
    log "pip could not install $whl"
    return 1
  fi
  if mmcv_ok; then
    log "mmcv $MMCV_VERSION with ops installed from $what"
    return 0
  fi
  log "$what installed but 'import mmcv.ops' fails (built for another torch/python?); removing it"
  pip_quiet uninstall -y -q mmcv || true
  return 1
}

# --- 2. prebuilt wheel -------------------------------------------------------------------
PREBUILT="$WHEEL_DIR/mmcv-$MMCV_VERSION-$PYTAG-$PYTAG-$PLAT.whl"
if [ ! -f "$PREBUILT" ]; then
  log "no prebuilt wheel $PREBUILT"
elif [ "$TORCH_VER" != "$WHEEL_TORCH" ]; then
  log "prebuilt wheel $PREBUILT is for torch $WHEEL_TORCH, this venv has torch $TORCH_VER: not using it"
elif [ "$WITH_CUDA" = 1 ] && [ "${MAE_MMCV_ALLOW_CPU_WHEEL:-0}" != 1 ]; then
  log "prebuilt wheel $PREBUILT has CPU ops only and a GPU + nvcc are present: building CUDA ops instead" \
      "(MAE_MMCV_ALLOW_CPU_WHEEL=1 to take the CPU wheel)"
elif try_wheel "$PREBUILT" "the prebuilt wheel"; then
  exit 0
fi

# --- 3. cached wheel from an earlier build -------------------------------------------------
CACHE_DIR="$CACHE_ROOT/mmcv-$MMCV_VERSION/$PYTAG-torch$TORCH_VER-$FLAVOUR"
shopt -s nullglob
cached=("$CACHE_DIR"/mmcv-"$MMCV_VERSION"-*.whl)
shopt -u nullglob
if [ ${#cached[@]} -gt 0 ]; then
  if try_wheel "${cached[0]}" "the cached wheel"; then
    exit 0
  fi
  log "dropping the unusable cached wheel ${cached[0]}"
  rm -f "${cached[0]}"
else
  log "no cached wheel in $CACHE_DIR"
fi

# --- 4. build from the sdist ----------------------------------------------------------------
BUILD_DIR="$(mktemp -d "${TMPDIR:-/tmp}/mmcv-build.XXXXXX")"
restore_setuptools() {
  log "restoring setuptools>=77"
  pip_quiet install -q "setuptools>=77" || echo "[install_mmcv] WARNING: could not restore setuptools>=77" >&2
  rm -rf "$BUILD_DIR"
}
trap restore_setuptools EXIT
JOBS="$(nproc)"
log "building mmcv $MMCV_VERSION from the sdist ($FLAVOUR ops, MAX_JOBS=$JOBS; ~20 min on 2 cores, longer with CUDA)"
pip_quiet install -q "torch==$TORCH_VER" wheel ninja mmengine \
  || die "could not install the build requirements (wheel ninja mmengine) beside torch $TORCH_VER"
# torch 2.14.1 declares setuptools>=77, so the resolver refuses setuptools<70 beside it: install it
# without resolution for the build only (restored on exit)
pip_quiet install -q --no-deps "setuptools<70" \
  || die "could not install setuptools<70 (mmcv $MMCV_VERSION's setup.py needs pkg_resources)"
pip_quiet download -q --no-deps --no-binary :all: --no-build-isolation -d "$BUILD_DIR" "mmcv==$MMCV_VERSION" \
  || die "could not download the mmcv $MMCV_VERSION sdist from the package index"
SDIST="$(ls "$BUILD_DIR"/mmcv-"$MMCV_VERSION".tar.gz 2>/dev/null || true)"
[ -n "$SDIST" ] || die "pip download did not produce mmcv-$MMCV_VERSION.tar.gz in $BUILD_DIR"
tar -xzf "$SDIST" -C "$BUILD_DIR"
SRC="$BUILD_DIR/mmcv-$MMCV_VERSION"
n_std="$(grep -c -E -- '-std=c\+\+1[47]' "$SRC/setup.py" || true)"
[ "$n_std" -gt 0 ] || die "found no -std=c++14/17 flag in $SRC/setup.py: the sdist changed, check the build by hand"
sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$SRC/setup.py"
log "raised $n_std -std flag line(s) in setup.py to -std=c++20"
export MMCV_WITH_OPS=1 MAX_JOBS="$JOBS"
if [ "$WITH_CUDA" = 1 ]; then
  export FORCE_CUDA=1
else
  # mmcv's setup.py compiles CUDA sources whenever torch sees a GPU; hide it when nvcc is missing
  export CUDA_VISIBLE_DEVICES=""
fi
mkdir -p "$CACHE_DIR"
(cd "$SRC" && pip_quiet wheel --no-deps --no-build-isolation -w "$CACHE_DIR" .) \
  || die "building mmcv $MMCV_VERSION failed (compiler output above)"
shopt -s nullglob
built=("$CACHE_DIR"/mmcv-"$MMCV_VERSION"-*.whl)
shopt -u nullglob
[ ${#built[@]} -gt 0 ] || die "the build finished without a wheel in $CACHE_DIR"
log "cached the built wheel: ${built[0]}"
try_wheel "${built[0]}" "the freshly built wheel" || die "the freshly built wheel does not import (see messages above)"
