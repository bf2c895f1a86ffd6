#!/usr/bin/env bash
# Runs every test: unit, integration (real binary on port 0) and, when present, the interop suites
# with real third-party clients (installed by tests/interop/install.sh from the npm/PyPI registries).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x tests/interop/install.sh ]; then
  tests/interop/install.sh
fi
cargo test --all-targets "$@"
