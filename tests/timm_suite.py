"""Locate (or fetch from the package registry) the tests/ folder of the installed timm release.

timm's wheel has no tests; its source distribution does. `dev.py test` fetches it into
`.cache/timm-src/`; tests that call timm's own test functions import them from there.
"""
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import timm

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / '.cache' / 'timm-src'


def timm_tests_dir(fetch: bool = True) -> Path:
    """`<cache>/timm-<version>/tests`, downloading `timm==<installed>` sdist once if asked."""
    version = timm.__version__
    tests = Path(os.environ.get('TIMM_TESTS_DIR', CACHE / f'timm-{version}' / 'tests'))
    if (tests / 'test_models.py').is_file() or not fetch:
        return tests
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:',
             f'timm=={version}', '-d', tmp], check=True)
        archive = next(Path(tmp).glob('timm-*.tar.gz'))
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(f'timm-{version}/tests/')]
            tar.extractall(tmp, members=members, filter='data')
        (Path(tmp) / f'timm-{version}').rename(CACHE / f'timm-{version}')
    return tests


def load_timm_test_models(fetch: bool = True):
    """timm's tests/test_models.py as a module (its test functions are plain callables)."""
    path = timm_tests_dir(fetch) / 'test_models.py'
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location('timm_upstream_test_models', path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.parent))  # its `from tests...` style imports, if any
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module


if __name__ == '__main__':
    print(timm_tests_dir())
