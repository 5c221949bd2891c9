"""Candidate KV-cache codecs in torch, for screening against real attention (tools/kv_lab.py).

Every codec maps rows (n, d) of float32 to their decoded values (n, d): what attention reads back
from the cache. The upstream block codecs follow ggml's scalar references (ggml-quants.c) step by
step; the shipped TQ types call ggml_tq.reference (byte-exact with tq-ref.c). The TQ variants
(scale search, head-wide rotation, other bit widths and block sizes) are written from the same
pieces, in the rotated domain where the codec works.

Rotations, as llama.cpp applies them (llama-graph.cpp build_attn, llama-kv-cache.cpp):
  upstream_rot(x, n)   the orthonormal Sylvester Hadamard of ggml_gen_hadamard on each n-value
                       piece; keys use n = the largest power of two dividing the head size
                       (build_input_k_rot), values n = 64 (build_input_v_rot). Q and K are rotated
                       alike, so scores are unchanged; V is rotated and the output rotated back.
  TQ's own             D*H/8 on each 64-value block (reference.rotate).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from . import reference
from .codebook import lloyd_max_centroids, splitmix64

QK = 32  # block size of q8_0, q4_0, q5_1, iq4_nl
KVALUES_IQ4NL = torch.tensor([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                             dtype=torch.float32)


def fp16(x: torch.Tensor) -> torch.Tensor:
    """Round to fp16 and back (ggml's GGML_FP32_TO_FP16: nearest even; scales here stay far below 65504)."""
    return x.to(torch.float16).to(torch.float32)


# ---- rotations ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def hadamard(n: int) -> torch.Tensor:
    """ggml_gen_hadamard: orthonormal Sylvester matrix of order n (symmetric, H @ H = I)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return (h / math.sqrt(n)).to(torch.float32)


def k_rot_size(head: int) -> int:
    """build_input_k_rot: the largest power of two dividing the head size (at least 64)."""
    n = 64
    while head % (2 * n) == 0:
        n *= 2
    return n


def upstream_rot(x: torch.Tensor, n: int) -> torch.Tensor:
    """llama_mul_mat_hadamard: each n-value piece of each row times H_n (its own inverse)."""
    return (x.reshape(-1, n) @ hadamard(n)).reshape(x.shape)


@functools.lru_cache(maxsize=None)
def random_signs(n: int, seed: int = 0x13) -> torch.Tensor:
    """n fixed signs from splitmix64 (one bit per sign, 64 per draw) for a head-wide randomized Hadamard."""
    bits = []
    for i in range((n + 63) // 64):
        m = splitmix64(seed + i)
        bits += [(m >> j) & 1 for j in range(64)]
    return torch.tensor([-1.0 if b else 1.0 for b in bits[:n]], dtype=torch.float32)


def sym_rot(x: torch.Tensor, n: int) -> torch.Tensor:
    """D H D on each n-value piece: randomized, yet symmetric and its own inverse like H, so it can stand in
    for upstream's matrix wherever llama.cpp assumes rot^2 = I (output rotated back, K shift)."""
    d = random_signs(n).repeat(x.shape[-1] // n)
    return upstream_rot(x * d, n) * d


def head_rot(x: torch.Tensor, head: int) -> torch.Tensor:
    """Randomized Hadamard over whole heads: H_head (D x), orthonormal."""
    return upstream_rot(x * random_signs(head).repeat(x.shape[-1] // head), head)


def head_unrot(y: torch.Tensor, head: int) -> torch.Tensor:
    return upstream_rot(y, head) * random_signs(head).repeat(y.shape[-1] // head)


# ---- upstream block codecs (ggml-quants.c references) -----------------------------------------------

def _blocks(x: torch.Tensor, qk: int = QK) -> torch.Tensor:
    return x.reshape(x.shape[0], -1, qk)


def q8_0(x: torch.Tensor) -> torch.Tensor:
    b = _blocks(x)
    d = b.abs().amax(-1, keepdim=True) / 127
    idv = torch.where(d > 0, 1 / torch.where(d > 0, d, 1), 0)
    q = torch.sign(b * idv) * torch.floor((b * idv).abs() + 0.5)  # roundf: half away from zero
    return (q * fp16(d)).reshape(x.shape)


def q4_0(x: torch.Tensor) -> torch.Tensor:
    b = _blocks(x)
    i = b.abs().argmax(-1, keepdim=True)
    mx = b.gather(-1, i)
    d = mx / -8
    idv = torch.where(d != 0, 1 / torch.where(d != 0, d, 1), 0)
    q = torch.clamp(torch.trunc(b * idv + 8.5), max=15)
    return ((q - 8) * fp16(d)).reshape(x.shape)


def q5_1(x: torch.Tensor) -> torch.Tensor:
    b = _blocks(x)
    mn, mx = b.amin(-1, keepdim=True), b.amax(-1, keepdim=True)
    d = (mx - mn) / 31
    idv = torch.where(d != 0, 1 / torch.where(d != 0, d, 1), 0)
    q = torch.trunc((b - mn) * idv + 0.5)
    return (q * fp16(d) + fp16(mn)).reshape(x.shape)


def _best_index(values: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """best_index_int8: nearest value, ties to the upper one."""
    mid = (values[1:] + values[:-1]) / 2
    return torch.bucketize(a, mid, right=True)


def iq4_nl(x: torch.Tensor) -> torch.Tensor:
    """quantize_row_iq4_nl_ref (ntry = -1): d from the signed max, indices, then the x^2-weighted LS scale."""
    b = _blocks(x)
    i = b.abs().argmax(-1, keepdim=True)
    mx = b.gather(-1, i)
    d = mx / KVALUES_IQ4NL[0]
    ok = mx.abs() >= 1e-15
    idv = 1 / torch.where(ok, d, 1)
    L = _best_index(KVALUES_IQ4NL, b * idv)
    q = KVALUES_IQ4NL[L]
    w = b * b
    sumqx, sumq2 = (w * q * b).sum(-1, keepdim=True), (w * q * q).sum(-1, keepdim=True)
    d = torch.where((sumq2 > 0) & ok, sumqx / torch.where(sumq2 > 0, sumq2, 1), 0)
    return (q * fp16(d)).reshape(x.shape)


def f16(x: torch.Tensor) -> torch.Tensor:
    return fp16(x)


UPSTREAM = {"f16": f16, "q8_0": q8_0, "q5_1": q5_1, "iq4_nl": iq4_nl, "q4_0": q4_0}
# the type the CPU converts the query to before its dot product with K (type_traits_cpu vec_dot_type)
Q_VEC_DOT = {"f16": f16, "q8_0": q8_0, "q5_1": q8_0, "iq4_nl": q8_0, "q4_0": q8_0}
BITS = {"f16": 16.0, "q8_0": 8.5, "q5_1": 6.0, "iq4_nl": 4.5, "q4_0": 4.5}


# ---- TQ -----------------------------------------------------------------------------------------------

def tq_shipped(x: torch.Tensor, bits: int, gains=None) -> torch.Tensor:
    """The shipped format, bytes as tq-ref.c writes them, decoded; gains=(1.0,): the encoder without its
    scale search (plain nearest-centroid coding)."""
    t = {6: "tq6_0", 4: "tq4_0", 3: "tq3_0", 2: "tqv2_0"}[bits]
    q = reference.quantize(x, t) if gains is None else reference.quantize(x, t, gains=gains)
    return reference.dequantize(q, t, x.shape[-1])


@functools.lru_cache(maxsize=None)
def codebook(bits: int, dim: int = 64) -> tuple:
    """Lloyd-Max centroids and midpoints for a coordinate of a random unit vector in R^dim, float32."""
    if dim == 64 and bits in (2, 3, 4):
        return reference.centroids(bits), reference.boundaries(bits)
    c = lloyd_max_centroids(bits, d=dim)
    return torch.from_numpy(c.astype(np.float32)), torch.from_numpy(((c[1:] + c[:-1]) / 2).astype(np.float32))


def tq_search(y: torch.Tensor, bits: int, grid=(1.0,)) -> tuple:
    """Index choice for rotated blocks y (..., B), Lloyd-Max codebook of R^B.

    For each magnification t of the grid, indices = nearest centroid of t * y/|y|; the grid point whose
    centroid vector c has the largest cosine with y wins (the first on ties): that minimises the block
    error whichever way the scale is then stored. Returns (c, |y|, cos, |c|).
    """
    c_tab, b_tab = codebook(bits, y.shape[-1])
    norm = y.norm(dim=-1, keepdim=True)
    z = y / torch.where(norm > 0, norm, 1)
    best = None
    for t in grid:
        c = c_tab[torch.bucketize(z * t, b_tab)]   # bucketize right=False: ties go to the lower centroid
        cn = c.norm(dim=-1, keepdim=True)
        cos = (z * c).sum(-1, keepdim=True) / cn
        if best is None:
            best = [c, cos, cn]
        else:
            better = cos > best[1]
            best = [torch.where(better, new, old) for new, old in zip((c, cos, cn), best)]
    return best[0], norm, best[1], best[2]


def tq_scale(found: tuple, scale: str = "norm") -> torch.Tensor:
    """Decoded blocks from tq_search's choice and one fp16 scale per block: scale="norm" keeps the block
    norm, d = |y|/|c| (the shipped rule); scale="ls" is the least-squares d = <y,c>/<c,c> = |y| cos/|c|."""
    c, norm, cos, cn = found
    d = norm / cn if scale == "norm" else norm * cos / cn
    return c * fp16(d)


def tq_block(y: torch.Tensor, bits: int, scale: str = "norm", grid=(1.0,)) -> torch.Tensor:
    return tq_scale(tq_search(y, bits, grid), scale)


def tq(x: torch.Tensor, bits: int, head: int, rot: str = "block", scale: str = "norm", grid=(1.0,),
       block: int = 64, memo: dict = None) -> torch.Tensor:
    """TQ-like codec on rows x (n, d): rotate, quantize blocks of `block` values, rotate back.

    rot="block": TQ's D*H/8 on each 64-value block (the shipped transform; block must be 64);
    rot="head": a randomized Hadamard over the whole head, then blocks with their own scales.
    memo: a dict kept per input x, so that variants that differ only in the stored scale search once.
    """
    key = (bits, rot, tuple(grid), block)
    found = None if memo is None else memo.get(key)
    if found is None:
        if rot == "block":
            assert block == 64
            y = block_rotate(x)
        else:
            y = head_rot(x, head)
        found = tq_search(y.reshape(x.shape[0], -1, block), bits, grid)
        if memo is not None:
            memo[key] = found
    yq = tq_scale(found, scale).reshape(x.shape)
    return block_unrotate(yq) if rot == "block" else head_unrot(yq, head)


# magnifications t tried by the scale search: t scales the normalized block before the nearest-centroid
# choice, so t > 1 pushes values outwards (larger indices, smaller stored scale). GRID: t = 1 (today's
# choice) first, then 0.85 + 0.05 k, k = 0..12; on SmolLM2's and Gemma-3's keys it keeps 97-98 % of what a
# 91-point grid over 0.70..1.60 gains (block MSE x0.78 at 4 bits, x0.89 at 3 bits)
GRID = (1.0,) + tuple(0.85 + 0.05 * k for k in range(13) if k != 3)
GRID_SMALL = tuple(1 + 0.04 * k for k in range(-3, 4))


def block_rotate(x: torch.Tensor) -> torch.Tensor:
    """TQ's D*H/8 on each 64-value block as one matrix product: the same map as reference.rotate, rounded
    differently (for the variants; the shipped codec goes through reference)."""
    return ((x.reshape(-1, 64) * reference.signs()) @ hadamard(64)).reshape(x.shape)


def block_unrotate(y: torch.Tensor) -> torch.Tensor:
    return ((y.reshape(-1, 64) @ hadamard(64)) * reference.signs()).reshape(y.shape)


def tq_bits(bits: int, block: int = 64) -> float:
    return bits + 16 / block


# ---- key weighting (llama.cpp patch 0009) ---------------------------------------------------------------

def k_weight_stats(k: torch.Tensor, q: torch.Tensor, rope: str = None):
    """Mean squares per channel of centered keys k (T, Hkv, D) and of queries q (T, H, D), each query head counted
    with the KV head it reads (h // (H / Hkv)): k2, q2 (Hkv, D) in float64. rope "norm" (channels 2i, 2i + 1) or
    "neox" (i, i + D/2): each channel gets the sum over its RoPE pair, whose split between the two channels turns
    with the position while the sum does not (llama.cpp ties the weights of a pair so)."""
    t, hkv, d = k.shape
    k2, q2 = k.double().pow(2).mean(0), q.double().reshape(t, hkv, -1, d).pow(2).mean((0, 2))
    if rope == "norm":
        k2, q2 = ((x[:, 0::2] + x[:, 1::2]).repeat_interleave(2, -1) for x in (k2, q2))
    elif rope == "neox":
        k2, q2 = ((x[:, :d // 2] + x[:, d // 2:]).repeat(1, 2) for x in (k2, q2))
    elif rope is not None:
        raise ValueError(f"rope {rope!r}")
    return k2, q2


# the gate of llama.cpp's fit outside QK-norm layers (LLAMA_K_WEIGHT_MAX_RATIO), and a gate above any ratio, which
# weights every KV head (LLAMA_K_WEIGHT_ALL)
K_WEIGHT_MAX_RATIO = 0.45
K_WEIGHT_ALL = 2.0


def k_weight_ratio(k: torch.Tensor, q: torch.Tensor, rope: str = None) -> torch.Tensor:
    """Predicted score-error ratio of weighted against unweighted keys per KV head (Hkv,): the sum over 64-value
    blocks of (sum sqrt(q2 k2))^2 against sum q2 * sum k2 (docs/design.md, "Key weighting")."""
    return _k_weight_ratio(*k_weight_stats(k, q, rope))


def _k_weight_ratio(k2: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    hkv = k2.shape[0]
    a, b = q2.sqrt().reshape(hkv, -1, 64), k2.sqrt().reshape(hkv, -1, 64)
    num = (a * b).sum(-1).pow(2).sum(-1)
    den = (q2.reshape(hkv, -1, 64).sum(-1) * k2.reshape(hkv, -1, 64).sum(-1)).sum(-1) + 1e-30
    return num / den


def k_weights(k: torch.Tensor, q: torch.Tensor, max_ratio: float = K_WEIGHT_MAX_RATIO, rope: str = None) -> torch.Tensor:
    """Key weights w (Hkv, D) as llama.cpp's llama_k_weight_fit (patch 0009) fits them on the first ubatch: k (T, Hkv,
    D) its centered keys, q (T, H, D) its queries, rope the model's RoPE pairing (k_weight_stats). The cache stores
    (k - m) * w and attention reads it with q / w: w_j = (q2_j / k2_j)^(1/4), the mean squares (summed over RoPE
    pairs) floored at 1 % of their head's average, relative to the head's average ratio, clamped to [1/4, 4]; 1
    for a KV head whose k_weight_ratio is above max_ratio."""
    k2, q2 = k_weight_stats(k, q, rope)
    tiny = 1e-30
    ka, qa = k2.mean(-1, keepdim=True), q2.mean(-1, keepdim=True)
    r = (q2 + (0.01 * qa + tiny)) / (k2 + (0.01 * ka + tiny)) * ((ka + tiny) / (qa + tiny))
    w = r.sqrt().sqrt().clamp(0.25, 4.0)
    on = (_k_weight_ratio(k2, q2) <= max_ratio)[:, None]
    return torch.where(on, w, torch.ones_like(w)).float()


# ---- outlier channels (the paper's split) --------------------------------------------------------------

def outlier_split(x: torch.Tensor, head: int, channels: torch.Tensor, bits_out: int, bits_in: int,
                  scale: str = "norm") -> torch.Tensor:
    """Quantize the channels listed in `channels` (per head: a bool mask of length head) as one group at
    bits_out and the others at bits_in, each group rotated by its own randomized Hadamard (power-of-two
    sizes) and coded as TQ blocks of its whole size."""
    n, d = x.shape
    xh = x.reshape(n, d // head, head)
    out = torch.empty_like(xh)
    for h in range(d // head):
        m = channels[h]
        for sel, bits in ((m, bits_out), (~m, bits_in)):
            g = xh[:, h, sel]
            size = g.shape[-1] & -g.shape[-1]  # rotation and block: the largest power of two dividing it
            y = head_rot(g, size)
            yq = tq_block(y.reshape(n, -1, size), bits, scale).reshape(g.shape)
            out[:, h, sel] = head_unrot(yq, size)
    return out.reshape(n, d)
