#!/usr/bin/env bash
# Local Qdrant server (one node, or an N-peer Raft cluster) on 127.0.0.1.
#
#   qdrant.sh start [--port P] [--dir D] [--api-key K] [--cluster N]
#                               start (or restart the stopped peers), wait until /readyz answers
#   qdrant.sh stop  [--dir D] [--node I]   stop cleanly (SIGTERM, then SIGKILL after 30 s)
#   qdrant.sh kill  [--dir D] [--node I]   SIGKILL at once (crash tests)
#   qdrant.sh status [--dir D]
#   qdrant.sh bin                          print the server binary's path (fetching it if needed)
#
# Ports: peer I (1..N) serves HTTP on P+3(I-1), gRPC on the next port and Raft p2p on the one
# after; peer 1 is the bootstrap peer. Data of peer I lives in D/nodeI (storage, snapshots, log,
# pid). Starting again with the same --port and --dir resumes on the same storage.
# The binary: $QDRANT_BIN, else ../shared/bin/qdrant next to the repository, else Qdrant's
# official release v$QDRANT_VERSION for this platform, downloaded once into .cache/qdrant.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
QDRANT_VERSION="${QDRANT_VERSION:-1.18.3}"
RELEASE_URL="${QDRANT_RELEASE_URL:-https://github.com/qdrant/qdrant/releases/download}"
CACHE="${QDRANT_CACHE:-$ROOT/.cache/qdrant}"
PORT="${QDRANT_PORT:-6333}"
DIR="${QDRANT_DIR:-$ROOT/.run/qdrant}"
API_KEY="${QDRANT_API_KEY:-}"
NODES=1
NODE=""
READY_TIMEOUT="${QDRANT_READY_TIMEOUT:-60}"

cmd="${1:-}"; shift || true
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --api-key) API_KEY="$2"; shift 2 ;;
    --cluster) NODES="$2"; shift 2 ;;
    --node) NODE="$2"; shift 2 ;;
    *) echo "qdrant.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || { echo "qdrant.sh: --cluster needs a peer count >= 1" >&2; exit 2; }
[[ "$PORT" =~ ^[0-9]+$ ]] || { echo "qdrant.sh: --port needs a number" >&2; exit 2; }

die() { echo "qdrant.sh: $*" >&2; exit 1; }

release_asset() {
  local os arch
  os="$(uname -s)"; arch="$(uname -m)"
  case "$os/$arch" in
    Linux/x86_64) echo "qdrant-x86_64-unknown-linux-musl.tar.gz" ;;
    Linux/aarch64|Linux/arm64) echo "qdrant-aarch64-unknown-linux-musl.tar.gz" ;;
    Darwin/x86_64) echo "qdrant-x86_64-apple-darwin.tar.gz" ;;
    Darwin/arm64) echo "qdrant-aarch64-apple-darwin.tar.gz" ;;
    *) return 1 ;;
  esac
}

