"""Artifacts on the Hugging Face Hub: the weights manifest, export folders, publishing, download.

`manifest` reads and writes weights_manifest.json (what exists, where, with which hashes; standard
library only, the model modules read it at registration); `artifacts` exports an artifact folder
(weights, config, card), decides the Hub layout at publish time (`artifact_branch`), plans and
applies publishes, and downloads and verifies artifacts. Names of both are available here; they
load on first use, so importing the manifest does not import huggingface_hub or torch.
"""
import importlib

_SUBMODULES = ('artifacts', 'manifest')


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f'{__name__}.{name}')
    for submodule in _SUBMODULES:
        module = importlib.import_module(f'{__name__}.{submodule}')
        if name in module.__all__:
            value = getattr(module, name)
            globals()[name] = value
            return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    names = set(globals())
    for submodule in _SUBMODULES:
        names |= set(importlib.import_module(f'{__name__}.{submodule}').__all__)
    return sorted(names)
