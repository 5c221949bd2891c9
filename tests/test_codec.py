"""The Python API of the C library: types, validation, round trips, accuracy, rotated-domain kernels."""
import numpy as np
import pytest

import ggml_tq as G
from ggml_tq import _types as T
from ggml_tq import reference as R

TYPES = ("tq4_0", "tq3_0", "tqv2_0", "tq6_0")


def _gauss(rows, n, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal((rows, n)) * scale).astype(np.float32)


# ---- types --------------------------------------------------------------------------------------

def test_type_info_values():
    t4, t3, v2 = G.type_info("tq4_0"), G.type_info("tq3_0"), G.type_info("tqv2_0")
    assert (t4.block_size, t4.type_size, t4.bits_per_value, t4.bits) == (64, 34, 4.25, 4)
    assert (t3.block_size, t3.type_size, t3.bits_per_value, t3.bits) == (64, 26, 3.25, 3)
    assert (v2.block_size, v2.type_size, v2.bits_per_value, v2.bits) == (64, 18, 2.25, 2)
    t6 = G.type_info("tq6_0")
    assert (t6.block_size, t6.type_size, t6.bits_per_value, t6.bits) == (64, 50, 6.25, 6)
    assert t6.ggml_type == G.GGML_TYPE_TQ6_0 and G.type_info(47) is t6 and R.type_info("TQ6_0") == t6
    assert t4.ggml_type == G.GGML_TYPE_TQ4_0 and t3.ggml_type == G.GGML_TYPE_TQ3_0 and v2.ggml_type == G.GGML_TYPE_TQV2_0
    assert G.type_info(G.GGML_TYPE_TQ4_0) is t4 and G.type_info("TQ3_0") is t3
    assert G.type_info(46) is v2 and G.type_info("TQV2_0") is v2
    assert R.type_info("tq4_0") == t4 and R.type_info("tqv2_0") == v2


@pytest.mark.parametrize("mod", [G, R])
def test_wrong_type_name(mod):
    with pytest.raises(ValueError, match=r"tq5_0.*'tq4_0', 'tq3_0', 'tqv2_0', 'tq6_0'"):
        mod.quantize(np.zeros((1, 64), np.float32), "tq5_0")
    with pytest.raises(ValueError, match="tq4_0"):
        mod.type_info("q4_0")
    with pytest.raises(ValueError, match="tqv2_0"):   # upstream's ternary type is not ours
        mod.type_info("tq2_0")
    with pytest.raises(ValueError, match=rf"{G.GGML_TYPE_TQ4_0}.*{G.GGML_TYPE_TQV2_0} \(tqv2_0\)"):
        G.type_info(G.GGML_TYPE_TQ4_0 - 1)
    with pytest.raises(ValueError, match="unknown TQ ggml_type 45"):   # tq_rot_f32: a query, not a cache type
        G.type_info(45)


# ---- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mod", [G, R])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_names_first_bad_row(mod, bad):
    x = _gauss(6, 128)
    x[3, 70] = bad
    x[5, 0] = bad
    with pytest.raises(ValueError, match=r"row 3 .*(NaN|Inf)"):
        mod.quantize(x, "tq4_0")


@pytest.mark.parametrize("mod", [G, R])
@pytest.mark.parametrize("n", [0, 63, 100, 130])
def test_length_not_multiple_of_64(mod, n):
    with pytest.raises(ValueError, match=rf"length {n}\b"):
        mod.quantize(np.ones((2, n), np.float32), "tq3_0")


def test_dequantize_length_checks():
    q = G.quantize(_gauss(2, 128), "tq4_0")
    with pytest.raises(ValueError, match="length 100"):
        G.dequantize(q, "tq4_0", 100)
    with pytest.raises(ValueError, match="68 bytes"):
        G.dequantize(q[:, :60], "tq4_0", 128)
    with pytest.raises(TypeError):
        G.dequantize(q.astype(np.int16), "tq4_0", 128)


