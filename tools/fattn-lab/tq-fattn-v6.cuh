// LAB VERSION (v6) of the TQ4_0 / TQ3_0 flash-attention decode kernel: not wired into ggml-cuda, which runs
// ggml-tq/cuda/tq-fattn.cu (v4). Correct against the C reference (fattn_bench check: 132 cases), not faster
// than v4 at 32k keys on the H100 (ggml-tq/cuda/NOTES.md); kept with its bench as the starting point of the
// next version. Device code and launcher without ggml-cuda, only ggml.h's type enum. Its warp helpers began
// as copies of tq-fattn.cu's and diverge (f16 codebook pairs); the version that passes test-backend-ops and
// beats v4 replaces tq-fattn.cu's kernel, so that one copy remains.
//
// Why a kernel of its own: ggml-cuda's vector kernel handles one query head per block (GQA siblings re-read
// the same K/V through L2) and quantized K against a q8_1 query; its tensor-core kernels want f16 K/V.
// Here one warp reads each K/V row once for all query heads of its GQA group (up to 8, the rows of an
// m16n8k16 tile), decodes the 4/3-bit indices to f16 codebook values straight into mma fragments, and
// never leaves the rotated domain:
//   - Q is rotated once per block (random signs, 64-point Walsh-Hadamard) and scaled;
//   - S = Qrot . (codebook values), times each key's block scale d;
//   - O += softmax(S) * (d * codebook values of V), still rotated;
//   - a block's warps are the GQA groups of hb consecutive KV heads over one key range; with one block per
//     row a warp rotates its O back and writes it, otherwise a second kernel merges the key ranges
//     (flash-decoding) and does that.
//
// Memory: a key's row of the block's heads is contiguous in the cache (a token's heads side by side: 4 x 68
// bytes for head 128, TQ4_0), so a block streams its keys through a ring of TQ_FA_STAGES shared-memory tiles
// with 16-byte cp.async copies of whole rows, the next tiles in flight while the current one is scored, and
// the warps read their fragments from shared memory. (v4 loaded each fragment straight from global memory:
// 48 scattered 2-byte loads per lane and tile. ggml-tq/cuda/NOTES.md has the versions and their times.)
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <algorithm>

#include "ggml.h"
#include "ggml-tq.h"
#include "tq-codebook.h"

#define TQ_FA_WARPS   4   // warps per block at most: one per KV head and query group
#define TQ_FA_TILE    16  // keys per iteration: the k dimension of the P.V mma
#define TQ_FA_STAGES  3   // shared-memory tiles per block: 2 in flight while one is scored
#define TQ_FA_MAX_G   8   // query heads per warp: rows 0..7 of the m16 tile
#ifndef TQ_FA_MIN_TILES
#define TQ_FA_MIN_TILES 2  // a block's key range is at least this many tiles: few keys spread over more blocks
#endif

static __constant__ float tq_fa_signs[QK_TQ] = TQ_SIGNS_INIT;
static __constant__ float tq_fa_cb4[16]      = TQ_CENTROIDS_4BIT_INIT;
static __constant__ float tq_fa_cb3[8]       = TQ_CENTROIDS_3BIT_INIT;

static constexpr unsigned TQ_FA_FULL = 0xffffffffu;

// ---- helpers ----------------------------------------------------------------------------------------

// The 64-point Walsh-Hadamard transform of one block held by a warp, lane l owning elements l and l+32.
// Same stages and operand order as tq-ref.c's tq_fwht64.
static __device__ __forceinline__ void tq_fa_fwht64(float & v0, float & v1) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int h = 1; h < 32; h <<= 1) {
        const float p0 = __shfl_xor_sync(TQ_FA_FULL, v0, h);
        const float p1 = __shfl_xor_sync(TQ_FA_FULL, v1, h);
        if (lane & h) {
            v0 = p0 - v0;
            v1 = p1 - v1;
        } else {
            v0 = v0 + p0;
            v1 = v1 + p1;
        }
    }
    const float a = v0;
    v0 = a + v1;
    v1 = a - v1;
}

static __device__ __forceinline__ uint32_t tq_fa_pack(float lo, float hi) {
    const half2 h = __floats2half2_rn(lo, hi);
    return *(const uint32_t *) &h;
}

// D(16x8, f32) += A(16x16, f16, rows 8..15 zero) * B(16x8, f16)
static __device__ __forceinline__ void tq_fa_mma(float & c0, float & c1, uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    float c2 = 0.0f, c3 = 0.0f; // rows 8..15: A is zero there, the result is discarded
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3)
                 : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
#else
    (void) c0; (void) c1; (void) a0; (void) a2; (void) b0; (void) b1;
    __trap(); // the host side only takes this kernel on Ampere and newer
#endif
}

static __device__ __forceinline__ void tq_fa_cp_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N> static __device__ __forceinline__ void tq_fa_cp_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N));
#endif
}

// Codebook lookups by shuffle (no memory, no bank conflicts): lane l holds entry l mod 2^bits as an f16 in
// both halves of a word. A shuffle reads its source lane modulo 32, so an index only needs its low `bits`
// bits right: the bits above them (the next index's, after a shift) select a lane with the same entry.
// Two lookups make an mma operand register with one byte permute (no f32 -> f16 conversion).
static __device__ __forceinline__ uint32_t tq_fa_cb2(uint32_t cb_lane, uint32_t i_lo, uint32_t i_hi) {
    const uint32_t lo = __shfl_sync(TQ_FA_FULL, cb_lane, (int) i_lo);
    const uint32_t hi = __shfl_sync(TQ_FA_FULL, cb_lane, (int) i_hi);
    return __byte_perm(lo, hi, 0x5410); // low half of each
}

