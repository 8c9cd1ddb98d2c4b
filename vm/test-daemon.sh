#!/usr/bin/env bash
# dmaplaced and `dmaplace probe` on real kernels: builds dmaplaced, the three-process
# test and the probe guest test static, and the C example (scripts/c-api.sh), then boots
# (vm/rig.sh run) the self-built 6.12 on pc, on q35 without an IOMMU and on q35 with
# intel-iommu, and Debian's 6.12, 1 GiB each, and runs them as root:
#   - probe_guest: the probed platform against what qemu provides (RAM, cirrus,
#     virtio-gpu, VT-d 2M/1G and 39-bit width, CMA), and that it loads and solves;
#   - three_process: producer, consumer and late consumer through dmaplaced on the real
#     heaps (custom kernel: system heap, then a move to the CMA heap), and the C example
#     allocating a scanout buffer through the daemon and importing it into KMS (ADDFB2 on
#     cirrus) on the probed platform;
#   - kmod, kmod-debug: the same three processes with the kernel module as the exporter
#     (dmaplaced --backend kmod), dmaplace.ko and dmaplace_testdev.ko built by
#     kernel/build.sh and loaded, 6 GiB so that RAM extends above 4 GiB; on the custom
#     kernel (CONFIG_DMABUF_MOVE_NOTIFY off) and the debug kernel (lockdep, KASAN,
#     dma-debug, move_notify on, 2 CPUs), whose reports fail the boot (vm/rig.sh).
# Fails loudly on any failure.
#
# Usage: vm/test-daemon.sh [--boot custom|custom-q35|custom-iommu|debian|kmod|kmod-debug]...
# Environment: DMAPLACE_VM_CACHE (rig cache), DMAPLACE_RIG (the rig script).
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RIG=${DMAPLACE_RIG:-$REPO/vm/rig.sh}
TARGET_DIR="$REPO/target/guest-daemon"
BOOTS=()
while [[ $# -gt 0 ]]; do
	case $1 in
	--boot) BOOTS+=("${2:?--boot needs custom|custom-q35|custom-iommu|debian|kmod|kmod-debug}"); shift 2 ;;
	-h | --help) sed -n '2,20p' "$0"; exit 0 ;;
	*) echo "test-daemon: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
[[ ${#BOOTS[@]} -gt 0 ]] || BOOTS=(custom custom-q35 custom-iommu debian kmod kmod-debug)
wants() { [[ " ${BOOTS[*]} " == *" $1 "* ]]; }

say() { printf '[test-daemon %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
fail() {
	printf '\n[test-daemon] FAILED: %s\n\n' "$*" >&2
	exit 1
}

"$RIG" fetch || fail "vm/rig.sh fetch"
"$RIG" kernel >/dev/null || fail "vm/rig.sh kernel"
wants kmod-debug && { "$RIG" kernel --debug >/dev/null || fail "vm/rig.sh kernel --debug"; }

# The modules, as kernel/test.sh builds them (kernel/build.sh), for each kernel wanted.
declare -A KOS=()
build_modules() { # build_modules custom|debug
	local out=$REPO/target/kmod flag=() kos
	[[ $1 == debug ]] && out=$REPO/target/kmod-debug flag=(--debug)
	mapfile -t kos < <(DMAPLACE_KMOD_OUT=$out "$REPO/kernel/build.sh" "${flag[@]}")
	[[ ${#kos[@]} -eq 2 && -f ${kos[0]} && -f ${kos[1]} ]] || fail "kernel/build.sh ${flag[*]} produced no modules"
	KOS[$1]="${kos[0]} ${kos[1]}"
	say "modules ($1 kernel): ${kos[*]}"
}
wants kmod && build_modules custom
wants kmod-debug && build_modules debug

say "building static guest binaries (target/guest-daemon)"
static=(env RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$TARGET_DIR")
"${static[@]}" cargo build --release --target x86_64-unknown-linux-gnu -p dmaplace-service --bin dmaplaced ||
	fail "building dmaplaced (static)"
DAEMON="$TARGET_DIR/x86_64-unknown-linux-gnu/release/dmaplaced"
json=$("${static[@]}" cargo test --release --no-run --message-format=json --target x86_64-unknown-linux-gnu \
	-p dmaplace-service --test three_process -p dmaplace-linux --test probe_guest) || fail "building the guest tests"
mapfile -t BINS < <(python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable") \
            and m["target"]["name"] in ("three_process", "probe_guest"):
        print(m["executable"])
' <<<"$json")
[[ ${#BINS[@]} == 2 ]] || fail "expected the three_process and probe_guest binaries, got: ${BINS[*]}"
"$REPO/scripts/c-api.sh" || fail "scripts/c-api.sh (the C example)"
EXAMPLE="$REPO/target/c-example/scanout-static"

FAILED=()
for boot in "${BOOTS[@]}"; do
	files=(--file "$DAEMON" --file "$EXAMPLE")
	bins=("${BINS[@]}")
	case $boot in
	custom) args=(--kernel custom --mem 1G) ;;
	custom-q35) args=(--kernel custom --machine q35 --mem 1G) ;;
	custom-iommu) args=(--kernel custom --iommu --mem 1G) ;;
	debian) args=(--kernel debian --mem 1G) ;;
	kmod | kmod-debug)
		flavour=custom kernel=custom
		[[ $boot == kmod-debug ]] && flavour=debug kernel=custom-debug
		read -ra kos <<<"${KOS[$flavour]}"
		args=(--kernel "$kernel" --mem 6G --append "loglevel=4" --insmod "${kos[0]}" --insmod "${kos[1]}")
		[[ $boot == kmod-debug ]] && args+=(--smp 2)
		files=(--file "$DAEMON")
		bins=()
		for b in "${BINS[@]}"; do [[ $(basename "$b") == three_process-* ]] && bins+=("$b"); done
		;;
	*) fail "unknown boot $boot" ;;
	esac
	say "boot: $boot"
	if ! "$RIG" run "${args[@]}" --timeout 600 --args "--nocapture --test-threads=1 --include-ignored" "${files[@]}" "${bins[@]}"; then
		FAILED+=("$boot")
	fi
done
[[ ${#FAILED[@]} == 0 ]] || fail "guest boots failed: ${FAILED[*]}"
say "PASS"
