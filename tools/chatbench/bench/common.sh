# Sourced by the bench scripts after they cd to the repository's top:
# the release binaries, the background processes killed on exit, free ports.
PARLOR=${PARLOR:-target/release/parlor}
BENCH=${BENCH:-target/release/chatbench}
[ -x "$PARLOR" ] && [ -x "$BENCH" ] || { echo "build first: cargo build --release -p parlor -p chatbench" >&2; exit 1; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
