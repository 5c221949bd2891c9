// Flash-attention decode over TQ K/V (or q8_0 K, TQ V) in any layout, on the f16 tensor cores: the kernel that
// tq-fattn.cu runs where tq-fattn-mma-i8.cuh's does not (head 64, heads not side by side in a key's row, short
// rows, TQ6_0 K or V).
//
// Why a kernel of its own: ggml-cuda's vector kernel handles one query head per block (GQA siblings re-read
// the same K/V through L2) and quantized K against a q8_1 query; its tensor-core kernels want f16 K/V.
// Here one warp reads each K/V row once for all query heads of its GQA group (up to 8, the rows of an
// m16n8k16 tile) and decodes the 6/4/3/2-bit indices to f16 codebook values straight into mma fragments:
//   - Q is rotated once per block and scaled;
//   - S = Qrot . (codebook values), times each key's block scale d;
//   - O += softmax(S) * (d * codebook values of V), still rotated;
//   - each warp is one key split (flash-decoding): tq_fattn_combine merges them and rotates O back.
// Work per key: one codebook lookup per element and two mma per 16 keys and 16 dims; the bytes read are
// the cache's own 4.25 / 3.25 / 2.25 / 6.25 bits per value (8.5 for q8_0 keys). A 6-bit index is one shuffle
// too, the 64-entry codebook being 32 lanes and their mirror (tq-common.cuh, tq_cuda_codebook_lookup).
//
// Keys may also be upstream's q8_0 beside TQ values (-ctk q8_0 -ctv tq4_0: the keys carry a TQ cache's loss
// at long context, the values little of it). Their int8 values are exact in f16 and go into the same fragments
// against the query as given (upstream's own Hadamard rotation, if any, is already in Q and K); only V and the
// output live in the rotated domain.
#pragma once

#include "tq-fattn-common.cuh"

#define TQ_FA_F16_WARPS     4   // warps per block; each warp is one key split
#define TQ_FA_F16_TILE      16  // keys per warp iteration: the k dimension of the P.V mma
#define TQ_FA_F16_MINB      4   // blocks per SM the registers are cut for: more resident warps beat more loads in flight per warp
#define TQ_FA_F16_MAX_SPLIT 256 // key splits per row at most: their partial results go through L2 and back

struct tq_fa_f16_params : tq_fa_params {
    int n_split, keys_per_split;
};

static __device__ __forceinline__ uint32_t tq_fa_pack(float lo, float hi) {
    const half2 h = __floats2half2_rn(lo, hi);
    return *(const uint32_t *) &h;
}

// D(16x8, f32) += A(16x16, f16) * B(16x8, f16) with rows 8..15 of A zero: only rows 0..7 (c0, c1) are kept
static __device__ __forceinline__ void tq_fa_mma_rows8(float & c0, float & c1, uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
    float c[4] = { c0, c1, 0.0f, 0.0f };
    tq_fa_mma(c, a0, 0u, a2, 0u, b0, b1);
    c0 = c[0];
    c1 = c[1];
}

static __device__ __forceinline__ uint32_t tq_fa_ld16(const uint8_t * p) {
    return *(const uint16_t *) p;
}

// ---- K: the B fragment of S = Q K^T --------------------------------------------------------------------
// For k-step kk (dims kk*16 .. +15 of a 64-dim block) lane (g = lane/4, t = lane%4) needs elements
// j0 = kk*16 + 2t, j0+1 (b0) and j0+8, j0+9 (b1) of its key's block. The raw bits for all four k-steps
// are loaded once per block (kbits), the indices are cut out per k-step (tq_fa_kfrag). A TQ key has one
// scale per 64 dims, a q8_0 key two (N_SCALE: k-steps 0, 1 and 2, 3).
template <ggml_type type> struct tq_fa_kbits;

