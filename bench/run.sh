#!/usr/bin/env bash
# Benchmarks preview-proxy against nginx, HAProxy, Caddy and no proxy, in one
# run with the peers interleaved (A B C A B C ...). See BENCHMARKS.md.
#
#   bench/run.sh          quick: 3 rounds of 3 s (about 22 minutes, the PGO build included)
#   bench/run.sh full     the record: 5 rounds of 10 s
#   PGO=0 bench/run.sh    the plain release build alone
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-quick}
case "$MODE" in
  quick) ROUNDS=3; DURATION=3s; LOADS=20; H2N=50000; BIG_ROUNDS=1 ;;
  full) ROUNDS=5; DURATION=10s; LOADS=50; H2N=200000; BIG_ROUNDS=3 ;;
  *) echo "usage: bench/run.sh [quick|full]" >&2; exit 2 ;;
esac
WORK=$(mktemp -d /tmp/preview-proxy-bench.XXXX)
RESULTS=$WORK/results.tsv
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for f in /tmp/bench-upstream.pid /tmp/bench-nginx.pid /tmp/bench-nginx-apps.pid /tmp/bench-nginx-h2.pid /tmp/bench-nginx-rsa.pid /tmp/bench-nginx-ka.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
}
trap cleanup EXIT
# Scenario 5 wants 20,000 idle tunnels: 40,000 sockets in the proxy alone.
# Where the hard limit cannot be raised (a container without
# CAP_SYS_RESOURCE), it holds as many as the limit allows.
ulimit -Hn 200000 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
FDS=$(ulimit -n)
TUNNELS=$(( (FDS - 500) / 2 < 20000 ? (FDS - 500) / 2 : 20000 ))
IDLE_CONNS=$(( FDS - 500 < 20000 ? FDS - 500 : 20000 ))

# --- tools -----------------------------------------------------------------
need=()
for pair in wrk:wrk nginx:nginx-light haproxy:haproxy caddy:caddy h2load:nghttp2-client valgrind:valgrind openssl:openssl; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The proxy on its own: built with the examples, it would get the features
# the dev-dependencies turn on (tokio's `test-util`, whose clock takes a
# lock on every reading: ~270 more instructions a request than the binary
# `cargo build --release` makes).
cargo build --release --quiet --bin preview-proxy
cargo build --release --quiet --example mock_api --example storm --example bench_app --example bench_client
BIN=$ROOT/target/release
# The proxy measured is the build the README gives operators, made with
# profile-guided optimisation and BOLT (scripts/build-pgo); the plain `cargo build
# --release` binary runs beside it in scenarios 1 and 12. `PGO=0` measures
# the plain binary alone.
PLAIN=$BIN/preview-proxy
PROXY=$PLAIN
if [ "${PGO:-1}" != 0 ]; then
  scripts/build-pgo
  PROXY=$ROOT/target/pgo/release/preview-proxy
fi

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; exit 1; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# --- servers ---------------------------------------------------------------
P=$ROOT/bench/peers
nginx -c "$P/upstream-nginx.conf" & wait_port 18080
nginx -c "$P/nginx-proxy.conf" & wait_port 18081
haproxy -f "$P/haproxy.cfg" >/dev/null 2>&1 & HAPROXY_PID=$!; PIDS+=($!); wait_port 18082
caddy run --config "$P/Caddyfile" --adapter caddyfile >/dev/null 2>&1 & CADDY_PID=$!; PIDS+=($!); wait_port 18083
"$BIN/examples/mock_api" 127.0.0.1:18090 http://127.0.0.1:18080 0 2>/dev/null & PIDS+=($!); wait_port 18090

