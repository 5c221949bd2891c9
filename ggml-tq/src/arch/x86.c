// TQ kernels for x86: AVX-512F (64 values = 4 zmm) or AVX2 + FMA (64 values = 8 ymm), whichever the
// file is compiled for. The per-register operations are mapped below; the transform, the centroid
// lookups and the quantizer's search differ by instruction set, the row loops are written once.
#include "tq-cpu.h"
#include "tq-codebook.h"

#if defined(TQ_CPU_X86)

#include <immintrin.h>

// ---- one register of floats ---------------------------------------------------------------------

#if defined(__AVX512F__)
#define TQ_VL 16
typedef __m512 tq_vec;
TQ_INLINE tq_vec tq_load(const float * p)           { return _mm512_loadu_ps(p); }
TQ_INLINE void   tq_store(float * p, tq_vec v)      { _mm512_storeu_ps(p, v); }
TQ_INLINE tq_vec tq_set1(float f)                   { return _mm512_set1_ps(f); }
TQ_INLINE tq_vec tq_add(tq_vec a, tq_vec b)         { return _mm512_add_ps(a, b); }
TQ_INLINE tq_vec tq_mul(tq_vec a, tq_vec b)         { return _mm512_mul_ps(a, b); }
TQ_INLINE tq_vec tq_fma(tq_vec a, tq_vec b, tq_vec c) { return _mm512_fmadd_ps(a, b, c); }
TQ_INLINE tq_vec tq_max_abs(tq_vec m, tq_vec v)     { return _mm512_max_ps(m, _mm512_abs_ps(v)); }
TQ_INLINE float tq_hsum(tq_vec v) { // lanes j + j+8, then j + j+4, j + j+2, j + j+1: tq_tree_sum64's pairing
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}
TQ_INLINE float  tq_hmax(tq_vec v)                  { return _mm512_reduce_max_ps(v); }
#else
#define TQ_VL 8
typedef __m256 tq_vec;
TQ_INLINE tq_vec tq_load(const float * p)           { return _mm256_loadu_ps(p); }
TQ_INLINE void   tq_store(float * p, tq_vec v)      { _mm256_storeu_ps(p, v); }
TQ_INLINE tq_vec tq_set1(float f)                   { return _mm256_set1_ps(f); }
TQ_INLINE tq_vec tq_add(tq_vec a, tq_vec b)         { return _mm256_add_ps(a, b); }
TQ_INLINE tq_vec tq_mul(tq_vec a, tq_vec b)         { return _mm256_mul_ps(a, b); }
TQ_INLINE tq_vec tq_fma(tq_vec a, tq_vec b, tq_vec c) { return _mm256_fmadd_ps(a, b, c); }
TQ_INLINE tq_vec tq_max_abs(tq_vec m, tq_vec v) {
    return _mm256_max_ps(m, _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))));
}
TQ_INLINE float tq_hsum(tq_vec v) { // lanes j + j+4, then j + j+2, j + j+1: tq_tree_sum64's pairing
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}
TQ_INLINE float tq_hmax(tq_vec v) {
    __m128 r = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_max_ps(r, _mm_movehl_ps(r, r));
    r = _mm_max_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}
#endif

#define TQ_NV (QK_TQ/TQ_VL) // registers per block

TQ_INLINE tq_vec tq_sign(int i) { return tq_load(tq_signs + TQ_VL*i); }

TQ_INLINE float tq_h2f(tq_half h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return tq_fp16_to_fp32(h);
#endif
}

// ---- instruction-set specific: transform, centroid lookups, quantizer search ----------------------

#if defined(__AVX512F__)

// one butterfly stage inside a register: s = v with partners swapped, upper = lanes holding j+h
TQ_INLINE __m512 tq_bfly(__m512 v, __m512 s, __mmask16 upper) {
    return _mm512_mask_sub_ps(_mm512_add_ps(v, s), upper, s, v); // lower: a+b, upper: a-b
}

TQ_INLINE void tq_fwht64_x86(__m512 * v) {
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

// the centroids of a block: c[i] holds values 16i..16i+15
TQ_INLINE void tq4_decode(const void * blk, __m512 * c) {
    const block_tq4_0 * b = blk;
    const __m512  cb = _mm512_loadu_ps(tq_centroids_4bit);
    const __m512i lo = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *) b->qs));        // j = 0..15 (+ high nibbles)
    const __m512i hi = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b->qs + 16)));  // j = 16..31
    c[0] = _mm512_permutexvar_ps(lo, cb); // uses index bits 0..3 only
    c[1] = _mm512_permutexvar_ps(hi, cb);
    c[2] = _mm512_permutexvar_ps(_mm512_srli_epi32(lo, 4), cb);
    c[3] = _mm512_permutexvar_ps(_mm512_srli_epi32(hi, 4), cb);
}

// the 8 centroids twice (index bit 3 is don't-care)
TQ_INLINE __m512 tq3_codebook(void) {
    const __m512 c = _mm512_castps256_ps512(_mm256_loadu_ps(tq_centroids_3bit));
    return _mm512_shuffle_f32x4(c, c, 0x44);
}

TQ_INLINE void tq3_decode(const void * blk, __m512 * c) {
    const block_tq3_0 * b = blk;
    const __m512  cb  = tq3_codebook();
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

// the 4 centroids four times (index bits 2 and 3 are don't-care)
TQ_INLINE __m512 tqv2_codebook(void) {
    const __m512 c = _mm512_castps128_ps512(_mm_loadu_ps(tq_centroids_2bit));
    return _mm512_shuffle_f32x4(c, c, 0x00);
}

TQ_INLINE void tqv2_decode(const void * blk, __m512 * c) {
    const block_tqv2_0 * b = blk;
    const __m512  cb = tqv2_codebook();
    const __m512i qs = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *) b->qs));
    // value 16k + l: bits 2k, 2k+1 of qs[l]; the bits above them only repeat the codebook
    c[0] = _mm512_permutexvar_ps(qs, cb);
    c[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(qs, 2), cb);
    c[2] = _mm512_permutexvar_ps(_mm512_srli_epi32(qs, 4), cb);
    c[3] = _mm512_permutexvar_ps(_mm512_srli_epi32(qs, 6), cb);
}

