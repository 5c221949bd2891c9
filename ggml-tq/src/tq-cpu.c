// Optimized CPU kernels of the TQ formats. Each must agree with its reference in tq-ref.c:
//   quantize, dequantize, rotate, unrotate, mad_rotated: bit for bit;
//   dot_rotated: up to float rounding (the reference sums its 64 products sequentially).
// Both files are compiled without floating-point contraction (ggml-tq.cmake: -ffp-contract=off);
// the FMAs of the dot are explicit intrinsics, the mad keeps the reference's separate multiply and add.
//
// Why the bit-exact ones stay bit-exact:
//   - the Walsh-Hadamard butterflies are elementwise, so doing each stage across SIMD lanes computes
//     every a+b and a-b of the reference (a+b == b+a and a-b == a+(-b) exactly in IEEE arithmetic);
//   - x*(+-1) and x*0.125 are exact, and applied in the reference's order;
//   - the quantizer's two sums of squares (|y|^2 and |c|^2) are summed in the reference's order,
//     j = 0..63, from 0, each square rounded before it is added; the sums of several blocks are
//     interleaved so that their dependency chains overlap (that chain bounds a lone block's latency);
//   - the index of a coordinate is the number of boundaries strictly below it (ties go down): a
//     branch-free binary search over the ascending boundaries gives that same count;
//   - the scale goes through the reference's own tq_fp32_to_fp16.
// tests/c/test-tq-kernels.c checks all of this (and --bench times it).
#include "ggml-tq.h"
#include "tq-codebook.h"

#include <assert.h>
#include <float.h>
#include <math.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#    include <immintrin.h>
#    if defined(__AVX512F__)
#        define TQ_AVX512 1
#    else
#        define TQ_AVX2 1
#    endif
#elif defined(__ARM_NEON) && defined(__aarch64__)
#    include <arm_neon.h>
#    define TQ_NEON 1
#endif

#if defined(_MSC_VER)
#    define TQ_INLINE static __forceinline
#else
#    define TQ_INLINE static inline __attribute__((always_inline))
#endif

#if defined(TQ_AVX512) || defined(TQ_AVX2) || defined(TQ_NEON)
#define TQ_SIMD 1

// ---- shared: sequential sums and the quantize driver --------------------------------------------

// out[b] = (((0 + v[b][0]) + v[b][1]) + ...) + v[b][63] for G rows of 64: the reference's order,
// G independent dependency chains interleaved.
TQ_INLINE void tq_seq_sum64(const float * restrict v, float * restrict out, const int G) {
    float s[8];
    for (int b = 0; b < G; ++b) {
        s[b] = 0.0f;
    }
    for (int j = 0; j < QK_TQ; ++j) {
        for (int b = 0; b < G; ++b) {
            s[b] += v[b*QK_TQ + j];
        }
    }
    for (int b = 0; b < G; ++b) {
        out[b] = s[b];
    }
}

// n <= 8 rows of v (room for 8): pads to 1, 2, 4 or 8 chains with zero rows
static void tq_seq_sums(float * v, float * out, int n) {
    const int G = n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : 8;
    if (G > n) {
        memset(v + n*QK_TQ, 0, (size_t)(G - n)*QK_TQ*sizeof(float));
    }
    switch (G) {
        case 1:  tq_seq_sum64(v, out, 1); break;
        case 2:  tq_seq_sum64(v, out, 2); break;
        case 4:  tq_seq_sum64(v, out, 4); break;
        default: tq_seq_sum64(v, out, 8); break;
    }
}

// Per ISA below:
//   float tq_prep_block(const float * x, float * y, float * sq):
//       returns amax; when amax > 0 writes y = H D (x/amax) / 8 and sq = y*y, else sq = 0
//   void tq4_index_block(const float * y, float inv_norm, block_tq4_0 * b, float * csq):
//       writes b->qs and csq[j] = c[idx_j]^2 (and likewise tq3_index_block)
#define TQ_QGROUP 8
#define TQ_DEFINE_QUANTIZE(NAME)                                                                    \
void quantize_row_##NAME(const float * x, block_##NAME * y, int64_t k) {                            \
    assert(k % QK_TQ == 0);                                                                         \
    const int64_t nb = k/QK_TQ;                                                                     \
    _Alignas(64) float yb[TQ_QGROUP*QK_TQ];                                                         \
    _Alignas(64) float sq[TQ_QGROUP*QK_TQ];                                                         \
    float amax[TQ_QGROUP], norm[TQ_QGROUP], ss[TQ_QGROUP];                                          \
    for (int64_t ib0 = 0; ib0 < nb; ib0 += TQ_QGROUP) {                                             \
        const int n = nb - ib0 < TQ_QGROUP ? (int)(nb - ib0) : TQ_QGROUP;                           \
        for (int b = 0; b < n; ++b) {                                                               \
            amax[b] = tq_prep_block(x + (ib0 + b)*QK_TQ, yb + b*QK_TQ, sq + b*QK_TQ);               \
        }                                                                                           \
        tq_seq_sums(sq, ss, n);                                                                     \
        for (int b = 0; b < n; ++b) {                                                               \
            block_##NAME * blk = y + ib0 + b;                                                       \
            if (amax[b] == 0.0f) { /* sq row is already 0 */                                        \
                memset(blk, 0, sizeof(*blk));                                                       \
                continue;                                                                           \
            }                                                                                       \
            norm[b] = sqrtf(ss[b]);                                                                 \
            NAME##_index_block(yb + b*QK_TQ, 1.0f/norm[b], blk, sq + b*QK_TQ);                      \
        }                                                                                           \
        tq_seq_sums(sq, ss, n);                                                                     \
        for (int b = 0; b < n; ++b) {                                                               \
            if (amax[b] != 0.0f) {                                                                  \
                y[ib0 + b].d = tq_fp32_to_fp16(amax[b]*(norm[b]/sqrtf(ss[b])));                     \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
}

#endif // TQ_SIMD

#if defined(TQ_AVX512) || defined(TQ_AVX2)
TQ_INLINE float tq_h2f(tq_half h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return tq_fp16_to_fp32(h);
#endif
}
#endif

// =================================================================================================
#if defined(TQ_AVX512)
// 64 values = 4 zmm. Only AVX512F is needed.

const char * tq_cpu_variant(void) { return "avx512"; }

// one butterfly stage inside a register: s = v with partners swapped, upper = lanes holding j+h
TQ_INLINE __m512 tq_bfly(__m512 v, __m512 s, __mmask16 upper) {
    return _mm512_mask_sub_ps(_mm512_add_ps(v, s), upper, s, v); // lower: a+b, upper: a-b
}

TQ_INLINE void tq_fwht64(__m512 * v) {
    for (int i = 0; i < 4; ++i) {
        v[i] = tq_bfly(v[i], _mm512_permute_ps(v[i], 0xB1), 0xAAAA);             // h = 1
        v[i] = tq_bfly(v[i], _mm512_permute_ps(v[i], 0x4E), 0xCCCC);             // h = 2
        v[i] = tq_bfly(v[i], _mm512_shuffle_f32x4(v[i], v[i], 0xB1), 0xF0F0);    // h = 4
        v[i] = tq_bfly(v[i], _mm512_shuffle_f32x4(v[i], v[i], 0x4E), 0xFF00);    // h = 8
    }
    __m512 a, b;
    a = v[0]; b = v[1]; v[0] = _mm512_add_ps(a, b); v[1] = _mm512_sub_ps(a, b); // h = 16
    a = v[2]; b = v[3]; v[2] = _mm512_add_ps(a, b); v[3] = _mm512_sub_ps(a, b);
    a = v[0]; b = v[2]; v[0] = _mm512_add_ps(a, b); v[2] = _mm512_sub_ps(a, b); // h = 32
    a = v[1]; b = v[3]; v[1] = _mm512_add_ps(a, b); v[3] = _mm512_sub_ps(a, b);
}

TQ_INLINE __m512 tq_sign(int i) { return _mm512_loadu_ps(tq_signs + 16*i); }

// centroid values of a block: c[i] holds values 16i..16i+15
TQ_INLINE void tq4_decode(const block_tq4_0 * b, __m512 cb, __m512 * c) {
    const __m512i lo = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *) b->qs));        // j = 0..15 (+ high nibbles)
    const __m512i hi = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b->qs + 16)));  // j = 16..31
    c[0] = _mm512_permutexvar_ps(lo, cb); // uses index bits 0..3 only
    c[1] = _mm512_permutexvar_ps(hi, cb);
    c[2] = _mm512_permutexvar_ps(_mm512_srli_epi32(lo, 4), cb);
    c[3] = _mm512_permutexvar_ps(_mm512_srli_epi32(hi, 4), cb);
}

