// ggml-tq CUDA ops: KV-cache writes (SET_ROWS), reads (GET_ROWS), copies and the conversions to f16/f32
// that ggml-cuda's flash attention uses for its tensor-core kernels. One warp per 64-value block,
// lane l holding elements l and l + 32: loads and stores of a block are contiguous across the warp
// (coalesced), and no thread keeps an array (no local memory).
//
// From ggml: ggml.h's tensor struct and GGML_ASSERT, and common.cuh's early launch and fastdiv. tests/cuda/
// test-tq-cuda.cu links this file without libggml and stands in for the functions those call.
#include "common.cuh"
#include "tq-common.cuh"
#include "tq-cuda.h"

#include <cuda_bf16.h>

#include <type_traits>

#define TQ_CUDA_WARP    32
#define TQ_CUDA_THREADS 256 // 8 warps, 8 blocks of 64 values in flight per thread block

// ---- element conversions ------------------------------------------------------------------------

template <typename T> static __device__ __forceinline__ float tq_cuda_to_f32(T v);
template <> __device__ __forceinline__ float tq_cuda_to_f32(float v)         { return v; }
template <> __device__ __forceinline__ float tq_cuda_to_f32(half v)          { return __half2float(v); }
template <> __device__ __forceinline__ float tq_cuda_to_f32(nv_bfloat16 v)   { return __bfloat162float(v); }

template <typename T> static __device__ __forceinline__ T tq_cuda_from_f32(float v);
template <> __device__ __forceinline__ float       tq_cuda_from_f32(float v) { return v; }
template <> __device__ __forceinline__ half        tq_cuda_from_f32(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ nv_bfloat16 tq_cuda_from_f32(float v) { return __float2bfloat16_rn(v); }

// ---- index arithmetic ---------------------------------------------------------------------------

// Byte offset of flat element (or block) e of a tensor with extents ne0..ne2 and byte strides nb0..nb3.
struct tq_cuda_layout {
    int64_t ne0, ne1, ne2;
    int64_t nb0, nb1, nb2, nb3;
};

static __device__ __forceinline__ int64_t tq_cuda_offset(const tq_cuda_layout & l, int64_t e) {
    const int64_t i0 = e % l.ne0; e /= l.ne0;
    const int64_t i1 = e % l.ne1; e /= l.ne1;
    const int64_t i2 = e % l.ne2;
    const int64_t i3 = e / l.ne2;
    return i0*l.nb0 + i1*l.nb1 + i2*l.nb2 + i3*l.nb3;
}

// Warps of the grid: a grid-stride loop over blocks, the loop bound warp-uniform (full-mask shuffles inside).
#define TQ_CUDA_FOR_EACH_WARP(g, n)                                                                 \
    for (int64_t g = ((int64_t) blockIdx.x*blockDim.x + threadIdx.x) / TQ_CUDA_WARP; g < (n);     \
         g += (int64_t) gridDim.x*blockDim.x / TQ_CUDA_WARP)

static dim3 tq_cuda_grid(int64_t nwarps) {
    const int64_t warps_per_block = TQ_CUDA_THREADS / TQ_CUDA_WARP;
    const int64_t nblocks = (nwarps + warps_per_block - 1) / warps_per_block;
    return dim3((unsigned) (nblocks < 0x7fffffff ? nblocks : 0x7fffffff));
}

static size_t tq_cuda_type_size(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_F32:    return sizeof(float);
        case GGML_TYPE_F16:    return sizeof(half);
        case GGML_TYPE_BF16:   return sizeof(nv_bfloat16);
        case GGML_TYPE_I32:    return sizeof(int32_t);
        case GGML_TYPE_I64:    return sizeof(int64_t);
        case GGML_TYPE_TQ4_0:  return sizeof(block_tq4_0);
        case GGML_TYPE_TQ3_0:  return sizeof(block_tq3_0);
        case GGML_TYPE_TQV2_0: return sizeof(block_tqv2_0);
        case GGML_TYPE_TQ6_0:  return sizeof(block_tq6_0);
        default:               return 0;
    }
}

static bool tq_cuda_is_float_type(enum ggml_type type) {
    return type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16;
}

// ---- kernels ------------------------------------------------------------------------------------

