#!/usr/bin/env bash
# dmaplace-linux on real kernels: builds the crate's test binaries static, then boots
# Debian's 6.12 and the self-built 6.12 under qemu (vm/rig.sh) and runs them as root in
# each guest, followed by the in-guest benchmark (a report of p50/p99 and ratios, not a
# timed test: it fails only on errors). Exits non-zero, loudly, on any failure.
#
# Usage: vm/test-linux.sh [--kernel debian|custom]... [--filter NAME] [--no-bench] [--keep-going]
#   --kernel K    run only on K (repeatable; default: debian and custom)
#   --filter NAME only the guest tests whose name contains NAME (passed to libtest); a
#                 filter that matches no test is an error, before anything boots.
#                 `--filter bench` runs only the benchmark (docs/PERFORMANCE.md)
#   --no-bench    skip the benchmark binary
#   --keep-going  run every kernel even after one failed
# Environment: DMAPLACE_VM_CACHE (rig cache, default ~/.cache/dmaplace-vm); DMAPLACE_RIG
# (the rig script, default vm/rig.sh).
#
# The guest tests are #[ignore]d on the host (they need a real kernel); the guest runs them
# with --include-ignored, and every kernel must report each selected test `ok`.
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RIG=${DMAPLACE_RIG:-$REPO/vm/rig.sh}
TARGET_DIR="$REPO/target/guest"
KERNELS=()
FILTER=""
BENCH=1
KEEP_GOING=0
# 16 huge pages of 2 MiB for the hugetlb-udmabuf source; 1 GiB guests.
APPEND="hugepages=16"
TIMEOUT=900

while [[ $# -gt 0 ]]; do
	case $1 in
	--kernel) KERNELS+=("${2:?--kernel needs debian|custom}"); shift 2 ;;
	--filter) FILTER=${2:?}; shift 2 ;;
	--no-bench) BENCH=0; shift ;;
	--keep-going) KEEP_GOING=1; shift ;;
	-h | --help) sed -n '2,19p' "$0"; exit 0 ;;
	*) echo "test-linux: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
