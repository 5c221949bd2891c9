#!/usr/bin/env bash
# Prints a hash of everything a CUDA build of the patched llama.cpp is made from: the patch series and the
# ggml-tq sources (the pinned sdist is fixed by tools/fetch_llama.sh). dev/gpu/build_cuda_here.sh stamps its
# binaries with it and dev/gpu/cuda_device.sh uses them only when the working tree gives the same hash.
set -euo pipefail
cd "$(dirname "$0")/../.."
{
    grep -m1 '^SDIST_SHA256=' tools/fetch_llama.sh
    find patches ggml-tq -type f \( -name '*.patch' -o -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.cmake' \) |
        LC_ALL=C sort | while read -r f; do printf '%s ' "$f"; sha256sum < "$f"; done
} | sha256sum | cut -c1-16
