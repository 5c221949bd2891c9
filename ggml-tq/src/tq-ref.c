// Scalar reference of the TQ formats: obvious code, the definition the optimized kernels,
// the torch reference (python/ggml_tq/reference.py) and the CUDA kernels are checked against.
#include "ggml-tq.h"
#include "tq-codebook.h"

#include <assert.h>
#include <float.h>
#include <math.h>
#include <string.h>

// ---- fp16 ---------------------------------------------------------------------------------------

float tq_fp16_to_fp32(tq_half h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exp  = (h >> 10) & 0x1f;
    const uint32_t man  = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { // subnormal: value = man * 2^-24, exact in float
            float f = (float) man * 5.9604644775390625e-8f;
            memcpy(&bits, &f, 4);
            bits |= sign;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

tq_half tq_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) {
        return (tq_half)(sign | 0x7e00); // NaN stays NaN
    }
    if (ax >= 0x477ff000u) { // >= 65520 rounds to inf in IEEE: saturate instead, a scale must stay finite
        return (tq_half)(sign | 0x7bff);
    }
    if (ax < 0x38800000u) { // below the smallest normal half: subnormal or zero, round to nearest even
        if (ax < 0x33000000u) {
            return (tq_half) sign; // below half of the smallest subnormal
        }
        const uint32_t e     = ax >> 23;
        const uint32_t m     = (ax & 0x7fffff) | 0x800000;
        const uint32_t shift = 126 - e;          // 14 + (113 - e) - 1 + 1
        uint32_t       h     = m >> shift;
        const uint32_t rem   = m & ((1u << shift) - 1);
        const uint32_t half  = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) {
            h++;
        }
        return (tq_half)(sign | h);
    }
    // normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even
    uint32_t h = ((ax - 0x38000000u) >> 13);
    const uint32_t rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) {
        h++;
    }
    return (tq_half)(sign | h);
}

const float * tq_codebook(int bits) {
    switch (bits) {
        case 2: return tq_centroids_2bit;
        case 3: return tq_centroids_3bit;
        case 4: return tq_centroids_4bit;
        case 6: return tq_centroids_6bit;
        default: return NULL;
    }
}

// the 2^bits - 1 decision boundaries of tq_codebook(bits), ascending
static const float * tq_boundaries(int bits) {
    switch (bits) {
        case 2: return tq_boundaries_2bit;
        case 3: return tq_boundaries_3bit;
        case 4: return tq_boundaries_4bit;
        case 6: return tq_boundaries_6bit;
        default: return NULL;
    }
}

// ---- rotation -----------------------------------------------------------------------------------

// In-place 64-point Walsh-Hadamard transform, unnormalized. The butterfly order is part of the
// format's definition: the torch reference and the SIMD kernels use the same stages, so that
// dequantized values agree bit for bit.
static void tq_fwht64(float * v) {
    for (int h = 1; h < QK_TQ; h <<= 1) {
        for (int i = 0; i < QK_TQ; i += 2*h) {
            for (int j = i; j < i + h; ++j) {
                const float a = v[j];
                const float b = v[j + h];
                v[j]     = a + b;
                v[j + h] = a - b;
            }
        }
    }
}

void tq_rotate_row_ref(const float * x, float * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {
        float v[QK_TQ];
        for (int j = 0; j < QK_TQ; ++j) {
            v[j] = x[ib*QK_TQ + j]*tq_signs[j];
        }
        tq_fwht64(v);
        for (int j = 0; j < QK_TQ; ++j) {
            y[ib*QK_TQ + j] = v[j]*0.125f;
        }
    }
}

void tq_unrotate_row_ref(const float * x, float * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {
        float v[QK_TQ];
        memcpy(v, x + ib*QK_TQ, sizeof(v));
        tq_fwht64(v);
        for (int j = 0; j < QK_TQ; ++j) {
            y[ib*QK_TQ + j] = v[j]*0.125f*tq_signs[j];
        }
    }
}

// ---- quantize -----------------------------------------------------------------------------------

static const float tq_search_gains[TQ_SEARCH_N] = TQ_SEARCH_GAINS_INIT;

// v[0] + .. + v[63] in a fixed pairing: halves added until one value is left (v is overwritten).
// The order of SIMD and CUDA reductions, so every implementation scores the gains alike to the bit.
static float tq_tree_sum64(float * v) {
    for (int h = QK_TQ/2; h > 0; h >>= 1) {
        for (int j = 0; j < h; ++j) {
            v[j] = v[j] + v[j + h];
        }
    }
    return v[0];
}