@pytest.mark.parametrize("mod", [G, R])
def test_block_norm_above_fp16_max_names_row(mod):
    x = _gauss(4, 128)
    x[2, 64:] *= 70000.0 / np.linalg.norm(x[2, 64:])
    with pytest.raises(ValueError, match=r"row 2: block 1 .*65504"):
        mod.quantize(x, "tq4_0")
    x[2, 64:] *= 55000.0 / 70000.0   # under the limit (|c| = 0.896 here: scale 61400): accepted, same norm
    if mod is G:
        y = G.dequantize(G.quantize(x, "tq4_0"), "tq4_0", 128)
        assert abs(np.linalg.norm(y[2, 64:]) / 55000.0 - 1) < 2e-3


def test_scale_that_would_saturate_is_rejected():
    # every rotated coordinate equal to 1/8: tq3_0 codes 0.125 as 0.0938, |c| = 0.75, d = |x|/0.75
    z = np.full((1, 64), 0.125, np.float32)
    x = G.unrotate(z)
    x *= 60000.0 / np.linalg.norm(x)          # norm under 65504, scale 80000 over it
    assert np.abs(G.rotate(x)[0] / np.linalg.norm(x) - 0.125).max() < 1e-6
    with pytest.raises(ValueError, match=r"row 0: block 0 needs scale"):
        G.quantize(x, "tq3_0")
    G.quantize(x * 0.75, "tq3_0")             # scale 60000: fine


@pytest.mark.parametrize("t", TYPES)
def test_all_zero_rows_and_blocks(t):
    x = _gauss(4, 192)
    x[1] = 0.0
    x[3, 64:128] = 0.0
    for mod in (G, R):
        q = np.asarray(mod.quantize(x, t))
        y = np.asarray(mod.dequantize(q, t, 192))
        assert np.isfinite(y).all()
        assert not y[1].any() and not y[3, 64:128].any()
        assert not q[1].any()                    # d = 0 and all indices 0
    assert G.dot_rotated(G.quantize(x, t), G.rotate(x[0])[0], t)[1] == 0.0


def test_input_conversion():
    x64 = np.random.default_rng(1).standard_normal(256)            # 1-D float64: one row
    q = G.quantize(x64, "tq4_0")
    assert q.shape == (1, 4 * 34) and q.dtype == np.uint8
    np.testing.assert_array_equal(q, G.quantize(x64.astype(np.float32)[None], "tq4_0"))
    np.testing.assert_array_equal(G.quantize(x64.astype(np.float16), "tq4_0"),
                                  G.quantize(x64.astype(np.float16).astype(np.float32), "tq4_0"))
    with pytest.raises(TypeError, match="floating"):
        G.quantize(np.ones((1, 64), np.int32), "tq4_0")
    with pytest.raises(ValueError, match="1-D .* or 2-D"):
        G.quantize(np.ones((2, 2, 64), np.float32), "tq4_0")
    with pytest.raises(ValueError, match="row 0 holds Inf"):          # float64 beyond float32's range
        G.quantize(np.full(64, 1e300), "tq4_0")
    assert G.quantize(np.zeros((0, 128), np.float32), "tq3_0").shape == (0, 52)
    assert G.quantize(np.zeros((0, 128), np.float32), "tqv2_0").shape == (0, 36)


# ---- accuracy and kernels -----------------------------------------------------------------------

@pytest.mark.parametrize("t,mse_max", [("tq4_0", 0.0100), ("tq3_0", 0.0360), ("tqv2_0", 0.120), ("tq6_0", 0.00065)])
def test_unit_vector_mse(t, mse_max):
    x = _gauss(4096, 128, seed=7)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = G.dequantize(G.quantize(x, t), t, 128)
    mse = float(np.mean(np.sum((x.astype(np.float64) - y) ** 2, axis=1)))
    assert mse <= mse_max
    assert mse > mse_max * 0.5                # and not suspiciously good (e.g. a lossless bypass)


@pytest.mark.parametrize("t", TYPES)
def test_norm_correction_keeps_block_norms(t):
    x = _gauss(256, 128, seed=3, scale=3.0)
    y = G.dequantize(G.quantize(x, t), t, 128)
    nx = np.linalg.norm(x.reshape(-1, 64), axis=1)
    ny = np.linalg.norm(y.reshape(-1, 64).astype(np.float64), axis=1)
    assert np.abs(ny / nx - 1).max() < 1e-3    # fp16 scale: relative error <= 2^-11


# ---- the encoder's scale search ------------------------------------------------------------------