TQ_INLINE __mmask16 tq_lt(__m512 a, __m512 b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }

// number of the 15 4-bit boundaries strictly below z (bnd: lane 15 unused)
TQ_INLINE __m512i tq4_search(__m512 z, __m512 bnd) {
    __m512i t = _mm512_maskz_mov_epi32(tq_lt(_mm512_set1_ps(tq_boundaries_4bit[7]), z), _mm512_set1_epi32(8));
    __m512 b;
    b = _mm512_permutexvar_ps(_mm512_add_epi32(t, _mm512_set1_epi32(3)), bnd);
    t = _mm512_mask_add_epi32(t, tq_lt(b, z), t, _mm512_set1_epi32(4));
    b = _mm512_permutexvar_ps(_mm512_add_epi32(t, _mm512_set1_epi32(1)), bnd);
    t = _mm512_mask_add_epi32(t, tq_lt(b, z), t, _mm512_set1_epi32(2));
    b = _mm512_permutexvar_ps(t, bnd);
    t = _mm512_mask_add_epi32(t, tq_lt(b, z), t, _mm512_set1_epi32(1));
    return t;
}

TQ_INLINE __m512i tq3_search(__m512 z, __m512 bnd) {
    __m512i t = _mm512_maskz_mov_epi32(tq_lt(_mm512_set1_ps(tq_boundaries_3bit[3]), z), _mm512_set1_epi32(4));
    __m512 b;
    b = _mm512_permutexvar_ps(_mm512_add_epi32(t, _mm512_set1_epi32(1)), bnd);
    t = _mm512_mask_add_epi32(t, tq_lt(b, z), t, _mm512_set1_epi32(2));
    b = _mm512_permutexvar_ps(t, bnd);
    t = _mm512_mask_add_epi32(t, tq_lt(b, z), t, _mm512_set1_epi32(1));
    return t;
}

TQ_INLINE __m512i tqv2_search(__m512 z, __m512 bnd) {
    const __m512i t = _mm512_maskz_mov_epi32(tq_lt(_mm512_set1_ps(tq_boundaries_2bit[1]), z), _mm512_set1_epi32(2));
    return _mm512_mask_add_epi32(t, tq_lt(_mm512_permutexvar_ps(t, bnd), z), t, _mm512_set1_epi32(1));
}

// the centroids of coordinates w (the scale search's scoring)
TQ_INLINE __m512 tq4_code(__m512 w) {
    return _mm512_permutexvar_ps(tq4_search(w, _mm512_maskz_loadu_ps(0x7fff, tq_boundaries_4bit)), _mm512_loadu_ps(tq_centroids_4bit));
}

TQ_INLINE __m512 tq3_code(__m512 w) {
    return _mm512_permutexvar_ps(tq3_search(w, _mm512_maskz_loadu_ps(0x7f, tq_boundaries_3bit)), tq3_codebook());
}

TQ_INLINE __m512 tqv2_code(__m512 w) {
    return _mm512_permutexvar_ps(tqv2_search(w, _mm512_maskz_loadu_ps(0x7, tq_boundaries_2bit)), tqv2_codebook());
}

TQ_INLINE void tq4_index_block(const __m512 * z, float gain, void * blk, float * csq) {
    block_tq4_0 * b = blk;
    const __m512 bnd = _mm512_maskz_loadu_ps(0x7fff, tq_boundaries_4bit);
    const __m512 cb  = _mm512_loadu_ps(tq_centroids_4bit);
    const __m512 cb2 = _mm512_mul_ps(cb, cb);
    const __m512 t   = _mm512_set1_ps(gain);
    __m512i idx[4];
    for (int i = 0; i < 4; ++i) {
        idx[i] = tq4_search(_mm512_mul_ps(z[i], t), bnd);
        _mm512_store_ps(csq + 16*i, _mm512_permutexvar_ps(idx[i], cb2));
    }
    _mm_storeu_si128((__m128i *) b->qs,       _mm512_cvtepi32_epi8(_mm512_or_si512(idx[0], _mm512_slli_epi32(idx[2], 4))));
    _mm_storeu_si128((__m128i *)(b->qs + 16), _mm512_cvtepi32_epi8(_mm512_or_si512(idx[1], _mm512_slli_epi32(idx[3], 4))));
}

TQ_INLINE void tq3_index_block(const __m512 * z, float gain, void * blk, float * csq) {
    block_tq3_0 * b = blk;
    const __m512 bnd = _mm512_maskz_loadu_ps(0x7f, tq_boundaries_3bit);
    const __m512 cb  = tq3_codebook();
    const __m512 cb2 = _mm512_mul_ps(cb, cb);
    const __m512 g   = _mm512_set1_ps(gain);
    const __m512i m3 = _mm512_set1_epi32(3), m1 = _mm512_set1_epi32(1);
    __m512i qs = _mm512_setzero_si512(), qh = _mm512_setzero_si512();
    for (int i = 0; i < 4; ++i) {
        const __m512i t = tq3_search(_mm512_mul_ps(z[i], g), bnd);
        _mm512_store_ps(csq + 16*i, _mm512_permutexvar_ps(t, cb2));
        qs = _mm512_or_si512(qs, _mm512_slli_epi32(_mm512_and_si512(t, m3), 2*i));
        qh = _mm512_or_si512(qh, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(t, 2), m1), 2*i));
    }
    // qh[j] = H[j] | H[j+8] << 1
    qh = _mm512_or_si512(qh, _mm512_slli_epi32(_mm512_shuffle_i64x2(qh, qh, 0xEE), 1));
    _mm_storeu_si128((__m128i *) b->qs, _mm512_cvtepi32_epi8(qs));
    _mm_storel_epi64((__m128i *) b->qh, _mm512_cvtepi32_epi8(qh));
}

