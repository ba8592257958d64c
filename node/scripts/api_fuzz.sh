#!/usr/bin/env bash
# The API and its description agree: schemathesis (pinned) with every check, twice:
# - against a running 1 x 3 demo network (network key and API token on, as the demo always has
#   them), without the token, so it cannot remove members;
# - against a lone node (no other member to remove) with every endpoint behind the token, and
#   the token given, so the operator endpoint and the authenticated paths are checked too.
# It must find no failure.
#
#   node/scripts/api_fuzz.sh [path/to/replicator]     (default: target/debug/replicator)
#
# Installs schemathesis into target/schemathesis-venv on first use (PyPI). Bounded: a few
# examples per operation (ST_MAX_EXAMPLES, default 25), a time limit on each run.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
B=${1:-target/debug/replicator}
ST_VERSION=4.32.5
VENV=target/schemathesis-venv
if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$ST_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "schemathesis==$ST_VERSION"
fi
# The demo's nodes listen on PORT, PORT+1 and PORT+2: three free ports below the kernel's
# ephemeral range (32768 and up), where an outgoing connection could take one first.
PORT=$(python3 - <<'PY'
import random, socket
for _ in range(200):
    base = random.randint(20000, 32700)
    socks = []
    try:
        for p in range(base, base + 3):
            s = socket.socket()
            s.bind(("127.0.0.1", p))
            socks.append(s)
        print(base)
        break
    except OSError:
        pass
    finally:
        for s in socks:
            s.close()
PY
)
D=$(mktemp -d /tmp/replicator-fuzz.XXXXXX)
DEMO=
SOLO=
stop() { # pid
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 40); do kill -0 "$1" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$1" 2>/dev/null || true
}
cleanup() {
  [ -z "$DEMO" ] || stop "$DEMO"
  [ -z "$SOLO" ] || stop "$SOLO"
  rm -rf "$D"
}
trap cleanup EXIT
fuzz() { # base URL, extra st flags...
  local url=$1
  shift
  # From the temp dir: schemathesis keeps its state (.schemathesis/) in the working directory.
  (cd "$D" && timeout 300 "$ROOT/$VENV/bin/st" --config-file "$ROOT/node/scripts/schemathesis.toml" run "$url/openapi.json" \
    --checks all \
    --max-examples "${ST_MAX_EXAMPLES:-25}" \
    --request-timeout 15 \
    --suppress-health-check all \
    --no-color "$@")
}

echo "== a 1 x 3 demo network, the fuzzer without the token"
"$B" demo --clusters 1 --nodes-per-cluster 3 --http-port "$PORT" --data-dir "$D/net" > "$D/demo.out" 2>&1 &
DEMO=$!
for _ in $(seq 120); do grep -q "Ctrl-C stops" "$D/demo.out" 2>/dev/null && break; sleep 0.5; done
grep -q "Ctrl-C stops" "$D/demo.out" || {
  cat "$D/demo.out"
  for log in "$D"/net/*.log; do echo "--- $log"; tail -n 20 "$log"; done
  echo "FAIL: the demo did not start"
  exit 1
}
for _ in $(seq 60); do
  curl -s "http://127.0.0.1:$PORT/health" | grep -q '"writable":true' && break
  sleep 0.5
done
fuzz "http://127.0.0.1:$PORT"
# Every member is still there: the fuzzer could not remove one.
members=$(curl -s "http://127.0.0.1:$PORT/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["members"])')
[ "$members" = 3 ] || { echo "FAIL: $members members left"; exit 1; }

echo "== a lone node, every endpoint behind the token, the fuzzer holding it"
TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$TOKEN" > "$D/solo.token"
"$B" run --cid solo --cluster-size-min 1 --http 127.0.0.1:0 --data-dir "$D/solo" \
  --api-token-file "$D/solo.token" --api-token-writes --api-token-reads \
  > "$D/solo.out" 2> "$D/solo.log" &
SOLO=$!
for _ in $(seq 120); do grep -q "^HTTP listening on" "$D/solo.out" 2>/dev/null && break; sleep 0.5; done
SOLO_URL=$(sed -n 's/^HTTP listening on //p' "$D/solo.out")
[ -n "$SOLO_URL" ] || { cat "$D/solo.log"; echo "FAIL: the lone node did not start"; exit 1; }
fuzz "$SOLO_URL" -H "Authorization: Bearer $TOKEN"
echo "OK: schemathesis $ST_VERSION found no failure (3 members left in the demo)"