// SET_ROWS: block ib of row i01 of src0[:, :, i02, i03] goes to row src1[i01, i02 % ne11, i03 % ne12] of dst.
template <int bits, typename src_t, typename idx_t>
static __global__ void
k_tq_set_rows(const char * src0, const char * src1, char * dst, // no __restrict__: launched early (GGML_CUDA_RESTRICT)
              const int64_t nblocks, const int64_t nbr, const int64_t ne01, const int64_t ne02,
              const int64_t nb01, const int64_t nb02, const int64_t nb03,
              const int64_t ne11, const int64_t ne12, const int64_t nb10, const int64_t nb11, const int64_t nb12,
              const int64_t nb1, const int64_t nb2, const int64_t nb3) {
    typedef typename tq_cuda_type<bits>::block block_t;
    const int   lane = threadIdx.x % TQ_CUDA_WARP;
    const float cb   = tq_cuda_codebook_lane<bits>(lane);
    ggml_cuda_pdl_sync(); // launched early (ggml_cuda_kernel_launch): the row and its indices come from the kernels before
    ggml_cuda_pdl_lc();

    TQ_CUDA_FOR_EACH_WARP(g, nblocks) {
        int64_t t = g;
        const int64_t ib  = t % nbr;  t /= nbr;
        const int64_t i01 = t % ne01; t /= ne01;
        const int64_t i02 = t % ne02;
        const int64_t i03 = t / ne02;

        const int64_t row = *(const idx_t *) (src1 + i01*nb10 + (i02 % ne11)*nb11 + (i03 % ne12)*nb12);

        const src_t * x = (const src_t *) (src0 + i01*nb01 + i02*nb02 + i03*nb03) + ib*QK_TQ;
        block_t     * y = (block_t *) (dst + row*nb1 + i02*nb2 + i03*nb3) + ib;

        tq_quantize_block_warp<bits>(tq_cuda_to_f32(x[lane]), tq_cuda_to_f32(x[lane + 32]), lane, cb, y);
    }
}

// Dequantization to a contiguous output: block g of the output comes from block ib of row (i01, i02, i03)
// of x (byte strides nb01..nb03), or from block g of x when it is contiguous; index_t uint3 divides by
// fastdiv (below 2^31 blocks), else by int64_t. A warp takes TQ_CUDA_DEQ_BLOCKS
// consecutive blocks and loads them all before decoding: one block alone leaves a warp waiting on memory.
#define TQ_CUDA_DEQ_BLOCKS 4
template <int bits, bool contiguous, typename index_t, typename dst_t>
static __global__ void
k_tq_dequantize(const char * __restrict__ x, dst_t * __restrict__ y, const int64_t nblocks,
                const index_t nbr, const index_t ne01, const index_t ne02,
                const int64_t nb01, const int64_t nb02, const int64_t nb03) {
    typedef typename tq_cuda_type<bits>::block block_t;
    const int   lane = threadIdx.x % TQ_CUDA_WARP;
    const float cb   = tq_cuda_codebook_lane<bits>(lane);

    TQ_CUDA_FOR_EACH_WARP(w, (nblocks + TQ_CUDA_DEQ_BLOCKS - 1)/TQ_CUDA_DEQ_BLOCKS) {
        int     ilo[TQ_CUDA_DEQ_BLOCKS], ihi[TQ_CUDA_DEQ_BLOCKS]; // registers: the loops are unrolled
        tq_half d[TQ_CUDA_DEQ_BLOCKS];
#pragma unroll
        for (int u = 0; u < TQ_CUDA_DEQ_BLOCKS; ++u) {
            const int64_t g = w*TQ_CUDA_DEQ_BLOCKS + u;
            if (g < nblocks) { // warp-uniform
                const block_t * b;
                if constexpr (contiguous) {
                    b = (const block_t *) x + g;
                } else if constexpr (std::is_same_v<index_t, uint3>) {
                    uint32_t t = (uint32_t) g;
                    uint32_t q = fastdiv(t, nbr);  const uint32_t ib  = t - q*nbr.z;  t = q;
                    q          = fastdiv(t, ne01); const uint32_t i01 = t - q*ne01.z; t = q;
                    q          = fastdiv(t, ne02); const uint32_t i02 = t - q*ne02.z;
                    b = (const block_t *) (x + i01*nb01 + i02*nb02 + q*nb03) + ib;
                } else {
                    index_t t = g;
                    const index_t ib  = t % nbr;  t /= nbr;
                    const index_t i01 = t % ne01; t /= ne01;
                    const index_t i02 = t % ne02;
                    const index_t i03 = t / ne02;
                    b = (const block_t *) (x + i01*nb01 + i02*nb02 + i03*nb03) + ib;
                }
                tq_cuda_load_indices_warp(b, lane, ilo[u], ihi[u]);
                d[u] = b->d;
            }
        }
#pragma unroll
        for (int u = 0; u < TQ_CUDA_DEQ_BLOCKS; ++u) {
            const int64_t g = w*TQ_CUDA_DEQ_BLOCKS + u;
            if (g < nblocks) {
                float lo, hi;
                tq_cuda_decode_block_warp<bits>(ilo[u], ihi[u], d[u], lane, cb, lo, hi);
                y[g*QK_TQ + lane]      = tq_cuda_from_f32<dst_t>(lo);
                y[g*QK_TQ + lane + 32] = tq_cuda_from_f32<dst_t>(hi);
            }
        }
    }
}