// cb: the 8 centroids twice (index bit 3 is don't-care)
TQ_INLINE void tq3_decode(const block_tq3_0 * b, __m512 cb, __m512 * c) {
    const __m512i qs  = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *) b->qs));
    const __m256i qh8 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) b->qh));
    // lanes 0..7: qh[j], lanes 8..15: qh[j] >> 1: lane l of value 16k+l has its third bit at bit 2k
    const __m512i qh  = _mm512_inserti64x4(_mm512_castsi256_si512(qh8), _mm256_srli_epi32(qh8, 1), 1);
    const __m512i m3  = _mm512_set1_epi32(3);
    // (A & 3) | (B & ~3): ternary logic "C ? A : B" = 0xE4
    c[0] = _mm512_permutexvar_ps(_mm512_ternarylogic_epi32(qs,                       _mm512_slli_epi32(qh, 2), m3, 0xE4), cb);
    c[1] = _mm512_permutexvar_ps(_mm512_ternarylogic_epi32(_mm512_srli_epi32(qs, 2), qh,                       m3, 0xE4), cb);
    c[2] = _mm512_permutexvar_ps(_mm512_ternarylogic_epi32(_mm512_srli_epi32(qs, 4), _mm512_srli_epi32(qh, 2), m3, 0xE4), cb);
    c[3] = _mm512_permutexvar_ps(_mm512_ternarylogic_epi32(_mm512_srli_epi32(qs, 6), _mm512_srli_epi32(qh, 4), m3, 0xE4), cb);
}

TQ_INLINE __m512 tq4_codebook(void) { return _mm512_loadu_ps(tq_centroids_4bit); }
TQ_INLINE __m512 tq3_codebook(void) {
    const __m512 c = _mm512_castps256_ps512(_mm256_loadu_ps(tq_centroids_3bit));
    return _mm512_shuffle_f32x4(c, c, 0x44);
}

// ---- quantize ----

TQ_INLINE float tq_prep_block(const float * x, float * y, float * sq) {
    __m512 v[4];
    __m512 m = _mm512_setzero_ps();
    for (int i = 0; i < 4; ++i) {
        v[i] = _mm512_loadu_ps(x + 16*i);
        m = _mm512_max_ps(m, _mm512_abs_ps(v[i]));
    }
    const float amax = _mm512_reduce_max_ps(m);
    if (amax < FLT_MIN) { // also subnormal blocks: 1/amax would overflow, and d would underflow to 0 anyway
        for (int i = 0; i < 4; ++i) {
            _mm512_store_ps(sq + 16*i, _mm512_setzero_ps());
        }
        return 0.0f;
    }
    const __m512 inv = _mm512_set1_ps(1.0f/amax);
    for (int i = 0; i < 4; ++i) {
        v[i] = _mm512_mul_ps(_mm512_mul_ps(v[i], inv), tq_sign(i));
    }
    tq_fwht64(v);
    for (int i = 0; i < 4; ++i) {
        v[i] = _mm512_mul_ps(v[i], _mm512_set1_ps(0.125f));
        _mm512_store_ps(y  + 16*i, v[i]);
        _mm512_store_ps(sq + 16*i, _mm512_mul_ps(v[i], v[i]));
    }
    return amax;
}

#define TQ_LT(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_LT_OQ)

// number of the 15 4-bit boundaries strictly below z (bnd: lane 15 unused)
TQ_INLINE __m512i tq4_search(__m512 z, __m512 bnd) {
    __m512i t = _mm512_maskz_mov_epi32(TQ_LT(_mm512_set1_ps(tq_boundaries_4bit[7]), z), _mm512_set1_epi32(8));
    __m512 b;
    b = _mm512_permutexvar_ps(_mm512_add_epi32(t, _mm512_set1_epi32(3)), bnd);
    t = _mm512_mask_add_epi32(t, TQ_LT(b, z), t, _mm512_set1_epi32(4));
    b = _mm512_permutexvar_ps(_mm512_add_epi32(t, _mm512_set1_epi32(1)), bnd);
    t = _mm512_mask_add_epi32(t, TQ_LT(b, z), t, _mm512_set1_epi32(2));
    b = _mm512_permutexvar_ps(t, bnd);
    t = _mm512_mask_add_epi32(t, TQ_LT(b, z), t, _mm512_set1_epi32(1));
    return t;
}

