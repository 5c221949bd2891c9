#!/usr/bin/env bash
# The decode kernel of ballot-diagnostic.patch (its printf lines start with TQDBG) at a Gemma-3-270m llama-server's
# start and one completion, with CUDA graphs and without (GGML_TQ_X=1 sets nothing: the graphs-on case), tq4_0 and
# q8_0 keys with tq4_0 values. Here: git apply ballot-diagnostic.patch; dev/gpu/build_cuda_here.sh; then pack
# /tmp/tq/build/bin/libggml-cuda.so.0.25.3 as .carry/dbg/cuda-dbg.tar.xz and undo the patch. There (after
# `dev/gpu/cuda_device.sh build` and `gemma3`), carrying .carry/dbg/cuda-dbg.tar.xz:
#   results/cuda-h100/server-start-hang/ballot-diagnostic.sh | tee $OUT/dbg.log
# It swaps the library in and puts the build's own back when done.
W=/tmp/tq; B=$W/build/bin
[ -f $W/ld_path ] && export LD_LIBRARY_PATH=$(cat $W/ld_path)
cp $B/libggml-cuda.so.0.25.3 $W/final.so && tar -C $B -xJf .carry/dbg/cuda-dbg.tar.xz
for e in GGML_TQ_X=1 GGML_CUDA_DISABLE_GRAPHS=1; do
  for ck in tq4_0 q8_0; do
    echo "=== $e $ck"
    env $e $B/llama-server -m $W/gemma3-270m-q4_k_m.gguf -ngl 99 -c 32768 -ctk $ck -ctv tq4_0 -fa on --port 8091 > $W/srv.log 2>&1 &
    pid=$!
    python3 - <<'PY'
import json, time, urllib.request
t0 = time.time()
while time.time() - t0 < 30:
    try:
        urllib.request.urlopen("http://127.0.0.1:8091/health", timeout=2).read(); break
    except Exception:
        time.sleep(0.5)
print(f"up after {time.time() - t0:.1f} s")
try:
    r = urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:8091/completion",
        data=json.dumps({"prompt": "The capital of France is", "n_predict": 8, "temperature": 0}).encode(),
        headers={"Content-Type": "application/json"}), timeout=20)
    print("completion:", json.loads(r.read())["content"][:200])
except Exception as ex:
    print("completion failed:", ex)
PY
    kill $pid; wait $pid 2>/dev/null
    echo "TQDBG lines: $(grep -c TQDBG $W/srv.log); non-finite q lines: $(grep 'TQDBG q' $W/srv.log | grep -vc ' 0 non-finite'); split lines: $(grep -c 'TQDBG split' $W/srv.log)"
    grep 'TQDBG split' $W/srv.log | head -12
    grep 'TQDBG q' $W/srv.log | grep -v ' 0 non-finite' | head -6
    grep 'TQDBG q' $W/srv.log | head -4
    cp $W/srv.log $OUT/srv-${ck}-${e%%=*}.log
  done
done
cp $W/final.so $B/libggml-cuda.so.0.25.3
