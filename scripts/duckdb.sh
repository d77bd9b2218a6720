#!/usr/bin/env bash
# Test-bed DuckDB: a Python virtual environment with the duckdb package from PyPI, and its httpfs
# extension (s3://) from PyPI too, so that nothing comes from extensions.duckdb.org. Used by the
# interoperability tests to read archives the way users do. Idempotent; prints the interpreter path.
#
#   scripts/duckdb.sh          # install when missing, print the python to use
#
# duckdb-extension-httpfs carries the signed httpfs.duckdb_extension of one DuckDB version (its
# version is DuckDB's, and it requires exactly that duckdb); duckdb-extensions' import_extension
# runs `INSTALL '<that file>'`, which copies it into DuckDB's extension directory
# (~/.duckdb/extensions/v<version>/<platform>), where `LOAD httpfs` finds it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

DUCKDB_VERSION=1.5.5
VENV=$REWIND_CACHE/duckdb-$DUCKDB_VERSION
PACKAGES=("duckdb==$DUCKDB_VERSION" "duckdb-extensions==$DUCKDB_VERSION" "duckdb-extension-httpfs==$DUCKDB_VERSION")

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import duckdb, duckdb_extensions, duckdb_extension_httpfs" 2>/dev/null; then
  log "duckdb: installing ${PACKAGES[*]} from PyPI into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "${PACKAGES[@]}" >&2
fi

# Installed, and from the package (not an earlier download from extensions.duckdb.org)?
from_package='
import duckdb, pathlib, sys, duckdb_extension_httpfs as package
file = pathlib.Path(package.__file__).parent / "extensions" / ("v" + duckdb.__version__) / "httpfs.duckdb_extension"
row = duckdb.execute("SELECT installed_from FROM duckdb_extensions() WHERE extension_name = ? AND installed", ["httpfs"]).fetchone()
sys.exit(0 if row and row[0] == str(file) else 1)'
if ! "$VENV/bin/python" -c "$from_package" 2>/dev/null; then
  log "duckdb: installing the httpfs extension from the duckdb-extension-httpfs package"
  "$VENV/bin/python" -c 'from duckdb_extensions import import_extension; import_extension("httpfs", force_install=True)' >&2
fi
echo "$VENV/bin/python"
