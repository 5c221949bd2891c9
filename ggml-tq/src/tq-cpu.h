// Internal to the optimized CPU kernels: which architecture file provides them, and what the SIMD
// implementations share. arch/x86.c (AVX-512F, AVX2 + FMA), arch/arm.c (NEON, AArch64) or, when
// neither is compiled for, tq-cpu.c's scalar fallback defines the public functions of ggml-tq.h.
//
// Every optimized kernel agrees with its reference in tq-ref.c:
//   quantize, dequantize, rotate, unrotate, mad_rotated: bit for bit;
//   dot_rotated: up to float rounding (the reference sums its 64 products sequentially).
// All of ggml-tq is compiled without floating-point contraction (ggml-tq.cmake: -ffp-contract=off);
// the FMAs of the dot are explicit intrinsics, the mad keeps the reference's separate multiply and add.
//
// Why the bit-exact ones stay bit-exact:
//   - the Walsh-Hadamard butterflies are elementwise, so doing each stage across SIMD lanes computes
//     every a+b and a-b of the reference (a+b == b+a and a-b == a+(-b) exactly in IEEE arithmetic);
//   - x*(+-1) and x*0.125 are exact, and applied in the reference's order;
//   - the quantizer's two sums of squares (|y|^2 and |c|^2) are summed in the reference's order,
//     j = 0..63, from 0, each square rounded before it is added (tq_seq_sums below);
//   - the index of a coordinate is the number of boundaries strictly below it (ties go down): a
//     branch-free search over the ascending boundaries gives that same count;
//   - the scale search scores each gain with two tree sums (tq_tree_sum64): register halves added
//     vertically, then the lanes in the same pairing, one IEEE division and square root per gain;
//   - the scale goes through the reference's own tq_fp32_to_fp16.
// tests/c/test-tq-kernels.c checks all of this (and --bench times it).
#pragma once

#include "ggml-tq.h"

#include <assert.h>
#include <float.h>
#include <math.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#    define TQ_CPU_X86 1
#elif defined(__ARM_NEON) && defined(__aarch64__)
#    define TQ_CPU_ARM 1
#endif

#if defined(_MSC_VER)
#    define TQ_INLINE static __forceinline
#else
#    define TQ_INLINE static inline __attribute__((always_inline))
#endif

// the scale d, the first member of every TQ block
TQ_INLINE tq_half tq_block_d(const void * blk) {
    tq_half d;
    memcpy(&d, blk, sizeof(d));
    return d;
}

// ---- the scale search (tq-ref.c: tq_quantize_block) ----------------------------------------------

static const float tq_search_gains[TQ_SEARCH_N] = TQ_SEARCH_GAINS_INIT;

// The gain of the largest score, the first of equal ones. Branch-free: the winner depends on the
// data, and a branch on it mispredicts.
TQ_INLINE float tq_search_pick(const float * score) {
    float best = score[0], gain = tq_search_gains[0];
    for (int g = 1; g < TQ_SEARCH_N; ++g) {
        const int better = score[g] > best;
        best = better ? score[g] : best;
        gain = better ? tq_search_gains[g] : gain;
    }
    return gain;
}

// ---- the SIMD quantizer's driver ----------------------------------------------------------------

// out[b] = (((0 + v[b][0]) + v[b][1]) + ...) + v[b][63] for G rows of 64: the reference's order,
// G independent dependency chains interleaved (one chain bounds a lone block's latency).
TQ_INLINE void tq_seq_sum64(const float * restrict v, float * restrict out, const int G) {
    float s[8];
    for (int b = 0; b < G; ++b) {
        s[b] = 0.0f;
    }
    for (int j = 0; j < QK_TQ; ++j) {
        // unrolled, the chains live in registers; as a loop GCC keeps s[] on the stack and every
        // add waits on a store (4 blocks at once quantized 1.75x slower, and by code alignment)
#pragma GCC unroll 8
        for (int b = 0; b < G; ++b) {
            s[b] += v[b*QK_TQ + j];
        }
    }
    for (int b = 0; b < G; ++b) {
        out[b] = s[b];
    }
}

// n <= 8 rows of v (room for 8): pads to 1, 2, 4 or 8 chains with zero rows
static inline void tq_seq_sums(float * v, float * out, int n) {
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

// One block's rotation: returns amax; when amax >= FLT_MIN writes y = H D (x/amax) / 8 and sq = y*y,
// else sq = 0 (y 64-byte aligned).
typedef float (*tq_prep_fn)(const float * x, float * y, float * sq);
// One block's indices from its rotated coordinates y (times inv_norm, then the scale search), and csq[j] = c[idx_j]^2.
typedef void (*tq_index_fn)(const float * y, float inv_norm, void * blk, float * csq);

#define TQ_QGROUP 8 // blocks rotated and summed together

// quantize_row_tq*_0 of an architecture: its prep and index inlined here (constant arguments),
// the sums of squares of up to TQ_QGROUP blocks interleaved.
TQ_INLINE void tq_quantize_row(const float * x, void * y, size_t block_size, int64_t k, tq_prep_fn prep, tq_index_fn index) {
    assert(k % QK_TQ == 0);
    const int64_t nb = k/QK_TQ;
    _Alignas(64) float yb[TQ_QGROUP*QK_TQ];
    _Alignas(64) float sq[TQ_QGROUP*QK_TQ];
    float amax[TQ_QGROUP], norm[TQ_QGROUP], ss[TQ_QGROUP];
    for (int64_t ib0 = 0; ib0 < nb; ib0 += TQ_QGROUP) {
        const int n = nb - ib0 < TQ_QGROUP ? (int)(nb - ib0) : TQ_QGROUP;
        char * blk0 = (char *) y + ib0*block_size;
        for (int b = 0; b < n; ++b) {
            amax[b] = prep(x + (ib0 + b)*QK_TQ, yb + b*QK_TQ, sq + b*QK_TQ);
        }
        tq_seq_sums(sq, ss, n);
        for (int b = 0; b < n; ++b) {
            if (amax[b] == 0.0f) { // its sq row is already 0
                memset(blk0 + b*block_size, 0, block_size);
                continue;
            }
            norm[b] = sqrtf(ss[b]);
            index(yb + b*QK_TQ, 1.0f/norm[b], blk0 + b*block_size, sq + b*QK_TQ);
        }
        tq_seq_sums(sq, ss, n);
        for (int b = 0; b < n; ++b) {
            if (amax[b] != 0.0f) {
                const tq_half d = tq_fp32_to_fp16(amax[b]*(norm[b]/sqrtf(ss[b])));
                memcpy(blk0 + b*block_size, &d, sizeof(d));
            }
        }
    }
}