TQ_INLINE void tqv2_index_block(const __m512 * z, float gain, void * blk, float * csq) {
    block_tqv2_0 * b = blk;
    const __m512 bnd = _mm512_maskz_loadu_ps(0x7, tq_boundaries_2bit);
    const __m512 cb  = tqv2_codebook();
    const __m512 cb2 = _mm512_mul_ps(cb, cb);
    const __m512 g   = _mm512_set1_ps(gain);
    __m512i qs = _mm512_setzero_si512();
    for (int i = 0; i < 4; ++i) {
        const __m512i t = tqv2_search(_mm512_mul_ps(z[i], g), bnd);
        _mm512_store_ps(csq + 16*i, _mm512_permutexvar_ps(t, cb2));
        qs = _mm512_or_si512(qs, _mm512_slli_epi32(t, 2*i));
    }
    _mm_storeu_si128((__m128i *) b->qs, _mm512_cvtepi32_epi8(qs));
}

// tq6_0: 64 centroids in 4 registers, t[i] = entries 16i..16i+15
TQ_INLINE void tq6_table(const float * p, __m512 * t) {
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm512_loadu_ps(p + 16*i);
    }
}

// entry idx of t[0..3]: index bits 0..4 pick within a pair of registers, bit 5 the pair; the bits above are don't-care
TQ_INLINE __m512 tq_lookup64(const __m512 * t, __m512i idx) {
    return _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, _mm512_set1_epi32(32)),
                                _mm512_permutex2var_ps(t[0], idx, t[1]), _mm512_permutex2var_ps(t[2], idx, t[3]));
}

TQ_INLINE void tq6_decode(const void * blk, __m512 * c) {
    const block_tq6_0 * b = blk;
    __m512 cb[4];
    tq6_table(tq_centroids_6bit, cb);
    const __m512i lo = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *) b->qs));
    const __m512i hi = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b->qs + 16)));
    const __m512i qh = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *) b->qh));
    const __m512i m4 = _mm512_set1_epi32(15);
    // value 16k + l: the low 4 bits as tq4_0's, bits 4 and 5 from bits 2k, 2k+1 of qh[l]; (A & 15) | (B & ~15)
    c[0] = tq_lookup64(cb, _mm512_ternarylogic_epi32(lo,                       _mm512_slli_epi32(qh, 4), m4, 0xE4));
    c[1] = tq_lookup64(cb, _mm512_ternarylogic_epi32(hi,                       _mm512_slli_epi32(qh, 2), m4, 0xE4));
    c[2] = tq_lookup64(cb, _mm512_ternarylogic_epi32(_mm512_srli_epi32(lo, 4), qh,                       m4, 0xE4));
    c[3] = tq_lookup64(cb, _mm512_ternarylogic_epi32(_mm512_srli_epi32(hi, 4), _mm512_srli_epi32(qh, 2), m4, 0xE4));
}

// The 63 boundaries as tq6_search reads them: once the bits of the index above a step are known, the
// boundary that step compares with is a table entry indexed by those bits alone, so each table holds
// only the entries its step can read (one permute instead of two and a blend for a 64-entry lookup).
typedef struct {
    __m512 b8;    // B[16j + 7], j < 4
    __m512 b4;    // B[8j + 3],  j < 8
    __m512 b2;    // B[4j + 1],  j < 16
    __m512 b1[2]; // B[2j],      j < 32
} tq6_bounds;

// B[o + s*j] for j < 16 (constant arguments: the compiler folds it to a constant)
TQ_INLINE __m512 tq6_bnd16(int s, int o) {
    const float * B = tq_boundaries_6bit;
    return _mm512_setr_ps(B[o],          B[o + s],      B[o + 2*s],  B[o + 3*s],  B[o + 4*s],  B[o + 5*s],  B[o + 6*s],  B[o + 7*s],
                          B[o + 8*s],    B[o + 9*s],    B[o + 10*s], B[o + 11*s], B[o + 12*s], B[o + 13*s], B[o + 14*s], B[o + 15*s]);
}

TQ_INLINE tq6_bounds tq6_bounds_load(void) {
    const float * B = tq_boundaries_6bit;
    tq6_bounds bd;
    bd.b8    = _mm512_zextps128_ps512(_mm_setr_ps(B[7], B[23], B[39], B[55]));
    bd.b4    = _mm512_zextps256_ps512(_mm256_setr_ps(B[3], B[11], B[19], B[27], B[35], B[43], B[51], B[59]));
    bd.b2    = tq6_bnd16(4, 1);
    bd.b1[0] = tq6_bnd16(2, 0);
    bd.b1[1] = tq6_bnd16(2, 32);
    return bd;
}

// number of the 63 boundaries strictly below z: a binary search, bit 5 of the index first
TQ_INLINE __m512i tq6_search(__m512 z, const tq6_bounds * bd) {
    const float * B = tq_boundaries_6bit;
    const __mmask16 upper = tq_lt(_mm512_set1_ps(B[31]), z);
    __m512i t = _mm512_maskz_mov_epi32(upper, _mm512_set1_epi32(32));
    __m512 b = _mm512_mask_blend_ps(upper, _mm512_set1_ps(B[15]), _mm512_set1_ps(B[47]));
    t = _mm512_mask_add_epi32(t, tq_lt(b, z), t, _mm512_set1_epi32(16));
    b = _mm512_permutexvar_ps(_mm512_srli_epi32(t, 4), bd->b8);
    t = _mm512_mask_add_epi32(t, tq_lt(b, z), t, _mm512_set1_epi32(8));
    b = _mm512_permutexvar_ps(_mm512_srli_epi32(t, 3), bd->b4);
    t = _mm512_mask_add_epi32(t, tq_lt(b, z), t, _mm512_set1_epi32(4));
    b = _mm512_permutexvar_ps(_mm512_srli_epi32(t, 2), bd->b2);
    t = _mm512_mask_add_epi32(t, tq_lt(b, z), t, _mm512_set1_epi32(2));
    b = _mm512_permutex2var_ps(bd->b1[0], _mm512_srli_epi32(t, 1), bd->b1[1]);
    t = _mm512_mask_add_epi32(t, tq_lt(b, z), t, _mm512_set1_epi32(1));
    return t;
}

