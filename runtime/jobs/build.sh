#!/usr/bin/env bash
# Builds the guest SDK and every example job for wasm32-unknown-unknown with
# Debian's rustc (apt-get install rustc libstd-rust-dev-wasm32), which is the
# only wasm32 standard library on this platform. Each job's module is written
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
status=0
for dir in "$here"/*/; do
    name="$(basename "$dir")"
    [ -f "$dir/lib.rs" ] || continue
    "$rustc_bin" "${flags[@]}" --crate-type cdylib --crate-name "$name" \
        --extern invis="$out/libinvis.rlib" -L "$out" "$dir/lib.rs" -o "$out/$name.wasm"
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
