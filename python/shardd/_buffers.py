"""Memory and element types crossing into the native module.

The native module takes memory as ``(address, nbytes, owner)``: the first
byte, the length, and the object that owns the memory (held for as long as
a request uses it). This module is the one place that takes those from
numpy arrays, torch tensors and other buffers, and maps shardd's element
type names to numpy's and torch's. torch is imported only when a tensor is
passed.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple, Optional

import numpy as np

from .errors import BadRequest

try:  # bf16 and fp8 arrays in numpy
    import ml_dtypes as _ml
except ImportError:  # pragma: no cover - depends on the environment
    _ml = None

#: shardd element type -> numpy dtype (None where numpy has none).
_NUMPY = {
    "raw": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
    "u8": np.dtype(np.uint8),
    "i8": np.dtype(np.int8),
    "u16": np.dtype(np.uint16),
    "i16": np.dtype(np.int16),
    "u32": np.dtype(np.uint32),
    "i32": np.dtype(np.int32),
    "u64": np.dtype(np.uint64),
    "i64": np.dtype(np.int64),
    "f16": np.dtype(np.float16),
    "f32": np.dtype(np.float32),
    "f64": np.dtype(np.float64),
    "bf16": np.dtype(_ml.bfloat16) if _ml else None,
    "f8e4m3": np.dtype(_ml.float8_e4m3fn) if _ml else None,
    "f8e5m2": np.dtype(_ml.float8_e5m2) if _ml else None,
}

#: Unsigned integers of the same width, for types numpy cannot name.
_RAW_BITS = {"bf16": np.dtype(np.uint16), "f8e4m3": np.dtype(np.uint8), "f8e5m2": np.dtype(np.uint8)}

#: shardd element type -> torch dtype attribute name.
_TORCH = {
    "raw": "uint8",
    "bool": "bool",
    "u8": "uint8",
    "i8": "int8",
    "u16": "uint16",
    "i16": "int16",
    "u32": "uint32",
    "i32": "int32",
    "u64": "uint64",
    "i64": "int64",
    "f16": "float16",
    "bf16": "bfloat16",
    "f32": "float32",
    "f64": "float64",
    "f8e4m3": "float8_e4m3fn",
    "f8e5m2": "float8_e5m2",
}


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of shardd element type ``name``; for bf16 and fp8
    without ``ml_dtypes``, unsigned integers of the same width."""
    dtype = _NUMPY.get(name)
    if dtype is not None:
        return dtype
    if name in _RAW_BITS:
        return _RAW_BITS[name]
    raise BadRequest(f"unknown element type {name!r}")


def shardd_dtype_of_numpy(dtype: np.dtype) -> str:
    """The shardd element type of numpy ``dtype``."""
    for name, candidate in _NUMPY.items():
        if name != "raw" and candidate is not None and candidate == dtype:
            return name
    raise BadRequest(f"numpy dtype {dtype} has no shardd element type; store its bytes with .view(np.uint8)")


def torch_dtype(name: str):
    """The torch dtype of shardd element type ``name``."""
    import torch

    return getattr(torch, _TORCH[name])


def shardd_dtype_of_torch(dtype) -> str:
    """The shardd element type of torch ``dtype``."""
    import torch

    for name, attr in _TORCH.items():
        if name != "raw" and getattr(torch, attr, None) == dtype:
            return name
    raise BadRequest(f"torch dtype {dtype} has no shardd element type")


class Memory(NamedTuple):
    """Memory lent to a request."""

    address: int
    nbytes: int
    owner: Any
    #: Element type and shape, where the object says (arrays and tensors).
    dtype: Optional[str]
    shape: Optional[list]


def _is_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def memory(obj: Any, *, writable: bool) -> Memory:
    """The memory of ``obj``: a torch tensor on the CPU (pinned or not), a
    numpy array, or any object with the buffer protocol (``bytes``,
    ``bytearray``, ``memoryview``, ``mmap``). It must be contiguous, and
    writable if ``writable``."""
    if _is_tensor(obj):
        if obj.device.type != "cpu":
            raise BadRequest(f"a tensor on {obj.device} cannot be read or written in place; use a CPU tensor")
        if not obj.is_contiguous():
            raise BadRequest("the tensor is not contiguous; pass tensor.contiguous()")
        if writable and obj.requires_grad and obj.is_leaf:
            raise BadRequest("the tensor requires grad; pass tensor.detach()")
        nbytes = obj.numel() * obj.element_size()
        return Memory(obj.data_ptr(), nbytes, obj, shardd_dtype_of_torch(obj.dtype), list(obj.shape))
    if isinstance(obj, np.ndarray):
        array = obj
        dtype, shape = shardd_dtype_of_numpy(array.dtype), list(array.shape)
    else:
        try:
            array = np.frombuffer(obj, dtype=np.uint8)
        except (TypeError, ValueError) as e:
            raise BadRequest(f"{type(obj).__name__} is not a tensor, an array or a contiguous buffer: {e}") from None
        dtype, shape = None, None
    if not array.flags.c_contiguous:
        raise BadRequest("the array is not C-contiguous; pass np.ascontiguousarray(array)")
    if writable and not array.flags.writeable:
        raise BadRequest("the destination is read-only")
    address = array.__array_interface__["data"][0]
    return Memory(address, array.nbytes, array, dtype, shape)


class _Interface:
    """Memory described by ``__array_interface__``, held alive by ``owner``:
    numpy keeps this object (and so ``owner``) as the base of every array
    made over it."""

    __slots__ = ("__array_interface__", "owner")

    def __init__(self, address: int, nbytes: int, owner: Any, readonly: bool):
        self.owner = owner
        self.__array_interface__ = {
            "data": (address, readonly),
            "shape": (nbytes,),
            "typestr": "|u1",
            "version": 3,
        }


def array_over(address: int, nbytes: int, owner: Any, dtype: np.dtype, shape, *, readonly: bool) -> np.ndarray:
    """A numpy array of ``dtype`` and ``shape`` over memory that ``owner``
    keeps alive (for as long as the array or anything made from it lives)."""
    raw = np.asarray(_Interface(address, nbytes, owner, readonly))
    return shaped(raw, dtype, shape)


def shaped(raw: np.ndarray, dtype: np.dtype, shape) -> np.ndarray:
    """``raw`` (uint8) seen as ``dtype`` with ``shape`` (flat if the shape
    does not match the length)."""
    array = raw.view(dtype)
    if shape is not None and int(np.prod(shape, dtype=np.int64)) == array.size:
        array = array.reshape(shape)
    return array
