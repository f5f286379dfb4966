#!/usr/bin/env bash
# Builds the guest SDK and every example job for wasm32-unknown-unknown with
# Debian's rustc (apt-get install rustc libstd-rust-dev-wasm32), which is the
# only wasm32 standard library on this platform, and C jobs (job.c, using
# runtime/sdk/invis.h) with clang and wasm-ld (apt-get install clang lld). Each job's module is written
# next to its source as job.wasm, which is committed so that `invis demo`
# works on machines without the wasm toolchain.
#
#   runtime/jobs/build.sh           build all jobs
#   runtime/jobs/build.sh --check   rebuild into a temporary directory and
#                                   fail if a committed job.wasm is stale
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
rustc_bin="${GUEST_RUSTC:-/usr/bin/rustc}"
targets="$("$rustc_bin" --print target-list 2>/dev/null || true)"
if ! grep -qx wasm32-unknown-unknown <<<"$targets"; then
    echo "error: $rustc_bin cannot target wasm32-unknown-unknown; install Debian's rustc and libstd-rust-dev-wasm32" >&2
    exit 2
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
flags=(--edition 2021 --target wasm32-unknown-unknown -O -C debuginfo=0 -C strip=symbols --remap-path-prefix "$here/..=/invis")
"$rustc_bin" "${flags[@]}" --crate-type rlib --crate-name invis "$here/../sdk/src/lib.rs" -o "$out/libinvis.rlib"
clang_bin="${GUEST_CLANG:-clang}"
cflags=(--target=wasm32-unknown-unknown -O2 -nostdlib -ffile-prefix-map="$here/..=/invis"
    -Wl,--no-entry -Wl,--export=run -Wl,--strip-all)
status=0
for dir in "$here"/*/; do
    name="$(basename "$dir")"
    if [ -f "$dir/lib.rs" ]; then
        "$rustc_bin" "${flags[@]}" --crate-type cdylib --crate-name "$name" \
            --extern invis="$out/libinvis.rlib" -L "$out" "$dir/lib.rs" -o "$out/$name.wasm"
    elif [ -f "$dir/job.c" ]; then
        if ! command -v "$clang_bin" >/dev/null || ! command -v wasm-ld >/dev/null; then
            echo "error: $name is a C job; install clang and lld (wasm-ld)" >&2
            exit 2
        fi
        "$clang_bin" "${cflags[@]}" -o "$out/$name.wasm" "$dir/job.c"
    else
        continue
    fi
    if [ "${1:-}" = "--check" ]; then
        if ! cmp -s "$out/$name.wasm" "$dir/job.wasm"; then
            echo "stale: $dir/job.wasm differs from a fresh build of $dir/lib.rs (run runtime/jobs/build.sh)" >&2
            status=1
        else
            echo "ok: $name"
        fi
    else
        cp "$out/$name.wasm" "$dir/job.wasm"
        echo "built: $dir/job.wasm ($(wc -c < "$dir/job.wasm") bytes)"
    fi
done
exit $status
