#!/usr/bin/env bash
# Rebuilds vendor/wasmtime from the crate published on crates.io plus our
# patches, or (--check) says whether the committed copy is exactly that.
# Needs curl (or the crate already in ~/.cargo/registry/cache).
set -euo pipefail
cd "$(dirname "$0")"

VERSION=48.0.8
SHA256=a2afcadb2e7d0417cb8f3f322c66eff49338b288f22290c0ca0bd3e9570732aa
PATCHES=(wasmtime-pagemap-scan-all-regions.patch wasmtime-no-fault-around-on-images.patch
    wasmtime-funcref-code-offsets.patch)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
crate="$work/wasmtime-$VERSION.crate"
cached=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"wasmtime-$VERSION.crate" 2>/dev/null | head -1 || true)
if [[ -n "$cached" ]]; then
    cp "$cached" "$crate"
else
    curl -fsSL "https://static.crates.io/crates/wasmtime/wasmtime-$VERSION.crate" -o "$crate"
fi
echo "$SHA256  $crate" | sha256sum -c --quiet -
tar -xzf "$crate" -C "$work"
rm -f "$work/wasmtime-$VERSION/.cargo-ok"
for p in "${PATCHES[@]}"; do
    patch -s -p1 -d "$work/wasmtime-$VERSION" < "$p"
done

if [[ "${1:-}" == --check ]]; then
    diff -r "$work/wasmtime-$VERSION" wasmtime >/dev/null \
        && echo "vendor/wasmtime is wasmtime $VERSION + ${PATCHES[*]}" \
        || { echo "vendor/wasmtime differs from wasmtime $VERSION + ${PATCHES[*]}" >&2; exit 1; }
else
    rm -rf wasmtime
    mv "$work/wasmtime-$VERSION" wasmtime
    echo "vendor/wasmtime rebuilt: wasmtime $VERSION + ${PATCHES[*]}"
fi
