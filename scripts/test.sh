#!/usr/bin/env bash
# The project's test command (README, tox and CI call this):
#   bash scripts/test.sh [pytest args]
# Sets up the environment with scripts/install.sh (reused when the dependency files are unchanged),
# then runs the whole CPU test suite. The OpenMMLab stack (mmcv with compiled ops, mmdet, mmseg) is
# installed only when asked, since without a prebuilt mmcv wheel it compiles mmcv (20+ min on 2 cores):
#   MAE_INSTALL_ARGS=--downstream bash scripts/test.sh      (what CI runs: .ci/run)
# Without it the downstream tests skip, in one line naming that command; a venv that has the stack
# already (installed with --downstream before) runs them. With it, a stack that does not import is a
# test failure, not a skip (MAE_REQUIRE_DOWNSTREAM=1, tests/_openmmlab.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MAE_VENV="${MAE_VENV:-$ROOT/.venv}"
# shellcheck disable=SC2086  # MAE_INSTALL_ARGS holds install.sh options, split on spaces
bash "$ROOT/scripts/install.sh" ${MAE_INSTALL_ARGS-}
case " ${MAE_INSTALL_ARGS-} " in
  *" --downstream "*) export MAE_REQUIRE_DOWNSTREAM="${MAE_REQUIRE_DOWNSTREAM:-1}" ;;
esac
cd "$ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" MPLBACKEND=Agg
exec "$MAE_VENV/bin/python" -m pytest -q "$@"
