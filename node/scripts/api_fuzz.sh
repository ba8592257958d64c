#!/usr/bin/env bash
# The API and its description agree: schemathesis (pinned) with every check against a running
# 1 x 3 demo network (network key and API token on, as the demo always has them). The fuzzer
# gets no token, so it cannot remove members; it must find no failure.
#
#   node/scripts/api_fuzz.sh [path/to/replicator]     (default: target/debug/replicator)
#
# Installs schemathesis into target/schemathesis-venv on first use (PyPI). Bounded: a few
# examples per operation, a time limit on the whole run.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-target/debug/replicator}
ST_VERSION=4.32.5
VENV=target/schemathesis-venv
if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$ST_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "schemathesis==$ST_VERSION"
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
D=$(mktemp -d /tmp/replicator-fuzz.XXXXXX)
DEMO=
cleanup() {
  if [ -n "$DEMO" ]; then
    kill -TERM "$DEMO" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$DEMO" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$DEMO" 2>/dev/null || true
  fi
  rm -rf "$D"
}
trap cleanup EXIT
"$B" demo --clusters 1 --nodes-per-cluster 3 --http-port "$PORT" --data-dir "$D/net" > "$D/demo.out" 2>&1 &
DEMO=$!
for _ in $(seq 120); do grep -q "Ctrl-C stops" "$D/demo.out" 2>/dev/null && break; sleep 0.5; done
grep -q "Ctrl-C stops" "$D/demo.out" || { cat "$D/demo.out"; echo "FAIL: the demo did not start"; exit 1; }
for _ in $(seq 60); do
  curl -s "http://127.0.0.1:$PORT/health" | grep -q '"writable":true' && break
  sleep 0.5
done
timeout 300 "$VENV/bin/st" run "http://127.0.0.1:$PORT/openapi.json" \
  --checks all \
  --max-examples "${ST_MAX_EXAMPLES:-25}" \
  --request-timeout 15 \
  --suppress-health-check all \
  --no-color
# Every member is still there: the fuzzer could not remove one.
members=$(curl -s "http://127.0.0.1:$PORT/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["members"])')
[ "$members" = 3 ] || { echo "FAIL: $members members left"; exit 1; }
echo "OK: schemathesis $ST_VERSION found no failure; 3 members left"