static __device__ __forceinline__ uint32_t tq_fa_cb_lane(float c) {
    const half h = __float2half_rn(c);
    const uint32_t u = *(const uint16_t *) &h;
    return u | (u << 16);
}

template <ggml_type type> struct tq_fa_traits;
template <> struct tq_fa_traits<GGML_TYPE_TQ4_0> {
    using block = block_tq4_0;
    static __device__ __forceinline__ uint32_t cb_lane(int lane) { return tq_fa_cb_lane(tq_fa_cb4[lane & 15]); }
};
template <> struct tq_fa_traits<GGML_TYPE_TQ3_0> {
    using block = block_tq3_0;
    static __device__ __forceinline__ uint32_t cb_lane(int lane) { return tq_fa_cb_lane(tq_fa_cb3[lane & 7]); }
};

// 2-byte load: rows in shared memory start 0 or 2 bytes into a word
static __device__ __forceinline__ uint32_t tq_fa_ld16(const uint8_t * p) {
    return *(const uint16_t *) p;
}

// ---- K: the B fragment of S = Q K^T --------------------------------------------------------------------
// For k-step kk (dims kk*16 .. +15 of a block) lane (g = lane/4, t = lane%4) needs elements
// j0 = kk*16 + 2t, j0+1 (b0) and j0+8, j0+9 (b1) of its key's block. The raw bits for all four k-steps
// are loaded once per block (kbits), the indices are cut out per k-step.
template <ggml_type type> struct tq_fa_kbits;

template <> struct tq_fa_kbits<GGML_TYPE_TQ4_0> {
    uint32_t u0, u1, u2, u3;
    __device__ __forceinline__ void load(const block_tq4_0 * b, int t) {
        u0 = tq_fa_ld16(b->qs + 2*t);      // bytes 2t, 2t+1:     elements 2t, 2t+1 (low) and +32 (high)
        u1 = tq_fa_ld16(b->qs + 2*t + 8);  // bytes 2t+8, 2t+9
        u2 = tq_fa_ld16(b->qs + 2*t + 16);
        u3 = tq_fa_ld16(b->qs + 2*t + 24);
    }
    // b0, b1 of k-step kk (indices only correct in their low 4 bits: tq_fa_cb2)
    __device__ __forceinline__ void operands(int kk, uint32_t cb, uint32_t & b0, uint32_t & b1) const {
        const uint32_t x = (kk & 1) ? u2 : u0;
        const uint32_t y = (kk & 1) ? u3 : u1;
        const int sh = (kk >> 1)*4;        // k-steps 2, 3 are the high nibbles (elements 32..63)
        b0 = tq_fa_cb2(cb, x >> sh, x >> (8 + sh));
        b1 = tq_fa_cb2(cb, y >> sh, y >> (8 + sh));
    }
};

template <> struct tq_fa_kbits<GGML_TYPE_TQ3_0> {
    uint32_t s0, s1, h;
    __device__ __forceinline__ void load(const block_tq3_0 * b, int t) {
        s0 = tq_fa_ld16(b->qs + 2*t);      // low 2 bits of elements 2t, 2t+1 (+16k in bits 2k)
        s1 = tq_fa_ld16(b->qs + 2*t + 8);  // elements 2t+8, 2t+9
        h  = tq_fa_ld16(b->qh + 2*t);      // third bit of elements 2t, 2t+1 (+8k in bit k)
    }
    // b0, b1 of k-step kk (indices only correct in their low 3 bits: tq_fa_cb2)
    __device__ __forceinline__ void operands(int kk, uint32_t cb, uint32_t & b0, uint32_t & b1) const {
        const int sl = 2*kk;               // element j has its low bits at 2*(j/16), j/16 == kk
        const uint32_t i0 = ((s0 >> sl)       & 3) | ((h >> (2*kk))         << 2 & 4);
        const uint32_t i1 = ((s0 >> (8 + sl)) & 3) | ((h >> (8 + 2*kk))     << 2 & 4);
        const uint32_t i2 = ((s1 >> sl)       & 3) | ((h >> (2*kk + 1))     << 2 & 4);
        const uint32_t i3 = ((s1 >> (8 + sl)) & 3) | ((h >> (8 + 2*kk + 1)) << 2 & 4);
        b0 = tq_fa_cb2(cb, i0, i1);
        b1 = tq_fa_cb2(cb, i2, i3);
    }
};

// ---- V: the B fragment of O = P V ----------------------------------------------------------------------
// The dims of a block are permuted over the 8 n-tiles so that a lane reads 4 consecutive bytes of a row:
// n-tile nd, column n <-> element j = 4n + (nd & 3) + 32*(nd >> 2). The output is un-permuted when written.
template <ggml_type type> struct tq_fa_vbits;

template <> struct tq_fa_vbits<GGML_TYPE_TQ4_0> {
    uint32_t w; // bytes 4n .. 4n+3 of qs
    __device__ __forceinline__ void load(const block_tq4_0 * b, int n) {
        w = tq_fa_ld16(b->qs + 4*n) | (tq_fa_ld16(b->qs + 4*n + 2) << 16);
    }
    __device__ __forceinline__ uint32_t idx(int nd) const { // correct in the low 4 bits
        return w >> (8*(nd & 3) + 4*(nd >> 2));
    }
};

