"""Type table and input validation shared by the C bindings (ggml_tq) and the torch reference.

Pure numpy: importing it needs neither the compiled extension nor torch.
"""
from __future__ import annotations

from typing import NamedTuple, Union

import numpy as np

QK_TQ = 64
FP16_MAX = 65504.0
# fp32 -> fp16 rounds values from here on to infinity; tq_fp32_to_fp16 saturates them at FP16_MAX
FP16_OVERFLOW = 65520.0
FP16_MAX_BITS = 0x7BFF

# The ggml_type numbers of patches/0001 (ggml.h) and 0005 (gguf-py): Python takes them from here only,
# and tests/test_types.py checks them against the patches.
GGML_TYPE_TQ4_0 = 43       # llama.cpp's next free ggml_type numbers
GGML_TYPE_TQ3_0 = 44
GGML_TYPE_TQ_ROT_F32 = 45  # internal: the query rotated into the TQ domain, the vec_dot partner of all of them
GGML_TYPE_TQV2_0 = 46      # a value type (the "v": upstream ggml's tq2_0 is an unrelated ternary type)
GGML_TYPE_TQ6_0 = 47       # a key type for long contexts


class TypeInfo(NamedTuple):
    name: str
    ggml_type: int
    bits: int             # bits per index
    block_size: int       # values per block
    type_size: int        # bytes per block
    bits_per_value: float