// GET_ROWS: dst[:, i10, i11, i12] = src0[:, src1[i10, i11, i12], i11, i12]
template <int bits, typename dst_t>
static __global__ void
k_tq_get_rows(const char * __restrict__ src0, const char * __restrict__ src1, char * __restrict__ dst,
              const int64_t nblocks, const int64_t nbr, const int64_t ne10, const int64_t ne11,
              const int64_t nb01, const int64_t nb02, const int64_t nb03,
              const int64_t nb10, const int64_t nb11, const int64_t nb12,
              const int64_t nb1, const int64_t nb2, const int64_t nb3) {
    typedef typename tq_cuda_type<bits>::block block_t;
    const int   lane = threadIdx.x % TQ_CUDA_WARP;
    const float cb   = tq_cuda_codebook_lane<bits>(lane);

    TQ_CUDA_FOR_EACH_WARP(g, nblocks) {
        int64_t t = g;
        const int64_t ib  = t % nbr;  t /= nbr;
        const int64_t i10 = t % ne10; t /= ne10;
        const int64_t i11 = t % ne11;
        const int64_t i12 = t / ne11;

        const int64_t i01 = *(const int32_t *) (src1 + i10*nb10 + i11*nb11 + i12*nb12);

        const block_t * b = (const block_t *) (src0 + i01*nb01 + i11*nb02 + i12*nb03) + ib;
        dst_t         * y = (dst_t *) (dst + i10*nb1 + i11*nb2 + i12*nb3) + ib*QK_TQ;

        float lo, hi;
        tq_dequantize_block_warp<bits>(b, lane, cb, lo, hi);
        y[lane]      = tq_cuda_from_f32<dst_t>(lo);
        y[lane + 32] = tq_cuda_from_f32<dst_t>(hi);
    }
}

// CPY into TQ: block g of dst (in flat order) takes flat elements 64g .. 64g + 63 of src, wherever they are.
template <int bits, typename src_t>
static __global__ void
k_tq_cpy_to_tq(const char * __restrict__ src, char * __restrict__ dst, const int64_t nblocks,
               const tq_cuda_layout src_l, const tq_cuda_layout dst_blocks) {
    typedef typename tq_cuda_type<bits>::block block_t;
    const int   lane = threadIdx.x % TQ_CUDA_WARP;
    const float cb   = tq_cuda_codebook_lane<bits>(lane);

    TQ_CUDA_FOR_EACH_WARP(g, nblocks) {
        const float lo = tq_cuda_to_f32(*(const src_t *) (src + tq_cuda_offset(src_l, g*QK_TQ + lane)));
        const float hi = tq_cuda_to_f32(*(const src_t *) (src + tq_cuda_offset(src_l, g*QK_TQ + lane + 32)));
        tq_quantize_block_warp<bits>(lo, hi, lane, cb, (block_t *) (dst + tq_cuda_offset(dst_blocks, g)));
    }
}

