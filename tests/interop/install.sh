#!/usr/bin/env bash
# Installs the real third-party clients the interop tests drive (npm registry only). Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules/@openid4vc/openid4vci ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
