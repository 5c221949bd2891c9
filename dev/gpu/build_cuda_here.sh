#!/usr/bin/env bash
# Builds the CUDA tools of dev/gpu/cuda_device.sh on this machine, which has nvcc but no GPU, and packs them as
# .carry/cuda-bin.tar.xz: a GPU call that carries .carry then skips the cold build (about 5 minutes of device
# time; here it took 33 minutes of 2 cores and no device time). Same source pack (dev/gpu/pack_llama.sh),
# same configure and targets (cuda_device.sh's step_build, run here), stamped with dev/gpu/cuda_src_hash.sh.
# What differs from a build on the GPU machine, and why:
#   - libcuda, libcublas and libcublasLt are linked against empty stubs that carry only their sonames: the
#     binaries record the names, and the GPU machine's driver and toolkit supply the libraries;
#   - the CPU backend is built for AVX2/FMA/F16C, not -march=native: this CPU is not the GPU machine's.
# The build lives in /tmp/tq as on the GPU machine, so the binaries' RUNPATH names the same folder there.
#   dev/gpu/build_cuda_here.sh            JOBS (default 2)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
W=/tmp/tq
stubs=$W/stubs
log() { printf '\033[1m[build_cuda_here]\033[0m %s\n' "$*"; }

tools/fetch_llama.sh >/dev/null
dev/gpu/pack_llama.sh >/dev/null
rm -f .carry/cuda-bin.tar.xz

mkdir -p $stubs
: > $stubs/empty.c
for so in libcuda.so.1 libcublas.so.13 libcublasLt.so.13; do
    gcc -shared -fPIC -Wl,-soname,$so $stubs/empty.c -o $stubs/$so
    ln -sf $so $stubs/${so%%.so*}.so
done

log "building in $W/build (cuda_device.sh build)"
TQ_WORK=$W CUDAFLAGS=$(tools/cublas_headers.sh) JOBS=${JOBS:-2} \
CMAKE_EXTRA="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
    -DCUDA_cuda_driver_LIBRARY=$stubs/libcuda.so -DCUDA_cublas_LIBRARY=$stubs/libcublas.so
    -DCUDA_cublasLt_LIBRARY=$stubs/libcublasLt.so
    -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined -DCMAKE_SHARED_LINKER_FLAGS=-Wl,--no-as-needed" \
    dev/gpu/cuda_device.sh build

# bin/ holds the tools of step_build and the shared libraries they load (the stubs are elsewhere)
hash=$(dev/gpu/cuda_src_hash.sh)
test -f $W/build/bin/libggml-cuda.so || { echo "no libggml-cuda.so in $W/build/bin" >&2; exit 1; }
echo "$hash" > $W/build/bin/SOURCE_HASH
tar -C $W/build/bin -cJf .carry/cuda-bin.tar.xz .
log "packed .carry/cuda-bin.tar.xz ($(du -h .carry/cuda-bin.tar.xz | cut -f1), sources $hash)"