template <> struct tq_fa_vbits<GGML_TYPE_TQ3_0> {
    uint32_t s, h; // qs bytes 4(n%4) .. +3, qh bytes 4(n%2) .. +3
    int n;
    __device__ __forceinline__ void load(const block_tq3_0 * b, int n_) {
        n = n_;
        s = tq_fa_ld16(b->qs + 4*(n & 3)) | (tq_fa_ld16(b->qs + 4*(n & 3) + 2) << 16);
        h = tq_fa_ld16(b->qh + 4*(n & 1)) | (tq_fa_ld16(b->qh + 4*(n & 1) + 2) << 16);
    }
    __device__ __forceinline__ uint32_t idx(int nd) const { // correct in the low 3 bits
        const int r = nd & 3, hh = nd >> 2;   // j = 4n + r + 32hh: j%16 = 4(n%4) + r, j/16 = n/4 + 2hh
        const uint32_t lo = (s >> (8*r + 2*((n >> 2) + 2*hh))) & 3;
        const uint32_t hi = h >> (8*r + (n >> 1) + 4*hh); // j%8 = 4(n%2) + r, j/8 = n/2 + 4hh
        return lo | (hi << 2 & 4);
    }
};

// ---- parameters ----------------------------------------------------------------------------------------

struct tq_fa_params {
    const char * Q; const char * K; const char * V; const char * mask;
    float * partials;                  // [z][head][block][D + 2]: M, L, O (rotated) of each block's keys
    const float * sinks;               // per head, or null
    float * dst;                       // [z][head][D]
    float scale, max_bias, m0, m1, logit_softcap;
    uint32_t n_head_log2;
    int n_q, n_seq, n_head, n_kv, n_head_kv, gqa, G, n_groups;
    int hb;                            // KV heads per block: a block's warps are its heads x groups
    int n_blocks, keys_per_block;      // key split: blocks per row, keys per block (a multiple of TQ_FA_TILE)
    int cp_bytes;                      // cp.async size: 16, 8 or 4, what the addresses allow
    int span_K, span_V;                // bytes copied per key row: the block's heads, from the aligned word below
    int stride_K, stride_V;            // their row stride in shared memory
    int smem;                          // dynamic shared memory of the decode kernel
    int64_t nbq1, nbq2, nbq3;
    int64_t nbk1, nbk2, nbk3;
    int64_t nbv1, nbv2, nbv3;
    int64_t nbm1, nbm3; int mask_ne3;
};

static __device__ __forceinline__ float tq_fa_slope(const tq_fa_params & p, int h) {
    if (p.max_bias <= 0.0f) {
        return 1.0f;
    }
    return h < (int) p.n_head_log2 ? powf(p.m0, h + 1) : powf(p.m1, 2*(h - (int) p.n_head_log2) + 1);
}

// The last step of a row, in a warp: O (rotated; lane l holds elements l and l+32 of block b in o_rot[b])
// times 1/L, rotated back (the transform is its own inverse up to the 1/8 scale, then the signs).
// One block of it: out[0..63] from elements v0 = lane, v1 = lane + 32.
static __device__ __forceinline__ void tq_fa_write_block(float * out, float v0, float v1, float inv_L) {
    const int lane = threadIdx.x & 31;
    tq_fa_fwht64(v0, v1);
    out[lane]      = v0*0.125f*tq_fa_signs[lane]*inv_L;
    out[lane + 32] = v1*0.125f*tq_fa_signs[lane + 32]*inv_L;
}

template <int D>
static __device__ __forceinline__ void tq_fa_write_row(float * out, const float (&o_rot)[D/QK_TQ][2], float inv_L) {
#pragma unroll
    for (int b = 0; b < D/QK_TQ; ++b) {
        tq_fa_write_block(out + b*QK_TQ, o_rot[b][0], o_rot[b][1], inv_L);
    }
}

// A lane's O fragments (rows g, columns 2t, 2t+1 of each n-tile) to a row in natural rotated order: n-tile nd,
// column n is element 4n + (nd & 3) + 32*(nd >> 2) of its block (the V operand's permutation undone)
template <int NB>
static __device__ __forceinline__ void tq_fa_store_o(float * row, const float (&O)[NB][8][2], int t) {
#pragma unroll
    for (int b = 0; b < NB; ++b) {
#pragma unroll
        for (int nd = 0; nd < 8; ++nd) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                row[b*QK_TQ + 4*(2*t + c) + (nd & 3) + 32*(nd >> 2)] = O[b][nd][c];
            }
        }
    }
}

// cp.async of `bytes` (4, 8 or 16) with `src_bytes` of them read and the rest zero-filled
static __device__ __forceinline__ void tq_fa_cp(void * dst, const void * src, int bytes, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const uint32_t d = (uint32_t) __cvta_generic_to_shared(dst);
    if (bytes == 16) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(d), "l"(src), "r"(src_bytes));
    } else if (bytes == 8) {
        asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" :: "r"(d), "l"(src), "r"(src_bytes));
    } else {
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" :: "r"(d), "l"(src), "r"(src_bytes));
    }
#else
    (void) dst; (void) src; (void) bytes; (void) src_bytes;
    __trap();
#endif
}

// ---- the decode kernel ---------------------------------------------------------------------------------

// Shared memory of a block: TQ_FA_STAGES stages of [16 K rows | 16 V rows | 16 mask values], a K/V row
// holding the bytes of the block's heads for one key (contiguous in the cache: a token's heads side by side).
// After the loop the same memory holds each warp's rows of O for the final write.
#define TQ_FA_MASK_BYTES 48 // 16 halves from the 4-byte word below the first, rounded up to 16 bytes

