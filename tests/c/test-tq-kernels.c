// Checks the optimized TQ kernels (src/arch/*.c, or tq-cpu.c's fallback) against the scalar
// reference (tq-ref.c), and the rotated-domain identities attention relies on.
//
//   test-tq-kernels           run the checks, print "N passed, M failed", exit 1 on any failure
//   test-tq-kernels --bench   micro-benchmark: ns per call, reference vs optimized, k = 64 and 128
//
// Tolerances of the float kernels (dot, mad, rotate round trip) are relative to the Cauchy-Schwarz
// scale of the result (|q|*|x'| for a dot, sum_r |w_r|*|x'_r| for a weighted sum), not to the
// result itself, which can be arbitrarily close to 0 by cancellation.
#define _POSIX_C_SOURCE 199309L // clock_gettime under -std=c11

#include "ggml-tq.h"
#include "tq-codebook.h" // signs and boundaries, for the model below

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// ---- bookkeeping --------------------------------------------------------------------------------

static long n_pass = 0, n_fail = 0;

static void check(int ok, const char * fmt, ...) {
    if (ok) {
        n_pass++;
        return;
    }
    n_fail++;
    if (n_fail <= 40) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "FAIL: ");
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\n");
        va_end(ap);
    }
}

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static uint64_t rng_u64(void) { // splitmix64
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30))*0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27))*0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_uniform(void) { return (double)(rng_u64() >> 11)*(1.0/9007199254740992.0); } // [0, 1)

static double rng_gauss(void) {
    double u = rng_uniform();
    while (u <= 0.0) {
        u = rng_uniform();
    }
    return sqrt(-2.0*log(u))*cos(6.283185307179586*rng_uniform());
}

static int same_bits(float a, float b) {
    if (isnan(a) && isnan(b)) {
        return 1;
    }
    return memcmp(&a, &b, sizeof(float)) == 0;
}

static int half_is_nan(tq_half h) { return (h & 0x7c00) == 0x7c00 && (h & 0x03ff) != 0; }

static double norm2(const float * x, int n) {
    double s = 0.0;
    for (int i = 0; i < n; ++i) {
        s += (double) x[i]*x[i];
    }
    return sqrt(s);
}

// ---- inputs -------------------------------------------------------------------------------------

enum {
    K_GAUSS, K_OUTLIERS, K_ZERO, K_ZERO_BLOCK, K_TINY, K_HUGE, K_UNIFORM, K_SPIKE, K_CONST,
    K_SMALLINT, K_TERNARY, K_HEAVY, K_SATURATE, K_SUBNORMAL, K_COUNT
};
static const char * kind_name[K_COUNT] = {
    "gauss", "outliers", "zero", "zero-block", "tiny(1e-30)", "huge(1e30)", "uniform", "spike",
    "const", "smallint", "ternary", "heavy-tail", "d>65504", "subnormal-amax",
};

static void gen_row(float * x, int k, int kind) {
    for (int i = 0; i < k; ++i) {
        double v = rng_gauss();
        switch (kind) {
            case K_GAUSS:      break;
            case K_OUTLIERS:   if (rng_u64() % 32 == 0) v *= 50.0 + 150.0*rng_uniform(); break;
            case K_ZERO:       v = 0.0; break;
            case K_ZERO_BLOCK: break; // below
            case K_TINY:       v *= 1e-30; break;
            case K_HUGE:       v *= 1e30; break;
            case K_UNIFORM:    v = 2.0*rng_uniform() - 1.0; break;
            case K_SPIKE:      v = 0.0; break; // below
            case K_CONST:      v = 0.0; break; // below
            case K_SMALLINT:   v = (double)((int)(rng_u64() % 7) - 3); break;
            case K_TERNARY:    v = (double)((int)(rng_u64() % 3) - 1); break;
            case K_HEAVY:      v = v/(rng_uniform() + 1e-3); break;
            case K_SATURATE:   v *= 1e6; break;
            case K_SUBNORMAL:  v *= 1e-39; break; // amax below 1/FLT_MAX: 1/amax overflows
            default: break;
        }
        x[i] = (float) v;
    }
    for (int b = 0; b < k/QK_TQ; ++b) {
        float * xb = x + b*QK_TQ;
        if (kind == K_ZERO_BLOCK && rng_u64() % 2 == 0) {
            memset(xb, 0, QK_TQ*sizeof(float));
        }
        if (kind == K_SPIKE) {
            xb[rng_u64() % QK_TQ] = (float)(rng_gauss()*10.0);
        }
        if (kind == K_CONST) {
            const float c = (float) rng_gauss();
            for (int j = 0; j < QK_TQ; ++j) {
                xb[j] = c;
            }
        }
    }
}