// CPY out of TQ: block g of src (in flat order) gives flat elements 64g .. 64g + 63 of dst.
template <int bits, typename dst_t>
static __global__ void
k_tq_cpy_from_tq(const char * __restrict__ src, char * __restrict__ dst, const int64_t nblocks,
                 const tq_cuda_layout src_blocks, const tq_cuda_layout dst_l) {
    typedef typename tq_cuda_type<bits>::block block_t;
    const int   lane = threadIdx.x % TQ_CUDA_WARP;
    const float cb   = tq_cuda_codebook_lane<bits>(lane);

    TQ_CUDA_FOR_EACH_WARP(g, nblocks) {
        float lo, hi;
        tq_dequantize_block_warp<bits>((const block_t *) (src + tq_cuda_offset(src_blocks, g)), lane, cb, lo, hi);
        *(dst_t *) (dst + tq_cuda_offset(dst_l, g*QK_TQ + lane))      = tq_cuda_from_f32<dst_t>(lo);
        *(dst_t *) (dst + tq_cuda_offset(dst_l, g*QK_TQ + lane + 32)) = tq_cuda_from_f32<dst_t>(hi);
    }
}

// ---- host launchers -----------------------------------------------------------------------------

static int tq_cuda_bits(enum ggml_type type) {
    GGML_ASSERT(ggml_tq_cuda_is_tq_type(type));
    return ggml_tq_cuda_bits(type);
}

// ne[0] counted in blocks, nb[0] the block size: the TQ side of an op as a layout of blocks
static tq_cuda_layout tq_cuda_block_layout(const ggml_tensor * t) {
    GGML_ASSERT(t->ne[0] % QK_TQ == 0 && (size_t) t->nb[0] == tq_cuda_type_size(t->type));
    return { t->ne[0]/QK_TQ, t->ne[1], t->ne[2], (int64_t) t->nb[0], (int64_t) t->nb[1], (int64_t) t->nb[2], (int64_t) t->nb[3] };
}

static tq_cuda_layout tq_cuda_element_layout(const ggml_tensor * t) {
    return { t->ne[0], t->ne[1], t->ne[2], (int64_t) t->nb[0], (int64_t) t->nb[1], (int64_t) t->nb[2], (int64_t) t->nb[3] };
}

static int64_t tq_cuda_nelements(const ggml_tensor * t) {
    return t->ne[0]*t->ne[1]*t->ne[2]*t->ne[3];
}

bool ggml_tq_cuda_supports_set_rows(const ggml_tensor * op) {
    const ggml_tensor * src0 = op->src[0];
    const ggml_tensor * src1 = op->src[1];
    return ggml_tq_cuda_is_tq_type(op->type) &&
           (src0->type == GGML_TYPE_F32 || src0->type == GGML_TYPE_F16) &&
           (src1->type == GGML_TYPE_I32 || src1->type == GGML_TYPE_I64) &&
           (size_t) src0->nb[0] == tq_cuda_type_size(src0->type) && src0->ne[0] % QK_TQ == 0;
}

template <int bits, typename src_t, typename idx_t>
static void tq_cuda_set_rows(const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst, cudaStream_t stream) {
    const int64_t nbr     = src0->ne[0]/QK_TQ;
    const int64_t nblocks = nbr*src0->ne[1]*src0->ne[2]*src0->ne[3];
    if (nblocks == 0 || src1->ne[1] == 0 || src1->ne[2] == 0) {
        return;
    }
    ggml_cuda_kernel_launch(k_tq_set_rows<bits, src_t, idx_t>, {tq_cuda_grid(nblocks), dim3(TQ_CUDA_THREADS), 0, stream},
        (const char *) src0->data, (const char *) src1->data, (char *) dst->data,
        nblocks, nbr, src0->ne[1], src0->ne[2], src0->nb[1], src0->nb[2], src0->nb[3],
        src1->ne[1], src1->ne[2], src1->nb[0], src1->nb[1], src1->nb[2],
        dst->nb[1], dst->nb[2], dst->nb[3]);
}

template <int bits>
static void tq_cuda_set_rows_bits(const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst, cudaStream_t stream) {
    const bool i64 = src1->type == GGML_TYPE_I64;
    if (src0->type == GGML_TYPE_F32) {
        i64 ? tq_cuda_set_rows<bits, float, int64_t>(src0, src1, dst, stream) : tq_cuda_set_rows<bits, float, int32_t>(src0, src1, dst, stream);
    } else {
        i64 ? tq_cuda_set_rows<bits, half,  int64_t>(src0, src1, dst, stream) : tq_cuda_set_rows<bits, half,  int32_t>(src0, src1, dst, stream);
    }
}

