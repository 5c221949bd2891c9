// What the TQ flash-attention decode kernels share (tq-fattn-mma-f16.cuh, tq-fattn-mma-i8.cuh), as
// fattn-common.cuh is for ggml-cuda's: the parameters taken from a FLASH_ATTN_EXT node, the rotation's signs,
// the last step of a row and the merge of key splits.
//
// Both kernels stay in the rotated domain: Q is rotated once per block of 64 (signs, then tq-common.cuh's
// Walsh-Hadamard transform), scores and V sums are taken against the blocks' codebook values as stored, and the
// output is rotated back once per row. (q8_0 keys, which the f16 kernel also takes, are scored against Q as
// given; only V and the output are rotated then.) A row's keys are split over blocks (flash-decoding); each split leaves
// its softmax state in parts and meta, laid out as for ggml-cuda's flash_attn_combine_results, and
// tq_fattn_combine merges them.
#pragma once

#include "common.cuh"
#include "tq-common.cuh"
#include "tq-cuda.h"

#include <type_traits>

#define TQ_FA_MAX_G 8 // query heads of a GQA group per warp: the 8 rows or columns of an m16n8 mma tile

// the key types the decode kernels read beside TQ values (the int8 one all but tq6_0: tq_fa_i8_types): TQ types, and upstream's q8_0 (the long-context pairing,
// README "Which to choose": its keys keep the retrieval that 4-bit keys lose at long context)
static inline bool tq_fa_key_type(ggml_type tk) {
    return ggml_tq_cuda_is_tq_type(tk) || tk == GGML_TYPE_Q8_0;
}

struct tq_fa_params {
    const char * Q; const char * K; const char * V; const char * mask;
    float scale, max_bias, m0, m1, logit_softcap;
    uint32_t n_head_log2;
    int n_q, n_head, n_kv, n_head_kv;
    int gqa, G, n_groups; // query heads per KV head, G per warp, in n_groups groups
    int64_t nbq1, nbq2, nbq3;
    int64_t nbk1, nbk2, nbk3;
    int64_t nbv1, nbv2, nbv3;
    int64_t nbm1, nbm3; int mask_ne3;
    float  * parts;       // [z][head][part][D]: each key split's O, rotated, not normalized
    float2 * meta;        // [z][head][part]: its softmax maximum (natural-log units) and sum
    const float * sinks;  // per head, or null
    float  * dst;         // [z][head][D], z = query row + n_q * sequence
    int n_seq;
};

// the rotation's signs as factors: a multiply by one of them is exact
static __constant__ float tq_fa_signs[QK_TQ] = TQ_SIGNS_INIT;

