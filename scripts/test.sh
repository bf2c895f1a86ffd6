#!/usr/bin/env bash
# Runs every test: unit, integration (real binary on port 0) and, when present, the interop suites
# with real third-party clients (installed by tests/interop/install.sh from the npm/PyPI registries).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x tests/interop/install.sh ]; then
  tests/interop/install.sh
fi
# PyNaCl (libsodium) is the independent implementation the DIDComm v1 envelope tests unpack with.
if ! python3 -c 'import nacl' 2>/dev/null; then
  python3 -m pip install --quiet -r tests/vectors/requirements.txt
fi
# The console demo runs in Debian's chromium driven by playwright-core.
tests/browser/install.sh
# Locust drives `idstack agent --stdio` the Akrida way in one test.
if ! python3 -c 'import locust' 2>/dev/null; then
  python3 -m pip install --quiet -r loadtest/requirements.txt
fi
cargo test --all-targets "$@"
