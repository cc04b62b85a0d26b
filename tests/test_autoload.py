"""The start-up hook: timm_coded_autoload.pth and timm_coded_autoload.py.

Each check runs a fresh interpreter. It starts with `-S` (no site processing, so an installed
copy of the hook in this environment cannot interfere), puts this environment's packages on
sys.path by hand, then processes a site dir holding the .pth exactly as Python's start-up does
(`site.addsitedir`). The packaging checks build real wheels from a copy of the project.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _autoload_module():
    # by path, as setup.py does: the module must work without the package being imported
    spec = importlib.util.spec_from_file_location('_autoload_under_test', REPO / 'timm_coded_autoload.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


AUTOLOAD = _autoload_module()


@pytest.fixture(scope='module')
def site_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp('site')
    (directory / AUTOLOAD.PTH_FILENAME).write_text(AUTOLOAD.PTH_LINE)
    return directory


def run_python(site_dir, code, env_extra=None, args=()):
    """Fresh interpreter: this env's packages + REPO on sys.path, then the .pth processed, then `code`."""
    prelude = (
        'import sys, site\n'
        f'sys.path[:0] = [{str(REPO)!r}]\n'
        f'sys.path.append({sysconfig.get_paths()["purelib"]!r})\n'
        f'site.addsitedir({str(site_dir)!r})\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(('TIMM_CODED', 'PYTHONPATH'))}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, '-S', *args, '-c', prelude + code], env=env, cwd=str(site_dir),
        capture_output=True, text=True, timeout=300)


def hook_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith('timm-coded')]


def test_pth_is_one_import_line():
    assert AUTOLOAD.PTH_LINE.endswith('\n') and AUTOLOAD.PTH_LINE.count('\n') == 1
    assert AUTOLOAD.PTH_LINE.startswith('import ')  # site only executes lines that start with "import"
    compile(AUTOLOAD.PTH_LINE, AUTOLOAD.PTH_FILENAME, 'exec')


def test_start_up_imports_neither_torch_nor_timm(site_dir):
    proc = run_python(site_dir, (
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'timm_coded', 'timm_coded_autoload', 'numpy')))\n"
        "print(type(sys.meta_path[0]).__name__)\n"
    ), args=('-X', 'importtime'))
    assert proc.returncode == 0, proc.stderr
    loaded, first_finder = proc.stdout.splitlines()
    assert loaded == "['timm_coded_autoload']"  # the hook only; the package (and torch) are not
    assert first_finder == '_ImportWatcher'
    imported = [line.split('|')[-1].strip() for line in proc.stderr.splitlines() if line.startswith('import time:')]
    assert imported and not any(name.split('.')[0] in ('torch', 'timm', 'numpy') for name in imported)
    assert hook_lines(proc.stderr) == []  # nothing said until timm is imported


def test_importing_timm_registers_models_and_coded_tasks_and_logs_one_line(site_dir):
    proc = run_python(site_dir, (
        "import timm\n"
        "from timm.task import ClassificationTask, MultiLabelClassificationTask\n"
        "import timm_coded, timm_coded.training as tr\n"
        "print(timm.list_models('coded_*'))\n"
        "print(ClassificationTask is tr.CodedClassificationTask, MultiLabelClassificationTask is tr.CodedMultiLabelClassificationTask)\n"
        "print(any(type(f).__name__ == '_ImportWatcher' for f in sys.meta_path), sys.modules['timm_coded_autoload'].__name__)\n"
        "import importlib; importlib.reload(timm)\n"  # a second import of timm: no second line
    ))
    assert proc.returncode == 0, proc.stderr
    models, tasks, watcher = proc.stdout.splitlines()
    assert 'coded_resnext29_10x11d' in models and 'coded_resnext17_10x2d' in models
    assert tasks == 'True True'
    assert watcher == 'False timm_coded_autoload'  # the watcher removed itself after activating
    lines = hook_lines(proc.stderr)
    assert len(lines) == 1 and 'coded_* models registered' in lines[0] and 'TIMM_CODED_AUTOLOAD=0' in lines[0]