TQ_INLINE __m512i tq3_search(__m512 z, __m512 bnd) {
    __m512i t = _mm512_maskz_mov_epi32(TQ_LT(_mm512_set1_ps(tq_boundaries_3bit[3]), z), _mm512_set1_epi32(4));
    __m512 b;
    b = _mm512_permutexvar_ps(_mm512_add_epi32(t, _mm512_set1_epi32(1)), bnd);
    t = _mm512_mask_add_epi32(t, TQ_LT(b, z), t, _mm512_set1_epi32(2));
    b = _mm512_permutexvar_ps(t, bnd);
    t = _mm512_mask_add_epi32(t, TQ_LT(b, z), t, _mm512_set1_epi32(1));
    return t;
}

TQ_INLINE void tq4_0_index_block(const float * y, float inv_norm, block_tq4_0 * blk, float * csq) {
    const __m512 bnd = _mm512_maskz_loadu_ps(0x7fff, tq_boundaries_4bit);
    const __m512 cb  = tq4_codebook();
    const __m512 cb2 = _mm512_mul_ps(cb, cb);
    const __m512 in  = _mm512_set1_ps(inv_norm);
    __m512i idx[4];
    for (int i = 0; i < 4; ++i) {
        idx[i] = tq4_search(_mm512_mul_ps(_mm512_load_ps(y + 16*i), in), bnd);
        _mm512_store_ps(csq + 16*i, _mm512_permutexvar_ps(idx[i], cb2));
    }
    _mm_storeu_si128((__m128i *) blk->qs,        _mm512_cvtepi32_epi8(_mm512_or_si512(idx[0], _mm512_slli_epi32(idx[2], 4))));
    _mm_storeu_si128((__m128i *)(blk->qs + 16),  _mm512_cvtepi32_epi8(_mm512_or_si512(idx[1], _mm512_slli_epi32(idx[3], 4))));
}

TQ_INLINE void tq3_0_index_block(const float * y, float inv_norm, block_tq3_0 * blk, float * csq) {
    const __m512 bnd = _mm512_maskz_loadu_ps(0x7f, tq_boundaries_3bit);
    const __m512 cb  = tq3_codebook();
    const __m512 cb2 = _mm512_mul_ps(cb, cb);
    const __m512 in  = _mm512_set1_ps(inv_norm);
    const __m512i m3 = _mm512_set1_epi32(3), m1 = _mm512_set1_epi32(1);
    __m512i qs = _mm512_setzero_si512(), qh = _mm512_setzero_si512();
    for (int i = 0; i < 4; ++i) {
        const __m512i t = tq3_search(_mm512_mul_ps(_mm512_load_ps(y + 16*i), in), bnd);
        _mm512_store_ps(csq + 16*i, _mm512_permutexvar_ps(t, cb2));
        qs = _mm512_or_si512(qs, _mm512_slli_epi32(_mm512_and_si512(t, m3), 2*i));
        qh = _mm512_or_si512(qh, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(t, 2), m1), 2*i));
    }
    // qh[j] = H[j] | H[j+8] << 1
    qh = _mm512_or_si512(qh, _mm512_slli_epi32(_mm512_shuffle_i64x2(qh, qh, 0xEE), 1));
    _mm_storeu_si128((__m128i *) blk->qs, _mm512_cvtepi32_epi8(qs));
    _mm_storel_epi64((__m128i *) blk->qh, _mm512_cvtepi32_epi8(qh));
}

TQ_DEFINE_QUANTIZE(tq4_0)
TQ_DEFINE_QUANTIZE(tq3_0)

// ---- decoders and rotated-domain kernels ----

#define TQ_DEFINE_KERNELS(NAME)                                                                     \
void tq_dequantize_row_##NAME##_0(const block_##NAME##_0 * x, float * y, int64_t k) {               \
    assert(k % QK_TQ == 0);                                                                         \
    const __m512 cb = NAME##_codebook();                                                            \
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {                                                      \
        __m512 v[4];                                                                                \
        NAME##_decode(x + ib, cb, v);                                                               \
        tq_fwht64(v);                                                                               \
        const __m512 ds = _mm512_set1_ps(tq_h2f(x[ib].d)*0.125f);                                   \
        for (int i = 0; i < 4; ++i) {                                                               \
            _mm512_storeu_ps(y + ib*QK_TQ + 16*i, _mm512_mul_ps(_mm512_mul_ps(v[i], ds), tq_sign(i))); \
        }                                                                                           \
    }                                                                                               \
}                                                                                                   \
float NAME##_0_dot_rotated(const block_##NAME##_0 * x, const float * q, int64_t k) {                \
    assert(k % QK_TQ == 0);                                                                         \
    const __m512 cb = NAME##_codebook();                                                            \
    __m512 acc = _mm512_setzero_ps();                                                               \
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib, q += QK_TQ) {                                          \
        __m512 c[4];                                                                                \
        NAME##_decode(x + ib, cb, c);                                                               \
        __m512 s0 = _mm512_mul_ps(_mm512_loadu_ps(q +  0), c[0]);                                   \
        __m512 s1 = _mm512_mul_ps(_mm512_loadu_ps(q + 16), c[1]);                                   \
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + 32), c[2], s0);                                    \
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + 48), c[3], s1);                                    \
        acc = _mm512_fmadd_ps(_mm512_add_ps(s0, s1), _mm512_set1_ps(tq_h2f(x[ib].d)), acc);         \
    }                                                                                               \
    return _mm512_reduce_add_ps(acc);                                                               \
}                                                                                                   \
void NAME##_0_mad_rotated(const block_##NAME##_0 * x, float * acc, float w, int64_t k) {            \
    assert(k % QK_TQ == 0);                                                                         \
    const __m512 cb = NAME##_codebook();                                                            \
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib, acc += QK_TQ) {                                        \
        __m512 c[4];                                                                                \
        NAME##_decode(x + ib, cb, c);                                                               \
        const __m512 wd = _mm512_set1_ps(w*tq_h2f(x[ib].d));                                        \
        for (int i = 0; i < 4; ++i) {                                                               \
            _mm512_storeu_ps(acc + 16*i, _mm512_add_ps(_mm512_loadu_ps(acc + 16*i), _mm512_mul_ps(wd, c[i]))); \
        }                                                                                           \
    }                                                                                               \
}

TQ_DEFINE_KERNELS(tq4)
TQ_DEFINE_KERNELS(tq3)

void tq_rotate_row_fast(const float * x, float * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {
        __m512 v[4];
        for (int i = 0; i < 4; ++i) {
            v[i] = _mm512_mul_ps(_mm512_loadu_ps(x + ib*QK_TQ + 16*i), tq_sign(i));
        }
        tq_fwht64(v);
        for (int i = 0; i < 4; ++i) {
            _mm512_storeu_ps(y + ib*QK_TQ + 16*i, _mm512_mul_ps(v[i], _mm512_set1_ps(0.125f)));
        }
    }
}

