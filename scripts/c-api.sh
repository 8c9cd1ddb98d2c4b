#!/usr/bin/env bash
# libdmaplace's C side, end to end on this machine:
#   1. regenerates crates/capi/include/dmaplace.h with cbindgen and fails if the committed
#      one differs (--update writes it instead);
#   2. builds libdmaplace (crates/capi: cdylib + staticlib) and writes
#      target/pkgconfig/dmaplace.pc;
#   3. compiles examples/c/scanout.c with the system cc and
#      `pkg-config --cflags --libs dmaplace` (dynamic) and `--static` (for the qemu guest);
#   4. runs it against a dmaplaced on the simulated refsoc: a scanout buffer through the
#      daemon, its layout, errors with codes and messages.
# Installs cbindgen (cargo install --locked) when it is missing or older than 0.27.
set -Eeuo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
UPDATE=0
[[ ${1:-} == --update ]] && UPDATE=1
say() { printf '[c-api] %s\n' "$*" >&2; }

cbindgen_ok() {
	local v
	v=$(cbindgen --version 2>/dev/null | awk '{print $2}') || return 1
	[[ -n $v ]] && printf '0.27.0\n%s\n' "$v" | sort -V -C
}
if ! cbindgen_ok; then
	say "installing cbindgen (cargo install --locked cbindgen)"
	cargo install --locked cbindgen >/dev/null
	export PATH="$HOME/.cargo/bin:$PATH"
fi

HEADER=crates/capi/include/dmaplace.h
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd crates/capi && cbindgen --quiet --config cbindgen.toml --crate dmaplace-capi --output "$tmp/dmaplace.h" .)
if [[ $UPDATE == 1 ]]; then
	cp "$tmp/dmaplace.h" "$HEADER"
	say "wrote $HEADER"
elif ! diff -u "$HEADER" "$tmp/dmaplace.h"; then
	say "FAILED: $HEADER is stale: run scripts/c-api.sh --update and commit it"
	exit 1
fi

cargo build --release -q -p dmaplace-capi -p dmaplace-service
LIBDIR="$REPO/target/release"
PCDIR="$REPO/target/pkgconfig"
mkdir -p "$PCDIR"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
sed -e "s|@PREFIX@|$REPO|" -e "s|@LIBDIR@|$LIBDIR|" -e "s|@INCLUDEDIR@|$REPO/crates/capi/include|" \
	-e "s|@VERSION@|$version|" crates/capi/dmaplace.pc.in >"$PCDIR/dmaplace.pc"
export PKG_CONFIG_PATH="$PCDIR${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
OUT="$REPO/target/c-example"
mkdir -p "$OUT"
# shellcheck disable=SC2046 # pkg-config's output is meant to be word-split
cc -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -o "$OUT/scanout" examples/c/scanout.c $(pkg-config --cflags --libs dmaplace)
# shellcheck disable=SC2046
cc -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -static -o "$OUT/scanout-static" examples/c/scanout.c \
	$(pkg-config --cflags --static --libs dmaplace)
say "built $OUT/scanout (dynamic) and $OUT/scanout-static"

sock="$tmp/d.sock"
"$LIBDIR/dmaplaced" --backend sim --platform refsoc --socket "$sock" 2>"$tmp/daemon.log" &
daemon=$!
for _ in $(seq 200); do [[ -S $sock ]] && break; sleep 0.05; done
rc=0
LD_LIBRARY_PATH="$LIBDIR" "$OUT/scanout" "$sock" dpu 1920x1080 | tee "$tmp/out" || rc=$?
"$OUT/scanout-static" "$sock" dpu 640x480 | tee -a "$tmp/out" || rc=$?
kill -TERM "$daemon"
wait "$daemon" || { say "dmaplaced exited non-zero"; cat "$tmp/daemon.log" >&2; rc=1; }
# The dpu needs 64-byte pitches: 1920 * 4 = 7680 is one; the layout is the daemon's.
grep -q 'layout: 1920x1080 fourcc XR24 modifier 0x0 size 8294400 planes 1 pitch 7680 offset 0' "$tmp/out" || rc=1
[[ $(grep -c '^PASS$' "$tmp/out") == 2 ]] || rc=1
[[ $rc == 0 ]] || { say "FAILED"; exit 1; }
say "PASS"
