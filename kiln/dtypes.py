"""Element types beyond numpy's own: bfloat16, float8, float4 and 4- and 2-bit integer arrays are numpy arrays of
ml_dtypes' types.

ml_dtypes comes with onnx and apache-tvm; the runtime-only install does not depend on it, so it is imported only
when an artifact or an array has such a type. numpy's DLPack cannot carry these types, so the TVM runner copies
them by their bytes. numpy's .npy/.npz files store them as raw bytes (void: "|V2" for bfloat16, "|V1" for float8),
so kiln takes a void array of the right width as the type the model declares for that input (an array saved with
numpy.savez goes back in as it was), and writes outputs as numpy does: read them back with
`.view(ml_dtypes.bfloat16)` (or the output's type, which the manifest and `kiln run` name).
"""

from __future__ import annotations

import numpy as np

from kiln.errors import InputError

# Each narrow type and the type TVM holds its values in instead (kiln.compiler.passes.narrow_types rewrites the graph
# to these carriers): TVM 0.27 converts float8 wrongly and packs the sub-byte types, which ml_dtypes and ONNX's arrays
# hold one to a byte. Every value of a narrow type is exact in its carrier (float8_e8m0fnu's 2^-127 as a subnormal).
CARRIERS = {**dict.fromkeys(("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float4_e2m1fn",
                             "float8_e8m0fnu"), "float32"),
            "int4": "int8", "int2": "int8", "uint4": "uint8", "uint2": "uint8"}
# The ml_dtypes types kiln can pass to and from a compiled model: bfloat16 (TVM computes it) and the narrow types.
EXTENDED = frozenset({"bfloat16", *CARRIERS})


def numpy_dtype(name: str) -> np.dtype:
    """numpy's dtype for a type name, ml_dtypes' (imported here) for the EXTENDED ones."""
    if name in EXTENDED:
        try:
            import ml_dtypes
        except ImportError:
            raise InputError(f"{name} arrays need the ml_dtypes package: pip install ml_dtypes") from None
        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def is_float(dtype: np.dtype) -> bool:
    """Whether arrays of `dtype` hold floating-point numbers (numpy's or an EXTENDED type)."""
    return np.issubdtype(dtype, np.floating) or (dtype.name in EXTENDED and "int" not in dtype.name)


def carrier(name: str) -> str:
    """The type TVM holds values of type `name` in: its CARRIERS entry, else itself."""
    return CARRIERS.get(name, name)


def to_carrier(array: np.ndarray, name: str) -> np.ndarray:
    """`array` (of type `name`) as TVM takes it: converted to its carrier where it has one (exact)."""
    return array.astype(CARRIERS[name]) if name in CARRIERS else array


def from_carrier(array: np.ndarray, name: str) -> np.ndarray:
    """A TVM result held in `name`'s carrier as type `name` (exact: the graph computes values of `name`'s grid)."""
    return array.astype(numpy_dtype(name)) if name in CARRIERS else array


def as_declared(array: np.ndarray, dtype: str) -> np.ndarray:
    """`array` reinterpreted as the EXTENDED type `dtype` where it holds that type's bytes as a file stores them
    (void of the same width); otherwise unchanged."""
    if array.dtype.type is not np.void or array.dtype.fields is not None or dtype not in EXTENDED:
        return array  # (ml_dtypes' types have kind "V" too, but their own scalar types)
    declared = numpy_dtype(dtype)
    if array.dtype.itemsize != declared.itemsize:
        return array
    return np.ascontiguousarray(array).view(declared)


def convert_hint(dtype: str) -> str:
    """How to convert an array to `dtype`, for error messages."""
    return f".astype(ml_dtypes.{dtype})" if dtype in EXTENDED else f".astype(np.{dtype})"
