"""timm-coded: Coded ResNeXt (Avranas & Kountouris, arXiv 2202.05343) for timm.

Importing this package registers the `coded_*` models (and their per-class `*_binary`
classifiers) with timm. An installed start-up hook does the same as soon as `timm` is imported,
and makes timm's training tasks add the coding loss (see `timm_coded.training`).
"""
from .codes import CodingScheme, builtin_scheme, generate_scheme, list_builtin_schemes, load_scheme
from .errors import (
    CheckpointMismatchError, DataError, IntegrityError, ManifestError, NotCodedError, SchemeError, TimmCodedError,
    UnknownClassError,
)
from .layers import CodedBottleneck, EnergyRecorder, coded_blocks, record_energies
from .coded_resnext import CodedResNeXt, MODEL_ARCHS
from .binary import CodedBinaryClassifier, calibrate_threshold, load_checkpoint, slice_binary
from .training import CodedClassificationTask, CodingLoss
from .hub import load_binary_classifier
from . import energy

__version__ = '0.1.0'
