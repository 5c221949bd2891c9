"""Torch reference of the TQ4_0 / TQ3_0 / TQV2_0 / TQ6_0 codec: the same algorithm as ggml-tq/src/tq-ref.c, written for reading.

In float32 (the default) every operation is the one tq-ref.c performs, in the same order, so the
bytes equal the C reference's and dequantizing the same bytes gives the same floats. float64
(dtype=torch.float64) runs the same steps in double precision against the same float32 codebook:
what the parity tool uses to tell rounding ties from real mismatches.

Quantizing a 64-value block x (tq-ref.c: tq_quantize_block):
    amax = max |x_j|                          (amax < FLT_MIN: d = 0, all indices 0)
    y    = FWHT64(x * (1/amax) * sign) * 0.125   (butterfly stages h = 1, 2, 4, .., 32: a+b, a-b)
    norm = sqrt(sum_j y_j^2)                  (summed j = 0..63 in order; sqrt correctly rounded)
    z    = y * (1/norm)
    scale search, for each gain t of SEARCH_GAINS (in order):
        idx_t = number of boundaries strictly below z_j*t,  c = centroid[idx_t]
        score_t = tree_sum(z*c) / sqrt(tree_sum(c*c))   (tree_sum: halves added, h = 32, 16, .., 1)
    idx  = idx_t of the largest score (strictly larger: the first of equal scores wins)
    d    = amax * (norm / sqrt(sum_j c[idx_j]^2))   norm_mode="corrected" (the format)
         = amax * norm                              norm_mode="raw" (measurement only: not the format)
    d is stored as fp16, round to nearest even, saturating at 65504.
Decoding: v = FWHT64(c[idx]); x' = v * (fp16_to_f32(d) * 0.125) * sign.
"""
from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import torch

from .codebook import lloyd_max_centroids as _lloyd_max_centroids
from .codebook import signs as _signs
from ._types import (  # noqa: F401  (type_info re-exported: same names as ggml_tq)
    FP16_MAX,
    GGML_TYPE_TQ3_0,
    GGML_TYPE_TQ4_0,
    GGML_TYPE_TQ6_0,
    GGML_TYPE_TQV2_0,
    QK_TQ,
    TypeInfo,
    TypeLike,
    as_blocks,
    check_finite,
    check_length,
    check_norms,
    type_info,
)
from ._types import as_rows as _as_rows

NormMode = Literal["corrected", "raw"]

# the encoder's scale search gains, in order (ggml-tq.h: TQ_SEARCH_GAINS_INIT)
SEARCH_GAINS = (1.0, 0.9, 1.05, 1.1, 1.15, 1.2, 1.3, 1.4)

__all__ = ["quantize", "dequantize", "type_info", "rotate", "unrotate", "dot_rotated",
           "centroids", "boundaries", "signs", "fwht64"]


# ---- tables -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _tables_f32(bits: int) -> tuple:
    # exactly what codebook.render_header writes into tq-codebook.h: float64 Lloyd-Max levels and
    # their float64 midpoints, each rounded to float32
    c = _lloyd_max_centroids(bits)
    return c.astype(np.float32), ((c[1:] + c[:-1]) / 2).astype(np.float32)


