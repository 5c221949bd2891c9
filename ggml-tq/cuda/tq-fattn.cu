// Flash-attention decode over TQ4_0 / TQ3_0 K/V caches, in the rotated domain, on tensor cores.
//
// Why a kernel of its own: ggml-cuda's vector kernel handles one query head per block (GQA siblings re-read
// the same K/V through L2) and quantized K against a q8_1 query; its tensor-core kernels want f16 K/V.
// Here one warp reads each K/V row once for all query heads of its GQA group (up to 8, the rows of an
// m16n8k16 tile), decodes the 4/3-bit indices to f16 codebook values straight into mma fragments, and
// never leaves the rotated domain:
//   - Q is rotated once per block (random signs, 64-point Walsh-Hadamard) and scaled;
//   - S = Qrot . (codebook values), times each key's block scale d;
//   - O += softmax(S) * (d * codebook values of V), still rotated;
//   - a second kernel merges the key splits (flash-decoding) and rotates O back once per row.
// Work per key: one codebook lookup per element and two mma per 16 keys and 16 dims; the bytes read are
// the cache's own 4.25 / 3.25 bits per value.
// TQ K and V at head 128/256 in the cache's own layout go to tq-fattn-i8.cuh first (int8 scoring, about half
// the instructions per key); this kernel takes what that one refuses (head 64, other layouts).
#include "tq-fattn.cuh"
#include "tq-fattn-i8.cuh"

#include "ggml-tq.h"
#include "tq-codebook.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>

#define TQ_FA_WARPS   4   // warps per block; each warp is one key split
#define TQ_FA_TILE    16  // keys per warp iteration: the k dimension of the P.V mma
#define TQ_FA_MAX_G   8   // query heads per warp: rows 0..7 of the m16 tile
#define TQ_FA_MAX_Q   8   // query rows (tokens) this decode kernel takes; more go to the f16 conversion path

static __constant__ float tq_fa_signs[QK_TQ] = TQ_SIGNS_INIT;
static __constant__ float tq_fa_cb4[16]      = TQ_CENTROIDS_4BIT_INIT;
static __constant__ float tq_fa_cb3[8]       = TQ_CENTROIDS_3BIT_INIT;

static constexpr unsigned TQ_FA_FULL = 0xffffffffu;

// ---- helpers ----------------------------------------------------------------------------------------

// The 64-point Walsh-Hadamard transform of one block held by a warp (lane l: elements l and l+32), the same
// stages and operand order as tq-ref.c's tq_fwht64: the int8 kernel's
using tq_i8::tq_fa_fwht64;

static __device__ __forceinline__ uint32_t tq_fa_pack(float lo, float hi) {
    const half2 h = __floats2half2_rn(lo, hi);
    return *(const uint32_t *) &h;
}

// D(16x8, f32) += A(16x16, f16, rows 8..15 zero) * B(16x8, f16)
static __device__ __forceinline__ void tq_fa_mma(float & c0, float & c1, uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    GGML_UNUSED(c0); GGML_UNUSED(c1); GGML_UNUSED(a0); GGML_UNUSED(a2); GGML_UNUSED(b0); GGML_UNUSED(b1);
    NO_DEVICE_CODE; // the host side only takes this kernel on Ampere and newer
#else
    float c2 = 0.0f, c3 = 0.0f; // rows 8..15: A is zero there, the result is discarded
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3)
                 : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
#endif
}

// codebook value of index i: every lane holds one entry, the lookup is a shuffle (no memory, no conflicts)
static __device__ __forceinline__ float tq_fa_cb(float cb_lane, int i) {
    return __shfl_sync(TQ_FA_FULL, cb_lane, i);
}

template <ggml_type type> struct tq_fa_traits;
template <> struct tq_fa_traits<GGML_TYPE_TQ4_0> {
    using block = block_tq4_0;
    static __device__ __forceinline__ float cb_lane(int lane) { return tq_fa_cb4[lane & 15]; }
};
template <> struct tq_fa_traits<GGML_TYPE_TQ3_0> {
    using block = block_tq3_0;
    static __device__ __forceinline__ float cb_lane(int lane) { return tq_fa_cb3[lane & 7]; }
};

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
    __device__ __forceinline__ void idx(int kk, int & i0, int & i1, int & i2, int & i3) const {
        const uint32_t x = (kk & 1) ? u2 : u0;
        const uint32_t y = (kk & 1) ? u3 : u1;
        const int sh = (kk >> 1)*4;        // k-steps 2, 3 are the high nibbles (elements 32..63)
        i0 = (x >> sh) & 0xf;  i1 = (x >> (8 + sh)) & 0xf;
        i2 = (y >> sh) & 0xf;  i3 = (y >> (8 + sh)) & 0xf;
    }
};