// The number of the 2^bits - 1 sorted boundaries below w (ties go to the lower centroid; NaN counts none): the
// index a scan from the first boundary finds, in `bits` steps without a branch (the compare's mask picks the step;
// written as a select, gcc -O3 made it a branch, 2.5x slower on random data). tq6_0's quantizer spent most of its
// time scanning 63 boundaries.
static int tq_bucket(const float * boundaries, int bits, float w) {
    int i = 0;
    for (int step = 1 << (bits - 1); step > 0; step >>= 1) {
        i += step & -(int)(boundaries[i + step - 1] < w);
    }
    return i;
}

// Rotates and normalizes one block and picks each coordinate's centroid index.
// Returns the scale d to store (0 for an all-zero block, whose indices are then all 0).
static float tq_quantize_block(const float * x, int bits, uint8_t * idx) {
    const float * boundaries = tq_boundaries(bits);
    const float * centroids  = tq_codebook(bits);

    float amax = 0.0f;
    for (int j = 0; j < QK_TQ; ++j) {
        amax = fmaxf(amax, fabsf(x[j]));
    }
    if (amax < FLT_MIN) { // also subnormal blocks: 1/amax would overflow, and d would underflow to 0 anyway
        memset(idx, 0, QK_TQ);
        return 0.0f;
    }

    // divide by the largest magnitude first: the sum of squares can then neither overflow nor underflow
    const float inv_amax = 1.0f/amax;
    float y[QK_TQ];
    for (int j = 0; j < QK_TQ; ++j) {
        y[j] = x[j]*inv_amax*tq_signs[j];
    }
    tq_fwht64(y);

    float sumsq = 0.0f;
    for (int j = 0; j < QK_TQ; ++j) {
        y[j] *= 0.125f;
        sumsq += y[j]*y[j];
    }
    const float norm     = sqrtf(sumsq);
    const float inv_norm = 1.0f/norm;

    float z[QK_TQ];
    for (int j = 0; j < QK_TQ; ++j) {
        z[j] = y[j]*inv_norm;
    }

    // Scale search: the indices of z*gain for each gain; keep those whose centroid vector c is closest
    // in angle to z (largest z.c/|c|), the first of equal scores. The nearest centroid of each
    // coordinate alone (gain 1) is not the best direction for the whole block (docs/design.md).
    float best = 0.0f;
    for (int g = 0; g < TQ_SEARCH_N; ++g) {
        uint8_t gidx[QK_TQ];
        float   p[QK_TQ], q[QK_TQ];
        for (int j = 0; j < QK_TQ; ++j) {
            const int i = tq_bucket(boundaries, bits, z[j]*tq_search_gains[g]);
            gidx[j] = (uint8_t) i;
            p[j] = z[j]*centroids[i];
            q[j] = centroids[i]*centroids[i];
        }
        const float score = tq_tree_sum64(p)/sqrtf(tq_tree_sum64(q));
        if (g == 0 || score > best) {
            best = score;
            memcpy(idx, gidx, QK_TQ);
        }
    }

    float csumsq = 0.0f;
    for (int j = 0; j < QK_TQ; ++j) {
        csumsq += centroids[idx[j]]*centroids[idx[j]];
    }
    return amax*(norm/sqrtf(csumsq));
}

// The two index fields the layouts share (ggml-tq.h): 4 bits of index j in the low nibble of qs[j], of j + 32 in the
// high one (tq4_0, tq6_0's low bits); 2 bits of index j + 16k in bits 2k..2k+1 of q[j], j < 16 (tq3_0's low bits,
// tqv2_0, tq6_0's high bits). The pack takes idx >> shift; the reads return the field.
static void tq_pack_nibbles(const uint8_t * idx, uint8_t * qs) {
    for (int j = 0; j < QK_TQ/2; ++j) {
        qs[j] = (uint8_t)((idx[j] & 0xf) | ((idx[j + QK_TQ/2] & 0xf) << 4));
    }
}

static void tq_pack_pairs(const uint8_t * idx, int shift, uint8_t * q) {
    memset(q, 0, QK_TQ/4);
    for (int j = 0; j < QK_TQ; ++j) {
        q[j % 16] |= (uint8_t)(((idx[j] >> shift) & 3) << (2*(j/16)));
    }
}

static int tq_nibble(const uint8_t * qs, int j) {
    return j < QK_TQ/2 ? (qs[j] & 0xf) : (qs[j - QK_TQ/2] >> 4);
}

