#!/usr/bin/env bash
# Runs a fresh range of simulator seeds on every CI run, derived from the commit hash, so that
# coverage grows over time while any failure stays replayable from the CI log.
#
#   sim-tests/ci-seeds.sh            # SIM_CI_SEEDS (default 4000) seeds from the derived start
#
# A failing seed prints its configuration, the replay command, the path of its full trace and
# the path of its picture (an HTML page next to the trace: open it in a browser).
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$(git rev-parse HEAD 2>/dev/null || echo 0000000000000000)
count=${SIM_CI_SEEDS:-4000}
# Far above the fixed batch (seeds 0..), one slot of `count` seeds per commit prefix.
start=$(( 1000000 + (16#${commit:0:7} % 100000) * count ))
echo "sim-tests: commit ${commit}: seeds SIM_START=${start} SIM_SEEDS=${count}"
echo "sim-tests: replay a failing seed N with: SIM_SEED=N cargo test -p sim-tests replay -- --nocapture"
echo "sim-tests: a failing seed's trace and picture: target/sim-traces/seed-N.trace and seed-N.html (again: cargo run --release -p sim-tests --bin sim -- trace N)"
SIM_START=${start} SIM_SEEDS=${count} cargo test -p sim-tests --test seeds seed_batch -- --nocapture
