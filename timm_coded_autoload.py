"""Start-up hook of timm-coded: when `timm` is imported, register the coded models and the coding-loss tasks.

timm has no plugin discovery, and its train.py / validate.py build models by name right after
importing timm. Installing timm-coded puts `timm_coded_autoload.pth` in site-packages (see
setup.py), whose one line imports this module and calls `install()`, which only puts a small
finder on `sys.meta_path`. Nothing else happens until some code imports `timm`; when timm has
finished importing, `timm_coded` is imported (registering `coded_*` models) and
`timm.task.ClassificationTask` and friends are pointed at the coded subclasses
(`timm_coded.training.install_timm_tasks`). One line is logged. `TIMM_CODED_AUTOLOAD=0` turns
it all off.

A top-level module, not part of the package: importing `timm_coded` imports torch, which must
not happen at every interpreter start. It must import nothing but the standard library.
"""
# Only modules that every interpreter has loaded before site runs: this file is executed at
# start-up, and e.g. importlib.abc (-> importlib.resources, pathlib) or logging would add
# tens of milliseconds to every Python process in the environment.
import os
import sys

__all__ = ['ENV_VAR', 'PTH_FILENAME', 'PTH_LINE', 'enabled', 'install', 'uninstall', 'activate']

ENV_VAR = 'TIMM_CODED_AUTOLOAD'
_OFF_VALUES = ('0', 'false', 'no', 'off')

PTH_FILENAME = 'timm_coded_autoload.pth'
# The one line of the .pth file (site executes lines that start with "import"). install() checks
# the TIMM_CODED_AUTOLOAD switch itself.
PTH_LINE = 'import timm_coded_autoload; timm_coded_autoload.install()\n'

_activated = False
_activating = False


def enabled() -> bool:
    """False when the environment variable TIMM_CODED_AUTOLOAD is 0 / false / no / off."""
    return os.environ.get(ENV_VAR, '1').strip().lower() not in _OFF_VALUES


class _NotifyingLoader:
    """Wraps a module's loader; calls `on_loaded(module)` once the module has executed."""

    def __init__(self, loader, on_loaded) -> None:
        self._loader = loader
        self._on_loaded = on_loaded

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        # Give the module its real loader back before anything else looks at it.
        module.__loader__ = self._loader
        if getattr(module, '__spec__', None) is not None:
            module.__spec__.loader = self._loader
        self._on_loaded(module)

    def __getattr__(self, name):  # get_resource_reader, is_package, get_code, ...
        if name == '_loader':  # not set yet (copy / unpickle): no recursion
            raise AttributeError(name)
        return getattr(self._loader, name)


class _ImportWatcher:
    """Finds nothing itself: wraps the loader of `timm` found by the others."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname == 'timm':
            on_loaded = _on_timm_loaded
        elif fullname.startswith('timm_coded.') and fullname != __name__ and _pending():
            on_loaded = _on_package_module_loaded  # registration may wait for this module
        else:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None:
            return None
        spec.loader = _NotifyingLoader(spec.loader, on_loaded)
        return spec


# callbacks waiting for `import timm` (e.g. `import timm_coded` before timm registers its models then)
_timm_callbacks = []
# True once install() put the start-up hook in place (the .pth, TIMM_CODED_AUTOLOAD not off)
_hook_installed = False


def on_timm_imported(callback) -> None:
    """Call `callback()` right after `timm` has been imported (the caller checked it is not yet)."""
    _timm_callbacks.append(callback)
    if not any(isinstance(f, _ImportWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _ImportWatcher())


# set when timm has been imported while a timm_coded module was half-way through its own import
_timm_loaded = False


def timm_loaded() -> bool:
    """True once the watcher saw timm's module body finish executing."""
    return _timm_loaded


def _pending() -> bool:
    return bool(_timm_callbacks) or (_hook_installed and not _activated and not _activating)


def _package_initializing(finished=None) -> bool:
    """True while a timm_coded module (other than `finished`) is still executing its import."""
    return any(_is_initializing(m) for name, m in list(sys.modules.items())
               if (name == 'timm_coded' or name.startswith('timm_coded.')) and m is not finished
               and name != __name__)


def _on_timm_loaded(module) -> None:
    global _timm_loaded
    _timm_loaded = True
    if _package_initializing():
        # e.g. `import timm_coded.models.layers` imported timm: registering now would import the model
        # modules, which import that half-initialised module. Wait until it has finished.
        return
    _run_pending()


def _on_package_module_loaded(module) -> None:
    if _timm_loaded and not _package_initializing(finished=module):
        _run_pending()


def _run_pending() -> None:
    callbacks = list(_timm_callbacks)
    _timm_callbacks.clear()
    for callback in callbacks:
        try:
            callback()
        except Exception as exc:  # never break `import timm`
            _report_failure(exc)
            return
    if _hook_installed:
        activate()
    else:
        uninstall()


def _report_failure(exc: BaseException) -> None:
    _emit('warning', f'timm-coded: the timm start-up hook failed ({exc!r}); coded models are '
                     f'not registered. Set {ENV_VAR}=0 to silence this.')


def _emit(level: str, message: str) -> None:
    # At `import timm` logging is rarely configured yet (train.py configures it in main()):
    # then the one line goes to stderr so the user sees what the hook did.
    import logging
    logger = logging.getLogger('timm_coded.autoload')
    if logging.getLogger().handlers or logger.handlers:
        getattr(logger, level)(message)
    else:
        sys.stderr.write(message + '\n')


def activate() -> bool:
    """Register the models and install the coded timm tasks (once). True if this call did it."""
    global _activated, _activating
    if _activated or _activating:
        return False
    _activating = True  # the imports below finish timm_coded modules, which must not re-enter here
    try:
        import timm_coded
        timm_coded.register_models()
        from timm_coded.training import install_timm_tasks
        replaced = install_timm_tasks()
    except Exception as exc:
        _report_failure(exc)
        return False
    finally:
        _activating = False
    _activated = True
    import timm
    num_models = len(timm.list_models('coded_*'))
    _emit('info', f'timm-coded {getattr(timm_coded, "__version__", "")}: {num_models} coded_* models '
                  f'registered, {len(replaced)} timm.task classes add the coding loss ({ENV_VAR}=0 disables)')
    uninstall()
    return True


def install() -> bool:
    """Put the import watcher on sys.meta_path (no-op when disabled). True if it is installed.

    When timm is already imported, activates right away.
    """
    global _hook_installed
    if not enabled():
        return False
    _hook_installed = True
    if 'timm' in sys.modules and getattr(sys.modules['timm'], '__spec__', None) is not None \
            and not _is_initializing(sys.modules['timm']):
        _on_timm_loaded(sys.modules['timm'])
        return True
    if not any(isinstance(f, _ImportWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _ImportWatcher())
    return True


def uninstall() -> None:
    """Take the import watcher off sys.meta_path."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _ImportWatcher)]


def _is_initializing(module) -> bool:
    spec = getattr(module, '__spec__', None)
    return bool(getattr(spec, '_initializing', False))
