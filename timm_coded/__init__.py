"""timm-coded: Coded ResNeXt (Avranas & Kountouris, arXiv 2202.05343) for timm.

Importing this package registers the `coded_*` models (with their per-class `*_binary` and
class-subset `*_subset` classifiers) with timm: at once if timm is already imported, else the
moment it is. An installed start-up hook does the same whenever `timm` is imported, and makes timm's training tasks add the
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
    'CodedBottleneck': 'models.layers', 'EnergyRecorder': 'models.layers', 'coded_blocks': 'models.layers',
    'record_energies': 'models.layers',
    'CodedResNeXt': 'models.coded_resnext', 'MODEL_ARCHS': 'models.coded_resnext',
    'CodedBinaryClassifier': 'models.binary', 'calibrate_threshold': 'models.binary',
    'load_checkpoint': 'models.binary', 'slice_binary': 'models.binary',
    'CodedSubsetClassifier': 'models.subset', 'slice_subset': 'models.subset',
    'CodedClassificationTask': 'training.loss', 'CodingLoss': 'training.loss',
    'load_binary_classifier': 'hub.download',
}
# the modules whose import registers models with timm
_REGISTERING_MODULES = ('models.coded_resnext', 'models.binary', 'models.subset')
# Modules of the first release (a flat package) -> where they live now. `import timm_coded.layers`
# and friends keep working (the module is the new one) and warn once with the new name.
_MOVED_MODULES = {
    'layers': 'models.layers', 'coded_resnext': 'models.coded_resnext', 'binary': 'models.binary',
    'trainer': 'training.trainer', 'decoding': 'analysis.decoding', 'evaluation': 'analysis.evaluation',
    'plots': 'analysis.plots', 'manifest': 'hub.manifest', 'extraction': 'pipeline', 'tensor_data': 'data.tensor',
}

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


class _MovedModuleFinder:
    """Resolves the first release's module paths to the modules that replaced them."""

    def find_spec(self, fullname: str, path=None, target=None):
        prefix, _, old = fullname.partition('.')
        if prefix != __name__ or old not in _MOVED_MODULES:
            return None
        import importlib.util
        import warnings
        new = f'{__name__}.{_MOVED_MODULES[old]}'
        warnings.warn(f'{fullname} moved to {new}; the old path will be removed', DeprecationWarning, stacklevel=2)
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


class _AliasLoader:
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)  # the module itself, not a copy

    def exec_module(self, module) -> None:
        pass


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


def register_models() -> None:
    """Register every coded model with timm now (imports torch and timm)."""
    for module in _REGISTERING_MODULES:
        importlib.import_module(f'{__name__}.{module}')


def _register_when_timm_is_imported() -> None:
    import timm_coded_autoload as _autoload  # standard library only

    timm = sys.modules.get('timm')
    spec = getattr(timm, '__spec__', None)
    # timm's module body has run (its import finished, or the start-up hook is reacting to it)
    if timm is not None and (not getattr(spec, '_initializing', False) or _autoload.timm_loaded()):
        register_models()
    else:  # timm not imported yet: register the moment it is
        _autoload.on_timm_imported(register_models)


_register_when_timm_is_imported()
