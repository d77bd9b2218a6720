#!/usr/bin/env bash
# Test-bed DuckDB: a Python virtual environment with the duckdb package from PyPI, and its httpfs
# (s3://), avro and iceberg (iceberg_scan) extensions from PyPI too, so that nothing comes from
# extensions.duckdb.org. Used by the
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
EXTENSIONS=(httpfs avro iceberg)
PACKAGES=("duckdb==$DUCKDB_VERSION" "duckdb-extensions==$DUCKDB_VERSION")
for extension in "${EXTENSIONS[@]}"; do PACKAGES+=("duckdb-extension-$extension==$DUCKDB_VERSION"); done

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import duckdb, duckdb_extensions, duckdb_extension_httpfs, duckdb_extension_avro, duckdb_extension_iceberg" 2>/dev/null; then
  log "duckdb: installing ${PACKAGES[*]} from PyPI into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "${PACKAGES[@]}" >&2
fi

# Installed, and from the package (not an earlier download from extensions.duckdb.org)?
from_package='
import duckdb, importlib, pathlib, sys
name = sys.argv[1]
package = importlib.import_module("duckdb_extension_" + name)
file = pathlib.Path(package.__file__).parent / "extensions" / ("v" + duckdb.__version__) / (name + ".duckdb_extension")
row = duckdb.execute("SELECT installed_from FROM duckdb_extensions() WHERE extension_name = ? AND installed", [name]).fetchone()
sys.exit(0 if row and row[0] == str(file) else 1)'
for extension in "${EXTENSIONS[@]}"; do
  if ! "$VENV/bin/python" -c "$from_package" "$extension" 2>/dev/null; then
    log "duckdb: installing the $extension extension from the duckdb-extension-$extension package"
    "$VENV/bin/python" -c 'import sys; from duckdb_extensions import import_extension; import_extension(sys.argv[1], force_install=True)' "$extension" >&2
  fi
done
echo "$VENV/bin/python"
