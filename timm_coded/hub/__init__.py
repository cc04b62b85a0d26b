"""Artifacts on the Hugging Face Hub, one module per concern.

- `manifest`: weights_manifest.json, what exists, where, with which hashes (standard library only:
  the model modules read it at registration);
- `export`: artifact folders (config.json, model.safetensors, model card), reading and verifying
  them, hashing, shipping exports inside the package;
- `layout`: the one function that maps an artifact to its Hub branch, decided at publish time;
- `upload`: plan and apply publishes (one commit per artifact), recording them in the manifest;
- `download`: download, verify against the manifest, load by name.

Every public name of these modules is also available here, loaded on first use, so importing the
manifest does not import huggingface_hub or torch.
"""
import importlib

_SUBMODULES = ('manifest', 'export', 'layout', 'upload', 'download')


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
