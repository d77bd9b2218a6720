#!/usr/bin/env bash
# Test-bed S3: a real S3-compatible server on 127.0.0.1. MinIO, built once with `go install` from the
# Go module proxy into $REWIND_CACHE, is the default (it is what users run on premises and it
# implements conditional writes); moto's standalone server from PyPI is the fallback when MinIO
# cannot be built (no Go toolchain), or when REWIND_S3_SERVER=moto. Idempotent: `start` does nothing
# when a server already answers.
#
#   scripts/s3.sh start|stop|status|restart|log|env
#   scripts/s3.sh moto        # install moto's server (once) and print its path
#
# Environment: REWIND_S3_PORT (9000), REWIND_S3_SERVER (minio|moto), REWIND_CACHE.
# Credentials of the test bed: access key "rewind", secret "rewind-secret-key", region us-east-1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

MINIO_MODULE=github.com/minio/minio
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
MOTO_VERSION=5.2.5
PORT=${REWIND_S3_PORT:-9000}
ACCESS_KEY=rewind
SECRET_KEY=rewind-secret-key
DIR=$TESTBED/s3
PIDFILE=$DIR/s3.pid
LOGFILE=$DIR/s3.log
MINIO_BIN=$REWIND_CACHE/minio-$MINIO_VERSION/bin/minio
MOTO_VENV=$REWIND_CACHE/moto-$MOTO_VERSION

server() {
  if [ -n "${REWIND_S3_SERVER:-}" ]; then echo "$REWIND_S3_SERVER"; return; fi
  if [ -x "$MINIO_BIN" ] || command -v go >/dev/null; then echo minio; else echo moto; fi
}

install_minio() {
  [ -x "$MINIO_BIN" ] && return 0
  log "s3: building MinIO $MINIO_VERSION with go install (once; cached in $REWIND_CACHE)"
  mkdir -p "$REWIND_CACHE/go"
  GOPATH="$REWIND_CACHE/go" GOMODCACHE="$REWIND_CACHE/go/pkg/mod" GOCACHE="$REWIND_CACHE/go-build" \
    GOBIN="$(dirname "$MINIO_BIN")" GOFLAGS="-modcacherw -buildvcs=false" \
    go install "$MINIO_MODULE@$MINIO_VERSION" >&2
}

install_moto() {
  [ -x "$MOTO_VENV/bin/moto_server" ] && return 0
  log "s3: installing moto[server]==$MOTO_VERSION from PyPI into $MOTO_VENV"
  rm -rf "$MOTO_VENV"
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q "moto[server]==$MOTO_VERSION" >&2
}

healthy() {
  port_open "$PORT" || return 1
  case "$(cat "$DIR/server" 2>/dev/null || echo minio)" in
    minio) curl -fsS -o /dev/null "http://127.0.0.1:$PORT/minio/health/live" ;;
    *) curl -sS -o /dev/null "http://127.0.0.1:$PORT/" ;;
  esac
}

running() { alive "$PIDFILE" && healthy; }

start() {
  if running; then log "s3: already running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"; return 0; fi
  if alive "$PIDFILE"; then stop; fi
  if port_open "$PORT"; then log "s3: 127.0.0.1:$PORT is taken by another process; set REWIND_S3_PORT"; exit 1; fi
  local kind
  kind=$(server)
  mkdir -p "$DIR"
  rm -rf "$DIR/data" && mkdir -p "$DIR/data"
  : > "$LOGFILE"
  case "$kind" in
    minio)
      install_minio
      log "s3: starting MinIO on 127.0.0.1:$PORT (log $LOGFILE)"
      # A static KMS key lets the test bed serve SSE-S3 and SSE-KMS (key id "rewind-test-key").
      MINIO_ROOT_USER=$ACCESS_KEY MINIO_ROOT_PASSWORD=$SECRET_KEY MINIO_BROWSER=off MINIO_UPDATE=off \
        MINIO_KMS_SECRET_KEY="rewind-test-key:cmV3aW5kLXRlc3QtYmVkLWttcy1rZXktMzItYnl0ZSE=" \
        setsid nohup "$MINIO_BIN" server "$DIR/data" --address "127.0.0.1:$PORT" --console-address "127.0.0.1:$((PORT + 1))" --quiet \
        >>"$LOGFILE" 2>&1 < /dev/null &
      ;;
    moto)
      install_moto
      log "s3: starting moto on 127.0.0.1:$PORT (log $LOGFILE)"
      setsid nohup "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >>"$LOGFILE" 2>&1 < /dev/null &
      ;;
    *) log "s3: unknown REWIND_S3_SERVER=$kind (minio or moto)"; exit 2 ;;
  esac
  echo $! > "$PIDFILE"
  echo "$kind" > "$DIR/server"
  for _ in $(seq 1 120); do
    if ! alive "$PIDFILE"; then log "s3: the server exited during startup; last lines of $LOGFILE:"; tail -n 30 "$LOGFILE" >&2; exit 1; fi
    if healthy; then log "s3: $kind ready on 127.0.0.1:$PORT"; return 0; fi
    sleep 0.5
  done
  log "s3: not ready after 60 s; see $LOGFILE"; tail -n 30 "$LOGFILE" >&2; stop; exit 1
}

stop() { stop_pid s3 "$PIDFILE"; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if running; then echo "s3: $(cat "$DIR/server") running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), log $LOGFILE)"; else echo "s3: not running"; exit 1; fi ;;
  log) echo "$LOGFILE" ;;
  install) if [ "$(server)" = minio ]; then install_minio; else install_moto; fi ;;
  moto)
    # moto's server, whatever the shared server is: the tests of S3 features MinIO lacks (bucket
    # lifecycle rules, Glacier storage classes and restore requests) start their own from it.
    install_moto; echo "$MOTO_VENV/bin/moto_server" ;;
  serve)
    # Run a second, private server in the foreground: scripts/s3.sh serve DATA_DIR PORT (fault tests
    # stop and restart it without touching the shared one).
    data=${2:?data dir}; port=${3:?port}
    case "$(server)" in
      minio)
        install_minio
        MINIO_ROOT_USER=$ACCESS_KEY MINIO_ROOT_PASSWORD=$SECRET_KEY MINIO_BROWSER=off MINIO_UPDATE=off \
          exec "$MINIO_BIN" server "$data" --address "127.0.0.1:$port" --console-address "127.0.0.1:$((port + 1))" --quiet ;;
      *) install_moto; exec "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$port" ;;
    esac ;;
  env)
    # Settings for tests and for trying Rewind against the test bed: eval "$(scripts/s3.sh env)".
    echo "export REWIND_TEST_S3_ENDPOINT=http://127.0.0.1:$PORT REWIND_TEST_S3_ACCESS_KEY=$ACCESS_KEY REWIND_TEST_S3_SECRET_KEY=$SECRET_KEY" ;;
  *) echo "usage: $0 start|stop|restart|status|log|env|install|serve DIR PORT" >&2; exit 2 ;;
esac
