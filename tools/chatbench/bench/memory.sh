#!/usr/bin/env bash
# Issue 17 item 3: what stored messages cost in server memory on the
# embedded log, and what history reads cost once the store's cache is cold.
# For each cache budget: a fresh server is filled with $MESSAGES messages of
# $BODY bytes and walked once (`history`, every message checked), left idle,
# then restarted on the same data (its files dropped from the kernel's page
# cache) and walked twice more with `history --room`: the first walk starts
# cold, the second is warm. The server's
# VmRSS is sampled every 2 s throughout.
#
#   tools/chatbench/bench/memory.sh [OUT]      (default OUT: bench-memory/)
#   CACHES="default 32 256" REPEAT=3 MESSAGES=200000 BODY=1024
#
# Results: $OUT/<cache>-{fill,cold,warm}.jsonl (chatbench's JSON, one object
# per run), $OUT/<cache>-rss-<run>.tsv (seconds, phase, VmRSS KiB) and
# $OUT/summary.tsv (one line per run). Needs release binaries.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${1:-bench-memory}
CACHES=${CACHES:-"default 32 256"}
REPEAT=${REPEAT:-3}
MESSAGES=${MESSAGES:-200000}
BODY=${BODY:-1024}
IDLE_SECS=${IDLE_SECS:-20}
mkdir -p "$OUT"
. tools/chatbench/bench/common.sh

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# start_parlor PORT DATADIR [args…]: start a server, wait until it listens, set $SERVER_PID.
start_parlor() {
  local port=$1 dir=$2; shift 2
  setsid "$PARLOR" serve --listen "127.0.0.1:$port" --data-dir "$dir" --rate-limit off \
    --max-connections-per-address 20000 "$@" \
    >>"$OUT/parlor-$port.log" 2>&1 </dev/null &
  SERVER_PID=$!
  pids+=("$SERVER_PID")
  for _ in $(seq 300); do grep -q "listening on" "$OUT/parlor-$port.log" && return; sleep 0.1; done
  echo "parlor did not start, see $OUT/parlor-$port.log" >&2; exit 1
}

stop_parlor() { kill "$SERVER_PID"; while kill -0 "$SERVER_PID" 2>/dev/null; do sleep 0.1; done; }

# evict DIR: drop DIR's files from the kernel's page cache (theirs only), so
# that reads after a restart come from the disk, not from memory.
evict() {
  python3 - "$1" <<'EOF'
import os, sys
for root, _, files in os.walk(sys.argv[1]):
    for f in files:
        fd = os.open(os.path.join(root, f), os.O_RDONLY)
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
EOF
}

# sample PID PHASE FILE: VmRSS every 2 s until the process is gone or the phase file changes.
sample() {
  local pid=$1 file=$2 t0=$3
  while kill -0 "$pid" 2>/dev/null; do
    printf '%s\t%s\t%s\n' "$(( $(date +%s) - t0 ))" "$(cat "$OUT/.phase")" "$(rss "$pid" 2>/dev/null || echo 0)" >>"$file"
    sleep 2
  done
}

bench() { "$BENCH" --server "http://127.0.0.1:$port" --json --users-file "$OUT/users-$port.jsonl" "$@"; }

printf 'cache\trun\trss_start_kib\trss_filled_kib\trss_walked_kib\trss_idle_kib\trss_restart_kib\trss_cold_kib\trss_warm_kib\tcold_first_ms\tcold_p50_ms\tcold_p99_ms\twarm_p50_ms\twarm_p99_ms\tloadavg\n' >>"$OUT/summary.tsv"
for cache in $CACHES; do
  flags=()
  [ "$cache" = default ] || flags=(--cache-mib "$cache")
  for run in $(seq "$REPEAT"); do
    echo "== cache $cache, run $run" >&2
    port=$(free_port)
    dir=$(mktemp -d)
    series="$OUT/$cache-rss-$run.tsv"
    t0=$(date +%s)
    echo start >"$OUT/.phase"
    start_parlor "$port" "$dir" "${flags[@]}"
    sample "$SERVER_PID" "$series" "$t0" &
    rss_start=$(rss "$SERVER_PID")
    echo fill >"$OUT/.phase"
    fill=$(bench history --messages "$MESSAGES" --body-bytes "$BODY" --joiners 1 --fetches 200)
    echo "$fill" >>"$OUT/$cache-fill.jsonl"
    room=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["room_id"])' "$fill")
    echo idle >"$OUT/.phase"
    sleep "$IDLE_SECS"
    rss_idle=$(rss "$SERVER_PID")
    stop_parlor
    evict "$dir"
    echo restart >"$OUT/.phase"
    start_parlor "$port" "$dir" "${flags[@]}"
    sample "$SERVER_PID" "$series" "$t0" &
    rss_restart=$(rss "$SERVER_PID")
    echo cold >"$OUT/.phase"
    cold=$(bench history --room "$room" --messages "$MESSAGES" --body-bytes "$BODY" --joiners 1 --fetches 0)
    echo "$cold" >>"$OUT/$cache-cold.jsonl"
    echo warm >"$OUT/.phase"
    warm=$(bench history --room "$room" --messages "$MESSAGES" --body-bytes "$BODY" --joiners 1 --fetches 0)
    echo "$warm" >>"$OUT/$cache-warm.jsonl"
    stop_parlor
    python3 - "$cache" "$run" "$rss_start" "$rss_idle" "$rss_restart" "$fill" "$cold" "$warm" "$(cut -d' ' -f1-3 /proc/loadavg)" \
      >>"$OUT/summary.tsv" <<'EOF'
import json, sys
cache, run, start, idle, restart = sys.argv[1:6]
fill, cold, warm = (json.loads(a) for a in sys.argv[6:9])
for r in (fill, cold, warm):
    assert r["ok"], r
print("\t".join(str(x) for x in [
    cache, run, start, fill["server_rss_before_walk_kib"], fill["server_rss_kib"], idle, restart,
    cold["server_rss_kib"], warm["server_rss_kib"], cold["first_page_p50_ms"], cold["p50_ms"], cold["p99_ms"],
    warm["p50_ms"], warm["p99_ms"], sys.argv[9]]))
EOF
    rm -rf "$dir"
  done
done
rm -f "$OUT/.phase"
column -t "$OUT/summary.tsv"