// grid: x = key range (block), y = group of hb KV heads, z = query row + n_q * sequence. Warp w of the block
// takes KV head blockIdx.y*hb + w/n_groups, query heads of group w%n_groups: G rows of the m16 tile.
// MINB, the blocks per SM the register budget is cut for, is picked at run time (GGML_TQ_FA_MINB).
template <int D, ggml_type type_K, ggml_type type_V, int MINB>
__launch_bounds__(TQ_FA_WARPS*32, MINB)
static __global__ void tq_fattn_decode(const tq_fa_params p) {
    using block_K = typename tq_fa_traits<type_K>::block;
    using block_V = typename tq_fa_traits<type_V>::block;
    constexpr int NB = D/QK_TQ;
    constexpr int row_K = NB*(int) sizeof(block_K), row_V = NB*(int) sizeof(block_V); // bytes of a head's row

    extern __shared__ __align__(16) uint8_t tq_fa_smem[];
    __shared__ float q_scratch[TQ_FA_WARPS][D];

    const int lane   = threadIdx.x & 31;
    const int warp   = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    const int g      = lane >> 2;   // row of the m16 tile this lane holds: query head g of the group
    const int t      = lane & 3;

    const int kv0     = blockIdx.y*p.hb;                // the block's first KV head
    const int kv_head = kv0 + warp / p.n_groups;
    const int group   = warp % p.n_groups;
    const int iq      = blockIdx.z % p.n_q;
    const int seq     = blockIdx.z / p.n_q;
    const int head0   = kv_head*p.gqa + group*p.G; // first query head of this warp's rows

    const int k_begin = blockIdx.x*p.keys_per_block;
    const int k_end   = min(k_begin + p.keys_per_block, p.n_kv);
    const int n_tiles = (k_end - k_begin + TQ_FA_TILE - 1)/TQ_FA_TILE;

    // K/V rows of the block's heads: from the word below the first head's first byte (a row starts 0 or 2
    // bytes into a word; nb1 % 4 == 0 keeps that the same for every key)
    const char * Ks = p.K + kv0*p.nbk2 + seq*p.nbk3;
    const char * Vs = p.V + kv0*p.nbv2 + seq*p.nbv3;
    const int offK = (int) ((uintptr_t) Ks & 3), offV = (int) ((uintptr_t) Vs & 3);
    Ks -= offK;
    Vs -= offV;
    const int endK = offK + p.hb*row_K, endV = offV + p.hb*row_V;       // bytes of a row worth reading
    const char * mrow = p.mask ? p.mask + iq*p.nbm1 + (seq % p.mask_ne3)*p.nbm3 : nullptr;
    const int offM = (int) ((uintptr_t) mrow & 3);
    const int stage_bytes = TQ_FA_TILE*(p.stride_K + p.stride_V) + TQ_FA_MASK_BYTES;

    // Copies tile `tile` into stage `st`: warp w copies rows w, w + nwarps, ...; a row's chunks are
    // consecutive lanes' (coalesced). Keys at or past k_end are zero-filled without a read.
    auto fetch = [&](const int tile, const int st) {
        uint8_t * sk = tq_fa_smem + st*stage_bytes;
        uint8_t * sv = sk + TQ_FA_TILE*p.stride_K;
        uint8_t * sm = sv + TQ_FA_TILE*p.stride_V;
        const int k0 = k_begin + tile*TQ_FA_TILE;
        for (int r = warp; r < TQ_FA_TILE; r += nwarps) {
            const bool ok = k0 + r < k_end;
            const char * kr = Ks + (int64_t) min(k0 + r, p.n_kv - 1)*p.nbk1;
            const char * vr = Vs + (int64_t) min(k0 + r, p.n_kv - 1)*p.nbv1;
            for (int c = lane*p.cp_bytes; c < endK; c += 32*p.cp_bytes) {
                tq_fa_cp(sk + r*p.stride_K + c, kr + c, p.cp_bytes, ok ? min(p.cp_bytes, endK - c) : 0);
            }
            for (int c = lane*p.cp_bytes; c < endV; c += 32*p.cp_bytes) {
                tq_fa_cp(sv + r*p.stride_V + c, vr + c, p.cp_bytes, ok ? min(p.cp_bytes, endV - c) : 0);
            }
        }
        if (mrow && warp == nwarps - 1 && lane < TQ_FA_MASK_BYTES/4) {
            // bytes [offM, offM + 2*valid) of the words from the one below key k0's; a word before the row
            // start (offM = 2) holds the previous row's last key, never the tensor's first byte
            const int valid = min(TQ_FA_TILE, k_end - k0);
            const int n = max(0, min(4, offM + 2*valid - 4*lane));
            tq_fa_cp(sm + 4*lane, n ? mrow - offM + 2*(int64_t) k0 + 4*lane : mrow, 4, n);
        }
    };

    // the first tiles go out before anything else, so that their latency overlaps the rotation of Q
#pragma unroll
    for (int s = 0; s < TQ_FA_STAGES - 1; ++s) {
        if (s < n_tiles) {
            fetch(s, s);
        }
        tq_fa_cp_commit(); // possibly empty: the wait counts below stay uniform
    }

    // Q of this warp's G heads, rotated and scaled, one head at a time through the warp's scratch row;
    // the lanes of row g keep their A fragments (rows 8..15 of the tile are zero, not stored)
    const float q_scale = p.logit_softcap != 0.0f ? p.scale/p.logit_softcap : p.scale;
    uint32_t qa0[D/16], qa2[D/16];
#pragma unroll
    for (int ks = 0; ks < D/16; ++ks) {
        qa0[ks] = qa2[ks] = 0u;
    }
    float qv[TQ_FA_MAX_G][NB][2]; // all loads first: one memory latency, not G of them
#pragma unroll
    for (int gg = 0; gg < TQ_FA_MAX_G; ++gg) {
        if (gg < p.G) {
            const float * q = (const float *) (p.Q + iq*p.nbq1 + (head0 + gg)*p.nbq2 + seq*p.nbq3);
#pragma unroll
            for (int b = 0; b < NB; ++b) {
                qv[gg][b][0] = q[b*QK_TQ + lane];
                qv[gg][b][1] = q[b*QK_TQ + lane + 32];
            }
        }
    }
#pragma unroll
    for (int gg = 0; gg < TQ_FA_MAX_G; ++gg) {
        if (gg >= p.G) {
            break;
        }
#pragma unroll
        for (int b = 0; b < NB; ++b) {
            float v0 = qv[gg][b][0]*tq_fa_signs[lane];
            float v1 = qv[gg][b][1]*tq_fa_signs[lane + 32];
            tq_fa_fwht64(v0, v1);
            q_scratch[warp][b*QK_TQ + lane]      = v0*0.125f*q_scale;
            q_scratch[warp][b*QK_TQ + lane + 32] = v1*0.125f*q_scale;
        }
        __syncwarp();
        if (g == gg) {
#pragma unroll
            for (int ks = 0; ks < D/16; ++ks) {
                const int c = ks*16 + 2*t;
                qa0[ks] = tq_fa_pack(q_scratch[warp][c],     q_scratch[warp][c + 1]);
                qa2[ks] = tq_fa_pack(q_scratch[warp][c + 8], q_scratch[warp][c + 9]);
            }
        }
        __syncwarp();
    }

    const uint32_t cbK = tq_fa_traits<type_K>::cb_lane(lane);
    const uint32_t cbV = tq_fa_traits<type_V>::cb_lane(lane);
    const int   h     = head0 + g;
    const float slope = g < p.G ? tq_fa_slope(p, h) : 0.0f;
    const int   offKw = offK + (warp / p.n_groups)*row_K;  // this warp's head in a row of the stage
    const int   offVw = offV + (warp / p.n_groups)*row_V;

    float M = -INFINITY, Lsum = 0.0f;
    float O[NB][8][2];
#pragma unroll
    for (int b = 0; b < NB; ++b) {
#pragma unroll
        for (int nd = 0; nd < 8; ++nd) {
            O[b][nd][0] = O[b][nd][1] = 0.0f;
        }
    }

    for (int it = 0; it < n_tiles; ++it) {
        tq_fa_cp_wait<TQ_FA_STAGES - 2>(); // this thread's copies of tile `it` have landed
        __syncthreads();                   // everyone's; and everyone is done with tile it-1's stage
        if (it + TQ_FA_STAGES - 1 < n_tiles) {
            fetch(it + TQ_FA_STAGES - 1, (it + TQ_FA_STAGES - 1) % TQ_FA_STAGES);
        }
        tq_fa_cp_commit();

        const uint8_t * sk = tq_fa_smem + (it % TQ_FA_STAGES)*stage_bytes;
        const uint8_t * sv = sk + TQ_FA_TILE*p.stride_K;
        const half    * sm = (const half *) (sv + TQ_FA_TILE*p.stride_V + offM);
        const uint8_t * rowsK = sk + offKw;
        const uint8_t * rowsV = sv + offVw;
        const int k0 = k_begin + it*TQ_FA_TILE;

        // ---- S = Q K^T for the 16 keys: two n-tiles of 8 keys, block by block (each has its own d)
        float s[2][2];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            const block_K * rowb = (const block_K *) (rowsK + (nt*8 + g)*p.stride_K);         // B operand: key g
            const block_K * rc0  = (const block_K *) (rowsK + (nt*8 + 2*t)*p.stride_K);       // C layout: keys 2t,
            const block_K * rc1  = (const block_K *) (rowsK + (nt*8 + 2*t + 1)*p.stride_K);   // 2t+1 (their d)
            s[nt][0] = s[nt][1] = 0.0f;
#pragma unroll
            for (int b = 0; b < NB; ++b) {
                tq_fa_kbits<type_K> kb;
                kb.load(rowb + b, t);
                float c0 = 0.0f, c1 = 0.0f;
#pragma unroll
                for (int kk = 0; kk < 4; ++kk) {
                    uint32_t b0, b1;
                    kb.operands(kk, cbK, b0, b1);
                    tq_fa_mma(c0, c1, qa0[b*4 + kk], qa2[b*4 + kk], b0, b1);
                }
                s[nt][0] += __half2float(*(const half *) &rc0[b].d)*c0;
                s[nt][1] += __half2float(*(const half *) &rc1[b].d)*c1;
            }
        }

        // ---- online softmax over this lane's row (query head g), 4 keys here, 16 across the 4 lanes of g
        float tile_max = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const int kc = nt*8 + 2*t + c;
                float x = s[nt][c];
                if (p.logit_softcap != 0.0f) {
                    x = p.logit_softcap*tanhf(x);
                }
                x = k0 + kc >= k_end ? -INFINITY : x + (mrow ? slope*__half2float(sm[kc]) : 0.0f);
                s[nt][c] = x;
                tile_max = fmaxf(tile_max, x);
            }
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(TQ_FA_FULL, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(TQ_FA_FULL, tile_max, 2));
        const float M_new = fmaxf(M, tile_max);
        float pr[2][2];
        float alpha = 1.0f;
        if (M_new == -INFINITY) { // nothing visible yet on this row
            pr[0][0] = pr[0][1] = pr[1][0] = pr[1][1] = 0.0f;
        } else {
            alpha = expf(M - M_new);
            float sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    pr[nt][c] = expf(s[nt][c] - M_new);
                    sum += pr[nt][c];
                }
            }
            sum += __shfl_xor_sync(TQ_FA_FULL, sum, 1);
            sum += __shfl_xor_sync(TQ_FA_FULL, sum, 2);
            Lsum = Lsum*alpha + sum;
            M = M_new;
        }

        // ---- O = O*alpha + P V, block by block: P is scaled by each key's d of that block.
        // V operand: keys 2t, 2t+1 (b0) and 2t+8, 2t+9 (b1) of the tile, column g of every n-tile.
        const bool rescale = __any_sync(TQ_FA_FULL, alpha != 1.0f); // the row maxima rarely move late in a range
