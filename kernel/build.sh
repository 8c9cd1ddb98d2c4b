#!/usr/bin/env bash
# Builds the dmaplace kernel modules against the rig's custom kernel (or, with
# --debug, the debug kernel), in a copy outside the source tree (target/kmod,
# target/kmod-debug), and prints the .ko paths.
# Usage: kernel/build.sh [--debug]
set -Eeuo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FLAVOUR=()
OUT=${DMAPLACE_KMOD_OUT:-$REPO/target/kmod}
case ${1:-} in
--debug) FLAVOUR=(--debug); OUT=${DMAPLACE_KMOD_OUT:-$REPO/target/kmod-debug} ;;
"") ;;
*) echo "kernel/build.sh: unknown argument $1 (usage: kernel/build.sh [--debug])" >&2; exit 2 ;;
esac
eval "$("$REPO/vm/rig.sh" kernel-env "${FLAVOUR[@]}")"
mkdir -p "$OUT"
# Copy only what changed so that make's timestamps stay meaningful; a build for
# another kernel tree starts over.
if [[ $(cat "$OUT/.kernel-dir" 2>/dev/null) != "$DMAPLACE_KERNEL_DIR" ]]; then
	rm -rf "$OUT"
	mkdir -p "$OUT"
	printf '%s\n' "$DMAPLACE_KERNEL_DIR" >"$OUT/.kernel-dir"
fi
for f in "$REPO"/kernel/Kbuild "$REPO"/kernel/*.rs; do
	cmp -s "$f" "$OUT/$(basename "$f")" || cp "$f" "$OUT/"
done
if ! make -C "$DMAPLACE_KERNEL_DIR" M="$OUT" LLVM=1 modules >"$OUT/build.log" 2>&1; then
	cat "$OUT/build.log" >&2
	echo "kernel/build.sh: module build failed (log: $OUT/build.log)" >&2
	exit 1
fi
if grep -q '^warning' "$OUT/build.log"; then
	grep -A8 '^warning' "$OUT/build.log" >&2
	echo "kernel/build.sh: the modules build with warnings (log: $OUT/build.log)" >&2
	exit 1
fi
printf '%s\n' "$OUT/dmaplace.ko" "$OUT/dmaplace_testdev.ko"
