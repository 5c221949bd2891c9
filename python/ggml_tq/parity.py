"""Parity of the C codec (reference and fast kernels) with the torch reference, and the codec's accuracy.

    python -m ggml_tq.parity [--json] [--rows N] [--seed S] [--lib PATH]

1. Parity, per type x input family x head size d (64, 128, 256): the C reference and the torch
   reference quantize the same float32 rows; so do the fast C kernels against the C reference
   (and, with --lib, the *_ref functions of another build of the library, e.g. build/tq/libggml-tq.so).
   Reported: the fraction of identical bytes; every differing index or scale is classified as a
   rounding tie or not (see TIE_EPS); then both sides dequantize the SAME bytes and the difference
   is measured.
2. Statistics (d = 128, Gaussian directions, held-out Gaussian queries), for the format (scale search,
   norm_mode "corrected": d = |x|/|c|), the same without the search (gain 1 only: nearest centroids),
   and TurboQuant as published (nearest centroids, "raw": d = |x|): the MSE of unit vectors, the
   inner-product error RMSE of (q.x' - q.x)/(|q||x|) and its bias, the regression slope of q.x'
   on q.x through the origin (1 = unbiased).

Exit status 1 when a tolerance below is violated, else 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Dict, List, Optional

import numpy as np

from . import _types as T

# ---- tolerances ---------------------------------------------------------------------------------
# Index/scale mismatches that are not rounding ties: none. Both sides run the same float32
# operations in the same order (the C build of ggml_tq uses -std=c11, hence no FMA contraction),
# so the expected number of mismatches of any kind is 0; ties are tolerated only so that a build
# with a different but legitimate float evaluation (FMA, another summation order) is judged fairly.
MAX_NON_TIE_MISMATCHES = 0
# A differing index is a tie when the float64 normalized rotated coordinate lies within TIE_EPS of
# a decision boundary. The float32 pipeline (64-term sums, a 6-stage FWHT, two divisions) errs by
# at most ~1e-6 absolute on coordinates bounded by 1, so 1e-5 is a 10x margin, while a random
# coordinate falls that close to one of the boundaries with probability ~1e-4 (tq4_0): a real
# packing or codebook bug shows as many non-tie mismatches. A differing fp16 scale is a tie when
# it is 1 ulp off, or when its block has tied indices and each side's scale is within 1 ulp of
# |x|/|c| computed in float64 from that side's indices.
TIE_EPS = 1e-5
# The scale search keeps the gain whose centroid vector c has the largest cosine z.c/|c|: two
# evaluations may keep different gains, hence many different indices, when those cosines are equal
# up to rounding. Such a block is a tie when the float64 cosines of both sides' choices differ by
# at most SCORE_EPS: float32 scores err by ~64 ulps of 1 (64-term sums), ~4e-6; choices that a
# bug makes differ by 1e-3 and more.
SCORE_EPS = 1e-5
# Dequantizing the same bytes: |difference| / (the row's max |value|). The op order is identical,
# so the expected value is 0 exactly; 2^-20 (~8 float32 ulps) leaves room for one fused or
# reordered rounding in an optimized kernel and nothing more.
DEQUANT_REL_TOL = 2.0 ** -20
# Unit-vector MSE at d = 128 (Gaussian directions). Lloyd-Max theory for a 64-dim block gives
# 0.00913 (4-bit), 0.0334 (3-bit) and 0.1145 (2-bit); the norm correction adds ~m^2/4 and the fp16
# scale ~1e-7, the scale search takes off ~20% (4-bit), ~9% (3-bit) and only ~1.5% (2-bit: four
# levels leave little to choose). The bounds are TurboQuant's published figures rounded up
# (0.009 -> 0.0100, 0.034 -> 0.0360, 0.117 -> 0.120); the 2-bit one is the tightest, ~4% above the
# measured ~0.115, still ~20 standard errors of 4096 samples (~2.5e-4): met unless the codec is broken.
# tq6_0 has no published figure: its bound is the Lloyd-Max MSE of the 64-level codebook itself (0.000616, before
# the search takes ~27 % off), rounded up.
MSE_MAX = {"tq4_0": 0.0100, "tq3_0": 0.0360, "tqv2_0": 0.120, "tq6_0": 0.00065}
# "corrected" is what the format stores because it halves the inner-product bias of "raw":
# checked as |1 - slope(corrected)| < |1 - slope(raw)|, the format against TurboQuant as published.

HEAD_DIMS = (64, 128, 256)
FAMILIES = ("gaussian", "student_t3", "outlier_channels", "zero_rows", "tiny_norm", "huge_norm")
STATS_D = 128
STATS_KEYS = 4096
STATS_QUERIES = 64


# ---- inputs -------------------------------------------------------------------------------------

def make_inputs(family: str, d: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, d) float32 rows of one input family."""
    g = rng.standard_normal((rows, d))
    if family == "gaussian":
        x = g
    elif family == "student_t3":
        x = rng.standard_t(3, size=(rows, d))
    elif family == "outlier_channels":
        x = g
        x[:, rng.choice(d, size=4, replace=False)] *= 20.0   # a few channels 20x larger, as in K caches
    elif family == "zero_rows":
        x = g
        x[::2] = 0.0                                       # whole rows zero
        if d > T.QK_TQ:
            x[1::4, T.QK_TQ:2 * T.QK_TQ] = 0.0             # and single zero blocks inside rows
    elif family == "tiny_norm":
        x = g * 1e-3                                       # block norms ~8e-3
    elif family == "huge_norm":
        x = g * (2e4 / np.sqrt(T.QK_TQ))                   # block norms ~2e4, below fp16's 65504
    else:
        raise ValueError(f"unknown input family {family!r}: valid ones are {', '.join(FAMILIES)}")
    return np.ascontiguousarray(x, dtype=np.float32)