#pragma unroll
        for (int b = 0; b < NB; ++b) {
            tq_fa_vbits<type_V> vb[4];
            float dv[4];
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                const block_V * row = (const block_V *) (rowsV + (2*t + (kk & 1) + 8*(kk >> 1))*p.stride_V) + b;
                vb[kk].load(row, g);
                dv[kk] = __half2float(*(const half *) &row->d);
            }
            const uint32_t pa0 = tq_fa_pack(pr[0][0]*dv[0], pr[0][1]*dv[1]);
            const uint32_t pa2 = tq_fa_pack(pr[1][0]*dv[2], pr[1][1]*dv[3]);
#pragma unroll
            for (int nd = 0; nd < 8; ++nd) {
                if (rescale) {
                    O[b][nd][0] *= alpha;
                    O[b][nd][1] *= alpha;
                }
                const uint32_t b0 = tq_fa_cb2(cbV, vb[0].idx(nd), vb[1].idx(nd));
                const uint32_t b1 = tq_fa_cb2(cbV, vb[2].idx(nd), vb[3].idx(nd));
                tq_fa_mma(O[b][nd][0], O[b][nd][1], pa0, pa2, b0, b1);
            }
        }
    }
    tq_fa_cp_wait<0>();

    // ---- this warp's rows: a partial result of the block's keys, or with one block the whole row
    if (p.n_blocks > 1) {
        if (g < p.G) {
            float * part = p.partials + (((int64_t) blockIdx.z*p.n_head + h)*p.n_blocks + blockIdx.x)*(D + 2);
            if (t == 0) {
                part[0] = M;
                part[1] = Lsum;
            }
            tq_fa_store_o<NB>(part + 2, O, t);
        }
        return;
    }
    __syncthreads(); // the stages are reused: O of every warp's rows, in natural (rotated) order
    float * orow = (float *) tq_fa_smem + warp*TQ_FA_MAX_G*(D + 1);
    if (g < p.G) {
        float * r = orow + g*(D + 1);
        if (t == 0) {
            r[D] = Lsum;
        }
        tq_fa_store_o<NB>(r, O, t);
    }
    __syncwarp();
    for (int gg = 0; gg < p.G; ++gg) {
        const int hq = head0 + gg;
        const float Mr = __shfl_sync(TQ_FA_FULL, M, 4*gg); // lane 4gg holds row gg's M
        const float * r = orow + gg*(D + 1);
        float Lr = r[D];
        float o[NB][2];
#pragma unroll
        for (int b = 0; b < NB; ++b) {
            o[b][0] = r[b*QK_TQ + lane];
            o[b][1] = r[b*QK_TQ + lane + 32];
        }
        if (p.sinks && Mr != -INFINITY) { // the sink joins the softmax as one more logit without a value
            const float sink = p.sinks[hq];
            const float Mn = fmaxf(Mr, sink);
            const float a = expf(Mr - Mn);
            Lr = Lr*a + expf(sink - Mn);
#pragma unroll
            for (int b = 0; b < NB; ++b) {
                o[b][0] *= a;
                o[b][1] *= a;
            }
        }
        tq_fa_write_row<D>(p.dst + ((int64_t) blockIdx.z*p.n_head + hq)*D, o, Lr == 0.0f ? 0.0f : 1.0f/Lr);
    }
}

