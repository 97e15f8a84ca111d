#!/usr/bin/env bash
# Scenario 1 (keep-alive, small body) for two builds of the proxy and nginx,
# interleaved in one run: the measured effect of a hot-path change.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [DURATION]
#
# Build the old one from a worktree, e.g.
#   git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release) && cp /tmp/old/target/release/preview-proxy /tmp/pp-old
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 ROUNDS=${3:-5} DURATION=${4:-5s}
ulimit -n "$(ulimit -Hn)"
cargo build --release --quiet --example mock_api
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; for f in /tmp/bench-upstream.pid /tmp/bench-nginx.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done' EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; exit 1; }
nginx -c "$PWD/bench/peers/upstream-nginx.conf" & wait_port 18080
nginx -c "$PWD/bench/peers/nginx-proxy.conf" & wait_port 18081
target/release/examples/mock_api 127.0.0.1:18090 http://127.0.0.1:18080 0 2>/dev/null & PIDS+=($!); wait_port 18090
for pair in "18085:$OLD" "18086:$NEW"; do
  DAYTONA_API_URL=http://127.0.0.1:18090 PROXY_API_KEY=bench-key PROXY_LISTEN_ADDRESS=127.0.0.1 PROXY_PORT=${pair%%:*} \
    RUST_LOG=warn "${pair#*:}" >/dev/null 2>&1 & PIDS+=($!); wait_port "${pair%%:*}"
done
HOST='Host: 3000-pub1.preview.localhost'
for _ in $(seq 3); do curl -s -o /dev/null -H "$HOST" http://127.0.0.1:18085/; curl -s -o /dev/null -H "$HOST" http://127.0.0.1:18086/; done
for r in $(seq "$ROUNDS"); do
  for pair in nginx:18081 old:18085 new:18086; do
    out=$(wrk -t1 -c64 -d"$DURATION" --latency -H "$HOST" "http://127.0.0.1:${pair#*:}/")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    printf '%s\t%s\t%s\t%s\n' "$r" "${pair%%:*}" "$rps" "$p99"
  done
done | tee /dev/stderr | python3 -c '
import sys, statistics
rows = [l.split("\t") for l in sys.stdin.read().split("\n") if l]
for name in ("nginx", "old", "new"):
    rps = [float(r[2]) for r in rows if r[1] == name]
    print(f"{name:6} median {statistics.median(rps):9.0f} req/s  (min {min(rps):.0f}, max {max(rps):.0f})")
med = {n: statistics.median(float(r[2]) for r in rows if r[1] == n) for n in ("nginx", "old", "new")}
new, old, ngx = med["new"], med["old"], med["nginx"]
print(f"new/old {new / old:.3f}   old/nginx {old / ngx:.3f}   new/nginx {new / ngx:.3f}")
'
