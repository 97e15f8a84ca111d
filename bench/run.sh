#!/usr/bin/env bash
# Benchmarks preview-proxy against nginx, HAProxy, Caddy and no proxy, in one
# run with the peers interleaved (A B C A B C ...). See BENCHMARKS.md.
#
#   bench/run.sh          quick: 3 rounds of 3 s (a couple of minutes)
#   bench/run.sh full     the record: 5 rounds of 10 s
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-quick}
case "$MODE" in
  quick) ROUNDS=3; DURATION=3s ;;
  full) ROUNDS=5; DURATION=10s ;;
  *) echo "usage: bench/run.sh [quick|full]" >&2; exit 2 ;;
esac
WORK=$(mktemp -d /tmp/preview-proxy-bench.XXXX)
RESULTS=$WORK/results.tsv
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for f in /tmp/bench-upstream.pid /tmp/bench-nginx.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

# --- tools -----------------------------------------------------------------
need=()
for pair in wrk:wrk nginx:nginx-light haproxy:haproxy caddy:caddy h2load:nghttp2-client; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --quiet --bin preview-proxy --example mock_api --example storm
BIN=$ROOT/target/release

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; exit 1; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# --- servers ---------------------------------------------------------------
P=$ROOT/bench/peers
nginx -c "$P/upstream-nginx.conf" & wait_port 18080
nginx -c "$P/nginx-proxy.conf" & wait_port 18081
haproxy -f "$P/haproxy.cfg" >/dev/null 2>&1 & PIDS+=($!); wait_port 18082
caddy run --config "$P/Caddyfile" --adapter caddyfile >/dev/null 2>&1 & PIDS+=($!); wait_port 18083
"$BIN/examples/mock_api" 127.0.0.1:18090 http://127.0.0.1:18080 0 2>/dev/null & PIDS+=($!); wait_port 18090

start_proxy() { # port api-port -> pid in PROXY_PID
  DAYTONA_API_URL=http://127.0.0.1:$2 PROXY_API_KEY=bench-key PROXY_LISTEN_ADDRESS=127.0.0.1 PROXY_PORT=$1 \
    RUST_LOG=warn "$BIN/preview-proxy" >"$WORK/proxy-$1.log" 2>&1 &
  PROXY_PID=$!; PIDS+=("$PROXY_PID"); wait_port "$1"
}
start_proxy 18084 18090
sleep 1
IDLE_RSS=$(rss_kb "$PROXY_PID")

# --- measuring ---------------------------------------------------------------
# run_wrk SCENARIO NAME URL [wrk args...]: one wrk run, one line in RESULTS.
run_wrk() {
  local scenario=$1 name=$2 url=$3; shift 3
  local out; out=$(wrk -t1 -c64 -d"$DURATION" --latency "$@" "$url")
  python3 - "$scenario" "$name" "$out" >>"$RESULTS" <<'PY'
import re, sys
scenario, name, out = sys.argv[1:4]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
v, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()
p99 = float(v) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
errors = int(m.group(1)) if m else 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
errors += sum(map(int, m.groups())) if m else 0
print(f"{scenario}\t{name}\t{rps:.0f}\t{p99:.2f}\t{errors}")
PY
}

HOST='Host: 3000-pub1.preview.localhost'
echo "scenario 1: keep-alive throughput, small body ($ROUNDS rounds of $DURATION)"
for _ in $(seq "$ROUNDS"); do
  run_wrk 1 direct http://127.0.0.1:18080/ -H "$HOST"
  run_wrk 1 nginx http://127.0.0.1:18081/ -H "$HOST"
  run_wrk 1 haproxy http://127.0.0.1:18082/ -H "$HOST"
  run_wrk 1 caddy http://127.0.0.1:18083/ -H "$HOST"
  run_wrk 1 preview-proxy http://127.0.0.1:18084/ -H "$HOST"
done
AFTER_RSS=$(rss_kb "$PROXY_PID")

echo "scenario 2: private sandbox (header token, cookie)"
COOKIE=$(curl -s -o /dev/null -D - -H 'Host: 3000-priv1.preview.localhost' \
  'http://127.0.0.1:18084/?DAYTONA_SANDBOX_AUTH_KEY=bench-token' | awk -F'[:;] *' 'tolower($1)=="set-cookie" {print $2}')
for _ in $(seq "$ROUNDS"); do
  run_wrk 2 public http://127.0.0.1:18084/ -H "$HOST"
  run_wrk 2 header-token http://127.0.0.1:18084/ -H 'Host: 3000-priv1.preview.localhost' -H 'X-Daytona-Preview-Token: bench-token'
  run_wrk 2 cookie http://127.0.0.1:18084/ -H 'Host: 3000-priv1.preview.localhost' -H "Cookie: $COOKIE"
done

echo "scenario 3: cold-cache storm, 10 sandboxes x 1,000 first requests, 50 ms API latency"
"$BIN/examples/mock_api" 127.0.0.1:18091 http://127.0.0.1:18080 50 2>/dev/null & PIDS+=($!); wait_port 18091
start_proxy 18086 18091
STORM=$("$BIN/examples/storm" 127.0.0.1:18086 10 1000 pubstorm)
COUNTS=$(curl -s http://127.0.0.1:18091/__counts)

# --- report ------------------------------------------------------------------
python3 - "$RESULTS" "$IDLE_RSS" "$AFTER_RSS" "$STORM" "$COUNTS" "$MODE" <<'PY'
import json, statistics, sys
path, idle, after, storm, counts, mode = sys.argv[1:7]
rows = [l.split("\t") for l in open(path).read().splitlines()]
def summary(scenario):
    names = list(dict.fromkeys(r[1] for r in rows if r[0] == scenario))
    out = {}
    for n in names:
        rs = [r for r in rows if r[0] == scenario and r[1] == n]
        out[n] = (statistics.median(float(r[2]) for r in rs), statistics.median(float(r[3]) for r in rs), sum(int(r[4]) for r in rs))
    return out
print(f"\n## Results ({mode})\n")
s1 = summary("1")
base = s1["nginx"][0]
print("Scenario 1, keep-alive throughput (medians of rounds):\n")
print("| target | req/s | p99 ms | vs nginx | errors |\n|---|---:|---:|---:|---:|")
for n, (rps, p99, err) in s1.items():
    print(f"| {n} | {rps:,.0f} | {p99:.2f} | {rps / base:.2f}x | {err} |")
s2 = summary("2")
pub = s2["public"][0]
print("\nScenario 2, private sandbox (medians):\n")
print("| auth | req/s | p99 ms | vs public | errors |\n|---|---:|---:|---:|---:|")
for n, (rps, p99, err) in s2.items():
    print(f"| {n} | {rps:,.0f} | {p99:.2f} | {rps / pub:.2f}x | {err} |")
c = json.loads(counts)
print(f"\nScenario 3, cold-cache storm through the proxy: {storm}")
print(f"control-plane calls: runner={c.get('runner', 0)} public={c.get('public', 0)}")
print(f"\nScenario 8, memory: idle RSS {int(idle) / 1024:.1f} MiB, after scenario 1 {int(after) / 1024:.1f} MiB")
PY
