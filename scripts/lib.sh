# Shared settings of the test-bed scripts. Everything downloaded or built is cached under
# $REWIND_CACHE (default ~/.cache/rewind) so a second run installs nothing; runtime state (data,
# logs, pid files) lives under $REWIND_CACHE/testbed.
REWIND_CACHE=${REWIND_CACHE:-$HOME/.cache/rewind}
TESTBED=$REWIND_CACHE/testbed
mkdir -p "$TESTBED"

log() { printf '%s\n' "$*" >&2; }

# port_open PORT: is something listening on 127.0.0.1:PORT?
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# alive PIDFILE: is the process recorded in PIDFILE running?
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid NAME PIDFILE: TERM, wait up to 30 s, then KILL.
stop_pid() {
  local name=$1 pidfile=$2 pid
  if ! alive "$pidfile"; then rm -f "$pidfile"; log "$name: not running"; return 0; fi
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then log "$name: still up after 30 s, killing"; kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
  log "$name: stopped"
}

# go_tool NAME BIN PACKAGE@VERSION [LDFLAGS]: print the path of a Go-built tool, building it once
# with `go install` from the Go module proxy into BIN's folder (under $REWIND_CACHE). The pinned
# build is preferred; a NAME on PATH is used only when it is missing and there is no Go to build it.
go_tool() {
  local name=$1 bin=$2 package=$3 ldflags=${4:-}
  if [ ! -x "$bin" ]; then
    if ! command -v go >/dev/null && command -v "$name" >/dev/null; then
      log "$name: no Go toolchain to build $package; using $(command -v "$name") from PATH"
      command -v "$name"
      return 0
    fi
    if ! command -v go >/dev/null; then log "$name: need a Go toolchain to build $package, or a $name on PATH"; return 1; fi
    log "$name: building $package with go install (once; cached in $REWIND_CACHE)"
    mkdir -p "$REWIND_CACHE/go"
    GOPATH="$REWIND_CACHE/go" GOMODCACHE="$REWIND_CACHE/go/pkg/mod" GOCACHE="$REWIND_CACHE/go-build" \
      GOBIN="$(dirname "$bin")" GOFLAGS="-modcacherw -buildvcs=false" \
      go install -ldflags "$ldflags" "$package" >&2
  fi
  echo "$bin"
}