def _block_rel_mse(x, y):
    xb = x.reshape(-1, 64).astype(np.float64)
    return float(np.mean(np.sum((xb - y.reshape(-1, 64)) ** 2, axis=1) / np.sum(xb ** 2, axis=1)))


def test_search_gains_match_header():
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "ggml-tq" / "include" / "ggml-tq.h").read_text()
    init = re.search(r"#define TQ_SEARCH_GAINS_INIT \{([^}]*)\}", text).group(1)
    gains = tuple(float(v.strip().rstrip("f")) for v in init.split(","))
    assert gains == R.SEARCH_GAINS
    assert int(re.search(r"#define TQ_SEARCH_N (\d+)", text).group(1)) == len(gains)


# searched / plain block MSE at most: the search takes off ~20% at 4 bits, ~8% at 3 and only ~1.7% at 2,
# where four levels leave little to choose (a 21-gain grid does no better), ~27% at 6
SEARCHED_OVER_PLAIN_MAX = {"tq4_0": 0.97, "tq3_0": 0.97, "tqv2_0": 0.99, "tq6_0": 0.90}


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("family", ["gaussian", "student_t3"])
def test_search_lowers_block_mse(t, family):
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((512, 128)) if family == "gaussian" else rng.standard_t(3, (512, 128))).astype(np.float32)
    searched = _block_rel_mse(x, G.dequantize(G.quantize(x, t), t, 128))
    plain = _block_rel_mse(x, G.dequantize(R.quantize(x, t, gains=(1.0,)).numpy(), t, 128))
    assert searched < SEARCHED_OVER_PLAIN_MAX[t] * plain, (searched, plain)


# not tqv2_0: a 2-bit direction c/|c| whose gain-1 coding differs from c needs |c| < 0.463, which only
# the all-inner c (|c| = 0.452) has, and its gain-1 coding scores 1 as well (the next test's block)
@pytest.mark.parametrize("t", ["tq4_0", "tq3_0"])
def test_search_picks_a_gain_other_than_one(t):
    # z = c/|c| for a centroid vector c with |c| ~ 1.3: z's nearest centroids (gain 1) are not c's,
    # those of z*1.1 .. z*1.3 are, and their cosine with z is 1, the largest possible
    ti = T.type_info(t)
    bits = ti.bits
    hi, mid, n_hi = (14, 11, 16) if bits == 4 else (7, 5, 18)
    rng = np.random.default_rng(3)
    level = np.full(64, mid)
    level[rng.choice(64, n_hi, replace=False)] = hi
    neg = rng.random(64) < 0.5
    idx = np.where(neg, (1 << bits) - 1 - level, level)       # the codebooks are symmetric
    c = R.centroids(bits).numpy().astype(np.float64)[idx]
    x = G.unrotate((c / np.linalg.norm(c)).astype(np.float32))
    q = G.quantize(x, t)
    np.testing.assert_array_equal(T.unpack_indices(q, ti)[0, 0], idx)
    assert (T.unpack_indices(R.quantize(x, t, gains=(1.0,)).numpy(), ti)[0, 0] != idx).any()
    np.testing.assert_array_equal(R.quantize(x, t).numpy(), q)
    np.testing.assert_array_equal(G.quantize(x, t, impl="cpu"), q)


@pytest.mark.parametrize("t", TYPES)
def test_search_picks_the_best_scoring_gain(t):
    # the search written out again in float64: each gain's nearest centroids and their cosine with z;
    # where the best gain is not 1 and beats every gain of other indices by far more than float32
    # rounding (and no coordinate is near a boundary), the encoder must store that gain's indices. At 6 bits the
    # gains' scores lie closer together (and so do the boundaries): a finer margin, still 100x float32's rounding
    ti = T.type_info(t)
    margin = 1e-4 if ti.bits < 6 else 1e-5
    x = _gauss(512 if ti.bits < 6 else 2048, 64, seed=21)
    z = G.rotate(x).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    c_tab = R.centroids(ti.bits).numpy().astype(np.float64)
    b_tab = R.boundaries(ti.bits).numpy().astype(np.float64)
    w = z[:, None, :] * np.array(R.SEARCH_GAINS)[None, :, None]          # (blocks, gains, 64)
    idx = np.searchsorted(b_tab, w, side="left")                         # boundaries strictly below
    c = c_tab[idx]
    score = np.sum(z[:, None, :] * c, axis=2) / np.linalg.norm(c, axis=2)
    best = np.argmax(score, axis=1)
    want = idx[np.arange(len(z)), best]
    other = np.where((idx != want[:, None, :]).any(axis=2), score, -np.inf)
    near = (np.abs(w[..., None] - b_tab).min(axis=(1, 2, 3)) < margin / 10)
    clear = (score.max(axis=1) - other.max(axis=1) > margin) & (want != idx[:, 0]).any(axis=1) & ~near
    assert clear.sum() >= 20
    for impl in ("ref", "cpu"):
        got = T.unpack_indices(G.quantize(x, t, impl=impl), ti)[:, 0]
        np.testing.assert_array_equal(got[clear], want[clear])


