// ggml-tq CUDA device helpers, as ggml-cuda's common.cuh is for its kernels: the codebook tables, the 64-point
// Walsh-Hadamard transform of a block held by a warp, and the quantization and dequantization of one block.
// Included by tq-cuda.cu (cache writes, reads, conversions), tq-rope.cuh and the flash-attention kernels.
//
// Layout of a block in a warp: lane l holds elements l ("lo") and l + 32 ("hi") of a 64-value block.
// The 64-point Walsh-Hadamard transform then runs its stages h = 1..16 across lanes (__shfl_xor_sync(h))
// and stage 32 inside the lane, in the reference's order (tq-ref.c, tq_fwht64), so that every rounding
// is the reference's: quantized bytes and dequantized values are bit-identical to the CPU.
//
// Exactness under ggml-cuda's -use_fast_math: every product, sum, quotient and square root that feeds a
// quantized byte or a dequantized value is an explicit _rn intrinsic (never contracted to an FMA, never
// approximated). Flush-to-zero is the one thing an intrinsic does not control: tq-cuda.cu is compiled with
// -ftz=false; a kernel compiled with fast math that includes this header differs from the CPU only for
// values below 2^-126 (subnormal floats), which no real K/V block holds.
//
// Every warp-level helper must be called by all 32 lanes of the warp (full-mask shuffles).
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <float.h>
#include <stdint.h>

#include <type_traits>

#include "ggml-tq.h"
#include "tq-codebook.h"

#define TQ_CUDA_FULL_MASK 0xffffffffu

// ---- tables -------------------------------------------------------------------------------------
// Device copies of tq-codebook.h, statically initialized from it (one copy per translation unit: static).
// Index them with warp-uniform indices (constant cache broadcast); for per-lane indices use the
// shuffle lookup below or a shared-memory copy.
#define TQ_CUDA_I4(a, i)  a[i], a[i + 1], a[i + 2], a[i + 3]
#define TQ_CUDA_I8(a, i)  TQ_CUDA_I4(a, i), TQ_CUDA_I4(a, i + 4)
#define TQ_CUDA_I32(a, i) TQ_CUDA_I8(a, i), TQ_CUDA_I8(a, i + 8), TQ_CUDA_I8(a, i + 16), TQ_CUDA_I8(a, i + 24)
static __constant__ float tq_cuda_centroids_6bit[64]  = { TQ_CUDA_I32(tq_centroids_6bit, 0), TQ_CUDA_I32(tq_centroids_6bit, 32) };
static __constant__ float tq_cuda_centroids_4bit[16]  = { TQ_CUDA_I8(tq_centroids_4bit, 0), TQ_CUDA_I8(tq_centroids_4bit, 8) };
static __constant__ float tq_cuda_centroids_3bit[8]   = { TQ_CUDA_I8(tq_centroids_3bit, 0) };
static __constant__ float tq_cuda_centroids_2bit[4]   = { TQ_CUDA_I4(tq_centroids_2bit, 0) };
#undef TQ_CUDA_I4
#undef TQ_CUDA_I8
#undef TQ_CUDA_I32

// bits -> block type and codebook
template <int bits> struct tq_cuda_type;
template <> struct tq_cuda_type<6> {
    typedef block_tq6_0 block;
    static __device__ __forceinline__ float centroid (int i) { return tq_cuda_centroids_6bit[i]; }
};
template <> struct tq_cuda_type<4> {
    typedef block_tq4_0 block;
    static __device__ __forceinline__ float centroid (int i) { return tq_cuda_centroids_4bit[i]; }
};
template <> struct tq_cuda_type<3> {
    typedef block_tq3_0 block;
    static __device__ __forceinline__ float centroid (int i) { return tq_cuda_centroids_3bit[i]; }
};
template <> struct tq_cuda_type<2> {
    typedef block_tqv2_0 block;
    static __device__ __forceinline__ float centroid (int i) { return tq_cuda_centroids_2bit[i]; }
};

