// ROPE (+ SUB + MUL) + VIEW + SET_ROWS into a TQ cache in one kernel: the K write of a decode step,
// which ggml-cuda fuses the same way for f16/f32 caches (rope.cu's row_indices / set_rows_stride). Unfused, the
// roped row goes to memory as f32 and a second launch quantizes it: at short context two launches of that
// size are a visible part of a layer's time. The SUB and MUL are llama.cpp's key centering and weighting
// (llama-kv-cache.cpp, cpy_k): the roped keys minus a per-channel mean of each head, times a per-channel weight,
// each rounded as ggml's SUB and MUL do, in f32.
//
// Included by ggml-cuda's rope.cu, which supplies the angles (angle_t: cos and sin of rotation pair iw at
// position pos, computed by its rope_yarn), so that the rotated values are the unfused rope's and the rope's
// arithmetic stays in one place. The quantization is tq-common.cuh's, byte-identical to the CPU reference for
// the same input.
#pragma once

#include "common.cuh"
#include "tq-common.cuh"
#include "tq-cuda.h"

// rope's src0 [D, heads, tokens] (f32, strides in elements), its rotation window, and the cache rows
struct tq_rope_rows {
    const float * x;
    int64_t s01, s02;
    int D, n_heads, n_tokens;
    int n_dims, n_offs;            // channels n_offs .. n_offs + n_dims - 1 rotate, the rest are copied
    const int32_t * pos;           // per token
    const int64_t * row_indices;   // per token: its cache row
    char * dst;
    int64_t nb1;                   // cache row stride in bytes: a row is heads*D values
    const float * mean;            // [heads][D] subtracted after the rope, or nullptr
    const float * weight;          // [heads][D] multiplying the result, or nullptr (with mean)
};

// Element e of a row after rope, as rope.cu's rope_norm (pairs e, e^1) or rope_neox (pairs k, k + n_dims/2)
// computes it.
template <bool neox, typename angle_t>
static __device__ __forceinline__ float tq_rope_element(const float * x, const int e, const tq_rope_rows & r,
                                                       const int32_t pos, const angle_t & angle) {
    const int i0 = e & ~1; // the rope kernels' thread index test: pairs of channels in or out of the window
    if (i0 < r.n_offs || i0 >= r.n_offs + r.n_dims) {
        return x[e];
    }
    int c0, c1, iw;
    bool first;
    if constexpr (neox) {
        const int w    = e - r.n_offs;
        const int half = r.n_dims/2;
        first = w < half;
        const int k = first ? w : w - half;
        c0 = r.n_offs + k;
        c1 = c0 + half;
        iw = 2*k;
    } else {
        first = (e & 1) == 0;
        c0 = i0;
        c1 = i0 + 1;
        iw = i0 - r.n_offs;
    }
    float cos_theta, sin_theta;
    angle(pos, iw, cos_theta, sin_theta);
    const float x0 = x[c0];
    const float x1 = x[c1];
    return first ? x0*cos_theta - x1*sin_theta : x0*sin_theta + x1*cos_theta;
}

// One warp per 64-value block of a (token, head) row; lane l ropes elements l and l + 32 of it.
template <int bits, bool neox, typename angle_t>
static __global__ void k_tq_rope_set_rows(const tq_rope_rows r, const angle_t angle) {
    typedef typename tq_cuda_type<bits>::block block_t;
    ggml_cuda_pdl_sync(); // launched early (ggml_cuda_kernel_launch): K comes from the kernels before
    ggml_cuda_pdl_lc();
    const int lane = threadIdx.x % 32;
    const int nbr  = r.D/QK_TQ;
    const int64_t w = ((int64_t) blockIdx.x*blockDim.x + threadIdx.x)/32;
    if (w >= (int64_t) nbr*r.n_heads*r.n_tokens) {
        return; // whole warps
    }
    const int ib    = (int) (w % nbr);
    const int head  = (int) (w / nbr % r.n_heads);
    const int token = (int) (w / nbr / r.n_heads);

    const float * x = r.x + head*r.s01 + token*r.s02;
    const int32_t pos = r.pos[token];
    float lo = tq_rope_element<neox>(x, ib*QK_TQ + lane,      r, pos, angle);
    float hi = tq_rope_element<neox>(x, ib*QK_TQ + lane + 32, r, pos, angle);
    if (r.mean) {
        const float * m = r.mean + head*r.D + ib*QK_TQ;
        lo = __fsub_rn(lo, m[lane]);
        hi = __fsub_rn(hi, m[lane + 32]);
    }
    if (r.weight) {
        const float * w = r.weight + head*r.D + ib*QK_TQ;
        lo = __fmul_rn(lo, w[lane]);
        hi = __fmul_rn(hi, w[lane + 32]);
    }

    block_t * y = (block_t *) (r.dst + r.row_indices[token]*r.nb1) + head*nbr + ib;
    tq_quantize_block_warp<bits>(lo, hi, lane, tq_cuda_codebook_lane<bits>(lane), y);
}

template <typename angle_t>
static void ggml_tq_cuda_rope_set_rows(const tq_rope_rows & r, ggml_type cache_type, bool neox,
                                       const angle_t & angle, cudaStream_t stream) {
    const int64_t nwarps = (int64_t) (r.D/QK_TQ)*r.n_heads*r.n_tokens;
    if (nwarps == 0) {
        return;
    }
    const int threads = 128;
    const dim3 grid((unsigned) ((nwarps*32 + threads - 1)/threads));
    const ggml_cuda_kernel_launch_params launch(grid, dim3(threads), 0, stream);
#define TQ_ROPE_LAUNCH(bits, nx) ggml_cuda_kernel_launch(k_tq_rope_set_rows<bits, nx, angle_t>, launch, r, angle)
    switch (ggml_tq_cuda_bits(cache_type)) {
        case 6:  if (neox) { TQ_ROPE_LAUNCH(6, true); } else { TQ_ROPE_LAUNCH(6, false); } break;
        case 4:  if (neox) { TQ_ROPE_LAUNCH(4, true); } else { TQ_ROPE_LAUNCH(4, false); } break;
        case 3:  if (neox) { TQ_ROPE_LAUNCH(3, true); } else { TQ_ROPE_LAUNCH(3, false); } break;
        case 2:  if (neox) { TQ_ROPE_LAUNCH(2, true); } else { TQ_ROPE_LAUNCH(2, false); } break; // a V type, but allowed as K
        default: GGML_ABORT("ROPE + SET_ROWS: %s is not a TQ type", ggml_type_name(cache_type));
    }
#undef TQ_ROPE_LAUNCH
}
