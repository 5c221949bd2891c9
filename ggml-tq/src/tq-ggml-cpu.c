// ggml-cpu glue: the TQ kernels behind ggml's type-trait signatures (see ggml-cpu.c's type_traits_cpu).
#include "ggml-tq.h"

#include <assert.h>

void quantize_row_tq_rot_f32(const float * x, void * y, int64_t k) {
    tq_rotate_row(x, ((block_tq_rot_f32 *) y)->qs, k);
}

void ggml_vec_dot_tq4_0_rot_f32(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc) {
    assert(nrc == 1);
    (void) bs; (void) bx; (void) by; (void) nrc;
    *s = tq4_0_dot_rotated((const block_tq4_0 *) x, ((const block_tq_rot_f32 *) y)->qs, n);
}

void ggml_vec_dot_tq3_0_rot_f32(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc) {
    assert(nrc == 1);
    (void) bs; (void) bx; (void) by; (void) nrc;
    *s = tq3_0_dot_rotated((const block_tq3_0 *) x, ((const block_tq_rot_f32 *) y)->qs, n);
}

void ggml_vec_dot_tqv2_0_rot_f32(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc) {
    assert(nrc == 1);
    (void) bs; (void) bx; (void) by; (void) nrc;
    *s = tqv2_0_dot_rotated((const block_tqv2_0 *) x, ((const block_tq_rot_f32 *) y)->qs, n);
}

void ggml_vec_dot_tq6_0_rot_f32(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc) {
    assert(nrc == 1);
    (void) bs; (void) bx; (void) by; (void) nrc;
    *s = tq6_0_dot_rotated((const block_tq6_0 *) x, ((const block_tq_rot_f32 *) y)->qs, n);
}