# ---- comparisons --------------------------------------------------------------------------------

def _z64(xb: np.ndarray, t: T.TypeInfo) -> np.ndarray:
    """Normalized rotated coordinates of (nblocks, 64) float32 blocks, computed in float64."""
    import torch

    from . import reference as R
    _, _, z = R.quantize_indices(xb.astype(np.float64), t, dtype=torch.float64)
    return z.numpy().reshape(-1, T.QK_TQ)


def _fp16_bits64(d: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = d.astype(np.float16)
    h = np.where(np.isinf(h), np.float16(T.FP16_MAX), h)
    return h.view(np.uint16).astype(np.int64)


def compare_bytes(x: np.ndarray, qa: np.ndarray, qb: np.ndarray, type: T.TypeLike) -> Dict[str, float]:
    """Compares two encodings qa, qb of the float32 rows x, classifying each difference as a rounding tie or not
    (an index within TIE_EPS of a boundary, or a block whose two choices score alike within SCORE_EPS).

    Returns counts: bytes, bytes_identical (and _frac), blocks, index_mismatches, index_ties,
    scale_mismatches, scale_ties, non_tie (= mismatches that are not ties; must be 0).
    """
    t = T.type_info(type)
    x = T.as_rows(x)
    qa, qb = T.as_blocks(qa, t, x.shape[1]), T.as_blocks(qb, t, x.shape[1])
    if qa.shape[0] != x.shape[0] or qb.shape[0] != x.shape[0]:
        raise ValueError("x, qa and qb must have the same number of rows")
    ia, ib = T.unpack_indices(qa, t).astype(np.int64), T.unpack_indices(qb, t).astype(np.int64)
    da, db = T.scale_bits(qa, t).astype(np.int64), T.scale_bits(qb, t).astype(np.int64)
    xb = x.reshape(-1, T.QK_TQ)
    ia, ib, da, db = ia.reshape(-1, T.QK_TQ), ib.reshape(-1, T.QK_TQ), da.reshape(-1), db.reshape(-1)

    idx_diff = ia != ib
    idx_tie = np.zeros_like(idx_diff)
    blk = np.nonzero(idx_diff.any(axis=1))[0]
    if blk.size:
        z = _z64(xb[blk], t)
        bnd = np.asarray(_boundaries32(t.bits), dtype=np.float64)
        dist = np.min(np.abs(z[:, :, None] - bnd[None, None, :]), axis=2)
        idx_tie[blk] = idx_diff[blk] & (np.abs(ia[blk] - ib[blk]) == 1) & (dist <= TIE_EPS)
        c = np.asarray(_centroids32(t.bits), dtype=np.float64)
        ca, cb = c[ia[blk]], c[ib[blk]]
        cos_a = np.sum(z * ca, axis=1) / np.sqrt(np.sum(ca * ca, axis=1))
        cos_b = np.sum(z * cb, axis=1) / np.sqrt(np.sum(cb * cb, axis=1))
        idx_tie[blk] |= idx_diff[blk] & (np.abs(cos_a - cos_b) <= SCORE_EPS)[:, None]

    scale_diff = da != db
    scale_tie = scale_diff & (np.abs(da - db) <= 1)
    # a block whose indices tie legitimately differs in |c|, hence in d by possibly more than 1 ulp
    tied_blocks = idx_diff.any(axis=1) & ~(idx_diff & ~idx_tie).any(axis=1) & scale_diff & ~scale_tie
    if tied_blocks.any():
        c = np.asarray(_centroids32(t.bits), dtype=np.float64)
        norm = np.sqrt(np.sum(xb[tied_blocks].astype(np.float64) ** 2, axis=1))
        ea = _fp16_bits64(norm / np.sqrt(np.sum(c[ia[tied_blocks]] ** 2, axis=1)))
        eb = _fp16_bits64(norm / np.sqrt(np.sum(c[ib[tied_blocks]] ** 2, axis=1)))
        scale_tie[tied_blocks] = (np.abs(da[tied_blocks] - ea) <= 1) & (np.abs(db[tied_blocks] - eb) <= 1)

    same = qa == qb
    return {
        "bytes": int(same.size),
        "bytes_identical": int(same.sum()),
        "bytes_identical_frac": float(same.mean()) if same.size else 1.0,
        "blocks": int(da.size),
        "index_mismatches": int(idx_diff.sum()),
        "index_ties": int(idx_tie.sum()),
        "scale_mismatches": int(scale_diff.sum()),
        "scale_ties": int(scale_tie.sum()),
        "non_tie": int((idx_diff & ~idx_tie).sum() + (scale_diff & ~scale_tie).sum()),
    }


def compare_dequant(ya: np.ndarray, yb: np.ndarray) -> Dict[str, float]:
    """Differences of two decodings of the same bytes: max/mean |diff|, max |diff| relative to the row's max |value|."""
    ya, yb = np.asarray(ya, dtype=np.float64), np.asarray(yb, dtype=np.float64)
    diff = np.abs(ya - yb)
    scale = np.maximum(np.abs(ya).max(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    return {
        "dequant_max_abs": float(diff.max()) if diff.size else 0.0,
        "dequant_mean_abs": float(diff.mean()) if diff.size else 0.0,
        "dequant_max_rel": float((diff / scale).max()) if diff.size else 0.0,
        "dequant_identical_frac": float((diff == 0).mean()) if diff.size else 1.0,
    }


def _centroids32(bits: int) -> np.ndarray:
    from . import reference as R
    return R.centroids(bits).numpy()


def _boundaries32(bits: int) -> np.ndarray:
    from . import reference as R
    return R.boundaries(bits).numpy()


# ---- the codecs compared ------------------------------------------------------------------------

Codec = Dict[str, Callable]


def _codecs(lib_path: Optional[str]) -> Dict[str, Codec]:
    """side name -> {"quantize": f(x, type) -> bytes, "dequantize": f(q, type, n) -> floats}; "c_ref" is the baseline."""
    import ggml_tq as G
    from . import reference as R
    codecs = {
        "c_ref": {"quantize": lambda x, t: G.quantize(x, t, impl="ref"),
                  "dequantize": lambda q, t, n: G.dequantize(q, t, n, impl="ref")},
        "torch": {"quantize": lambda x, t: R.quantize(x, t).numpy(),
                  "dequantize": lambda q, t, n: R.dequantize(q, t, n).numpy()},
        "c_cpu": {"quantize": lambda x, t: G.quantize(x, t, impl="cpu"),
                  "dequantize": lambda q, t, n: G.dequantize(q, t, n, impl="cpu")},
    }
    if lib_path:
        codecs[f"lib:{os.path.basename(lib_path)}"] = _lib_codec(lib_path)
    return codecs


def _lib_codec(path: str) -> Codec:
    """The *_ref functions of another build of the C library (cffi ABI mode, e.g. the CMake build)."""
    from cffi import FFI

    from ._tq_cffi import ffi as api_ffi
    from ._tq_cffi import lib as api_lib

    # declared as the extension declares them (generated from ggml-tq.h when it was built)
    decls = []
    for name in dir(api_lib):
        t = api_ffi.typeof(getattr(api_lib, name))
        decls.append(f"{t.result.cname} {name}({', '.join(a.cname for a in t.args) or 'void'});")
    ffi = FFI()
    ffi.cdef("\n".join(decls))
    lib = ffi.dlopen(os.path.abspath(path))

    def quantize(x, t):
        t = T.type_info(t)
        a = T.as_rows(x)
        out = np.empty((a.shape[0], a.shape[1] // T.QK_TQ * t.type_size), dtype=np.uint8)
        fn = getattr(lib, f"quantize_row_{t.name}_ref")
        fn(ffi.from_buffer("float[]", a), ffi.from_buffer("uint8_t[]", out, require_writable=True), a.size)
        return out

    def dequantize(q, t, n):
        t = T.type_info(t)
        b = T.as_blocks(q, t, n)
        out = np.empty((b.shape[0], n), dtype=np.float32)
        fn = getattr(lib, f"dequantize_row_{t.name}_ref")
        fn(ffi.from_buffer("uint8_t[]", b), ffi.from_buffer("float[]", out, require_writable=True), out.size)
        return out

    return {"quantize": quantize, "dequantize": dequantize}


# ---- statistics ---------------------------------------------------------------------------------

def ip_stats(x: np.ndarray, xq: np.ndarray, queries: np.ndarray) -> Dict[str, float]:
    """Inner-product error of reconstructions xq of keys x against queries (all pairs), in float64."""
    x, xq, queries = (np.asarray(a, dtype=np.float64) for a in (x, xq, queries))
    s = queries @ x.T
    sq = queries @ xq.T
    denom = np.linalg.norm(queries, axis=1)[:, None] * np.linalg.norm(x, axis=1)[None, :]
    e = (sq - s) / denom
    slope = float(np.sum(s * sq) / np.sum(s * s))
    return {"ip_rmse": float(np.sqrt(np.mean(e * e))), "ip_mean_err": float(np.mean(e)),
            "slope": slope, "bias": slope - 1.0}


def statistics(seed: int) -> List[Dict[str, float]]:
    """MSE, inner-product RMSE and bias at d = STATS_D of three encoders: the format (C library: scale search,
    norm_mode corrected), the same without the scale search (torch, gain 1 only) and TurboQuant as published
    (torch: gain 1 only, norm_mode raw)."""
    import torch

    import ggml_tq as G
    from . import reference as R
    rng = np.random.default_rng([seed, 1])
    g = rng.standard_normal((STATS_KEYS, STATS_D))
    x = (g / np.linalg.norm(g, axis=1, keepdims=True)).astype(np.float32)   # Gaussian directions
    queries = rng.standard_normal((STATS_QUERIES, STATS_D))                   # held out
    out = []
    for name in T.TYPES:
        for mode, search in (("corrected", True), ("corrected", False), ("raw", False)):
            if search:
                xq = G.dequantize(G.quantize(x, name), name, STATS_D)
            else:
                idx, d, _ = R.quantize_indices(x, name, torch.float32, norm_mode=mode, gains=(1.0,))
                xq = R.dequantize(R.pack(idx, R.fp16_bits(d), name).numpy(), name, STATS_D).numpy()
            err = np.sum((x.astype(np.float64) - xq) ** 2, axis=1)
            row = {"type": name, "norm_mode": mode, "search": search, "d": STATS_D, "keys": STATS_KEYS,
                   "queries": STATS_QUERIES, "mse": float(err.mean()),
                   "norm_ratio": float(np.mean(np.linalg.norm(xq.astype(np.float64), axis=1)))}
            row.update(ip_stats(x, xq, queries))
            out.append(row)
    return out


# ---- the run ------------------------------------------------------------------------------------

def run(rows: int = 256, seed: int = 0, lib_path: Optional[str] = None) -> dict:
    import ggml_tq as G
    codecs = _codecs(lib_path)
    parity = []
    violations = []
    for fi, family in enumerate(FAMILIES):
        for d in HEAD_DIMS:
            x = make_inputs(family, d, rows, np.random.default_rng([seed, fi, d]))
            for name in T.TYPES:
                base_q = codecs["c_ref"]["quantize"](x, name)
                base_y = codecs["c_ref"]["dequantize"](base_q, name, d)
                for side, codec in codecs.items():
                    if side == "c_ref":
                        continue
                    r = {"type": name, "family": family, "d": d, "side": side, "rows": rows}
                    r.update(compare_bytes(x, base_q, codec["quantize"](x, name), name))
                    r.update(compare_dequant(base_y, codec["dequantize"](base_q, name, d)))
                    if not np.isfinite(base_y).all():
                        violations.append(f"{name} {family} d={d}: C dequantize produced non-finite values")
                    if r["non_tie"] > MAX_NON_TIE_MISMATCHES:
                        violations.append(f"{name} {family} d={d} {side}: {r['non_tie']} non-tie mismatches "
                                          f"(max {MAX_NON_TIE_MISMATCHES})")
                    if r["dequant_max_rel"] > DEQUANT_REL_TOL:
                        violations.append(f"{name} {family} d={d} {side}: dequantizing the same bytes differs by "
                                          f"{r['dequant_max_rel']:.3g} relative (max {DEQUANT_REL_TOL:.3g})")
                    parity.append(r)
                if family == "zero_rows":
                    zero = ~x.any(axis=1)
                    if np.any(base_y[zero] != 0):
                        violations.append(f"{name} zero_rows d={d}: all-zero rows do not decode to zeros")
    stats = statistics(seed)
    for name in T.TYPES:
        corr = next(s for s in stats if s["type"] == name and s["norm_mode"] == "corrected" and s["search"])
        raw = next(s for s in stats if s["type"] == name and s["norm_mode"] == "raw")
        if not corr["mse"] <= MSE_MAX[name]:
            violations.append(f"{name}: unit-vector MSE {corr['mse']:.5f} > {MSE_MAX[name]}")
        if not abs(corr["bias"]) < abs(raw["bias"]):
            violations.append(f"{name}: norm correction does not reduce the inner-product bias "
                              f"({corr['bias']:+.5f} vs raw {raw['bias']:+.5f})")
    return {
        "tolerances": {"max_non_tie_mismatches": MAX_NON_TIE_MISMATCHES, "tie_eps": TIE_EPS, "score_eps": SCORE_EPS,
                       "dequant_rel_tol": DEQUANT_REL_TOL, "mse_max": MSE_MAX},
        "cpu_variant": G.cpu_variant(),
        "rows": rows, "seed": seed,
        "parity": parity,
        "stats": stats,
        "violations": violations,
        "ok": not violations,
    }


def _summary(parity: List[dict]) -> List[dict]:
    """Per type and side: totals over families and head sizes."""
    out = []
    for name in T.TYPES:
        for side in dict.fromkeys(r["side"] for r in parity):
            rs = [r for r in parity if r["type"] == name and r["side"] == side]
            tot = {k: sum(r[k] for r in rs) for k in ("bytes", "bytes_identical", "index_mismatches",
                                                       "index_ties", "scale_mismatches", "scale_ties", "non_tie")}
            tot.update(type=name, side=side, family="(all)", d=0,
                       bytes_identical_frac=tot["bytes_identical"] / max(tot["bytes"], 1),
                       dequant_max_abs=max(r["dequant_max_abs"] for r in rs),
                       dequant_mean_abs=float(np.mean([r["dequant_mean_abs"] for r in rs])),
                       dequant_max_rel=max(r["dequant_max_rel"] for r in rs))
            out.append(tot)
    return out


def format_table(rep: dict) -> str:
    lines = [f"ggml_tq parity: C reference (tq-ref.c) vs torch reference, fast kernels ({rep['cpu_variant']}) "
             f"and any --lib; {rep['rows']} rows per family and d, seed {rep['seed']}",
             f"tolerances: non-tie mismatches <= {MAX_NON_TIE_MISMATCHES}, tie = within {TIE_EPS:g} of a boundary, "
             f"gains scoring within {SCORE_EPS:g} or 1 fp16 ulp; same-bytes dequant rel diff <= {DEQUANT_REL_TOL:.3g}; "
             "MSE <= " + ", ".join(f"{v} ({k})" for k, v in MSE_MAX.items()),
             ""]
    sw = max([4] + [len(r["side"]) for r in rep["parity"]])
    hdr = (f"{'type':6} {'family':17} {'d':>4} {'side':{sw}} {'bytes_same':>10} {'idx_diff':>8} {'ties':>5} "
           f"{'d_diff':>6} {'ties':>5} {'non_tie':>7} {'deq_max_abs':>11} {'deq_mean_abs':>12}")
    lines += [hdr, "-" * len(hdr)]
    for r in rep["parity"] + _summary(rep["parity"]):
        lines.append(f"{r['type']:6} {r['family']:17} {r['d'] or '':>4} {r['side']:{sw}} "
                     f"{r['bytes_identical_frac']:10.6f} {r['index_mismatches']:8d} {r['index_ties']:5d} "
                     f"{r['scale_mismatches']:6d} {r['scale_ties']:5d} {r['non_tie']:7d} "
                     f"{r['dequant_max_abs']:11.3g} {r['dequant_mean_abs']:12.3g}")
    s0 = rep["stats"][0]
    lines += ["", f"statistics: d={s0['d']}, {s0['keys']} Gaussian unit keys, {s0['queries']} held-out Gaussian queries "
              f"(slope of q.x' on q.x: 1 = unbiased)"]
    hdr = f"{'type':6} {'norm_mode':10} {'search':6} {'mse':>9} {'ip_rmse':>9} {'slope':>9} {'bias':>9} {'|x_q|':>8}"
    lines += [hdr, "-" * len(hdr)]
    for s in rep["stats"]:
        lines.append(f"{s['type']:6} {s['norm_mode']:10} {'yes' if s['search'] else 'no':6} "
                     f"{s['mse']:9.6f} {s['ip_rmse']:9.6f} {s['slope']:9.6f} "
                     f"{s['bias']:+9.6f} {s['norm_ratio']:8.5f}")
    lines.append("")
    if rep["violations"]:
        lines.append(f"FAIL: {len(rep['violations'])} violation(s)")
        lines += [f"  {v}" for v in rep["violations"]]
    else:
        lines.append("OK: all tolerances met")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ggml_tq.parity",
                                description="C vs torch parity and accuracy of the TQ4_0/TQ3_0/TQV2_0/TQ6_0 codecs")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of the table")
    p.add_argument("--rows", type=int, default=256, help="rows per input family and head size (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--lib", metavar="PATH",
                   help="also compare the *_ref functions of this shared library build (e.g. build/tq/libggml-tq.so)")
    a = p.parse_args(argv)
    if a.rows < 1:
        p.error("--rows must be at least 1")
    rep = run(rows=a.rows, seed=a.seed, lib_path=a.lib)
    if a.json:
        json.dump(rep, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(rep))
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
