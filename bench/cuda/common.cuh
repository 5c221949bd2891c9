// Stands in for ggml-cuda's common.cuh when fattn_bench builds the TQ decode kernels without ggml-cuda: the few
// of its definitions that tq-fattn-common.cuh and tq-fattn-mma-i8.cuh use, as ggml-cuda has them on a CUDA 12.3+
// toolkit, the early launch (PDL) included, so that the bench times the kernels as ggml-cuda launches them.
// fattn_bench.cu's include path puts this folder after ggml-tq/cuda: "common.cuh" from those headers lands here.
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>

#include "ggml.h"
// ggml's block types (q8_0, the keys of the long-context pairing), as ggml-cuda's common.cuh declares them
#define GGML_COMMON_DECL_CUDA
#include "ggml-common.h"

#define GGML_CUDA_MAX_DEVICES 16
#define NO_DEVICE_CODE        __trap()

// GGML_ASSERT and GGML_ABORT end here (the bench links without libggml), CUDA errors too
extern "C" void ggml_abort(const char * file, int line, const char * fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "%s:%d: ", file, line);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    abort();
}

#define CUDA_CHECK(x) do { const cudaError_t err_ = (x); if (err_ != cudaSuccess) ggml_abort(__FILE__, __LINE__, "%s: %s", #x, cudaGetErrorString(err_)); } while (0)

static int ggml_cuda_get_device() {
    int id = 0;
    CUDA_CHECK(cudaGetDevice(&id));
    return id;
}

static __device__ __forceinline__ float get_alibi_slope(
    const float max_bias, const uint32_t h, const uint32_t n_head_log2, const float m0, const float m1) {
    if (max_bias <= 0.0f) {
        return 1.0f;
    }
    const float base = h < n_head_log2 ? m0 : m1;
    const int   exph = h < n_head_log2 ? h + 1 : 2*(h - n_head_log2) + 1;
    return powf(base, exph);
}

static __device__ __forceinline__ void ggml_cuda_pdl_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cudaGridDependencySynchronize();
#endif
}

static __device__ __forceinline__ void ggml_cuda_pdl_lc() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cudaTriggerProgrammaticLaunchCompletion();
#endif
}

struct ggml_cuda_kernel_launch_params {
    dim3 block_nums;
    dim3 block_dims;
    size_t shmem;
    cudaStream_t stream;
    ggml_cuda_kernel_launch_params(const dim3 & block_nums_, const dim3 & block_dims_, const int shmem_, const cudaStream_t stream_)
        : block_nums(block_nums_), block_dims(block_dims_), shmem((size_t) shmem_), stream(stream_) {}
};

// Early launch for a kernel compiled from PTX 9.0 or newer (older PTX has no waits in it); GGML_CUDA_PDL=0 off.
static bool ggml_cuda_kernel_can_use_pdl(const void * kernel) {
    static std::mutex mutex;
    static std::map<std::pair<int, const void *>, bool> cache;
    std::lock_guard<std::mutex> lock(mutex);
    const auto key = std::make_pair(ggml_cuda_get_device(), kernel);
    auto it = cache.find(key);
    if (it == cache.end()) {
        cudaFuncAttributes attr = {};
        CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
        it = cache.emplace(key, attr.ptxVersion >= 90).first;
    }
    return it->second;
}

template <typename Kernel, typename... Args>
static void ggml_cuda_kernel_launch(Kernel kernel, const ggml_cuda_kernel_launch_params & lp, Args &&... args) {
    static const bool env_pdl_enabled = [] {
        const char * env = getenv("GGML_CUDA_PDL");
        return env == nullptr || atoi(env) != 0;
    }();
    if (env_pdl_enabled && ggml_cuda_kernel_can_use_pdl((const void *) kernel)) {
        cudaLaunchAttribute attr;
        attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr.val.programmaticStreamSerializationAllowed = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim          = lp.block_nums;
        cfg.blockDim         = lp.block_dims;
        cfg.dynamicSmemBytes = lp.shmem;
        cfg.stream           = lp.stream;
        cfg.attrs            = &attr;
        cfg.numAttrs         = 1;
        CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
        return;
    }
    kernel<<<lp.block_nums, lp.block_dims, lp.shmem, lp.stream>>>(std::forward<Args>(args)...);
    CUDA_CHECK(cudaGetLastError());
}