// ---- scalar helpers -----------------------------------------------------------------------------

// Flips the sign of v where the rotation's sign of element j (0..63) is -1: v*tq_signs[j], exactly.
static __device__ __forceinline__ float tq_cuda_apply_sign(float v, int j) {
    const uint32_t flip = (uint32_t)(TQ_SIGN_MASK >> j) & 1u;
    return __uint_as_float(__float_as_uint(v) ^ (flip << 31));
}

// tq_fp16_to_fp32 / tq_fp32_to_fp16 of tq-ref.c (the scale: round to nearest even, saturating at 65504)
static __device__ __forceinline__ float tq_cuda_fp16_to_fp32(tq_half h) {
    return __half2float(__ushort_as_half(h)); // exact, subnormal halves included
}

static __device__ __forceinline__ tq_half tq_cuda_fp32_to_fp16(float f) {
    const uint32_t x    = __float_as_uint(f);
    const uint32_t sign = (x >> 16) & 0x8000;
    const uint32_t ax   = x & 0x7fffffffu;
    if (ax > 0x7f800000u) {
        return (tq_half)(sign | 0x7e00);
    }
    if (ax >= 0x477ff000u) {
        return (tq_half)(sign | 0x7bff);
    }
    if (ax < 0x38800000u) {
        if (ax < 0x33000000u) {
            return (tq_half) sign;
        }
        const uint32_t e     = ax >> 23;
        const uint32_t m     = (ax & 0x7fffff) | 0x800000;
        const uint32_t shift = 126 - e;
        uint32_t       h     = m >> shift;
        const uint32_t rem   = m & ((1u << shift) - 1);
        const uint32_t half  = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) {
            h++;
        }
        return (tq_half)(sign | h);
    }
    uint32_t       h   = (ax - 0x38000000u) >> 13;
    const uint32_t rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) {
        h++;
    }
    return (tq_half)(sign | h);
}

// Index of element j (0..63) of a block, for any thread layout (tq_block_values_of of tq-ref.c).
// A block starts at a 2-byte boundary only (34, 26, 18 and 50 bytes): load qs/qh bytewise or as 16-bit words.
static __device__ __forceinline__ int tq4_0_cuda_index(const block_tq4_0 * b, int j) {
    return j < QK_TQ/2 ? (b->qs[j] & 0xf) : (b->qs[j - QK_TQ/2] >> 4);
}
static __device__ __forceinline__ int tq3_0_cuda_index(const block_tq3_0 * b, int j) {
    return ((b->qs[j % 16] >> (2*(j/16))) & 3) | (((b->qh[j % 8] >> (j/8)) & 1) << 2);
}
static __device__ __forceinline__ int tqv2_0_cuda_index(const block_tqv2_0 * b, int j) {
    return (b->qs[j % 16] >> (2*(j/16))) & 3;
}
static __device__ __forceinline__ int tq6_0_cuda_index(const block_tq6_0 * b, int j) {
    const int lo = j < QK_TQ/2 ? (b->qs[j] & 0xf) : (b->qs[j - QK_TQ/2] >> 4);
    return lo | (((b->qh[j % 16] >> (2*(j/16))) & 3) << 4);
}

// Decision boundary k of the codebook, a compile-time constant (tq-codebook.h): symmetric about an exact 0.
template <int bits>
static constexpr __host__ __device__ float tq_cuda_boundary(int k) {
    constexpr float b4[15] = TQ_BOUNDARIES_4BIT_INIT;
    constexpr float b3[7]  = TQ_BOUNDARIES_3BIT_INIT;
    constexpr float b2[3]  = TQ_BOUNDARIES_2BIT_INIT;
    constexpr float b6[63] = TQ_BOUNDARIES_6BIT_INIT;
    return bits == 6 ? b6[k] : bits == 4 ? b4[k] : bits == 3 ? b3[k] : b2[k];
}
template <int bits>
static constexpr __host__ __device__ bool tq_cuda_boundaries_symmetric() {
    constexpr int n = (1 << bits) - 1;
    for (int k = 0; k < n; ++k) {
        if (tq_cuda_boundary<bits>(k) != -tq_cuda_boundary<bits>(n - 1 - k) ||
            (k > n/2 && !(tq_cuda_boundary<bits>(k) > tq_cuda_boundary<bits>(k - 1)))) {
            return false;
        }
    }
    return tq_cuda_boundary<bits>(n/2) == 0.0f;
}

