#!/usr/bin/env bash
# dmaplace's kernel module, end to end: builds the rig's custom kernel if needed
# (vm/rig.sh kernel: one kernel for this and the Linux-backend rig, cached by
# version outside the clone), builds dmaplace.ko and dmaplace_testdev.ko from
# nothing, runs the host-side differential test of the module's merge against
# dmaplace-core, builds the static guest tests, and boots the kernel twice under
# qemu (without and with intel-iommu, 6 GiB so that RAM extends above 4 GiB)
# to run them as root. Fails loudly; prints every scenario's placement.
#
# Usage: kernel/test.sh [--filter NAME] [--no-iommu] [--only-iommu] [--keep-going]
# Environment: DMAPLACE_VM_CACHE (rig cache), DMAPLACE_VM_JOBS (kernel make -j).
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RIG="$REPO/vm/rig.sh"
TARGET_DIR=${DMAPLACE_KMOD_TARGET:-$REPO/target/kmod-guest}
FILTER=""
BOOTS=(plain iommu)
KEEP_GOING=0
MEM=6G
TIMEOUT=600

while [[ $# -gt 0 ]]; do
	case $1 in
	--filter) FILTER=${2:?}; shift 2 ;;
	--no-iommu) BOOTS=(plain); shift ;;
	--only-iommu) BOOTS=(iommu); shift ;;
	--keep-going) KEEP_GOING=1; shift ;;
	-h | --help) sed -n '2,13p' "$0"; exit 0 ;;
	*) echo "kernel/test.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done

say() { printf '[kernel/test %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
fail() {
	printf '\n[kernel/test] FAILED: %s\n\n' "$*" >&2
	exit 1
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
T0=$(now)
TIMES=()
step() { # step NAME CMD...: runs and times one step
	local name=$1 t
	shift
	t=$(now)
	"$@" || fail "$name"
	TIMES+=("$(printf '%-28s %6ss' "$name" "$(secs "$t" "$(now)")")")
}

# 1. qemu, busybox and the custom kernel (no-ops when cached).
step "rig fetch" "$RIG" fetch
step "rig kernel" "$RIG" kernel

# 2. The modules, from nothing (a fresh build dir each time).
build_modules() {
	rm -rf "$REPO/target/kmod"
	mapfile -t KOS < <("$REPO/kernel/build.sh")
	[[ ${#KOS[@]} -eq 2 && -f ${KOS[0]} && -f ${KOS[1]} ]] || fail "kernel/build.sh produced no modules"
	say "modules: ${KOS[*]}"
}
step "build modules" build_modules

# 3. The host-side differential test of kernel/plan.rs against dmaplace-core.
step "host: kmod_plan test" cargo test -q -p dmaplace-linux --test kmod_plan

# 4. The guest tests, static.
build_guest_tests() {
	local json
	json=$(RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=$TARGET_DIR \
		cargo test --no-run --release --target x86_64-unknown-linux-gnu --message-format=json \
		-p dmaplace-linux --test kmod --test kmod_unload) || fail "building the guest tests"
	BIN_KMOD=$(jq -r 'select(.profile.test == true and .target.name == "kmod") | .executable // empty' <<<"$json")
	BIN_UNLOAD=$(jq -r 'select(.profile.test == true and .target.name == "kmod_unload") | .executable // empty' <<<"$json")
	[[ -x $BIN_KMOD && -x $BIN_UNLOAD ]] || fail "no guest test binaries in cargo's output"
}
step "build guest tests" build_guest_tests

# 5. Boot and run: the scenarios, then the unload test (last: it unloads the modules).
FAILED=()
LOGS=()
boot() {
	local kind=$1 extra=() log
	[[ $kind == iommu ]] && extra=(--iommu)
	local args="--test-threads=1 --nocapture"
	[[ -n $FILTER ]] && args+=" $FILTER"
	# loglevel=4 keeps pr_info off the console (it stays in dmesg, which the rig
	# checks): the test output is not interleaved with kernel messages.
	if "$RIG" run --kernel custom "${extra[@]}" --mem "$MEM" --timeout "$TIMEOUT" --quiet --append "loglevel=4" \
		--insmod "${KOS[0]}" --insmod "${KOS[1]}" --args "$args" "$BIN_KMOD" "$BIN_UNLOAD"; then
		log=$(ls -td "${DMAPLACE_VM_CACHE:-$HOME/.cache/dmaplace-vm}"/runs/*-custom"$([[ $kind == iommu ]] && echo -iommu)"-* | head -n1)
		LOGS+=("$kind:$log/serial.log")
		return 0
	fi
	FAILED+=("$kind")
	[[ $KEEP_GOING == 1 ]] || fail "guest tests on the custom kernel ($kind)"
	return 0
}
for b in "${BOOTS[@]}"; do
	step "guest: custom $b" boot "$b"
done

# 6. The placements each scenario produced.
for l in "${LOGS[@]}"; do
	printf '\n[kernel/test] placements (%s boot, %s):\n' "${l%%:*}" "${l#*:}" >&2
	tr -d '\r' <"${l#*:}" | grep -ao 'PLACEMENT .*' | sed 's/^PLACEMENT /  /' >&2 || true
done

printf '\n[kernel/test] timings:\n' >&2
printf '[kernel/test]   %s\n' "${TIMES[@]}" >&2
printf '[kernel/test]   %-28s %6ss\n' total "$(secs "$T0" "$(now)")" >&2
[[ ${#FAILED[@]} -eq 0 ]] || fail "guest boots failed: ${FAILED[*]}"
say "PASS"
