"""Exceptions raised by mla_decode.

Each carries the library's message, which names the function, the argument and the offending
value ("mla::decode: argument 'q': expected dtype bfloat16 or float16, got float32"). The classes
also derive from the built-in exception a Python caller would expect, so ``except ValueError``
catches a bad argument.
"""


class MlaError(Exception):
    """Base class of every error mla_decode reports."""


class InvalidArgumentError(MlaError, ValueError):
    """A host-checkable argument is wrong (shape, dtype, strides, device); nothing was written."""


class UnsupportedError(MlaError, NotImplementedError):
    """A valid request that this build or device cannot serve; nothing was written."""


class DataError(MlaError, ValueError):
    """seq_lens, block_table or slot_mapping contents are out of range."""


class CudaError(MlaError, RuntimeError):
    """The CUDA runtime reported an error."""


class InternalError(MlaError, RuntimeError):
    """A bug in mla-decode; please report it."""


__all__ = [
    "CudaError",
    "DataError",
    "InternalError",
    "InvalidArgumentError",
    "MlaError",
    "UnsupportedError",
]
