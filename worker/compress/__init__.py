"""Gradient compression operators of the NINA workers (see docs/compressors.md).

    from worker.compress import get_compressor
    op = get_compressor("dither_nat:s=4,p=inf", seed=0)
    msg = op.compress(grad)            # msg.data: the bytes on the wire; msg.bits their size
    approx = get_compressor(msg.codec).decompress(msg)   # a receiver needs only msg
"""
from .base import Compressed, Compressor, as_gradient
from .compose import Sparsified
from .dithering import DitherNat, DitherSta
from .errors import (CompressedFormatError, CompressionError, CompressorInputError,
                     CompressorSpecError, NonFiniteError)
from .identity import Identity
from .lowrank import PowerSGD
from .memory import ErrorFeedback, Memory
from .natural import Nat8, Nat9
from .optimal import SparseDither, Spherical
from .registry import get_compressor, list_compressors, split_specs
from .sparsify import RandK
from .topk import TopK

__all__ = [
    "Compressed", "Compressor", "as_gradient", "get_compressor", "list_compressors", "split_specs",
    "Identity", "Nat8", "Nat9", "DitherNat", "DitherSta", "RandK", "TopK", "Sparsified",
    "SparseDither", "Spherical", "PowerSGD", "ErrorFeedback", "Memory",
    "CompressionError", "CompressorSpecError", "CompressorInputError", "NonFiniteError",
    "CompressedFormatError",
]