// The centroid index of a rotated, normalized coordinate z: the number of boundaries strictly below z, ties to
// the lower centroid, NaN to 0. The scale search counts 16 per lane, so this counts in integers against the
// 2^(bits-1) - 1 positive boundaries a_k alone (the others are -a_k and 0), without predicates:
//   z > 0 (+inf included):  index = half + 1 + #{a_k <  z}
//   otherwise (0, -0, NaN): index = half     - #{a_k <= |z|}
// #{a_k <= |z|} is #{a_k < |z| + 1 ulp}, NaN's magnitude plus one is above every a_k (index 0), and a_k < m for
// floats >= 0 is their bit patterns' order: the sign bit of bits(a_k) - m, with no overflow for m <= 2^31.
// Exact for every input, subnormals too, whatever the flush-to-zero mode of the including file.
// The count is linear in the boundaries: 31 of them for the 6-bit codebook, against 7 for 4 bits.
template <int bits>
static __device__ __forceinline__ int tq_cuda_nearest_index(float z) {
    static_assert(tq_cuda_boundaries_symmetric<bits>(), "the index count needs boundaries symmetric about 0");
    constexpr int half = (1 << (bits - 1)) - 1;
    const uint32_t zb    = __float_as_uint(z);
    const bool     upper = zb - 1u < 0x7f800000u; // z > 0, as bits: +0 wraps, NaN and negatives are above
    const uint32_t m     = (zb & 0x7fffffffu) + (upper ? 0u : 1u);
    int n = 0;
#pragma unroll
    for (int k = 0; k < half; ++k) {
        n += (__float_as_uint(tq_cuda_boundary<bits>(half + 1 + k)) - m) >> 31;
    }
    return upper ? half + 1 + n : half - n;
}

// ---- warp helpers: lane l holds elements l (lo) and l + 32 (hi) -----------------------------------

// Whether centroid 2^bits - 1 - i is exactly -centroid i, for every i: the 6-bit lookup below relies on it.
template <int bits>
static constexpr __host__ __device__ bool tq_cuda_centroids_symmetric() {
    constexpr float c6[64] = TQ_CENTROIDS_6BIT_INIT;
    constexpr float c4[16] = TQ_CENTROIDS_4BIT_INIT;
    constexpr float c3[8]  = TQ_CENTROIDS_3BIT_INIT;
    constexpr float c2[4]  = TQ_CENTROIDS_2BIT_INIT;
    constexpr int n = 1 << bits;
    for (int i = 0; i < n; ++i) {
        const float a = bits == 6 ? c6[i] : bits == 4 ? c4[i] : bits == 3 ? c3[i] : c2[i];
        const float b = bits == 6 ? c6[n - 1 - i] : bits == 4 ? c4[n - 1 - i] : bits == 3 ? c3[n - 1 - i] : c2[n - 1 - i];
        if (a != -b) {
            return false;
        }
    }
    return true;
}

