"""Run one of timm's scripts (train.py, validate.py) with timm-coded registered, without installing it.

    python benchmarks/gpu/timm_script.py PATH/TO/train.py [train.py arguments ...]

timm's train.py does not import timm_coded, and on a machine where the package is only a checkout
(on PYTHONPATH) its start-up hook (`timm_coded_autoload.pth`) is not installed. This wrapper does
what the hook does, then runs the script as `__main__` with the remaining arguments:

- imports timm and timm_coded and registers the `coded_*` models;
- points `timm.task.ClassificationTask` (and friends) at the coded subclasses, so the
  `from timm.task import ClassificationTask` near the top of train.py gets the coding-loss task;
- replaces `timm.utils.NativeScaler` (fp16 loss scaling, created by train.py for `--amp` on CUDA)
  with a subclass that prints the loss scale, so a log shows that loss scaling really ran.

Every line it prints starts with 'timm-coded wrapper:' (benchmarks/gpu/oneshot.py parses them).
"""
import os
import runpy
import sys

PREFIX = 'timm-coded wrapper:'


def _install_scaler_probe() -> None:
    import timm.utils

    base = timm.utils.NativeScaler

    class LoggingNativeScaler(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._probe_calls = 0
            print(f'{PREFIX} NativeScaler created (fp16 loss scaling)', flush=True)

        def __call__(self, *args, **kwargs):
            result = super().__call__(*args, **kwargs)
            self._probe_calls += 1
            if self._probe_calls <= 2 or self._probe_calls % 5 == 0:
                scale = self.state_dict().get('scale')
                print(f'{PREFIX} loss scale {scale} after {self._probe_calls} steps', flush=True)
            return result

    LoggingNativeScaler.__name__ = LoggingNativeScaler.__qualname__ = 'NativeScaler'
    timm.utils.NativeScaler = LoggingNativeScaler
    if hasattr(timm.utils, 'cuda'):
        timm.utils.cuda.NativeScaler = LoggingNativeScaler


def main() -> None:
    if len(sys.argv) < 2 or not sys.argv[1].endswith('.py'):
        sys.exit(f'usage: {sys.argv[0]} PATH/TO/train.py [arguments ...]')
    script = os.path.abspath(sys.argv[1])
    if not os.path.isfile(script):
        sys.exit(f'{PREFIX} no such script: {script}')
    sys.argv = [script] + sys.argv[2:]
    sys.path.insert(0, os.path.dirname(script))  # as `python train.py` would have it

    import timm
    import timm_coded
    from timm_coded.training import install_timm_tasks, timm_tasks_installed

    timm_coded.register_models()
    install_timm_tasks()
    _install_scaler_probe()
    import torch
    print(f'{PREFIX} timm {timm.__version__} ({os.path.dirname(timm.__file__)}), '
          f'timm_coded {timm_coded.__version__} ({os.path.dirname(timm_coded.__file__)}), torch {torch.__version__}, '
          f'{len(timm.list_models("coded_*"))} coded_* models, '
          f'coded ClassificationTask installed: {timm_tasks_installed()}', flush=True)
    runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
    main()
