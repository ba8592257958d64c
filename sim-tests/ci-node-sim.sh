#!/usr/bin/env bash
# The real node under madsim (sim-tests/tests/node_sim.rs): builds the madsim target and runs
# its tests with a fresh range of seeds derived from the commit hash, so coverage grows over time
# while any failure stays replayable from the CI log. The fixed checks run too: determinism of a
# seed, and both reintroduced driver bugs caught within their bound.
#
#   sim-tests/ci-node-sim.sh        # NODE_SIM_CI_SEEDS (default 400) seeds from the derived start
#
# A failing seed prints its configuration and the exact command that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$(git rev-parse HEAD 2>/dev/null || echo 0000000000000000)
count=${NODE_SIM_CI_SEEDS:-400}
# Far above the fixed batch (seeds 0..), one slot of `count` seeds per commit prefix.
start=$(( 1000000 + (16#${commit:0:7} % 100000) * count ))
export RUSTFLAGS="--cfg madsim"
# Its own target dir: --cfg madsim rebuilds every dependency.
export CARGO_TARGET_DIR=${NODE_SIM_TARGET_DIR:-target/madsim}
echo "node_sim: commit ${commit}: seeds NODE_SIM_START=${start} NODE_SIM_SEEDS=${count}"
echo "node_sim: replay a failing seed N with: MADSIM_TEST_SEED=N RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/madsim cargo test -p sim-tests --test node_sim replay -- --nocapture"
build_started=$(date +%s)
cargo test -p sim-tests --test node_sim --no-run
run_started=$(date +%s)
echo "node_sim: madsim build took $(( run_started - build_started )) s"
NODE_SIM_START=${start} NODE_SIM_SEEDS=${count} cargo test -p sim-tests --test node_sim -- --nocapture --test-threads 2
echo "node_sim: the tests (${count} seeds, determinism, two driver bugs) took $(( $(date +%s) - run_started )) s"
