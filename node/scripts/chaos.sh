#!/usr/bin/env bash
# Chaos check on a real local network: `replicator demo` (9 nodes), a 40 s bench with 30%
# contested keys, and meanwhile kill -9 + restart of two nodes of cluster-2 (one of them a
# bench target, i.e. a coordinator). Then every node must hold the same number of keys, no
# accepted value may stay undecided, and no node may have logged an error.
#
#   node/scripts/chaos.sh [path/to/replicator]     (default: target/release/replicator)
set -euo pipefail
B=${1:-target/release/replicator}
D=$(mktemp -d /tmp/replicator-chaos.XXXXXX)
# The demo's nodes take PORT..PORT+8: look for nine free ports in a row (any other process
# could hold a fixed one).
PORT=$(python3 - <<'PY'
import random, socket
for _ in range(200):
    base = random.randint(20000, 60000)
    socks = []
    try:
        for p in range(base, base + 9):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
        print(base); break
    except OSError:
        pass
    finally:
        for s in socks: s.close()
PY
)
PIDS=()
KEEP=${KEEP:-0}
cleanup() {
  kill -TERM "${PIDS[@]}" 2>/dev/null || true
  sleep 8
  kill -KILL "${PIDS[@]}" 2>/dev/null || true
  # Logs stay only when asked (KEEP=1) or on failure.
  if [ "$KEEP" = 1 ] || [ "${OK:-0}" != 1 ]; then echo "data and logs kept in $D"; else rm -rf "$D"; fi
}
trap cleanup EXIT
"$B" demo --data-dir "$D" --http-port $PORT > "$D/demo.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 60); do grep -q "Ctrl-C stops" "$D/demo.out" 2>/dev/null && break; sleep 1; done
health() { curl -s "http://127.0.0.1:$1/health"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
PEER1=$(health $PORT | field node)
ADDR1=$(grep -m1 -o "listening address=/ip4/127.0.0.1/tcp/[0-9]*" "$D/node-1.log" | sed 's/listening address=//')
BOOT="$ADDR1/p2p/$PEER1"
"$B" bench --node http://127.0.0.1:$PORT --node http://127.0.0.1:$((PORT+3)) --node http://127.0.0.1:$((PORT+6)) \
  --concurrency 12 --duration 40 --conflict-share 0.3 > "$D/bench.out" 2>/dev/null &
BENCH=$!
restart() { # node index (1-based), cluster, seconds down
  local port=$((PORT + $1 - 1))
  local pid
  pid=$(pgrep -f -- "--data-dir $D/node-$1( |\$)" | head -1)
  echo "kill -9 node-$1 (pid $pid), down for $3 s"
  kill -9 "$pid"
  sleep "$3"
  "$B" run --cid "$2" --http 127.0.0.1:$port --listen /ip4/127.0.0.1/tcp/0 --data-dir "$D/node-$1" \
    --network-key "$D/network.key" --api-token-file "$D/api.token" \
    --bootstrap "$BOOT" > /dev/null 2>> "$D/node-$1.log" &
  PIDS+=($!)
}
sleep 8; restart 5 cluster-2 6
sleep 8; restart 4 cluster-2 3
wait $BENCH
cat "$D/bench.out"
echo "waiting for every accepted value to be decided everywhere..."
ok=0
for _ in $(seq 60); do
  states=$(for i in $(seq 0 8); do h=$(health $((PORT+i))); echo "$(echo "$h" | field keys_stored)/$(echo "$h" | field accepted_undecided)"; done | sort -u)
  if [ "$(echo "$states" | wc -l)" = 1 ] && [[ "$states" == */0 ]]; then ok=1; break; fi
  sleep 1
done
echo "keys_stored/accepted_undecided on every node: $(echo "$states" | tr '\n' ' ')"
if grep -h " ERROR " "$D"/*.log; then echo "FAIL: errors logged"; exit 1; fi
[ $ok = 1 ] || { echo "FAIL: nodes disagree or accepted values stay undecided"; exit 1; }
OK=1
echo "OK: all nodes agree"