static int tq_pair(const uint8_t * q, int j) {
    return (q[j % 16] >> (2*(j/16))) & 3;
}

void quantize_row_tq4_0_ref(const float * x, block_tq4_0 * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {
        uint8_t idx[QK_TQ];
        y[ib].d = tq_fp32_to_fp16(tq_quantize_block(x + ib*QK_TQ, 4, idx));
        tq_pack_nibbles(idx, y[ib].qs);
    }
}

void quantize_row_tq3_0_ref(const float * x, block_tq3_0 * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {
        uint8_t idx[QK_TQ];
        y[ib].d = tq_fp32_to_fp16(tq_quantize_block(x + ib*QK_TQ, 3, idx));
        tq_pack_pairs(idx, 0, y[ib].qs);
        memset(y[ib].qh, 0, sizeof(y[ib].qh));
        for (int j = 0; j < QK_TQ; ++j) {
            y[ib].qh[j % 8] |= (uint8_t)((idx[j] >> 2) << (j/8));
        }
    }
}

void quantize_row_tqv2_0_ref(const float * x, block_tqv2_0 * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {
        uint8_t idx[QK_TQ];
        y[ib].d = tq_fp32_to_fp16(tq_quantize_block(x + ib*QK_TQ, 2, idx));
        tq_pack_pairs(idx, 0, y[ib].qs);
    }
}

void quantize_row_tq6_0_ref(const float * x, block_tq6_0 * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib) {
        uint8_t idx[QK_TQ];
        y[ib].d = tq_fp32_to_fp16(tq_quantize_block(x + ib*QK_TQ, 6, idx));
        tq_pack_nibbles(idx, y[ib].qs);
        tq_pack_pairs(idx, 4, y[ib].qh);
    }
}

static size_t tq_block_size(int bits) {
    return bits == 6 ? sizeof(block_tq6_0) : bits == 4 ? sizeof(block_tq4_0) : bits == 3 ? sizeof(block_tq3_0) : sizeof(block_tqv2_0);
}

// ggml's quantize_chunk: rows of quantize_row_tq*_0_ref
static size_t tq_quantize_rows(const float * src, void * dst, int64_t nrows, int64_t n_per_row, int bits) {
    const size_t row_size = (size_t)(n_per_row/QK_TQ)*tq_block_size(bits);
    for (int64_t r = 0; r < nrows; ++r) {
        void * row = (char *) dst + r*row_size;
        switch (bits) {
            case 4:  quantize_row_tq4_0_ref(src + r*n_per_row, row, n_per_row); break;
            case 3:  quantize_row_tq3_0_ref(src + r*n_per_row, row, n_per_row); break;
            case 6:  quantize_row_tq6_0_ref(src + r*n_per_row, row, n_per_row); break;
            default: quantize_row_tqv2_0_ref(src + r*n_per_row, row, n_per_row); break;
        }
    }
    return nrows*row_size;
}

size_t quantize_tq4_0(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    (void) imatrix;
    return tq_quantize_rows(src, dst, nrows, n_per_row, 4);
}

size_t quantize_tq3_0(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    (void) imatrix;
    return tq_quantize_rows(src, dst, nrows, n_per_row, 3);
}

size_t quantize_tqv2_0(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    (void) imatrix;
    return tq_quantize_rows(src, dst, nrows, n_per_row, 2);
}

size_t quantize_tq6_0(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    (void) imatrix;
    return tq_quantize_rows(src, dst, nrows, n_per_row, 6);
}

// ---- dequantize and rotated-domain kernels ------------------------------------------------------

// A block of any TQ type as the kernels below need it: its scale and its 64 centroids, unscaled.
typedef struct {
    float d;
    float c[QK_TQ];
} tq_block_values;