// D(16x8) += A(16xK) * B(Kx8) on the tensor cores, fragments as PTX's mma.sync lays them out: f16 A and B into
// f32 D (float c, m16n8k16) or s8 A and B into s32 D (int c, m16n8k32)
template <typename T>
static __device__ __forceinline__ void tq_fa_mma(T (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (std::is_same_v<T, float>) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        static_assert(std::is_same_v<T, int>, "f32 or s32 accumulators");
        asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
#else
    GGML_UNUSED_VARS(c, a0, a1, a2, a3, b0, b1);
    NO_DEVICE_CODE; // the host side takes these kernels on Ampere and newer only
#endif
}

// The last step of a row for one 64-block, in a warp: O (rotated; lane l holds elements v0 = l, v1 = l + 32)
// times 1/L, rotated back (the transform is its own inverse up to the 1/8 scale, then the signs).
static __device__ __forceinline__ void tq_fa_write_block(float * out, float v0, float v1, float inv_L) {
    const int lane = threadIdx.x & 31;
    tq_cuda_fwht64_warp(v0, v1, lane);
    out[lane]      = v0*0.125f*tq_fa_signs[lane]*inv_L;
    out[lane + 32] = v1*0.125f*tq_fa_signs[lane + 32]*inv_L;
}

// Merges the key splits of one (query row, head) for one 64-element block of the output, adds the sink, rotates
// back and normalizes. The splits' weights exp(M_s - M) go to shared memory; then 16 threads read a split's 64
// elements as float4 and the block's 256 threads sum 16 shares of the splits: every load independent (no
// chain), 1 KB in flight per warp. Grid: heads x D/64 x rows (a block per 64 elements: more SMs read at once).
// No __restrict__: launched early, and a restrict pointer's loads may be moved above the wait (GGML_CUDA_RESTRICT).
#define TQ_FA_COMBINE_THREADS   256
#define TQ_FA_COMBINE_MAX_PARTS 1024 // splits per row the weights' shared memory holds

template <int D>
__launch_bounds__(TQ_FA_COMBINE_THREADS)
static __global__ void tq_fattn_combine(const float * parts, const float2 * meta, const float * sinks,
                                        float * dst, const int n_head, const int n_parts) {
    ggml_cuda_pdl_sync(); // parts and meta come from the decode kernel
    ggml_cuda_pdl_lc();
    constexpr int NT = TQ_FA_COMBINE_THREADS, Q4 = QK_TQ/4, SHARES = NT/Q4;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int h = blockIdx.x, b = blockIdx.y;
    const int z = blockIdx.z; // query row + n_q * sequence: dst rows are ordered (z, head)
    const int64_t row = ((int64_t) z*n_head + h)*n_parts;
    const float2 * ml = meta + row;
    const float4 * o  = (const float4 *) (parts + row*D + b*QK_TQ);

    __shared__ float2 s_ml[TQ_FA_COMBINE_MAX_PARTS]; // (M, L) of each split, then (weight, L)
    __shared__ float  s_red[NT/32];
    __shared__ float4 s_o[SHARES][Q4];

    // M: the largest split maximum (and the sink)
    float m = -INFINITY;
    for (int s = tid; s < n_parts; s += NT) {
        const float2 v = ml[s];
        s_ml[s] = v;
        m = fmaxf(m, v.x);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        m = fmaxf(m, __shfl_xor_sync(TQ_CUDA_FULL_MASK, m, off));
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
    // weights and L (a thread rewrites only the entries it wrote)
    float l = 0.0f;
    for (int s = tid; s < n_parts; s += NT) {
        const float2 v = s_ml[s];
        const float w = M == -INFINITY ? 0.0f : expf(v.x - M); // an empty split has M = -inf: weight 0
        s_ml[s].x = w;
        l += w*v.y;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        l += __shfl_xor_sync(TQ_CUDA_FULL_MASK, l, off);
    }
    if (lane == 0) {
        s_red[warp] = l;
    }
    __syncthreads();
    // O: elements 4e..4e+3, splits share, share + SHARES, ...: LOADS of a thread's loads issued before any of
    // their sums (64 KB of a block's in flight for 16), then the rest one by one
    {
        constexpr int LOADS = 16;
        const int e = tid % Q4, share = tid / Q4;
        float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        int s = share;
        for (; s + (LOADS - 1)*SHARES < n_parts; s += LOADS*SHARES) {
            float4 v[LOADS];
#pragma unroll
            for (int u = 0; u < LOADS; ++u) {
                v[u] = o[(int64_t) (s + u*SHARES)*(D/4) + e];
            }
            __syncwarp(); // no load is held back past it: ptxas would otherwise keep about 4 in flight
#pragma unroll
            for (int u = 0; u < LOADS; ++u) {
                const float w = s_ml[s + u*SHARES].x;
                acc.x += w*v[u].x; acc.y += w*v[u].y; acc.z += w*v[u].z; acc.w += w*v[u].w;
            }
        }
        for (; s < n_parts; s += SHARES) {
            const float  w = s_ml[s].x;
            const float4 v = o[(int64_t) s*(D/4) + e];
            acc.x += w*v.x; acc.y += w*v.y; acc.z += w*v.z; acc.w += w*v.w;
        }
        s_o[share][e] = acc;
    }
    __syncthreads();
    if (warp != 0) {
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
    float v0 = 0.0f, v1 = 0.0f;
#pragma unroll
    for (int q = 0; q < SHARES; ++q) {
        v0 += ((const float *) s_o[q])[lane];
        v1 += ((const float *) s_o[q])[lane + 32];
    }
    tq_fa_write_block(dst + ((int64_t) z*n_head + h)*D + b*QK_TQ, v0, v1, L == 0.0f ? 0.0f : 1.0f/L);
}

// Rows of parts and meta: n_parts of them per (query row, head); parts holds D floats per row.
static int64_t tq_fa_part_rows(const tq_fa_params & p, int n_parts) {
    return (int64_t) p.n_q*p.n_seq*p.n_head*n_parts;
}

// Merges p.parts / p.meta (n_parts key splits per row) into p.dst.
static void tq_fa_combine(const tq_fa_params & p, int D, int n_parts, cudaStream_t stream) {
    GGML_ASSERT(n_parts <= TQ_FA_COMBINE_MAX_PARTS);
    const ggml_cuda_kernel_launch_params launch(dim3(p.n_head, D/QK_TQ, p.n_q*p.n_seq), dim3(TQ_FA_COMBINE_THREADS), 0, stream);
    const float * parts = p.parts;
    const float2 * meta = p.meta;
    switch (D) {
        case  64: ggml_cuda_kernel_launch(tq_fattn_combine< 64>, launch, parts, meta, p.sinks, p.dst, p.n_head, n_parts); break;
        case 128: ggml_cuda_kernel_launch(tq_fattn_combine<128>, launch, parts, meta, p.sinks, p.dst, p.n_head, n_parts); break;
        case 256: ggml_cuda_kernel_launch(tq_fattn_combine<256>, launch, parts, meta, p.sinks, p.dst, p.n_head, n_parts); break;
        default:  GGML_ABORT("TQ flash attention: head size %d not supported (64, 128, 256)", D);
    }
}