start_proxy() { # port api-port [env...] -> pid in PROXY_PID; EXE: another binary
  local port=$1 api=$2; shift 2
  env "$@" DAYTONA_API_URL=http://127.0.0.1:$api PROXY_API_KEY=bench-key PROXY_LISTEN_ADDRESS=127.0.0.1 PROXY_PORT=$port \
    RUST_LOG=warn "${EXE:-$PROXY}" >"$WORK/proxy-$port.log" 2>&1 &
  PROXY_PID=$!; PIDS+=("$PROXY_PID"); wait_port "$port"
}
start_proxy 18084 18090
MAIN_PID=$PROXY_PID
if [ "$PROXY" != "$PLAIN" ]; then
  EXE=$PLAIN start_proxy 18184 18090
  PLAIN_PID=$PROXY_PID
fi
sleep 1
IDLE_RSS=$(rss_kb "$MAIN_PID")

# Streaming and WebSockets: examples/bench_app as the sandbox app, behind
# nginx (nginx-apps.conf) and a second proxy whose runner is that app.
"$BIN/examples/bench_app" 127.0.0.1:18088 2>/dev/null & PIDS+=($!); wait_port 18088
"$BIN/examples/mock_api" 127.0.0.1:18092 http://127.0.0.1:18088 0 2>/dev/null & PIDS+=($!); wait_port 18092
nginx -c "$P/nginx-apps.conf" & wait_port 18087
start_proxy 18089 18092
APPS_PID=$PROXY_PID

# HTTP/2: nginx with http2 (cleartext 18093, TLS 18094) and a TLS proxy,
# both with a dev certificate.
"$BIN/preview-proxy" dev-cert --out "$WORK" >/dev/null
sed "s#@CERT@#$WORK/preview.localhost.crt#; s#@KEY@#$WORK/preview.localhost.key#" "$P/nginx-h2.conf" >"$WORK/nginx-h2.conf"
nginx -c "$WORK/nginx-h2.conf" & wait_port 18094
start_proxy 18095 18090 ENABLE_TLS=true TLS_CERT_FILE="$WORK/preview.localhost.crt" TLS_KEY_FILE="$WORK/preview.localhost.key"

