#!/usr/bin/env bash
# Regenerate patches/ from the commits on top of "upstream" in build/llama.cpp-src.
# Edit the tree, commit there (one commit per patch, subject says what, body says why), then run this.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
src=$here/build/llama.cpp-src
rm -f "$here"/patches/*.patch
git -C "$src" format-patch --quiet --no-signature --zero-commit --no-numbered --full-index upstream..HEAD -o "$here/patches"
ls "$here"/patches
find "$here/patches" -name "*.patch" | sort | xargs -r cat | sha256sum | cut -d' ' -f1 > "$here/build/llama.cpp-src.patches"
