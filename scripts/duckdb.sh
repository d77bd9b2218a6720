#!/usr/bin/env bash
# Test-bed DuckDB: a Python virtual environment with the duckdb package from PyPI, used by the
# interoperability tests to read archives the way users do. Idempotent; prints the interpreter path.
#
#   scripts/duckdb.sh          # install when missing, print the python to use
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

DUCKDB_VERSION=1.5.6
VENV=$REWIND_CACHE/duckdb-$DUCKDB_VERSION

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import duckdb" 2>/dev/null; then
  log "duckdb: installing duckdb==$DUCKDB_VERSION from PyPI into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "duckdb==$DUCKDB_VERSION" >&2
fi
echo "$VENV/bin/python"
