"""Build hooks: install `timm_coded_autoload.pth` into site-packages, for `pip install .` and
`pip install -e .` alike. Everything else is declared in pyproject.toml.

The .pth is the start-up hook that registers the coded models and the coding-loss tasks when
`timm` is imported (see timm_coded_autoload.py, which also holds the file's one line).
- Regular wheels: build_py writes it at the root of build_lib, which becomes the wheel's root
  (= site-packages).
- Editable wheels (PEP 660): setuptools' lenient editable strategies only ship their own
  `__editable__.*` finder/.pth, not build_lib, so the file is written into the unpacked editable
  wheel, where setuptools also puts the files that are installed as-is. It is processed after
  `__editable__.timm_coded-*.pth` (site reads .pth files in name order), so `timm_coded` is
  findable by then.
"""
import importlib.util
import os

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = os.path.dirname(os.path.abspath(__file__))


def _autoload_module():
    # Loaded by path: a build runs in an isolated environment where the project is not importable.
    path = os.path.join(HERE, 'timm_coded_autoload.py')
    spec = importlib.util.spec_from_file_location('_timm_coded_autoload_for_build', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_pth(directory: str) -> str:
    autoload = _autoload_module()
    path = os.path.join(directory, autoload.PTH_FILENAME)
    os.makedirs(directory, exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(autoload.PTH_LINE)
    return path


class BuildPyWithAutoload(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:
            _write_pth(self.build_lib)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if not self.editable_mode:
            outputs.append(os.path.join(self.build_lib, _autoload_module().PTH_FILENAME))
        return outputs


class EditableWheelWithAutoload(editable_wheel):
    def run(self):
        if not hasattr(editable_wheel, '_run_build_commands'):
            raise RuntimeError(
                'this setuptools has no editable_wheel._run_build_commands, so an editable install would '
                'miss timm_coded_autoload.pth; use a regular install (pip install .) or setuptools <= 84')
        super().run()

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        _write_pth(str(unpacked_wheel))
        return result


setup(cmdclass={'build_py': BuildPyWithAutoload, 'editable_wheel': EditableWheelWithAutoload})
