#!/usr/bin/env bash
# Installs what the tests need on a fresh machine (idempotent: each step checks first). Called by
# scripts/test.sh, and by .ci/run before its lib tests (the DIDComm envelope unit tests need PyNaCl).
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
# The Redis store backend is tested against a real redis-server (Debian package); the test harness
# starts its own instances on free 127.0.0.1 ports. The multi-node tests (cluster, Redis) put a real
# nginx (Debian nginx-light) in front of the nodes as the round-robin balancer.
missing=""
command -v redis-server >/dev/null || missing="$missing redis-server"
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing="$missing nginx-light"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null; fi
fi