[[ ${#KERNELS[@]} -gt 0 ]] || KERNELS=(debian custom)

say() { printf '[test-linux %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
fail() {
	printf '\n[test-linux] FAILED: %s\n\n' "$*" >&2
	exit 1
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }

T0=$(now)
TIMES=()

# 1. The rig's cache: qemu, the Debian kernel, the custom kernel (no-ops when cached).
t=$(now)
"$RIG" fetch || fail "vm/rig.sh fetch"
for k in "${KERNELS[@]}"; do
	if [[ $k == custom ]]; then
		"$RIG" kernel >/dev/null || fail "vm/rig.sh kernel (building the custom kernel)"
	fi
done
TIMES+=("$(printf '%-28s %7ss' 'rig cache (fetch, kernel)' "$(secs "$t" "$(now)")")")

# 2. Static test binaries, in their own target dir so the host build stays valid.
t=$(now)
say "building static test binaries (target/guest)"
json=$(cd "$REPO" && RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$TARGET_DIR" \
	cargo test --release --no-run --message-format=json --target x86_64-unknown-linux-gnu -p dmaplace-linux) ||
	fail "cargo test --no-run for the guest (static, x86_64-unknown-linux-gnu)"
mapfile -t all < <(python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["target"]["name"] + " " + m["executable"])
' <<<"$json")
TESTS=() BENCHES=()
for entry in "${all[@]}"; do
	name=${entry%% *}
	exe=${entry#* }
	case $name in
	guest_bench) BENCHES+=("$exe") ;;
	guest) TESTS+=("$exe") ;;
	*) ;; # unit tests run on the host (cargo test -p dmaplace-linux)
	esac
done
[[ ${#TESTS[@]} -eq 1 ]] || fail "expected the guest test binary among: ${all[*]}"
[[ ${#BENCHES[@]} -eq 1 ]] || fail "expected the guest_bench binary among: ${all[*]}"
for b in "${TESTS[@]}" "${BENCHES[@]}"; do
	readelf -l "$b" | grep -q 'Requesting program interpreter' && fail "$b is not static"
done
BINS=("${TESTS[@]}")
[[ $BENCH == 1 ]] && BINS+=("${BENCHES[@]}")
TIMES+=("$(printf '%-28s %7ss' 'static build' "$(secs "$t" "$(now)")")")

# The tests each guest must run, listed on the host (the static binaries run here too).
# shellcheck disable=SC2086
count_selected() { "$1" --list --include-ignored ${FILTER:+"$FILTER"} | grep -c ': test$' || true; }
EXPECTED=0
for b in "${BINS[@]}"; do
	EXPECTED=$((EXPECTED + $(count_selected "$b")))
done
[[ $EXPECTED -gt 0 ]] || fail "--filter '$FILTER' matches no test in ${BINS[*]##*/} (list them: ${TESTS[0]} --list --include-ignored)"
say "$EXPECTED test(s) selected${FILTER:+ by --filter $FILTER}"

# 3. Each kernel: boot, run the tests then the bench, check the result.
ARGS="--test-threads=1 --nocapture --include-ignored${FILTER:+ $FILTER}"
failed=()
for k in "${KERNELS[@]}"; do
	t=$(now)
	say "booting the $k kernel: ${BINS[*]##*/} (host load $(cut -d' ' -f1-3 /proc/loadavg))"
	errlog=$(mktemp)
	status=0
	"$RIG" run --kernel "$k" --quiet --timeout "$TIMEOUT" --append "$APPEND" --args "$ARGS" "${BINS[@]}" 2> >(tee "$errlog" >&2) || status=$?
	serial=$(sed -n 's/.*log: \(.*serial.log\).*/\1/p' "$errlog" | tail -n1)
	rm -f "$errlog"
	passed=0
	if [[ -n $serial && -f $serial ]]; then
		# libtest's summary per binary ("test result: ok. N passed; ..."), summed.
		passed=$(tr -d '\r' <"$serial" | sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' | awk '{n += $1} END {print n + 0}')
		tr -d '\r' <"$serial" | grep -aE '^(test .* \.\.\. |test result:|bench:|inventory|kernel |  dma-heap|  udmabuf|  RAM|  DRM|  2 MiB|  placement proof|CMA heap|.* from .*: |.*refused|nothing on this kernel|  - |  hint: |.*poll blocked|.*scanned out|.*agree on|round trip|.*bufinfo, exporter)' |
			sed "s/^/[$k] /" || true
	fi
	TIMES+=("$(printf '%-28s %7ss  (host load after: %s)' "guest: $k" "$(secs "$t" "$(now)")" "$(cut -d' ' -f1-3 /proc/loadavg)")")
	if [[ $status -eq 0 && $passed -ne $EXPECTED ]]; then
		printf '\n[test-linux] %s kernel: %s of %s selected test(s) reported ok\n' "$k" "$passed" "$EXPECTED" >&2
		status=1
	fi
	if [[ $status -ne 0 ]]; then
		failed+=("$k")
		printf '\n[test-linux] %s kernel FAILED (serial log: %s)\n\n' "$k" "${serial:-?}" >&2
		[[ $KEEP_GOING == 1 ]] || break
	else
		say "$k kernel: PASS ($passed of $EXPECTED tests ok)"
	fi
done

printf '\n[test-linux] timings:\n' >&2
printf '[test-linux]   %s\n' "${TIMES[@]}" >&2
printf '[test-linux]   %-28s %7ss\n' total "$(secs "$T0" "$(now)")" >&2
[[ ${#failed[@]} -eq 0 ]] || fail "dmaplace-linux on: ${failed[*]}"
say "PASS on ${KERNELS[*]}"
