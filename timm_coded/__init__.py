"""timm-coded: Coded ResNeXt (Avranas & Kountouris, arXiv 2202.05343) for timm.

Importing this package registers the `coded_*` models with timm.
"""
from .codes import CodingScheme, builtin_scheme, list_builtin_schemes, load_scheme
from .errors import (
    CheckpointMismatchError, DataError, IntegrityError, NotCodedError, SchemeError, TimmCodedError,
    UnknownClassError,
)

__version__ = '0.1.0'
from .layers import CodedBottleneck, EnergyRecorder, coded_blocks, record_energies
from .coded_resnext import CodedResNeXt, MODEL_ARCHS
from . import energy