// Codebook lookup by shuffle: every lane keeps centroid (lane mod 2^bits) in a register,
// loaded once per thread with tq_cuda_codebook_lane; tq_cuda_codebook_lookup<bits> then reads any index.
// A warp has 32 lanes, the 6-bit codebook 64 entries: lane l keeps centroid l, the negative half, and the
// positive half is its mirror, c[32 + m] = -c[31 - m] (the codebook is symmetric about 0, exactly). So an index
// with bit 5 set reads lane 31 - m = m ^ 31 and flips the sign: one shuffle per index as for the other types, and
// the exact float, plus 4 integer instructions (bit 5 spread to a mask, the lane's xor, the sign's xor).
template <int bits>
static __device__ __forceinline__ float tq_cuda_codebook_lane(int lane) {
    return tq_cuda_type<bits>::centroid(lane & ((1 << bits) - 1)); // lane < 32: the 6-bit codebook's lower half
}
template <int bits>
static __device__ __forceinline__ float tq_cuda_codebook_lookup(float codebook_lane, int idx) {
    if constexpr (bits <= 5) {
        return __shfl_sync(TQ_CUDA_FULL_MASK, codebook_lane, idx);
    } else {
        static_assert(bits == 6 && tq_cuda_centroids_symmetric<6>(), "64 centroids as 32 lanes and their mirror");
        const uint32_t upper = (uint32_t) ((int32_t) ((uint32_t) idx << 26) >> 31); // all ones where bit 5 is set
        const float    c     = __shfl_sync(TQ_CUDA_FULL_MASK, codebook_lane, idx ^ (int) upper); // reads the low 5 bits
        return __uint_as_float(__float_as_uint(c) ^ (upper & 0x80000000u));
    }
}

// In-place 64-point Walsh-Hadamard transform, unnormalized, the reference's stages and roundings.
static __device__ __forceinline__ void tq_cuda_fwht64_warp(float & lo, float & hi, int lane) {
#pragma unroll
    for (int h = 1; h < 32; h <<= 1) {
        const float plo = __shfl_xor_sync(TQ_CUDA_FULL_MASK, lo, h);
        const float phi = __shfl_xor_sync(TQ_CUDA_FULL_MASK, hi, h);
        // lower element of a pair: a + b; upper: a - b = partner + (-mine), the same rounding
        const uint32_t neg = (lane & h) ? 0x80000000u : 0u;
        lo = __fadd_rn(plo, __uint_as_float(__float_as_uint(lo) ^ neg));
        hi = __fadd_rn(phi, __uint_as_float(__float_as_uint(hi) ^ neg));
    }
    const float a = lo;
    lo = __fadd_rn(a, hi);
    hi = __fsub_rn(a, hi);
}

// y = H D x / 8 (tq_rotate_row_ref for one block): a query rotated into the blocks' domain
static __device__ __forceinline__ void tq_cuda_rotate_warp(float & lo, float & hi, int lane) {
    lo = tq_cuda_apply_sign(lo, lane);
    hi = tq_cuda_apply_sign(hi, lane + 32);
    tq_cuda_fwht64_warp(lo, hi, lane);
    lo = __fmul_rn(lo, 0.125f);
    hi = __fmul_rn(hi, 0.125f);
}

// x = D H y / 8 (tq_unrotate_row for one block): a rotated-domain V sum back to the model's domain
static __device__ __forceinline__ void tq_cuda_unrotate_warp(float & lo, float & hi, int lane) {
    tq_cuda_fwht64_warp(lo, hi, lane);
    lo = tq_cuda_apply_sign(__fmul_rn(lo, 0.125f), lane);
    hi = tq_cuda_apply_sign(__fmul_rn(hi, 0.125f), lane + 32);
}

// Max over the warp of max(lo, hi): exact, any order.
static __device__ __forceinline__ float tq_cuda_warp_max(float v) {
#pragma unroll
    for (int h = 16; h > 0; h >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(TQ_CUDA_FULL_MASK, v, h));
    }
    return v;
}

