#!/usr/bin/env bash
# Long exploration with fresh random seeds: the counterpart of the fixed seeds that
# `cargo test` and scripts/test-all.sh use. Each round draws a new proptest RNG seed and a
# new stress seed, runs the host test suite with many more cases and operations, and on
# a failure prints the seeds and the command that replays it, so the case can be committed
# as a fixed one (proptest also writes the failing case to a `proptest-regressions` file
# next to the test: commit it).
#
# Usage: scripts/soak.sh [--rounds N] [--minutes M] [--cases N] [--stress-cases N] [--ops N]
#   --rounds N        rounds to run (default 1; 0 = until --minutes is up)
#   --minutes M       stop starting new rounds after M minutes (default: no limit)
#   --cases N         proptest cases per property (PROPTEST_CASES, default 100000)
#   --stress-cases N  cases of the simulated-machine stress property (DMAPLACE_STRESS_CASES,
#                     default 2000; each case boots a machine and runs 30 operations)
#   --ops N           exporter stress operations per test (DMAPLACE_STRESS_OPS, default 600000)
#   --fuzz-seconds S  also fuzz every cargo-fuzz target for S seconds per round, from a
#                     seed libFuzzer draws (FUZZ_SEED=random scripts/fuzz-smoke.sh; default 0:
#                     no fuzzing); a crash is kept in fuzz/artifacts/TARGET: add it to
#                     fuzz/seeds/TARGET once fixed, so the CI smoke replays it
#   --keep-going      run every round even after a failure
# Environment: PROPTEST_RNG_SEED / DMAPLACE_SEED pin the first round's seeds (to replay a
# whole round); later rounds always draw fresh ones.
#
# Exit status: 0 when every round passed, 1 otherwise. Rounds of the defaults take about
# an hour on 2 cores; `--cases 20000 --stress-cases 300 --ops 100000` about ten minutes.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

ROUNDS=1 MINUTES=0 CASES=100000 STRESS_CASES=2000 OPS=600000 KEEP_GOING=0 FUZZ_SECS=0
while [[ $# -gt 0 ]]; do
	case $1 in
	--rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
	--minutes) MINUTES=${2:?--minutes needs a number}; shift 2 ;;
	--cases) CASES=${2:?--cases needs a number}; shift 2 ;;
	--stress-cases) STRESS_CASES=${2:?--stress-cases needs a number}; shift 2 ;;
	--ops) OPS=${2:?--ops needs a number}; shift 2 ;;
	--fuzz-seconds) FUZZ_SECS=${2:?--fuzz-seconds needs a number}; shift 2 ;;
	--keep-going) KEEP_GOING=1; shift ;;
	-h | --help) sed -n '2,25p' "$0"; exit 0 ;;
	*) echo "soak: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
for v in "$ROUNDS" "$MINUTES" "$CASES" "$STRESS_CASES" "$OPS" "$FUZZ_SECS"; do
	[[ $v =~ ^[0-9]+$ ]] || { echo "soak: '$v' is not a whole number" >&2; exit 2; }
done
[[ $ROUNDS -gt 0 || $MINUTES -gt 0 ]] || { echo "soak: --rounds 0 needs --minutes" >&2; exit 2; }

fresh_seed() { od -An -N8 -tu8 /dev/urandom | tr -d ' \n'; }
say() { printf '[soak %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

say "building the release test binaries"
cargo test --workspace --release --no-run 2>&1 | tail -n 1 >&2

start=$(date +%s)
round=0 failures=()
while :; do
	round=$((round + 1))
	if [[ $round -eq 1 ]]; then
		prop_seed=${PROPTEST_RNG_SEED:-$(fresh_seed)}
		stress_seed=${DMAPLACE_SEED:-$(fresh_seed)}
	else
		prop_seed=$(fresh_seed)
		stress_seed=$(fresh_seed)
	fi
	env_line="PROPTEST_RNG_SEED=$prop_seed DMAPLACE_SEED=$stress_seed PROPTEST_CASES=$CASES DMAPLACE_STRESS_CASES=$STRESS_CASES DMAPLACE_STRESS_OPS=$OPS"
	say "round $round: $env_line"
	log=$(mktemp -t dmaplace-soak.XXXXXX)
	t0=$(date +%s)
	status=0
	env PROPTEST_RNG_SEED="$prop_seed" DMAPLACE_SEED="$stress_seed" PROPTEST_CASES="$CASES" \
		DMAPLACE_STRESS_CASES="$STRESS_CASES" DMAPLACE_STRESS_OPS="$OPS" INSTA_UPDATE=no \
		cargo test --workspace --release --no-fail-fast >"$log" 2>&1 || status=$?
	if [[ $status -eq 0 && $FUZZ_SECS -gt 0 ]]; then
		FUZZ_SEED=random FUZZ_SECONDS=$FUZZ_SECS scripts/fuzz-smoke.sh >>"$log" 2>&1 || status=$?
		grep -a '^INFO: Seed:' "$log" | tr '\n' ' ' >&2 || true
	fi
	secs=$(($(date +%s) - t0))
	if [[ $status -eq 0 ]]; then
		say "round $round: PASS in ${secs}s"
		rm -f "$log"
	else
		failed=$(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$log" | sort -u | tr '\n' ' ')
		say "round $round: FAILED after ${secs}s: ${failed:-see the log}"
		grep -aE -A1 'panicked at|minimal failing input' "$log" | grep -avE '^--$|^stack backtrace' | head -n 40 >&2 || true
		say "replay: $env_line cargo test --workspace --release"
		say "full log: $log"
		failures+=("round $round (${failed% }): $env_line")
		[[ $KEEP_GOING == 1 ]] || break
	fi
	elapsed=$(($(date +%s) - start))
	if [[ $ROUNDS -gt 0 && $round -ge $ROUNDS ]] || [[ $MINUTES -gt 0 && $elapsed -ge $((MINUTES * 60)) ]]; then
		break
	fi
done

if [[ ${#failures[@]} -gt 0 ]]; then
	say "FAILED ${#failures[@]} of $round round(s); commit each as a fixed case (the proptest-regressions file, or the seed in the test):"
	printf '  %s\n' "${failures[@]}" >&2
	exit 1
fi
say "PASS: $round round(s) with fresh seeds in $(($(date +%s) - start))s"