// Merges the blocks of one (query row, head), adds the sink, rotates back and normalizes. First the blocks'
// weights exp(M_b - M) into shared memory, then every thread sums one element over a share of the blocks:
// the loads of a thread are independent (no chain of dependent loads, which a warp walking hundreds of
// blocks one after another would be), consecutive threads read consecutive elements.
#define TQ_FA_COMBINE_THREADS 256
#define TQ_FA_COMBINE_MAX     1024 // blocks per row the weights' shared memory holds (max_blocks is capped to it)

template <int D>
__launch_bounds__(TQ_FA_COMBINE_THREADS)
static __global__ void tq_fattn_combine(const float * __restrict__ partials, const float * __restrict__ sinks,
                                        float * __restrict__ dst, const int n_head, const int n_split) {
    constexpr int NT = TQ_FA_COMBINE_THREADS, PARTS = NT/D > 0 ? NT/D : 1;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int h = blockIdx.x;
    const int z = blockIdx.y; // query row + n_q * sequence: dst rows are ordered (z, head)
    const float * part = partials + ((int64_t) z*n_head + h)*n_split*(D + 2);

    __shared__ float s_w[TQ_FA_COMBINE_MAX];
    __shared__ float s_red[NT/32];
    __shared__ float s_o[PARTS][D];

    // M: the largest block maximum (and the sink)
    float m = -INFINITY;
    for (int s = tid; s < n_split; s += NT) {
        m = fmaxf(m, part[s*(D + 2)]);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        m = fmaxf(m, __shfl_xor_sync(TQ_FA_FULL, m, off));
    }
    if (lane == 0) {
        s_red[warp] = m;
    }
    __syncthreads();
    float M = sinks ? sinks[h] : -INFINITY;
#pragma unroll
    for (int w = 0; w < NT/32; ++w) {
        M = fmaxf(M, s_red[w]);
    }
    __syncthreads(); // s_red is reused
    // weights and L
    float l = 0.0f;
    for (int s = tid; s < n_split; s += NT) {
        const float * ps = part + s*(D + 2);
        const float w = M == -INFINITY ? 0.0f : expf(ps[0] - M); // an empty block has M = -inf: weight 0
        s_w[s] = w;
        l += w*ps[1];
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        l += __shfl_xor_sync(TQ_FA_FULL, l, off);
    }
    if (lane == 0) {
        s_red[warp] = l;
    }
    __syncthreads();
    // O: element e, blocks part0, part0 + PARTS, ...
    static_assert(NT % D == 0, "a thread per element and share of the blocks");
    {
        const int e = tid % D, part0 = tid / D;
        float acc = 0.0f;
#pragma unroll 8
        for (int s = part0; s < n_split; s += PARTS) {
            acc += s_w[s]*part[s*(D + 2) + 2 + e];
        }
        s_o[part0][e] = acc;
    }
    __syncthreads();
    if (warp >= D/QK_TQ) {
        return;
    }
    float L = 0.0f;
#pragma unroll
    for (int w = 0; w < NT/32; ++w) {
        L += s_red[w];
    }
    if (sinks && M != -INFINITY) {
        L += expf(sinks[h] - M);
    }
    // warp b rotates block b back
    const int b = warp;
    float v0 = 0.0f, v1 = 0.0f;
#pragma unroll
    for (int q = 0; q < PARTS; ++q) {
        v0 += s_o[q][b*QK_TQ + lane];
        v1 += s_o[q][b*QK_TQ + lane + 32];
    }
    tq_fa_write_block(dst + ((int64_t) z*n_head + h)*D + b*QK_TQ, v0, v1, L == 0.0f ? 0.0f : 1.0f/L);
}