// ---- a model of the reference quantizer, to explain a mismatch ----------------------------------
// tq-ref.c's sums of squares are "sumsq += y*y": a compiler allowed to contract (clang's default
// -ffp-contract=on, GCC's -ffp-contract=fast where it does not vectorize the loop) turns them into
// FMAs, which moves the scale by an ulp now and then. The model computes a block both ways.

static void model_block(const float * x, int bits, int fused, uint8_t * idx, tq_half * dh) {
    const float * bnd = bits == 6 ? tq_boundaries_6bit : bits == 4 ? tq_boundaries_4bit : bits == 3 ? tq_boundaries_3bit : tq_boundaries_2bit;
    const float * cen = bits == 6 ? tq_centroids_6bit  : bits == 4 ? tq_centroids_4bit  : bits == 3 ? tq_centroids_3bit  : tq_centroids_2bit;
    const int nb = (1 << bits) - 1;
    float amax = 0.0f, y[QK_TQ];
    for (int j = 0; j < QK_TQ; ++j) amax = fmaxf(amax, fabsf(x[j]));
    memset(idx, 0, QK_TQ);
    *dh = 0;
    if (amax == 0.0f) return;
    const float inv_amax = 1.0f/amax;
    for (int j = 0; j < QK_TQ; ++j) y[j] = x[j]*inv_amax*tq_signs[j];
    for (int h = 1; h < QK_TQ; h <<= 1) {
        for (int i = 0; i < QK_TQ; i += 2*h) {
            for (int j = i; j < i + h; ++j) {
                const float a = y[j], b = y[j + h];
                y[j] = a + b;
                y[j + h] = a - b;
            }
        }
    }
    float sumsq = 0.0f;
    for (int j = 0; j < QK_TQ; ++j) {
        y[j] *= 0.125f;
        if (fused) {
            sumsq = fmaf(y[j], y[j], sumsq);
        } else {
            volatile float p = y[j]*y[j];
            sumsq += p;
        }
    }
    const float norm = sqrtf(sumsq), inv_norm = 1.0f/norm;
    static const float gains[TQ_SEARCH_N] = TQ_SEARCH_GAINS_INIT;
    float z[QK_TQ], best = 0.0f;
    for (int j = 0; j < QK_TQ; ++j) z[j] = y[j]*inv_norm;
    for (int g = 0; g < TQ_SEARCH_N; ++g) { // the scale search, its sums as pairwise trees
        uint8_t gi[QK_TQ];
        float p[QK_TQ], q[QK_TQ];
        for (int j = 0; j < QK_TQ; ++j) {
            int i = 0;
            while (i < nb && bnd[i] < z[j]*gains[g]) ++i;
            gi[j] = (uint8_t) i;
            volatile float pj = z[j]*cen[i], qj = cen[i]*cen[i]; // rounded, never fused into the sums
            p[j] = pj;
            q[j] = qj;
        }
        for (int h = QK_TQ/2; h > 0; h >>= 1) {
            for (int j = 0; j < h; ++j) {
                p[j] += p[j + h];
                q[j] += q[j + h];
            }
        }
        const float score = p[0]/sqrtf(q[0]);
        if (g == 0 || score > best) {
            best = score;
            memcpy(idx, gi, QK_TQ);
        }
    }
    float csumsq = 0.0f;
    for (int j = 0; j < QK_TQ; ++j) {
        const int i = idx[j];
        if (fused) {
            csumsq = fmaf(cen[i], cen[i], csumsq);
        } else {
            volatile float p = cen[i]*cen[i];
            csumsq += p;
        }
    }
    *dh = tq_fp32_to_fp16(amax*(norm/sqrtf(csumsq)));
}

static void model_tq4_0(const float * x, int fused, block_tq4_0 * b) {
    uint8_t idx[QK_TQ];
    model_block(x, 4, fused, idx, &b->d);
    for (int j = 0; j < QK_TQ/2; ++j) b->qs[j] = (uint8_t)(idx[j] | (idx[j + QK_TQ/2] << 4));
}

static void model_tq3_0(const float * x, int fused, block_tq3_0 * b) {
    uint8_t idx[QK_TQ];
    model_block(x, 3, fused, idx, &b->d);
    memset(b->qs, 0, sizeof(b->qs));
    memset(b->qh, 0, sizeof(b->qh));
    for (int j = 0; j < QK_TQ; ++j) {
        b->qs[j % 16] |= (uint8_t)((idx[j] & 3) << (2*(j/16)));
        b->qh[j % 8]  |= (uint8_t)((idx[j] >> 2) << (j/8));
    }
}