template <> struct tq_fa_kbits<GGML_TYPE_TQ3_0> {
    uint32_t s0, s1, h;
    __device__ __forceinline__ void load(const block_tq3_0 * b, int t) {
        s0 = tq_fa_ld16(b->qs + 2*t);      // low 2 bits of elements 2t, 2t+1 (+16k in bits 2k)
        s1 = tq_fa_ld16(b->qs + 2*t + 8);  // elements 2t+8, 2t+9
        h  = tq_fa_ld16(b->qh + 2*t);      // third bit of elements 2t, 2t+1 (+8k in bit k)
    }
    __device__ __forceinline__ void idx(int kk, int & i0, int & i1, int & i2, int & i3) const {
        const int sl = 2*kk;               // element j has its low bits at 2*(j/16), j/16 == kk
        i0 = ((s0 >> sl)       & 3) | (((h >> (2*kk))         & 1) << 2);
        i1 = ((s0 >> (8 + sl)) & 3) | (((h >> (8 + 2*kk))     & 1) << 2);
        i2 = ((s1 >> sl)       & 3) | (((h >> (2*kk + 1))     & 1) << 2);
        i3 = ((s1 >> (8 + sl)) & 3) | (((h >> (8 + 2*kk + 1)) & 1) << 2);
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
    __device__ __forceinline__ int idx(int nd) const {
        return (w >> (8*(nd & 3) + 4*(nd >> 2))) & 0xf;
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
    __device__ __forceinline__ int idx(int nd) const {
        const int r = nd & 3, hh = nd >> 2;   // j = 4n + r + 32hh: j%16 = 4(n%4) + r, j/16 = n/4 + 2hh
        const int lo = (s >> (8*r + 2*((n >> 2) + 2*hh))) & 3;
        const int hi = (h >> (8*r + (n >> 1) + 4*hh)) & 1; // j%8 = 4(n%2) + r, j/8 = n/2 + 4hh
        return lo | (hi << 2);
    }
};

// ---- the decode kernel ---------------------------------------------------------------------------------

struct tq_fa_params : tq_i8::tq_fa_attn {
    float * partials;       // [z][head][split][M, L, O[D]]; unused with one block per row
    const float * sinks;    // per head, or null: one block per row adds them itself
    float * dst;            // [z][head][D]: written directly with one block per row
    int n_split, keys_per_split;
};

using tq_i8::tq_fa_slope;

// A split's result for the lane's row g as a record [M, L, O[D]], O in natural rotated order (the C fragment's
// columns 2t, 2t+1 of each 8-dim n-tile): the partials of the merge kernel, or ONE_BLOCK's shared memory.
template <int D>
static __device__ __forceinline__ void tq_fa_store_split(float * rec, const float M, const float L, const float (&O)[D/QK_TQ][8][2]) {
    const int t = threadIdx.x & 3;
    if (t == 0) {
        rec[0] = M;
        rec[1] = L;
    }
#pragma unroll
    for (int b = 0; b < D/QK_TQ; ++b) {
#pragma unroll
        for (int nd = 0; nd < 8; ++nd) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                rec[2 + b*QK_TQ + 4*(2*t + c) + (nd & 3) + 32*(nd >> 2)] = O[b][nd][c];
            }
        }
    }
}

// ONE_BLOCK's epilogue: the TQ_FA_WARPS splits of the block's rows merge through shared memory (the same
// arithmetic as tq_fattn_combine below over TQ_FA_WARPS splits), then each (query head, 64-block) is rotated
// back and normalized by one warp and written to dst. smem: [warp][g] records of tq_fa_store_split.
template <int D>
static __device__ __forceinline__ void tq_fa_merge_warps(const tq_fa_params & p, float * smem, const float M, const float L,
                                                         const float (&O)[D/QK_TQ][8][2], const int head0) {
    constexpr int NB = D/QK_TQ;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int g    = lane >> 2;
    auto rec = [&](int w, int gg) { return smem + (w*TQ_FA_MAX_G + gg)*(D + 2); };

    __syncthreads(); // every warp has read q_rot (the same memory)
    if (g < p.G) {
        tq_fa_store_split<D>(rec(warp, g), M, L, O);
    }
    __syncthreads();

    for (int item = warp; item < p.G*NB; item += TQ_FA_WARPS) {
        const int gg = item / NB;
        const int b  = item % NB;
        const int h  = head0 + gg;
        float Mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < TQ_FA_WARPS; ++w) {
            Mx = fmaxf(Mx, rec(w, gg)[0]);
        }
        if (p.sinks) {
            Mx = fmaxf(Mx, p.sinks[h]);
        }
        float Lx = 0.0f, v0 = 0.0f, v1 = 0.0f;
        if (Mx != -INFINITY) {
#pragma unroll
            for (int w = 0; w < TQ_FA_WARPS; ++w) {
                const float wt = expf(rec(w, gg)[0] - Mx); // an empty split has M = -inf: weight 0
                Lx += wt*rec(w, gg)[1];
                v0 += wt*rec(w, gg)[2 + b*QK_TQ + lane];
                v1 += wt*rec(w, gg)[2 + b*QK_TQ + lane + 32];
            }
            if (p.sinks) {
                Lx += expf(p.sinks[h] - Mx);
            }
        }
        const float inv_L = Lx == 0.0f ? 0.0f : 1.0f/Lx;
        tq_i8::tq_fa_write_block(p.dst + ((int64_t) blockIdx.z*p.n_head + h)*D + b*QK_TQ, v0, v1, inv_L);
    }
}