// ---- host side -----------------------------------------------------------------------------------------

// One instantiation of the decode kernel.
struct tq_fa_kernel {
    const void * fn;
};

#define TQ_FA_MAX_SMEM (160*1024)

template <int D, ggml_type type_K, ggml_type type_V, int MINB>
static tq_fa_kernel tq_fa_get() {
    const void * fn = (const void *) tq_fattn_decode<D, type_K, type_V, MINB>;
    static bool smem_set[64] = {};  // per device; without it a block gets 48 KB, static memory included
    int dev = 0;
    cudaGetDevice(&dev);
    if (!smem_set[dev]) {
        cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, TQ_FA_MAX_SMEM);
        smem_set[dev] = true;
    }
    return { fn };
}

template <int D, ggml_type type_K, ggml_type type_V>
static tq_fa_kernel tq_fa_get_minb(int minb) {
    switch (minb) {
        case 2:  return tq_fa_get<D, type_K, type_V, 2>();
        case 3:  return tq_fa_get<D, type_K, type_V, 3>();
        default: return tq_fa_get<D, type_K, type_V, 4>();
    }
}

template <int D>
static tq_fa_kernel tq_fa_get_types(ggml_type tk, ggml_type tv, int minb) {
    if (tk == GGML_TYPE_TQ4_0) {
        return tv == GGML_TYPE_TQ4_0 ? tq_fa_get_minb<D, GGML_TYPE_TQ4_0, GGML_TYPE_TQ4_0>(minb)
                                     : tq_fa_get_minb<D, GGML_TYPE_TQ4_0, GGML_TYPE_TQ3_0>(minb);
    }
    return tv == GGML_TYPE_TQ4_0 ? tq_fa_get_minb<D, GGML_TYPE_TQ3_0, GGML_TYPE_TQ4_0>(minb)
                                 : tq_fa_get_minb<D, GGML_TYPE_TQ3_0, GGML_TYPE_TQ3_0>(minb);
}

// The kernel for head size D (64, 128, 256) and TQ types tk, tv; minb: GGML_TQ_FA_MINB (2..4)
static tq_fa_kernel tq_fa_select(int D, ggml_type tk, ggml_type tv, int minb) {
    switch (D) {
        case  64: return tq_fa_get_types< 64>(tk, tv, minb);
        case 128: return tq_fa_get_types<128>(tk, tv, minb);
        default:  return tq_fa_get_types<256>(tk, tv, minb);
    }
}

static int tq_fa_row_bytes(ggml_type t, int D) {
    return D/QK_TQ*(int) (t == GGML_TYPE_TQ4_0 ? sizeof(block_tq4_0) : sizeof(block_tq3_0));
}

