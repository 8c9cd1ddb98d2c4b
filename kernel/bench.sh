#!/usr/bin/env bash
# dmaplace's heap and pool, benchmarked in the guest (docs/PERFORMANCE.md): builds
# the custom kernel and the modules if needed, boots the custom kernel (not the
# debug one: its checkers would dominate) with 6 GiB and one CPU, and runs
# crates/linux/tests/kmod_bench.rs there: ALLOC + vgem import + free for the
# system heap, the CMA heap, dmaplace cold and warm, at 1, 8 and 32 MiB, and
# the pool's zeroing throughput against memset. Prints the table.
#
# Usage: kernel/bench.sh
set -Eeuo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RIG="$REPO/vm/rig.sh"
"$RIG" fetch
"$RIG" kernel
mapfile -t KOS < <("$REPO/kernel/build.sh")
json=$(RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=${DMAPLACE_KMOD_TARGET:-$REPO/target/kmod-guest} \
	cargo test --no-run --release --target x86_64-unknown-linux-gnu --message-format=json \
	-p dmaplace-linux --test kmod_bench)
BIN=$(jq -r 'select(.profile.test == true and .target.name == "kmod_bench") | .executable // empty' <<<"$json")
[[ -x $BIN ]] || { echo "kernel/bench.sh: no kmod_bench binary in cargo's output" >&2; exit 1; }
"$RIG" run --kernel custom --mem 6G --smp "${DMAPLACE_BENCH_SMP:-2}" --timeout 1800 --quiet --append "loglevel=4" \
	--insmod "${KOS[0]}" --insmod "${KOS[1]}" "$BIN"
log=$(ls -td "${DMAPLACE_VM_CACHE:-$HOME/.cache/dmaplace-vm}"/runs/*-custom-* | head -n1)/serial.log
tr -d '\r' <"$log" | grep -aE '^(bench:|\|)' || true
echo "[kernel/bench] log: $log" >&2
