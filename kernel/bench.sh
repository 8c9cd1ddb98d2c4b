#!/usr/bin/env bash
# dmaplace's heap and pool, benchmarked in the guest (docs/PERFORMANCE.md): builds
# the custom kernel and the modules if needed, boots the custom kernel (not the
# debug one: its checkers would dominate) with 6 GiB and 2 CPUs (the pool's
# worker uses the spare one; DMAPLACE_BENCH_SMP=1 for one), and runs
# crates/linux/tests/kmod_bench.rs there: ALLOC + import (vgem, then the test
# importer) + free for the system heap, the CMA heap, dmaplace cold and warm, at
# 1, 8 and 32 MiB, and the pool's zeroing throughput against memset. Prints the
# tables.
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
	--insmod "${KOS[0]}" --insmod "${KOS[1]}" "$BIN" 2> >(tee "$REPO/target/bench-rig.log" >&2)
# This run's log, as the rig named it (other rigs may boot the same kernel meanwhile).
log=$(sed -n 's/.*booting .*, log: \(.*\)$/\1/p' "$REPO/target/bench-rig.log" | head -n1)
[[ -f $log ]] || { echo "kernel/bench.sh: the rig named no serial log" >&2; exit 1; }
tr -d '\r' <"$log" | grep -aE '^(bench:|\||importer:|8 MiB, )' || true
echo "[kernel/bench] log: $log" >&2