@pytest.mark.parametrize("t", TYPES)
def test_search_keeps_the_first_of_equal_scores(t):
    # a spike rotates to z = +-1/8 everywhere: at every gain all 64 coordinates take the same centroid
    # magnitude c, and the score c/sqrt(c*c) is exactly 1.0 for each, so gain 1.0, the first, is kept
    # though a later gain (1.4 at 4 and 3 bits, 0.9 at 2) moves every coordinate to another centroid
    ti = T.type_info(t)
    x = np.zeros(64, np.float32)
    x[5] = 3.0
    first = T.unpack_indices(R.quantize(x, t, gains=(1.0,)).numpy(), ti)
    later = [T.unpack_indices(R.quantize(x, t, gains=(g,)).numpy(), ti) for g in R.SEARCH_GAINS[1:]]
    assert any((first != other).all() for other in later)
    for impl in ("ref", "cpu"):
        np.testing.assert_array_equal(T.unpack_indices(G.quantize(x, t, impl=impl), ti), first)
    np.testing.assert_array_equal(R.quantize(x, t).numpy(), G.quantize(x, t))


def test_rotation_is_orthonormal_and_inverted():
    x = _gauss(8, 256, seed=4)
    y = G.rotate(x)
    np.testing.assert_allclose(np.linalg.norm(y.reshape(-1, 64), axis=1),
                               np.linalg.norm(x.reshape(-1, 64), axis=1), rtol=1e-5)
    np.testing.assert_allclose(G.unrotate(y), x, atol=1e-5)
    for impl in ("ref", "cpu"):
        np.testing.assert_array_equal(G.rotate(x, impl=impl), R.rotate(x).numpy())
        np.testing.assert_array_equal(G.unrotate(y, impl=impl), R.unrotate(y).numpy())


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("impl", ["ref", "cpu"])
def test_dot_rotated_equals_dot_with_dequantized(t, impl):
    x = _gauss(64, 256, seed=5)
    q = G.quantize(x, t)
    y = G.dequantize(q, t, 256).astype(np.float64)
    query = _gauss(1, 256, seed=6)
    s = G.dot_rotated(q, G.rotate(query)[0], t, impl=impl)
    assert s.shape == (64,) and s.dtype == np.float32
    np.testing.assert_allclose(s, y @ query[0].astype(np.float64), rtol=1e-4, atol=1e-4)
    # one query per row, and the torch reference's sum order gives the same floats
    qs = _gauss(64, 256, seed=8)
    s2 = G.dot_rotated(q, G.rotate(qs), t, impl=impl)
    np.testing.assert_allclose(s2, np.sum(y * qs, axis=1), rtol=1e-4, atol=1e-4)
    if impl == "ref":
        np.testing.assert_array_equal(s2, R.dot_rotated(q, R.rotate(qs), t).numpy())
    with pytest.raises(ValueError, match="rows"):
        G.dot_rotated(q, G.rotate(qs[:3]), t)


def test_bad_impl():
    with pytest.raises(ValueError, match="impl"):
        G.quantize(_gauss(1, 64), "tq4_0", impl="avx")


def test_cpu_variant():
    v = G.cpu_variant()                      # "scalar", "avx2", "avx512", "neon", ...: what the fast kernels were built for
    assert isinstance(v, str) and v.isidentifier()