// grid: x = block of TQ_FA_WARPS key splits, y = kv head * n_groups + group, z = query row + n_q * sequence.
// MINB, the blocks per SM the register budget is cut for, trades registers (all loads of a tile in flight
// at once) against resident warps (other warps' tiles in flight): GGML_TQ_FA_MINB picks it at run time.
// ONE_BLOCK: the row's splits are this block's warps (grid x = 1); they merge in shared memory and the block
// writes dst, with no partials and no merge launch (short rows: the merge kernel costs more than the keys).
template <int D, ggml_type type_K, ggml_type type_V, int MINB, bool ONE_BLOCK>
__launch_bounds__(TQ_FA_WARPS*32, MINB)
static __global__ void tq_fattn_decode(const tq_fa_params p) {
    tq_pdl_wait(); // launched early (tq_cuda_launch): Q, K and V come from the kernels before
    tq_pdl_trigger();
    using block_K = typename tq_fa_traits<type_K>::block;
    using block_V = typename tq_fa_traits<type_V>::block;
    constexpr int NB = D/QK_TQ; // blocks per row

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int g    = lane >> 2;   // row of the m16 tile this lane holds: query head g of the group
    const int t    = lane & 3;

    const int kv_head = blockIdx.y / p.n_groups;
    const int group   = blockIdx.y % p.n_groups;
    const int iq      = blockIdx.z % p.n_q;
    const int seq     = blockIdx.z / p.n_q;
    const int head0   = kv_head*p.gqa + group*p.G; // first query head of this warp's rows

    // Q of the group, rotated and scaled once, shared by the block's warps; with ONE_BLOCK the same memory
    // later holds the warps' O for the merge
    __shared__ float smem[ONE_BLOCK ? TQ_FA_WARPS*TQ_FA_MAX_G*(D + 2) : TQ_FA_MAX_G*D];
    float (*q_rot)[D] = (float (*)[D]) smem;
    const float q_scale = p.logit_softcap != 0.0f ? p.scale/p.logit_softcap : p.scale;
    for (int gg = warp; gg < p.G; gg += TQ_FA_WARPS) {
        const float * q = (const float *) (p.Q + iq*p.nbq1 + (head0 + gg)*p.nbq2 + seq*p.nbq3);
#pragma unroll
        for (int b = 0; b < NB; ++b) {
            float v0 = q[b*QK_TQ + lane]*tq_fa_signs[lane];
            float v1 = q[b*QK_TQ + lane + 32]*tq_fa_signs[lane + 32];
            tq_fa_fwht64(v0, v1);
            q_rot[gg][b*QK_TQ + lane]      = v0*0.125f*q_scale;
            q_rot[gg][b*QK_TQ + lane + 32] = v1*0.125f*q_scale;
        }
    }
    __syncthreads();

    // A fragments of Q (rows 8..15 are zero, not stored)
    uint32_t qa0[D/16], qa2[D/16];
#pragma unroll
    for (int ks = 0; ks < D/16; ++ks) {
        const int c = ks*16 + 2*t;
        qa0[ks] = g < p.G ? tq_fa_pack(q_rot[g][c],     q_rot[g][c + 1]) : 0u;
        qa2[ks] = g < p.G ? tq_fa_pack(q_rot[g][c + 8], q_rot[g][c + 9]) : 0u;
    }

    const float cbK = tq_fa_traits<type_K>::cb_lane(lane);
    const float cbV = tq_fa_traits<type_V>::cb_lane(lane);
    const int   h   = head0 + g;
    const float slope = g < p.G ? tq_fa_slope(p, h) : 0.0f;

    const int split   = blockIdx.x*TQ_FA_WARPS + warp;
    const int k_begin = split*p.keys_per_split;
    const int k_end   = min(k_begin + p.keys_per_split, p.n_kv);

    const char * K = p.K + kv_head*p.nbk2 + seq*p.nbk3;
    const char * V = p.V + kv_head*p.nbv2 + seq*p.nbv3;
    const half * mask = p.mask ? (const half *) (p.mask + iq*p.nbm1 + (seq % p.mask_ne3)*p.nbm3) : nullptr;

    float M = -INFINITY, L = 0.0f;
    float O[NB][8][2];
#pragma unroll
    for (int b = 0; b < NB; ++b) {
#pragma unroll
        for (int nd = 0; nd < 8; ++nd) {
            O[b][nd][0] = O[b][nd][1] = 0.0f;
        }
    }

    for (int k0 = k_begin; k0 < k_end; k0 += TQ_FA_TILE) {
        // ---- loads first, so that they are all in flight before the first use
        tq_fa_kbits<type_K> kb[2][NB];
        half dK[2][NB][2];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            const int kr = min(k0 + nt*8 + g, p.n_kv - 1);         // B operand: key g of the n-tile
            const block_K * rowb = (const block_K *) (K + kr*p.nbk1);
            // C layout: keys 2t, 2t+1 of the n-tile, whose block scales multiply this lane's scores
            const block_K * rc0 = (const block_K *) (K + min(k0 + nt*8 + 2*t,     p.n_kv - 1)*p.nbk1);
            const block_K * rc1 = (const block_K *) (K + min(k0 + nt*8 + 2*t + 1, p.n_kv - 1)*p.nbk1);
#pragma unroll
            for (int b = 0; b < NB; ++b) {
                kb[nt][b].load(rowb + b, t);
                dK[nt][b][0] = *(const half *) &rc0[b].d;
                dK[nt][b][1] = *(const half *) &rc1[b].d;
            }
        }
        // V: keys 2t, 2t+1 (b0) and 2t+8, 2t+9 (b1) of the tile, column g of every n-tile
        tq_fa_vbits<type_V> vb[4][NB];
        half dV[4][NB];
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            const int kv = min(k0 + 2*t + (kk & 1) + 8*(kk >> 1), p.n_kv - 1);
            const block_V * row = (const block_V *) (V + kv*p.nbv1);
#pragma unroll
            for (int b = 0; b < NB; ++b) {
                vb[kk][b].load(row + b, g);
                dV[kk][b] = *(const half *) &row[b].d;
            }
        }
        float mv[2][2];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const int kc = k0 + nt*8 + 2*t + c;
                mv[nt][c] = kc >= k_end ? -INFINITY : (mask ? slope*__half2float(mask[kc]) : 0.0f);
            }
        }

        // ---- S = Q K^T for the 16 keys: two n-tiles of 8 keys, block by block (each has its own d)
        float s[2][2];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            s[nt][0] = s[nt][1] = 0.0f;
