#!/usr/bin/env bash
# Soak: mixed well-behaved load (keep-alive HTTP, WebSockets, SSE, uploads
# and downloads) beside misbehaving clients (slowloris, stalled readers,
# resets mid-body) for SECONDS (default 600), then 90 s of quiet. Samples
# the proxy's RSS and open descriptors every 10 s. See BENCHMARKS.md.
#
#   bench/soak.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_RUN=${1:-600}
ulimit -n "$(ulimit -Hn)"
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
# The proxy on its own, without the dev-dependencies' features (bench/run.sh).
cargo build --release --quiet --bin preview-proxy
cargo build --release --quiet --example mock_api --example bench_app --example bench_client
BIN=target/release
WORK=$(mktemp -d /tmp/preview-proxy-soak.XXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; exit 1; }

"$BIN/examples/bench_app" 127.0.0.1:18188 2>/dev/null & PIDS+=($!); wait_port 18188
"$BIN/examples/mock_api" 127.0.0.1:18192 http://127.0.0.1:18188 0 2>/dev/null & PIDS+=($!); wait_port 18192
DAYTONA_API_URL=http://127.0.0.1:18192 PROXY_API_KEY=soak-key PROXY_LISTEN_ADDRESS=127.0.0.1 PROXY_PORT=18189 \
  RUST_LOG=warn "$BIN/preview-proxy" >"$WORK/proxy.log" 2>&1 & PROXY=$!; PIDS+=($PROXY); wait_port 18189
HOST=3000-pub1.preview.localhost
URL=http://127.0.0.1:18189

sample() { echo "$(date +%s) $(awk '/VmRSS/ {print $2}' /proc/$PROXY/status) $(ls /proc/$PROXY/fd | wc -l)"; }
curl -s -o /dev/null -H "Host: $HOST" $URL/
BASE=$(sample)
( while kill -0 $PROXY 2>/dev/null; do sample; sleep 10; done ) >"$WORK/samples" & PIDS+=($!)

END=$(( $(date +%s) + SECONDS_RUN ))
python3 bench/misbehave.py 127.0.0.1:18189 $HOST $END >"$WORK/misbehave" & MIS=$!
wrk -t1 -c16 -d"${SECONDS_RUN}s" -H "Host: $HOST" "$URL/" >"$WORK/wrk" & WRK=$!
"$BIN/examples/bench_client" ws-echo 127.0.0.1:18189 $HOST 16 "$SECONDS_RUN" >"$WORK/ws" & WS=$!
( errors=0 runs=0
  while [ "$(date +%s)" -lt "$END" ]; do
    out=$("$BIN/examples/bench_client" sse 127.0.0.1:18189 $HOST 100) || errors=$((errors + 1))
    down=$(curl -sS -o /dev/null -w '%{size_download}' -H "Host: $HOST" "$URL/download/67108864") || true
    [ "$down" = 67108864 ] || errors=$((errors + 1))
    up=$(head -c 67108864 /dev/zero | curl -sS -H "Host: $HOST" -T - "$URL/upload") || true
    [ "$up" = 67108864 ] || errors=$((errors + 1))
    runs=$((runs + 1))
  done
  echo "stream_rounds=$runs errors=$errors" ) >"$WORK/streams" & STREAMS=$!
wait $WRK $WS $STREAMS $MIS
echo "load ended; 90 s of quiet" >&2
sleep 90
END_SAMPLE=$(sample)
kill "${PIDS[-1]}" 2>/dev/null || true

wrk_requests=$(awk '/requests in/ {print $1}' "$WORK/wrk")
wrk_errors=$(awk '/Non-2xx/ {s+=$NF} /Socket errors/ {gsub(",", ""); s+=$4+$6+$8+$10} END {print s+0}' "$WORK/wrk")
echo "wrk: requests=$wrk_requests errors=$wrk_errors"
echo "ws-echo: $(cat "$WORK/ws")"
echo "sse+download+upload: $(cat "$WORK/streams")"
echo "misbehaving: $(cat "$WORK/misbehave")"
echo "proxy alive: $(kill -0 $PROXY 2>/dev/null && echo yes || echo no)"
echo "samples (unix_time rss_kib fds), baseline first and after the quiet last:"
echo "$BASE"; cat "$WORK/samples"; echo "$END_SAMPLE"
echo "warnings logged: $(grep -c WARN "$WORK/proxy.log" || true)"
