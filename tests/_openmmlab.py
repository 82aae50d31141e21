"""Shared guard for tests of the OpenMMLab stack (installed by scripts/install.sh --downstream)."""
import pytest


def require_openmmlab() -> None:
    """Skip the calling test module when mmcv (with ops), mmdet or mmseg cannot be imported."""
    try:
        import mmcv.ops  # noqa: F401
        import mmdet  # noqa: F401
        import mmseg  # noqa: F401
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"OpenMMLab stack not importable ({type(e).__name__}: {e}); "
                    "install it with: bash scripts/install.sh --downstream", allow_module_level=True)
