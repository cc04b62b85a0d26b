import importlib.util
import sys
from pathlib import Path

import pytest
import torch

# helpers shared by test files (timm_suite, hub_server) live next to them
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def one_thread():
    """Every test runs on one thread: two OpenMP threads on a shared 2-core machine spin against
    each other (test_models.py: 50 s with two, 12 s with one), and one thread makes float32
    reductions run in one order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_close_at_scale(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    """float32 results of different kernels (a sliced conv vs the full one, channels_last vs NCHW)
    differ by rounding that grows with the values' magnitude and the accumulation length, not by
    a fixed absolute amount: compare with an absolute tolerance at the scale of the values.
    rtol 1e-4 of max|expected| is ~800 float32 ulps: rounding stays well below it on any CPU,
    while any slicing or gating mistake moves logits by O(1) of their scale."""
    scale = float(expected.detach().abs().max()) if expected.numel() else 1.
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-6))


def randomised(name: str = 'coded_resnext17_10x2d', seed: int = 0, **kwargs) -> torch.nn.Module:
    """A model with random weights AND non-trivial BN statistics/affines (zero-init gammas undone),
    in eval mode: what a trained network looks like to tests of slicing, decoding and reports."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def load_script(path: Path, name: str = ''):
    """A script that is not a module of the package (benchmarks/, scripts/), imported from its file."""
    spec = importlib.util.spec_from_file_location(name or f'_under_test_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
