#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, broker+controller) on 127.0.0.1.
#
#   kafka.sh fetch                          fetch broker jars once (Maven, cached in target/lib)
#   kafka.sh start [--port P] [--dir D]     format storage if needed, start, wait until ready
#   kafka.sh stop  [--dir D]                stop cleanly (SIGTERM, then SIGKILL after 30 s)
#   kafka.sh status [--dir D]
#
# Idempotent: `start` on a running broker only prints its address.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LIB="$HERE/target/lib"
PORT="${KAFKA_PORT:-9092}"
DIR="${KAFKA_DIR:-$HERE/../../.run/kafka}"
HEAP="${KAFKA_HEAP:-512m}"
READY_TIMEOUT="${KAFKA_READY_TIMEOUT:-90}"

cmd="${1:-}"; shift || true
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    *) echo "kafka.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
PIDFILE="$DIR/broker.pid"
LOG="$DIR/broker.log"

fetch() {
  if [[ -f "$LIB/kafka_2.13-$(grep -oP '(?<=<kafka.version>)[^<]+' "$HERE/pom.xml").jar" ]]; then
    return 0
  fi
  echo "kafka.sh: fetching Apache Kafka jars with Maven (first run only)..." >&2
  mvn -B -q -f "$HERE/pom.xml" dependency:copy-dependencies >&2
}

java_cmd() {
  java -Xms128m -Xmx"$HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
    -cp "$LIB/*" "$@"
}

running() {
  [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  fetch
  if running; then
    echo "kafka: already running (pid $(cat "$PIDFILE")) on $(cat "$DIR/bootstrap")"
    return 0
  fi
  if port_open "$PORT"; then
    echo "kafka.sh: port $PORT on 127.0.0.1 is taken by another process" >&2
    exit 1
  fi
  local cport=$((PORT + 1))
  if [[ -n "${KAFKA_CONTROLLER_PORT:-}" ]]; then cport="$KAFKA_CONTROLLER_PORT"; fi
  if port_open "$cport"; then
    echo "kafka.sh: controller port $cport on 127.0.0.1 is taken; set KAFKA_CONTROLLER_PORT" >&2
    exit 1
  fi
  cat > "$DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DIR/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.flush.interval.messages=9223372036854775807
PROPS
  if [[ ! -f "$DIR/data/meta.properties" ]]; then
    local cid
    cid="$(java_cmd kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    java_cmd kafka.tools.StorageTool format -t "$cid" -c "$DIR/server.properties" >"$DIR/format.log" 2>&1 || {
      cat "$DIR/format.log" >&2; echo "kafka.sh: storage format failed" >&2; exit 1; }
  fi
  nohup java -Xms128m -Xmx"$HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
    -cp "$LIB/*" kafka.Kafka "$DIR/server.properties" >"$LOG" 2>&1 </dev/null &
  echo $! > "$PIDFILE"
  echo "127.0.0.1:$PORT" > "$DIR/bootstrap"
  local waited=0
  until grep -q "Kafka Server started" "$LOG" 2>/dev/null && port_open "$PORT"; do
    if ! running; then
      tail -n 40 "$LOG" >&2
      echo "kafka.sh: broker exited during start-up (log: $LOG)" >&2
      rm -f "$PIDFILE"; exit 1
    fi
    if (( waited >= READY_TIMEOUT * 5 )); then
      tail -n 40 "$LOG" >&2
      echo "kafka.sh: broker not ready after ${READY_TIMEOUT}s (log: $LOG)" >&2
      stop; exit 1
    fi
    sleep 0.2; waited=$((waited + 1))
  done
  echo "kafka: ready on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), data $DIR)"
}

stop() {
  if ! running; then
    rm -f "$PIDFILE"; echo "kafka: not running"; return 0
  fi
  local pid; pid="$(cat "$PIDFILE")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; echo "kafka: stopped"; return 0; }
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"; echo "kafka: killed after 30 s"
}

case "$cmd" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) if running; then echo "kafka: running on $(cat "$DIR/bootstrap") (pid $(cat "$PIDFILE"))"; else echo "kafka: not running"; exit 3; fi ;;
  *) sed -n '2,9p' "$0"; exit 2 ;;
esac
