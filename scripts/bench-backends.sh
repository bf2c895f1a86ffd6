#!/usr/bin/env bash
# Benchmarks the store backends with the same `idstack load` commands (BENCHMARKS.md, "Redis vs
# sled vs the gossip cluster"): one node on sled, one node on Redis, three stateless nodes on one
# Redis, three nodes in gossip cluster mode; the three-node setups behind nginx round robin.
#
#   scripts/bench-backends.sh [BIN] [OUTDIR]      (BIN defaults to target/release/idstack)
#
# SETUPS picks setups (default "sled1 redis1 redis3 gossip3"; also gossip3a / gossip3c: the gossip
# cluster with cluster.single_use = available / consistent); MSG=0 skips the mediator scenario.
#
# Needs redis-server and nginx (Debian: redis-server nginx-light). Uses 127.0.0.1 ports
# 18090, 18100-18103, 18201-18203 and 6390. Every setup starts on empty data. Per-IP rate limits are
# off (all load comes from 127.0.0.1; they would answer most of it 429).
set -euo pipefail
BIN=$(realpath "${1:-target/release/idstack}")
OUT=$(realpath -m "${2:-bench-backends}")
T=bench-admin-token-0123456789
USERS=${USERS:-32} DURATION=${DURATION:-15s} MSG=${MSG:-1}
SETUPS=${SETUPS:-sled1 redis1 redis3 gossip3}
mkdir -p "$OUT"
nodes=()

wait_ready() { for _ in $(seq 300); do curl -sf "$1/health/ready" >/dev/null && return 0; sleep 0.1; done; echo "not ready: $1" >&2; return 1; }

run() { # name target
  for sc in verify issue; do
    "$BIN" load --target "$2" --scenario $sc --users "$USERS" --duration "$DURATION" --quiet \
      --admin-token $T --max-error-rate 1 --json "$OUT/$1-$sc.json" > "$OUT/$1-$sc.txt" 2>&1
  done
  [ "$MSG" = 1 ] || return 0
  "$BIN" load --target "$2" --scenario mediator-message --users 50 --rate 100 --duration 20s --quiet \
    --admin-token $T --max-error-rate 1 --json "$OUT/$1-msg.json" > "$OUT/$1-msg.txt" 2>&1
}

fresh_redis() {
  redis-cli -p 6390 shutdown nosave >/dev/null 2>&1 || true
  sleep 0.5; rm -rf "$OUT/redis"; mkdir -p "$OUT/redis"
  # durable the way a production Redis usually is: append-only file, fsync every second
  redis-server --port 6390 --bind 127.0.0.1 --dir "$OUT/redis" --save '' --appendonly yes \
    --appendfsync everysec --daemonize yes >/dev/null
  for _ in $(seq 50); do redis-cli -p 6390 ping >/dev/null 2>&1 && return 0; sleep 0.1; done
}

stop_nodes() {
  for p in "${nodes[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${nodes[@]}"; do wait "$p" 2>/dev/null || true; done
  nodes=()
  [ -f "$OUT/nginx/nginx.pid" ] && nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -s stop 2>/dev/null || true
  sleep 0.5
}
trap 'stop_nodes; redis-cli -p 6390 shutdown nosave >/dev/null 2>&1 || true' EXIT

single() { # name env...
  local name=$1; shift
  rm -rf "$OUT/$name-data"
  env IDSTACK__ADMIN__TOKENS=$T IDSTACK__LOG__FILTER=warn IDSTACK__SERVER__RATE_LIMIT__ENABLED=false "$@" "$BIN" serve --bind 127.0.0.1:18090 \
    --data-dir "$OUT/$name-data" > "$OUT/$name.log" 2>&1 &
  nodes+=($!)
  wait_ready http://127.0.0.1:18090
  run "$name" http://127.0.0.1:18090
  stop_nodes
}

