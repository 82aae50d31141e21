"""Shared guard for tests of the downstream stack (OpenMMLab + pycocotools: ``scripts/install.sh --downstream``).

``bash scripts/test.sh`` does not install that stack (without a prebuilt mmcv wheel it compiles mmcv for 20+
minutes), so the tests that need it skip. Every skip is raised by the one call below with the one reason, so
``pytest -ra`` folds them into a single line that names the install command. ``MAE_REQUIRE_DOWNSTREAM=1``
(set by ``MAE_INSTALL_ARGS=--downstream bash scripts/test.sh``, as CI runs it) makes a missing stack a failure.
"""
from __future__ import annotations

import functools
import os

import pytest

INSTALL_HINT = ("install it with `bash scripts/install.sh --downstream` (about a minute with a matching prebuilt "
                "mmcv wheel in ../shared/wheels or $MAE_MMCV_WHEEL_DIR; otherwise mmcv is compiled, 20+ min on 2 "
                "cores), or run `MAE_INSTALL_ARGS=--downstream bash scripts/test.sh`")


@functools.cache
def missing() -> str | None:
    """Why the downstream stack cannot be used here (the first failing import), or None when it can."""
    try:
        import mmcv.ops  # noqa: F401  (the compiled ops: fails with "undefined symbol" when built for another torch)
        import mmdet  # noqa: F401
        import mmengine  # noqa: F401
        import mmseg  # noqa: F401
        import pycocotools.mask  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a broken build raises more than ImportError
        return f"{type(e).__name__}: {e}"
    return None


def require_openmmlab() -> None:
    """Skip the calling test (or, called at import time, its module) unless the downstream stack imports."""
    why = missing()
    if why is None:
        return
    message = f"downstream stack (mmcv with ops, mmdet, mmseg, pycocotools) not installed ({why}); {INSTALL_HINT}"
    if os.environ.get("MAE_REQUIRE_DOWNSTREAM") == "1":
        pytest.fail(f"MAE_REQUIRE_DOWNSTREAM=1 but the {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)
