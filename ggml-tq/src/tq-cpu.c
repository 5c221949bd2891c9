// Optimized CPU kernels of the TQ formats. Each must agree with its reference in tq-ref.c.
#include "ggml-tq.h"

const char * tq_cpu_variant(void) { return "scalar"; }

void  quantize_row_tq4_0(const float * x, block_tq4_0 * y, int64_t k) { quantize_row_tq4_0_ref(x, y, k); }
void  quantize_row_tq3_0(const float * x, block_tq3_0 * y, int64_t k) { quantize_row_tq3_0_ref(x, y, k); }
void  tq_dequantize_row_tq4_0(const block_tq4_0 * x, float * y, int64_t k) { dequantize_row_tq4_0(x, y, k); }
void  tq_dequantize_row_tq3_0(const block_tq3_0 * x, float * y, int64_t k) { dequantize_row_tq3_0(x, y, k); }
void  tq_rotate_row_fast(const float * x, float * y, int64_t k) { tq_rotate_row(x, y, k); }
void  tq_unrotate_row_fast(const float * x, float * y, int64_t k) { tq_unrotate_row(x, y, k); }
float tq4_0_dot_rotated(const block_tq4_0 * x, const float * q, int64_t k) { return tq4_0_dot_rotated_ref(x, q, k); }
float tq3_0_dot_rotated(const block_tq3_0 * x, const float * q, int64_t k) { return tq3_0_dot_rotated_ref(x, q, k); }
void  tq4_0_mad_rotated(const block_tq4_0 * x, float * acc, float w, int64_t k) { tq4_0_mad_rotated_ref(x, acc, w, k); }
void  tq3_0_mad_rotated(const block_tq3_0 * x, float * acc, float w, int64_t k) { tq3_0_mad_rotated_ref(x, acc, w, k); }