TQ_INLINE __m512 tq6_code(__m512 w) {
    const tq6_bounds bd = tq6_bounds_load();
    __m512 cb[4];
    tq6_table(tq_centroids_6bit, cb);
    return tq_lookup64(cb, tq6_search(w, &bd));
}

TQ_INLINE void tq6_index_block(const __m512 * z, float gain, void * blk, float * csq) {
    block_tq6_0 * b = blk;
    const tq6_bounds bd = tq6_bounds_load();
    __m512 cb2[4];
    tq6_table(tq_centroids_6bit, cb2);
    for (int i = 0; i < 4; ++i) {
        cb2[i] = _mm512_mul_ps(cb2[i], cb2[i]);
    }
    const __m512 g = _mm512_set1_ps(gain);
    __m512i idx[4], qh = _mm512_setzero_si512();
    for (int i = 0; i < 4; ++i) {
        idx[i] = tq6_search(_mm512_mul_ps(z[i], g), &bd);
        _mm512_store_ps(csq + 16*i, tq_lookup64(cb2, idx[i]));
        qh = _mm512_or_si512(qh, _mm512_slli_epi32(_mm512_srli_epi32(idx[i], 4), 2*i));
    }
    // the byte conversion drops the bits of idx[2], idx[3] above the nibble
    const __m512i m4 = _mm512_set1_epi32(15);
    _mm_storeu_si128((__m128i *) b->qs,       _mm512_cvtepi32_epi8(_mm512_or_si512(_mm512_and_si512(idx[0], m4), _mm512_slli_epi32(idx[2], 4))));
    _mm_storeu_si128((__m128i *)(b->qs + 16), _mm512_cvtepi32_epi8(_mm512_or_si512(_mm512_and_si512(idx[1], m4), _mm512_slli_epi32(idx[3], 4))));
    _mm_storeu_si128((__m128i *) b->qh,       _mm512_cvtepi32_epi8(qh));
}

#else // AVX2

// one butterfly stage inside a register: s = v with partners swapped, neg = -0.0f in the lanes
// holding j+h: lower lanes get b+a, upper lanes a+(-b)
TQ_INLINE __m256 tq_bfly(__m256 v, __m256 s, __m256 neg) {
    return _mm256_add_ps(s, _mm256_xor_ps(v, neg));
}

TQ_INLINE void tq_fwht64_x86(__m256 * v) {
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

// the low byte of each 32-bit lane, to 8 bytes at dst
TQ_INLINE void tq_pack8(__m256i v, uint8_t * dst) {
    const __m256i shuf = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    v = _mm256_shuffle_epi8(v, shuf);
    _mm_storel_epi64((__m128i *) dst, _mm_unpacklo_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
}

// 16-entry lookup in (lo, hi): bits 0..2 of each lane select within a half, bit 3 (at bit 31 of sel) the half
TQ_INLINE __m256 tq_lookup16(__m256 lo, __m256 hi, __m256i idx, __m256i sel) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), _mm256_castsi256_ps(sel));
}

// the centroids of a block: c[i] holds values 8i..8i+7
TQ_INLINE void tq4_decode(const void * blk, __m256 * c) {
    const block_tq4_0 * b = blk;
    const __m256 lo = _mm256_loadu_ps(tq_centroids_4bit), hi = _mm256_loadu_ps(tq_centroids_4bit + 8);
    for (int g = 0; g < 4; ++g) {
        const __m256i i = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b->qs + 8*g)));
        c[g]     = tq_lookup16(lo, hi, i,                       _mm256_slli_epi32(i, 28));
        c[g + 4] = tq_lookup16(lo, hi, _mm256_srli_epi32(i, 4), _mm256_slli_epi32(i, 24));
    }
}

// vpermps reads index bits 0..2 only: (a & 3) | (b & ~3)
TQ_INLINE __m256i tq3_idx(__m256i a, __m256i b) {
    const __m256i m3 = _mm256_set1_epi32(3);
    return _mm256_or_si256(_mm256_and_si256(a, m3), _mm256_andnot_si256(m3, b));
}

TQ_INLINE void tq3_decode(const void * blk, __m256 * c) {
    const block_tq3_0 * b = blk;
    const __m256  cb = _mm256_loadu_ps(tq_centroids_3bit);
    const __m256i qa = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) b->qs));        // qs[0..7]
    const __m256i qb = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b->qs + 8)));   // qs[8..15]
    const __m256i qh = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) b->qh));
    // values 8m..8m+7: low bits from qs[8(m%2)..] >> 2(m/2), third bit = bit m of qh[0..7]
    c[0] = _mm256_permutevar8x32_ps(cb, tq3_idx(qa,                        _mm256_slli_epi32(qh, 2)));
    c[1] = _mm256_permutevar8x32_ps(cb, tq3_idx(qb,                        _mm256_slli_epi32(qh, 1)));
    c[2] = _mm256_permutevar8x32_ps(cb, tq3_idx(_mm256_srli_epi32(qa, 2), qh));
    c[3] = _mm256_permutevar8x32_ps(cb, tq3_idx(_mm256_srli_epi32(qb, 2), _mm256_srli_epi32(qh, 1)));
    c[4] = _mm256_permutevar8x32_ps(cb, tq3_idx(_mm256_srli_epi32(qa, 4), _mm256_srli_epi32(qh, 2)));
    c[5] = _mm256_permutevar8x32_ps(cb, tq3_idx(_mm256_srli_epi32(qb, 4), _mm256_srli_epi32(qh, 3)));
    c[6] = _mm256_permutevar8x32_ps(cb, tq3_idx(_mm256_srli_epi32(qa, 6), _mm256_srli_epi32(qh, 4)));
    c[7] = _mm256_permutevar8x32_ps(cb, tq3_idx(_mm256_srli_epi32(qb, 6), _mm256_srli_epi32(qh, 5)));
}