static void model_tqv2_0(const float * x, int fused, block_tqv2_0 * b) {
    uint8_t idx[QK_TQ];
    model_block(x, 2, fused, idx, &b->d);
    memset(b->qs, 0, sizeof(b->qs));
    for (int j = 0; j < QK_TQ; ++j) {
        b->qs[j % 16] |= (uint8_t)(idx[j] << (2*(j/16)));
    }
}

static void model_tq6_0(const float * x, int fused, block_tq6_0 * b) {
    uint8_t idx[QK_TQ];
    model_block(x, 6, fused, idx, &b->d);
    memset(b->qh, 0, sizeof(b->qh));
    for (int j = 0; j < QK_TQ/2; ++j) b->qs[j] = (uint8_t)((idx[j] & 0xf) | ((idx[j + QK_TQ/2] & 0xf) << 4));
    for (int j = 0; j < QK_TQ; ++j) b->qh[j % 16] |= (uint8_t)((idx[j] >> 4) << (2*(j/16)));
}

// ---- the checks ---------------------------------------------------------------------------------

#define MAXK 256
#define NROWS 48 // rows per (k, kind); the weighted sum of the mad check runs over all of them

typedef struct {
    double dot_vs_ref, dot_vs_exact, mad_vs_ref, wsum_vs_exact, roundtrip;
    long   quant_diff_blocks, quant_blocks, deq_diff, rot_diff, mad_bits_diff, mad_elems;
    long   nonfinite_ref_d, ref_contracted, model_checked, model_diff;
} stats;

static stats st;

static void upd(double * m, double v) {
    if (!(v <= *m)) {
        *m = v; // NaN propagates
    }
}

