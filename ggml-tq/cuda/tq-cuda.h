// ggml-tq CUDA ops for ggml-cuda (tq-cuda.cu): what the patched ggml-cuda files call for the TQ types
// (TQ4_0, TQ3_0, TQV2_0, TQ6_0).
// The kernels map one warp to one 64-value block and agree bit for bit with the CPU reference
// (tq-ref.c): quantized bytes and dequantized values alike.
#pragma once

#include "ggml.h"

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <stdint.h>

// bits per centroid index of a TQ type (the template argument of tq-common.cuh's helpers), 0 for other types
static constexpr __host__ __device__ int ggml_tq_cuda_bits(enum ggml_type type) {
    return type == GGML_TYPE_TQ4_0 ? 4 : type == GGML_TYPE_TQ3_0 ? 3 : type == GGML_TYPE_TQV2_0 ? 2 :
           type == GGML_TYPE_TQ6_0 ? 6 : 0;
}

static inline bool ggml_tq_cuda_is_tq_type(enum ggml_type type) {
    return ggml_tq_cuda_bits(type) != 0;
}

// SET_ROWS into a TQ tensor (the KV-cache write): src0 F32 or F16, src1 I32 or I64, with ggml's
// broadcasting of src1 over src0's dims 2 and 3.
bool ggml_tq_cuda_supports_set_rows(const ggml_tensor * op);
void ggml_tq_cuda_set_rows(const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst, cudaStream_t stream);

// ROPE + VIEW + SET_ROWS into a TQ cache as one kernel (tq-rope.cuh, launched from rope.cu): an f32 rope (its
// input is then f32 too) of whole 64-value blocks per head, rope_norm or rope_neox (ggml-cuda checks the rest).
// ROPE + SUB + MUL + VIEW + SET_ROWS (centered, weighted keys) as well, when the SUB takes one contiguous f32 mean
// per channel and head from the rope's output and the MUL multiplies that by one weight of the same shape
// (ggml_tq_cuda_can_fuse_rope_sub_mul).
static inline bool ggml_tq_cuda_can_fuse_rope_set_rows(const ggml_tensor * rope, const ggml_tensor * set_rows) {
    const int mode = ((const int32_t *) rope->op_params)[2];
    return ggml_tq_cuda_is_tq_type(set_rows->type) && rope->type == GGML_TYPE_F32 && rope->src[0]->type == GGML_TYPE_F32 &&
           rope->src[0]->ne[0] % 64 == 0 && rope->src[0]->nb[0] == sizeof(float) &&
           (mode == GGML_ROPE_TYPE_NORMAL || mode == GGML_ROPE_TYPE_NEOX);
}

static inline bool ggml_tq_cuda_can_fuse_rope_sub_mul(const ggml_tensor * rope, const ggml_tensor * sub, const ggml_tensor * mul) {
    const auto per_channel_head = [rope](const ggml_tensor * t) {
        return t->type == GGML_TYPE_F32 && ggml_is_contiguous(t) &&
               t->ne[0] == rope->ne[0] && t->ne[1] == rope->ne[1] && t->ne[2] == 1 && t->ne[3] == 1;
    };
    return sub->src[0] == rope && sub->type == GGML_TYPE_F32 && per_channel_head(sub->src[1]) &&
           mul->src[0] == sub  && mul->type == GGML_TYPE_F32 && per_channel_head(mul->src[1]);
}

// GET_ROWS from a TQ tensor into F32, F16 or BF16 (src1 I32).
bool ggml_tq_cuda_supports_get_rows(const ggml_tensor * op);
void ggml_tq_cuda_get_rows(const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst, cudaStream_t stream);

// CPY F32/F16/BF16 -> TQ and TQ -> F32/F16/BF16, any strides on the non-TQ side (elements are mapped in
// flat order, as ggml_cpy does). Same-type TQ copies are ggml-cuda's memcpy.
bool ggml_tq_cuda_supports_cpy(enum ggml_type src_type, enum ggml_type dst_type);
void ggml_tq_cuda_cpy(const ggml_tensor * src, ggml_tensor * dst, cudaStream_t stream);

// Dequantization in convert.cuh's signatures (ggml_get_to_fp16_cuda, ggml_get_to_fp32_cuda and the
// _nc variants, whose strides s01..s03 count blocks; the output is contiguous).
void ggml_tq4_0_to_fp16_cuda (const void * x, half  * y, int64_t k, cudaStream_t stream);
void ggml_tq3_0_to_fp16_cuda (const void * x, half  * y, int64_t k, cudaStream_t stream);
void ggml_tqv2_0_to_fp16_cuda(const void * x, half  * y, int64_t k, cudaStream_t stream);
void ggml_tq6_0_to_fp16_cuda (const void * x, half  * y, int64_t k, cudaStream_t stream);
void ggml_tq4_0_to_fp32_cuda (const void * x, float * y, int64_t k, cudaStream_t stream);
void ggml_tq3_0_to_fp32_cuda (const void * x, float * y, int64_t k, cudaStream_t stream);
void ggml_tqv2_0_to_fp32_cuda(const void * x, float * y, int64_t k, cudaStream_t stream);
void ggml_tq6_0_to_fp32_cuda (const void * x, float * y, int64_t k, cudaStream_t stream);
void ggml_tq4_0_to_fp16_nc_cuda (const void * x, half * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                 int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream);
void ggml_tq3_0_to_fp16_nc_cuda (const void * x, half * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                 int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream);
void ggml_tqv2_0_to_fp16_nc_cuda(const void * x, half * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                 int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream);
void ggml_tq6_0_to_fp16_nc_cuda (const void * x, half * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                 int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream);
void ggml_tq4_0_to_fp32_nc_cuda (const void * x, float * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                 int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream);
void ggml_tq3_0_to_fp32_nc_cuda (const void * x, float * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                 int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream);
void ggml_tqv2_0_to_fp32_nc_cuda(const void * x, float * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                 int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream);
void ggml_tq6_0_to_fp32_nc_cuda (const void * x, float * y, int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
                                 int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream);