// the 4 centroids twice (index bit 2 is don't-care)
TQ_INLINE __m256 tqv2_codebook(void) {
    const __m128 c = _mm_loadu_ps(tq_centroids_2bit);
    return _mm256_set_m128(c, c);
}

TQ_INLINE void tqv2_decode(const void * blk, __m256 * c) {
    const block_tqv2_0 * b = blk;
    const __m256  cb = tqv2_codebook();
    const __m256i qa = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) b->qs));        // qs[0..7]
    const __m256i qb = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b->qs + 8)));   // qs[8..15]
    // values 8m..8m+7: qs[8(m%2)..] >> 2(m/2); the bits above the index only repeat the codebook
    for (int k = 0; k < 4; ++k) {
        c[2*k]     = _mm256_permutevar8x32_ps(cb, _mm256_srli_epi32(qa, 2*k));
        c[2*k + 1] = _mm256_permutevar8x32_ps(cb, _mm256_srli_epi32(qb, 2*k));
    }
}

TQ_INLINE __m256 tq_lt(__m256 a, __m256 b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }

// n in the lanes where m is set, else 0
TQ_INLINE __m256i tq_bits(__m256 m, int n) { return _mm256_and_si256(_mm256_castps_si256(m), _mm256_set1_epi32(n)); }

// number of the 15 boundaries strictly below z, by binary search
TQ_INLINE __m256i tq4_search(__m256 z) {
    const float * B = tq_boundaries_4bit;
    const __m256 bo = _mm256_setr_ps(B[1], B[3], B[5], B[7], B[9], B[11], B[13], B[13]); // B[t+1], t = 0, 4, 8, 12
    const __m256 be = _mm256_setr_ps(B[0], B[2], B[4], B[6], B[8], B[10], B[12], B[14]); // B[t], t even
    __m256 m = tq_lt(_mm256_set1_ps(B[7]), z);
    __m256i t = tq_bits(m, 8);
    m = tq_lt(_mm256_blendv_ps(_mm256_set1_ps(B[3]), _mm256_set1_ps(B[11]), m), z);
    t = _mm256_add_epi32(t, tq_bits(m, 4));
    m = tq_lt(_mm256_permutevar8x32_ps(bo, _mm256_srli_epi32(t, 1)), z);
    t = _mm256_add_epi32(t, tq_bits(m, 2));
    m = tq_lt(_mm256_permutevar8x32_ps(be, _mm256_srli_epi32(t, 1)), z);
    return _mm256_add_epi32(t, tq_bits(m, 1));
}

TQ_INLINE __m256i tq3_search(__m256 z) {
    const float * B = tq_boundaries_3bit;
    const __m256 b8 = _mm256_setr_ps(B[0], B[1], B[2], B[3], B[4], B[5], B[6], B[6]);
    __m256 m = tq_lt(_mm256_set1_ps(B[3]), z);
    __m256i t = tq_bits(m, 4);
    m = tq_lt(_mm256_blendv_ps(_mm256_set1_ps(B[1]), _mm256_set1_ps(B[5]), m), z);
    t = _mm256_add_epi32(t, tq_bits(m, 2));
    m = tq_lt(_mm256_permutevar8x32_ps(b8, t), z);
    return _mm256_add_epi32(t, tq_bits(m, 1));
}

TQ_INLINE __m256i tqv2_search(__m256 z) {
    const float * B = tq_boundaries_2bit;
    __m256 m = tq_lt(_mm256_set1_ps(B[1]), z);
    const __m256i t = tq_bits(m, 2);
    m = tq_lt(_mm256_blendv_ps(_mm256_set1_ps(B[0]), _mm256_set1_ps(B[2]), m), z);
    return _mm256_add_epi32(t, tq_bits(m, 1));
}

// the centroids of coordinates w (the scale search's scoring)
TQ_INLINE __m256 tq4_code(__m256 w) {
    const __m256i i = tq4_search(w);
    return tq_lookup16(_mm256_loadu_ps(tq_centroids_4bit), _mm256_loadu_ps(tq_centroids_4bit + 8), i, _mm256_slli_epi32(i, 28));
}

TQ_INLINE __m256 tq3_code(__m256 w) {
    return _mm256_permutevar8x32_ps(_mm256_loadu_ps(tq_centroids_3bit), tq3_search(w));
}

TQ_INLINE __m256 tqv2_code(__m256 w) {
    return _mm256_permutevar8x32_ps(tqv2_codebook(), tqv2_search(w));
}

TQ_INLINE void tq4_index_block(const __m256 * z, float gain, void * blk, float * csq) {
    block_tq4_0 * b = blk;
    const __m256 lo = _mm256_loadu_ps(tq_centroids_4bit), hi = _mm256_loadu_ps(tq_centroids_4bit + 8);
    const __m256 lo2 = _mm256_mul_ps(lo, lo), hi2 = _mm256_mul_ps(hi, hi);
    const __m256 t = _mm256_set1_ps(gain);
    __m256i idx[8];
    for (int i = 0; i < 8; ++i) {
        idx[i] = tq4_search(_mm256_mul_ps(z[i], t));
        _mm256_store_ps(csq + 8*i, tq_lookup16(lo2, hi2, idx[i], _mm256_slli_epi32(idx[i], 28)));
    }
    for (int g = 0; g < 4; ++g) {
        tq_pack8(_mm256_or_si256(idx[g], _mm256_slli_epi32(idx[g + 4], 4)), b->qs + 8*g);
    }
}

