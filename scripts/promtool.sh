#!/usr/bin/env bash
# Test-bed promtool: Prometheus' `promtool`, built once with `go install` from the Go module proxy
# into $REWIND_CACHE, used to check and unit-test the alerting rules. Idempotent; prints the path of
# the binary to use.
#
#   scripts/promtool.sh        # build when missing, print the promtool to use
#
# The pinned, cached build is preferred over any promtool on PATH (reproducible output); a promtool
# on PATH is used only when the pinned one is absent and there is no Go toolchain to build it.
# Prometheus publishes its Go module as v0.3xx.y (v0.316.0 is Prometheus 3.16.0); its go.mod asks
# for go 1.26.7, so no GOTOOLCHAIN download is needed with Go >= 1.26.7. With an older Go, the go
# command fails with "requires go >= 1.26.7": upgrade Go, or export GOTOOLCHAIN=<newer go> first.
#
# Environment: REWIND_CACHE.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

PROMETHEUS_MODULE=github.com/prometheus/prometheus
PROMETHEUS_VERSION=v0.316.0
PROMETHEUS_RELEASE=3.16.0 # what `promtool --version` reports (stamped as Prometheus' Makefile does)
PROMTOOL_BIN=$REWIND_CACHE/promtool-$PROMETHEUS_VERSION/bin/promtool

go_tool promtool "$PROMTOOL_BIN" "$PROMETHEUS_MODULE/cmd/promtool@$PROMETHEUS_VERSION" "-X github.com/prometheus/common/version.Version=$PROMETHEUS_RELEASE"