void ggml_tq_cuda_set_rows(const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst, cudaStream_t stream) {
    GGML_ASSERT(ggml_tq_cuda_supports_set_rows(dst));
    GGML_ASSERT(dst->ne[0] == src0->ne[0] && src1->ne[0] == src0->ne[1] && (size_t) dst->nb[0] == tq_cuda_type_size(dst->type));
    GGML_ASSERT(src0->ne[2] % src1->ne[1] == 0 && src0->ne[3] % src1->ne[2] == 0);
    switch (tq_cuda_bits(dst->type)) {
        case 6:  tq_cuda_set_rows_bits<6>(src0, src1, dst, stream); break;
        case 4:  tq_cuda_set_rows_bits<4>(src0, src1, dst, stream); break;
        case 3:  tq_cuda_set_rows_bits<3>(src0, src1, dst, stream); break;
        default: tq_cuda_set_rows_bits<2>(src0, src1, dst, stream); break;
    }
}

bool ggml_tq_cuda_supports_get_rows(const ggml_tensor * op) {
    return ggml_tq_cuda_is_tq_type(op->src[0]->type) && op->src[1]->type == GGML_TYPE_I32 &&
           (op->type == GGML_TYPE_F32 || op->type == GGML_TYPE_F16 || op->type == GGML_TYPE_BF16);
}

template <int bits, typename dst_t>
static void tq_cuda_get_rows(const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst, cudaStream_t stream) {
    const int64_t nbr     = src0->ne[0]/QK_TQ;
    const int64_t nblocks = nbr*src1->ne[0]*src1->ne[1]*src1->ne[2];
    if (nblocks == 0) {
        return;
    }
    k_tq_get_rows<bits, dst_t><<<tq_cuda_grid(nblocks), TQ_CUDA_THREADS, 0, stream>>>(
        (const char *) src0->data, (const char *) src1->data, (char *) dst->data,
        nblocks, nbr, src1->ne[0], src1->ne[1], src0->nb[1], src0->nb[2], src0->nb[3],
        src1->nb[0], src1->nb[1], src1->nb[2], dst->nb[1], dst->nb[2], dst->nb[3]);
}

template <int bits>
static void tq_cuda_get_rows_bits(const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst, cudaStream_t stream) {
    switch (dst->type) {
        case GGML_TYPE_F32:  tq_cuda_get_rows<bits, float>      (src0, src1, dst, stream); break;
        case GGML_TYPE_F16:  tq_cuda_get_rows<bits, half>       (src0, src1, dst, stream); break;
        default:             tq_cuda_get_rows<bits, nv_bfloat16>(src0, src1, dst, stream); break;
    }
}

void ggml_tq_cuda_get_rows(const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst, cudaStream_t stream) {
    GGML_ASSERT(ggml_tq_cuda_supports_get_rows(dst));
    GGML_ASSERT((size_t) src0->nb[0] == tq_cuda_type_size(src0->type) && (size_t) dst->nb[0] == tq_cuda_type_size(dst->type));
    GGML_ASSERT(src1->ne[3] == 1 && dst->ne[0] == src0->ne[0] && src0->ne[0] % QK_TQ == 0);
    switch (tq_cuda_bits(src0->type)) {
        case 6:  tq_cuda_get_rows_bits<6>(src0, src1, dst, stream); break;
        case 4:  tq_cuda_get_rows_bits<4>(src0, src1, dst, stream); break;
        case 3:  tq_cuda_get_rows_bits<3>(src0, src1, dst, stream); break;
        default: tq_cuda_get_rows_bits<2>(src0, src1, dst, stream); break;
    }
}

bool ggml_tq_cuda_supports_cpy(enum ggml_type src_type, enum ggml_type dst_type) {
    return (tq_cuda_is_float_type(src_type) && ggml_tq_cuda_is_tq_type(dst_type)) ||
           (ggml_tq_cuda_is_tq_type(src_type) && tq_cuda_is_float_type(dst_type));
}

