#!/usr/bin/env bash
# Runs the BENCHMARKS.md matrix: every workload, three repeats, on the
# embedded log and on Redis Streams, each backend on a fresh server (and a
# fresh, memory-only redis-server). Results: one JSON object per run in
# $OUT/<backend>-<case>.jsonl, and the table of medians in $OUT/summary.md.
#
#   tools/chatbench/bench/run.sh [OUT]        (default OUT: bench-results/)
#
# Needs release binaries (cargo build --release -p parlor -p chatbench) and,
# for the Redis half, redis-server on PATH. Run it on an otherwise idle
# machine: server and tool share the cores, so anything else skews the numbers.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${1:-bench-results}
REPEAT=${REPEAT:-3}
BACKENDS=${BACKENDS:-"embedded redis"}
mkdir -p "$OUT"
. tools/chatbench/bench/common.sh

# start_parlor PORT DATADIR [args…]: start a server, wait until it listens, set $SERVER_PID.
start_parlor() {
  local port=$1 dir=$2; shift 2
  setsid "$PARLOR" serve --listen "127.0.0.1:$port" --data-dir "$dir" --rate-limit off \
    --max-connections-per-address 20000 "$@" \
    >"$OUT/parlor-$port.log" 2>&1 </dev/null &
  SERVER_PID=$!
  pids+=("$SERVER_PID")
  for _ in $(seq 100); do grep -q "listening on" "$OUT/parlor-$port.log" && return; sleep 0.1; done
  echo "parlor did not start, see $OUT/parlor-$port.log" >&2; exit 1
}

run() { # run BACKEND CASE PORT chatbench-args…
  local backend=$1 case=$2 port=$3; shift 3
  echo "== $backend $case" >&2
  "$BENCH" --server "http://127.0.0.1:$port" --json --repeat "$REPEAT" \
    --users-file "$OUT/users-$port.jsonl" "$@" >>"$OUT/$backend-$case.jsonl" || true
}

for backend in $BACKENDS; do
  extra=()
  if [ "$backend" = redis ]; then
    rport=$(free_port)
    setsid redis-server --port "$rport" --save '' --appendonly no >"$OUT/redis.log" 2>&1 </dev/null &
    pids+=("$!")
    sleep 0.5
    extra=(--redis "redis://127.0.0.1:$rport/")
  fi
  rm -f "$OUT/$backend"-*.jsonl
  port=$(free_port)
  start_parlor "$port" "$(mktemp -d)" "${extra[@]}"
  run "$backend" fanout-5x10-1000 "$port" fanout --rooms 5 --members 10 --rate 1000 --messages 10000
  run "$backend" fanout-20x50-max "$port" fanout --rooms 20 --members 50 --rate max --window 40 --messages 30000
  run "$backend" fanout-20x50-3000 "$port" fanout --rooms 20 --members 50 --rate 3000 --messages 24000
  run "$backend" fanout-20x50-1000 "$port" fanout --rooms 20 --members 50 --rate 1000 --messages 8000
  run "$backend" sends-100x1-max "$port" fanout --rooms 100 --members 1 --rate max --window 400 --messages 100000
  run "$backend" history-1000 "$port" history --messages 1000 --page 100
  run "$backend" resume-5x10 "$port" resume --rooms 5 --members 10 --rate 500 --messages 5000 --drops 2
  run "$backend" accounts-200 "$port" accounts --users 200
  run "$backend" storm-200 "$port" accounts --users 200 --during-fanout --rooms 5 --members 10 --rate 1000
  kill "$SERVER_PID"

  # Idle memory needs a server that never hashed a password (argon2's freed
  # 19 MiB buffers would be reused by connections and hide their cost): make
  # the users on one process, then measure on a fresh process over the same data.
  port=$(free_port)
  dir=$(mktemp -d)
  start_parlor "$port" "$dir" "${extra[@]}"
  "$BENCH" --server "http://127.0.0.1:$port" --users-file "$OUT/users-idle-$port.jsonl" idle --connections 50 --rooms 20 --users 50 >/dev/null
  kill "$SERVER_PID"; sleep 1
  for _ in $(seq "$REPEAT"); do
    start_parlor "$port" "$dir" "${extra[@]}"
    REPEAT=1 run "$backend" idle-19900 "$port" idle --connections 19900 --rooms 20 --users 50
    kill "$SERVER_PID"; sleep 1
  done
done

python3 "$(dirname "$0")/summary.py" "$OUT" | tee "$OUT/summary.md"
