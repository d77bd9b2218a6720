#!/usr/bin/env bash
# Test-bed Kafka: a single-node Apache Kafka 4.x broker in KRaft mode on 127.0.0.1, run with the
# machine's Java from the org.apache.kafka:kafka_2.13 jars, resolved from Maven Central with Maven
# into $REWIND_CACHE. Idempotent: `start` does nothing when the broker already runs.
#
#   scripts/kafka.sh start|stop|status|restart|log
#
# Environment: REWIND_KAFKA_PORT (9092), REWIND_KAFKA_CONTROLLER_PORT (9093), REWIND_CACHE.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

KAFKA_VERSION=4.1.1
PORT=${REWIND_KAFKA_PORT:-9092}
CONTROLLER_PORT=${REWIND_KAFKA_CONTROLLER_PORT:-9093}
LIBS=$REWIND_CACHE/kafka-$KAFKA_VERSION/libs
DIR=$TESTBED/kafka
PIDFILE=$DIR/kafka.pid
LOGFILE=$DIR/kafka.log

install() {
  [ -f "$LIBS/.complete" ] && return 0
  command -v java >/dev/null || { log "kafka: java not found; install a JDK 17+ (apt-get install openjdk-17-jre-headless)"; exit 1; }
  command -v mvn >/dev/null || { log "kafka: mvn not found; install Maven (apt-get install maven)"; exit 1; }
  log "kafka: resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION from Maven Central into $LIBS"
  rm -rf "$LIBS.partial"
  mvn -B -q -Dstyle.color=never -f "$here/kafka/pom.xml" -Dmaven.repo.local="$REWIND_CACHE/m2" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS.partial" >&2
  rm -rf "$LIBS" && mv "$LIBS.partial" "$LIBS" && touch "$LIBS/.complete"
}

configure() {
  mkdir -p "$DIR"
  cat > "$DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DIR/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.check.interval.ms=5000
log.segment.delete.delay.ms=1000
PROPS
  cat > "$DIR/log4j2.properties" <<'PROPS'
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
logger.raft.name = org.apache.kafka.raft
logger.raft.level = warn
logger.controller.name = org.apache.kafka.controller
logger.controller.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
PROPS
}

JAVA_OPTS=(-Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$DIR/log4j2.properties" "-Dkafka.logs.file=$LOGFILE" -cp "$LIBS/*")
java_run() { java "${JAVA_OPTS[@]}" "$@"; }

running() { alive "$PIDFILE" && port_open "$PORT"; }

start() {
  if running; then log "kafka: already running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"; return 0; fi
  if alive "$PIDFILE"; then stop; fi
  if port_open "$PORT"; then log "kafka: 127.0.0.1:$PORT is taken by another process; set REWIND_KAFKA_PORT"; exit 1; fi
  install
  configure
  # A fresh cluster every start: stale metadata from an earlier run can never confuse a test.
  rm -rf "$DIR/data" && mkdir -p "$DIR/data"
  : > "$LOGFILE"
  local cluster_id
  cluster_id=$(java_run kafka.tools.StorageTool random-uuid 2>>"$LOGFILE" | tail -n 1)
  java_run kafka.tools.StorageTool format -t "$cluster_id" -c "$DIR/server.properties" >>"$LOGFILE" 2>&1 \
    || { log "kafka: formatting the log directory failed; see $LOGFILE"; tail -n 20 "$LOGFILE" >&2; exit 1; }
  log "kafka: starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$PORT (cluster $cluster_id, log $LOGFILE)"
  setsid nohup java "${JAVA_OPTS[@]}" kafka.Kafka "$DIR/server.properties" >>"$DIR/kafka.out" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 180); do
    if ! alive "$PIDFILE"; then
      log "kafka: the broker exited during startup; last lines of $LOGFILE:"; tail -n 30 "$LOGFILE" "$DIR/kafka.out" >&2; exit 1
    fi
    if port_open "$PORT" && grep -q "Kafka Server started" "$LOGFILE"; then
      log "kafka: ready on 127.0.0.1:$PORT"; return 0
    fi
    sleep 0.5
  done
  log "kafka: not ready after 90 s; see $LOGFILE"; tail -n 30 "$LOGFILE" >&2; stop; exit 1
}

stop() { stop_pid kafka "$PIDFILE"; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if running; then echo "kafka: running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), log $LOGFILE)"; else echo "kafka: not running"; exit 1; fi ;;
  log) echo "$LOGFILE" ;;
  install) install ;;
  *) echo "usage: $0 start|stop|restart|status|log|install" >&2; exit 2 ;;
esac
