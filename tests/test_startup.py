"""What a process pays for timm-coded: --help, argument errors and `schemes` never import torch;
`import timm_coded` registers the models whichever of timm / timm_coded is imported first."""
import os
import subprocess
import sys

import pytest

HEAVY = ('torch', 'timm', 'matplotlib', 'huggingface_hub')


def _python(code: str, autoload: str = '1') -> str:
    env = dict(os.environ, TIMM_CODED_AUTOLOAD=autoload)
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize('argv', [['--help'], ['schemes', 'list'], ['schemes', 'show', 'k10_n10_a5'],
                                  ['demo', '--epochs', 'x'], ['nonsense'], ['extract', '--help']])
def test_cli_answers_without_heavy_imports(argv):
    code = ('import sys\nfrom timm_coded.cli import main\n'
            f'try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n'
            f'print(sorted(m for m in {HEAVY!r} if m in sys.modules))')
    assert _python(code).splitlines()[-1] == '[]'


@pytest.mark.parametrize('autoload', ['1', '0'])
@pytest.mark.parametrize('order', ['import timm_coded, timm', 'import timm, timm_coded'])
def test_import_timm_coded_registers_the_models_in_either_order(order, autoload):
    out = _python(f'{order}\nprint(len(timm.list_models("coded_*")), timm.is_model("coded_resnext50"))', autoload)
    count, alias_registered = out.splitlines()[-1].split()
    assert int(count) >= 9 and alias_registered == 'True'


def test_import_timm_coded_alone_imports_no_torch():
    assert _python('import sys, timm_coded\nprint("torch" in sys.modules)').splitlines()[-1] == 'False'


@pytest.mark.parametrize('first', ['timm_coded.data.tensor', 'timm_coded.models.layers', 'timm_coded.data',
                                   'timm_coded.models.binary', 'timm_coded.training.trainer'])
def test_a_submodule_imported_first_does_not_break_registration(first):
    # the submodule imports timm half-way through its own import; registering at that moment
    # would re-import it half-initialised (ImportError: cannot import name ...)
    done = subprocess.run([sys.executable, '-c', f'import {first}, timm\n'
                           'print(timm.is_model("coded_resnext50"), timm.is_model("coded_resnext17_10x2d_binary"))'],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and 'hook failed' not in done.stderr, done.stderr
    assert done.stdout.split()[-2:] == ['True', 'True']