def centroids(bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 2**bits centroids of tq-codebook.h (float32 values, then cast to dtype), ascending."""
    return torch.from_numpy(_tables_f32(bits)[0].copy()).to(dtype)


def boundaries(bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 2**bits - 1 decision boundaries of tq-codebook.h (float32 midpoints, then cast to dtype)."""
    return torch.from_numpy(_tables_f32(bits)[1].copy()).to(dtype)


def signs(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 64 fixed signs of the randomized Hadamard transform (tq_signs)."""
    return torch.from_numpy(_signs()).to(dtype)


# ---- rotation -----------------------------------------------------------------------------------

def fwht64(v: torch.Tensor) -> torch.Tensor:
    """Unnormalized 64-point Walsh-Hadamard transform over the last axis, tq_fwht64's stage order.

    Stage h pairs element j with j + h inside groups of 2h: (a, b) -> (a + b, a - b).
    """
    shape = v.shape
    for h in (1, 2, 4, 8, 16, 32):
        g = v.reshape(*shape[:-1], QK_TQ // (2 * h), 2, h)
        a, b = g[..., 0, :], g[..., 1, :]
        v = torch.stack((a + b, a - b), dim=-2).reshape(shape)
    return v


def _blocks(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1, QK_TQ)


def _rows(x, dtype: torch.dtype) -> torch.Tensor:
    """x as a 2-D tensor of dtype (1-D: one row); numpy arrays and tensors of any floating dtype."""
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise TypeError(f"x must hold real floating-point values, got dtype {x.dtype}")
        t = x.detach().to("cpu")
        if t.ndim == 1:
            t = t[None, :]
        if t.ndim != 2:
            raise ValueError(f"x must be 1-D (one row) or 2-D (rows, n), got shape {tuple(x.shape)}")
        check_length(t.shape[1])
        return t.to(dtype).contiguous()
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    return torch.from_numpy(_as_rows(x, np_dtype)).to(dtype)


def rotate(x, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """y = H D x / 8 block by block (tq_rotate_row): x * sign, FWHT, * 0.125."""
    t = _rows(x, dtype)
    return (fwht64(_blocks(t) * signs(dtype)) * 0.125).reshape(t.shape)


def unrotate(x, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x = D H y / 8 block by block (tq_unrotate_row): FWHT, * 0.125, * sign."""
    t = _rows(x, dtype)
    return (fwht64(_blocks(t)) * 0.125 * signs(dtype)).reshape(t.shape)


# ---- fp16 ---------------------------------------------------------------------------------------

def fp16_bits(d: torch.Tensor) -> torch.Tensor:
    """tq_fp32_to_fp16 on non-negative finite scales: round to nearest even, saturate at 65504 -> int32 bits.

    float32 input rounds with torch's (IEEE, subnormals included) conversion; float64 input with
    numpy's direct double -> half conversion (torch would round twice, through float32).
    """
    if d.dtype == torch.float64:
        with np.errstate(over="ignore"):
            h = torch.from_numpy(d.numpy().astype(np.float16))
    else:
        h = d.to(torch.float16)
    h = torch.where(torch.isinf(h), torch.full_like(h, FP16_MAX), h)  # >= 65520: saturate, stay finite
    return h.view(torch.int16).to(torch.int32) & 0xFFFF


def fp16_value(bits: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """tq_fp16_to_fp32: fp16 bits (any integer tensor) -> values (exact in float32 and float64)."""
    return bits.to(torch.int32).to(torch.int16).view(torch.float16).to(dtype)


# ---- quantize -----------------------------------------------------------------------------------

def _sqrt(v: torch.Tensor) -> torch.Tensor:
    """Correctly rounded square root, as C's sqrtf/sqrt. torch.sqrt is NOT: on CPU (AVX512, torch 2.13)
    ~15% of float32 results are 1 ulp off, enough to flip an fp16 scale at a rounding tie. numpy's is."""
    return torch.from_numpy(np.sqrt(v.contiguous().numpy()))


def _seq_sum_sq(v: torch.Tensor) -> torch.Tensor:
    """sum_j v_j^2 over the last axis, accumulated j = 0..63 in order as tq-ref.c does (not pairwise)."""
    s = torch.zeros(v.shape[:-1], dtype=v.dtype)
    for j in range(v.shape[-1]):
        s = s + v[..., j] * v[..., j]
    return s


def _tree_sum64(v: torch.Tensor) -> torch.Tensor:
    """tq_tree_sum64 over the last axis (64): v[j] + v[j + h] for h = 32, 16, 8, 4, 2, 1."""
    h = QK_TQ // 2
    while h:
        v = v[..., :h] + v[..., h:2 * h]
        h //= 2
    return v[..., 0]


def search_indices(z: torch.Tensor, bits: int, gains=SEARCH_GAINS) -> torch.Tensor:
    """The encoder's scale search (tq_quantize_block) on normalized rotated blocks z (..., 64) -> int64 indices.

    All gains at once: the indices of z*t for each gain t, scored by the cosine z.c/|c| of their
    centroids c; the first gain of the largest score wins. gains=(1.0,) is plain nearest-centroid coding.
    """
    g = torch.tensor(gains, dtype=torch.float32).to(z.dtype)     # the float32 table, as in C
    w = z[..., None, :] * g[:, None]                               # (..., gains, 64)
    idx = torch.searchsorted(boundaries(bits, z.dtype), w)         # boundaries strictly below: ties go down
    c = centroids(bits, z.dtype)[idx]
    score = _tree_sum64(z[..., None, :] * c) / _sqrt(_tree_sum64(c * c))
    best, pick = score[..., 0], torch.zeros(score.shape[:-1], dtype=torch.int64)
    for k in range(1, len(gains)):
        better = score[..., k] > best
        best = torch.where(better, score[..., k], best)
        pick = torch.where(better, torch.full_like(pick, k), pick)
    return torch.gather(idx, -2, pick[..., None, None].expand(*pick.shape, 1, QK_TQ))[..., 0, :]


def quantize_indices(x, type: TypeLike, dtype: torch.dtype = torch.float32,
                     norm_mode: NormMode = "corrected", gains=SEARCH_GAINS) -> tuple:
    """The unpacked codes of x: ((rows, nblocks, 64) int64 indices, (rows, nblocks) scale d before fp16
    rounding, (rows, nblocks) normalized rotated blocks z). No input validation beyond shapes.
    gains: the scale search's gains (search_indices); the format's are SEARCH_GAINS."""
    t = type_info(type)
    if norm_mode not in ("corrected", "raw"):
        raise ValueError(f"norm_mode must be 'corrected' or 'raw', got {norm_mode!r}")
    b = _blocks(_rows(x, dtype))
    amax = b.abs().amax(dim=-1)
    zero = amax < torch.finfo(torch.float32).tiny  # subnormal blocks too, as in C: stored as zero
    one = torch.ones_like(amax)
    inv_amax = one / torch.where(zero, one, amax)         # an all-zero block: any finite value, masked below
    y = fwht64(b * inv_amax[..., None] * signs(dtype)) * 0.125
    norm = _sqrt(_seq_sum_sq(y))
    inv_norm = one / torch.where(zero, one, norm)
    z = y * inv_norm[..., None]
    idx = search_indices(z, t.bits, gains)
    idx = torch.where(zero[..., None], torch.zeros_like(idx), idx)
    if norm_mode == "corrected":
        c = centroids(t.bits, dtype)[idx]
        d = amax * (norm / _sqrt(_seq_sum_sq(c)))
    else:
        d = amax * norm
    d = torch.where(zero, torch.zeros_like(d), d)
    return idx, d, z


def pack(idx: torch.Tensor, d_bits: torch.Tensor, type: TypeLike) -> torch.Tensor:
    """Blocks as bytes: (rows, nblocks, 64) indices and (rows, nblocks) fp16 bits -> (rows, nblocks*type_size) uint8.

    tq4_0: d (2 bytes, little-endian), qs[32]: qs[j] = idx[j] | idx[j+32] << 4.
    tq3_0: d, qs[16]: bits 2k..2k+1 of qs[j] = low 2 bits of idx[j + 16k];
              qh[8]:  bit k of qh[j] = bit 2 of idx[j + 8k].
    tqv2_0: d, qs[16]: bits 2k..2k+1 of qs[j] = idx[j + 16k] (tq3_0 without qh).
    tq6_0: d, qs[32] as tq4_0's of the low 4 bits; qh[16]: bits 2k..2k+1 of qh[j] = bits 4, 5 of idx[j + 16k].
    """
    t = type_info(type)
    idx = idx.to(torch.int32)
    rows, nb = idx.shape[:2]
    d_bits = d_bits.to(torch.int32)
    head = torch.stack((d_bits & 0xFF, d_bits >> 8), dim=-1)
    k4 = torch.arange(4, dtype=torch.int32)[:, None]
    if t.bits in (4, 6):
        body = (idx[..., :QK_TQ // 2] & 0xF) | ((idx[..., QK_TQ // 2:] & 0xF) << 4)
        if t.bits == 6:
            qh = ((idx >> 4).reshape(rows, nb, 4, 16) << (2 * k4)).sum(dim=-2)   # disjoint bits: sum == or
            body = torch.cat((body, qh), dim=-1)
    else:
        body = ((idx & 3).reshape(rows, nb, 4, 16) << (2 * k4)).sum(dim=-2)   # disjoint bits: sum == or
        if t.bits == 3:
            k8 = torch.arange(8, dtype=torch.int32)[:, None]
            qh = ((idx >> 2).reshape(rows, nb, 8, 8) << k8).sum(dim=-2)
            body = torch.cat((body, qh), dim=-1)
    return torch.cat((head, body), dim=-1).to(torch.uint8).reshape(rows, nb * t.type_size)


def unpack(q: torch.Tensor, type: TypeLike) -> tuple:
    """Inverse of pack: (rows, nbytes) uint8 -> ((rows, nblocks, 64) int64 indices, (rows, nblocks) int32 fp16 bits)."""
    t = type_info(type)
    b = q.to(torch.int32).reshape(q.shape[0], -1, t.type_size)
    d_bits = b[..., 0] | (b[..., 1] << 8)
    k4 = torch.arange(4, dtype=torch.int32)[:, None]
    if t.bits in (4, 6):
        qs = b[..., 2:2 + QK_TQ // 2]
        idx = torch.cat((qs & 0xF, qs >> 4), dim=-1)
        if t.bits == 6:
            qh = b[..., 2 + QK_TQ // 2:]
            idx = idx | (((qh[..., None, :] >> (2 * k4)) & 3).flatten(-2) << 4)   # [k, j] -> index 16k + j
    else:
        qs = b[..., 2:2 + QK_TQ // 4]
        idx = ((qs[..., None, :] >> (2 * k4)) & 3).flatten(-2)            # [k, j] -> index 16k + j
        if t.bits == 3:
            qh = b[..., 2 + QK_TQ // 4:]
            k8 = torch.arange(8, dtype=torch.int32)[:, None]
            hi = (qh[..., None, :] >> k8) & 1                             # [k, j] -> index 8k + j
            idx = idx | (hi.flatten(-2) << 2)
    return idx.to(torch.int64), d_bits


def quantize(x, type: TypeLike, dtype: torch.dtype = torch.float32,
             norm_mode: NormMode = "corrected", gains=SEARCH_GAINS) -> torch.Tensor:
    """Quantize rows of x ((rows, n) or (n,), numpy or torch) -> (rows, n/64 * type_size) torch.uint8.

    Validation as ggml_tq.quantize: ValueError on NaN/Inf or a block norm above 65504 (naming the row)
    and on a row length that is not a multiple of 64. Unlike ggml_tq.quantize, a scale that rounds
    past 65504 saturates silently (as tq_fp32_to_fp16 does): this is the codec, not the gatekeeper.
    """
    t = type_info(type)
    xt = _rows(x, dtype)
    a = xt.numpy()
    check_finite(a)
    check_norms(a)
    idx, d, _ = quantize_indices(xt, t, dtype, norm_mode, gains)
    return pack(idx, fp16_bits(d), t)


# ---- dequantize and the rotated-domain dot ------------------------------------------------------

def _as_bytes(q, t: TypeInfo, n: int) -> torch.Tensor:
    if isinstance(q, torch.Tensor):
        q = q.detach().to("cpu").numpy()
    return torch.from_numpy(as_blocks(q, t, n))


def dequantize(q, type: TypeLike, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode (rows, n/64 * type_size) uint8 (numpy or torch; 1-D: one row) -> (rows, n) tensor of dtype."""
    t = type_info(type)
    idx, d_bits = unpack(_as_bytes(q, t, n), t)
    v = fwht64(centroids(t.bits, dtype)[idx])
    ds = fp16_value(d_bits, dtype) * 0.125
    return (v * ds[..., None] * signs(dtype)).reshape(idx.shape[0], n)


def dot_rotated(q_blocks, q_rot, type: TypeLike, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """tq4_0/tq3_0/tqv2_0/tq6_0_dot_rotated_ref: per row, sum over blocks of (sum_j q_rot_j * c_j, in order) * d -> (rows,)."""
    t = type_info(type)
    qr = _rows(q_rot, dtype)
    n = qr.shape[1]
    idx, d_bits = unpack(_as_bytes(q_blocks, t, n), t)
    c = centroids(t.bits, dtype)[idx]                        # (rows, nb, 64)
    qb = _blocks(qr).expand(c.shape[0], -1, -1) if qr.shape[0] == 1 else _blocks(qr)
    s = torch.zeros(c.shape[:2], dtype=dtype)
    for j in range(QK_TQ):
        s = s + qb[..., j] * c[..., j]
    s = s * fp16_value(d_bits, dtype)
    total = torch.zeros(c.shape[0], dtype=dtype)
    for ib in range(c.shape[1]):
        total = total + s[:, ib]
    return total