// Sum of the 64 values in element order 0, 1, ..., 63 (lo of lanes 0..31, then hi), one rounding per
// addition as in the reference's loop; every lane gets the result. A tree reduction would round
// differently and change a quantized byte now and then. The values go through shared memory and every lane
// adds all 64 (broadcast reads): the chain is 64 dependent additions, with no shuffle between them.
// Blocks of up to 32 warps, one-dimensional.
static __device__ __forceinline__ float tq_cuda_warp_sum_ordered(float lo, float hi) {
    __shared__ float4 tq_cuda_sum_scratch[32][QK_TQ/4];
    const int lane = threadIdx.x % 32;
    float4 * v = tq_cuda_sum_scratch[threadIdx.x / 32];
    __syncwarp(); // the lanes' reads of a previous call are done
    ((float *) v)[lane]      = lo;
    ((float *) v)[lane + 32] = hi;
    __syncwarp();
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < QK_TQ/4; ++j) {
        const float4 q = v[j];
        s = __fadd_rn(s, q.x);
        s = __fadd_rn(s, q.y);
        s = __fadd_rn(s, q.z);
        s = __fadd_rn(s, q.w);
    }
    return s;
}

// The centroid indices of elements lane and lane + 32 of block b.
static __device__ __forceinline__ void tq_cuda_load_indices_warp(const block_tq4_0 * b, int lane, int & ilo, int & ihi) {
    const int q = b->qs[lane];
    ilo = q & 0xf;
    ihi = q >> 4;
}
static __device__ __forceinline__ void tq_cuda_load_indices_warp(const block_tq3_0 * b, int lane, int & ilo, int & ihi) {
    const int qs = b->qs[lane & 15];
    const int qh = b->qh[lane & 7];
    ilo = ((qs >> (2*(lane >> 4)))     & 3) | (((qh >> (lane >> 3))       & 1) << 2);
    ihi = ((qs >> (2*(lane >> 4) + 4)) & 3) | (((qh >> ((lane >> 3) + 4)) & 1) << 2);
}
static __device__ __forceinline__ void tq_cuda_load_indices_warp(const block_tqv2_0 * b, int lane, int & ilo, int & ihi) {
    const int qs = b->qs[lane & 15];
    ilo = (qs >> (2*(lane >> 4)))     & 3;
    ihi = (qs >> (2*(lane >> 4) + 4)) & 3;
}
static __device__ __forceinline__ void tq_cuda_load_indices_warp(const block_tq6_0 * b, int lane, int & ilo, int & ihi) {
    const int q  = b->qs[lane];       // low 4 bits: tq4_0's nibbles
    const int qh = b->qh[lane & 15];  // high 2 bits: tqv2_0's qs
    ilo = (q & 0xf) | (((qh >> (2*(lane >> 4)))     & 3) << 4);
    ihi = (q >> 4)  | (((qh >> (2*(lane >> 4) + 4)) & 3) << 4);
}

// Rotated-domain values of a block: d * c[index] for elements lane and lane + 32, no inverse rotation
// (what attention uses: q.x = (H D q / 8) . (d c), and V accumulated rotated, unrotated once).
template <int bits>
static __device__ __forceinline__ void tq_cuda_rotated_block_warp(const typename tq_cuda_type<bits>::block * b, int lane,
                                                                  float codebook_lane, float & lo, float & hi) {
    int ilo, ihi;
    tq_cuda_load_indices_warp(b, lane, ilo, ihi);
    const float d = tq_cuda_fp16_to_fp32(b->d);
    lo = __fmul_rn(d, tq_cuda_codebook_lookup<bits>(codebook_lane, ilo));
    hi = __fmul_rn(d, tq_cuda_codebook_lookup<bits>(codebook_lane, ihi));
}

// dequantize_row_*_ref for one block, bit-identical, from its indices (tq_cuda_load_indices_warp)
// and scale: lo = x'[lane], hi = x'[lane + 32]. Kernels that load several blocks before decoding them call this.
template <int bits>
static __device__ __forceinline__ void tq_cuda_decode_block_warp(int ilo, int ihi, tq_half d, int lane,
                                                                 float codebook_lane, float & lo, float & hi) {
    lo = tq_cuda_codebook_lookup<bits>(codebook_lane, ilo);
    hi = tq_cuda_codebook_lookup<bits>(codebook_lane, ihi);
    tq_cuda_fwht64_warp(lo, hi, lane);
    const float ds = __fmul_rn(tq_cuda_fp16_to_fp32(d), 0.125f);
    lo = tq_cuda_apply_sign(__fmul_rn(lo, ds), lane);
    hi = tq_cuda_apply_sign(__fmul_rn(hi, ds), lane + 32);
}

