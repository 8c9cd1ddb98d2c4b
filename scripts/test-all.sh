#!/usr/bin/env bash
# dmaplace's whole test suite: the README's test command, and what CI runs after fmt
# and clippy. Every step fails loudly; a summary of step times ends the run.
#
#   1. cargo test --workspace --release: unit, exact, property (10,000 cases each),
#      snapshot and seeded stress tests, every one from a fixed seed (DMAPLACE_SEED,
#      PROPTEST_RNG_SEED override it; scripts/soak.sh explores fresh ones); guest-only
#      tests are #[ignore]d on the host with the reason.
#   2. scripts/fuzz-smoke.sh: every cargo-fuzz target for a fixed count of inputs from a
#      fixed seed (FUZZ_RUNS, FUZZ_SEED).
#   3. vm/test-linux.sh: the Linux backends on Debian 6.12 and a self-built 6.12 in qemu.
#   4. kernel/test.sh: the Rust-for-Linux exporter module in qemu, with and without an IOMMU.
#   5. vm/test-daemon.sh: dmaplaced on real heaps, the C example's ADDFB2, `dmaplace probe`
#      against what qemu provides. (scripts/c-api.sh, the C header/pkg-config/example
#      check, runs after the fuzz smoke.)
#
# Environment: PROPTEST_CASES (default 10000), DMAPLACE_STRESS_OPS (default 60000),
# FUZZ_RUNS, FUZZ_SEED, DMAPLACE_VM_CACHE (qemu rig cache, default ~/.cache/dmaplace-vm),
# DMAPLACE_SKIP_VM=1 to skip steps 3, 4 and 5 (say so in any report that uses it).
set -Eeuo pipefail
cd "$(dirname "$0")/.."

export PROPTEST_CASES=${PROPTEST_CASES:-10000}
export DMAPLACE_STRESS_OPS=${DMAPLACE_STRESS_OPS:-60000}
# A snapshot that is missing or differs fails; nothing is written.
export INSTA_UPDATE=no
SUMMARY=()
step() {
	local name=$1 t0 t1
	shift
	echo "=== test-all: $name" >&2
	t0=$(date +%s)
	if ! "$@"; then
		echo "=== test-all: FAILED at: $name" >&2
		exit 1
	fi
	t1=$(date +%s)
	SUMMARY+=("$(printf '%-40s %5ss' "$name" $((t1 - t0)))")
}

step "cargo test --workspace --release" cargo test --workspace --release
step "fuzz smoke" scripts/fuzz-smoke.sh
step "C API: header, pkg-config, example (scripts/c-api.sh)" scripts/c-api.sh
if [[ ${DMAPLACE_SKIP_VM:-0} == 1 ]]; then
	echo "=== test-all: DMAPLACE_SKIP_VM=1: the qemu steps did NOT run" >&2
	verdict="PASS (host only; qemu steps skipped: vm/test-linux.sh, kernel/test.sh, vm/test-daemon.sh)"
else
	step "Linux backends in qemu (vm/test-linux.sh)" vm/test-linux.sh
	step "kernel module in qemu (kernel/test.sh)" kernel/test.sh
	step "dmaplaced and probe in qemu (vm/test-daemon.sh)" vm/test-daemon.sh
	verdict="PASS"
fi
echo "=== test-all: $verdict"
printf '  %s\n' "${SUMMARY[@]}"