void tq_unrotate_row_fast(const float * x, float * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {
        __m512 v[4];
        for (int i = 0; i < 4; ++i) {
            v[i] = _mm512_loadu_ps(x + ib*QK_TQ + 16*i);
        }
        tq_fwht64(v);
        for (int i = 0; i < 4; ++i) {
            _mm512_storeu_ps(y + ib*QK_TQ + 16*i, _mm512_mul_ps(_mm512_mul_ps(v[i], _mm512_set1_ps(0.125f)), tq_sign(i)));
        }
    }
}

// =================================================================================================
#elif defined(TQ_AVX2)
// 64 values = 8 ymm.

const char * tq_cpu_variant(void) { return "avx2"; }

// one butterfly stage inside a register: s = v with partners swapped, neg = -0.0f in the lanes
// holding j+h: lower lanes get b+a, upper lanes a+(-b)
TQ_INLINE __m256 tq_bfly(__m256 v, __m256 s, __m256 neg) {
    return _mm256_add_ps(s, _mm256_xor_ps(v, neg));
}

TQ_INLINE void tq_fwht64(__m256 * v) {
    const __m256 n1 = _mm256_setr_ps(0.0f, -0.0f, 0.0f, -0.0f, 0.0f, -0.0f, 0.0f, -0.0f);
    const __m256 n2 = _mm256_setr_ps(0.0f, 0.0f, -0.0f, -0.0f, 0.0f, 0.0f, -0.0f, -0.0f);
    const __m256 n4 = _mm256_setr_ps(0.0f, 0.0f, 0.0f, 0.0f, -0.0f, -0.0f, -0.0f, -0.0f);
    for (int i = 0; i < 8; ++i) {
        v[i] = tq_bfly(v[i], _mm256_permute_ps(v[i], 0xB1), n1);               // h = 1
        v[i] = tq_bfly(v[i], _mm256_permute_ps(v[i], 0x4E), n2);               // h = 2
        v[i] = tq_bfly(v[i], _mm256_permute2f128_ps(v[i], v[i], 0x01), n4);    // h = 4
    }
    for (int h = 1; h < 8; h <<= 1) {                                           // h = 8, 16, 32
        for (int i = 0; i < 8; i += 2*h) {
            for (int j = i; j < i + h; ++j) {
                const __m256 a = v[j], b = v[j + h];
                v[j]     = _mm256_add_ps(a, b);
                v[j + h] = _mm256_sub_ps(a, b);
            }
        }
    }
}

TQ_INLINE __m256 tq_sign(int i) { return _mm256_loadu_ps(tq_signs + 8*i); }

TQ_INLINE float tq_hmax(__m256 m) {
    __m128 r = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    r = _mm_max_ps(r, _mm_movehl_ps(r, r));
    r = _mm_max_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

TQ_INLINE float tq_hsum(__m256 m) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

// the low byte of each 32-bit lane, to 8 bytes at dst
TQ_INLINE void tq_pack8(__m256i v, uint8_t * dst) {
    const __m256i shuf = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    v = _mm256_shuffle_epi8(v, shuf);
    _mm_storel_epi64((__m128i *) dst, _mm_unpacklo_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
}

typedef struct { __m256 lo, hi; } tq_cb16;

// 16-entry lookup: bits 0..2 of each lane select within a half, bit 3 (at bit 31 of sel) the half
TQ_INLINE __m256 tq_lookup16(tq_cb16 cb, __m256i idx, __m256i sel) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(cb.lo, idx), _mm256_permutevar8x32_ps(cb.hi, idx), _mm256_castsi256_ps(sel));
}

// c[i] holds values 8i..8i+7
TQ_INLINE void tq4_decode(const block_tq4_0 * b, tq_cb16 cb, __m256 * c) {
    for (int g = 0; g < 4; ++g) {
        const __m256i i = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b->qs + 8*g)));
        c[g]     = tq_lookup16(cb, i,                        _mm256_slli_epi32(i, 28));
        c[g + 4] = tq_lookup16(cb, _mm256_srli_epi32(i, 4),  _mm256_slli_epi32(i, 24));
    }
}

TQ_INLINE void tq3_decode(const block_tq3_0 * b, __m256 cb, __m256 * c) {
    const __m256i qa = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) b->qs));        // qs[0..7]
    const __m256i qb = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b->qs + 8)));   // qs[8..15]
    const __m256i qh = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) b->qh));
    const __m256i m3 = _mm256_set1_epi32(3);
    // values 8m..8m+7: low bits from qs[8(m%2)..] >> 2(m/2), third bit = bit m of qh[0..7]
    // vpermps reads index bits 0..2 only: (A & 3) | (B & ~3)
#define TQ3_IDX(A, B) _mm256_or_si256(_mm256_and_si256((A), m3), _mm256_andnot_si256(m3, (B)))
    c[0] = _mm256_permutevar8x32_ps(cb, TQ3_IDX(qa,                        _mm256_slli_epi32(qh, 2)));
    c[1] = _mm256_permutevar8x32_ps(cb, TQ3_IDX(qb,                        _mm256_slli_epi32(qh, 1)));
    c[2] = _mm256_permutevar8x32_ps(cb, TQ3_IDX(_mm256_srli_epi32(qa, 2), qh));
    c[3] = _mm256_permutevar8x32_ps(cb, TQ3_IDX(_mm256_srli_epi32(qb, 2), _mm256_srli_epi32(qh, 1)));
    c[4] = _mm256_permutevar8x32_ps(cb, TQ3_IDX(_mm256_srli_epi32(qa, 4), _mm256_srli_epi32(qh, 2)));
    c[5] = _mm256_permutevar8x32_ps(cb, TQ3_IDX(_mm256_srli_epi32(qb, 4), _mm256_srli_epi32(qh, 3)));
    c[6] = _mm256_permutevar8x32_ps(cb, TQ3_IDX(_mm256_srli_epi32(qa, 6), _mm256_srli_epi32(qh, 4)));
    c[7] = _mm256_permutevar8x32_ps(cb, TQ3_IDX(_mm256_srli_epi32(qb, 6), _mm256_srli_epi32(qh, 5)));
#undef TQ3_IDX
}

TQ_INLINE tq_cb16 tq4_codebook(void) {
    tq_cb16 cb = { _mm256_loadu_ps(tq_centroids_4bit), _mm256_loadu_ps(tq_centroids_4bit + 8) };
    return cb;
}
TQ_INLINE __m256 tq3_codebook(void) { return _mm256_loadu_ps(tq_centroids_3bit); }

// ---- quantize ----

