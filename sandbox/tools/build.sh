#!/bin/sh
# Rebuild every sample tool's tool.wasm from its main.c, reproducibly, with Debian's wasm32 clang:
#   apt-get install -y clang lld wasi-libc libclang-rt-dev-wasm32
# Usage: sandbox/tools/build.sh [OUT_DIR]   (default: next to each source); prints "sha256  tool"
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-}"
CC="${CC:-clang}"
for src in "$here"/*/main.c; do
    tool="$(basename "$(dirname "$src")")"
    if [ -n "$out" ]; then dest="$out/$tool.wasm"; mkdir -p "$out"; else dest="$(dirname "$src")/tool.wasm"; fi
    # Relative source path and a fixed prefix map keep the binary independent of the checkout path.
    (cd "$here" && "$CC" --target=wasm32-wasi --sysroot=/usr -O2 -Wall -Werror \
        -ffile-prefix-map="$here"=. -I include -Wl,--strip-all \
        -o "$dest" "$tool/main.c" -lm)
    echo "$(sha256sum "$dest" | cut -d' ' -f1)  $tool"
done