template <int bits>
static void tq_cuda_cpy_bits(const ggml_tensor * src, ggml_tensor * dst, int64_t nblocks, cudaStream_t stream) {
    const dim3 grid = tq_cuda_grid(nblocks);
    if (ggml_tq_cuda_is_tq_type(dst->type)) {
        const tq_cuda_layout sl = tq_cuda_element_layout(src);
        const tq_cuda_layout dl = tq_cuda_block_layout(dst);
        switch (src->type) {
            case GGML_TYPE_F32: k_tq_cpy_to_tq<bits, float>      <<<grid, TQ_CUDA_THREADS, 0, stream>>>((const char *) src->data, (char *) dst->data, nblocks, sl, dl); break;
            case GGML_TYPE_F16: k_tq_cpy_to_tq<bits, half>       <<<grid, TQ_CUDA_THREADS, 0, stream>>>((const char *) src->data, (char *) dst->data, nblocks, sl, dl); break;
            default:            k_tq_cpy_to_tq<bits, nv_bfloat16><<<grid, TQ_CUDA_THREADS, 0, stream>>>((const char *) src->data, (char *) dst->data, nblocks, sl, dl); break;
        }
    } else {
        const tq_cuda_layout sl = tq_cuda_block_layout(src);
        const tq_cuda_layout dl = tq_cuda_element_layout(dst);
        switch (dst->type) {
            case GGML_TYPE_F32: k_tq_cpy_from_tq<bits, float>      <<<grid, TQ_CUDA_THREADS, 0, stream>>>((const char *) src->data, (char *) dst->data, nblocks, sl, dl); break;
            case GGML_TYPE_F16: k_tq_cpy_from_tq<bits, half>       <<<grid, TQ_CUDA_THREADS, 0, stream>>>((const char *) src->data, (char *) dst->data, nblocks, sl, dl); break;
            default:            k_tq_cpy_from_tq<bits, nv_bfloat16><<<grid, TQ_CUDA_THREADS, 0, stream>>>((const char *) src->data, (char *) dst->data, nblocks, sl, dl); break;
        }
    }
}

void ggml_tq_cuda_cpy(const ggml_tensor * src, ggml_tensor * dst, cudaStream_t stream) {
    GGML_ASSERT(ggml_tq_cuda_supports_cpy(src->type, dst->type));
    const int64_t ne = tq_cuda_nelements(src);
    GGML_ASSERT(ne == tq_cuda_nelements(dst) && ne % QK_TQ == 0);
    if (ne == 0) {
        return;
    }
    const enum ggml_type tq_type = ggml_tq_cuda_is_tq_type(dst->type) ? dst->type : src->type;
    switch (tq_cuda_bits(tq_type)) {
        case 6:  tq_cuda_cpy_bits<6>(src, dst, ne/QK_TQ, stream); break;
        case 4:  tq_cuda_cpy_bits<4>(src, dst, ne/QK_TQ, stream); break;
        case 3:  tq_cuda_cpy_bits<3>(src, dst, ne/QK_TQ, stream); break;
        default: tq_cuda_cpy_bits<2>(src, dst, ne/QK_TQ, stream); break;
    }
}

// ---- convert.cuh entry points -------------------------------------------------------------------

template <int bits, typename dst_t>
static void tq_cuda_to_float(const void * x, dst_t * y, int64_t k, cudaStream_t stream) {
    GGML_ASSERT(k % QK_TQ == 0);
    const int64_t nblocks = k/QK_TQ;
    if (nblocks == 0) {
        return;
    }
    const dim3 grid = tq_cuda_grid((nblocks + TQ_CUDA_DEQ_BLOCKS - 1)/TQ_CUDA_DEQ_BLOCKS);
    k_tq_dequantize<bits, true, int64_t, dst_t><<<grid, TQ_CUDA_THREADS, 0, stream>>>(
        (const char *) x, y, nblocks, 1, 1, 1, 0, 0, 0);
}

