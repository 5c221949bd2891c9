#!/usr/bin/env bash
# CUDA compile check for CI (no GPU needed): compiles, with ggml-cuda's own nvcc command lines for sm_90,
#   - every .cu file the project adds (ggml-tq/cuda/*.cu),
#   - every ggml-cuda .cu file that patches/ modifies or adds (template instances included),
#   - for each ggml-cuda .cuh header that patches/ modifies, the ggml-cuda .cu files that include it
#     (a template instance only when no other file does),
# then links the CUDA unit test tests/cuda/test-tq-cuda.cu into build/cuda-check/test-tq-cuda (run it on a GPU)
# and the int8 decode kernel's bench bench/cuda/fattn_bench.cu into build/cuda-check/fattn_bench.
# Fails on any compile error. The nvcc command lines come from CMake's compile_commands.json of a CUDA
# configure of build/llama.cpp-src (configure only: nothing is linked against cuBLAS or the driver).
#   tools/check_cuda.sh          compile check + unit test
#   tools/check_cuda.sh --test   unit test only
# Environment: JOBS (default 2), CUDA_ARCH (default 90).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
src=$here/build/llama.cpp-src
out=$here/build/cuda-check
jobs=${JOBS:-2}
arch=${CUDA_ARCH:-90}
only_test=0
[ "${1:-}" = "--test" ] && only_test=1
log() { printf '\033[1m[check_cuda]\033[0m %s\n' "$*"; }
t_start=$(date +%s)

command -v nvcc >/dev/null || { echo "nvcc not found" >&2; exit 1; }
[ -d "$src" ] || "$here/tools/fetch_llama.sh"
mkdir -p "$out/obj"

# --- cuBLAS headers (tools/cublas_headers.sh) -------------------------------------------------------
extra_inc=$("$here/tools/cublas_headers.sh")

# --- ggml-cuda's nvcc command lines ---------------------------------------------------------------
cmake_dir=$out/cmake
args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch"
      -DCMAKE_EXPORT_COMPILE_COMMANDS=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
      "-DCMAKE_CUDA_FLAGS=$extra_inc"
      # link-time libraries a compile check never uses, absent from a pip-package toolkit
      -DCUDA_cublas_LIBRARY="$out/not-linked/libcublas.so" -DCUDA_cublasLt_LIBRARY="$out/not-linked/libcublasLt.so"
      -DCUDA_cuda_driver_LIBRARY="$out/not-linked/libcuda.so")
if ! cmake -S "$src" -B "$cmake_dir" "${args[@]}" > "$out/cmake.log" 2>&1; then
    tail -30 "$out/cmake.log"
    echo "CMake configure of the CUDA build failed: $out/cmake.log" >&2
    exit 1
fi

# --- what to compile ------------------------------------------------------------------------------
files=()
if [ $only_test = 0 ]; then
    mapfile -t files < <(python3 - "$here" "$src" <<'EOF'
import glob, os, re, sys
here, src = sys.argv[1], sys.argv[2]
cuda = "ggml/src/ggml-cuda/"
touched = set()
for p in sorted(glob.glob(os.path.join(here, "patches", "*.patch"))):
    for line in open(p, encoding="utf-8", errors="replace"):
        m = re.match(r"^\+\+\+ b/(" + re.escape(cuda) + r"\S+\.cuh?)$", line.rstrip("\n"))
        if m:
            touched.add(m.group(1))
files = sorted(glob.glob(os.path.join(here, "ggml-tq", "cuda", "*.cu")))
files += [os.path.join(src, f) for f in sorted(touched) if f.endswith(".cu")]
all_cu = sorted(glob.glob(os.path.join(src, cuda, "*.cu"))) + sorted(glob.glob(os.path.join(src, cuda, "template-instances", "*.cu")))
for h in sorted(f for f in touched if f.endswith(".cuh")):
    inc = re.compile(r'#include\s+"(\.\./)?' + re.escape(os.path.basename(h)) + '"')
    users = [f for f in all_cu if inc.search(open(f, encoding="utf-8", errors="replace").read())]
    direct = [f for f in users if "/template-instances/" not in f]
    files += direct or users[:1]
seen = set()
for f in files:
    if f not in seen:
        seen.add(f)
        print(f)
EOF
    )
fi