template <> struct tq_fa_kbits<GGML_TYPE_TQ4_0> {
    static constexpr int N_SCALE = 1;
    uint32_t u0, u1, u2, u3;
    __device__ __forceinline__ void load(const char * row, int blk, int t) {
        const block_tq4_0 * b = (const block_tq4_0 *) row + blk;
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
    static constexpr int N_SCALE = 1;
    uint32_t s0, s1, h;
    __device__ __forceinline__ void load(const char * row, int blk, int t) {
        const block_tq3_0 * b = (const block_tq3_0 *) row + blk;
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

template <> struct tq_fa_kbits<GGML_TYPE_TQV2_0> { // tq3_0's low bits alone
    static constexpr int N_SCALE = 1;
    uint32_t s0, s1;
    __device__ __forceinline__ void load(const char * row, int blk, int t) {
        const block_tqv2_0 * b = (const block_tqv2_0 *) row + blk;
        s0 = tq_fa_ld16(b->qs + 2*t);      // elements 2t, 2t+1 (+16k in bits 2k)
        s1 = tq_fa_ld16(b->qs + 2*t + 8);  // elements 2t+8, 2t+9
    }
    __device__ __forceinline__ void idx(int kk, int & i0, int & i1, int & i2, int & i3) const {
        const int sl = 2*kk;
        i0 = (s0 >> sl) & 3;  i1 = (s0 >> (8 + sl)) & 3;
        i2 = (s1 >> sl) & 3;  i3 = (s1 >> (8 + sl)) & 3;
    }
};

// TQ6_0: the low 4 bits as TQ4_0's qs, the high 2 bits as TQV2_0's qs (in qh)
template <> struct tq_fa_kbits<GGML_TYPE_TQ6_0> {
    static constexpr int N_SCALE = 1;
    uint32_t u0, u1, u2, u3, h0, h1;
    __device__ __forceinline__ void load(const char * row, int blk, int t) {
        const block_tq6_0 * b = (const block_tq6_0 *) row + blk;
        u0 = tq_fa_ld16(b->qs + 2*t);      // low 4 bits, as TQ4_0
        u1 = tq_fa_ld16(b->qs + 2*t + 8);
        u2 = tq_fa_ld16(b->qs + 2*t + 16);
        u3 = tq_fa_ld16(b->qs + 2*t + 24);
        h0 = tq_fa_ld16(b->qh + 2*t);      // high 2 bits of elements 2t, 2t+1 (+16k in bits 2k), as TQV2_0
        h1 = tq_fa_ld16(b->qh + 2*t + 8);  // elements 2t+8, 2t+9
    }
    __device__ __forceinline__ void idx(int kk, int & i0, int & i1, int & i2, int & i3) const {
        const uint32_t x = (kk & 1) ? u2 : u0;
        const uint32_t y = (kk & 1) ? u3 : u1;
        const int sh = (kk >> 1)*4, sl = 2*kk;
        i0 = ((x >> sh)       & 0xf) | (((h0 >> sl)       & 3) << 4);
        i1 = ((x >> (8 + sh)) & 0xf) | (((h0 >> (8 + sl)) & 3) << 4);
        i2 = ((y >> sh)       & 0xf) | (((h1 >> sl)       & 3) << 4);
        i3 = ((y >> (8 + sh)) & 0xf) | (((h1 >> (8 + sl)) & 3) << 4);
    }
};

// upstream's q8_0 (the values themselves, not indices): 64 dims are two of its 32-value blocks; k-step kk reads
// block kk/2, bytes 16(kk%2) + 2t, +1 (b0) and + 8, + 9 (b1), an int8 pair each. The 16-bit loads are aligned:
// a q8_0 row, its heads and its blocks (34 bytes, qs at byte 2) all start on even bytes.
template <> struct tq_fa_kbits<GGML_TYPE_Q8_0> {
    static constexpr int N_SCALE = 2;
    uint32_t u[4]; // k-step kk: its b0 pair in the low half, its b1 pair in the high half
    __device__ __forceinline__ void load(const char * row, int blk, int t) {
        const block_q8_0 * b = (const block_q8_0 *) row + 2*blk;
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            const uint8_t * qs = (const uint8_t *) b[kk >> 1].qs + 16*(kk & 1) + 2*t;
            u[kk] = tq_fa_ld16(qs) | (tq_fa_ld16(qs + 8) << 16);
        }
    }
};

// k-step kk's B fragment (b0, b1) of a key: codebook values of its indices, or q8_0's integers
template <ggml_type type>
static __device__ __forceinline__ void tq_fa_kfrag(const tq_fa_kbits<type> & kb, int kk, float codebook_lane, uint32_t & b0, uint32_t & b1) {
    if constexpr (type == GGML_TYPE_Q8_0) {
        const uint32_t x = kb.u[kk];
        b0 = tq_fa_pack((float) (int8_t) (x      ), (float) (int8_t) (x >>  8));
        b1 = tq_fa_pack((float) (int8_t) (x >> 16), (float) (int8_t) (x >> 24));
    } else {
        constexpr int bits = ggml_tq_cuda_bits(type);
        int i0, i1, i2, i3;
        kb.idx(kk, i0, i1, i2, i3);
        b0 = tq_fa_pack(tq_cuda_codebook_lookup<bits>(codebook_lane, i0), tq_cuda_codebook_lookup<bits>(codebook_lane, i1));
        b1 = tq_fa_pack(tq_cuda_codebook_lookup<bits>(codebook_lane, i2), tq_cuda_codebook_lookup<bits>(codebook_lane, i3));
    }
}

// scale sc (< N_SCALE) of a key's 64-dim block blk
template <ggml_type type>
static __device__ __forceinline__ half tq_fa_kscale(const char * row, int blk, int sc) {
    if constexpr (type == GGML_TYPE_Q8_0) {
        return *(const half *) &((const block_q8_0 *) row)[2*blk + sc].d;
    } else {
        using block = typename tq_cuda_type<ggml_tq_cuda_bits(type)>::block;
        return *(const half *) &((const block *) row)[blk].d;
    }
}

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

template <> struct tq_fa_vbits<GGML_TYPE_TQV2_0> {
    uint32_t s; // qs bytes 4(n%4) .. +3
    int sh;     // 2(n/4): element j = 4n + r + 32hh has its bits at 2(j/16) = sh + 4hh of byte j%16 = 4(n%4) + r
    __device__ __forceinline__ void load(const block_tqv2_0 * b, int n) {
        s  = tq_fa_ld16(b->qs + 4*(n & 3)) | (tq_fa_ld16(b->qs + 4*(n & 3) + 2) << 16);
        sh = 2*(n >> 2);
    }
    __device__ __forceinline__ int idx(int nd) const {
        return (s >> (8*(nd & 3) + sh + 4*(nd >> 2))) & 3;
    }
};

template <> struct tq_fa_vbits<GGML_TYPE_TQ6_0> {
    uint32_t w; // qs bytes 4n .. 4n+3: the low 4 bits, as TQ4_0
    uint32_t s; // qh bytes 4(n%4) .. +3: the high 2 bits, as TQV2_0's qs
    int sh;     // 2(n/4)
    __device__ __forceinline__ void load(const block_tq6_0 * b, int n) {
        w  = tq_fa_ld16(b->qs + 4*n)       | (tq_fa_ld16(b->qs + 4*n + 2)       << 16);
        s  = tq_fa_ld16(b->qh + 4*(n & 3)) | (tq_fa_ld16(b->qh + 4*(n & 3) + 2) << 16);
        sh = 2*(n >> 2);
    }
    __device__ __forceinline__ int idx(int nd) const {
        const int r = 8*(nd & 3) + 4*(nd >> 2);
        return ((w >> r) & 0xf) | (((s >> (r + sh)) & 3) << 4);
    }
};

// ---- the kernel -------------------------------------------------------------------------------------

// grid: x = block of TQ_FA_F16_WARPS key splits, y = kv head * n_groups + group, z = query row + n_q * sequence.
template <int D, ggml_type type_K, ggml_type type_V>
__launch_bounds__(TQ_FA_F16_WARPS*32, TQ_FA_F16_MINB)
static __global__ void tq_fattn_mma_f16(const tq_fa_f16_params p) {
    ggml_cuda_pdl_sync(); // launched early (ggml_cuda_kernel_launch): Q, K and V come from the kernels before
    ggml_cuda_pdl_lc();
    constexpr int bits_K = ggml_tq_cuda_bits(type_K); // 0: q8_0 keys
    constexpr int bits_V = ggml_tq_cuda_bits(type_V);
    constexpr int NSC    = tq_fa_kbits<type_K>::N_SCALE;
    using block_V = typename tq_cuda_type<bits_V>::block;
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

    // Q of the group in the keys' domain (rotated for TQ keys, as given for q8_0 ones) and scaled, once, shared
    // by the block's warps
    __shared__ float q_k[TQ_FA_MAX_G][D];
    const float q_scale = p.logit_softcap != 0.0f ? p.scale/p.logit_softcap : p.scale;
    for (int gg = warp; gg < p.G; gg += TQ_FA_F16_WARPS) {
        const float * q = (const float *) (p.Q + iq*p.nbq1 + (head0 + gg)*p.nbq2 + seq*p.nbq3);
#pragma unroll
        for (int b = 0; b < NB; ++b) {
            if constexpr (bits_K == 0) {
                q_k[gg][b*QK_TQ + lane]      = q[b*QK_TQ + lane]*q_scale;
                q_k[gg][b*QK_TQ + lane + 32] = q[b*QK_TQ + lane + 32]*q_scale;
            } else {
                float v0 = q[b*QK_TQ + lane]*tq_fa_signs[lane];
                float v1 = q[b*QK_TQ + lane + 32]*tq_fa_signs[lane + 32];
                tq_cuda_fwht64_warp(v0, v1, lane);
                q_k[gg][b*QK_TQ + lane]      = v0*0.125f*q_scale;
                q_k[gg][b*QK_TQ + lane + 32] = v1*0.125f*q_scale;
            }
        }
    }
    __syncthreads();

    // A fragments of Q (rows 8..15 are zero, not stored)
    uint32_t qa0[D/16], qa2[D/16];
#pragma unroll
    for (int ks = 0; ks < D/16; ++ks) {
        const int c = ks*16 + 2*t;
        qa0[ks] = g < p.G ? tq_fa_pack(q_k[g][c],     q_k[g][c + 1]) : 0u;
        qa2[ks] = g < p.G ? tq_fa_pack(q_k[g][c + 8], q_k[g][c + 9]) : 0u;
    }

    float cbK = 0.0f; // q8_0 keys have no codebook
    if constexpr (bits_K != 0) {
        cbK = tq_cuda_codebook_lane<bits_K>(lane);
    }
    const float cbV = tq_cuda_codebook_lane<bits_V>(lane);
    const int   h   = head0 + g;
    const float slope = g < p.G ? get_alibi_slope(p.max_bias, h, p.n_head_log2, p.m0, p.m1) : 0.0f;

    const int split   = blockIdx.x*TQ_FA_F16_WARPS + warp;
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

    for (int k0 = k_begin; k0 < k_end; k0 += TQ_FA_F16_TILE) {
        // ---- loads first, so that they are all in flight before the first use
        tq_fa_kbits<type_K> kb[2][NB];
        half dK[2][NB][NSC][2];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            const char * rowb = K + min(k0 + nt*8 + g, p.n_kv - 1)*p.nbk1; // B operand: key g of the n-tile
            // C layout: keys 2t, 2t+1 of the n-tile, whose block scales multiply this lane's scores
            const char * rc0 = K + min(k0 + nt*8 + 2*t,     p.n_kv - 1)*p.nbk1;
            const char * rc1 = K + min(k0 + nt*8 + 2*t + 1, p.n_kv - 1)*p.nbk1;
#pragma unroll
            for (int b = 0; b < NB; ++b) {
                kb[nt][b].load(rowb, b, t);
#pragma unroll
                for (int sc = 0; sc < NSC; ++sc) {
                    dK[nt][b][sc][0] = tq_fa_kscale<type_K>(rc0, b, sc);
                    dK[nt][b][sc][1] = tq_fa_kscale<type_K>(rc1, b, sc);
                }
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

        // ---- S = Q K^T for the 16 keys: two n-tiles of 8 keys, scale block by scale block (each has its own d)
        float s[2][2];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            s[nt][0] = s[nt][1] = 0.0f;
#pragma unroll
            for (int b = 0; b < NB; ++b) {
#pragma unroll
                for (int sc = 0; sc < NSC; ++sc) {
                    float c0 = 0.0f, c1 = 0.0f;
#pragma unroll
                    for (int kk = sc*4/NSC; kk < (sc + 1)*4/NSC; ++kk) {
                        uint32_t b0, b1;
                        tq_fa_kfrag(kb[nt][b], kk, cbK, b0, b1);
                        tq_fa_mma_rows8(c0, c1, qa0[b*4 + kk], qa2[b*4 + kk], b0, b1);
                    }
                    s[nt][0] += __half2float(dK[nt][b][sc][0])*c0;
                    s[nt][1] += __half2float(dK[nt][b][sc][1])*c1;
                }
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
        tile_max = fmaxf(tile_max, __shfl_xor_sync(TQ_CUDA_FULL_MASK, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(TQ_CUDA_FULL_MASK, tile_max, 2));
        // M_new is per row (4 lanes), and a warp holds 8 rows: full-mask shuffles inside a branch on it are
        // undefined wherever rows disagree, and a warp found split by rows there never left it (the start-up
        // stall of docs/long-context.md). So no branch: a row that has seen nothing yet gets p = 0 and alpha = 1,
        // which leaves its M (-inf) and L as they are.
        const float M_new = fmaxf(M, tile_max);
        const bool  seen  = M_new != -INFINITY;
        const float alpha = seen ? expf(M - M_new) : 1.0f;
        float pr[2][2];
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                pr[nt][c] = seen ? expf(s[nt][c] - M_new) : 0.0f;
                sum += pr[nt][c];
            }
        }
        sum += __shfl_xor_sync(TQ_CUDA_FULL_MASK, sum, 1);
        sum += __shfl_xor_sync(TQ_CUDA_FULL_MASK, sum, 2);
        L = L*alpha + sum;
        M = M_new;

        // ---- O = O*alpha + P V, block by block: P is scaled by each key's d of that block
#pragma unroll
        for (int b = 0; b < NB; ++b) {
            const uint32_t pa0 = tq_fa_pack(pr[0][0]*__half2float(dV[0][b]), pr[0][1]*__half2float(dV[1][b]));
            const uint32_t pa2 = tq_fa_pack(pr[1][0]*__half2float(dV[2][b]), pr[1][1]*__half2float(dV[3][b]));
#pragma unroll
            for (int nd = 0; nd < 8; ++nd) {
                O[b][nd][0] *= alpha;
                O[b][nd][1] *= alpha;
                const uint32_t b0 = tq_fa_pack(tq_cuda_codebook_lookup<bits_V>(cbV, vb[0][b].idx(nd)), tq_cuda_codebook_lookup<bits_V>(cbV, vb[1][b].idx(nd)));
                const uint32_t b1 = tq_fa_pack(tq_cuda_codebook_lookup<bits_V>(cbV, vb[2][b].idx(nd)), tq_cuda_codebook_lookup<bits_V>(cbV, vb[3][b].idx(nd)));
                tq_fa_mma_rows8(O[b][nd][0], O[b][nd][1], pa0, pa2, b0, b1);
            }
        }
    }

    // ---- this split's partial result, in tq_fattn_combine's layout: O in natural rotated order (the C
    // fragment's columns 2t, 2t+1 of each 8-dim n-tile)
    if (g < p.G) {
        const int64_t i = ((int64_t) blockIdx.z*p.n_head + h)*p.n_split + split;
        if (t == 0) {
            p.meta[i] = make_float2(M, L);
        }
        float * row = p.parts + i*D;
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
}

// Key splits (flash-decoding): enough warps to fill the GPU twice over, each a whole number of 16-key tiles,
// and at most TQ_FA_F16_MAX_SPLIT splits per row.
static void tq_fa_f16_plan(tq_fa_f16_params & p, int nsm) {
    const int rows = p.n_head_kv*p.n_groups*p.n_q*p.n_seq; // warps that share nothing
    const int want_split = std::max(1, nsm*32/rows);       // about 8 blocks of 4 warps per SM
    int kps = std::max((p.n_kv + want_split - 1)/want_split, (p.n_kv + TQ_FA_F16_MAX_SPLIT - 1)/TQ_FA_F16_MAX_SPLIT);
    kps = std::max(TQ_FA_F16_TILE, (kps + TQ_FA_F16_TILE - 1)/TQ_FA_F16_TILE*TQ_FA_F16_TILE);
    int n_split = (p.n_kv + kps - 1)/kps;
    n_split = (n_split + TQ_FA_F16_WARPS - 1)/TQ_FA_F16_WARPS*TQ_FA_F16_WARPS;
    p.n_split = n_split;
    p.keys_per_split = kps;
}

template <int D, ggml_type type_K, ggml_type type_V>
static void tq_fa_f16_launch_case(const tq_fa_f16_params & p, cudaStream_t stream) {
    const dim3 grid(p.n_split/TQ_FA_F16_WARPS, p.n_head_kv*p.n_groups, p.n_q*p.n_seq);
    ggml_cuda_kernel_launch(tq_fattn_mma_f16<D, type_K, type_V>, {grid, dim3(TQ_FA_F16_WARPS*32), 0, stream}, p);
}

template <int D, ggml_type type_K>
static void tq_fa_f16_launch_v(const tq_fa_f16_params & p, ggml_type tv, cudaStream_t stream) {
    switch (tv) {
        case GGML_TYPE_TQ4_0:  tq_fa_f16_launch_case<D, type_K, GGML_TYPE_TQ4_0> (p, stream); break;
        case GGML_TYPE_TQ3_0:  tq_fa_f16_launch_case<D, type_K, GGML_TYPE_TQ3_0> (p, stream); break;
        case GGML_TYPE_TQV2_0: tq_fa_f16_launch_case<D, type_K, GGML_TYPE_TQV2_0>(p, stream); break;
        case GGML_TYPE_TQ6_0:  tq_fa_f16_launch_case<D, type_K, GGML_TYPE_TQ6_0> (p, stream); break;
        default: GGML_ABORT("TQ flash attention: V type %s", ggml_type_name(tv));
    }
}

template <int D>
static void tq_fa_f16_launch_types(const tq_fa_f16_params & p, ggml_type tk, ggml_type tv, cudaStream_t stream) {
    switch (tk) {
        case GGML_TYPE_TQ4_0:  tq_fa_f16_launch_v<D, GGML_TYPE_TQ4_0> (p, tv, stream); break;
        case GGML_TYPE_TQ3_0:  tq_fa_f16_launch_v<D, GGML_TYPE_TQ3_0> (p, tv, stream); break;
        case GGML_TYPE_TQV2_0: tq_fa_f16_launch_v<D, GGML_TYPE_TQV2_0>(p, tv, stream); break;
        case GGML_TYPE_TQ6_0:  tq_fa_f16_launch_v<D, GGML_TYPE_TQ6_0> (p, tv, stream); break;
        case GGML_TYPE_Q8_0:   tq_fa_f16_launch_v<D, GGML_TYPE_Q8_0>  (p, tv, stream); break;
        default: GGML_ABORT("TQ flash attention: K type %s", ggml_type_name(tk));
    }
}

// Runs the kernel for a plan of tq_fa_f16_plan (p.parts and p.meta hold n_split rows per query row and head),
// then the merge of its splits.
static void tq_fa_f16_launch(const tq_fa_f16_params & p, int D, ggml_type tk, ggml_type tv, cudaStream_t stream) {
    switch (D) {
        case  64: tq_fa_f16_launch_types< 64>(p, tk, tv, stream); break;
        case 128: tq_fa_f16_launch_types<128>(p, tk, tv, stream); break;
        case 256: tq_fa_f16_launch_types<256>(p, tk, tv, stream); break;
        default:  GGML_ABORT("TQ flash attention: head size %d not supported (64, 128, 256)", D);
    }
    tq_fa_combine(p, D, p.n_split, stream);
}