three() { # name redis|gossip [auto|available|consistent]
  local name=$1 mode=$2 single_use=${3:-auto} mk
  mk=$(openssl rand -hex 32)
  rm -rf "$OUT/nginx" "$OUT/$name-n"*; mkdir -p "$OUT/nginx"
  cat > "$OUT/nginx/nginx.conf" <<NG
worker_processes 1;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream idstack { server 127.0.0.1:18101; server 127.0.0.1:18102; server 127.0.0.1:18103; }
  server {
    listen 127.0.0.1:18100;
    location / {
      proxy_pass http://idstack;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 300s;
      proxy_buffering off;
    }
  }
}
NG
  for i in 1 2 3; do
    if [ "$mode" = redis ]; then
      extra=(IDSTACK__STORE__BACKEND=redis IDSTACK__STORE__REDIS__URL=redis://127.0.0.1:6390
             IDSTACK__STORE__REDIS__KEY_PREFIX=$name); cl=()
    else
      extra=(IDSTACK__CLUSTER__NODE_ID=n$i IDSTACK__CLUSTER__GOSSIP_ADDR=127.0.0.1:1820$i
             IDSTACK__CLUSTER__SEEDS=127.0.0.1:18201,127.0.0.1:18202,127.0.0.1:18203
             IDSTACK__CLUSTER__SECRET=bench-cluster-secret-0123456789 IDSTACK__CLUSTER__BOOTSTRAP_EXPECT=3
             IDSTACK__CLUSTER__SINGLE_USE=$single_use); cl=(--cluster)
    fi
    env IDSTACK__ADMIN__TOKENS=$T IDSTACK__LOG__FILTER=warn IDSTACK__SERVER__RATE_LIMIT__ENABLED=false IDSTACK__SERVER__PUBLIC_URL=http://127.0.0.1:18100 \
      IDSTACK__STORE__MASTER_KEY="$mk" "${extra[@]}" \
      "$BIN" serve "${cl[@]}" --bind 127.0.0.1:1810$i --data-dir "$OUT/$name-n$i" > "$OUT/$name-n$i.log" 2>&1 &
    nodes+=($!)
  done
  nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf"
  for i in 1 2 3; do wait_ready http://127.0.0.1:1810$i; done
  run "$name" http://127.0.0.1:18100
  stop_nodes
}

for setup in $SETUPS; do
  case $setup in
    sled1) single sled1 ;;
    redis1) fresh_redis
      single redis1 IDSTACK__STORE__BACKEND=redis IDSTACK__STORE__REDIS__URL=redis://127.0.0.1:6390 \
        IDSTACK__STORE__REDIS__KEY_PREFIX=redis1 IDSTACK__STORE__MASTER_KEY="$(openssl rand -hex 32)" ;;
    redis3) fresh_redis; three redis3 redis ;;
    gossip3) three gossip3 gossip ;;
    gossip3a) three gossip3a gossip available ;;
    gossip3c) three gossip3c gossip consistent ;;
  esac
done

# summary: flows/s, full-flow p50/p99, errors; mediator forward (202) and end-to-end delivery
SETUPS="$SETUPS" python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
for setup in os.environ.get("SETUPS", "sled1 redis1 redis3 gossip3").split():
    for sc in ["verify", "issue", "msg"]:
        f = os.path.join(out, f"{setup}-{sc}.json")
        if not os.path.exists(f):
            print(f"{setup:8} {sc:6} (no result)"); continue
        d = json.load(open(f))
        ops = {o["operation"]: o for o in d["operations"]}
        line = f"{setup:8} {sc:6} {d['flows_per_s']:7.1f} flows/s  failed {d['failed']}"
        for name in ["full flow", "POST forward (stored, 202)", "forward → live delivery (end to end)"]:
            if name in ops:
                line += f" | {name} p50 {ops[name]['p50_ms']} p99 {ops[name]['p99_ms']} ms"
        print(line)
        for o in d["operations"]:
            for kind, n in o["errors"].items():
                print(f"         {n} × {o['operation']}: {kind}")
PY
