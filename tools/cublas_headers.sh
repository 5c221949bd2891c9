#!/usr/bin/env bash
# Prints the nvcc flag that makes cublas_v2.h visible: nothing where the toolkit has it, else "-isystem DIR" with
# DIR the headers of the nvidia-cublas wheel, fetched once and cached outside the clone (ggml-cuda includes
# cublas_v2.h; a toolkit of pip packages, as on the CI machine, may lack it). Its libraries are never used.
set -euo pipefail
CUBLAS_WHEEL_VERSION=13.1.1.3
cache=${GGML_TQ_CACHE:-$HOME/.cache/ggml-tq}
if echo '#include <cublas_v2.h>' | nvcc -E -x cu - -o /dev/null >/dev/null 2>&1; then
    exit 0
fi
inc=$cache/cublas-$CUBLAS_WHEEL_VERSION/include
if [ ! -f "$inc/cublas_v2.h" ]; then
    echo "fetching cuBLAS headers (nvidia-cublas $CUBLAS_WHEEL_VERSION wheel)" >&2
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary :all: "nvidia-cublas==$CUBLAS_WHEEL_VERSION" -d "$tmp" 2>&1 | grep -v "is ignored" >&2 || true
    whl=$(ls "$tmp"/nvidia_cublas-*.whl)
    mkdir -p "$inc"
    python3 - "$whl" "$inc" <<'PY'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in z.namelist():
        if "/include/" in name and not name.endswith("/"):
            with open(os.path.join(sys.argv[2], os.path.basename(name)), "wb") as f:
                f.write(z.read(name))
PY
    rm -rf "$tmp"
fi
echo "-isystem $inc"
