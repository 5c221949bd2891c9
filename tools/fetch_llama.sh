#!/usr/bin/env bash
# Fetch the pinned llama.cpp (vendored in the llama-cpp-python 0.3.36 sdist on PyPI), check its
# checksum, and lay it out at build/llama.cpp-src as a git tree with patches/ applied on top of an
# "upstream" commit. Fails loudly when a patch does not apply. Idempotent: an up-to-date tree is kept.
#   tools/fetch_llama.sh [--force]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
SDIST=llama_cpp_python-0.3.36.tar.gz
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
cache=${GGML_TQ_CACHE:-$HOME/.cache/ggml-tq}
src=$here/build/llama.cpp-src
stamp=$here/build/llama.cpp-src.patches  # outside the tree, so that no patch picks it up

mkdir -p "$cache" "$here/build"
if [ ! -f "$cache/$SDIST" ] || ! echo "$SDIST_SHA256  $cache/$SDIST" | sha256sum -c --quiet - 2>/dev/null; then
    echo "fetching $SDIST from PyPI"
    rm -f "$cache/$SDIST"
    python3 -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation llama-cpp-python==0.3.36 -d "$cache" 2>/dev/null ||
        python3 -m pip download --quiet --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$cache"
fi
echo "$SDIST_SHA256  $cache/$SDIST" | sha256sum -c --quiet - || { echo "checksum mismatch for $cache/$SDIST" >&2; exit 1; }

want=$(find "$here/patches" -name "*.patch" | sort | xargs -r cat | sha256sum | cut -d' ' -f1)
if [ "${1:-}" != "--force" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "llama.cpp source up to date: $src"
    exit 0
fi

rm -rf "$src" "$src.tmp"
mkdir -p "$src.tmp"
tar -xzf "$cache/$SDIST" -C "$src.tmp" --strip-components=3 llama_cpp_python-0.3.36/vendor/llama.cpp
rm -rf "$src.tmp/.git"  # the sdist keeps a submodule pointer file
mv "$src.tmp" "$src"
cd "$src"
git init -q
git config user.name ggml-tq; git config user.email ggml-tq@localhost; git config core.autocrlf false
git add -A >/dev/null
git commit -qm "upstream: llama.cpp vendored in llama-cpp-python 0.3.36" --no-verify
git tag upstream
# our kernels are compiled in from the project's own folder, not copied into a patch
ln -s "$here/ggml-tq" ggml/src/ggml-tq
echo "ggml/src/ggml-tq" >> .git/info/exclude
shopt -s nullglob
patches=("$here"/patches/*.patch)
if [ ${#patches[@]} -gt 0 ]; then
    git am -q --whitespace=nowarn "${patches[@]}" || { echo "a patch in patches/ does not apply to the pinned llama.cpp (see above)" >&2; git am --abort || true; exit 1; }
fi
echo "$want" > "$stamp"
echo "llama.cpp source ready with ${#patches[@]} patches: $src"
