// Programmatic dependent launch (Hopper and newer) for the TQ kernels of a decode step, as ggml-cuda launches
// its own (common.cuh: ggml_cuda_kernel_launch, ggml_cuda_pdl_sync / _lc). A kernel launched this way is
// scheduled while the kernel before it still runs and waits in tq_pdl_wait until that one has finished and
// its writes are visible; tq_pdl_trigger lets the kernel after it be scheduled in turn. Without it every TQ
// kernel between two of ggml-cuda's pays the whole launch latency on both sides: at depth 0 that was about
// a tenth of the TQ cache's gap to f16 (ggml-tq/cuda/NOTES.md).
//
// Rule for a kernel launched with tq_cuda_launch: tq_pdl_wait before its first global-memory access (read or
// write: the previous kernel may still read what this one overwrites).
// Self-contained (no ggml-cuda header): tq-cuda.cu and bench/cuda build without ggml-cuda.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>

static __device__ __forceinline__ void tq_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

static __device__ __forceinline__ void tq_pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether kernel `fn` may be launched early: its PTX is 9.0 or newer, so the waits above were compiled in (a
// kernel JIT-compiled from older PTX has none and would race). GGML_CUDA_PDL=0 turns it off, as for ggml-cuda.
static bool tq_cuda_can_use_pdl(const void * fn) {
#if !(CUDART_VERSION >= 12030 || (!defined(_MSC_VER) && CUDART_VERSION >= 11080))
    (void) fn;
    return false; // the toolkits where ggml-cuda leaves PDL off too (common.cuh, GGML_CUDA_USE_PDL)
#endif
    static const bool enabled = [] {
        const char * e = getenv("GGML_CUDA_PDL");
        return e == nullptr || atoi(e) != 0;
    }();
    if (!enabled) {
        return false;
    }
    int device = 0;
    cudaGetDevice(&device);
    static std::mutex mutex;
    static std::map<std::pair<int, const void *>, bool> seen;
    std::lock_guard<std::mutex> lock(mutex);
    const auto key = std::make_pair(device, fn);
    auto it = seen.find(key);
    if (it == seen.end()) {
        cudaFuncAttributes attr = {};
        const bool ok = cudaFuncGetAttributes(&attr, fn) == cudaSuccess && attr.ptxVersion >= 90;
        it = seen.emplace(key, ok).first;
    }
    return it->second;
}

// A launch configuration that lets the kernel be scheduled before the one ahead of it has finished; attr must
// outlive the launch.
static cudaLaunchConfig_t tq_cuda_pdl_config(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, cudaLaunchAttribute & attr) {
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim          = grid;
    cfg.blockDim         = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream           = stream;
    cfg.attrs            = &attr;
    cfg.numAttrs         = 1;
    return cfg;
}

// cudaLaunchKernel(fn, grid, block, args, smem, stream), launched early where tq_cuda_can_use_pdl allows
static void tq_cuda_launch_fn(const void * fn, dim3 grid, dim3 block, void ** args, size_t smem, cudaStream_t stream) {
    if (tq_cuda_can_use_pdl(fn)) {
        cudaLaunchAttribute attr;
        const cudaLaunchConfig_t cfg = tq_cuda_pdl_config(grid, block, smem, stream, attr);
        cudaLaunchKernelExC(&cfg, fn, args);
        return;
    }
    cudaLaunchKernel(fn, grid, block, args, smem, stream);
}

// kernel<<<grid, block, smem, stream>>>(args...), launched early where tq_cuda_can_use_pdl allows
template <typename... KArgs, typename... Args>
static void tq_cuda_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args &&... args) {
    if (tq_cuda_can_use_pdl((const void *) kernel)) {
        cudaLaunchAttribute attr;
        const cudaLaunchConfig_t cfg = tq_cuda_pdl_config(grid, block, smem, stream, attr);
        cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
        return;
    }
    kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
}