# --- measuring ---------------------------------------------------------------
# cpu_ticks PID...: user and system clock ticks of every thread of PIDs.
cpu_ticks() {
  local u=0 s=0 f
  for pid in "$@"; do
    for f in /proc/"$pid"/task/*/stat; do
      read -r -a st < <(cut -d')' -f2 "$f" 2>/dev/null) || continue
      u=$((u + st[11])); s=$((s + st[12]))
    done
  done
  echo "$u $s"
}
# run_wrk SCENARIO NAME URL [wrk args...]: one wrk run, one line in RESULTS;
# with CPU_PIDS set, also the CPU those processes spent per request.
run_wrk() {
  local scenario=$1 name=$2 url=$3; shift 3
  local before; before=$(cpu_ticks ${CPU_PIDS:-})
  local out; out=$(wrk -t1 -c64 -d"$DURATION" --latency "$@" "$url")
  local after; after=$(cpu_ticks ${CPU_PIDS:-})
  python3 - "$scenario" "$name" "$out" "$before" "$after" "$(getconf CLK_TCK)" >>"$RESULTS" <<'PY'
import re, sys
scenario, name, out, before, after, tick = sys.argv[1:7]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
v, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()
p99 = float(v) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
errors = int(m.group(1)) if m else 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
errors += sum(map(int, m.groups())) if m else 0
print(f"{scenario}\t{name}\t{rps:.0f}\t{p99:.2f}\t{errors}")
requests = int(re.search(r"(\d+) requests in", out).group(1))
(u0, s0), (u1, s1) = (map(int, before.split()), map(int, after.split()))
if u1 + s1 > u0 + s0:
    us = 1e6 / int(tick) / requests
    print(f"{scenario}cpu\t{name}\t{(u1 - u0) * us:.2f}\t{(s1 - s0) * us:.2f}\t0")
PY
}

HOST='Host: 3000-pub1.preview.localhost'
echo "scenario 1: keep-alive throughput, small body ($ROUNDS rounds of $DURATION)"
for _ in $(seq "$ROUNDS"); do
  run_wrk 1 direct http://127.0.0.1:18080/ -H "$HOST"
  CPU_PIDS=$(pgrep -P "$(cat /tmp/bench-nginx.pid)" | xargs) run_wrk 1 nginx http://127.0.0.1:18081/ -H "$HOST"
  CPU_PIDS=$HAPROXY_PID run_wrk 1 haproxy http://127.0.0.1:18082/ -H "$HOST"
  CPU_PIDS=$CADDY_PID run_wrk 1 caddy http://127.0.0.1:18083/ -H "$HOST"
  CPU_PIDS=$MAIN_PID run_wrk 1 preview-proxy http://127.0.0.1:18084/ -H "$HOST"
  if [ -n "${PLAIN_PID:-}" ]; then
    CPU_PIDS=$PLAIN_PID run_wrk 1 "preview-proxy, no PGO" http://127.0.0.1:18184/ -H "$HOST"
  fi
done
[ -n "${PLAIN_PID:-}" ] && kill "$PLAIN_PID"
AFTER_RSS=$(rss_kb "$MAIN_PID")

echo "scenario 2: private sandbox (header token, cookie)"
COOKIE=$(curl -s -o /dev/null -D - -H 'Host: 3000-priv1.preview.localhost' \
  'http://127.0.0.1:18084/?DAYTONA_SANDBOX_AUTH_KEY=bench-token' | awk -F'[:;] *' 'tolower($1)=="set-cookie" {print $2}')
for _ in $(seq "$ROUNDS"); do
  run_wrk 2 public http://127.0.0.1:18084/ -H "$HOST"
  run_wrk 2 header-token http://127.0.0.1:18084/ -H 'Host: 3000-priv1.preview.localhost' -H 'X-Daytona-Preview-Token: bench-token'
  run_wrk 2 cookie http://127.0.0.1:18084/ -H 'Host: 3000-priv1.preview.localhost' -H "Cookie: $COOKIE"
done

# row SCENARIO NAME VALUE [VALUE2] [ERRORS]: one line in RESULTS.
row() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-0}" "${5:-0}" >>"$RESULTS"; }
# field KEY LINE: the value of key=value in a bench_client line.
field() { echo "$2" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'; }

echo "scenario 4: page-load fan-out, 4 sandboxes x $LOADS loads of 1 + 80 assets over 6 connections"
for _ in $(seq "$ROUNDS"); do
  for t in direct:18080 nginx:18081 preview-proxy:18084; do
    out=$("$BIN/examples/bench_client" pageload 127.0.0.1:${t#*:} '3000-pub{i}.preview.localhost' "$LOADS" 80 6 4)
    row 4 "${t%%:*}" "$(field p50_ms "$out")" "$(field p99_ms "$out")" "$(field errors "$out")"
  done
done

APP_HOST=3000-pub1.preview.localhost
echo "scenario 5: WebSockets, $TUNNELS idle tunnels, $IDLE_CONNS idle keep-alive connections (fd limit $FDS), then 64 connections echoing"
NGINX_APPS=$(cat /tmp/bench-nginx-apps.pid)
out=$("$BIN/examples/bench_client" ws-idle 127.0.0.1:18089 $APP_HOST "$TUNNELS" "$APPS_PID")
row 5idle preview-proxy "$(field kib_per_tunnel "$out")" "$(field kib_per_tunnel_2s "$out")" "$(field errors "$out")"
out=$("$BIN/examples/bench_client" ws-idle 127.0.0.1:18087 $APP_HOST "$TUNNELS" "$NGINX_APPS" $(pgrep -P "$NGINX_APPS"))
row 5idle nginx "$(field kib_per_tunnel "$out")" "$(field kib_per_tunnel_2s "$out")" "$(field errors "$out")"
NGINX_MAIN=$(cat /tmp/bench-nginx.pid)
out=$("$BIN/examples/bench_client" ka-idle 127.0.0.1:18084 $APP_HOST "$IDLE_CONNS" "$MAIN_PID")
row 5ka preview-proxy "$(field kib_per_conn "$out")" "$(field kib_per_conn_2s "$out")" "$(field errors "$out")"
out=$("$BIN/examples/bench_client" ka-idle 127.0.0.1:18081 $APP_HOST "$IDLE_CONNS" "$NGINX_MAIN" $(pgrep -P "$NGINX_MAIN"))
row 5ka nginx "$(field kib_per_conn "$out")" "$(field kib_per_conn_2s "$out")" "$(field errors "$out")"
# The same connections arriving over time, a tenth every 1.5 s, at a fresh
# proxy and a fresh nginx: one idle for a second is parked (its buffers given back), and the
# newer ones reuse what it gave back.
start_proxy 18096 18090
out=$("$BIN/examples/bench_client" ka-idle-trickle 127.0.0.1:18096 $APP_HOST "$IDLE_CONNS" $((IDLE_CONNS / 10)) "$PROXY_PID")
row 5kat preview-proxy "$(field kib_per_conn "$out")" "$(field kib_per_conn_2s "$out")" "$(field errors "$out")"
kill "$PROXY_PID"
sed "s#18081#18085#; s#bench-nginx\.#bench-nginx-ka.#g" "$P/nginx-proxy.conf" >"$WORK/nginx-ka.conf"
nginx -c "$WORK/nginx-ka.conf" & wait_port 18085
NGINX_KA=$(cat /tmp/bench-nginx-ka.pid)
out=$("$BIN/examples/bench_client" ka-idle-trickle 127.0.0.1:18085 $APP_HOST "$IDLE_CONNS" $((IDLE_CONNS / 10)) "$NGINX_KA" $(pgrep -P "$NGINX_KA"))
row 5kat nginx "$(field kib_per_conn "$out")" "$(field kib_per_conn_2s "$out")" "$(field errors "$out")"
kill "$NGINX_KA"
for _ in $(seq "$ROUNDS"); do
  for t in direct:18088 nginx:18087 preview-proxy:18089; do
    out=$("$BIN/examples/bench_client" ws-echo 127.0.0.1:${t#*:} $APP_HOST 64 "${DURATION%s}")
    row 5echo "${t%%:*}" "$(field msgs_per_s "$out")" 0 "$(field errors "$out")"
  done
done

echo "scenario 6: streaming, SSE delivery latency, 1 GiB download and upload"
for _ in $(seq "$ROUNDS"); do
  for t in direct:18088 nginx:18087 preview-proxy:18089; do
    out=$("$BIN/examples/bench_client" sse 127.0.0.1:${t#*:} $APP_HOST 200)
    row 6sse "${t%%:*}" "$(field p50_ms "$out")" "$(field p99_ms "$out")"
  done
done
GIB=1073741824
head -c $GIB /dev/zero >"$WORK/1gib"
BEFORE=$(rss_kb "$APPS_PID"); echo 5 >"/proc/$APPS_PID/clear_refs"
for _ in $(seq "$BIG_ROUNDS"); do
  for t in direct:18088 nginx:18087 preview-proxy:18089; do
    url=http://127.0.0.1:${t#*:}
    down=$(curl -sS -o /dev/null -w '%{speed_download} %{size_download}' -H "Host: $APP_HOST" "$url/download/$GIB")
    row 6down "${t%%:*}" "${down% *}" 0 "$([ "${down#* }" = $GIB ] && echo 0 || echo 1)"
    up=$(curl -sS -w ' %{speed_upload}' -H "Host: $APP_HOST" -T "$WORK/1gib" "$url/upload")
    row 6up "${t%%:*}" "${up#* }" 0 "$([ "${up% *}" = $GIB ] && echo 0 || echo 1)"
  done
done
PEAK=$(awk '/VmHWM/ {print $2}' "/proc/$APPS_PID/status")
rm -f "$WORK/1gib"

echo "scenario 7: HTTP/2 with h2load ($H2N requests, 16 connections x 10 streams)"
for _ in $(seq "$ROUNDS"); do
  for t in h2c/nginx/http://127.0.0.1:18093 h2c/preview-proxy/http://127.0.0.1:18084 \
    tls/nginx/https://127.0.0.1:18094 tls/preview-proxy/https://127.0.0.1:18095; do
    IFS=/ read -r kind name url <<<"$t"
    out=$(h2load -n "$H2N" -c 16 -m 10 -t 1 -H ":authority: 3000-pub1.preview.localhost" "$url/")
    rps=$(echo "$out" | awk '/^finished in/ {print $4}')
    ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
    row "7$kind" "$name" "$rps" 0 $((H2N - ok))
  done
done

echo "scenario 9: new connection per request (Connection: close), HTTP/1.1"
for _ in $(seq "$ROUNDS"); do
  run_wrk 9 nginx http://127.0.0.1:18081/ -H "$HOST" -H 'Connection: close'
  run_wrk 9 preview-proxy http://127.0.0.1:18084/ -H "$HOST" -H 'Connection: close'
done

echo "scenario 10: TLS, ECDSA P-256 and RSA-2048: keep-alive HTTP/1.1, and a new TLS connection per request"
# ECDSA: the dev certificate (nginx 18094, proxy 18095). RSA: the same names
# with an RSA-2048 key (nginx 18194, proxy 18097).
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=preview.localhost \
  -addext "subjectAltName=DNS:preview.localhost,DNS:*.preview.localhost" \
  -keyout "$WORK/rsa.key" -out "$WORK/rsa.crt" 2>/dev/null
sed "s#@CERT@#$WORK/rsa.crt#; s#@KEY@#$WORK/rsa.key#; s#18093#18193#; s#18094#18194#; s#bench-nginx-h2#bench-nginx-rsa#g" \
  "$P/nginx-h2.conf" >"$WORK/nginx-rsa.conf"
nginx -c "$WORK/nginx-rsa.conf" & wait_port 18194
start_proxy 18097 18090 ENABLE_TLS=true TLS_CERT_FILE="$WORK/rsa.crt" TLS_KEY_FILE="$WORK/rsa.key"
for _ in $(seq "$ROUNDS"); do
  for t in ecdsa/18094/18095 rsa/18194/18097; do
    IFS=/ read -r key nginx_port proxy_port <<<"$t"
    run_wrk "10$key" nginx "https://127.0.0.1:$nginx_port/" -H "$HOST"
    run_wrk "10$key" preview-proxy "https://127.0.0.1:$proxy_port/" -H "$HOST"
    run_wrk "10${key}new" nginx "https://127.0.0.1:$nginx_port/" -H "$HOST" -H 'Connection: close'
    run_wrk "10${key}new" preview-proxy "https://127.0.0.1:$proxy_port/" -H "$HOST" -H 'Connection: close'
  done
done

echo "scenario 11: memory per cached sandbox, 20,000 public sandboxes asked for once each (12 s)"
start_proxy 18098 18090
CACHE_PID=$PROXY_PID
curl -s -o /dev/null -H "$HOST" http://127.0.0.1:18098/
CACHE_BEFORE=$(rss_kb "$CACHE_PID")
SANDBOXES=20000 wrk -t1 -c16 -d12s -s "$ROOT/bench/distinct-sandboxes.lua" http://127.0.0.1:18098/ >/dev/null
CACHE_AFTER=$(rss_kb "$CACHE_PID")

echo "scenario 12: instructions per request under callgrind (one worker, 4 keep-alive connections)"
# callgrind counts instructions, not time: the same on a busy or an idle box.
CG_SECONDS=${DURATION%s}
sed 's/^worker_processes 2;/worker_processes 1;\nmaster_process off;/; s/18081/18181/; s#bench-nginx\.#bench-nginx-cg.#g' \
  "$P/nginx-proxy.conf" >"$WORK/nginx-cg.conf"
cg_count() { # name port: runs wrk, stops the process under valgrind, prints one row
  local name=$1 port=$2 pid=$3
  for _ in 1 2 3; do curl -s -o /dev/null -H "$HOST" "http://127.0.0.1:$port/"; done
  local n
  n=$(wrk -t1 -c4 -d"${CG_SECONDS}s" -H "$HOST" "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}')
  kill -INT "$pid" 2>/dev/null || true; kill -QUIT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  local total
  total=$(callgrind_annotate "$WORK/cg-$name.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  row 12 "$name" "$((total / (n + 3)))" "$n"
}
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg-nginx.out" nginx -c "$WORK/nginx-cg.conf" >/dev/null 2>&1 &
CG_PID=$!; wait_port 18181
cg_count nginx 18181 "$CG_PID"
cg_proxy() { # name port binary
  PROXY_WORKERS=1 DAYTONA_API_URL=http://127.0.0.1:18090 PROXY_API_KEY=bench-key PROXY_LISTEN_ADDRESS=127.0.0.1 PROXY_PORT=$2 \
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/cg-$1.out" "$3" >/dev/null 2>&1 &
  CG_PID=$!; wait_port "$2"
  cg_count "$1" "$2" "$CG_PID"
}
cg_proxy preview-proxy 18099 "$PROXY"
[ "$PROXY" != "$PLAIN" ] && cg_proxy "preview-proxy, no PGO" 18100 "$PLAIN"
# (awk stops reading early: the annotator's SIGPIPE is not a failure)
(callgrind_annotate "$WORK/cg-preview-proxy.out" 2>/dev/null || true) \
  | awk '/file:function/ {f=1; next} f && NF && !/^-/ && k++ < 16 {print}' | cut -c1-150 >"$WORK/cg-top.txt"

echo "scenario 3: cold-cache storm, 10 sandboxes x 1,000 first requests, 50 ms API latency"
# The app is examples/bench_app (no connection limit; the upstream nginx
# refuses beyond its worker_connections). Floor: the storm straight at the
# app. Peer: nginx in front of it (no lookups to make).
"$BIN/examples/mock_api" 127.0.0.1:18091 http://127.0.0.1:18088 50 2>/dev/null & PIDS+=($!); wait_port 18091
start_proxy 18086 18091
STORM_DIRECT=$("$BIN/examples/storm" 127.0.0.1:18088 10 1000 pubstorm)
STORM_NGINX=$("$BIN/examples/storm" 127.0.0.1:18087 10 1000 pubstorm)
STORM=$("$BIN/examples/storm" 127.0.0.1:18086 10 1000 pubstorm)
COUNTS=$(curl -s http://127.0.0.1:18091/__counts)

# --- report ------------------------------------------------------------------
python3 - "$RESULTS" "$IDLE_RSS" "$AFTER_RSS" "$STORM" "$COUNTS" "$MODE" "$BEFORE" "$PEAK" "$STORM_DIRECT" "$STORM_NGINX" \
  "$CACHE_BEFORE" "$CACHE_AFTER" "$WORK/cg-top.txt" <<'PY'
import json, statistics, sys
path, idle, after, storm, counts, mode, before, peak, storm_direct, storm_nginx, cache_before, cache_after, cg_top = sys.argv[1:14]
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
def table(scenario, title, cols, base, fmt, of=lambda a, b: a):
    """`of`: the quantity compared with `base`'s (the first column's by default)."""
    s = summary(scenario)
    print(f"\n{title}:\n")
    print("| target | " + " | ".join(cols) + f" | vs {base} | errors |\n|---|" + "---:|" * (len(cols) + 2))
    for n, (a, b, err) in s.items():
        vals = fmt(a, b)
        print(f"| {n} | " + " | ".join(vals) + f" | {of(a, b) / of(*s[base][:2]):.2f}x | {err} |")
table("1cpu", "Scenario 1, CPU the proxy spent per request (all its threads; medians of rounds; compared: user + system)",
      ["user us", "system us"], "nginx", lambda a, b: [f"{a:.2f}", f"{b:.2f}"], of=lambda a, b: a + b)
table("4", "Scenario 4, page-load fan-out (medians of rounds; time of one page load)", ["p50 ms", "p99 ms"], "direct",
      lambda a, b: [f"{a:.2f}", f"{b:.2f}"])
table("5idle", "Scenario 5, idle WebSocket tunnels", ["KiB per tunnel idle 12 s", "idle 2 s"], "nginx",
      lambda a, b: [f"{a:.1f}", f"{b:.1f}"])
table("5ka", "Scenario 5, idle keep-alive connections", ["KiB per connection idle 12 s", "idle 2 s"], "nginx",
      lambda a, b: [f"{a:.1f}", f"{b:.1f}"])
table("5kat", "Scenario 5, idle keep-alive connections arriving over time (a tenth every 1.5 s)",
      ["KiB per connection idle 12 s", "idle 2 s"], "nginx", lambda a, b: [f"{a:.1f}", f"{b:.1f}"])
table("5echo", "Scenario 5, 64 connections echoing 32-byte messages", ["messages/s"], "nginx",
      lambda a, b: [f"{a:,.0f}"])
table("6sse", "Scenario 6, server-sent events, delivery latency", ["p50 ms", "p99 ms"], "direct",
      lambda a, b: [f"{a:.3f}", f"{b:.3f}"])
sse = summary("6sse")
print(f"\nadded SSE latency at p99: preview-proxy {sse['preview-proxy'][1] - sse['direct'][1]:.3f} ms, nginx {sse['nginx'][1] - sse['direct'][1]:.3f} ms")
table("6down", "Scenario 6, 1 GiB download", ["MB/s"], "nginx", lambda a, b: [f"{a / 1e6:,.0f}"])
table("6up", "Scenario 6, 1 GiB upload", ["MB/s"], "nginx", lambda a, b: [f"{a / 1e6:,.0f}"])
print(f"\npreview-proxy peak RSS growth during the 1 GiB transfers: {(int(peak) - int(before)) / 1024:.1f} MiB")
table("7h2c", "Scenario 7, HTTP/2 cleartext (h2load)", ["req/s"], "nginx", lambda a, b: [f"{a:,.0f}"])
table("7tls", "Scenario 7, HTTP/2 over TLS (h2load)", ["req/s"], "nginx", lambda a, b: [f"{a:,.0f}"])
c = json.loads(counts)
print(f"\nScenario 3, cold-cache storm through the proxy: {storm}")
print(f"the same storm straight at the app (floor): {storm_direct}")
print(f"the same storm through nginx (no lookups): {storm_nginx}")
print(f"control-plane calls: runner={c.get('runner', 0)} public={c.get('public', 0)}")
print(f"\nScenario 8, memory: idle RSS {int(idle) / 1024:.1f} MiB, after scenario 1 {int(after) / 1024:.1f} MiB")
table("9", "Scenario 9, a new connection per request (HTTP/1.1)", ["req/s", "p99 ms"], "nginx",
      lambda a, b: [f"{a:,.0f}", f"{b:.2f}"])
for key, name in [("ecdsa", "ECDSA P-256"), ("rsa", "RSA-2048")]:
    table(f"10{key}", f"Scenario 10, TLS keep-alive HTTP/1.1, {name}", ["req/s", "p99 ms"], "nginx",
          lambda a, b: [f"{a:,.0f}", f"{b:.2f}"])
    table(f"10{key}new", f"Scenario 10, a new TLS connection per request (handshakes/s), {name}", ["req/s", "p99 ms"],
          "nginx", lambda a, b: [f"{a:,.0f}", f"{b:.2f}"])
per = (int(cache_after) - int(cache_before)) * 1024 / 20000
print(f"\nScenario 11, memory per cached sandbox: {per:,.0f} bytes (RSS {int(cache_before) / 1024:.1f} -> {int(cache_after) / 1024:.1f} MiB for 20,000)")
table("12", "Scenario 12, instructions per request (callgrind)", ["instructions", "requests"], "nginx",
      lambda a, b: [f"{a:,.0f}", f"{b:,.0f}"])
print("\npreview-proxy's top functions under callgrind (self instructions):\n")
print("```\n" + open(cg_top).read().rstrip() + "\n```")
PY