// dequantize_row_*_ref for one block, bit-identical: lo = x'[lane], hi = x'[lane + 32].
template <int bits>
static __device__ __forceinline__ void tq_dequantize_block_warp(const typename tq_cuda_type<bits>::block * b, int lane,
                                                                float codebook_lane, float & lo, float & hi) {
    int ilo, ihi;
    tq_cuda_load_indices_warp(b, lane, ilo, ihi);
    tq_cuda_decode_block_warp<bits>(ilo, ihi, b->d, lane, codebook_lane, lo, hi);
}

// Writes the block's data bytes: lane l < nbytes writes byte l, lane 0 the scale (coalesced, no local memory).
static __device__ __forceinline__ void tq_cuda_store_block(block_tq4_0 * y, int lane, tq_half d, int ilo, int ihi) {
    y->qs[lane] = (uint8_t)(ilo | (ihi << 4)); // qs[j] = idx[j] | idx[j + 32] << 4
    if (lane == 0) {
        y->d = d;
    }
}
static __device__ __forceinline__ void tq_cuda_store_block(block_tq3_0 * y, int lane, tq_half d, int ilo, int ihi) {
    // qs[j] (j < 16): low 2 bits of indices j, j + 16, j + 32, j + 48 at bits 0, 2, 4, 6
    const int ilo16 = __shfl_down_sync(TQ_CUDA_FULL_MASK, ilo, 16);
    const int ihi16 = __shfl_down_sync(TQ_CUDA_FULL_MASK, ihi, 16);
    // qh[j] (j < 8): bit k is the third bit of index j + 8k
    const uint64_t bit2 = (uint64_t) __ballot_sync(TQ_CUDA_FULL_MASK, ilo & 4) |
                          (uint64_t) __ballot_sync(TQ_CUDA_FULL_MASK, ihi & 4) << 32;
    if (lane < 16) {
        y->qs[lane] = (uint8_t)((ilo & 3) | (ilo16 & 3) << 2 | (ihi & 3) << 4 | (ihi16 & 3) << 6);
    } else if (lane < 24) {
        const int j = lane - 16;
        uint32_t qh = 0;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            qh |= (uint32_t)((bit2 >> (j + 8*k)) & 1) << k;
        }
        y->qh[j] = (uint8_t) qh;
    }
    if (lane == 0) {
        y->d = d;
    }
}
static __device__ __forceinline__ void tq_cuda_store_block(block_tqv2_0 * y, int lane, tq_half d, int ilo, int ihi) {
    // qs[j] (j < 16): indices j, j + 16, j + 32, j + 48 at bits 0, 2, 4, 6 (tq3_0's qs)
    const int ilo16 = __shfl_down_sync(TQ_CUDA_FULL_MASK, ilo, 16);
    const int ihi16 = __shfl_down_sync(TQ_CUDA_FULL_MASK, ihi, 16);
    if (lane < 16) {
        y->qs[lane] = (uint8_t)(ilo | ilo16 << 2 | ihi << 4 | ihi16 << 6);
    }
    if (lane == 0) {
        y->d = d;
    }
}
static __device__ __forceinline__ void tq_cuda_store_block(block_tq6_0 * y, int lane, tq_half d, int ilo, int ihi) {
    // qs[j]: low 4 bits of indices j and j + 32 (tq4_0's qs); qh[j] (j < 16): high 2 bits of indices j, j + 16,
    // j + 32, j + 48 at bits 0, 2, 4, 6 (tqv2_0's qs)
    const int ilo16 = __shfl_down_sync(TQ_CUDA_FULL_MASK, ilo, 16);
    const int ihi16 = __shfl_down_sync(TQ_CUDA_FULL_MASK, ihi, 16);
    y->qs[lane] = (uint8_t)((ilo & 0xf) | (ihi & 0xf) << 4);
    if (lane < 16) {
        y->qh[lane] = (uint8_t)((ilo >> 4) | (ilo16 >> 4) << 2 | (ihi >> 4) << 4 | (ihi16 >> 4) << 6);
    }
    if (lane == 0) {
        y->d = d;
    }
}