TQ_INLINE void tq3_index_block(const __m256 * z, float gain, void * blk, float * csq) {
    block_tq3_0 * b = blk;
    const __m256 cb = _mm256_loadu_ps(tq_centroids_3bit);
    const __m256 cb2 = _mm256_mul_ps(cb, cb);
    const __m256 g = _mm256_set1_ps(gain);
    const __m256i m3 = _mm256_set1_epi32(3), m1 = _mm256_set1_epi32(1);
    __m256i qa = _mm256_setzero_si256(), qb = _mm256_setzero_si256(), qh = _mm256_setzero_si256();
    for (int i = 0; i < 8; ++i) {
        const __m256i t = tq3_search(_mm256_mul_ps(z[i], g));
        _mm256_store_ps(csq + 8*i, _mm256_permutevar8x32_ps(cb2, t));
        const __m256i lo = _mm256_slli_epi32(_mm256_and_si256(t, m3), 2*(i/2));
        if (i % 2 == 0) {
            qa = _mm256_or_si256(qa, lo);
        } else {
            qb = _mm256_or_si256(qb, lo);
        }
        qh = _mm256_or_si256(qh, _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(t, 2), m1), i));
    }
    tq_pack8(qa, b->qs);
    tq_pack8(qb, b->qs + 8);
    tq_pack8(qh, b->qh);
}

TQ_INLINE void tqv2_index_block(const __m256 * z, float gain, void * blk, float * csq) {
    block_tqv2_0 * b = blk;
    const __m256 cb = tqv2_codebook();
    const __m256 cb2 = _mm256_mul_ps(cb, cb);
    const __m256 g = _mm256_set1_ps(gain);
    __m256i qa = _mm256_setzero_si256(), qb = _mm256_setzero_si256();
    for (int i = 0; i < 8; ++i) { // values 8i..8i+7: qs[8(i%2)..] bits 2(i/2)
        const __m256i t = tqv2_search(_mm256_mul_ps(z[i], g));
        _mm256_store_ps(csq + 8*i, _mm256_permutevar8x32_ps(cb2, t));
        if (i % 2 == 0) {
            qa = _mm256_or_si256(qa, _mm256_slli_epi32(t, 2*(i/2)));
        } else {
            qb = _mm256_or_si256(qb, _mm256_slli_epi32(t, 2*(i/2)));
        }
    }
    tq_pack8(qa, b->qs);
    tq_pack8(qb, b->qs + 8);
}

// tq6_0's lookups in 64 entries are gathers: eight permutes and a tree of seven blends took twice as long on the
// Intel core measured. Where Intel's GDS microcode mitigation is on (Skylake to Tiger Lake), gathers are slower.
TQ_INLINE __m256 tq6_lookup(const float * t, __m256i idx) { return _mm256_i32gather_ps(t, idx, 4); }

// (a & 15) | (b & 48): the gather needs an index without the bits above it
TQ_INLINE __m256i tq6_idx(__m256i a, __m256i b) {
    return _mm256_or_si256(_mm256_and_si256(a, _mm256_set1_epi32(15)), _mm256_and_si256(b, _mm256_set1_epi32(48)));
}

TQ_INLINE void tq6_decode(const void * blk, __m256 * c) {
    const block_tq6_0 * b = blk;
    const __m256i ha = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) b->qh));        // qh[0..7]
    const __m256i hb = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b->qh + 8)));   // qh[8..15]
    // values 8m..8m+7: bits 4 and 5 from qh[8(m%2)..] >> 2(m/2), moved up to bit 4
    const __m256i h[8] = {
        _mm256_slli_epi32(ha, 4), _mm256_slli_epi32(hb, 4), _mm256_slli_epi32(ha, 2), _mm256_slli_epi32(hb, 2),
        ha,                       hb,                       _mm256_srli_epi32(ha, 2), _mm256_srli_epi32(hb, 2),
    };
    for (int g = 0; g < 4; ++g) { // values 8g.. from the low nibbles of qs[8g..], values 32+8g.. from the high ones
        const __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b->qs + 8*g)));
        c[g]     = tq6_lookup(tq_centroids_6bit, tq6_idx(q,                       h[g]));
        c[g + 4] = tq6_lookup(tq_centroids_6bit, tq6_idx(_mm256_srli_epi32(q, 4), h[g + 4]));
    }
}

// B[o + s*j] for j < 8 (constant arguments: the compiler folds it to a constant)
TQ_INLINE __m256 tq6_bnd8(int s, int o) {
    const float * B = tq_boundaries_6bit;
    return _mm256_setr_ps(B[o], B[o + s], B[o + 2*s], B[o + 3*s], B[o + 4*s], B[o + 5*s], B[o + 6*s], B[o + 7*s]);
}

// Number of the 63 boundaries strictly below z, by counting: g = how many of B[7], B[15], .., B[55] are below z,
// then how many of B[8g], .., B[8g+6]; all below those count 8g, none above them is below z. A binary search
// would need 16- and 32-entry lookups (two and four permutes); here every lookup is one permute of B[8j + i].
TQ_INLINE __m256i tq6_search(__m256 z) {
    const float * B = tq_boundaries_6bit;
    __m256i g = _mm256_setzero_si256();
    for (int j = 0; j < 7; ++j) {
        g = _mm256_sub_epi32(g, _mm256_castps_si256(tq_lt(_mm256_set1_ps(B[8*j + 7]), z)));
    }
    __m256i r = _mm256_setzero_si256();
    for (int i = 0; i < 7; ++i) {
        r = _mm256_sub_epi32(r, _mm256_castps_si256(tq_lt(_mm256_permutevar8x32_ps(tq6_bnd8(8, i), g), z)));
    }
    return _mm256_add_epi32(_mm256_slli_epi32(g, 3), r);
}

TQ_INLINE __m256 tq6_code(__m256 w) { return tq6_lookup(tq_centroids_6bit, tq6_search(w)); }

