#!/usr/bin/env bash
# Runs every test: unit, integration (real binary on port 0) and, when present, the interop suites
# with real third-party clients (installed by tests/interop/install.sh from the npm/PyPI registries).
set -euo pipefail
cd "$(dirname "$0")/.."
# What the tests need, installed once (also called by .ci/run before its own test steps).
scripts/test-deps.sh
cargo test --all-targets "$@"
# The role suites a second time with every spawned server on Redis (one redis-server for the run,
# a key prefix per test server). Only when no test filter was given.
if [ $# -eq 0 ]; then
  echo "== issuer, verifier, wallet, VC-API and mediator suites on the Redis backend"
  # (`mediator::` also matches cluster::mediator::, which runs on sled by design: skip it here)
  IDSTACK_TEST_STORE=redis cargo test --test it -- issuer:: verifier:: wallet:: vc_api:: mediator:: --skip cluster::
fi