TQ_INLINE float tq_prep_block(const float * x, float * y, float * sq) {
    __m256 v[8];
    __m256 m = _mm256_setzero_ps();
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int i = 0; i < 8; ++i) {
        v[i] = _mm256_loadu_ps(x + 8*i);
        m = _mm256_max_ps(m, _mm256_and_ps(v[i], absmask));
    }
    const float amax = tq_hmax(m);
    if (amax < FLT_MIN) { // also subnormal blocks: 1/amax would overflow, and d would underflow to 0 anyway
        for (int i = 0; i < 8; ++i) {
            _mm256_store_ps(sq + 8*i, _mm256_setzero_ps());
        }
        return 0.0f;
    }
    const __m256 inv = _mm256_set1_ps(1.0f/amax);
    for (int i = 0; i < 8; ++i) {
        v[i] = _mm256_mul_ps(_mm256_mul_ps(v[i], inv), tq_sign(i));
    }
    tq_fwht64(v);
    for (int i = 0; i < 8; ++i) {
        v[i] = _mm256_mul_ps(v[i], _mm256_set1_ps(0.125f));
        _mm256_store_ps(y  + 8*i, v[i]);
        _mm256_store_ps(sq + 8*i, _mm256_mul_ps(v[i], v[i]));
    }
    return amax;
}

#define TQ_LT(a, b) _mm256_cmp_ps((a), (b), _CMP_LT_OQ)
#define TQ_BITS(m, n) _mm256_and_si256(_mm256_castps_si256(m), _mm256_set1_epi32(n))

// number of the 15 boundaries strictly below z, by binary search
TQ_INLINE __m256i tq4_search(__m256 z) {
    const float * B = tq_boundaries_4bit;
    const __m256 bo = _mm256_setr_ps(B[1], B[3], B[5], B[7], B[9], B[11], B[13], B[13]); // B[t+1], t = 0, 4, 8, 12
    const __m256 be = _mm256_setr_ps(B[0], B[2], B[4], B[6], B[8], B[10], B[12], B[14]); // B[t], t even
    __m256 m = TQ_LT(_mm256_set1_ps(B[7]), z);
    __m256i t = TQ_BITS(m, 8);
    m = TQ_LT(_mm256_blendv_ps(_mm256_set1_ps(B[3]), _mm256_set1_ps(B[11]), m), z);
    t = _mm256_add_epi32(t, TQ_BITS(m, 4));
    m = TQ_LT(_mm256_permutevar8x32_ps(bo, _mm256_srli_epi32(t, 1)), z);
    t = _mm256_add_epi32(t, TQ_BITS(m, 2));
    m = TQ_LT(_mm256_permutevar8x32_ps(be, _mm256_srli_epi32(t, 1)), z);
    return _mm256_add_epi32(t, TQ_BITS(m, 1));
}

TQ_INLINE __m256i tq3_search(__m256 z) {
    const float * B = tq_boundaries_3bit;
    const __m256 b8 = _mm256_setr_ps(B[0], B[1], B[2], B[3], B[4], B[5], B[6], B[6]);
    __m256 m = TQ_LT(_mm256_set1_ps(B[3]), z);
    __m256i t = TQ_BITS(m, 4);
    m = TQ_LT(_mm256_blendv_ps(_mm256_set1_ps(B[1]), _mm256_set1_ps(B[5]), m), z);
    t = _mm256_add_epi32(t, TQ_BITS(m, 2));
    m = TQ_LT(_mm256_permutevar8x32_ps(b8, t), z);
    return _mm256_add_epi32(t, TQ_BITS(m, 1));
}

TQ_INLINE void tq4_0_index_block(const float * y, float inv_norm, block_tq4_0 * blk, float * csq) {
    const tq_cb16 cb = tq4_codebook();
    const tq_cb16 cb2 = { _mm256_mul_ps(cb.lo, cb.lo), _mm256_mul_ps(cb.hi, cb.hi) };
    const __m256 in = _mm256_set1_ps(inv_norm);
    __m256i idx[8];
    for (int i = 0; i < 8; ++i) {
        idx[i] = tq4_search(_mm256_mul_ps(_mm256_load_ps(y + 8*i), in));
        _mm256_store_ps(csq + 8*i, tq_lookup16(cb2, idx[i], _mm256_slli_epi32(idx[i], 28)));
    }
    for (int g = 0; g < 4; ++g) {
        tq_pack8(_mm256_or_si256(idx[g], _mm256_slli_epi32(idx[g + 4], 4)), blk->qs + 8*g);
    }
}

TQ_INLINE void tq3_0_index_block(const float * y, float inv_norm, block_tq3_0 * blk, float * csq) {
    const __m256 cb = tq3_codebook();
    const __m256 cb2 = _mm256_mul_ps(cb, cb);
    const __m256 in = _mm256_set1_ps(inv_norm);
    const __m256i m3 = _mm256_set1_epi32(3), m1 = _mm256_set1_epi32(1);
    __m256i qa = _mm256_setzero_si256(), qb = _mm256_setzero_si256(), qh = _mm256_setzero_si256();
    for (int i = 0; i < 8; ++i) {
        const __m256i t = tq3_search(_mm256_mul_ps(_mm256_load_ps(y + 8*i), in));
        _mm256_store_ps(csq + 8*i, _mm256_permutevar8x32_ps(cb2, t));
        const __m256i lo = _mm256_slli_epi32(_mm256_and_si256(t, m3), 2*(i/2));
        if (i % 2 == 0) {
            qa = _mm256_or_si256(qa, lo);
        } else {
            qb = _mm256_or_si256(qb, lo);
        }
        qh = _mm256_or_si256(qh, _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(t, 2), m1), i));
    }
    tq_pack8(qa, blk->qs);
    tq_pack8(qb, blk->qs + 8);
    tq_pack8(qh, blk->qh);
}

TQ_DEFINE_QUANTIZE(tq4_0)
TQ_DEFINE_QUANTIZE(tq3_0)

// ---- decoders and rotated-domain kernels ----