find_bin() {
  if [[ -n "${QDRANT_BIN:-}" ]]; then
    [[ -x "$QDRANT_BIN" ]] || die "QDRANT_BIN=$QDRANT_BIN is not an executable file"
    echo "$QDRANT_BIN"; return 0
  fi
  local shared; shared="$(cd "$ROOT/.." && pwd)/shared/bin/qdrant"
  if [[ -x "$shared" ]]; then
    echo "$shared"; return 0
  fi
  local cached="$CACHE/v$QDRANT_VERSION/qdrant"
  if [[ -x "$cached" ]]; then
    echo "$cached"; return 0
  fi
  local asset url tmp
  asset="$(release_asset)" || die "no Qdrant release for $(uname -s)/$(uname -m); \
set QDRANT_BIN to a qdrant server binary, or QDRANT_URL to a running server"
  url="$RELEASE_URL/v$QDRANT_VERSION/$asset"
  echo "qdrant.sh: fetching Qdrant v$QDRANT_VERSION from $url (first run only)..." >&2
  mkdir -p "$CACHE/v$QDRANT_VERSION"
  tmp="$(mktemp -d "$CACHE/download.XXXXXX")"
  if ! curl -fsSL --connect-timeout 10 --max-time 300 -o "$tmp/$asset" "$url" 2>"$tmp/curl.err" \
     || ! tar -xzf "$tmp/$asset" -C "$tmp" 2>>"$tmp/curl.err" || [[ ! -f "$tmp/qdrant" ]]; then
    local why; why="$(tr '\n' ' ' <"$tmp/curl.err")"
    rm -rf "$tmp"
    die "cannot download the Qdrant server ($url: ${why:-no qdrant binary in the archive}).
  No binary was found: QDRANT_BIN is unset and $shared does not exist.
  Provide one of: QDRANT_BIN=/path/to/qdrant (a Qdrant server binary, e.g. from
  https://github.com/qdrant/qdrant/releases), a file at $shared,
  or QDRANT_URL=http://host:6333 (+ QDRANT_API_KEY) of a running server (tests only)."
  fi
  chmod +x "$tmp/qdrant"
  mv "$tmp/qdrant" "$cached"
  rm -rf "$tmp"
  echo "$cached"
}

http_port() { echo $((PORT + 3 * ($1 - 1))); }

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

node_dir() { echo "$DIR/node$1"; }

log_size() {
  local f="$1/qdrant.log"
  if [[ -f "$f" ]]; then wc -c < "$f"; else echo 0; fi
}

running() {
  local pidfile; pidfile="$(node_dir "$1")/qdrant.pid"
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

ready() {
  curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$1/readyz"
}

nodes_in_dir() {
  if [[ -n "$NODE" ]]; then echo "$NODE"; return 0; fi
  local d
  for d in "$DIR"/node*; do
    [[ -d "$d" ]] && echo "${d##*/node}"
  done | sort -n
}

start_node() {
  local i="$1" bin="$2"
  local nd http grpc p2p
  nd="$(node_dir "$i")"; http="$(http_port "$i")"; grpc=$((http + 1)); p2p=$((http + 2))
  if running "$i"; then
    echo "qdrant: node $i already running (pid $(cat "$nd/qdrant.pid")) on http://127.0.0.1:$http"
    return 0
  fi
  local p
  for p in "$http" "$grpc"; do
    port_open "$p" && die "port $p on 127.0.0.1 is taken by another process"
  done
  if (( NODES > 1 )) && port_open "$p2p"; then
    die "p2p port $p2p on 127.0.0.1 is taken by another process"
  fi
  mkdir -p "$nd/storage" "$nd/snapshots"
  local args=()
  local envs=(
    QDRANT__SERVICE__HOST=127.0.0.1
    QDRANT__SERVICE__HTTP_PORT="$http"
    QDRANT__SERVICE__GRPC_PORT="$grpc"
    QDRANT__STORAGE__STORAGE_PATH="$nd/storage"
    QDRANT__STORAGE__SNAPSHOTS_PATH="$nd/snapshots"
    QDRANT__TELEMETRY_DISABLED=true
  )
  [[ -n "$API_KEY" ]] && envs+=(QDRANT__SERVICE__API_KEY="$API_KEY")
  if (( NODES > 1 )); then
    envs+=(QDRANT__CLUSTER__ENABLED=true QDRANT__CLUSTER__P2P__PORT="$p2p")
    args+=(--uri "http://127.0.0.1:$p2p")
    if (( i > 1 )); then
      args+=(--bootstrap "http://127.0.0.1:$(( $(http_port 1) + 2 ))")
    fi
  fi
  log_size "$nd" > "$nd/qdrant.logpos"  # where this start's log lines begin
  # cwd is the node directory: the server's ./config lookup finds nothing there.
  (cd "$nd"
   env "${envs[@]}" nohup "$bin" "${args[@]}" >>"$nd/qdrant.log" 2>&1 </dev/null &
   echo $! > "$nd/qdrant.pid")
  echo "http://127.0.0.1:$http" > "$nd/url"
}

wait_ready() {
  local i="$1" bin="$2" nd http waited=0 retries=0 logpos
  nd="$(node_dir "$i")"; http="$(http_port "$i")"
  logpos="$(cat "$nd/qdrant.logpos" 2>/dev/null || echo 0)"  # this start's first log byte
  until ready "$http"; do
    if ! running "$i" && (( retries < 45 )) \
       && tail -n 30 "$nd/qdrant.log" | grep -q "Address already in use"; then
      # A restart right after a crash: the dead peer's connections hold its ports in
      # TIME_WAIT for up to a minute, and the server binds without SO_REUSEADDR. Retry.
      retries=$((retries + 1)); sleep 2
      start_node "$i" "$bin"
      logpos="$(cat "$nd/qdrant.logpos")"
      continue
    fi
    if running "$i" && (( retries < 45 )) && tail -c "+$((logpos + 1))" "$nd/qdrant.log" \
       | grep -q "Error while starting REST server: Address already in use"; then
      # The same, when only the REST port was taken: the server goes on with gRPC alone and
      # never answers /readyz. Stop it and start again.
      kill "$(cat "$nd/qdrant.pid")" 2>/dev/null || true
      for _ in $(seq 50); do running "$i" || break; sleep 0.1; done
      running "$i" && { kill -9 "$(cat "$nd/qdrant.pid")" 2>/dev/null || true; }
      retries=$((retries + 1)); sleep 2
      start_node "$i" "$bin"
      logpos="$(cat "$nd/qdrant.logpos")"
      continue
    fi
    if ! running "$i"; then
      tail -n 40 "$nd/qdrant.log" >&2
      rm -f "$nd/qdrant.pid"
      die "node $i exited during start-up (log: $nd/qdrant.log)"
    fi
    if (( waited >= READY_TIMEOUT * 5 )); then
      tail -n 40 "$nd/qdrant.log" >&2
      die "node $i not ready after ${READY_TIMEOUT}s (log: $nd/qdrant.log)"
    fi
    sleep 0.2; waited=$((waited + 1))
  done
  echo "qdrant: node $i ready on http://127.0.0.1:$http (pid $(cat "$nd/qdrant.pid"), data $nd)"
}

start() {
  local bin; bin="$(find_bin)"
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
  local i
  # The bootstrap peer first: the others join through it.
  start_node 1 "$bin"
  wait_ready 1 "$bin"
  for (( i = 2; i <= NODES; i++ )); do start_node "$i" "$bin"; done
  for (( i = 2; i <= NODES; i++ )); do wait_ready "$i" "$bin"; done
  echo "http://127.0.0.1:$(http_port 1)" > "$DIR/url"
}

signal_node() {
  local i="$1" sig="$2" nd pid
  nd="$(node_dir "$i")"
  if ! running "$i"; then
    rm -f "$nd/qdrant.pid"; echo "qdrant: node $i not running"; return 0
  fi
  pid="$(cat "$nd/qdrant.pid")"
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$nd/qdrant.pid"; echo "qdrant: node $i stopped ($sig)"; return 0; }
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$nd/qdrant.pid"; echo "qdrant: node $i killed after 30 s"
}

each_node() {
  local sig="$1" i any=0
  [[ -d "$DIR" ]] || { echo "qdrant: not running"; return 0; }
  for i in $(nodes_in_dir); do any=1; signal_node "$i" "$sig"; done
  (( any )) || echo "qdrant: not running"
}

status() {
  local i up=0 down=0
  [[ -d "$DIR" ]] || { echo "qdrant: not running"; exit 3; }
  for i in $(nodes_in_dir); do
    if running "$i"; then
      up=$((up + 1)); echo "qdrant: node $i running on $(cat "$(node_dir "$i")/url") (pid $(cat "$(node_dir "$i")/qdrant.pid"))"
    else
      down=$((down + 1)); echo "qdrant: node $i not running"
    fi
  done
  (( up > 0 && down == 0 )) || exit 3
}

case "$cmd" in
  start) start ;;
  stop) each_node TERM ;;
  kill) each_node KILL ;;
  status) status ;;
  bin) find_bin ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
