"""ggml_tq: TurboQuant KV-cache block formats TQ4_0 / TQ3_0 / TQV2_0 / TQ6_0 (bindings to the ggml-tq C library).

    q  = quantize(x, "tq4_0")        # x: (rows, n) floats, n a multiple of 64 -> (rows, n/64*34) uint8
    x2 = dequantize(q, "tq4_0", n)   # -> (rows, n) float32
    s  = dot_rotated(q, rotate(query)[0], "tq4_0")   # (rows,) scores q . x', no inverse rotation

Arrays are numpy arrays; 1-D input is one row, output is always 2-D. Input values may be of any
real floating dtype and are converted to float32 first (ints, bools, complex: TypeError).
Rejected with ValueError: NaN/Inf (naming the first bad row), a row length that is not a multiple
of 64 (naming it), a block whose L2 norm exceeds 65504 (its fp16 scale would saturate; naming the row).
All-zero blocks encode to d = 0 and decode to zeros.

`impl="ref"` (default) calls the scalar reference (the `_ref` functions of ggml-tq.h), the definition of
the formats; `impl="cpu"` calls the fastest kernels built for this machine (see cpu_variant()).
The torch reference of the same codec is ggml_tq.reference; `python -m ggml_tq.parity` compares them.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from ._types import (  # noqa: F401  (re-exported)
    FP16_MAX,
    GGML_TYPE_TQ3_0,
    GGML_TYPE_TQ4_0,
    GGML_TYPE_TQ6_0,
    GGML_TYPE_TQV2_0,
    QK_TQ,
    TYPES,
    TypeInfo,
    TypeLike,
    as_blocks,
    as_rows,
    check_finite,
    check_length,
    check_norms,
    scale_bits,
    type_info,
    unpack_indices,
)
from ._types import FP16_MAX_BITS as _FP16_MAX_BITS
from ._types import FP16_OVERFLOW as _FP16_OVERFLOW

__version__ = "0.1.0"
__all__ = [
    "GGML_TYPE_TQ4_0", "GGML_TYPE_TQ3_0", "GGML_TYPE_TQV2_0", "GGML_TYPE_TQ6_0", "QK_TQ", "TYPES", "TypeInfo",
    "type_info", "quantize", "dequantize", "rotate", "unrotate", "dot_rotated",
    "centroids", "cpu_variant", "fp32_to_fp16_bits",
]

Impl = Literal["ref", "cpu"]

_ffi = None
_lib = None


def _c():
    """The compiled extension, imported on first use (so that ggml_tq.codebook runs without a build)."""
    global _ffi, _lib
    if _lib is None:
        try:
            from ._tq_cffi import ffi, lib
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("ggml_tq._tq_cffi is not built: install the package with "
                              "`pip install --no-build-isolation -e .` from the repository root") from e
        _ffi, _lib = ffi, lib
    return _ffi, _lib


def _check_impl(impl: str) -> None:
    if impl not in ("ref", "cpu"):
        raise ValueError(f"impl must be 'ref' (the scalar reference) or 'cpu' (the fastest kernels built), got {impl!r}")


def _kernel(lib, pattern: str, t: TypeInfo, impl: str):
    """The C function `pattern` names for type t: the `_ref` one for impl="ref", e.g. quantize_row_tq3_0_ref."""
    return getattr(lib, pattern.format(t.name) + ("_ref" if impl == "ref" else ""))


def _fptr(ffi, a: np.ndarray, const: bool = True):
    return ffi.from_buffer("float[]", a, require_writable=not const)


def _bptr(ffi, a: np.ndarray, const: bool = True):
    return ffi.from_buffer("uint8_t[]", a, require_writable=not const)


def quantize(x, type: TypeLike, *, impl: Impl = "ref") -> np.ndarray:
    """Quantize rows of x: (rows, n) or (n,) floats -> (rows, n/64 * type_size) uint8."""
    t = type_info(type)
    _check_impl(impl)
    a = as_rows(x)
    check_finite(a)
    norms = check_norms(a)
    rows, n = a.shape
    out = np.empty((rows, n // QK_TQ * t.type_size), dtype=np.uint8)
    if rows:
        ffi, lib = _c()
        fn = _kernel(lib, "quantize_row_{}", t, impl)
        # rows are contiguous and a whole number of blocks: one call quantizes them all
        fn(_fptr(ffi, a), _bptr(ffi, out, const=False), rows * n)
        _check_saturation(a, out, t, norms)
    return out


def _check_saturation(a: np.ndarray, q: np.ndarray, t: TypeInfo, norms: np.ndarray) -> None:
    # d = |x|/|c| can exceed |x| (|c| < 1), so a block under the norm limit may still saturate its
    # scale. Only blocks stored with d = 65504 are candidates: recompute d in float64 for them.
    sat = scale_bits(q, t) == _FP16_MAX_BITS
    if not sat.any():
        return
    c = centroids(t.bits).astype(np.float64)
    rs, bs = np.nonzero(sat)
    idx = unpack_indices(q[rs], t)[np.arange(len(rs)), bs]
    d = norms[rs, bs] / np.sqrt(np.sum(c[idx] ** 2, axis=1))
    bad = d >= _FP16_OVERFLOW
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"row {int(rs[i])}: block {int(bs[i])} needs scale {d[i]:.6g} > {FP16_MAX:g} (fp16 max) "
                         f"(block norm {norms[rs[i], bs[i]]:.6g}); rescale the input")


def dequantize(q, type: TypeLike, n: int, *, impl: Impl = "ref") -> np.ndarray:
    """Decode (rows, n/64 * type_size) uint8 blocks (1-D: one row) -> (rows, n) float32."""
    t = type_info(type)
    _check_impl(impl)
    b = as_blocks(q, t, n)
    rows = b.shape[0]
    out = np.empty((rows, n), dtype=np.float32)
    if rows:
        ffi, lib = _c()
        fn = _kernel(lib, "dequantize_row_{}", t, impl)
        fn(_bptr(ffi, b), _fptr(ffi, out, const=False), rows * n)
    return out


def _rotation(x, inverse: bool, impl: str) -> np.ndarray:
    _check_impl(impl)
    a = as_rows(x)
    out = np.empty_like(a)
    if a.size:
        ffi, lib = _c()
        if impl == "ref":
            fn = lib.tq_unrotate_row_ref if inverse else lib.tq_rotate_row_ref
        else:
            fn = lib.tq_unrotate_row if inverse else lib.tq_rotate_row
        fn(_fptr(ffi, a), _fptr(ffi, out, const=False), a.size)
    return out


def rotate(x, *, impl: Impl = "ref") -> np.ndarray:
    """y = H D x / 8 block by block (the rotation the formats quantize in): (rows, n) float32."""
    return _rotation(x, False, impl)


def unrotate(x, *, impl: Impl = "ref") -> np.ndarray:
    """The inverse rotation x = D H y / 8 block by block: (rows, n) float32."""
    return _rotation(x, True, impl)


def dot_rotated(q_blocks, q_rot, type: TypeLike, *, impl: Impl = "ref") -> np.ndarray:
    """Scores of quantized rows against rotated queries, in the rotated domain: (rows,) float32.

    q_blocks: (rows, n/64 * type_size) uint8 (1-D: one row). q_rot: rotate(q) of a query, either
    (n,) or (1, n) -- the same query for every row -- or (rows, n), one query per row.
    Each score is sum over blocks of d * (q_rot . c), i.e. q . dequantize(row) up to float rounding.
    """
    t = type_info(type)
    _check_impl(impl)
    qr = as_rows(q_rot)
    n = qr.shape[1]
    b = as_blocks(q_blocks, t, n)
    rows = b.shape[0]
    if qr.shape[0] not in (1, rows):
        raise ValueError(f"q_rot has {qr.shape[0]} rows, expected 1 or {rows} (the rows of q_blocks)")
    out = np.empty(rows, dtype=np.float32)
    if rows:
        ffi, lib = _c()
        fn = _kernel(lib, "{}_dot_rotated", t, impl)
        bp, qp = _bptr(ffi, b), _fptr(ffi, qr)
        rb, qstride = b.shape[1], (n if qr.shape[0] > 1 else 0)
        for r in range(rows):
            out[r] = fn(bp + r * rb, qp + r * qstride, n)
    return out


def centroids(bits: int) -> np.ndarray:
    """The 2**bits float32 centroids compiled into the C library (bits 2, 3, 4 or 6), ascending."""
    if bits not in (2, 3, 4, 6):
        raise ValueError(f"bits must be 2, 3, 4 or 6, got {bits}")
    ffi, lib = _c()
    p = lib.tq_codebook(bits)
    return np.frombuffer(ffi.buffer(p, 4 << bits), dtype=np.float32).copy()


def cpu_variant() -> str:
    """What the fast kernels were compiled for (tq_cpu_variant()): "scalar", "avx2", "avx512", "neon", ..."""
    ffi, lib = _c()
    return ffi.string(lib.tq_cpu_variant()).decode()


def fp32_to_fp16_bits(v) -> np.ndarray:
    """tq_fp32_to_fp16 (round to nearest even, saturating at 65504) applied elementwise: uint16 bits."""
    ffi, lib = _c()
    a = np.asarray(v, dtype=np.float32)
    return np.array([lib.tq_fp32_to_fp16(float(f)) for f in a.ravel()], dtype=np.uint16).reshape(a.shape)