#define DEFINE_FORMAT_CHECK(NAME)                                                                   \
static void check_##NAME(const float * x, int k, int kind, const float * q, const float * qr, const float * w) { \
    const int nb = k/QK_TQ;                                                                         \
    static block_##NAME yr[NROWS*MAXK/QK_TQ], yo[NROWS*MAXK/QK_TQ];                                 \
    static float deq_r[NROWS*MAXK], deq_o[MAXK];                                                    \
    const int sub = kind == K_SUBNORMAL;                                                            \
    for (int r = 0; r < NROWS; ++r) {                                                               \
        quantize_row_##NAME##_ref(x + r*k, yr + r*nb, k);                                           \
        quantize_row_##NAME(x + r*k, yo + r*nb, k);                                                 \
        for (int b = 0; b < nb; ++b) {                                                              \
            const block_##NAME * br = &yr[r*nb + b], * bo = &yo[r*nb + b];                          \
            /* a NaN scale (only from the reference's own overflow, see K_SUBNORMAL) may differ in sign */ \
            const int same = memcmp(br, bo, sizeof(*br)) == 0 || (half_is_nan(br->d) && half_is_nan(bo->d) \
                && memcmp(br->qs, bo->qs, sizeof(*br) - sizeof(tq_half)) == 0);                     \
            st.quant_blocks++;                                                                      \
            st.quant_diff_blocks += !same;                                                          \
            if (!isfinite(tq_fp16_to_fp32(br->d))) st.nonfinite_ref_d++;                            \
            if (!sub) { /* the model agrees with the optimized kernel */                            \
                block_##NAME m0;                                                                    \
                model_##NAME(x + r*k + b*QK_TQ, 0, &m0);                                            \
                const int mok = memcmp(&m0, bo, sizeof(m0)) == 0;                                   \
                st.model_checked++;                                                                 \
                st.model_diff += !mok;                                                              \
                check(mok, #NAME " quantize k=%d %s row %d block %d: differs from the test's model", \
                      k, kind_name[kind], r, b);                                                    \
                if (!same) {                                                                        \
                    block_##NAME m1;                                                                \
                    model_##NAME(x + r*k + b*QK_TQ, 1, &m1);                                        \
                    st.ref_contracted += mok && memcmp(&m1, br, sizeof(m1)) == 0;                   \
                }                                                                                   \
            }                                                                                       \
            check(same, #NAME " quantize k=%d %s row %d block %d: bytes differ (d ref %04x opt %04x)", \
                  k, kind_name[kind], r, b, br->d, bo->d);                                          \
        }                                                                                           \
        /* dequantize: bit for bit */                                                               \
        dequantize_row_##NAME##_ref(yr + r*nb, deq_r + r*k, k);                                     \
        dequantize_row_##NAME(yr + r*nb, deq_o, k);                                                 \
        long nd = 0;                                                                                \
        for (int i = 0; i < k; ++i) nd += !same_bits(deq_r[r*k + i], deq_o[i]);                     \
        st.deq_diff += nd;                                                                          \
        check(nd == 0, #NAME " dequantize k=%d %s row %d: %ld values differ from the reference", k, kind_name[kind], r, nd); \
        if (sub) continue; /* the reference itself gives non-finite scales there: bytes compared only */ \
        /* no NaN, and an all-zero input gives zeros */                                             \
        int finite = 1, zero_ok = 1;                                                                \
        for (int b = 0; b < nb; ++b) {                                                              \
            int allzero = 1;                                                                        \
            for (int j = 0; j < QK_TQ; ++j) allzero &= x[r*k + b*QK_TQ + j] == 0.0f;                \
            for (int j = 0; j < QK_TQ; ++j) {                                                       \
                finite &= isfinite(deq_o[b*QK_TQ + j]) != 0;                                        \
                if (allzero) zero_ok &= deq_o[b*QK_TQ + j] == 0.0f;                                 \
            }                                                                                       \
            if (allzero) {                                                                          \
                static const block_##NAME zb;                                                       \
                zero_ok &= memcmp(&yo[r*nb + b], &zb, sizeof(zb)) == 0;                             \
            }                                                                                       \
        }                                                                                           \
        check(finite, #NAME " dequantize k=%d %s row %d: non-finite output", k, kind_name[kind], r); \
        check(zero_ok, #NAME " k=%d %s row %d: an all-zero block is not all-zero bytes/values", k, kind_name[kind], r); \
        /* dot: vs the reference, and vs q . dequant(x) in the unrotated domain */                  \
        const double dq = NAME##_dot_rotated(yr + r*nb, qr, k);                                     \
        const double dr = NAME##_dot_rotated_ref(yr + r*nb, qr, k);                                 \
        double ex = 0.0;                                                                            \
        for (int i = 0; i < k; ++i) ex += (double) q[i]*deq_r[r*k + i];                             \
        const double scale = norm2(q, k)*norm2(deq_r + r*k, k);                                     \
        if (scale == 0.0) {                                                                         \
            check(dq == 0.0, #NAME " dot k=%d %s row %d: %g for a zero row", k, kind_name[kind], r, dq); \
        } else {                                                                                    \
            const double e1 = fabs(dq - dr)/scale, e2 = fabs(dq - ex)/scale;                        \
            upd(&st.dot_vs_ref, e1);                                                                \
            upd(&st.dot_vs_exact, e2);                                                              \
            check(e1 < 1e-5, #NAME " dot k=%d %s row %d: opt %.9g ref %.9g (rel %.3g)", k, kind_name[kind], r, dq, dr, e1); \
            check(e2 < 1e-5, #NAME " dot k=%d %s row %d: opt %.9g, q.dequant %.9g (rel %.3g)", k, kind_name[kind], r, dq, ex, e2); \
        }                                                                                           \
    }                                                                                               \
    if (sub) return;                                                                                \
    /* mad: acc over all rows, vs the reference, then unrotated vs sum_r w_r dequant(x_r) */        \
    float acc_o[MAXK], acc_r[MAXK], out[MAXK];                                                      \
    for (int i = 0; i < k; ++i) acc_o[i] = acc_r[i] = 0.0f;                                         \
    double wscale = 0.0;                                                                            \
    for (int r = 0; r < NROWS; ++r) {                                                               \
        NAME##_mad_rotated(yr + r*nb, acc_o, w[r], k);                                              \
        NAME##_mad_rotated_ref(yr + r*nb, acc_r, w[r], k);                                          \
        wscale += fabs(w[r])*norm2(deq_r + r*k, k);                                                 \
    }                                                                                               \
    tq_unrotate_row(acc_o, out, k);                                                                 \
    double e_ref = 0.0, e_ex = 0.0;                                                                 \
    int finite = 1;                                                                                 \
    for (int i = 0; i < k; ++i) {                                                                   \
        double ex = 0.0;                                                                            \
        for (int r = 0; r < NROWS; ++r) ex += (double) w[r]*deq_r[r*k + i];                         \
        upd(&e_ref, fabs((double) acc_o[i] - acc_r[i]));                                            \
        upd(&e_ex, fabs((double) out[i] - ex));                                                     \
        st.mad_bits_diff += !same_bits(acc_o[i], acc_r[i]);                                         \
        st.mad_elems++;                                                                             \
        finite &= isfinite(acc_o[i]) != 0;                                                          \
    }                                                                                               \
    check(finite, #NAME " mad k=%d %s: non-finite accumulator", k, kind_name[kind]);                \
    if (wscale == 0.0) {                                                                            \
        check(e_ref == 0.0 && e_ex == 0.0, #NAME " mad k=%d %s: zero rows changed the accumulator", k, kind_name[kind]); \
    } else {                                                                                        \
        upd(&st.mad_vs_ref, e_ref/wscale);                                                          \
        upd(&st.wsum_vs_exact, e_ex/wscale);                                                        \
        check(e_ref/wscale < 1e-6, #NAME " mad k=%d %s: vs reference rel %.3g", k, kind_name[kind], e_ref/wscale); \
        check(e_ex/wscale < 1e-5, #NAME " mad k=%d %s: unrotated vs weighted sum rel %.3g", k, kind_name[kind], e_ex/wscale); \
    }                                                                                               \
}

DEFINE_FORMAT_CHECK(tq4_0)
DEFINE_FORMAT_CHECK(tq3_0)
DEFINE_FORMAT_CHECK(tqv2_0)
DEFINE_FORMAT_CHECK(tq6_0)

// Blocks of random bytes and random finite scales: every index in every position, which quantized data reaches
// seldom for the outer centroids. dequantize and mad bit for bit, dot to rounding.
#define DEFINE_DECODE_CHECK(NAME)                                                                   \
static void check_decode_##NAME(int k) {                                                            \
    const int nb = k/QK_TQ;                                                                         \
    block_##NAME blk[MAXK/QK_TQ];                                                                   \
    float q[MAXK], deq_r[MAXK], deq_o[MAXK], acc_r[MAXK], acc_o[MAXK];                              \
    uint8_t * bytes = (uint8_t *) blk;                                                              \
    for (size_t i = 0; i < nb*sizeof(block_##NAME); ++i) bytes[i] = (uint8_t) rng_u64();            \
    for (int b = 0; b < nb; ++b) blk[b].d = (tq_half)((rng_u64() % 0x7c00) | (rng_u64() & 0x8000)); \
    for (int i = 0; i < k; ++i) q[i] = (float) rng_gauss();                                         \
    for (int i = 0; i < k; ++i) acc_r[i] = acc_o[i] = (float) rng_gauss();                          \
    dequantize_row_##NAME##_ref(blk, deq_r, k);                                                     \
    dequantize_row_##NAME(blk, deq_o, k);                                                           \
    const float w = (float)(2.0*rng_uniform() - 1.0);                                               \
    NAME##_mad_rotated_ref(blk, acc_r, w, k);                                                       \
    NAME##_mad_rotated(blk, acc_o, w, k);                                                           \
    long nd = 0, nm = 0;                                                                            \
    for (int i = 0; i < k; ++i) {                                                                   \
        nd += !same_bits(deq_r[i], deq_o[i]);                                                       \
        nm += !same_bits(acc_r[i], acc_o[i]);                                                       \
    }                                                                                               \
    st.deq_diff += nd;                                                                              \
    st.mad_bits_diff += nm;                                                                         \
    st.mad_elems += k;                                                                              \
    check(nd == 0, #NAME " dequantize k=%d random bytes: %ld values differ from the reference", k, nd); \
    check(nm == 0, #NAME " mad k=%d random bytes: %ld values differ from the reference", k, nm);    \
    const double dq = NAME##_dot_rotated(blk, q, k), dr = NAME##_dot_rotated_ref(blk, q, k);        \
    const double scale = norm2(q, k)*norm2(deq_r, k);                                               \
    const double e = scale > 0.0 ? fabs(dq - dr)/scale : fabs(dq - dr);                             \
    upd(&st.dot_vs_ref, e);                                                                         \
    check(e < 1e-5, #NAME " dot k=%d random bytes: opt %.9g ref %.9g (rel %.3g)", k, dq, dr, e);    \
}

DEFINE_DECODE_CHECK(tq4_0)
DEFINE_DECODE_CHECK(tq3_0)
DEFINE_DECODE_CHECK(tqv2_0)
DEFINE_DECODE_CHECK(tq6_0)

static void check_rotation(const float * x, int k, int kind) {
    float a[MAXK], b[MAXK], c[MAXK], d[MAXK];
    tq_rotate_row_ref(x, a, k);
    tq_rotate_row(x, b, k);
    long nd = 0;
    for (int i = 0; i < k; ++i) nd += !same_bits(a[i], b[i]);
    memcpy(c, x, k*sizeof(float));
    tq_rotate_row(c, c, k); // in place
    for (int i = 0; i < k; ++i) nd += !same_bits(a[i], c[i]);
    tq_unrotate_row_ref(a, c, k);
    tq_unrotate_row(a, d, k);
    for (int i = 0; i < k; ++i) nd += !same_bits(c[i], d[i]);
    tq_unrotate_row(a, a, k); // in place
    for (int i = 0; i < k; ++i) nd += !same_bits(c[i], a[i]);
    st.rot_diff += nd;
    check(nd == 0, "rotate/unrotate k=%d %s: %ld values differ from the reference", k, kind_name[kind], nd);
    for (int bl = 0; bl < k/QK_TQ; ++bl) {
        const double n = norm2(x + bl*QK_TQ, QK_TQ);
        double e = 0.0;
        for (int j = 0; j < QK_TQ; ++j) upd(&e, fabs((double) d[bl*QK_TQ + j] - x[bl*QK_TQ + j]));
        if (n > 0.0) {
            upd(&st.roundtrip, e/n);
            check(e/n < 1e-6, "unrotate(rotate(x)) k=%d %s block %d: rel %.3g", k, kind_name[kind], bl, e/n);
        } else {
            check(e == 0.0, "unrotate(rotate(0)) k=%d %s block %d: %g", k, kind_name[kind], bl, e);
        }
    }
}

static int run_tests(void) {
    static float x[NROWS*MAXK];
    float q[MAXK], qr[MAXK], w[NROWS];
    const int ks[3] = { 64, 128, 256 };
    for (int ik = 0; ik < 3; ++ik) {
        const int k = ks[ik];
        for (int kind = 0; kind < K_COUNT; ++kind) {
            for (int rep = 0; rep < 8; ++rep) {
                for (int r = 0; r < NROWS; ++r) {
                    gen_row(x + r*k, k, kind);
                    w[r] = (float)(rng_uniform()*(rng_u64() % 8 == 0 ? -1.0 : 1.0));
                }
                const double qs = rep % 4 == 3 ? 1e-3 : rep % 4 == 2 ? 30.0 : 1.0;
                for (int i = 0; i < k; ++i) q[i] = (float)(rng_gauss()*qs);
                tq_rotate_row_ref(q, qr, k);
                check_tq4_0(x, k, kind, q, qr, w);
                check_tq3_0(x, k, kind, q, qr, w);
                check_tqv2_0(x, k, kind, q, qr, w);
                check_tq6_0(x, k, kind, q, qr, w);
                for (int r = 0; r < NROWS; r += 7) check_rotation(x + r*k, k, kind);
            }
        }
    }

    for (int ik = 0; ik < 3; ++ik) {
        for (int rep = 0; rep < 500; ++rep) {
            check_decode_tq4_0(ks[ik]);
            check_decode_tq3_0(ks[ik]);
            check_decode_tqv2_0(ks[ik]);
            check_decode_tq6_0(ks[ik]);
        }
    }

    // explicit all-zero blocks through every kernel
    {
        const int k = 128;
        float z[128] = {0}, o[128], acc[128];
        block_tq4_0 b4[2];
        block_tq3_0 b3[2];
        block_tqv2_0 b2[2];
        block_tq6_0 b6[2];
        memset(b4, 0xff, sizeof(b4));
        memset(b3, 0xff, sizeof(b3));
        memset(b2, 0xff, sizeof(b2));
        memset(b6, 0xff, sizeof(b6));
        quantize_row_tq4_0(z, b4, k);
        quantize_row_tq3_0(z, b3, k);
        quantize_row_tqv2_0(z, b2, k);
        quantize_row_tq6_0(z, b6, k);
        static const block_tq4_0 z4[2];
        static const block_tq3_0 z3[2];
        static const block_tqv2_0 z2[2];
        static const block_tq6_0 z6[2];
        check(memcmp(b4, z4, sizeof(b4)) == 0, "tq4_0 quantize(0) is not all-zero bytes");
        check(memcmp(b3, z3, sizeof(b3)) == 0, "tq3_0 quantize(0) is not all-zero bytes");
        check(memcmp(b2, z2, sizeof(b2)) == 0, "tqv2_0 quantize(0) is not all-zero bytes");
        check(memcmp(b6, z6, sizeof(b6)) == 0, "tq6_0 quantize(0) is not all-zero bytes");
        int ok = 1;
        dequantize_row_tq4_0(b4, o, k);
        for (int i = 0; i < k; ++i) ok &= o[i] == 0.0f;
        dequantize_row_tq3_0(b3, o, k);
        for (int i = 0; i < k; ++i) ok &= o[i] == 0.0f;
        dequantize_row_tqv2_0(b2, o, k);
        for (int i = 0; i < k; ++i) ok &= o[i] == 0.0f;
        dequantize_row_tq6_0(b6, o, k);
        for (int i = 0; i < k; ++i) ok &= o[i] == 0.0f;
        for (int i = 0; i < k; ++i) o[i] = (float) rng_gauss();
        ok &= tq4_0_dot_rotated(b4, o, k) == 0.0f && tq3_0_dot_rotated(b3, o, k) == 0.0f && tqv2_0_dot_rotated(b2, o, k) == 0.0f
           && tq6_0_dot_rotated(b6, o, k) == 0.0f;
        for (int i = 0; i < k; ++i) acc[i] = o[i];
        tq4_0_mad_rotated(b4, acc, 0.7f, k);
        tq3_0_mad_rotated(b3, acc, 0.7f, k);
        tqv2_0_mad_rotated(b2, acc, 0.7f, k);
        tq6_0_mad_rotated(b6, acc, 0.7f, k);
        for (int i = 0; i < k; ++i) ok &= acc[i] == o[i] && isfinite(acc[i]);
        check(ok, "all-zero blocks: dequantize/dot/mad not zero or not finite");
    }

    printf("variant %s\n", tq_cpu_variant());
    printf("quantize: %ld/%ld blocks differ from the reference (tq4_0 + tq3_0 + tqv2_0 + tq6_0)\n", st.quant_diff_blocks, st.quant_blocks);
    printf("model: %ld/%ld blocks differ from the test's scalar model of the reference\n", st.model_diff, st.model_checked);
    if (st.ref_contracted) {
        printf("note: %ld reference blocks match the model with FMA-contracted sums of squares: tq-ref.c was compiled\n"
               "      with floating-point contraction; compile it with -ffp-contract=off to get the format's definition\n",
               st.ref_contracted);
    }
    printf("dequantize: %ld values differ bitwise; rotate/unrotate: %ld values differ bitwise\n", st.deq_diff, st.rot_diff);
    printf("unrotate(rotate(x)) max rel err %.3g\n", st.roundtrip);
    printf("dot: max rel err vs ref %.3g, vs q.dequant(x) (float64) %.3g  (relative to |q||x'|)\n", st.dot_vs_ref, st.dot_vs_exact);
    printf("mad: max rel err vs ref %.3g (%ld/%ld values not bit-identical), unrotated vs weighted sum %.3g\n",
           st.mad_vs_ref, st.mad_bits_diff, st.mad_elems, st.wsum_vs_exact);
    if (st.nonfinite_ref_d) {
        printf("note: the reference gave %ld non-finite scales (inputs with amax < 1/FLT_MAX); optimized bytes match it\n", st.nonfinite_ref_d);
    }
    printf("%ld passed, %ld failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}

// ---- micro-benchmark ----------------------------------------------------------------------------

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec*1e9 + (double) ts.tv_nsec;
}

#define BROWS 1024
static volatile float sink;

// best of 5 runs of iters passes over nrows calls, in ns per call
#define BENCH(nrows, CALL)                                                                          \
    do {                                                                                            \
        double best = 1e30;                                                                         \
        for (int t = 0; t < 5; ++t) {                                                               \
            const double t0 = now_ns();                                                             \
            for (int it = 0; it < iters; ++it) {                                                    \
                for (int r = 0; r < (nrows); ++r) { CALL; }                                         \
            }                                                                                       \
            const double dt = (now_ns() - t0)/((double) iters*(nrows));                             \
            if (dt < best) best = dt;                                                               \
        }                                                                                           \
        res[nres++] = best;                                                                         \
    } while (0)

static void run_bench(void) {
    static float x[BROWS*128], deq[BROWS*128], acc[128], q[128], qr[128];
    static block_tq4_0 y4[BROWS*2];
    static block_tq3_0 y3[BROWS*2];
    static block_tqv2_0 y2[BROWS*2];
    static block_tq6_0 y6[BROWS*2];
    printf("variant %s; ns per call (best of 5), %d rows cycled\n", tq_cpu_variant(), BROWS);
    printf("%-26s %5s %10s %10s %8s\n", "kernel", "k", "ref", "opt", "speedup");
    const int ks[2] = { 64, 128 };
    for (int ik = 0; ik < 2; ++ik) {
        const int k = ks[ik], nb = k/QK_TQ;
        for (int i = 0; i < BROWS*k; ++i) x[i] = (float) rng_gauss();
        for (int i = 0; i < k; ++i) q[i] = (float) rng_gauss();
        tq_rotate_row_ref(q, qr, k);
        memset(acc, 0, sizeof(acc));
        quantize_row_tq4_0_ref(x, y4, (int64_t) BROWS*k);
        quantize_row_tq3_0_ref(x, y3, (int64_t) BROWS*k);
        quantize_row_tqv2_0_ref(x, y2, (int64_t) BROWS*k);
        quantize_row_tq6_0_ref(x, y6, (int64_t) BROWS*k);
        double res[64];
        int nres = 0;
        float s = 0.0f;
        int iters = 200;
        BENCH(BROWS, s += tq4_0_dot_rotated_ref(y4 + r*nb, qr, k));
        BENCH(BROWS, s += tq4_0_dot_rotated(y4 + r*nb, qr, k));
        BENCH(BROWS, s += tq3_0_dot_rotated_ref(y3 + r*nb, qr, k));
        BENCH(BROWS, s += tq3_0_dot_rotated(y3 + r*nb, qr, k));
        BENCH(BROWS, s += tq6_0_dot_rotated_ref(y6 + r*nb, qr, k));
        BENCH(BROWS, s += tq6_0_dot_rotated(y6 + r*nb, qr, k));
        BENCH(BROWS, tq4_0_mad_rotated_ref(y4 + r*nb, acc, 1e-3f, k));
        BENCH(BROWS, tq4_0_mad_rotated(y4 + r*nb, acc, 1e-3f, k));
        BENCH(BROWS, tq3_0_mad_rotated_ref(y3 + r*nb, acc, 1e-3f, k));
        BENCH(BROWS, tq3_0_mad_rotated(y3 + r*nb, acc, 1e-3f, k));
        BENCH(BROWS, tqv2_0_mad_rotated_ref(y2 + r*nb, acc, 1e-3f, k));
        BENCH(BROWS, tqv2_0_mad_rotated(y2 + r*nb, acc, 1e-3f, k));
        BENCH(BROWS, tq6_0_mad_rotated_ref(y6 + r*nb, acc, 1e-3f, k));
        BENCH(BROWS, tq6_0_mad_rotated(y6 + r*nb, acc, 1e-3f, k));
        iters = 20;
        BENCH(BROWS, dequantize_row_tq4_0_ref(y4 + r*nb, deq + r*k, k));
        BENCH(BROWS, dequantize_row_tq4_0(y4 + r*nb, deq + r*k, k));
        BENCH(BROWS, dequantize_row_tq3_0_ref(y3 + r*nb, deq + r*k, k));
        BENCH(BROWS, dequantize_row_tq3_0(y3 + r*nb, deq + r*k, k));
        BENCH(BROWS, dequantize_row_tq6_0_ref(y6 + r*nb, deq + r*k, k));
        BENCH(BROWS, dequantize_row_tq6_0(y6 + r*nb, deq + r*k, k));
        BENCH(BROWS, tq_rotate_row_ref(x + r*k, deq + r*k, k));
        BENCH(BROWS, tq_rotate_row(x + r*k, deq + r*k, k));
        iters = 4;
        BENCH(BROWS, quantize_row_tq4_0_ref(x + r*k, y4 + r*nb, k));
        BENCH(BROWS, quantize_row_tq4_0(x + r*k, y4 + r*nb, k));
        BENCH(BROWS, quantize_row_tq3_0_ref(x + r*k, y3 + r*nb, k));
        BENCH(BROWS, quantize_row_tq3_0(x + r*k, y3 + r*nb, k));
        BENCH(BROWS, quantize_row_tqv2_0_ref(x + r*k, y2 + r*nb, k));
        BENCH(BROWS, quantize_row_tqv2_0(x + r*k, y2 + r*nb, k));
        BENCH(BROWS, quantize_row_tq6_0_ref(x + r*k, y6 + r*nb, k));
        BENCH(BROWS, quantize_row_tq6_0(x + r*k, y6 + r*nb, k));
        sink = s + acc[0] + deq[0];
        static const char * names[] = {
            "tq4_0 dot_rotated", "tq3_0 dot_rotated", "tq6_0 dot_rotated",
            "tq4_0 mad_rotated", "tq3_0 mad_rotated", "tqv2_0 mad_rotated", "tq6_0 mad_rotated",
            "tq4_0 dequantize", "tq3_0 dequantize", "tq6_0 dequantize", "rotate",
            "tq4_0 quantize", "tq3_0 quantize", "tqv2_0 quantize", "tq6_0 quantize",
        };
        for (int i = 0; i < nres/2; ++i) {
            printf("%-26s %5d %10.1f %10.1f %7.1fx\n", names[i], k, res[2*i], res[2*i + 1], res[2*i]/res[2*i + 1]);
        }
    }
    // quantizing a whole K-cache row at once (8 KV heads of 128 = 16 blocks)
    {
        const int k = 1024, rows = BROWS*128/k;
        double res[4];
        int nres = 0, iters = 4;
        BENCH(rows, quantize_row_tq4_0_ref(x + r*k, y4 + r*(k/QK_TQ), k));
        BENCH(rows, quantize_row_tq4_0(x + r*k, y4 + r*(k/QK_TQ), k));
        BENCH(rows, quantize_row_tq6_0_ref(x + r*k, y6 + r*(k/QK_TQ), k));
        BENCH(rows, quantize_row_tq6_0(x + r*k, y6 + r*(k/QK_TQ), k));
        printf("%-26s %5d %10.1f %10.1f %7.1fx\n", "tq4_0 quantize", k, res[0], res[1], res[0]/res[1]);
        printf("%-26s %5d %10.1f %10.1f %7.1fx\n", "tq6_0 quantize", k, res[2], res[3], res[2]/res[3]);
    }
}

int main(int argc, char ** argv) {
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) {
        run_bench();
        return 0;
    }
    return run_tests();
}