#define TQ_DEFINE_KERNELS(NAME, CBTYPE)                                                             \
void tq_dequantize_row_##NAME##_0(const block_##NAME##_0 * x, float * y, int64_t k) {               \
    assert(k % QK_TQ == 0);                                                                         \
    const CBTYPE cb = NAME##_codebook();                                                            \
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {                                                      \
        __m256 v[8];                                                                                \
        NAME##_decode(x + ib, cb, v);                                                               \
        tq_fwht64(v);                                                                               \
        const __m256 ds = _mm256_set1_ps(tq_h2f(x[ib].d)*0.125f);                                   \
        for (int i = 0; i < 8; ++i) {                                                               \
            _mm256_storeu_ps(y + ib*QK_TQ + 8*i, _mm256_mul_ps(_mm256_mul_ps(v[i], ds), tq_sign(i))); \
        }                                                                                           \
    }                                                                                               \
}                                                                                                   \
float NAME##_0_dot_rotated(const block_##NAME##_0 * x, const float * q, int64_t k) {                \
    assert(k % QK_TQ == 0);                                                                         \
    const CBTYPE cb = NAME##_codebook();                                                            \
    __m256 acc = _mm256_setzero_ps();                                                               \
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib, q += QK_TQ) {                                          \
        __m256 c[8];                                                                                \
        NAME##_decode(x + ib, cb, c);                                                               \
        __m256 s0 = _mm256_mul_ps(_mm256_loadu_ps(q), c[0]);                                        \
        __m256 s1 = _mm256_mul_ps(_mm256_loadu_ps(q + 8), c[1]);                                    \
        for (int i = 2; i < 8; i += 2) {                                                            \
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8*i),     c[i],     s0);                       \
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8*i + 8), c[i + 1], s1);                       \
        }                                                                                           \
        acc = _mm256_fmadd_ps(_mm256_add_ps(s0, s1), _mm256_set1_ps(tq_h2f(x[ib].d)), acc);         \
    }                                                                                               \
    return tq_hsum(acc);                                                                            \
}                                                                                                   \
void NAME##_0_mad_rotated(const block_##NAME##_0 * x, float * acc, float w, int64_t k) {            \
    assert(k % QK_TQ == 0);                                                                         \
    const CBTYPE cb = NAME##_codebook();                                                            \
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib, acc += QK_TQ) {                                        \
        __m256 c[8];                                                                                \
        NAME##_decode(x + ib, cb, c);                                                               \
        const __m256 wd = _mm256_set1_ps(w*tq_h2f(x[ib].d));                                        \
        for (int i = 0; i < 8; ++i) {                                                               \
            _mm256_storeu_ps(acc + 8*i, _mm256_add_ps(_mm256_loadu_ps(acc + 8*i), _mm256_mul_ps(wd, c[i]))); \
        }                                                                                           \
    }                                                                                               \
}

TQ_DEFINE_KERNELS(tq4, tq_cb16)
TQ_DEFINE_KERNELS(tq3, __m256)

void tq_rotate_row_fast(const float * x, float * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {
        __m256 v[8];
        for (int i = 0; i < 8; ++i) {
            v[i] = _mm256_mul_ps(_mm256_loadu_ps(x + ib*QK_TQ + 8*i), tq_sign(i));
        }
        tq_fwht64(v);
        for (int i = 0; i < 8; ++i) {
            _mm256_storeu_ps(y + ib*QK_TQ + 8*i, _mm256_mul_ps(v[i], _mm256_set1_ps(0.125f)));
        }
    }
}

void tq_unrotate_row_fast(const float * x, float * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {
        __m256 v[8];
        for (int i = 0; i < 8; ++i) {
            v[i] = _mm256_loadu_ps(x + ib*QK_TQ + 8*i);
        }
        tq_fwht64(v);
        for (int i = 0; i < 8; ++i) {
            _mm256_storeu_ps(y + ib*QK_TQ + 8*i, _mm256_mul_ps(_mm256_mul_ps(v[i], _mm256_set1_ps(0.125f)), tq_sign(i)));
        }
    }
}

// =================================================================================================
#elif defined(TQ_NEON)
// 64 values = 16 float32x4. Centroid lookups with vqtbl on the codebook's bytes.

const char * tq_cpu_variant(void) { return "neon"; }

TQ_INLINE float tq_h2f(tq_half h) {
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

TQ_INLINE float32x4_t tq_bfly(float32x4_t v, float32x4_t s, uint32x4_t neg) {
    return vaddq_f32(s, vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(v), neg)));
}

static const uint32_t tq_neg_lanes[8] = { 0, 0x80000000u, 0, 0x80000000u, 0, 0, 0x80000000u, 0x80000000u };

TQ_INLINE void tq_fwht64(float32x4_t * v) {
    const uint32x4_t n1 = vld1q_u32(tq_neg_lanes);
    const uint32x4_t n2 = vld1q_u32(tq_neg_lanes + 4);
    for (int i = 0; i < 16; ++i) {
        v[i] = tq_bfly(v[i], vrev64q_f32(v[i]), n1);          // h = 1
        v[i] = tq_bfly(v[i], vextq_f32(v[i], v[i], 2), n2);   // h = 2
    }
    for (int h = 1; h < 16; h <<= 1) {                         // h = 4 .. 32
        for (int i = 0; i < 16; i += 2*h) {
            for (int j = i; j < i + h; ++j) {
                const float32x4_t a = v[j], b = v[j + h];
                v[j]     = vaddq_f32(a, b);
                v[j + h] = vsubq_f32(a, b);
            }
        }
    }
}

TQ_INLINE float32x4_t tq_sign(int i) { return vld1q_f32(tq_signs + 4*i); }

static const uint8_t tq_tbl_sel[80] = {
    0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3,
    4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7,
    8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11,
    12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15,
    0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3,
};

// byte offsets into a float table for 16 indices: out g covers indices 4g..4g+3
TQ_INLINE void tq_byte_idx(uint8x16_t idx, uint8x16_t * out) {
    const uint8x16_t i4  = vshlq_n_u8(idx, 2);
    const uint8x16_t off = vld1q_u8(tq_tbl_sel + 64);
    for (int g = 0; g < 4; ++g) {
        out[g] = vorrq_u8(vqtbl1q_u8(i4, vld1q_u8(tq_tbl_sel + 16*g)), off);
    }
}

typedef struct { uint8x16x4_t t; } tq_tab4;
typedef struct { uint8x16x2_t t; } tq_tab3;

TQ_INLINE tq_tab4 tq4_codebook(void) {
    const uint8_t * p = (const uint8_t *) tq_centroids_4bit;
    tq_tab4 r;
    r.t.val[0] = vld1q_u8(p); r.t.val[1] = vld1q_u8(p + 16); r.t.val[2] = vld1q_u8(p + 32); r.t.val[3] = vld1q_u8(p + 48);
    return r;
}
TQ_INLINE tq_tab3 tq3_codebook(void) {
    const uint8_t * p = (const uint8_t *) tq_centroids_3bit;
    tq_tab3 r;
    r.t.val[0] = vld1q_u8(p); r.t.val[1] = vld1q_u8(p + 16);
    return r;
}

