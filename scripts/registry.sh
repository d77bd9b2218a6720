#!/usr/bin/env bash
# Test-bed schema registry: Apicurio Registry 3 on 127.0.0.1, whose ccompat API speaks Confluent
# Schema Registry's REST protocol (subjects, versions, schemas/ids, config; Avro, JSON Schema and
# Protobuf), run with a Java 21+ from the upstream distribution that Maven Central serves: the
# quarkus-app tarball io.apicurio:apicurio-registry-app:<version>:tar.gz:all, resolved with Maven into
# $REWIND_CACHE and unpacked there once. Confluent's own registry is not on Maven Central, nor Karapace
# on PyPI. Idempotent: `start` does nothing when the registry already answers with the storage asked for.
#
#   scripts/registry.sh start|start-kafkasql|stop|status|restart|log|env|install
#
# `env` prints what tests need: eval "$(scripts/registry.sh env)" sets REWIND_TEST_REGISTRY_URL (the
# Confluent-compatible base, .../apis/ccompat/v7) and REWIND_TEST_REGISTRY_KAFKASQL_TOPIC.
# Environment: REWIND_REGISTRY_PORT (8081), REWIND_REGISTRY_MANAGEMENT_PORT (9081: Quarkus' management
# interface, /health/ready; its default 9000 is the test-bed S3 server's), REWIND_REGISTRY_STORAGE
# (mem or kafkasql), REWIND_REGISTRY_KAFKA_BOOTSTRAP (127.0.0.1:$REWIND_KAFKA_PORT, i.e. scripts/kafka.sh),
# REWIND_REGISTRY_KAFKASQL_TOPIC (kafkasql-journal), REWIND_REGISTRY_KAFKASQL_SNAPSHOTS_TOPIC
# (kafkasql-snapshots), REWIND_REGISTRY_JAVA (a java of version 21 or later; else JAVA_HOME's, PATH's
# or one under /usr/lib/jvm, e.g. the machine's Temurin 25), REWIND_REGISTRY_JAVA_OPTS (more -D
# options, e.g. -Dapicurio.ccompat.legacy-id-mode.enabled=true), REWIND_CACHE.
#
# Storage. mem (default): upstream's default, an in-memory H2 database, empty at every start.
# kafkasql (start-kafkasql, or REWIND_REGISTRY_STORAGE=kafkasql): every change is a record of the
# journal topic (one partition, cleanup.policy=delete, retention -1) on the Kafka broker, which the
# registry replays at start into its in-memory H2; the registry creates the topic, with
# kafkasql-snapshots and registry-events, when missing (the test-bed broker does not auto-create
# topics). Scripts/kafka.sh start must have been run; its broker is fresh at every start of its own.
#
# What was measured with 3.3.3 (Quarkus 3.33.3.1, on Temurin 25; the classes are Java 21 bytecode,
# so the machine's default Java 17 cannot run it): a cold install takes 12 s and leaves 168 MB; a
# start takes 6 s in memory, 8 to 15 s with kafkasql; the server holds 230 MB of memory.
# Ccompat ids are content ids: the same schema under two subjects gets one id (the v3 API's globalId
# is another counter); -Dapicurio.ccompat.legacy-id-mode.enabled=true makes them global ids, one per
# subject version. The default compatibility is NONE, not Confluent's BACKWARD (PUT /config sets it).
# The journal holds commands, not ids: JSON keys naming a messageType, JSON values, headers req and
# mt, and a Bootstrap record with a null value from every start of a registry. A registry replays it
# in order into a fresh database, so one started on a restored copy of the topic (every record, in
# order, with headers and null values) gives back every subject, version, id, config and deletion
# unchanged and numbers new schemas after them; createdOn/modifiedOn become the replay's time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