#pragma unroll
            for (int b = 0; b < NB; ++b) {
                float c0 = 0.0f, c1 = 0.0f;
#pragma unroll
                for (int kk = 0; kk < 4; ++kk) {
                    int i0, i1, i2, i3;
                    kb[nt][b].idx(kk, i0, i1, i2, i3);
                    const uint32_t b0 = tq_fa_pack(tq_fa_cb(cbK, i0), tq_fa_cb(cbK, i1));
                    const uint32_t b1 = tq_fa_pack(tq_fa_cb(cbK, i2), tq_fa_cb(cbK, i3));
                    tq_fa_mma(c0, c1, qa0[b*4 + kk], qa2[b*4 + kk], b0, b1);
                }
                s[nt][0] += __half2float(dK[nt][b][0])*c0;
                s[nt][1] += __half2float(dK[nt][b][1])*c1;
            }
        }

        // ---- online softmax over this lane's row (query head g), 4 keys here, 16 across the 4 lanes of g
        float tile_max = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                float x = s[nt][c];
                if (p.logit_softcap != 0.0f) {
                    x = p.logit_softcap*tanhf(x);
                }
                x += mv[nt][c];
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
            L = L*alpha + sum;
            M = M_new;
        }

        // ---- O = O*alpha + P V, block by block: P is scaled by each key's d of that block
