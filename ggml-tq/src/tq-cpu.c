// The optimized CPU kernels where no architecture file applies (arch/x86.c, arch/arm.c): the reference.
#include "tq-cpu.h"

const char * tq_cpu_variant(void) {
#if defined(TQ_CPU_X86) && defined(__AVX512F__)
    return "avx512";
#elif defined(TQ_CPU_X86)
    return "avx2";
#elif defined(TQ_CPU_ARM)
    return "neon";
#else
    return "scalar";
#endif
}

#if !defined(TQ_CPU_X86) && !defined(TQ_CPU_ARM)

void quantize_row_tq4_0(const float * x, block_tq4_0 * y, int64_t k) { quantize_row_tq4_0_ref(x, y, k); }
void quantize_row_tq3_0(const float * x, block_tq3_0 * y, int64_t k) { quantize_row_tq3_0_ref(x, y, k); }
void quantize_row_tqv2_0(const float * x, block_tqv2_0 * y, int64_t k) { quantize_row_tqv2_0_ref(x, y, k); }
void quantize_row_tq6_0(const float * x, block_tq6_0 * y, int64_t k) { quantize_row_tq6_0_ref(x, y, k); }

void dequantize_row_tq4_0(const block_tq4_0 * x, float * y, int64_t k) { dequantize_row_tq4_0_ref(x, y, k); }
void dequantize_row_tq3_0(const block_tq3_0 * x, float * y, int64_t k) { dequantize_row_tq3_0_ref(x, y, k); }
void dequantize_row_tqv2_0(const block_tqv2_0 * x, float * y, int64_t k) { dequantize_row_tqv2_0_ref(x, y, k); }
void dequantize_row_tq6_0(const block_tq6_0 * x, float * y, int64_t k) { dequantize_row_tq6_0_ref(x, y, k); }

void tq_rotate_row  (const float * x, float * y, int64_t k) { tq_rotate_row_ref(x, y, k); }
void tq_unrotate_row(const float * x, float * y, int64_t k) { tq_unrotate_row_ref(x, y, k); }

float tq4_0_dot_rotated(const block_tq4_0 * x, const float * q_rot, int64_t k) { return tq4_0_dot_rotated_ref(x, q_rot, k); }
float tq3_0_dot_rotated(const block_tq3_0 * x, const float * q_rot, int64_t k) { return tq3_0_dot_rotated_ref(x, q_rot, k); }
float tqv2_0_dot_rotated(const block_tqv2_0 * x, const float * q_rot, int64_t k) { return tqv2_0_dot_rotated_ref(x, q_rot, k); }
float tq6_0_dot_rotated(const block_tq6_0 * x, const float * q_rot, int64_t k) { return tq6_0_dot_rotated_ref(x, q_rot, k); }

void tq4_0_mad_rotated(const block_tq4_0 * x, float * acc, float w, int64_t k) { tq4_0_mad_rotated_ref(x, acc, w, k); }
void tq3_0_mad_rotated(const block_tq3_0 * x, float * acc, float w, int64_t k) { tq3_0_mad_rotated_ref(x, acc, w, k); }
void tqv2_0_mad_rotated(const block_tqv2_0 * x, float * acc, float w, int64_t k) { tqv2_0_mad_rotated_ref(x, acc, w, k); }
void tq6_0_mad_rotated(const block_tq6_0 * x, float * acc, float w, int64_t k) { tq6_0_mad_rotated_ref(x, acc, w, k); }

#endif
