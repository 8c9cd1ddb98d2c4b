#!/usr/bin/env bash
# Regenerates docs/eval (or DIR): every built-in scenario under every policy, seed 1,
# a text report and SVG plots each (memory-map heatmaps for deferred and hint-heap only,
# to keep the repository small; `dmaplace sim ... --plot DIR` draws one per policy).
# docs/EVALUATION.md quotes these files.
#
#   scripts/eval.sh [DIR]
#
# Deterministic except the "simulator speed" lines (wall clock). Takes about two
# minutes on 2 cores, most of it the two-hour soak.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/eval}
cargo build --release -p dmaplace-cli
mkdir -p "$out"
runs=(
	"video-playback"
	"video-playback --platform rk3399"
	"camera-record"
	"screen-record"
	"app-churn"
	"x86-capture"
	"soak"
)
for r in "${runs[@]}"; do
	name=${r/ --platform /-}
	echo "eval: dmaplace sim $r --seed 1 --plot $out/$name" >&2
	# shellcheck disable=SC2086 # $r is a scenario and its options
	target/release/dmaplace sim $r --seed 1 --plot "$out/$name" >"$out/$name.txt"
	rm -f "$out/$name"/heatmap-{deferred-no-migrate,eager-system,eager-contiguous}.svg
done
