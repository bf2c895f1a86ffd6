#!/usr/bin/env bash
# What serving a Token Status List costs: one release node (sandbox, sled, rate limits off) whose
# default issuer has issued credentials for ~N seconds of `idstack load --scenario issue` and revoked
# every dc+sd-jwt one (spread over token-1 by the keyed index permutation), then 32 anonymous
# clients GET /issuers/default/status-lists/token-1 without If-None-Match for 20 s.
#
#   loadtest/status-list.sh SERVER_BINARY LOAD_BINARY [ISSUE_SECONDS]
#
# SERVER_BINARY is the idstack under test; LOAD_BINARY an idstack that has the status-list load
# scenario (any build since it was added). Prints the load tool's JSON summary of the GET phase.
set -euo pipefail
server=$1
load=$2
issue_for=${3:-3}
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
export IDSTACK_ADMIN_TOKEN=bench-admin-token-0123456789
# run from the temporary dir: built-in defaults, not a config.toml of another version
(cd "$work" && IDSTACK__ADMIN__TOKENS=$IDSTACK_ADMIN_TOKEN IDSTACK__LOG__FILTER=warn \
  IDSTACK__SERVER__RATE_LIMIT__ENABLED=false \
  exec "$server" serve --bind 127.0.0.1:0 --ready-file "$work/rf.json" --data-dir "$work/data") &
pid=$!
for _ in $(seq 1 300); do [ -s "$work/rf.json" ] && break; sleep 0.1; done
A=http://$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http"])' "$work/rf.json")
"$load" load --target "$A" --scenario issue --users 32 --duration "${issue_for}s" --quiet --json "$work/issue.json" >/dev/null
python3 - "$A" <<'EOF'
import json, os, sys, urllib.request
base, token = sys.argv[1], os.environ["IDSTACK_ADMIN_TOKEN"]
def call(method, path):
    req = urllib.request.Request(base + path, method=method, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)
creds = call("GET", "/api/issuers/default/credentials")
token_list = [c for c in creds if c.get("format") == "dc+sd-jwt"]
for c in token_list:
    call("POST", f"/api/issuers/default/credentials/{c['id']}/revoke")
print(f"issued {len(creds)}, revoked {len(token_list)} dc+sd-jwt (of 131072 entries in token-1)", file=sys.stderr)
EOF
"$load" load --target "$A" --scenario status-list --users 32 --duration 20s --quiet --json "$work/get.json" >/dev/null
cat "$work/get.json"
