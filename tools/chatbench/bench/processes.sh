#!/usr/bin/env bash
# Issue 13's measurements: several `parlor serve` processes with one
# --server-name on one Redis (memory only, as in run.sh) are one server.
#
#   fanout  20 rooms × 50 members with the members' WebSockets spread over
#           1, 2 and 3 of three running processes (the cases interleaved,
#           REPEAT rounds), at --rate max and at 3,000 sends/s.
#   logins  `accounts --users 200` against 1 process and against 3 (requests
#           spread over them), and against one process with --hash-threads 2,
#           interleaved.
#   idle    IDLE_TOTAL (100,080) idle WebSockets at once over 6 fresh
#           processes, opened by 6 chatbench processes (each ≤ 17k sockets:
#           the hard RLIMIT_NOFILE here is 20,000 per process); total server
#           RSS before and after. Then the control, measured the same way:
#           one process, one client, a sixth of the sockets.
#
#   tools/chatbench/bench/processes.sh [OUT]   (default OUT: bench-processes/)
#   CASES="fanout logins idle" REPEAT=3 IDLE_TOTAL=100080 IDLE_CLIENTS=6 IDLE_SETTLE=150
#
# Every result line (one JSON object per run, in $OUT/<case>.jsonl) carries
# `loadavg`, /proc/loadavg just before the run, and `redis_cpu_s`: the machine
# is shared, so compare ratios within one run of this script.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${1:-bench-processes}
REPEAT=${REPEAT:-3}
CASES=${CASES:-"fanout logins idle"}
IDLE_TOTAL=${IDLE_TOTAL:-100080}
IDLE_CLIENTS=${IDLE_CLIENTS:-6}
IDLE_SETTLE=${IDLE_SETTLE:-150}
mkdir -p "$OUT"
. tools/chatbench/bench/common.sh

# stop PID…: SIGTERM, then wait until each has exited (its data dir is free again).
stop() {
  local p
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do while [ -e "/proc/$p" ] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null; do sleep 0.1; done; done
}

