#!/usr/bin/env bash
# Test-bed Helm: the `helm` CLI, built once with `go install` from the Go module proxy into
# $REWIND_CACHE, used to lint and render the chart. Idempotent; prints the path of the binary to use.
#
#   scripts/helm.sh            # build when missing, print the helm to use
#
# The pinned, cached build is preferred over any helm on PATH (reproducible output); a helm on PATH
# is used only when the pinned one is absent and there is no Go toolchain to build it.
# Helm v4 (helm.sh/helm/v4/cmd/helm) builds with the Go here; should a future pin fail to, the v3
# line (helm.sh/helm/v3/cmd/helm@v3.21.4) is the fallback to put in HELM_MODULE/HELM_VERSION.
# The version is stamped the way Helm's Makefile does; a plain `go install` reports only "v4.3".
#
# Environment: REWIND_CACHE.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

HELM_MODULE=helm.sh/helm/v4
HELM_VERSION=v4.3.2
HELM_BIN=$REWIND_CACHE/helm-$HELM_VERSION/bin/helm

go_tool helm "$HELM_BIN" "$HELM_MODULE/cmd/helm@$HELM_VERSION" "-X $HELM_MODULE/internal/version.version=$HELM_VERSION"
