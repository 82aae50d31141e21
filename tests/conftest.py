import os

# in-process runs keep a fixed thread count (bitwise resume tests; mae/engine/threads.py): no governor, short spin
os.environ.setdefault("MAE_THREAD_GOVERNOR", "off")
import mae  # noqa: F401  - first: sets the OpenMP wait policy before torch loads (mae/engine/threads.py)
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))



@pytest.fixture
def one_thread():
    """torch on one thread during the test, the count restored after (a module that set it at import time would
    leave it for every later test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def smoke_model():
    from mae.models import create_mae
    torch.manual_seed(0)
    return create_mae("mae_vit_smoke")


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """An MAE pre-training checkpoint of the smoke preset in the official layout ({'model': sd})."""
    from mae.models import create_mae
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pre") / "mae.pth"
    torch.save({"model": create_mae("mae_vit_smoke").state_dict()}, path)
    return path