// The encoder's scale search (tq-ref.c, docs/design.md): the indices of the block magnified by each gain t of
// TQ_SEARCH_GAINS_INIT, kept for the largest cosine dot(z, c)/sqrt(cc), the first of equal scores.
// z = (z[lane], z[lane + 32]); returns the kept indices and their centroids, the same as tq-ref.c's.
//
// Both sums of every gain are the reference's tree_sum64: its stage 32 adds a lane's two elements, its stages
// 16 .. 1 add the partial sums of lanes l and l ^ h. The 16 sums (dot and cc of 8 gains) share their shuffles:
// at stage h every lane keeps half of its sums, adds its partner's partial of those and sends it the other half,
// so 8 + 4 + 2 + 1 + 1 shuffles instead of 80, every addition still one of the reference's pairs (a + b == b + a).
// Lane l ends with sum l >> 1: gain l >> 2, cc where bit 1 is set. Each lane then scores its gain, once, and
// three shuffle stages keep the first largest score: lanes with bit h set hold the later gains of a pair of
// segments, the later wins only if strictly larger. The ordered tree gives the reference's sequential choice:
// a score is NaN only for a NaN block, where all are and both keep gain 0.
template <int bits>
static __device__ __forceinline__ void tq_cuda_search_indices_warp(float zlo, float zhi, int lane, float codebook_lane,
                                                                   int & ilo, int & ihi, float & clo, float & chi) {
    static_assert(TQ_SEARCH_N == 8, "the sums' layout: 2 sums of each gain over 32 lanes");
    static_assert(bits <= 8, "indices of all gains packed in one word");
    constexpr float gains[TQ_SEARCH_N] = TQ_SEARCH_GAINS_INIT;
    // the indices of all gains in one word: gain g's in bits PB*g .. PB*g + bits - 1 (4-bit fields in 32 bits up to
    // 4-bit indices, bytes of 64 bits for 6-bit ones)
    typedef typename std::conditional<(bits <= 4), uint32_t, uint64_t>::type pack_t;
    constexpr int PB = bits <= 4 ? 4 : 8;
    pack_t plo = 0, phi = 0;
    float v[2*TQ_SEARCH_N];    // v[2g] = dot, v[2g + 1] = cc, each lane's stage-32 sum; registers: loops unrolled
#pragma unroll
    for (int g = 0; g < TQ_SEARCH_N; ++g) {
        const int   jlo = tq_cuda_nearest_index<bits>(gains[g] == 1.0f ? zlo : __fmul_rn(zlo, gains[g]));
        const int   jhi = tq_cuda_nearest_index<bits>(gains[g] == 1.0f ? zhi : __fmul_rn(zhi, gains[g]));
        const float cl  = tq_cuda_codebook_lookup<bits>(codebook_lane, jlo);
        const float ch  = tq_cuda_codebook_lookup<bits>(codebook_lane, jhi);
        plo |= (pack_t) jlo << PB*g;
        phi |= (pack_t) jhi << PB*g;
        v[2*g]     = __fadd_rn(__fmul_rn(zlo, cl), __fmul_rn(zhi, ch));
        v[2*g + 1] = __fadd_rn(__fmul_rn(cl, cl), __fmul_rn(ch, ch));
    }
#pragma unroll
    for (int stage = 0; stage < 4; ++stage) {
        const int  h     = 16 >> stage;
        const int  n     = TQ_SEARCH_N >> stage;
        const bool upper = lane & h; // keeps sums n .. 2n - 1
#pragma unroll
        for (int i = 0; i < TQ_SEARCH_N; ++i) { // a constant trip count: unrolled before the stages are
            if (i < n) {
                const float send = upper ? v[i] : v[i + n];
                const float keep = upper ? v[i + n] : v[i];
                v[i] = __fadd_rn(keep, __shfl_xor_sync(TQ_CUDA_FULL_MASK, send, h));
            }
        }
    }
    const float sum   = __fadd_rn(v[0], __shfl_xor_sync(TQ_CUDA_FULL_MASK, v[0], 1));
    const float other = __shfl_xor_sync(TQ_CUDA_FULL_MASK, sum, 2);
    const bool  is_cc = lane & 2;
    float score = __fdiv_rn(is_cc ? other : sum, __fsqrt_rn(is_cc ? sum : other));
    int   g     = lane >> 2;
#pragma unroll
    for (int h = 4; h < 32; h <<= 1) {
        const float ps    = __shfl_xor_sync(TQ_CUDA_FULL_MASK, score, h);
        const int   pg    = __shfl_xor_sync(TQ_CUDA_FULL_MASK, g, h);
        const bool  later = lane & h;
        const float s0 = later ? ps : score, s1 = later ? score : ps;
        const int   g0 = later ? pg : g,     g1 = later ? g : pg;
        score = s1 > s0 ? s1 : s0;
        g     = s1 > s0 ? g1 : g0;
    }
    ilo = (int) ((plo >> PB*g) & ((1u << bits) - 1));
    ihi = (int) ((phi >> PB*g) & ((1u << bits) - 1));
    clo = tq_cuda_codebook_lookup<bits>(codebook_lane, ilo);
    chi = tq_cuda_codebook_lookup<bits>(codebook_lane, ihi);
}