TQ_INLINE void tq6_index_block(const __m256 * z, float gain, void * blk, float * csq) {
    block_tq6_0 * b = blk;
    const __m256 g = _mm256_set1_ps(gain);
    const __m256i m4 = _mm256_set1_epi32(15);
    __m256i idx[8], ha = _mm256_setzero_si256(), hb = _mm256_setzero_si256();
    for (int i = 0; i < 8; ++i) { // values 8i..8i+7: high bits to qh[8(i%2)..] bits 2(i/2)
        idx[i] = tq6_search(_mm256_mul_ps(z[i], g));
        const __m256 c = tq6_lookup(tq_centroids_6bit, idx[i]);
        _mm256_store_ps(csq + 8*i, _mm256_mul_ps(c, c));
        const __m256i h = _mm256_slli_epi32(_mm256_srli_epi32(idx[i], 4), 2*(i/2));
        if (i % 2 == 0) {
            ha = _mm256_or_si256(ha, h);
        } else {
            hb = _mm256_or_si256(hb, h);
        }
    }
    for (int i = 0; i < 4; ++i) { // tq_pack8 drops the bits of idx[i + 4] above the nibble
        tq_pack8(_mm256_or_si256(_mm256_and_si256(idx[i], m4), _mm256_slli_epi32(idx[i + 4], 4)), b->qs + 8*i);
    }
    tq_pack8(ha, b->qh);
    tq_pack8(hb, b->qh + 8);
}

#endif // __AVX512F__

// ---- quantize -----------------------------------------------------------------------------------

TQ_INLINE float tq_prep_block(const float * x, float * y, float * sq) {
    tq_vec v[TQ_NV];
    tq_vec m = tq_set1(0.0f);
    for (int i = 0; i < TQ_NV; ++i) {
        v[i] = tq_load(x + TQ_VL*i);
        m = tq_max_abs(m, v[i]);
    }
    const float amax = tq_hmax(m);
    if (amax < FLT_MIN) { // also subnormal blocks: 1/amax would overflow, and d would underflow to 0 anyway
        for (int i = 0; i < TQ_NV; ++i) {
            tq_store(sq + TQ_VL*i, tq_set1(0.0f));
        }
        return 0.0f;
    }
    const tq_vec inv = tq_set1(1.0f/amax);
    for (int i = 0; i < TQ_NV; ++i) {
        v[i] = tq_mul(tq_mul(v[i], inv), tq_sign(i));
    }
    tq_fwht64_x86(v);
    for (int i = 0; i < TQ_NV; ++i) {
        v[i] = tq_mul(v[i], tq_set1(0.125f));
        tq_store(y  + TQ_VL*i, v[i]);
        tq_store(sq + TQ_VL*i, tq_mul(v[i], v[i]));
    }
    return amax;
}

TQ_STATIC_ASSERT(TQ_SEARCH_N == 8, "the scores are computed in one register of 8 floats");

// the 64 values of v summed as tq_tree_sum64: register halves added, then tq_hsum's lane pairing
TQ_INLINE float tq_tree_sum(tq_vec * v) {
    for (int h = TQ_NV/2; h > 0; h >>= 1) {
        for (int i = 0; i < h; ++i) {
            v[i] = tq_add(v[i], v[i + h]);
        }
    }
    return tq_hsum(v[0]);
}

typedef tq_vec (*tq_code_fn)(tq_vec w);
typedef void (*tq_index_vec_fn)(const tq_vec * z, float gain, void * blk, float * csq);

// The scale search of tq-ref.c on the normalized coordinates z: the gain whose centroids score best
// (first of equal scores), then its indices into blk and their squares into csq.
TQ_INLINE void tq_search_block(const float * y, float inv_norm, void * blk, float * csq, tq_code_fn code, tq_index_vec_fn index) {
    tq_vec z[TQ_NV];
    for (int i = 0; i < TQ_NV; ++i) {
        z[i] = tq_mul(tq_load(y + TQ_VL*i), tq_set1(inv_norm));
    }
    _Alignas(32) float dot[TQ_SEARCH_N], cc[TQ_SEARCH_N], score[TQ_SEARCH_N];
    for (int g = 0; g < TQ_SEARCH_N; ++g) {
        const tq_vec t = tq_set1(tq_search_gains[g]);
        tq_vec p[TQ_NV], q[TQ_NV];
        for (int i = 0; i < TQ_NV; ++i) {
            const tq_vec c = code(tq_mul(z[i], t));
            p[i] = tq_mul(z[i], c);
            q[i] = tq_mul(c, c);
        }
        dot[g] = tq_tree_sum(p);
        cc[g]  = tq_tree_sum(q);
    }
    // all scores at once: IEEE division and square root, as the reference's
    _mm256_store_ps(score, _mm256_div_ps(_mm256_load_ps(dot), _mm256_sqrt_ps(_mm256_load_ps(cc))));
    index(z, tq_search_pick(score), blk, csq);
}

TQ_INLINE void tq4_search_block(const float * y, float inv_norm, void * blk, float * csq) { tq_search_block(y, inv_norm, blk, csq, tq4_code, tq4_index_block); }
TQ_INLINE void tq3_search_block(const float * y, float inv_norm, void * blk, float * csq) { tq_search_block(y, inv_norm, blk, csq, tq3_code, tq3_index_block); }
TQ_INLINE void tqv2_search_block(const float * y, float inv_norm, void * blk, float * csq) { tq_search_block(y, inv_norm, blk, csq, tqv2_code, tqv2_index_block); }
TQ_INLINE void tq6_search_block(const float * y, float inv_norm, void * blk, float * csq) { tq_search_block(y, inv_norm, blk, csq, tq6_code, tq6_index_block); }

void quantize_row_tq4_0(const float * x, block_tq4_0 * y, int64_t k) { tq_quantize_row(x, y, sizeof(*y), k, tq_prep_block, tq4_search_block); }
void quantize_row_tq3_0(const float * x, block_tq3_0 * y, int64_t k) { tq_quantize_row(x, y, sizeof(*y), k, tq_prep_block, tq3_search_block); }
void quantize_row_tqv2_0(const float * x, block_tqv2_0 * y, int64_t k) { tq_quantize_row(x, y, sizeof(*y), k, tq_prep_block, tqv2_search_block); }
void quantize_row_tq6_0(const float * x, block_tq6_0 * y, int64_t k) { tq_quantize_row(x, y, sizeof(*y), k, tq_prep_block, tq6_search_block); }