#pragma unroll
        for (int b = 0; b < NB; ++b) {
            const uint32_t pa0 = tq_fa_pack(pr[0][0]*__half2float(dV[0][b]), pr[0][1]*__half2float(dV[1][b]));
            const uint32_t pa2 = tq_fa_pack(pr[1][0]*__half2float(dV[2][b]), pr[1][1]*__half2float(dV[3][b]));
#pragma unroll
            for (int nd = 0; nd < 8; ++nd) {
                O[b][nd][0] *= alpha;
                O[b][nd][1] *= alpha;
                const uint32_t b0 = tq_fa_pack(tq_fa_cb(cbV, vb[0][b].idx(nd)), tq_fa_cb(cbV, vb[1][b].idx(nd)));
                const uint32_t b1 = tq_fa_pack(tq_fa_cb(cbV, vb[2][b].idx(nd)), tq_fa_cb(cbV, vb[3][b].idx(nd)));
                tq_fa_mma(O[b][nd][0], O[b][nd][1], pa0, pa2, b0, b1);
            }
        }
    }

    if constexpr (ONE_BLOCK) {
        tq_fa_merge_warps<D>(p, smem, M, L, O, head0);
        return;
    }

    // ---- this split's partial result: [z][head][split] records
    if (g < p.G) {
        tq_fa_store_split<D>(p.partials + (((int64_t) blockIdx.z*p.n_head + h)*p.n_split + split)*(D + 2), M, L, O);
    }
}

// Merges the splits of one (query row, head), adds the sink, rotates back and normalizes. A block of
// TQ_FA_COMBINE_WARPS warps per row: the splits are read by all warps at once (a single warp walking
// hundreds of splits one after another waits on memory for each of them).
#define TQ_FA_COMBINE_WARPS 4

template <int D>
__launch_bounds__(TQ_FA_COMBINE_WARPS*32)
static __global__ void tq_fattn_combine(const float * partials, const float * sinks,
                                        float * dst, const int n_head, const int n_split) {
    tq_pdl_wait(); // launched early (tq_cuda_launch; no __restrict__ then, tq-fattn-i8.cuh's merge says why)
    tq_pdl_trigger();
    constexpr int NW = TQ_FA_COMBINE_WARPS;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int h = blockIdx.x;
    const int z = blockIdx.y; // query row + n_q * sequence: dst rows are ordered (z, head)
    const float * part = partials + ((int64_t) z*n_head + h)*n_split*(D + 2);

    __shared__ float s_max[NW];
    __shared__ float s_L[NW];
    __shared__ float s_O[NW][D];

    float m = -INFINITY;
    for (int s = threadIdx.x; s < n_split; s += NW*32) {
        m = fmaxf(m, part[s*(D + 2)]);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        m = fmaxf(m, __shfl_xor_sync(TQ_FA_FULL, m, off));
    }
    if (lane == 0) {
        s_max[warp] = m;
    }
    __syncthreads();
    float M = s_max[0];
#pragma unroll
    for (int w = 1; w < NW; ++w) {
        M = fmaxf(M, s_max[w]);
    }
    if (sinks) {
        M = fmaxf(M, sinks[h]);
    }

    float o[D/32];
#pragma unroll
    for (int i = 0; i < D/32; ++i) {
        o[i] = 0.0f;
    }
    float L = 0.0f;
    if (M != -INFINITY) {
#pragma unroll 4
        for (int s = warp; s < n_split; s += NW) {
            const float * ps = part + s*(D + 2);
            const float w = expf(ps[0] - M); // an empty split has M = -inf: weight 0
            L += w*ps[1];
#pragma unroll
            for (int b = 0; b < D/QK_TQ; ++b) {
                o[2*b]     += w*ps[2 + b*QK_TQ + lane];
                o[2*b + 1] += w*ps[2 + b*QK_TQ + lane + 32];
            }
        }
    }
#pragma unroll
    for (int b = 0; b < D/QK_TQ; ++b) {
        s_O[warp][b*QK_TQ + lane]      = o[2*b];
        s_O[warp][b*QK_TQ + lane + 32] = o[2*b + 1];
    }
    if (lane == 0) {
        s_L[warp] = L;
    }
    __syncthreads();
    if (warp != 0) {
        return;
    }
    L = 0.0f;
#pragma unroll
    for (int w = 0; w < NW; ++w) {
        L += s_L[w];
    }
    if (sinks && M != -INFINITY) {
        L += expf(sinks[h] - M);
    }
    const float inv_L = L == 0.0f ? 0.0f : 1.0f/L;
    float * out = dst + ((int64_t) z*n_head + h)*D;
#pragma unroll
    for (int b = 0; b < D/QK_TQ; ++b) {
        float v0 = 0.0f, v1 = 0.0f;
#pragma unroll
        for (int w = 0; w < NW; ++w) {
            v0 += s_O[w][b*QK_TQ + lane];
            v1 += s_O[w][b*QK_TQ + lane + 32];
        }
        tq_fa_fwht64(v0, v1);
        out[b*QK_TQ + lane]      = v0*0.125f*tq_fa_signs[lane]*inv_L;
        out[b*QK_TQ + lane + 32] = v1*0.125f*tq_fa_signs[lane + 32]*inv_L;
    }
}

