#!/usr/bin/env bash
# dmaplace's kernel module, end to end: builds the rig's two kernels if needed
# (vm/rig.sh kernel [--debug], cached by version outside the clone), builds
# dmaplace.ko and dmaplace_testdev.ko for each from nothing, runs the host-side
# differential test of the module's merge against dmaplace-core, builds the
# static guest tests and the kernel's own dma-heap selftest (unmodified, from
# the same tree), and boots under qemu (6 GiB, so that RAM extends above 4 GiB)
# to run them as root:
#
#   debug/plain   the debug kernel (lockdep, KASAN, DEBUG_VM, DEBUG_PAGEALLOC,
#                 DMA_API_DEBUG; CONFIG_DMABUF_MOVE_NOTIFY on), 2 CPUs
#   debug/iommu   the same behind qemu's intel-iommu
#   custom/plain  the ordinary custom kernel (CONFIG_DMABUF_MOVE_NOTIFY off, as
#                 in Debian), 1 CPU
#
# Any test failure, kernel report (WARN, BUG, KASAN, lockdep, DMA-API) or a
# filter that matches no test fails the run. Prints every scenario's placement.
#
# Usage: kernel/test.sh [--filter NAME] [--no-iommu] [--only-iommu] [--no-debug]
#                       [--only-debug] [--keep-going]
# Environment: DMAPLACE_VM_CACHE (rig cache), DMAPLACE_VM_JOBS (kernel make -j).
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RIG="$REPO/vm/rig.sh"
TARGET_DIR=${DMAPLACE_KMOD_TARGET:-$REPO/target/kmod-guest}
FILTER=""
BOOTS=(debug/plain debug/iommu custom/plain)
KEEP_GOING=0
MEM=6G
TIMEOUT=600

drop_boots() { # drop_boots PATTERN: remove the boots matching a glob
	local keep=() b
	for b in "${BOOTS[@]}"; do
		# shellcheck disable=SC2053 # the pattern is a glob on purpose
		[[ $b == $1 ]] || keep+=("$b")
	done
	BOOTS=("${keep[@]}")
}

while [[ $# -gt 0 ]]; do
	case $1 in
	--filter) FILTER=${2:?}; shift 2 ;;
	--no-iommu) drop_boots '*/iommu'; shift ;;
	--only-iommu) drop_boots '*/plain'; shift ;;
	--no-debug) drop_boots 'debug/*'; shift ;;
	--only-debug) drop_boots 'custom/*'; shift ;;
	--keep-going) KEEP_GOING=1; shift ;;
	-h | --help) sed -n '2,20p' "$0"; exit 0 ;;
	*) echo "kernel/test.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