// quantize_row_*_ref for one block, byte-identical:
// lo = x[lane], hi = x[lane + 32]; writes *y. codebook_lane: tq_cuda_codebook_lane<bits>(lane).
template <int bits>
static __device__ __forceinline__ void tq_quantize_block_warp(float lo, float hi, int lane, float codebook_lane,
                                                              typename tq_cuda_type<bits>::block * y) {
    const float amax = tq_cuda_warp_max(fmaxf(fabsf(lo), fabsf(hi)));
    if (amax < FLT_MIN) { // also subnormal blocks, as tq-ref.c: stored as zero
        tq_cuda_store_block(y, lane, (tq_half) 0, 0, 0);
        return;
    }

    // divide by the largest magnitude first, then rotate: y = H D (x/amax) / 8
    const float inv_amax = __frcp_rn(amax); // 1/amax correctly rounded: the same number as the division, fewer instructions
    lo = tq_cuda_apply_sign(__fmul_rn(lo, inv_amax), lane);
    hi = tq_cuda_apply_sign(__fmul_rn(hi, inv_amax), lane + 32);
    tq_cuda_fwht64_warp(lo, hi, lane);
    lo = __fmul_rn(lo, 0.125f);
    hi = __fmul_rn(hi, 0.125f);

    const float norm     = __fsqrt_rn(tq_cuda_warp_sum_ordered(__fmul_rn(lo, lo), __fmul_rn(hi, hi)));
    const float inv_norm = __frcp_rn(norm);

    int ilo, ihi;
    float clo, chi;
    tq_cuda_search_indices_warp<bits>(__fmul_rn(lo, inv_norm), __fmul_rn(hi, inv_norm), lane, codebook_lane, ilo, ihi, clo, chi);

    // d = |x| / |c|: the reconstruction keeps x's norm
    const float csumsq = tq_cuda_warp_sum_ordered(__fmul_rn(clo, clo), __fmul_rn(chi, chi));
    const float d      = __fmul_rn(amax, __fdiv_rn(norm, __fsqrt_rn(csumsq)));

    tq_cuda_store_block(y, lane, tq_cuda_fp32_to_fp16(d), ilo, ihi);
}