TQ_INLINE void tq4_lookup(tq_tab4 cb, uint8x16_t idx, float32x4_t * c) {
    uint8x16_t bi[4];
    tq_byte_idx(idx, bi);
    for (int g = 0; g < 4; ++g) {
        c[g] = vreinterpretq_f32_u8(vqtbl4q_u8(cb.t, bi[g]));
    }
}
TQ_INLINE void tq3_lookup(tq_tab3 cb, uint8x16_t idx, float32x4_t * c) {
    uint8x16_t bi[4];
    tq_byte_idx(idx, bi);
    for (int g = 0; g < 4; ++g) {
        c[g] = vreinterpretq_f32_u8(vqtbl2q_u8(cb.t, bi[g]));
    }
}

// the 64 indices of a block as 4 vectors of 16 bytes, value 16i+l in lane l of idx[i]
TQ_INLINE void tq4_indices(const block_tq4_0 * b, uint8x16_t * idx) {
    const uint8x16_t a = vld1q_u8(b->qs), c = vld1q_u8(b->qs + 16), m = vdupq_n_u8(0x0f);
    idx[0] = vandq_u8(a, m);
    idx[1] = vandq_u8(c, m);
    idx[2] = vshrq_n_u8(a, 4);
    idx[3] = vshrq_n_u8(c, 4);
}
TQ_INLINE void tq3_indices(const block_tq3_0 * b, uint8x16_t * idx) {
    const uint8x16_t qs = vld1q_u8(b->qs);
    const uint8x8_t  h8 = vld1_u8(b->qh);
    const uint8x16_t qh = vcombine_u8(h8, vshr_n_u8(h8, 1)); // lane l of value 16k+l: third bit at bit 2k
    const uint8x16_t m3 = vdupq_n_u8(3), m4 = vdupq_n_u8(4);
    idx[0] = vorrq_u8(vandq_u8(qs, m3),                vandq_u8(vshlq_n_u8(qh, 2), m4));
    idx[1] = vorrq_u8(vandq_u8(vshrq_n_u8(qs, 2), m3), vandq_u8(qh, m4));
    idx[2] = vorrq_u8(vandq_u8(vshrq_n_u8(qs, 4), m3), vandq_u8(vshrq_n_u8(qh, 2), m4));
    idx[3] = vorrq_u8(vshrq_n_u8(qs, 6),               vandq_u8(vshrq_n_u8(qh, 4), m4));
}

TQ_INLINE void tq4_decode(const block_tq4_0 * b, tq_tab4 cb, float32x4_t * c) {
    uint8x16_t idx[4];
    tq4_indices(b, idx);
    for (int i = 0; i < 4; ++i) {
        tq4_lookup(cb, idx[i], c + 4*i);
    }
}
TQ_INLINE void tq3_decode(const block_tq3_0 * b, tq_tab3 cb, float32x4_t * c) {
    uint8x16_t idx[4];
    tq3_indices(b, idx);
    for (int i = 0; i < 4; ++i) {
        tq3_lookup(cb, idx[i], c + 4*i);
    }
}

// ---- quantize ----

TQ_INLINE float tq_prep_block(const float * x, float * y, float * sq) {
    float32x4_t v[16];
    float32x4_t m = vdupq_n_f32(0.0f);
    for (int i = 0; i < 16; ++i) {
        v[i] = vld1q_f32(x + 4*i);
        m = vmaxq_f32(m, vabsq_f32(v[i]));
    }
    const float amax = vmaxvq_f32(m);
    if (amax < FLT_MIN) { // also subnormal blocks: 1/amax would overflow, and d would underflow to 0 anyway
        for (int i = 0; i < 16; ++i) {
            vst1q_f32(sq + 4*i, vdupq_n_f32(0.0f));
        }
        return 0.0f;
    }
    const float32x4_t inv = vdupq_n_f32(1.0f/amax);
    for (int i = 0; i < 16; ++i) {
        v[i] = vmulq_f32(vmulq_f32(v[i], inv), tq_sign(i));
    }
    tq_fwht64(v);
    for (int i = 0; i < 16; ++i) {
        v[i] = vmulq_f32(v[i], vdupq_n_f32(0.125f));
        vst1q_f32(y  + 4*i, v[i]);
        vst1q_f32(sq + 4*i, vmulq_f32(v[i], v[i]));
    }
    return amax;
}

// 16 indices (number of boundaries strictly below z) from 16 coordinates
TQ_INLINE uint8x16_t tq_count16(const float * y, float32x4_t in, const float * B, int nbnd) {
    uint32x4_t cnt[4];
    for (int g = 0; g < 4; ++g) {
        const float32x4_t z = vmulq_f32(vld1q_f32(y + 4*g), in);
        uint32x4_t c = vdupq_n_u32(0);
        for (int i = 0; i < nbnd; ++i) {
            c = vsubq_u32(c, vcltq_f32(vdupq_n_f32(B[i]), z));
        }
        cnt[g] = c;
    }
    const uint16x8_t a = vcombine_u16(vmovn_u32(cnt[0]), vmovn_u32(cnt[1]));
    const uint16x8_t b = vcombine_u16(vmovn_u32(cnt[2]), vmovn_u32(cnt[3]));
    return vcombine_u8(vmovn_u16(a), vmovn_u16(b));
}

TQ_INLINE void tq4_0_index_block(const float * y, float inv_norm, block_tq4_0 * blk, float * csq) {
    const tq_tab4 cb = tq4_codebook();
    const float32x4_t in = vdupq_n_f32(inv_norm);
    uint8x16_t idx[4];
    for (int i = 0; i < 4; ++i) {
        idx[i] = tq_count16(y + 16*i, in, tq_boundaries_4bit, 15);
        float32x4_t c[4];
        tq4_lookup(cb, idx[i], c);
        for (int g = 0; g < 4; ++g) {
            vst1q_f32(csq + 16*i + 4*g, vmulq_f32(c[g], c[g]));
        }
    }
    vst1q_u8(blk->qs,      vorrq_u8(idx[0], vshlq_n_u8(idx[2], 4)));
    vst1q_u8(blk->qs + 16, vorrq_u8(idx[1], vshlq_n_u8(idx[3], 4)));
}