// ---- dequantize and the rotated-domain kernels ----------------------------------------------------
// Written once for all block types: decode (inlined) gives a block's centroids, unscaled.

typedef void (*tq_decode_fn)(const void * blk, tq_vec * c);

TQ_INLINE void tq_dequantize_row(const void * x, size_t block_size, tq_decode_fn decode, float * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib, y += QK_TQ) {
        const void * blk = (const char *) x + ib*block_size;
        tq_vec v[TQ_NV];
        decode(blk, v);
        tq_fwht64_x86(v);
        const tq_vec ds = tq_set1(tq_h2f(tq_block_d(blk))*0.125f);
        for (int i = 0; i < TQ_NV; ++i) {
            tq_store(y + TQ_VL*i, tq_mul(tq_mul(v[i], ds), tq_sign(i)));
        }
    }
}

TQ_INLINE float tq_dot_rotated(const void * x, size_t block_size, tq_decode_fn decode, const float * q, int64_t k) {
    assert(k % QK_TQ == 0);
    tq_vec acc = tq_set1(0.0f);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib, q += QK_TQ) {
        const void * blk = (const char *) x + ib*block_size;
        tq_vec c[TQ_NV];
        decode(blk, c);
        tq_vec s0 = tq_mul(tq_load(q), c[0]);
        tq_vec s1 = tq_mul(tq_load(q + TQ_VL), c[1]);
        for (int i = 2; i < TQ_NV; i += 2) {
            s0 = tq_fma(tq_load(q + TQ_VL*i),       c[i],     s0);
            s1 = tq_fma(tq_load(q + TQ_VL*(i + 1)), c[i + 1], s1);
        }
        acc = tq_fma(tq_add(s0, s1), tq_set1(tq_h2f(tq_block_d(blk))), acc);
    }
    return tq_hsum(acc);
}

TQ_INLINE void tq_mad_rotated(const void * x, size_t block_size, tq_decode_fn decode, float * acc, float w, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib, acc += QK_TQ) {
        const void * blk = (const char *) x + ib*block_size;
        tq_vec c[TQ_NV];
        decode(blk, c);
        const tq_vec wd = tq_set1(w*tq_h2f(tq_block_d(blk)));
        for (int i = 0; i < TQ_NV; ++i) {
            tq_store(acc + TQ_VL*i, tq_add(tq_load(acc + TQ_VL*i), tq_mul(wd, c[i])));
        }
    }
}

void dequantize_row_tq4_0(const block_tq4_0 * x, float * y, int64_t k) { tq_dequantize_row(x, sizeof(*x), tq4_decode, y, k); }
void dequantize_row_tq3_0(const block_tq3_0 * x, float * y, int64_t k) { tq_dequantize_row(x, sizeof(*x), tq3_decode, y, k); }
void dequantize_row_tqv2_0(const block_tqv2_0 * x, float * y, int64_t k) { tq_dequantize_row(x, sizeof(*x), tqv2_decode, y, k); }
void dequantize_row_tq6_0(const block_tq6_0 * x, float * y, int64_t k) { tq_dequantize_row(x, sizeof(*x), tq6_decode, y, k); }

float tq4_0_dot_rotated(const block_tq4_0 * x, const float * q_rot, int64_t k) { return tq_dot_rotated(x, sizeof(*x), tq4_decode, q_rot, k); }
float tq3_0_dot_rotated(const block_tq3_0 * x, const float * q_rot, int64_t k) { return tq_dot_rotated(x, sizeof(*x), tq3_decode, q_rot, k); }
float tqv2_0_dot_rotated(const block_tqv2_0 * x, const float * q_rot, int64_t k) { return tq_dot_rotated(x, sizeof(*x), tqv2_decode, q_rot, k); }
float tq6_0_dot_rotated(const block_tq6_0 * x, const float * q_rot, int64_t k) { return tq_dot_rotated(x, sizeof(*x), tq6_decode, q_rot, k); }

void tq4_0_mad_rotated(const block_tq4_0 * x, float * acc, float w, int64_t k) { tq_mad_rotated(x, sizeof(*x), tq4_decode, acc, w, k); }
void tq3_0_mad_rotated(const block_tq3_0 * x, float * acc, float w, int64_t k) { tq_mad_rotated(x, sizeof(*x), tq3_decode, acc, w, k); }
void tqv2_0_mad_rotated(const block_tqv2_0 * x, float * acc, float w, int64_t k) { tq_mad_rotated(x, sizeof(*x), tqv2_decode, acc, w, k); }
void tq6_0_mad_rotated(const block_tq6_0 * x, float * acc, float w, int64_t k) { tq_mad_rotated(x, sizeof(*x), tq6_decode, acc, w, k); }

// ---- rotation alone -----------------------------------------------------------------------------

void tq_rotate_row(const float * x, float * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {
        tq_vec v[TQ_NV];
        for (int i = 0; i < TQ_NV; ++i) {
            v[i] = tq_mul(tq_load(x + ib*QK_TQ + TQ_VL*i), tq_sign(i));
        }
        tq_fwht64_x86(v);
        for (int i = 0; i < TQ_NV; ++i) {
            tq_store(y + ib*QK_TQ + TQ_VL*i, tq_mul(v[i], tq_set1(0.125f)));
        }
    }
}

void tq_unrotate_row(const float * x, float * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {
        tq_vec v[TQ_NV];
        for (int i = 0; i < TQ_NV; ++i) {
            v[i] = tq_load(x + ib*QK_TQ + TQ_VL*i);
        }
        tq_fwht64_x86(v);
        for (int i = 0; i < TQ_NV; ++i) {
            tq_store(y + ib*QK_TQ + TQ_VL*i, tq_mul(tq_mul(v[i], tq_set1(0.125f)), tq_sign(i)));
        }
    }
}

#endif // TQ_CPU_X86