static void tq_block_values_of(const void * blk, int bits, tq_block_values * v) {
    if (bits == 4) {
        const block_tq4_0 * b = blk;
        v->d = tq_fp16_to_fp32(b->d);
        for (int j = 0; j < QK_TQ; ++j) {
            v->c[j] = tq_centroids_4bit[tq_nibble(b->qs, j)];
        }
    } else if (bits == 3) {
        const block_tq3_0 * b = blk;
        v->d = tq_fp16_to_fp32(b->d);
        for (int j = 0; j < QK_TQ; ++j) {
            v->c[j] = tq_centroids_3bit[tq_pair(b->qs, j) | (((b->qh[j % 8] >> (j/8)) & 1) << 2)];
        }
    } else if (bits == 6) {
        const block_tq6_0 * b = blk;
        v->d = tq_fp16_to_fp32(b->d);
        for (int j = 0; j < QK_TQ; ++j) {
            v->c[j] = tq_centroids_6bit[tq_nibble(b->qs, j) | (tq_pair(b->qh, j) << 4)];
        }
    } else {
        const block_tqv2_0 * b = blk;
        v->d = tq_fp16_to_fp32(b->d);
        for (int j = 0; j < QK_TQ; ++j) {
            v->c[j] = tq_centroids_2bit[tq_pair(b->qs, j)];
        }
    }
}

// x' = D H (d c) / 8, block by block
static void tq_dequantize_row_ref(const void * x, int bits, float * y, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib, y += QK_TQ) {
        tq_block_values v;
        tq_block_values_of((const char *) x + ib*tq_block_size(bits), bits, &v);
        tq_fwht64(v.c);
        const float ds = v.d*0.125f;
        for (int j = 0; j < QK_TQ; ++j) {
            y[j] = v.c[j]*ds*tq_signs[j];
        }
    }
}

// sum over blocks of d * (q_rot . c), each block's products summed in order
static float tq_dot_rotated_ref(const void * x, int bits, const float * q_rot, int64_t k) {
    assert(k % QK_TQ == 0);
    float sum = 0.0f;
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib, q_rot += QK_TQ) {
        tq_block_values v;
        tq_block_values_of((const char *) x + ib*tq_block_size(bits), bits, &v);
        float s = 0.0f;
        for (int j = 0; j < QK_TQ; ++j) {
            s += q_rot[j]*v.c[j];
        }
        sum += s*v.d;
    }
    return sum;
}

// acc += (w d) c, block by block
static void tq_mad_rotated_ref(const void * x, int bits, float * acc, float w, int64_t k) {
    assert(k % QK_TQ == 0);
    for (int64_t ib = 0; ib < k/QK_TQ; ++ib, acc += QK_TQ) {
        tq_block_values v;
        tq_block_values_of((const char *) x + ib*tq_block_size(bits), bits, &v);
        const float wd = w*v.d;
        for (int j = 0; j < QK_TQ; ++j) {
            acc[j] += wd*v.c[j];
        }
    }
}

void dequantize_row_tq4_0_ref(const block_tq4_0 * x, float * y, int64_t k) { tq_dequantize_row_ref(x, 4, y, k); }
void dequantize_row_tq3_0_ref(const block_tq3_0 * x, float * y, int64_t k) { tq_dequantize_row_ref(x, 3, y, k); }

float tq4_0_dot_rotated_ref(const block_tq4_0 * x, const float * q_rot, int64_t k) { return tq_dot_rotated_ref(x, 4, q_rot, k); }
float tq3_0_dot_rotated_ref(const block_tq3_0 * x, const float * q_rot, int64_t k) { return tq_dot_rotated_ref(x, 3, q_rot, k); }

void tq4_0_mad_rotated_ref(const block_tq4_0 * x, float * acc, float w, int64_t k) { tq_mad_rotated_ref(x, 4, acc, w, k); }
void tq3_0_mad_rotated_ref(const block_tq3_0 * x, float * acc, float w, int64_t k) { tq_mad_rotated_ref(x, 3, acc, w, k); }

void dequantize_row_tqv2_0_ref(const block_tqv2_0 * x, float * y, int64_t k) { tq_dequantize_row_ref(x, 2, y, k); }
float tqv2_0_dot_rotated_ref(const block_tqv2_0 * x, const float * q_rot, int64_t k) { return tq_dot_rotated_ref(x, 2, q_rot, k); }
void  tqv2_0_mad_rotated_ref(const block_tqv2_0 * x, float * acc, float w, int64_t k) { tq_mad_rotated_ref(x, 2, acc, w, k); }

void dequantize_row_tq6_0_ref(const block_tq6_0 * x, float * y, int64_t k) { tq_dequantize_row_ref(x, 6, y, k); }
float tq6_0_dot_rotated_ref(const block_tq6_0 * x, const float * q_rot, int64_t k) { return tq_dot_rotated_ref(x, 6, q_rot, k); }
void  tq6_0_mad_rotated_ref(const block_tq6_0 * x, float * acc, float w, int64_t k) { tq_mad_rotated_ref(x, 6, acc, w, k); }