[[ ${#BOOTS[@]} -gt 0 ]] || { echo "kernel/test.sh: the options leave no boot to run" >&2; exit 2; }

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
wants() { [[ " ${BOOTS[*]} " == *" $1/"* ]]; } # wants custom|debug

# 1. qemu, busybox and the kernels (no-ops when cached).
step "rig fetch" "$RIG" fetch
wants custom && step "rig kernel" "$RIG" kernel
wants debug && step "rig kernel --debug" "$RIG" kernel --debug

# 2. The modules, from nothing (a fresh build dir each time), for each kernel.
declare -A KOS=()
build_modules() { # build_modules custom|debug
	local out=$REPO/target/kmod flag=() kos
	[[ $1 == debug ]] && out=$REPO/target/kmod-debug flag=(--debug)
	rm -rf "$out"
	mapfile -t kos < <(DMAPLACE_KMOD_OUT=$out "$REPO/kernel/build.sh" "${flag[@]}")
	[[ ${#kos[@]} -eq 2 && -f ${kos[0]} && -f ${kos[1]} ]] || fail "kernel/build.sh ${flag[*]} produced no modules"
	KOS[$1]="${kos[0]} ${kos[1]}"
	say "modules ($1 kernel): ${kos[*]}"
}
wants custom && step "build modules" build_modules custom
wants debug && step "build modules (debug)" build_modules debug

# 3. The host-side differential test of kernel/plan.rs against dmaplace-core.
step "host: kmod_plan test" cargo test -q -p dmaplace-linux --test kmod_plan

# 4. The guest tests, static, and the kernel's heap selftest.
build_guest_tests() {
	local json t
	json=$(RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=$TARGET_DIR \
		cargo test --no-run --release --target x86_64-unknown-linux-gnu --message-format=json \
		-p dmaplace-linux --test kmod --test kmod_unload --test kmod_heap) || fail "building the guest tests"
	BINS=()
	# In this order: kmod_unload leaves dmaplace loaded with its heap, for kmod_heap.
	for t in kmod kmod_unload kmod_heap; do
		BINS+=("$(jq -r --arg t "$t" 'select(.profile.test == true and .target.name == $t) | .executable // empty' <<<"$json")")
		[[ -x ${BINS[-1]} ]] || fail "no guest test binary $t in cargo's output"
	done
}
step "build guest tests" build_guest_tests

# tools/testing/selftests/dmabuf-heaps/dmabuf-heap.c as its Makefile builds it
# (-static -O3 -Wl,-no-as-needed -Wall, the tree's uapi headers), not edited.
build_selftest() {
	local flag=() kdir
	wants custom || flag=(--debug)
	kdir=$("$RIG" kernel-dir "${flag[@]}")
	if ! command -v gcc >/dev/null || [[ ! -f /usr/lib/x86_64-linux-gnu/libc.a ]]; then
		say "installing gcc and libc6-dev (static libc for the selftest)"
		$([[ $(id -u) -eq 0 ]] || echo sudo) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >&2
	fi
	mkdir -p "$REPO/target/selftest"
	SELFTEST=$REPO/target/selftest/dmabuf-heap
	gcc -static -O3 -Wl,-no-as-needed -Wall -isystem "$kdir/usr/include" -o "$SELFTEST" \
		"$kdir/tools/testing/selftests/dmabuf-heaps/dmabuf-heap.c" || fail "building the kernel's dma-heap selftest"
}
step "build heap selftest" build_selftest

# 5. Boot and run: the scenarios, the unload test, the heap tests.
FAILED=()
LOGS=()
# passed_tests LOG: the tests libtest reported passed, over all binaries in the log
passed_tests() {
	tr -d '\r' <"$1" | sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' | awk '{n += $1} END {print n + 0}'
}
boot() { # boot custom|debug plain|iommu
	local kernel=$1 kind=$2 extra=() log kos args n
	[[ $kind == iommu ]] && extra=(--iommu)
	[[ $kernel == debug ]] && extra+=(--smp 2)
	read -ra kos <<<"${KOS[$kernel]}"
	# Every test is #[ignore]d on the host; iommu_* tests need the IOMMU boot.
	args="--test-threads=1 --nocapture --include-ignored"
	[[ $kind == plain ]] && args+=" --skip iommu_"
	[[ -n $FILTER ]] && args+=" $FILTER"
	local k=custom
	[[ $kernel == debug ]] && k=custom-debug
	# loglevel=4 keeps pr_info off the console (it stays in dmesg, which the rig
	# checks): the test output is not interleaved with kernel messages.
	# vivid.allocators=1: vivid's buffers come from videobuf2-dma-contig, which
	# imports only physically contiguous dma-bufs. heap=0: kmod_unload unloads the
	# module first (with its heap it cannot be), then reloads it with the heap.
	# --allow-dmesg: the kernel's heap selftest imports *system and CMA heap* buffers
	# into vgem, and those heaps map them in 1 MiB entries although vgem's device
	# says 64 KiB (dma-debug's DMA_API_DEBUG_SG check): a report about kernel code
	# outside dmaplace, whose own tables split at each device's limit.
	if ! "$RIG" run --kernel "$k" "${extra[@]}" --mem "$MEM" --timeout "$TIMEOUT" --quiet \
		--allow-dmesg 'DMA-API: platform vgem: mapping sg segment longer than device claims to support \[len=[0-9]+\] \[max=65536\]' \
		--append "loglevel=4 vivid.allocators=1" --file "$SELFTEST:/bin/dmabuf-heap" \
		--insmod "${kos[0]} heap=0" --insmod "${kos[1]}" --args "$args" "${BINS[@]}"; then
		FAILED+=("$kernel/$kind")
		[[ $KEEP_GOING == 1 ]] || fail "guest tests on the $kernel kernel ($kind)"
		return 0
	fi
	log=$(ls -td "${DMAPLACE_VM_CACHE:-$HOME/.cache/dmaplace-vm}"/runs/*-"$k$([[ $kind == iommu ]] && echo -iommu)"-* | head -n1)
	n=$(passed_tests "$log/serial.log")
	if [[ $n -eq 0 ]]; then
		FAILED+=("$kernel/$kind:no-tests")
		fail "no test ran on the $kernel kernel ($kind)${FILTER:+: --filter $FILTER matches no test}; log: $log/serial.log"
	fi
	say "$kernel/$kind: $n tests passed"
	LOGS+=("$kernel/$kind:$log/serial.log")
	return 0
}
for b in "${BOOTS[@]}"; do
	step "guest: $b" boot "${b%/*}" "${b#*/}"
done

# 6. The placements each scenario produced, and the kernel checkers' verdicts.
for l in "${LOGS[@]}"; do
	printf '\n[kernel/test] placements (%s boot, %s):\n' "${l%%:*}" "${l#*:}" >&2
	tr -d '\r' <"${l#*:}" | grep -aoE '(PLACEMENT|DMAPLACE-CHECK:) .*' | sed -E 's/^PLACEMENT /  /; s/^/  /' >&2 || true
	printf '[kernel/test] the kernel heap selftest'"'"'s TAP (%s boot):\n' "${l%%:*}" >&2
	tr -d '\r' <"${l#*:}" | grep -aoE 'TAP .*' | sed 's/^TAP /    /' >&2 || true
done

printf '\n[kernel/test] timings:\n' >&2
printf '[kernel/test]   %s\n' "${TIMES[@]}" >&2
printf '[kernel/test]   %-28s %6ss\n' total "$(secs "$T0" "$(now)")" >&2
[[ ${#FAILED[@]} -eq 0 ]] || fail "guest boots failed: ${FAILED[*]}"
say "PASS"