def test_importing_timm_coded_first_activates_too(site_dir):
    # timm_coded imports timm half-way through its own import: activation waits for it to finish
    proc = run_python(site_dir, (
        "import timm_coded\n"
        "import timm.task, timm_coded.training as tr\n"
        "print(timm.task.ClassificationTask is tr.CodedClassificationTask, timm.is_model('coded_resnext50'))\n"
    ))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == 'True True'
    assert len(hook_lines(proc.stderr)) == 1


def test_environment_variable_turns_it_off(site_dir, monkeypatch):
    proc = run_python(site_dir, (
        "import timm, timm.task\n"
        "from timm.task.classification import ClassificationTask\n"
        "print(timm.list_models('coded_*'), timm.task.ClassificationTask is ClassificationTask, "
        "any(type(f).__name__ == '_ImportWatcher' for f in sys.meta_path))\n"
    ), env_extra={'TIMM_CODED_AUTOLOAD': '0'})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '[] True False'
    assert hook_lines(proc.stderr) == []
    for value, on in (('off', False), (' False ', False), ('no', False), ('1', True), ('', True)):
        monkeypatch.setenv('TIMM_CODED_AUTOLOAD', value)
        assert AUTOLOAD.enabled() is on
        if not on:
            assert AUTOLOAD.install() is False


def test_a_broken_package_does_not_break_import_timm(site_dir, tmp_path):
    broken = tmp_path / 'timm_coded'
    broken.mkdir()
    (broken / '__init__.py').write_text("raise RuntimeError('simulated broken install')\n")
    proc = run_python(site_dir, (
        f"sys.path.insert(0, {str(tmp_path)!r})\n"  # after the .pth ran: the hook found the real package
        "sys.modules.pop('timm_coded', None)\n"
        "import timm\n"
        "print(timm.is_model('coded_resnext50'))\n"
    ))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == 'False'
    lines = hook_lines(proc.stderr)
    assert len(lines) == 1 and 'start-up hook failed' in lines[0] and 'simulated broken install' in lines[0]


# --- packaging: the .pth must land in site-packages for `pip install .` and `pip install -e .` ------------
@pytest.fixture(scope='module')
def project_copy(tmp_path_factory):
    pytest.importorskip('setuptools')
    root = tmp_path_factory.mktemp('project')
    for name in ('pyproject.toml', 'setup.py', 'README.md', 'LICENSE', 'timm_coded_autoload.py'):
        if (REPO / name).exists():
            shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / 'timm_coded', root / 'timm_coded', ignore=shutil.ignore_patterns('__pycache__'))
    return root


def _build(project, hook, out_dir):
    code = f"from setuptools import build_meta; print(build_meta.{hook}({str(out_dir)!r}))"
    proc = subprocess.run([sys.executable, '-c', code], cwd=str(project), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out_dir / proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize('hook', ['build_wheel', 'build_editable'])
def test_wheels_install_the_pth_into_site_packages(project_copy, tmp_path, hook):
    wheel = _build(project_copy, hook, tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert AUTOLOAD.PTH_FILENAME in names  # wheel root = site-packages
        assert zf.read(AUTOLOAD.PTH_FILENAME).decode() == AUTOLOAD.PTH_LINE
        record = zf.read(next(n for n in names if n.endswith('.dist-info/RECORD'))).decode()
        assert f'{AUTOLOAD.PTH_FILENAME},sha256=' in record
        if hook == 'build_editable':
            # site reads .pth files in name order: setuptools' editable finder must come first
            editable_pth = [n for n in names if n.startswith('__editable__') and n.endswith('.pth')]
            assert editable_pth and sorted(editable_pth + [AUTOLOAD.PTH_FILENAME])[-1] == AUTOLOAD.PTH_FILENAME
        else:
            assert 'timm_coded_autoload.py' in names and 'timm_coded/training/loss.py' in names
