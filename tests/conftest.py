import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def smoke_model():
    from mae.models import create_mae
    torch.manual_seed(0)
    return create_mae("mae_vit_smoke")
