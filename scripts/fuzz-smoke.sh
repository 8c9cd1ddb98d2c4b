#!/usr/bin/env bash
# Runs every cargo-fuzz target for a short while (default 20 s each): the parsers and
# decoders must never panic. Installs cargo-fuzz when it is missing (needs the nightly
# toolchain, which rustup has on these machines).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-20}
if ! cargo +nightly --version >/dev/null 2>&1; then
	echo "fuzz-smoke: the nightly toolchain is missing; install it with: rustup toolchain install nightly" >&2
	exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "fuzz-smoke: installing cargo-fuzz" >&2
	cargo install --locked cargo-fuzz
fi
targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build -O
for t in $targets; do
	echo "fuzz-smoke: $t for ${seconds}s"
	out=$(cargo +nightly fuzz run -O "$t" -- -max_total_time="$seconds" 2>&1) || {
		echo "$out" | tail -40
		echo "fuzz-smoke: target $t FAILED (artifacts in fuzz/artifacts/$t)" >&2
		exit 1
	}
	echo "$out" | grep -E '^Done' || true
done
