"""How much error would scoring on the int8 tensor cores add to the decode kernel?

K's codebook as int8 (scale 127/max|c|) and the rotated query as int8 per 64-block (absmax, like upstream's
q8_1), against scoring in f16 and against TQ's own error. Random Gaussian keys
(8 channels 4x larger) and queries, head 128, scores q.k/sqrt(D); errors are rms over the scores' rms.
Also the centroid scale the kernel uses (SK of each type's traits in ggml-tq/cuda/tq-fattn-mma-i8.cuh): of the scales that keep
every centroid within int8, the one with the least rounding error, weighted by how often each centroid is hit
(a coordinate of a rotated unit vector is close to N(0, 1/64)).
Usage: .venv/bin/python bench/cuda/int8_scores.py   (what it found: docs/cuda.md)
"""
import math
import numpy as np, ggml_tq as t


def best_scale(c):
    """The scale s <= 127.49/max|c| minimizing the hit-weighted rms of round(c*s)/s - c, relative to rms(c)."""
    edges = np.concatenate(([-np.inf], (c[1:] + c[:-1])/2, [np.inf]))
    cdf = lambda x: 0.5*(1.0 + math.erf(x*8.0/math.sqrt(2.0))) if np.isfinite(x) else float(x > 0)
    w = np.array([cdf(edges[i + 1]) - cdf(edges[i]) for i in range(len(c))])
    err = lambda s: math.sqrt((w*(np.round(c*s)/s - c)**2).sum()/(w*c**2).sum())
    cands = np.linspace(32.0, 127.49/np.abs(c).max(), 20000)
    s = min(cands, key=err)
    return float(s), err(s), err(127.0/np.abs(c).max())


for name, bits in (("tq4_0", 4), ("tq3_0", 3), ("tqv2_0", 2)):
    s, e, e127 = best_scale(t.centroids(bits).astype(np.float64))
    print(f"{name} centroid scale: {s:.4f} (hit-weighted rms rounding error {e:.4f}; 127/max|c| gives {e127:.4f})")
rng = np.random.default_rng(0)
D, N, NQ = 128, 4096, 32
K = rng.standard_normal((N, D)).astype(np.float32)
K[:, :8] *= 4.0                       # a few outlier channels, as real keys have
Q = rng.standard_normal((NQ, D)).astype(np.float32)
for name, bits in (("tq4_0", 4), ("tq3_0", 3), ("tqv2_0", 2)):
    q = t.quantize(K, name)
    idx = t.unpack_indices(q, t.type_info(name)).reshape(N, D // 64, 64)
    d = t.scale_bits(q, t.type_info(name)).view(np.float16).astype(np.float32)          # (N, nb)
    c = t.centroids(bits).astype(np.float32)
    Qr = t.rotate(Q)                                                         # (NQ, D) rotated domain
    exact = (Q @ K.T) / np.sqrt(D)                                           # unquantized keys
    kq = (c[idx] * d[:, :, None]).reshape(N, D)                              # rotated-domain keys as stored
    ref = (Qr @ kq.T) / np.sqrt(D)                                           # f32 scoring of the TQ keys (CPU)
    # f16 scoring: Q rotated in f16, codebook values in f16, f32 accumulation
    f16 = (Qr.astype(np.float16).astype(np.float32) @ (c.astype(np.float16).astype(np.float32)[idx] * d[:, :, None]).reshape(N, D).T) / np.sqrt(D)
    # int8: codebook scaled by its best scale, Q per 64-block absmax to int8, integer dot per block times scales
    sc = best_scale(c.astype(np.float64))[0]; c8 = np.round(c * sc)
    Qb = Qr.reshape(NQ, D // 64, 64); qs = np.abs(Qb).max(-1, keepdims=True) / 127.0
    Q8 = np.round(Qb / qs)
    dots = np.einsum("qbj,nbj->qnb", Q8, c8[idx])                            # exact integers
    i8 = (dots * qs[:, None, :, 0] * d[None, :, :] / sc).sum(-1) / np.sqrt(D)
    rms = np.sqrt((ref ** 2).mean())
    e = lambda a, b: np.sqrt(((a - b) ** 2).mean()) / rms
    print(f"{name}: TQ error (vs unquantized keys) {e(ref, exact):.4f}   f16 scoring vs f32 {e(f16, ref):.5f}   "
          f"int8 scoring vs f32 {e(i8, ref):.5f}   (codebook int8 alone: max rel err of a centroid "
          f"{np.max(np.abs(c8 / sc - c) / np.abs(c)):.3f})")
    qonly = (((Q8 * qs).reshape(NQ, D)) @ kq.T) / np.sqrt(D)
    conly = (Qr @ ((c8[idx] / sc) * d[:, :, None]).reshape(N, D).T) / np.sqrt(D)
    print(f"   int8 query alone {e(qonly, ref):.5f}   int8 codebook alone {e(conly, ref):.5f}")
