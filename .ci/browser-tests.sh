#!/usr/bin/env bash
# Browser tests: headless Chromium (Debian's chromium and chromium-driver) driven by Selenium
# (python3-selenium) opens the pages users look at: a seed's picture and a node's dashboard.
# A fresh machine lacks these packages: this script says what it installs, installs them with
# apt-get when it can (root), and skips with a clear message only when Chromium cannot be
# installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/browser

packages=(chromium chromium-driver python3-selenium)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "browser tests: installing ${missing[*]} (Debian packages: headless Chromium, its WebDriver, Selenium)"
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null; then
        echo "browser tests: SKIPPED: ${missing[*]} missing and apt-get cannot run here (not root or not Debian); install them with: apt-get install ${packages[*]}"
        exit 0
    fi
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } > target/browser/apt.log 2>&1; then
        echo "browser tests: SKIPPED: apt-get could not install ${missing[*]} (see target/browser/apt.log)"
        exit 0
    fi
fi

# Debian's python3 sees python3-selenium (a python3 of its own on the PATH may not).
python=/usr/bin/python3
run() {
    local name=$1
    shift
    echo "== browser: $name"
    local rc=0
    "$python" "$@" || rc=$?
    if [ "$rc" -eq 77 ]; then
        echo "browser tests: $name SKIPPED (see above: what is missing)"
        return 0
    fi
    return "$rc"
}

cargo build --release -p sim-tests --bin sim
run "a seed's picture" sim-tests/tests/browser/trace_page.py \
    --sim target/release/sim --screenshot target/browser/trace-page.png

cargo build -p replicator-node
run "a node's dashboard (a real 3x3 demo)" node/tests/browser/dashboard.py \
    target/debug/replicator target/browser/dashboard.png
