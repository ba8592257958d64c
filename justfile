# Recipes for replicator. `just` itself: `pip install rust-just` (or `cargo install just`).

# Start a local network: 3 clusters x 3 nodes on 127.0.0.1, HTTP on 8080..8088.
demo *ARGS:
    cargo run --release -p replicator-node -- demo {{ARGS}}

# The whole test suite, as CI runs it.
test:
    cargo test --workspace

# Replay one simulator seed, printing its trace location and checks.
sim SEED:
    SIM_SEED={{SEED}} cargo test -p sim-tests replay -- --nocapture

# `just trace-html 17`, `just trace-html 0 --bug AcceptBelowPromise`: the page goes next to the
# seed's trace in target/sim-traces/ and its path is printed (alone on stdout).
# One simulator seed as a picture: an HTML page of its messages, faults and violation.
trace-html SEED *ARGS:
    cargo run --release -p sim-tests --bin sim -- trace {{SEED}} {{ARGS}}

# A sweep of simulator seeds with a progress line and a summary (`just sweep --seeds 5000`).
sweep *ARGS:
    cargo run --release -p sim-tests --bin sim -- sweep {{ARGS}}

# Simulator benchmark: events/s and seeds/min for 5 clusters x 3 nodes.
sim-bench:
    cargo run --release -p sim-tests --bin sim -- bench

# Load against a running demo (start `just demo` first).
bench *ARGS:
    cargo run --release -p replicator-node -- bench --node http://127.0.0.1:8080 --node http://127.0.0.1:8084 --concurrency 16 --duration 10 {{ARGS}}

# Side by side with etcd on this machine (needs Debian's wrk and etcd-server; installs nothing):
# 1x3 and 3x3 replicator networks and a 3-member etcd, 1/16/64 clients, interleaved, medians.
bench-etcd *ARGS:
    cargo build --release -p replicator-node
    python3 node/scripts/bench_vs_etcd.py {{ARGS}}

# Root; needs iproute2, iptables, wrk and etcd-server; installs nothing. 3 regions x 3 replicator
# nodes and a 3-member etcd, one member per region, every node in its own network namespace,
# 40 ms between regions through delaying proxies; creates, reads and a slow node per cluster,
# per-region p50/p99 (`just wan-bench --quick`: about 2 minutes).
# Side by side with etcd over a simulated WAN: three regions 40 ms apart.
wan-bench *ARGS:
    cargo build --release -p replicator-node -p wan-proxy
    python3 node/scripts/wan_bench.py {{ARGS}}

# Fills a 1x3 network with N keys (needs Debian's wrk; installs nothing) and measures each node's
# memory and disk, a restart's time to writable, cold and warm GETs, creates vs an empty network.
# What N stored keys cost one node today (`just capacity-bench --quick`: N = 50,000).
capacity-bench *ARGS:
    cargo build --release -p replicator-node
    python3 node/scripts/capacity_bench.py {{ARGS}}

# redb against fjall for the node's access pattern: N keys loaded in durable batches, cold and
# warm point reads, misses, appends; memory and disk of each (`--keys 200000` for a quick look).
store-bench *ARGS:
    cargo run --release -p replicator-node --example store_bench -- {{ARGS}}

# End-to-end tests: real replicator processes on loopback.
e2e:
    cargo test -p replicator-node --test network --test membership --test minority --test operations --test hardening --test dashboard -- --nocapture

# schemathesis (pinned, installed into target/) against a 1 x 3 demo: the API matches openapi.json.
api-fuzz:
    cargo build -p replicator-node
    bash node/scripts/api_fuzz.sh target/debug/replicator

# The real node under madsim: the fixed batch, determinism and the two driver bugs
# (`just node-sim`), or one seed replayed with the driver logs (`just node-sim 17`).
node-sim SEED="":
    #!/usr/bin/env bash
    set -euo pipefail
    export RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/madsim
    if [ -z "{{SEED}}" ]; then
        cargo test -p sim-tests --test node_sim -- --nocapture
    else
        MADSIM_TEST_SEED={{SEED}} cargo test -p sim-tests --test node_sim replay -- --nocapture
    fi

# What CI runs: the test suite, a commit-derived simulator seed range and node_sim range.
ci:
    bash .ci/run

# Formatting and lints, as required before every commit.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Same-instant races on a real 3x3 demo network: how many keys end with one winner.
race-bench *ARGS:
    cargo build --release -p replicator-node
    python3 node/scripts/race_bench.py {{ARGS}}

# Installs Debian's chromium, chromium-driver and python3-selenium if missing (as root; says so).
# Browser tests (headless Chromium + Selenium): a seed's picture and a node's dashboard.
browser:
    bash .ci/browser-tests.sh
