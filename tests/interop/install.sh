#!/usr/bin/env bash
# Installs the idstack interop clients (Animo @openid4vc/*, Digital Bazaar @digitalbazaar/vc and, unless INTEROP_SKIP_CREDO=1,
# credo-ts 0.6.3 with its askar native library). Idempotent: re-running is a no-op when the
# lock files have not changed. Downloads only from the npm registry and PyPI.
set -euo pipefail
cd "$(dirname "$0")"
ASKAR_VERSION=0.4.6

command -v node >/dev/null || { echo "install.sh: node (>= 20) is required" >&2; exit 1; }
node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' || { echo "install.sh: node >= 20 required" >&2; exit 1; }

lock_hash() { sha256sum "$1" | cut -d' ' -f1; }

# 1. Animo @openid4vc/* + jose + Digital Bazaar vc/data-integrity: pure JS, from package-lock.json (npm ci).
if [ "$(cat node_modules/.idstack-lock 2>/dev/null)" != "$(lock_hash package-lock.json)" ]; then
  npm ci --no-audit --no-fund
  lock_hash package-lock.json > node_modules/.idstack-lock
fi

[ "${INTEROP_SKIP_CREDO:-0}" = 1 ] && { echo "interop clients installed (credo skipped)"; exit 0; }

# 2. credo-ts. askar-nodejs' install script downloads its native library from GitHub, which is
#    unreachable: install without scripts, build ffi-napi/ref-napi locally, take libaries_askar.so
#    from the PyPI wheel instead.
cd credo
if [ "$(cat node_modules/.idstack-lock 2>/dev/null)" != "$(lock_hash package-lock.json)" ]; then
  # node-gyp must use the local node headers, never download them.
  if [ -z "${npm_config_nodedir:-}" ]; then
    prefix=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")
    if [ -f "$prefix/include/node/node.h" ]; then
      export npm_config_nodedir="$prefix"
    else
      echo "install.sh: node headers not found under $prefix/include/node (Debian: apt-get install libnode-dev)" >&2; exit 1
    fi
  fi
  command -v make >/dev/null && command -v g++ >/dev/null || { echo "install.sh: make and g++ are needed to build ffi-napi (apt-get install build-essential)" >&2; exit 1; }
  npm ci --ignore-scripts --no-audit --no-fund
  npm rebuild @2060.io/ffi-napi @2060.io/ref-napi
  lock_hash package-lock.json > node_modules/.idstack-lock
fi
if [ ! -f lib/x/aries_askar/libaries_askar.so ]; then
  rm -rf lib && mkdir -p lib
  python3 -m pip download --no-deps --only-binary=:all: "aries-askar==${ASKAR_VERSION}" -d lib
  python3 -m zipfile -e lib/aries_askar-${ASKAR_VERSION}-*.whl lib/x
fi
test -f lib/x/aries_askar/libaries_askar.so
echo "interop clients installed; credo uses LIB_ASKAR_PATH=$PWD/lib/x/aries_askar (credo-holder.mjs sets it by default)"
