"""How much error would scoring on the int8 tensor cores add to the decode kernel?

K's codebook as int8 (scale 127/max|c|) and the rotated query as int8 per 64-block (absmax, like upstream's
q8_1), against the f16 scoring the GPU kernel does now and against TQ's own error. Random Gaussian keys
(8 channels 4x larger) and queries, head 128, scores q.k/sqrt(D); errors are rms over the scores' rms.
Usage: .venv/bin/python tools/fattn-lab/int8_scores.py   (numbers in ggml-tq/cuda/NOTES.md)
"""
import numpy as np, ggml_tq as t
rng = np.random.default_rng(0)
D, N, NQ = 128, 4096, 32
K = rng.standard_normal((N, D)).astype(np.float32)
K[:, :8] *= 4.0                       # a few outlier channels, as real keys have
Q = rng.standard_normal((NQ, D)).astype(np.float32)
for name, bits in (("tq4_0", 4), ("tq3_0", 3)):
    q = t.quantize(K, name)
    idx = t.unpack_indices(q, t.type_info(name)).reshape(N, D // 64, 64)
    d = t.scale_bits(q, t.type_info(name)).view(np.float16).astype(np.float32)          # (N, nb)
    c = t.centroids(bits).astype(np.float32)
    Qr = t.rotate(Q)                                                         # (NQ, D) rotated domain
    exact = (Q @ K.T) / np.sqrt(D)                                           # unquantized keys
    kq = (c[idx] * d[:, :, None]).reshape(N, D)                              # rotated-domain keys as stored
    ref = (Qr @ kq.T) / np.sqrt(D)                                           # f32 scoring of the TQ keys (CPU)
    # f16 scoring (GPU now): Q rotated in f16, codebook values in f16, f32 accumulation
    f16 = (Qr.astype(np.float16).astype(np.float32) @ (c.astype(np.float16).astype(np.float32)[idx] * d[:, :, None]).reshape(N, D).T) / np.sqrt(D)
    # int8: codebook scaled by 127/max|c|, Q per 64-block absmax to int8, integer dot per block times scales
    sc = 127.0 / np.abs(c).max(); c8 = np.round(c * sc)
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
