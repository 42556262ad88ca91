#!/usr/bin/env bash
# `make run` / `make stop` for the embedded default: `freshrag up` in the background, then the
# sample corpus loaded through Kafka. Kafka and the LLM server are started by the Makefile.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${RUN_DIR:-$ROOT/.run}"
API_PORT="${API_PORT:-8000}"
CORPUS="${CORPUS:-$ROOT/samples/docs}"
LOAD_LIMIT="${LOAD_LIMIT:-}"
FRESHRAG="$ROOT/.venv/bin/freshrag"
PIDFILE="$RUN_DIR/up.pid"
LOG="$RUN_DIR/up.log"
export FRESHRAG_API_PORT="$API_PORT"
export FRESHRAG_INDEX_PATH="${FRESHRAG_INDEX_PATH:-$RUN_DIR/index}"
export FRESHRAG_API_KEYS="${FRESHRAG_API_KEYS:-local-dev-key=default}"
mkdir -p "$RUN_DIR"

running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

start() {
  if running; then
    echo "freshrag up: already running (pid $(cat "$PIDFILE"))"
  else
    cd "$ROOT"
    nohup "$FRESHRAG" up -r "$RUN_DIR/recovery" >"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    echo "freshrag up: starting (log $LOG)..."
    for _ in $(seq 1 300); do
      if curl -fsS "http://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1; then break; fi
      if ! running; then tail -n 40 "$LOG" >&2; echo "freshrag up exited during start-up" >&2; exit 1; fi
      sleep 0.5
    done
    curl -fsS "http://127.0.0.1:$API_PORT/readyz" >/dev/null || { tail -n 40 "$LOG" >&2; echo "freshrag up not ready after 150 s" >&2; exit 1; }
  fi
  local limit=()
  [[ -n "$LOAD_LIMIT" ]] && limit=(--limit "$LOAD_LIMIT")
  "$FRESHRAG" load "$CORPUS" "${limit[@]}"
  local key="${FRESHRAG_API_KEYS%%=*}"
  cat <<MSG

  freshrag is running (embedded: ingest + API over a Qdrant Edge shard in $FRESHRAG_INDEX_PATH)
    web page   http://127.0.0.1:$API_PORT/        API key: $key
    API docs   http://127.0.0.1:$API_PORT/docs
    metrics    http://127.0.0.1:$API_PORT/metrics
    Kafka      $FRESHRAG_KAFKA_BOOTSTRAP (topic documents)
    LLM        $FRESHRAG_OPENAI_BASE_URL
  Try:  .venv/bin/freshrag ask --api-key $key "How long is the Zephyr-9 flight time?"
  Stop: make stop
MSG
}

stop() {
  if ! running; then rm -f "$PIDFILE"; echo "freshrag up: not running"; return 0; fi
  local pid; pid="$(cat "$PIDFILE")"
  kill -TERM "$pid"
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; echo "freshrag up: stopped"; return 0; }
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true; rm -f "$PIDFILE"; echo "freshrag up: killed after 60 s"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: run.sh start|stop" >&2; exit 2 ;;
esac