// ---- host side -----------------------------------------------------------------------------------------

static bool tq_fa_is_tq(ggml_type t) {
    return t == GGML_TYPE_TQ4_0 || t == GGML_TYPE_TQ3_0;
}

bool ggml_cuda_flash_attn_ext_tq_supported(int device, const ggml_tensor * dst) {
    if (!ampere_mma_available(ggml_cuda_info().devices[device].cc)) {
        return false; // m16n8k16 f16 mma: NVIDIA Ampere and newer
    }
    const ggml_tensor * Q = dst->src[0];
    const ggml_tensor * K = dst->src[1];
    const ggml_tensor * V = dst->src[2];
    const ggml_tensor * mask = dst->src[3];
    const int64_t D = K->ne[0];
    return tq_fa_is_tq(K->type) && tq_fa_is_tq(V->type) && Q->type == GGML_TYPE_F32 &&
        (D == 64 || D == 128 || D == 256) && V->ne[0] == D && Q->ne[0] == D &&
        Q->ne[1] <= TQ_FA_MAX_Q && Q->ne[2] % K->ne[2] == 0 && K->ne[2] == V->ne[2] &&
        (mask == nullptr || (mask->type == GGML_TYPE_F16 && mask->ne[2] == 1)) &&
        K->nb[0] == ggml_type_size(K->type) && V->nb[0] == ggml_type_size(V->type) && Q->nb[0] == sizeof(float);
}

template <int D, ggml_type type_K, ggml_type type_V>
static void tq_fa_launch(const tq_fa_params & p, dim3 grid, cudaStream_t stream) {
    static const int minb = [] {
        const char * e = getenv("GGML_TQ_FA_MINB");
        return e ? std::min(4, std::max(2, atoi(e))) : 4; // 4: measured best on the H100 (results/cuda)
    }();
    if (grid.x == 1) { // one block per row (the short rows): the default MINB only
        tq_cuda_launch(tq_fattn_decode<D, type_K, type_V, 4, true>, grid, TQ_FA_WARPS*32, 0, stream, p);
        return;
    }
    switch (minb) {
        case 2:  tq_cuda_launch(tq_fattn_decode<D, type_K, type_V, 2, false>, grid, TQ_FA_WARPS*32, 0, stream, p); break;
        case 4:  tq_cuda_launch(tq_fattn_decode<D, type_K, type_V, 4, false>, grid, TQ_FA_WARPS*32, 0, stream, p); break;
        default: tq_cuda_launch(tq_fattn_decode<D, type_K, type_V, 3, false>, grid, TQ_FA_WARPS*32, 0, stream, p); break;
    }
}

template <int D>
static void tq_fa_launch_types(ggml_type tk, ggml_type tv, const tq_fa_params & p, dim3 grid, cudaStream_t stream) {
    if (tk == GGML_TYPE_TQ4_0 && tv == GGML_TYPE_TQ4_0) { tq_fa_launch<D, GGML_TYPE_TQ4_0, GGML_TYPE_TQ4_0>(p, grid, stream); return; }
    if (tk == GGML_TYPE_TQ4_0 && tv == GGML_TYPE_TQ3_0) { tq_fa_launch<D, GGML_TYPE_TQ4_0, GGML_TYPE_TQ3_0>(p, grid, stream); return; }
    if (tk == GGML_TYPE_TQ3_0 && tv == GGML_TYPE_TQ4_0) { tq_fa_launch<D, GGML_TYPE_TQ3_0, GGML_TYPE_TQ4_0>(p, grid, stream); return; }
    tq_fa_launch<D, GGML_TYPE_TQ3_0, GGML_TYPE_TQ3_0>(p, grid, stream);
}

