"""Error types of the compression package (all are ValueError, so callers can catch broadly)."""
from __future__ import annotations


class CompressionError(ValueError):
    """Base class of every error raised by worker.compress."""


class CompressorSpecError(CompressionError):
    """Unknown compressor name, unknown parameter, or a parameter value out of range."""


class CompressorInputError(CompressionError):
    """The tensor given to compress() cannot be compressed (dtype, emptiness, size vs params)."""


class NonFiniteError(CompressorInputError):
    """The tensor holds NaN or +-Inf; `index` is the first bad flat (C-order) index."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


class CompressedFormatError(CompressionError):
    """A Compressed message does not decode: wrong codec, truncated or oversized payload."""
