"""Build hooks: install `timm_coded_autoload.pth` into site-packages, for `pip install .` and
`pip install -e .` alike. Everything else is declared in pyproject.toml.

The .pth is the start-up hook that registers the coded models and the coding-loss tasks when
`timm` is imported (see timm_coded_autoload.py, which also holds the file's one line).
- Regular wheels: build_py writes it at the root of build_lib, which becomes the wheel's root
  (= site-packages).
- Editable wheels (PEP 660): setuptools' editable strategies ship only their own
  `__editable__.*` finder/.pth, not build_lib, so once setuptools has built the editable wheel the
  file is added to it (with its RECORD line). It is processed after
  `__editable__.timm_coded-*.pth` (site reads .pth files in name order), so `timm_coded_autoload`
  is importable by then. Only public command APIs are used (run, dist_dir).
"""
import base64
import glob
import hashlib
import importlib.util
import os
import zipfile

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


def _add_to_wheel(wheel: str, name: str, data: bytes) -> None:
    """Add a file at the root of a built wheel and its line to the wheel's RECORD."""
    tmp = wheel + '.tmp'
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, 'w', zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith('.dist-info/RECORD'))
        for info in src.infolist():
            if info.filename != record_name:
                dst.writestr(info, src.read(info.filename))
        dst.writestr(name, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
        record = src.read(record_name).decode().rstrip('\n') + f'\n{name},sha256={digest},{len(data)}\n'
        dst.writestr(record_name, record)
    os.replace(tmp, wheel)


class EditableWheelWithAutoload(editable_wheel):
    def run(self):
        super().run()
        wheels = glob.glob(os.path.join(self.dist_dir, '*.whl'))
        if not wheels:
            raise RuntimeError(f'no editable wheel in {self.dist_dir}: cannot add timm_coded_autoload.pth')
        autoload = _autoload_module()
        _add_to_wheel(max(wheels, key=os.path.getmtime), autoload.PTH_FILENAME, autoload.PTH_LINE.encode())


setup(cmdclass={'build_py': BuildPyWithAutoload, 'editable_wheel': EditableWheelWithAutoload})
