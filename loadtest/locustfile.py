"""Akrida-style Locust load test: each Locust user drives one `idstack agent --stdio` subprocess
over the agent.js JSON line protocol (one command per stdin line, one {"error","result"} line back).

    IDSTACK_TARGET=http://127.0.0.1:8080 IDSTACK_ADMIN_TOKEN=... IDSTACK_BIN=target/release/idstack \
      locust -f loadtest/locustfile.py --headless -u 10 -r 5 -t 30s

Each agent starts with mediation (`start` with `withMediation`, the mediator invitation fetched from
`/api/mediator/invitation` and passed as Akrida passes MEDIATION_URL), then each iteration: the admin
API creates an offer and a verification request (OpenID4VC), the agent receives the credential
(`receiveOffer`) and presents it (`presentRequest`), and trust-pings its mediator over its WebSocket
(`ping_mediator`). Set IDSTACK_MEDIATION=0 to run without the mediator role.
"""
import json
import os
import subprocess
import time

import requests
from locust import User, between, events, task

TARGET = os.environ.get("IDSTACK_TARGET", "http://127.0.0.1:8080").rstrip("/")
TOKEN = os.environ.get("IDSTACK_ADMIN_TOKEN", "")
BIN = os.environ.get("IDSTACK_BIN", "idstack")
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


class Agent:
    def __init__(self):
        self.proc = subprocess.Popen([BIN, "agent", "--stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def call(self, cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        reply = json.loads(line)
        if reply.get("error") != 0:
            raise RuntimeError(f"{cmd['cmd']}: {reply.get('result')}")
        return reply["result"]

    def shutdown(self):
        try:
            self.call({"cmd": "shutdown"})
        finally:
            self.proc.wait(timeout=10)


class Holder(User):
    wait_time = between(0.0, 0.1)

    def on_start(self):
        self.agent = Agent()
        self.mediated = os.environ.get("IDSTACK_MEDIATION", "1") != "0"
        cmd = {"cmd": "start", "withMediation": self.mediated, "port": "0"}
        if self.mediated:
            inv = requests.get(f"{TARGET}/api/mediator/invitation", headers=ADMIN, timeout=30).json()
            cmd["mediatorUrl"] = inv["invitation_url"]
        self.measure("start", lambda: self.agent.call(cmd))

    def on_stop(self):
        self.agent.shutdown()

    def measure(self, name, fn):
        started = time.perf_counter()
        error = None
        try:
            fn()
        except Exception as e:  # reported to Locust as a failure
            error = e
        events.request.fire(request_type="agent", name=name, response_time=(time.perf_counter() - started) * 1000,
                            response_length=0, exception=error, context={})

    @task
    def receive_and_present(self):
        offer = requests.post(f"{TARGET}/api/issuers/default/offers", headers=ADMIN, timeout=30, json={
            "credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"],
            "claims": {"given_name": "Locust", "email": "locust@example.org"}}).json()
        self.measure("receiveOffer", lambda: self.agent.call({"cmd": "receiveOffer", "offerUrl": offer["offer_uri"]}))
        session = requests.post(f"{TARGET}/api/verifiers/default/sessions", headers=ADMIN, timeout=30, json={
            "dcql_query": {"credentials": [{"id": "pid", "format": "dc+sd-jwt", "meta": {}, "claims": [{"path": ["given_name"]}]}]}}).json()
        self.measure("presentRequest", lambda: self.agent.call({"cmd": "presentRequest", "requestUrl": session["authorization_request"]}))
        if self.mediated:
            self.measure("ping_mediator", lambda: self.agent.call({"cmd": "ping_mediator"}))