# one shell line per file: its own compile command, or that of ggml-cuda.cu for a file this configuration
# does not build (a template instance outside GGML_CUDA_FA_QUANTS), with the object under build/cuda-check
python3 - "$cmake_dir/compile_commands.json" "$src/ggml/src/ggml-cuda/ggml-cuda.cu" "$out/obj" "${files[@]}" > "$out/commands.txt" <<'EOF'
import json, os, shlex, sys
db = {os.path.realpath(e["file"]): e for e in json.load(open(sys.argv[1]))}
fallback = db[os.path.realpath(sys.argv[2])]
for f in sys.argv[4:]:
    e = db.get(os.path.realpath(f))
    cmd = (e or fallback)["command"]
    if e is None:
        cmd = cmd.replace(fallback["file"], f)
    argv = shlex.split(cmd)
    i = argv.index("-o")
    argv[i + 1] = os.path.join(sys.argv[3], os.path.basename(f) + ".o")
    print((e or fallback)["directory"] + "\t" + f + "\t" + " ".join(shlex.quote(a) for a in argv))
EOF

compile_one() {
    local dir file cmd
    IFS=$'\t' read -r dir file cmd <<< "$1"
    local t0=$SECONDS
    if (cd "$dir" && eval "$cmd") > "$2/obj/$(basename "$file").log" 2>&1; then
        printf 'compiled %-70s %4ds\n' "${file#$3/}" $((SECONDS - t0))
        grep -i "warning" "$2/obj/$(basename "$file").log" | head -5 || true
    else
        printf 'FAILED   %s\n' "${file#$3/}"
        cat "$2/obj/$(basename "$file").log"
        return 1
    fi
}
export -f compile_one

failed=0
if [ ${#files[@]} -gt 0 ]; then
    log "compiling ${#files[@]} files for sm_$arch with $jobs jobs"
    tr '\n' '\0' < "$out/commands.txt" | xargs -0 -P "$jobs" -I{} bash -c 'compile_one "$@"' _ {} "$out" "$here" || failed=1
fi

# --- the unit test: tests/cuda/test-tq-cuda.cu + tq-cuda.cu (ggml-cuda's flags for it) + tq-ref.c --------
log "linking tests/cuda/test-tq-cuda.cu -> build/cuda-check/test-tq-cuda"
tq_line=$(python3 - "$cmake_dir/compile_commands.json" "$here/ggml-tq/cuda/tq-cuda.cu" <<'EOF'
import json, os, shlex, sys
e = next(e for e in json.load(open(sys.argv[1])) if os.path.realpath(e["file"]) == os.path.realpath(sys.argv[2]))
argv = shlex.split(e["command"])
# keep the flags, drop the compiler, the output, the source and the library-export define
skip = {"-o", "-c"}
flags, i = [], 1
while i < len(argv):
    a = argv[i]
    if a in skip:
        i += 1 + (a == "-o")
        continue
    if os.path.realpath(a) == os.path.realpath(sys.argv[2]) or a == "-x" or (i > 0 and argv[i - 1] == "-x") \
            or a.startswith("-Dggml_cuda_EXPORTS") or a in ("-DGGML_BACKEND_BUILD", "-DGGML_BACKEND_SHARED", "-DGGML_SHARED"):
        i += 1
        continue
    flags.append(a)
    i += 1
print(" ".join(shlex.quote(a) for a in flags))
EOF
)
test_ok=1
if ! (cd "$cmake_dir" &&
      gcc -std=c11 -O2 -ffp-contract=off -I "$here/ggml-tq/include" -I "$here/ggml-tq/src" -c "$here/ggml-tq/src/tq-ref.c" -o "$out/obj/tq-ref.o" &&
      eval "nvcc $tq_line -I $here/tests/cuda $here/tests/cuda/test-tq-cuda.cu $here/ggml-tq/cuda/tq-cuda.cu $out/obj/tq-ref.o -o $out/test-tq-cuda") \
      > "$out/test-tq-cuda.log" 2>&1; then
    cat "$out/test-tq-cuda.log"
    echo "FAILED   tests/cuda/test-tq-cuda.cu"
    test_ok=0
fi

# --- the bench of the int8 decode kernel (bench/cuda), the kernel alone without ggml-cuda --------------
log "linking bench/cuda/fattn_bench.cu -> build/cuda-check/fattn_bench"
if ! nvcc -O3 -std=c++17 -arch=sm_$arch -I "$src/ggml/include" -I "$src/ggml/src" -I "$here/ggml-tq/include" -I "$here/ggml-tq/src" \
        -I "$here/ggml-tq/cuda" -I "$here/bench/cuda" "$here/bench/cuda/fattn_bench.cu" "$out/obj/tq-ref.o" -o "$out/fattn_bench" > "$out/fattn_bench.log" 2>&1; then
    cat "$out/fattn_bench.log"
    echo "FAILED   bench/cuda/fattn_bench.cu"
    test_ok=0
fi

log "done in $(( $(date +%s) - t_start ))s"
if [ $failed = 1 ] || [ $test_ok = 0 ]; then
    echo "CUDA compile check failed" >&2
    exit 1
fi
echo "CUDA compile check passed: $(( ${#files[@]} + 2 )) translation units; run build/cuda-check/test-tq-cuda on a GPU"
