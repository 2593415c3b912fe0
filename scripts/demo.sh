#!/usr/bin/env bash
# Quick start, command 1: install Debian packages, build, and compare the bundled activation sets
# (data/net_a.pt, data/net_b.pt); the numbers are also written to out/demo/similarity.json.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
svcca_install_deps
svcca_build "$SVCCA_ROOT/build" -DSVCCA_BUILD_TESTS=OFF -DSVCCA_BUILD_BENCHMARKS=OFF
mkdir -p "$SVCCA_ROOT/out/demo"
"$SVCCA_ROOT/build/examples/svcca-compare" --json "$SVCCA_ROOT/out/demo/similarity.json"
echo "svcca: wrote $SVCCA_ROOT/out/demo/similarity.json"
