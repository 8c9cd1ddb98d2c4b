#!/usr/bin/env bash
# Runs every cargo-fuzz target for a fixed number of inputs from a fixed seed: the parsers
# and decoders must never panic. Seeded and bounded: each target starts from a fresh corpus
# holding only the committed seeds (fuzz/seeds/TARGET, where there are any), libFuzzer's
# RNG seed is fixed and printed, and the run stops after a count of inputs, not a time.
# (Not the same inputs bit for bit: see below.)
#
#   FUZZ_RUNS   inputs per target (default: 1,000,000; 500,000 for platform_toml and
#               300,000 for solve, the slow ones: 5 to 30 s each here)
#   FUZZ_SEED   libFuzzer's -seed (default 1); FUZZ_SEED=random lets libFuzzer draw one
#               (it prints it as "INFO: Seed: N"), for exploration
#   FUZZ_SECONDS  with FUZZ_SEED=random: run each target this long instead of FUZZ_RUNS
#
# Long exploration (millions of runs, a kept corpus): cargo +nightly fuzz run -O TARGET.
# Installs cargo-fuzz when it is missing (needs the nightly toolchain, which rustup has
# on these machines).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
runs_for() {
	case $1 in
	solve) echo "${FUZZ_RUNS:-300000}" ;;
	platform_toml) echo "${FUZZ_RUNS:-500000}" ;;
	*) echo "${FUZZ_RUNS:-1000000}" ;;
	esac
}
seed=${FUZZ_SEED:-1}
if ! cargo +nightly --version >/dev/null 2>&1; then
	echo "fuzz-smoke: the nightly toolchain is missing; install it with: rustup toolchain install nightly" >&2
	exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "fuzz-smoke: installing cargo-fuzz" >&2
	cargo install --locked cargo-fuzz
fi
seeded=(-seed="$seed")
if [[ $seed == random ]]; then
	seeded=()
elif ! [[ $seed =~ ^[0-9]+$ && $seed -gt 0 ]]; then
	echo "fuzz-smoke: FUZZ_SEED must be a positive integer or 'random', not '$seed'" >&2
	exit 2
fi
targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build -O
# cargo fuzz builds for the host's triple unless told otherwise.
bins=target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
	run="$scratch/run"
	rm -rf "$run"
	mkdir -p "$run/corpus" "$run/artifacts"
	[[ -d seeds/$t ]] && cp seeds/"$t"/* "$run/corpus"/
	cp "$bins/$t" "$run/fuzz"
	limit=(-runs="$(runs_for "$t")")
	[[ $seed == random && -n ${FUZZ_SECONDS:-} ]] && limit=(-max_total_time="$FUZZ_SECONDS")
	echo "fuzz-smoke: $t: ${limit[*]} ${seeded[*]:--seed=random}"
	# As few sources of variance as libFuzzer allows: it mutates with the values of
	# recent comparisons, and slice iterators compare pointers, so no ASLR, and the same
	# environment, arguments and program path (their lengths place the stack); -reload=0,
	# or the corpus is re-read every second. That is not enough for bit-exact runs: two
	# fresh clones at the same path, on an idle machine, still drifted on 2 of 6 targets
	# (timing-dependent parts of libFuzzer), and a clone at another path builds other
	# binaries (cargo hashes the path into symbol names). The seed, the count and the committed seeds are fixed;
	# a crash is kept in fuzz/artifacts and replays exactly.
	status=0
	out=$(cd "$run" && env -i PATH=/usr/bin:/bin setarch --addr-no-randomize ./fuzz \
		"${limit[@]}" "${seeded[@]}" -reload=0 -artifact_prefix=artifacts/ corpus 2>&1) || status=$?
	if [[ $status -ne 0 ]]; then
		echo "$out" | tail -40
		mkdir -p artifacts/"$t"
		cp "$run"/artifacts/* artifacts/"$t"/ 2>/dev/null || true
		echo "fuzz-smoke: target $t FAILED (artifacts in fuzz/artifacts/$t; replay: cargo +nightly fuzz run -O $t fuzz/artifacts/$t/FILE)" >&2
		exit 1
	fi
	echo "$out" | grep -E '^INFO: Seed:|DONE|^Done' || true
done
