#!/usr/bin/env bash
# Test-bed pyiceberg: a Python virtual environment with pyiceberg and pyarrow from PyPI, used by the
# table tests to open the archive's Iceberg tables the way analysts do (a metadata location, a REST
# catalog). Idempotent; prints the interpreter path.
#
#   scripts/pyiceberg.sh       # install when missing, print the python to use
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

PYICEBERG_VERSION=0.12.0
VENV=$REWIND_CACHE/pyiceberg-$PYICEBERG_VERSION
PACKAGES=("pyiceberg[pyarrow,sql-sqlite]==$PYICEBERG_VERSION")

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import pyiceberg, pyarrow" 2>/dev/null; then
  log "pyiceberg: installing ${PACKAGES[*]} from PyPI into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "${PACKAGES[@]}" >&2
fi
echo "$VENV/bin/python"