// Heads per block and the copy layout, from the tensors' addresses and strides (p's fields up to nbv3 set).
// Returns false where the kernel cannot take them: query heads in more groups than a block has warps, a
// head's rows not 4-byte aligned, or heads not side by side in a key's row.
static bool tq_fa_layout(tq_fa_params & p, int D, ggml_type tk, ggml_type tv) {
    if (p.n_groups > TQ_FA_WARPS) {
        return false;
    }
    const int row_K = tq_fa_row_bytes(tk, D), row_V = tq_fa_row_bytes(tv, D);
    if (p.nbk2 != row_K || p.nbv2 != row_V || p.nbk1 % 4 != 0 || p.nbv1 % 4 != 0 ||
        p.nbk3 % 4 != 0 || p.nbv3 % 4 != 0 || (uintptr_t) p.K % 2 != 0 || (uintptr_t) p.V % 2 != 0) {
        return false;
    }
    p.hb = 1;  // the largest divisor of n_head_kv that fits the block
    for (int d = 1; d <= p.n_head_kv; ++d) {
        if (p.n_head_kv % d == 0 && d*p.n_groups <= TQ_FA_WARPS) {
            p.hb = d;
        }
    }
    // the widest copy every row start of every block allows: row starts are (base + kv0*nb2 + k*nb1 + seq*nb3)
    // rounded down to 4 bytes, kv0 a multiple of hb
    p.cp_bytes = 4;
    for (int cb : {16, 8}) {
        auto ok = [&](const char * base, int64_t nb1, int64_t nb2, int64_t nb3) {
            return ((uintptr_t) base & ~(uintptr_t) 3) % cb == 0 && nb1 % cb == 0 && nb3 % cb == 0 && (p.hb*nb2) % cb == 0 &&
                   (uintptr_t) base % 4 == 0;
        };
        if (ok(p.K, p.nbk1, p.nbk2, p.nbk3) && ok(p.V, p.nbv1, p.nbv2, p.nbv3)) {
            p.cp_bytes = cb;
            break;
        }
    }
    // a row of the stage: up to 2 bytes of offset, the heads, rounded to the copy size; its stride 16 bytes
    // mod 32 (4 mod 8 words): the K fragment reads of 8 consecutive rows and the V reads of 4 even rows
    // then fall on different banks
    auto stride = [&](int span) {
        int st = (span + 15)/16*16;
        return (st/4) % 8 == 4 ? st : st + 16;
    };
    p.span_K = (2 + p.hb*row_K + p.cp_bytes - 1)/p.cp_bytes*p.cp_bytes;
    p.span_V = (2 + p.hb*row_V + p.cp_bytes - 1)/p.cp_bytes*p.cp_bytes;
    p.stride_K = stride(p.span_K);
    p.stride_V = stride(p.span_V);
    const int ring = TQ_FA_STAGES*(TQ_FA_TILE*(p.stride_K + p.stride_V) + TQ_FA_MASK_BYTES);
    const int orows = TQ_FA_WARPS*TQ_FA_MAX_G*(D + 1)*(int) sizeof(float);
    p.smem = std::max(ring, orows);
    return p.smem <= TQ_FA_MAX_SMEM;
}

// Blocks of kernel k the whole GPU holds at once.
static int tq_fa_slots(const tq_fa_kernel & k, const tq_fa_params & p, int nsm) {
    int per_sm = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k.fn, p.hb*p.n_groups*32, p.smem);
    return std::max(1, per_sm)*nsm;
}

// The key split (flash-decoding), after tq_fa_layout: one wave of blocks (all resident at once; a second,
// partial wave would double the time), each block at least TQ_FA_MIN_TILES tiles, at most
// max_blocks per row (their partial results, G*(D+2) floats per head, go through L2 and back).
static void tq_fa_plan(tq_fa_params & p, int slots, int max_blocks) {
    const int rows     = p.n_head_kv/p.hb*p.n_q*p.n_seq;                   // blocks that share nothing
    const int min_keys = TQ_FA_MIN_TILES*TQ_FA_TILE;               // per block
    int n_blocks = std::min(std::max(1, slots/rows), std::max(1, p.n_kv/min_keys));
    n_blocks = std::max(1, std::min(n_blocks, std::min(max_blocks, TQ_FA_COMBINE_MAX)));
    int kpb = (p.n_kv + n_blocks - 1)/n_blocks;
    kpb = (kpb + TQ_FA_TILE - 1)/TQ_FA_TILE*TQ_FA_TILE;
    p.keys_per_block = kpb;
    p.n_blocks = (p.n_kv + kpb - 1)/kpb;
}

// Runs kernel k (and the merge of its blocks when there are several) for a plan of tq_fa_plan.
static void tq_fa_launch(const tq_fa_params & p, const tq_fa_kernel & k, int D, cudaStream_t stream) {
    const dim3 grid(p.n_blocks, p.n_head_kv/p.hb, p.n_q*p.n_seq);
    void * args[] = { (void *) &p };
    cudaLaunchKernel(k.fn, grid, dim3(p.hb*p.n_groups*32), args, p.smem, stream);
    if (p.n_blocks > 1) {
        const dim3 grid_c(p.n_head, p.n_q*p.n_seq);
        switch (D) {
            case  64: tq_fattn_combine< 64><<<grid_c, TQ_FA_COMBINE_THREADS, 0, stream>>>(p.partials, p.sinks, p.dst, p.n_head, p.n_blocks); break;
            case 128: tq_fattn_combine<128><<<grid_c, TQ_FA_COMBINE_THREADS, 0, stream>>>(p.partials, p.sinks, p.dst, p.n_head, p.n_blocks); break;
            default:  tq_fattn_combine<256><<<grid_c, TQ_FA_COMBINE_THREADS, 0, stream>>>(p.partials, p.sinks, p.dst, p.n_head, p.n_blocks); break;
        }
    }
}
