#!/usr/bin/env python3
"""Mediators as real wallets feel them: idstack vs ACA-Py vs the credo-ts mediator.

A benchmark, not a test (nothing here runs in CI). Same script for every mediator:

  1. start the mediator under test (fresh store, its own ports) and take a reusable invitation;
  2. two credo-ts 0.6.3 agents (tests/interop/credo/credo-mediation.mjs, one process each) connect
     to it over WebSocket and get mediation: the recipient ("alice") and the sender ("bob");
  3. bob connects to alice through alice's invitation (DID exchange through the mediator both ways);
  4. warm-up: `--warmup` basic messages bob → alice, waited for;
  5. measured: bob sends `--n` basic messages one after the other (each send awaited by credo: the
     forward is posted to the mediator and its answer read) while alice picks them up;
     latency = alice's basic-message event time − bob's send start (same machine clock);
     msg/s = n / (last received − first send start); every message must arrive exactly once.
  Pickup: pickup 2.0 live mode over the WebSocket (idstack, credo mediator) or implicit pickup
  (ACA-Py: no live mode there; a trust ping with return-route `all` keeps the socket open and
  ACA-Py pushes forwards down it). Mediator CPU = utime + stime from /proc/<pid>/stat over the
  measured phase; RSS = VmRSS at the end of it (VmHWM = its peak). The two credo agents' CPU over the
  same phase is reported too (recipient_cpu / sender_cpu per 1,000 messages).
  Sender (--sender): `credo` (default) as above; `replay`: bob's credo packs the n messages first, untimed
  (every step of its sendMessage, forward-wrapped for alice's mediator, envelopes kept), then posts them to
  the mediator's HTTP inbound, each answer awaited, --concurrency at a time: a sender that costs one HTTP
  post per message, so the mediator and the credo recipient set the pace; latency counts from each post.
  --rate R paces the replay (message i posted at i/R s): below the recipient's ceiling, latency is the
  mediator's path, not a queue at the recipient.

Install (once, from the repo root):
  tests/interop/install.sh                                   # credo-ts 0.6.3 (npm) + askar (PyPI)
  cargo build --release                                      # idstack
  python3.11 -m venv /tmp/acapy-venv && /tmp/acapy-venv/bin/pip install 'aries-cloudagent[askar]==0.12.8'
  python3.13 -m venv /tmp/acapy17-venv && /tmp/acapy17-venv/bin/pip install 'acapy-agent==1.7.0'   # optional (needs Python >= 3.13)

Run (from the repo root; one fresh mediator per run):
  python3 loadtest/mediator-peers/bench.py idstack --n 200  --json idstack-200.json
  python3 loadtest/mediator-peers/bench.py idstack --n 2000 --json idstack-2000.json
  python3 loadtest/mediator-peers/bench.py idstack --n 200  --pickup implicit --handshake connections
  python3 loadtest/mediator-peers/bench.py acapy   --n 200  --acapy /tmp/acapy-venv/bin/aca-py
  python3 loadtest/mediator-peers/bench.py acapy   --n 200  --acapy /tmp/acapy17-venv/bin/aca-py
  python3 loadtest/mediator-peers/bench.py credo   --n 200
A message that never arrives shows as `missing` once --timeout has passed (the run still reports).
BENCHMARKS.md has the table these produce.
Environment knobs: IDSTACK__* (e.g. IDSTACK__MEDIATOR__FLUSH_BEFORE_ACK=false) reach the idstack
mediator; ACAPY_LOG_LEVEL=info, CREDO_VERBOSE=1 and CREDO_TRACE=1 (every DIDComm plaintext the two
agents pack or unpack, with a time stamp, in their logs) for looking into a run.
Logs of every process go to --logs (default /tmp/mediator-peers-logs/<mediator>-<n>/).
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
INTEROP = os.path.join(ROOT, "tests", "interop")
ADMIN_TOKEN = "bench-admin-token-0123456789"
TICK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def http_json(method, url, body=None, token=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def wait_http(url, deadline_s=60, token=None):
    end = time.monotonic() + deadline_s
    while True:
        try:
            req = urllib.request.Request(url)
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"{url} not ready after {deadline_s} s")
        time.sleep(0.05)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime = field 14, stime = field 15
    return (int(fields[11]) + int(fields[12])) / TICK


def mem_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return out


class Mediator:
    """A mediator process: pid to measure, invitation URL, optional stats."""

    def __init__(self, kind, args, logdir):
        self.kind = kind
        self.args = args
        self.logdir = logdir
        self.proc = None
        self.tmp = tempfile.mkdtemp(prefix=f"bench-{kind}-")
        self.stats_url = None
        self.version = None
        self.http_inbound = None  # where the replay sender posts (None: the endpoint credo packed for)

    def start(self):
        p = self.args.port
        err = open(os.path.join(self.logdir, "mediator.log"), "w")
        if self.kind == "idstack":
            env = {
                **os.environ,
                "IDSTACK__ADMIN__TOKENS": ADMIN_TOKEN,
                "IDSTACK__LOG__FILTER": os.environ.get("IDSTACK__LOG__FILTER", "warn"),
                # the per-IP DIDComm limit (1,200/min) would refuse a 2,000-message run from loopback
                "IDSTACK__SERVER__RATE_LIMIT__ENABLED": "false",
            }
            self.proc = subprocess.Popen(
                [self.args.idstack_bin, "serve", "--bind", f"127.0.0.1:{p}", "--data-dir", self.tmp],
                env=env, stdout=err, stderr=err)
            base = f"http://127.0.0.1:{p}"
            wait_http(f"{base}/health/ready")
            inv = http_json("GET", f"{base}/api/mediator/invitation", token=ADMIN_TOKEN)
            self.invitation = inv["invitation_url"]
            self.stats_url = f"{base}/api/mediator/stats"
            self.http_inbound = f"{base}/didcomm"
            self.pid = self.proc.pid
        elif self.kind == "acapy":
            admin = p + 2
            cmd = [
                self.args.acapy, "start", "--label", "acapy-mediator",
                "--inbound-transport", "http", "127.0.0.1", str(p),
                "--inbound-transport", "ws", "127.0.0.1", str(p + 1),
                "--outbound-transport", "http", "--outbound-transport", "ws",
                # WebSocket first: credo's implicit pickup needs a ws service in the mediator's DIDDoc,
                # and ACA-Py puts only the first endpoint there
                "--endpoint", f"ws://127.0.0.1:{p + 1}", f"http://127.0.0.1:{p}",
                "--admin", "127.0.0.1", str(admin), "--admin-insecure-mode",
                "--open-mediation", "--enable-undelivered-queue",
                "--wallet-type", "askar", "--wallet-name", f"bench-{uuid.uuid4().hex[:8]}",
                "--wallet-key", "bench-wallet-key", "--auto-provision",
                "--wallet-storage-config", json.dumps({"path": self.tmp}),
                "--no-ledger", "--auto-accept-invites", "--auto-accept-requests",
                "--log-level", os.environ.get("ACAPY_LOG_LEVEL", "warning"),
            ]
            self.proc = subprocess.Popen(cmd, stdout=err, stderr=err)
            self.http_inbound = f"http://127.0.0.1:{p}"
            base = f"http://127.0.0.1:{admin}"
            wait_http(f"{base}/status/ready", deadline_s=120)
            hs = ["https://didcomm.org/connections/1.0"] if self.args.handshake == "connections" else \
                ["https://didcomm.org/didexchange/1.0"]
            inv = http_json("POST", f"{base}/out-of-band/create-invitation?multi_use=true&auto_accept=true",
                            {"handshake_protocols": hs, "use_public_did": False, "alias": "bench"})
            self.invitation = inv["invitation_url"]
            self.pid = self.proc.pid
            self.version = subprocess.run([self.args.acapy, "--version"], capture_output=True, text=True).stdout.strip()
        elif self.kind == "credo":
            self.proc = subprocess.Popen(
                ["node", "credo/credo-mediator.mjs", "--port", str(p)], cwd=INTEROP,
                stdout=subprocess.PIPE, stderr=err, text=True)
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("credo mediator died; see mediator.log")
            self.invitation = json.loads(line)["invitation_url"]
            self.http_inbound = f"http://127.0.0.1:{p}"
            self.pid = self.proc.pid
        else:
            raise SystemExit(f"unknown mediator {self.kind}")
        log(f"{self.kind} mediator pid {self.pid} ready; invitation {self.invitation[:60]}…")

    def stats(self):
        if not self.stats_url:
            return None
        return http_json("GET", self.stats_url, token=ADMIN_TOKEN)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Agent:
    """credo-mediation.mjs, one JSON line per command."""

    def __init__(self, label, logdir):
        self.label = label
        self.err = open(os.path.join(logdir, f"{label}.log"), "w")
        self.proc = subprocess.Popen(
            ["node", "credo/credo-mediation.mjs", "--label", label], cwd=INTEROP,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True, bufsize=1)

    def ask(self, partial=False, **cmd):
        """One command; `partial`: an answer with ok false (a timeout) is returned, not raised."""
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.label} died; see its log")
        r = json.loads(line)
        if not r.get("ok") and not (partial and "messages" in r):
            raise RuntimeError(f"{self.label} {cmd.get('cmd')}: {r.get('error')}")
        return r

    def close(self):
        try:
            self.proc.stdin.write('{"cmd":"shutdown"}\n')
            self.proc.stdin.flush()
            self.proc.wait(10)
        except Exception:
            self.proc.kill()


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run(args):
    logdir = args.logs or f"/tmp/mediator-peers-logs/{args.mediator}-{args.n}"
    os.makedirs(logdir, exist_ok=True)
    pickup = args.pickup or ("implicit" if args.mediator == "acapy" else "live")
    med = Mediator(args.mediator, args, logdir)
    agents = []
    try:
        med.start()
        alice = Agent("alice", logdir)
        bob = Agent("bob", logdir)
        agents = [alice, bob]
        start = {"cmd": "start", "mediatorInvitationUrl": med.invitation, "pickup": pickup,
                 "transport": "ws", "handshake": args.handshake, "timeoutMs": 60000}
        alice.ask(**start)
        bob.ask(**start)
        inv = alice.ask(cmd="createInvitation")
        bob_conn = bob.ask(cmd="receiveInvitation", invitationUrl=inv["invitation_url"], timeoutMs=60000)
        cid = bob_conn["connection_id"]
        log("connected; warm-up")
        w = args.warmup
        if w:
            bob.ask(cmd="sendMessages", connectionId=cid, prefix="warm", count=w, stamp=True)
            alice.ask(cmd="messages", expect=w, timeoutMs=120000)
        started = None
        if args.sender == "replay":
            log(f"packing {args.n}")
            bob.ask(cmd="packMessages", connectionId=cid, prefix="m", count=args.n)
        st0 = med.stats()
        cpu0 = cpu_seconds(med.pid)
        acpu0, bcpu0 = cpu_seconds(alice.proc.pid), cpu_seconds(bob.proc.pid)
        t0 = time.time()
        log(f"sending {args.n}")
        if args.sender == "replay":
            started = bob.ask(cmd="postPacked", concurrency=args.concurrency, url=med.http_inbound,
                              rate=args.rate)["started_at"]
        else:
            bob.ask(cmd="sendMessages", connectionId=cid, prefix="m", count=args.n, stamp=True)
        t_sent = time.time()
        # a mediator that loses messages shows as `missing` (after --timeout), not as a crash
        got = alice.ask(cmd="messages", expect=w + args.n, timeoutMs=args.timeout * 1000, times=True,
                        partial=True)
        if not got.get("ok"):
            log(f"not everything arrived: {got.get('error')}")
        cpu1 = cpu_seconds(med.pid)
        acpu1, bcpu1 = cpu_seconds(alice.proc.pid), cpu_seconds(bob.proc.pid)
        mem = mem_kib(med.pid)
        time.sleep(0.5)  # let the last acknowledgements land before reading the counters
        st1 = med.stats()
        msgs, at = got["messages"], got["received_at"]
        lat, sends, recvs, seen = [], [], [], {}
        for content, t in zip(msgs, at):
            if not content.startswith("m-"):
                continue
            if started is None:
                name, sent = content.split("@")
            else:
                name = content
                sent = started[int(name[2:])]
            seen[name] = seen.get(name, 0) + 1
            lat.append(t - float(sent))
            sends.append(float(sent))
            recvs.append(t)
        missing = [i for i in range(args.n) if f"m-{i}" not in seen]
        dups = [k for k, v in seen.items() if v > 1]
        dur = (max(recvs) - min(sends)) / 1000
        half = len(lat) // 2
        res = {
            "mediator": args.mediator, "version": med.version, "pickup": pickup, "n": args.n, "warmup": w,
            "sender": args.sender, "concurrency": args.concurrency if args.sender == "replay" else 1,
            "rate": args.rate if args.sender == "replay" else None,
            "received": len(lat), "missing": len(missing), "duplicates": len(dups),
            "seconds": round(dur, 3), "msg_per_s": round(len(lat) / dur, 1),
            "ms_per_msg": round(dur * 1000 / args.n, 2),
            "send_phase_s": round(t_sent - t0, 3),
            "latency_ms": {"p50": round(pct(lat, 50), 1), "p90": round(pct(lat, 90), 1),
                           "p99": round(pct(lat, 99), 1), "max": round(max(lat), 1),
                           "mean": round(statistics.mean(lat), 1)},
            "latency_p50_first_half_ms": round(pct(lat[:half], 50), 1),
            "latency_p50_second_half_ms": round(pct(lat[half:], 50), 1),
            "mediator_cpu_s": round(cpu1 - cpu0, 2),
            "mediator_cpu_s_per_1000_msgs": round((cpu1 - cpu0) * 1000 / args.n, 2),
            "recipient_cpu_s_per_1000_msgs": round((acpu1 - acpu0) * 1000 / args.n, 2),
            "sender_cpu_s_per_1000_msgs": round((bcpu1 - bcpu0) * 1000 / args.n, 2),
            "mediator_rss_mib": round(mem.get("VmRSS", 0) / 1024, 1),
            "mediator_peak_rss_mib": round(mem.get("VmHWM", 0) / 1024, 1),
            "loadavg": open("/proc/loadavg").read().split()[:3],
        }
        if st0 is not None:
            keys = ("forwarded_total", "delivered_total", "acknowledged_total", "queued_messages", "live_sockets")
            res["mediator_stats_before"] = {k: st0.get(k) for k in keys}
            res["mediator_stats_after"] = {k: st1.get(k) for k in keys}
        if missing:
            res["missing_first"] = missing[:20]
        return res
    finally:
        for a in agents:
            a.close()
        med.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mediator", choices=["idstack", "acapy", "credo"])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--port", type=int, default=18300)
    ap.add_argument("--pickup", choices=["live", "implicit", "polling"], default=None,
                    help="recipient pickup (default: live; implicit for acapy)")
    ap.add_argument("--handshake", choices=["didexchange", "connections"], default=None,
                    help="force the handshake family on the mediator connection")
    ap.add_argument("--sender", choices=["credo", "replay"], default="credo",
                    help="credo: bob's sendMessage per message (pack + post, awaited); replay: bob's credo packs all "
                         "n envelopes first (untimed), then posts them (HTTP, each answer awaited, --concurrency at a time)")
    ap.add_argument("--concurrency", type=int, default=1, help="replay sender: posts in flight")
    ap.add_argument("--rate", type=float, default=None,
                    help="replay sender: offered messages per second (default: as fast as the answers come)")
    ap.add_argument("--idstack-bin", default=os.path.join(ROOT, "target", "release", "idstack"))
    ap.add_argument("--acapy", default="/tmp/acapy-venv/bin/aca-py")
    ap.add_argument("--timeout", type=int, default=900, help="seconds to wait for all messages")
    ap.add_argument("--logs", default=None)
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args()
    res = run(args)
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
