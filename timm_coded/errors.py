"""Errors that describe a user's mistake (bad input), as opposed to a bug.

The CLI prints these as one line on stderr with exit code 2; library callers can catch
`TimmCodedError` to handle any of them.
"""


class TimmCodedError(ValueError):
    """Base class: bad input that the message explains."""


class SchemeError(TimmCodedError):
    """A coding scheme is malformed, infeasible, or unknown."""


class UnknownClassError(TimmCodedError, KeyError):
    """A class index or name that the model's scheme does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ''


class CheckpointMismatchError(TimmCodedError):
    """A checkpoint that belongs to another architecture (missing/unexpected keys, shapes)."""


class NotCodedError(TimmCodedError):
    """An operation that needs coded blocks was asked of an uncoded model."""


class IntegrityError(TimmCodedError):
    """A downloaded or stored file whose sha256 differs from the manifest, or corrupt weights."""


class DataError(TimmCodedError):
    """An image folder that is missing, empty or unreadable."""


class ManifestError(TimmCodedError):
    """weights_manifest.json (or an artifact record in it) is malformed or names an unknown artifact."""