// The int8-scoring kernel (tq-fattn-i8.cuh) where it takes the node: TQ4_0 / TQ3_0 K and V, head 128 or 256,
// the cache's rows aligned for its copies, at least GGML_TQ_FA_I8_MIN_KV keys (default 512: below, its fixed
// cost, the query's int8 rounding and the copy ring, outweighs what it saves per key. llama-bench tg128, tq4_0,
// this kernel against the one below: 296.7 against 301.0 t/s at depth 0 (256 keys), 297.4 against 294.6 at
// depth 512 (768 keys); results/cuda/2026-11-25-final/min-kv).
// GGML_TQ_FA_I8=0 turns it off (the kernel below then runs), for comparisons. Returns false where it did not run.
static bool tq_fa_try_i8(ggml_backend_cuda_context & ctx, ggml_tensor * dst, const tq_fa_params & p4, int n_seq) {
    static const bool enabled = [] {
        const char * e = getenv("GGML_TQ_FA_I8");
        return !e || atoi(e) != 0;
    }();
    static const int min_kv = [] {
        const char * e = getenv("GGML_TQ_FA_I8_MIN_KV");
        return e ? std::max(0, atoi(e)) : 512;
    }();
    const ggml_tensor * K = dst->src[1];
    const ggml_tensor * V = dst->src[2];
    const ggml_tensor * sinks = dst->src[4];
    const int D = (int) K->ne[0];
    if (!enabled || (D != 128 && D != 256) || p4.n_kv < min_kv) {
        return false;
    }
    tq_i8::tq_fa_params p = {};
    static_cast<tq_i8::tq_fa_attn &>(p) = p4;
    p.sinks = sinks ? (const float *) sinks->data : nullptr;
    p.dst = (float *) dst->data;
    p.n_seq = n_seq;
    if (!tq_i8::tq_fa_layout(p, D, K->type, V->type)) {
        return false;
    }
    const tq_i8::tq_fa_kernel k = tq_i8::tq_fa_select(D, K->type, V->type, TQ_I8_MINB);
    // blocks the GPU holds at once, per device, kernel and shared-memory size (the occupancy query once each;
    // backends of several GPUs may run on several threads)
    static std::mutex slots_mutex;
    static std::map<std::tuple<int, const void *, int>, int> slots_seen;
    int slots;
    {
        std::lock_guard<std::mutex> lock(slots_mutex);
        const auto key = std::make_tuple(ctx.device, k.fn, p.smem);
        auto it = slots_seen.find(key);
        if (it == slots_seen.end()) {
            it = slots_seen.emplace(key, tq_i8::tq_fa_slots(k, p, ggml_cuda_info().devices[ctx.device].nsm)).first;
        }
        slots = it->second;
    }
    tq_i8::tq_fa_plan(p, slots, 256);
    ggml_cuda_pool_alloc<float> partials(ctx.pool());
    if (p.n_blocks > 1) {
        p.partials = partials.alloc(tq_i8::tq_fa_partials_floats(p, D));
    }
    tq_i8::tq_fa_launch(p, k, D, ctx.stream());
    CUDA_CHECK(cudaGetLastError());
    return true;
}