TYPES = {
    "tq4_0": TypeInfo("tq4_0", GGML_TYPE_TQ4_0, 4, QK_TQ, 2 + QK_TQ // 2, (2 + QK_TQ // 2) * 8 / QK_TQ),
    "tq3_0": TypeInfo("tq3_0", GGML_TYPE_TQ3_0, 3, QK_TQ, 2 + QK_TQ // 4 + QK_TQ // 8, (2 + QK_TQ // 4 + QK_TQ // 8) * 8 / QK_TQ),
    "tqv2_0": TypeInfo("tqv2_0", GGML_TYPE_TQV2_0, 2, QK_TQ, 2 + QK_TQ // 4, (2 + QK_TQ // 4) * 8 / QK_TQ),
    "tq6_0": TypeInfo("tq6_0", GGML_TYPE_TQ6_0, 6, QK_TQ, 2 + QK_TQ // 2 + QK_TQ // 4, (2 + QK_TQ // 2 + QK_TQ // 4) * 8 / QK_TQ),
}
_BY_NUMBER = {t.ggml_type: t for t in TYPES.values()}

TypeLike = Union[str, int, TypeInfo]


def type_info(type: TypeLike) -> TypeInfo:
    """The TypeInfo of a type name ("tq4_0", "tq3_0", "tqv2_0", "tq6_0", any case), ggml_type number (43, 44, 46,
    47) or TypeInfo."""
    if isinstance(type, TypeInfo):
        return type
    if isinstance(type, str):
        t = TYPES.get(type.lower())
        if t is None:
            raise ValueError(f"unknown TQ type {type!r}: valid names are {', '.join(repr(k) for k in TYPES)}")
        return t
    if isinstance(type, (int, np.integer)) and not isinstance(type, bool):
        t = _BY_NUMBER.get(int(type))
        if t is None:
            raise ValueError(f"unknown TQ ggml_type {int(type)}: valid numbers are "
                             f"{', '.join(f'{v.ggml_type} ({v.name})' for v in TYPES.values())}")
        return t
    raise TypeError(f"type must be a type name ({', '.join(repr(k) for k in TYPES)}) or ggml_type number, "
                    f"got {type.__class__.__name__}")


def check_length(n: int) -> int:
    n = int(n)
    if n <= 0 or n % QK_TQ != 0:
        raise ValueError(f"row length {n} is not a positive multiple of the block size {QK_TQ}")
    return n


def as_rows(x, dtype=np.float32) -> np.ndarray:
    """x as a C-contiguous 2-D array of `dtype`, rows of values.

    Accepted: a 1-D array (one row) or a 2-D one, of any real floating dtype (float16, float32,
    float64, ...), converted to `dtype` with numpy's rounding. Integer, bool and complex input is
    rejected with TypeError rather than guessed at. Anything with __array__ (a CPU torch tensor) works.
    """
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"x must hold real floating-point values, got dtype {a.dtype}")
    if a.ndim == 1:
        a = a[None, :]
    elif a.ndim != 2:
        raise ValueError(f"x must be 1-D (one row) or 2-D (rows, n), got shape {a.shape}")
    check_length(a.shape[1])
    with np.errstate(over="ignore"):  # float64 beyond the float32 range becomes inf, rejected below
        return np.ascontiguousarray(a, dtype=dtype)


def check_finite(x: np.ndarray) -> None:
    """ValueError naming the first row that holds a NaN or an infinity."""
    ok = np.isfinite(x).all(axis=1)
    if not ok.all():
        r = int(np.argmin(ok))
        kind = "NaN" if np.isnan(x[r]).any() else "Inf"
        raise ValueError(f"row {r} holds {kind}: TQ formats encode finite values only")


def block_norms(x: np.ndarray) -> np.ndarray:
    """(rows, n/64) L2 norms of the 64-value blocks, in float64."""
    b = x.reshape(x.shape[0], x.shape[1] // QK_TQ, QK_TQ).astype(np.float64)
    return np.sqrt(np.einsum("rbj,rbj->rb", b, b))


def check_norms(x: np.ndarray) -> np.ndarray:
    """ValueError naming the first row with a block whose L2 norm exceeds the fp16 maximum.

    The block scale d = |x|/|c| is stored as fp16 and would saturate (tq_fp32_to_fp16 clamps at 65504).
    Returns the block norms for later checks.
    """
    norms = block_norms(x)
    bad = (norms > FP16_MAX).any(axis=1)
    if bad.any():
        r = int(np.argmax(bad))
        b = int(np.argmax(norms[r] > FP16_MAX))
        raise ValueError(f"row {r}: block {b} has L2 norm {norms[r, b]:.6g} > {FP16_MAX:g} (fp16 max), "
                         f"its fp16 scale would saturate; rescale the input")
    return norms


def validate_input(x, dtype=np.float32) -> np.ndarray:
    a = as_rows(x, dtype)
    check_finite(a)
    check_norms(a)
    return a


def as_blocks(q, t: TypeInfo, n: int) -> np.ndarray:
    """q as a C-contiguous 2-D uint8 array (rows, n/64 * type_size); 1-D is one row."""
    n = check_length(n)
    a = np.asarray(q)
    if a.dtype != np.uint8:
        raise TypeError(f"quantized data must be uint8 bytes, got dtype {a.dtype}")
    if a.ndim == 1:
        a = a[None, :]
    elif a.ndim != 2:
        raise ValueError(f"quantized data must be 1-D (one row) or 2-D (rows, bytes), got shape {a.shape}")
    row_bytes = n // QK_TQ * t.type_size
    if a.shape[1] != row_bytes:
        raise ValueError(f"a {t.name} row of {n} values is {row_bytes} bytes, got rows of {a.shape[1]}")
    return np.ascontiguousarray(a)


def scale_bits(q: np.ndarray, t: TypeInfo) -> np.ndarray:
    """(rows, nblocks) uint16: the fp16 bits of each block's scale d (little-endian, the first 2 bytes)."""
    b = q.reshape(q.shape[0], -1, t.type_size)
    return b[:, :, 0].astype(np.uint16) | (b[:, :, 1].astype(np.uint16) << 8)


def unpack_indices(q: np.ndarray, t: TypeInfo) -> np.ndarray:
    """(rows, nblocks, 64) uint8 centroid indices of the blocks of q (layout of ggml-tq.h)."""
    b = q.reshape(q.shape[0], -1, t.type_size)
    k4 = np.arange(4, dtype=np.uint8)
    if t.bits in (4, 6):
        qs = b[:, :, 2:2 + QK_TQ // 2]
        lo = np.concatenate([qs & 0xF, qs >> 4], axis=2)
        if t.bits == 4:
            return lo
        qh = b[:, :, 2 + QK_TQ // 2:]         # tq6_0: index j + 16k has its bits 4, 5 at bits 2k..2k+1 of qh[j]
        hi = (qh[:, :, None, :] >> (2 * k4)[None, None, :, None]) & 3
        return lo | (hi.reshape(*b.shape[:2], QK_TQ) << 4)
    qs = b[:, :, 2:2 + QK_TQ // 4]            # index j + 16k: bits 2k..2k+1 of qs[j] (all of a tqv2_0 index)
    lo = (qs[:, :, None, :] >> (2 * k4)[None, None, :, None]) & 3          # (r, b, k, j) -> index 16k + j
    lo = lo.reshape(*b.shape[:2], QK_TQ)
    if t.bits == 2:
        return lo
    qh = b[:, :, 2 + QK_TQ // 4:]             # index j + 8k: bit k of qh[j]
    k8 = np.arange(8, dtype=np.uint8)
    hi = (qh[:, :, None, :] >> k8[None, None, :, None]) & 1                # (r, b, k, j) -> index 8k + j
    return lo | (hi.reshape(*b.shape[:2], QK_TQ) << 2)


def pack_indices(idx: np.ndarray, d_bits: np.ndarray, t: TypeInfo) -> np.ndarray:
    """Inverse of unpack_indices/scale_bits: (rows, nblocks, 64) indices and (rows, nblocks) fp16 bits -> bytes."""
    idx = idx.astype(np.uint8)
    rows, nb = idx.shape[:2]
    d = d_bits.astype(np.uint16)
    head = np.stack([(d & 0xFF).astype(np.uint8), (d >> 8).astype(np.uint8)], axis=2)
    if t.bits in (4, 6):
        body = (idx[:, :, :QK_TQ // 2] & 0xF) | ((idx[:, :, QK_TQ // 2:] & 0xF) << 4)
        if t.bits == 6:
            hi = (idx >> 4).reshape(rows, nb, 4, 16) << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]
            body = np.concatenate([body, np.bitwise_or.reduce(hi, axis=2)], axis=2)
    else:
        lo = (idx & 3).reshape(rows, nb, 4, 16) << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]
        body = np.bitwise_or.reduce(lo, axis=2)
        if t.bits == 3:
            hi = (idx >> 2).reshape(rows, nb, 8, 8) << np.arange(8, dtype=np.uint8)[None, None, :, None]
            body = np.concatenate([body, np.bitwise_or.reduce(hi, axis=2)], axis=2)
    return np.concatenate([head, body.astype(np.uint8)], axis=2).reshape(rows, nb * t.type_size)