template <int bits, typename dst_t>
static void tq_cuda_to_float_nc(const void * x, dst_t * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream) {
    GGML_ASSERT(ne00 % QK_TQ == 0);
    typedef typename tq_cuda_type<bits>::block block_t;
    const int64_t nbr     = ne00/QK_TQ;
    const int64_t nblocks = nbr*ne01*ne02*ne03;
    if (nblocks == 0) {
        return;
    }
    const int64_t nb01 = s01*sizeof(block_t), nb02 = s02*sizeof(block_t), nb03 = s03*sizeof(block_t);
    const dim3 grid = tq_cuda_grid((nblocks + TQ_CUDA_DEQ_BLOCKS - 1)/TQ_CUDA_DEQ_BLOCKS);
    if (nblocks < INT32_MAX) {
        k_tq_dequantize<bits, false, uint3, dst_t><<<grid, TQ_CUDA_THREADS, 0, stream>>>(
            (const char *) x, y, nblocks, init_fastdiv_values(nbr), init_fastdiv_values(ne01), init_fastdiv_values(ne02),
            nb01, nb02, nb03);
    } else {
        k_tq_dequantize<bits, false, int64_t, dst_t><<<grid, TQ_CUDA_THREADS, 0, stream>>>(
            (const char *) x, y, nblocks, nbr, ne01, ne02, nb01, nb02, nb03);
    }
}

void ggml_tq4_0_to_fp16_cuda (const void * x, half  * y, int64_t k, cudaStream_t stream) { tq_cuda_to_float<4>(x, y, k, stream); }
void ggml_tq3_0_to_fp16_cuda (const void * x, half  * y, int64_t k, cudaStream_t stream) { tq_cuda_to_float<3>(x, y, k, stream); }
void ggml_tqv2_0_to_fp16_cuda(const void * x, half  * y, int64_t k, cudaStream_t stream) { tq_cuda_to_float<2>(x, y, k, stream); }
void ggml_tq6_0_to_fp16_cuda (const void * x, half  * y, int64_t k, cudaStream_t stream) { tq_cuda_to_float<6>(x, y, k, stream); }
void ggml_tq4_0_to_fp32_cuda (const void * x, float * y, int64_t k, cudaStream_t stream) { tq_cuda_to_float<4>(x, y, k, stream); }
void ggml_tq3_0_to_fp32_cuda (const void * x, float * y, int64_t k, cudaStream_t stream) { tq_cuda_to_float<3>(x, y, k, stream); }
void ggml_tqv2_0_to_fp32_cuda(const void * x, float * y, int64_t k, cudaStream_t stream) { tq_cuda_to_float<2>(x, y, k, stream); }
void ggml_tq6_0_to_fp32_cuda (const void * x, float * y, int64_t k, cudaStream_t stream) { tq_cuda_to_float<6>(x, y, k, stream); }

void ggml_tq4_0_to_fp16_nc_cuda(const void * x, half * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream) {
    tq_cuda_to_float_nc<4>(x, y, ne00, ne01, ne02, ne03, s01, s02, s03, stream);
}
void ggml_tq3_0_to_fp16_nc_cuda(const void * x, half * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream) {
    tq_cuda_to_float_nc<3>(x, y, ne00, ne01, ne02, ne03, s01, s02, s03, stream);
}
void ggml_tqv2_0_to_fp16_nc_cuda(const void * x, half * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                 int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream) {
    tq_cuda_to_float_nc<2>(x, y, ne00, ne01, ne02, ne03, s01, s02, s03, stream);
}
void ggml_tq6_0_to_fp16_nc_cuda(const void * x, half * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream) {
    tq_cuda_to_float_nc<6>(x, y, ne00, ne01, ne02, ne03, s01, s02, s03, stream);
}
void ggml_tq4_0_to_fp32_nc_cuda(const void * x, float * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream) {
    tq_cuda_to_float_nc<4>(x, y, ne00, ne01, ne02, ne03, s01, s02, s03, stream);
}
void ggml_tq3_0_to_fp32_nc_cuda(const void * x, float * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream) {
    tq_cuda_to_float_nc<3>(x, y, ne00, ne01, ne02, ne03, s01, s02, s03, stream);
}
void ggml_tqv2_0_to_fp32_nc_cuda(const void * x, float * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                 int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream) {
    tq_cuda_to_float_nc<2>(x, y, ne00, ne01, ne02, ne03, s01, s02, s03, stream);
}
void ggml_tq6_0_to_fp32_nc_cuda(const void * x, float * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream) {
    tq_cuda_to_float_nc<6>(x, y, ne00, ne01, ne02, ne03, s01, s02, s03, stream);
}