void ggml_cuda_flash_attn_ext_tq(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    const ggml_tensor * Q = dst->src[0];
    const ggml_tensor * K = dst->src[1];
    const ggml_tensor * V = dst->src[2];
    const ggml_tensor * mask  = dst->src[3];
    const ggml_tensor * sinks = dst->src[4];
    GGML_ASSERT(ggml_cuda_flash_attn_ext_tq_supported(ctx.device, dst));
    GGML_ASSERT(!sinks || sinks->type == GGML_TYPE_F32);

    const int D = (int) K->ne[0];
    tq_fa_params p = {};
    p.Q = (const char *) Q->data; p.K = (const char *) K->data; p.V = (const char *) V->data;
    p.mask = mask ? (const char *) mask->data : nullptr;
    memcpy(&p.scale,         (const float *) dst->op_params + 0, sizeof(float));
    memcpy(&p.max_bias,      (const float *) dst->op_params + 1, sizeof(float));
    memcpy(&p.logit_softcap, (const float *) dst->op_params + 2, sizeof(float));
    p.n_head      = (int) Q->ne[2];
    p.n_head_log2 = 1u << (uint32_t) floorf(log2f((float) p.n_head));
    p.m0 = powf(2.0f, -(p.max_bias       ) / p.n_head_log2);
    p.m1 = powf(2.0f, -(p.max_bias / 2.0f) / p.n_head_log2);
    p.n_q       = (int) Q->ne[1];
    p.n_kv      = (int) K->ne[1];
    p.n_head_kv = (int) K->ne[2];
    p.gqa       = p.n_head / p.n_head_kv;
    p.G = std::min(p.gqa, TQ_FA_MAX_G);
    while (p.gqa % p.G != 0) {
        p.G--;
    }
    p.n_groups = p.gqa / p.G;
    p.nbq1 = Q->nb[1]; p.nbq2 = Q->nb[2]; p.nbq3 = Q->nb[3];
    p.nbk1 = K->nb[1]; p.nbk2 = K->nb[2]; p.nbk3 = K->nb[3];
    p.nbv1 = V->nb[1]; p.nbv2 = V->nb[2]; p.nbv3 = V->nb[3];
    p.nbm1 = mask ? mask->nb[1] : 0; p.nbm3 = mask ? mask->nb[3] : 0; p.mask_ne3 = mask ? (int) mask->ne[3] : 1;

    const int n_seq = (int) Q->ne[3];
    if (tq_fa_try_i8(ctx, dst, p, n_seq)) {
        return;
    }
    const int rows  = p.n_head_kv*p.n_groups*p.n_q*n_seq; // warps that share nothing

    // Key splits (flash-decoding): enough warps to fill the GPU twice over, each a whole number of 16-key
    // tiles, and at most max_split splits per row so that the partial results (G*(D+2) floats per split,
    // written and read back through L2) stay small against the K/V bytes.
    static const int max_split = [] {
        const char * e = getenv("GGML_TQ_FA_MAX_SPLIT");
        return e ? std::max(TQ_FA_WARPS, atoi(e)) : 256;
    }();
    // Rows of fewer keys than GGML_TQ_FA_ONE_BLOCK_KV run as one block each, its warps the splits, merged in
    // the block (no partials, no merge launch; also whenever the split below comes to one block per row, e.g.
    // 64 keys or fewer, and then with the default MINB whatever GGML_TQ_FA_MINB says). Forced off by default: on the H100 it did not pay once the kernels
    // launch early (tq-pdl.cuh): llama-bench tg128 tq4_0 at depth 0, 306.8 with it from 384 keys against
    // 310.8 without (results/cuda/2026-11-26/depth0-*.md); the merge it saves is cheap once launched early.
    static const int one_block_kv = [] {
        const char * e = getenv("GGML_TQ_FA_ONE_BLOCK_KV");
        return e ? std::max(0, atoi(e)) : 0;
    }();
    const int nsm = ggml_cuda_info().devices[ctx.device].nsm;
    const int want_split = p.n_kv < one_block_kv ? TQ_FA_WARPS : std::max(1, nsm*32/rows); // else about 8 blocks of 4 warps per SM
    int kps = std::max((p.n_kv + want_split - 1)/want_split, (p.n_kv + max_split - 1)/max_split);
    kps = std::max(TQ_FA_TILE, (kps + TQ_FA_TILE - 1)/TQ_FA_TILE*TQ_FA_TILE);
    int n_split = (p.n_kv + kps - 1)/kps;
    n_split = (n_split + TQ_FA_WARPS - 1)/TQ_FA_WARPS*TQ_FA_WARPS;
    p.n_split = n_split;
    p.keys_per_split = kps;
    p.sinks = sinks ? (const float *) sinks->data : nullptr;
    p.dst   = (float *) dst->data;

    ggml_cuda_pool_alloc<float> partials(ctx.pool());
    if (n_split > TQ_FA_WARPS) {
        p.partials = partials.alloc((size_t) p.n_q*n_seq*p.n_head*n_split*(D + 2));
    }

    cudaStream_t stream = ctx.stream();
    const dim3 grid(n_split/TQ_FA_WARPS, p.n_head_kv*p.n_groups, p.n_q*n_seq);
    switch (D) {
        case  64: tq_fa_launch_types< 64>(K->type, V->type, p, grid, stream); break;
        case 128: tq_fa_launch_types<128>(K->type, V->type, p, grid, stream); break;
        case 256: tq_fa_launch_types<256>(K->type, V->type, p, grid, stream); break;
        default: GGML_ABORT("TQ flash attention: head size %d not supported (64, 128, 256)", D);
    }
    CUDA_CHECK(cudaGetLastError());
    if (grid.x == 1) {
        return; // merged in the block
    }

    const dim3 grid_c(p.n_head, p.n_q*n_seq);
    const float * sinks_d = sinks ? (const float *) sinks->data : nullptr;
    float * out = (float *) dst->data;
    switch (D) {
        case  64: tq_cuda_launch(tq_fattn_combine< 64>, grid_c, TQ_FA_COMBINE_WARPS*32, 0, stream, (const float *) p.partials, sinks_d, out, p.n_head, n_split); break;
        case 128: tq_cuda_launch(tq_fattn_combine<128>, grid_c, TQ_FA_COMBINE_WARPS*32, 0, stream, (const float *) p.partials, sinks_d, out, p.n_head, n_split); break;
        case 256: tq_cuda_launch(tq_fattn_combine<256>, grid_c, TQ_FA_COMBINE_WARPS*32, 0, stream, (const float *) p.partials, sinks_d, out, p.n_head, n_split); break;
    }
    CUDA_CHECK(cudaGetLastError());
}
