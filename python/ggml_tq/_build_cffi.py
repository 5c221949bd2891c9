"""cffi build script (API mode, out of line): compiles the ggml-tq C sources into ggml_tq._tq_cffi.

Run by setuptools through setup.py's cffi_modules, or by hand: `python python/ggml_tq/_build_cffi.py`
(builds it under build/cffi/, for debugging the build). The block structs are left undeclared: Python passes
blocks as raw byte buffers (void *), the C compiler converts them to the struct pointers.
"""
import os

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))  # python/ggml_tq -> repository root


def _rel(*parts: str) -> str:
    # setuptools wants source paths relative to the project root, the working directory of a build
    return os.path.relpath(os.path.join(_ROOT, *parts))


CDEF = """
typedef uint16_t tq_half;

void quantize_row_tq4_0_ref(const float * x, void * y, int64_t k);
void quantize_row_tq3_0_ref(const float * x, void * y, int64_t k);
void dequantize_row_tq4_0(const void * x, float * y, int64_t k);
void dequantize_row_tq3_0(const void * x, float * y, int64_t k);

size_t quantize_tq4_0(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t quantize_tq3_0(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);

void tq_rotate_row  (const float * x, float * y, int64_t k);
void tq_unrotate_row(const float * x, float * y, int64_t k);

float tq4_0_dot_rotated_ref(const void * x, const float * q_rot, int64_t k);
float tq3_0_dot_rotated_ref(const void * x, const float * q_rot, int64_t k);
void  tq4_0_mad_rotated_ref(const void * x, float * acc, float w, int64_t k);
void  tq3_0_mad_rotated_ref(const void * x, float * acc, float w, int64_t k);

void  quantize_row_tq4_0(const float * x, void * y, int64_t k);
void  quantize_row_tq3_0(const float * x, void * y, int64_t k);
void  tq_dequantize_row_tq4_0(const void * x, float * y, int64_t k);
void  tq_dequantize_row_tq3_0(const void * x, float * y, int64_t k);
void  tq_rotate_row_fast(const float * x, float * y, int64_t k);
void  tq_unrotate_row_fast(const float * x, float * y, int64_t k);
float tq4_0_dot_rotated(const void * x, const float * q_rot, int64_t k);
float tq3_0_dot_rotated(const void * x, const float * q_rot, int64_t k);
void  tq4_0_mad_rotated(const void * x, float * acc, float w, int64_t k);
void  tq3_0_mad_rotated(const void * x, float * acc, float w, int64_t k);
const char * tq_cpu_variant(void);

float   tq_fp16_to_fp32(tq_half h);
tq_half tq_fp32_to_fp16(float f);
const float * tq_codebook(int bits);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "ggml_tq._tq_cffi",
    '#include "ggml-tq.h"\n',
    sources=[_rel("ggml-tq", "src", "tq-ref.c"), _rel("ggml-tq", "src", "tq-cpu.c")],
    include_dirs=[_rel("ggml-tq", "include"), _rel("ggml-tq", "src")],
    # -std=c11 (not gnu11) also means -ffp-contract=off: no fused multiply-adds, so the float
    # operations are exactly the ones tq-ref.c writes, the ones the torch reference repeats.
    extra_compile_args=["-O2", "-march=native", "-std=c11", "-ffp-contract=off"],
    libraries=["m"],
)

if __name__ == "__main__":
    os.chdir(_ROOT)
    ffibuilder.compile(tmpdir=os.path.join(_ROOT, "build", "cffi"), verbose=True)