cpu_s() { awk '{ print ($14 + $15) / 100 }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

start_redis() { # sets REDIS_URL, REDIS_PID
  local port; port=$(free_port)
  setsid redis-server --port "$port" --save '' --appendonly no >"$OUT/redis-$port.log" 2>&1 </dev/null &
  REDIS_PID=$!
  pids+=("$REDIS_PID")
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  REDIS_URL="redis://127.0.0.1:$port/"
}

# start_parlor PORT DATADIR [args…]: one process of the server `bench.parlor` on $REDIS_URL; sets $SERVER_PID.
start_parlor() {
  local port=$1 dir=$2; shift 2
  setsid "$PARLOR" serve --listen "127.0.0.1:$port" --data-dir "$dir" --rate-limit off \
    --max-connections-per-address 20000 --server-name bench.parlor --redis "$REDIS_URL" "$@" \
    >"$OUT/parlor-$port.log" 2>&1 </dev/null &
  SERVER_PID=$!
  pids+=("$SERVER_PID")
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "parlor did not start, see $OUT/parlor-$port.log" >&2; exit 1
}

# run CASE chatbench-args…: one run; its JSON gets loadavg and redis_cpu_s.
run() {
  local case=$1; shift
  echo "== $case ($(cut -d' ' -f1-3 /proc/loadavg))" >&2
  local load r0 line
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  r0=$(cpu_s "$REDIS_PID")
  line=$("$BENCH" --json "$@" | tail -1) || true
  [ -n "$line" ] || { echo "   (no result)" >&2; return; }
  echo "$line" | jq -c --arg case "$case" --arg load "$load" \
    --argjson redis "$(awk -v a="$(cpu_s "$REDIS_PID")" -v b="$r0" 'BEGIN { print a - b }')" \
    '. + {case: $case, loadavg: $load, redis_cpu_s: $redis}' | tee -a "$OUT/$case.jsonl" |
    jq -r '"   ok=\(.ok) deliveries/s=\(.deliveries_per_s) p99=\(.p99_ms) login/s=\(.login_per_s) server_cpu%=\(.server_cpu_pct) client_cpu%=\(.client_cpu_pct) redis_cpu_s=\(.redis_cpu_s)"' >&2
}

three_processes() { # sets PORTS (3), PIDS (3)
  PORTS=(); PIDS=()
  for i in 0 1 2; do
    local port; port=$(free_port)
    start_parlor "$port" "$(mktemp -d)"
    PORTS+=("$port"); PIDS+=("$SERVER_PID")
  done
}

# servers N: --server for the first N processes, --server-pid for all three
# (the ones not named still follow the room feeds: that is their cost).
servers() {
  local n=$1 i
  for ((i = 0; i < n; i++)); do printf -- '--server\nhttp://127.0.0.1:%s\n' "${PORTS[$i]}"; done
  for p in "${PIDS[@]}"; do printf -- '--server-pid\n%s\n' "$p"; done
}

if [[ " $CASES " == *" fanout "* ]]; then
  start_redis
  three_processes
  rm -f "$OUT"/fanout-*.jsonl
  users=(--users-file "$OUT/users-fanout.jsonl")
  for round in $(seq "$REPEAT"); do
    for n in 1 2 3; do
      mapfile -t s < <(servers "$n")
      run "fanout-20x50-max-$n" "${s[@]}" "${users[@]}" fanout --rooms 20 --members 50 --rate max --window 40 --messages 30000
    done
    for n in 1 2 3; do
      mapfile -t s < <(servers "$n")
      run "fanout-20x50-3000-$n" "${s[@]}" "${users[@]}" fanout --rooms 20 --members 50 --rate 3000 --messages 24000
    done
  done
  for p in "${PIDS[@]}" "$REDIS_PID"; do kill "$p"; done
  sleep 1
fi

if [[ " $CASES " == *" logins "* ]]; then
  start_redis
  three_processes
  rm -f "$OUT"/logins-*.jsonl
  # A fourth process of the same server with two hashing threads (the
  # default is one less than the cores: one here), alone: is it processes
  # or hashing threads that logins scale with?
  port2=$(free_port)
  start_parlor "$port2" "$(mktemp -d)" --hash-threads 2
  for round in $(seq "$REPEAT"); do
    for n in 1 3; do
      mapfile -t s < <(servers "$n")
      run "logins-200-$n" "${s[@]}" accounts --users 200
    done
    run "logins-200-1-hash2" --server "http://127.0.0.1:$port2" --server-pid "$SERVER_PID" accounts --users 200
  done
  for p in "${PIDS[@]}" "$SERVER_PID" "$REDIS_PID"; do kill "$p"; done
  sleep 1
fi

# idle_case NAME PROCESSES CLIENTS TOTAL: TOTAL idle WebSockets at once over
# PROCESSES fresh processes, opened by CLIENTS chatbench processes; the
# processes' summed RSS before the clients start and once all are open.
idle_case() {
  local name=$1 nproc=$2 nclients=$3 total=$4
  start_redis
  PORTS=(); DIRS=()
  for i in $(seq "$nproc"); do PORTS+=("$(free_port)"); DIRS+=("$(mktemp -d)"); done
  all=(); for p in "${PORTS[@]}"; do all+=(--server "http://127.0.0.1:$p"); done
  # The users (and their tokens, kept in Redis) on processes that then
  # stop: the measured processes never hashed a password (see run.sh).
  PIDS=()
  for i in "${!PORTS[@]}"; do start_parlor "${PORTS[$i]}" "${DIRS[$i]}"; PIDS+=("$SERVER_PID"); done
  "$BENCH" "${all[@]}" --users-file "$OUT/users-$name.jsonl" idle --connections 60 --rooms 20 --users 50 >/dev/null
  stop "${PIDS[@]}"
  PIDS=()
  for i in "${!PORTS[@]}"; do start_parlor "${PORTS[$i]}" "${DIRS[$i]}"; PIDS+=("$SERVER_PID"); done
  sleep 2
  fds() { local t=0 p; for p in "${PIDS[@]}"; do t=$((t + $(ls "/proc/$p/fd" | wc -l))); done; echo "$t"; }
  rss() { local t=0 p; for p in "${PIDS[@]}"; do t=$((t + $(rss_kib "$p"))); done; echo "$t"; }
  local fd0 rss0 redis0 load per want t0 t_connect conns rss1 redis1 load1 ok delivered expected c
  fd0=$(fds); rss0=$(rss); redis0=$(rss_kib "$REDIS_PID"); load=$(cut -d' ' -f1-3 /proc/loadavg)
  per=$((total / nclients))
  rm -f "$OUT/$name"-client-*.json
  local clients=()
  for c in $(seq "$nclients"); do
    # Each holds its sockets until every client is connected (settle), then probes its rooms.
    "$BENCH" "${all[@]}" --json --users-file "$OUT/users-$name.jsonl" --drain-timeout 30 \
      idle --connections "$per" --rooms 20 --users 50 --settle-secs "$IDLE_SETTLE" --connect-concurrency 64 \
      >"$OUT/$name-client-$c.json" 2>"$OUT/$name-client-$c.err" &
    clients+=("$!")
  done
  want=$((per * nclients))
  t0=$(date +%s)
  while [ "$(( $(fds) - fd0 ))" -lt "$want" ] && [ $(( $(date +%s) - t0 )) -lt $((IDLE_SETTLE - 10)) ]; do sleep 2; done
  t_connect=$(( $(date +%s) - t0 ))
  sleep 5
  conns=$(( $(fds) - fd0 )); rss1=$(rss); redis1=$(rss_kib "$REDIS_PID"); load1=$(cut -d' ' -f1-3 /proc/loadavg)
  local per_proc=(); for p in "${PIDS[@]}"; do per_proc+=("$(ls "/proc/$p/fd" | wc -l):$(rss_kib "$p")"); done
  ok=true
  for c in "${clients[@]}"; do wait "$c" || ok=false; done
  delivered=$(cat "$OUT/$name"-client-*.json | jq -s 'map(.delivered) | add')
  expected=$(cat "$OUT/$name"-client-*.json | jq -s 'map(.expected) | add')
  jq -n -c --arg case "$name" --argjson want "$want" --argjson conns "$conns" --argjson rss0 "$rss0" --argjson rss1 "$rss1" \
    --argjson redis0 "$redis0" --argjson redis1 "$redis1" --arg load "$load" --arg load1 "$load1" \
    --argjson secs "$t_connect" --arg per_proc "${per_proc[*]}" --argjson ok "$ok" \
    --argjson delivered "${delivered:-0}" --argjson expected "${expected:-0}" \
    '{case: $case, connections_wanted: $want, server_fds_opened: $conns, connect_s: $secs,
      server_rss_before_kib: $rss0, server_rss_after_kib: $rss1,
      server_kib_per_connection: ((($rss1 - $rss0) / $want) * 1000 | round / 1000),
      redis_rss_before_kib: $redis0, redis_rss_after_kib: $redis1,
      per_process_fds_rss_kib: $per_proc, probe_delivered: $delivered, probe_expected: $expected,
      clients_ok: $ok, loadavg_before: $load, loadavg_connected: $load1}' | tee -a "$OUT/$name.jsonl"
  for p in "${PIDS[@]}" "$REDIS_PID"; do kill "$p"; done
  sleep 1
}

if [[ " $CASES " == *" idle "* ]]; then
  rm -f "$OUT"/idle-6x.jsonl "$OUT"/idle-1x.jsonl
  idle_case idle-6x 6 "$IDLE_CLIENTS" "$IDLE_TOTAL"
  # The control, measured the same way: one process, one client, one
  # process's share of the sockets above.
  idle_case idle-1x 1 1 $((IDLE_TOTAL / 6))
fi
