#!/usr/bin/env bash
# The project's test command (README, tox and CI call this):
#   bash scripts/test.sh [pytest args]
# Sets up the environment with scripts/install.sh --downstream (reused when the dependency files are
# unchanged; MAE_INSTALL_ARGS="" skips the OpenMMLab stack, whose tests then skip),
# then runs the whole CPU test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MAE_VENV="${MAE_VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/install.sh" ${MAE_INSTALL_ARGS---downstream}
cd "$ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" MPLBACKEND=Agg
exec "$MAE_VENV/bin/python" -m pytest -q "$@"