APICURIO_VERSION=3.3.3
ARTIFACT=io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all
PORT=${REWIND_REGISTRY_PORT:-8081}
MANAGEMENT_PORT=${REWIND_REGISTRY_MANAGEMENT_PORT:-9081}
STORAGE=${REWIND_REGISTRY_STORAGE:-mem}
KAFKA_BOOTSTRAP=${REWIND_REGISTRY_KAFKA_BOOTSTRAP:-127.0.0.1:${REWIND_KAFKA_PORT:-9092}}
KAFKASQL_TOPIC=${REWIND_REGISTRY_KAFKASQL_TOPIC:-kafkasql-journal}
KAFKASQL_SNAPSHOTS_TOPIC=${REWIND_REGISTRY_KAFKASQL_SNAPSHOTS_TOPIC:-kafkasql-snapshots}
HOME_DIR=$REWIND_CACHE/apicurio-$APICURIO_VERSION
APP=$HOME_DIR/quarkus-app
# One runtime folder per port, so that tests can run more registries beside the test bed's.
if [ "$PORT" = 8081 ]; then DIR=$TESTBED/registry; else DIR=$TESTBED/registry-$PORT; fi
PIDFILE=$DIR/registry.pid
LOGFILE=$DIR/registry.log
STORAGEFILE=$DIR/storage
URI=http://127.0.0.1:$PORT
URL=$URI/apis/ccompat/v7

# java_major JAVA: the feature version of a java binary (17, 21, 25), or nothing.
java_major() { "$1" -version 2>&1 | sed -n '1s/.*version "\([0-9]*\).*/\1/p'; }

