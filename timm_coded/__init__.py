"""timm-coded: Coded ResNeXt (Avranas & Kountouris, arXiv 2202.05343) for timm.

Importing this package registers the `coded_*` models (and their per-class `*_binary`
classifiers) with timm: at once if timm is already imported, else the moment it is. An installed
start-up hook does the same whenever `timm` is imported, and makes timm's training tasks add the
coding loss (see `timm_coded.training`).

The public names below load on first use (PEP 562), so `import timm_coded` and the `timm-coded`
command line cost no torch import until a model, a tensor or a command needs one.
"""
import importlib
import sys

__version__ = '0.1.0'

# public name -> submodule that defines it
_EXPORTS = {
    'CodingScheme': 'codes', 'builtin_scheme': 'codes', 'generate_scheme': 'codes',
    'list_builtin_schemes': 'codes', 'load_scheme': 'codes',
    'CheckpointMismatchError': 'errors', 'DataError': 'errors', 'IntegrityError': 'errors',
    'ManifestError': 'errors', 'NotCodedError': 'errors', 'SchemeError': 'errors', 'TimmCodedError': 'errors',
    'UnknownClassError': 'errors',
    'CodedBottleneck': 'layers', 'EnergyRecorder': 'layers', 'coded_blocks': 'layers', 'record_energies': 'layers',
    'CodedResNeXt': 'coded_resnext', 'MODEL_ARCHS': 'coded_resnext',
    'CodedBinaryClassifier': 'binary', 'calibrate_threshold': 'binary', 'load_checkpoint': 'binary',
    'slice_binary': 'binary',
    'CodedClassificationTask': 'training', 'CodingLoss': 'training',
    'load_binary_classifier': 'hub',
}
# the modules whose import registers models with timm
_REGISTERING_MODULES = ('coded_resnext', 'binary')

__all__ = sorted(_EXPORTS) + ['register_models', '__version__']


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f'{__name__}.{module}'), name)
        globals()[name] = value
        return value
    try:  # submodules as attributes (timm_coded.energy, timm_coded.codes, ...)
        return importlib.import_module(f'{__name__}.{name}')
    except ModuleNotFoundError as e:
        if e.name != f'{__name__}.{name}':
            raise
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


def register_models() -> None:
    """Register every coded model with timm now (imports torch and timm)."""
    for module in _REGISTERING_MODULES:
        importlib.import_module(f'{__name__}.{module}')


def _register_when_timm_is_imported() -> None:
    from . import _autoload  # standard library only

    timm = sys.modules.get('timm')
    spec = getattr(timm, '__spec__', None)
    # timm's module body has run (its import finished, or the start-up hook is reacting to it)
    if timm is not None and (not getattr(spec, '_initializing', False) or _autoload.timm_loaded()):
        register_models()
    else:  # timm not imported yet: register the moment it is
        _autoload.on_timm_imported(register_models)


_register_when_timm_is_imported()
