# Source lists of ggml-tq, shared by the project's CMakeLists.txt and the patched ggml build.
get_filename_component(GGML_TQ_DIR ${CMAKE_CURRENT_LIST_DIR} ABSOLUTE)
set(GGML_TQ_INCLUDE_DIRS ${GGML_TQ_DIR}/include ${GGML_TQ_DIR}/src)
# scalar reference: ggml-base (type traits: to_float, from_float_ref)
set(GGML_TQ_REF_SOURCES ${GGML_TQ_DIR}/src/tq-ref.c)
# optimized kernels: ggml-cpu (from_float, vec_dot, flash attention). Each architecture file compiles to
# nothing unless built for its instruction set (tq-cpu.h); tq-cpu.c falls back to the reference.
set(GGML_TQ_CPU_SOURCES
    ${GGML_TQ_DIR}/src/tq-cpu.c
    ${GGML_TQ_DIR}/src/arch/x86.c
    ${GGML_TQ_DIR}/src/arch/arm.c
    ${GGML_TQ_DIR}/src/tq-ggml-cpu.c)
# No automatic FMA contraction: the byte layout of a quantized block must not depend on the compiler's
# choice (torch reference, cffi build and SIMD kernels round every product separately).
set_source_files_properties(${GGML_TQ_REF_SOURCES} ${GGML_TQ_CPU_SOURCES} PROPERTIES COMPILE_OPTIONS -ffp-contract=off)
# CUDA kernels, compiled into ggml-cuda: tq-cuda.cu (cache writes, reads, conversions) and tq-fattn.cu (the
# flash-attention decode kernels, one header each); tq-common.cuh is the device-side code they share, tq-rope.cuh
# the rope + K write that ggml-cuda's rope.cu instantiates.
file(GLOB GGML_TQ_CUDA_SOURCES ${GGML_TQ_DIR}/cuda/*.cu)
set(GGML_TQ_CUDA_INCLUDE_DIRS ${GGML_TQ_DIR}/cuda ${GGML_TQ_DIR}/include ${GGML_TQ_DIR}/src)
# Cache writes and conversions produce the reference's bytes and floats: ggml-cuda compiles with -use_fast_math,
# these keep IEEE denormals and no FMA contraction (set in ggml-cuda's directory, where the target lives).
set(GGML_TQ_CUDA_EXACT_SOURCES ${GGML_TQ_DIR}/cuda/tq-cuda.cu)
set(GGML_TQ_CUDA_EXACT_OPTIONS -ftz=false -fmad=false)