# find_java: a java of version 21 or later.
find_java() {
  local j v
  for j in ${REWIND_REGISTRY_JAVA:-} ${JAVA_HOME:+$JAVA_HOME/bin/java} "$(command -v java || true)" /usr/lib/jvm/*/bin/java; do
    [ -n "$j" ] && [ -x "$j" ] || continue
    v=$(java_major "$j")
    if [ -n "$v" ] && [ "$v" -ge 21 ]; then echo "$j"; return 0; fi
  done
  log "registry: Apicurio Registry $APICURIO_VERSION needs Java 21 or later and none was found (set REWIND_REGISTRY_JAVA)"
  return 1
}

install() {
  [ -f "$HOME_DIR/.complete" ] && return 0
  command -v mvn >/dev/null || { log "registry: mvn not found; install Maven (apt-get install maven)"; exit 1; }
  find_java >/dev/null
  log "registry: resolving $ARTIFACT (the Quarkus fast-jar distribution, 160 MB) from Maven Central into $APP"
  mkdir -p "$HOME_DIR"
  rm -rf "$HOME_DIR/download" "$APP.partial" "$APP"
  mvn -B -q -Dstyle.color=never -Dmaven.repo.local="$REWIND_CACHE/m2" \
    dependency:copy -Dartifact="$ARTIFACT" -DoutputDirectory="$HOME_DIR/download" >&2
  mkdir -p "$APP.partial"
  tar -xzf "$HOME_DIR/download/"*.tar.gz -C "$APP.partial" --no-same-owner
  [ -f "$APP.partial/quarkus-run.jar" ] || { log "registry: $ARTIFACT has no quarkus-run.jar"; exit 1; }
  mv "$APP.partial" "$APP"
  # The unpacked tree is what runs: neither the tarball here nor Maven's copy is kept.
  rm -rf "$HOME_DIR/download" "$REWIND_CACHE/m2/io/apicurio/apicurio-registry-app/$APICURIO_VERSION"
  touch "$HOME_DIR/.complete"
}

healthy() {
  # Readiness (503 while kafkasql replays its journal), then the ccompat API itself.
  port_open "$PORT" && curl -fs -o /dev/null "http://127.0.0.1:$MANAGEMENT_PORT/health/ready" \
    && curl -fs -o /dev/null "$URL/subjects"
}

running() { alive "$PIDFILE" && healthy; }

storage_name() {
  case "$STORAGE" in
    mem) echo "in-memory H2" ;;
    kafkasql) echo "kafkasql, topic $KAFKASQL_TOPIC on $KAFKA_BOOTSTRAP" ;;
  esac
}

start() {
  case "$STORAGE" in
    mem|kafkasql) ;;
    *) log "registry: REWIND_REGISTRY_STORAGE must be mem or kafkasql, not $STORAGE"; exit 2 ;;
  esac
  if running; then
    if [ "$(cat "$STORAGEFILE" 2>/dev/null)" = "$(storage_name)" ]; then
      log "registry: already running on $URL (pid $(cat "$PIDFILE"), storage $(storage_name))"; return 0
    fi
    log "registry: running with storage $(cat "$STORAGEFILE" 2>/dev/null); restarting with $(storage_name)"
  fi
  if alive "$PIDFILE"; then stop; fi
  local p
  for p in "$PORT" "$MANAGEMENT_PORT"; do
    if port_open "$p"; then log "registry: 127.0.0.1:$p is taken by another process; set REWIND_REGISTRY_PORT or REWIND_REGISTRY_MANAGEMENT_PORT"; exit 1; fi
  done
  if [ "$STORAGE" = kafkasql ] && ! (exec 3<>"/dev/tcp/${KAFKA_BOOTSTRAP%:*}/${KAFKA_BOOTSTRAP##*:}") 2>/dev/null; then
    log "registry: no Kafka broker answers on $KAFKA_BOOTSTRAP for kafkasql storage; run scripts/kafka.sh start"; exit 1
  fi
  install
  local java
  java=$(find_java)
  mkdir -p "$DIR/tmp"
  : > "$LOGFILE"
  local opts=(-Xms64m -Xmx512m -XX:+UseSerialGC -Djava.awt.headless=true -Djava.io.tmpdir="$DIR/tmp"
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$PORT"
    -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$MANAGEMENT_PORT"
    -Dapicurio.storage.snapshot.location="$DIR/tmp" -Dapicurio.import.work-dir="$DIR/tmp"
    # A test bed needs two database connections, not upstream's pool of 20 to 100.
    -Dapicurio.datasource.jdbc.initial-size=2 -Dapicurio.datasource.jdbc.min-size=2 -Dapicurio.datasource.jdbc.max-size=20
    '-Dquarkus.log.category."org.apache.kafka".level=WARN')
  if [ "$STORAGE" = kafkasql ]; then
    # A poll timeout of 1 s instead of 5 s: the start replays the journal in 8 s instead of 27 s.
    opts+=(-Dapicurio.storage.kind=kafkasql -Dapicurio.kafkasql.bootstrap.servers="$KAFKA_BOOTSTRAP"
      -Dapicurio.kafkasql.topic="$KAFKASQL_TOPIC" -Dapicurio.kafkasql.snapshots.topic="$KAFKASQL_SNAPSHOTS_TOPIC"
      -Dapicurio.kafkasql.consumer.poll.timeout=1000)
  else
    opts+=(-Dapicurio.storage.kind=sql -Dapicurio.storage.sql.kind=h2)
  fi
  # shellcheck disable=SC2206 # REWIND_REGISTRY_JAVA_OPTS is a list of options, split on spaces.
  opts+=(${REWIND_REGISTRY_JAVA_OPTS:-})
  log "registry: starting Apicurio Registry $APICURIO_VERSION ($(storage_name)) on $URL (log $LOGFILE)"
  setsid nohup "$java" "${opts[@]}" -jar "$APP/quarkus-run.jar" >>"$LOGFILE" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  storage_name > "$STORAGEFILE"
  for _ in $(seq 1 240); do
    if ! alive "$PIDFILE"; then log "registry: the server exited during startup; last lines of $LOGFILE:"; tail -n 30 "$LOGFILE" >&2; exit 1; fi
    if healthy; then log "registry: ready on $URL"; return 0; fi
    sleep 0.25
  done
  log "registry: not ready after 60 s; see $LOGFILE"; tail -n 30 "$LOGFILE" >&2; stop; exit 1
}

stop() {
  stop_pid registry "$PIDFILE"
  rm -f "$STORAGEFILE"
  # A registry started beside the test bed's leaves nothing behind.
  if [ "$PORT" != 8081 ]; then rm -rf "$DIR"; fi
}

case "${1:-}" in
  start) start ;;
  start-kafkasql) STORAGE=kafkasql; start ;;
  stop) stop ;;
  restart) stop; start ;;
  status)
    if running; then echo "registry: running on $URL (pid $(cat "$PIDFILE"), storage $(cat "$STORAGEFILE" 2>/dev/null), log $LOGFILE)"
    else echo "registry: not running"; exit 1; fi ;;
  log) echo "$LOGFILE" ;;
  install) install ;;
  env)
    # Settings for tests: eval "$(scripts/registry.sh env)".
    echo "export REWIND_TEST_REGISTRY_URL=$URL"
    echo "export REWIND_TEST_REGISTRY_KAFKASQL_TOPIC=$KAFKASQL_TOPIC" ;;
  *) echo "usage: $0 start|start-kafkasql|stop|restart|status|log|env|install" >&2; exit 2 ;;
esac