TQ_INLINE void tq3_0_index_block(const float * y, float inv_norm, block_tq3_0 * blk, float * csq) {
    const tq_tab3 cb = tq3_codebook();
    const float32x4_t in = vdupq_n_f32(inv_norm);
    const uint8x16_t m3 = vdupq_n_u8(3), m1 = vdupq_n_u8(1);
    uint8x16_t qs = vdupq_n_u8(0), h = vdupq_n_u8(0);
    for (int i = 0; i < 4; ++i) {
        const uint8x16_t t = tq_count16(y + 16*i, in, tq_boundaries_3bit, 7);
        float32x4_t c[4];
        tq3_lookup(cb, t, c);
        for (int g = 0; g < 4; ++g) {
            vst1q_f32(csq + 16*i + 4*g, vmulq_f32(c[g], c[g]));
        }
        qs = vorrq_u8(qs, vshlq_u8(vandq_u8(t, m3), vdupq_n_s8((int8_t)(2*i))));
        h  = vorrq_u8(h,  vshlq_u8(vandq_u8(vshrq_n_u8(t, 2), m1), vdupq_n_s8((int8_t)(2*i))));
    }
    vst1q_u8(blk->qs, qs);
    vst1_u8(blk->qh, vorr_u8(vget_low_u8(h), vshl_n_u8(vget_high_u8(h), 1)));
}

TQ_DEFINE_QUANTIZE(tq4_0)
TQ_DEFINE_QUANTIZE(tq3_0)

// ---- decoders and rotated-domain kernels ----

#define TQ_DEFINE_KERNELS(NAME, TAB)                                                                \
void tq_dequantize_row_##NAME##_0(const block_##NAME##_0 * x, float * y, int64_t k) {               \
    assert(k % QK_TQ == 0);                                                                         \
    const TAB cb = NAME##_codebook();                                                               \
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {                                                      \
        float32x4_t v[16];                                                                          \
        NAME##_decode(x + ib, cb, v);                                                               \
        tq_fwht64(v);                                                                               \
        const float32x4_t ds = vdupq_n_f32(tq_h2f(x[ib].d)*0.125f);                                 \
        for (int i = 0; i < 16; ++i) {                                                              \
            vst1q_f32(y + ib*QK_TQ + 4*i, vmulq_f32(vmulq_f32(v[i], ds), tq_sign(i)));              \
        }                                                                                           \
    }                                                                                               \
}                                                                                                   \
float NAME##_0_dot_rotated(const block_##NAME##_0 * x, const float * q, int64_t k) {                \
    assert(k % QK_TQ == 0);                                                                         \
    const TAB cb = NAME##_codebook();                                                               \
    float32x4_t acc = vdupq_n_f32(0.0f);                                                            \
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib, q += QK_TQ) {                                          \
        float32x4_t c[16];                                                                          \
        NAME##_decode(x + ib, cb, c);                                                               \
        float32x4_t s[4];                                                                           \
        for (int i = 0; i < 4; ++i) {                                                               \
            s[i] = vmulq_f32(vld1q_f32(q + 4*i), c[i]);                                             \
        }                                                                                           \
        for (int i = 4; i < 16; ++i) {                                                              \
            s[i % 4] = vfmaq_f32(s[i % 4], vld1q_f32(q + 4*i), c[i]);                               \
        }                                                                                           \
        const float32x4_t st = vaddq_f32(vaddq_f32(s[0], s[1]), vaddq_f32(s[2], s[3]));             \
        acc = vfmaq_f32(acc, st, vdupq_n_f32(tq_h2f(x[ib].d)));                                     \
    }                                                                                               \
    return vaddvq_f32(acc);                                                                         \
}                                                                                                   \
void NAME##_0_mad_rotated(const block_##NAME##_0 * x, float * acc, float w, int64_t k) {            \
    assert(k % QK_TQ == 0);                                                                         \
    const TAB cb = NAME##_codebook();                                                               \
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib, acc += QK_TQ) {                                        \
        float32x4_t c[16];                                                                          \
        NAME##_decode(x + ib, cb, c);                                                               \
        const float32x4_t wd = vdupq_n_f32(w*tq_h2f(x[ib].d));                                      \
        for (int i = 0; i < 16; ++i) {                                                              \
            vst1q_f32(acc + 4*i, vaddq_f32(vld1q_f32(acc + 4*i), vmulq_f32(wd, c[i])));             \
        }                                                                                           \
    }                                                                                               \
}

TQ_DEFINE_KERNELS(tq4, tq_tab4)
TQ_DEFINE_KERNELS(tq3, tq_tab3)

void tq_rotate_row_fast(const float * x, float * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {
        float32x4_t v[16];
        for (int i = 0; i < 16; ++i) {
            v[i] = vmulq_f32(vld1q_f32(x + ib*QK_TQ + 4*i), tq_sign(i));
        }
        tq_fwht64(v);
        for (int i = 0; i < 16; ++i) {
            vst1q_f32(y + ib*QK_TQ + 4*i, vmulq_f32(v[i], vdupq_n_f32(0.125f)));
        }
    }
}

void tq_unrotate_row_fast(const float * x, float * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {
        float32x4_t v[16];
        for (int i = 0; i < 16; ++i) {
            v[i] = vld1q_f32(x + ib*QK_TQ + 4*i);
        }
        tq_fwht64(v);
        for (int i = 0; i < 16; ++i) {
            vst1q_f32(y + ib*QK_TQ + 4*i, vmulq_f32(vmulq_f32(v[i], vdupq_n_f32(0.125f)), tq_sign(i)));
        }
    }
}

// =================================================================================================
#else
// no SIMD path compiled: the reference

const char * tq_cpu_variant(void) { return "scalar"; }

void  quantize_row_tq4_0(const float * x, block_tq4_0 * y, int64_t k) { quantize_row_tq4_0_ref(x, y, k); }
void  quantize_row_tq3_0(const float * x, block_tq3_0 * y, int64_t k) { quantize_row_tq3_0_ref(x, y, k); }
void  tq_dequantize_row_tq4_0(const block_tq4_0 * x, float * y, int64_t k) { dequantize_row_tq4_0(x, y, k); }
void  tq_dequantize_row_tq3_0(const block_tq3_0 * x, float * y, int64_t k) { dequantize_row_tq3_0(x, y, k); }
void  tq_rotate_row_fast(const float * x, float * y, int64_t k) { tq_rotate_row(x, y, k); }
void  tq_unrotate_row_fast(const float * x, float * y, int64_t k) { tq_unrotate_row(x, y, k); }
float tq4_0_dot_rotated(const block_tq4_0 * x, const float * q, int64_t k) { return tq4_0_dot_rotated_ref(x, q, k); }
float tq3_0_dot_rotated(const block_tq3_0 * x, const float * q, int64_t k) { return tq3_0_dot_rotated_ref(x, q, k); }
void  tq4_0_mad_rotated(const block_tq4_0 * x, float * acc, float w, int64_t k) { tq4_0_mad_rotated_ref(x, acc, w, k); }
void  tq3_0_mad_rotated(const block_tq3_0 * x, float * acc, float w, int64_t k) { tq3_0_mad_rotated_ref(x, acc, w, k); }

#endif
