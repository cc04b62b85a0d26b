"""The package layout: the first release's module paths still lead to the modules that replaced them."""
import importlib
import sys
import warnings

import pytest

import timm_coded

MOVED = sorted(timm_coded._MOVED_MODULES.items())


@pytest.mark.parametrize('old, new', MOVED)
def test_old_module_paths_are_the_new_modules_and_say_where_they_went(old, new):
    sys.modules.pop(f'timm_coded.{old}', None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        module = importlib.import_module(f'timm_coded.{old}')
    assert module is importlib.import_module(f'timm_coded.{new}')
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert messages == [f'timm_coded.{old} moved to timm_coded.{new}; the old path will be removed']


def test_an_unknown_module_is_still_not_found():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module('timm_coded.no_such_module')
