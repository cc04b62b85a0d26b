import sys
from pathlib import Path

import pytest
import torch

# helpers shared by test files (timm_suite, hub_server) live next to them
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def one_thread():
    """Two OpenMP threads on a shared 2-core machine spin against each other; one is faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
