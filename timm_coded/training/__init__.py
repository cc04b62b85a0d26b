"""Training with the coding loss: `loss` (the loss and the coded timm tasks that train.py uses),
`trainer` (a compact loop for the demo and the zoo scripts)."""
from .loss import *  # noqa: F401,F403
from .loss import __all__ as __all__  # the package exports what loss.py exports
