//! `idstack agent --stdio` speaks the Akrida agent.js protocol line by line.

use std::process::Command;

use serde_json::{json, Value};

use crate::common::{bin, Server, ADMIN_TOKEN};
use crate::holder::create_offer;

#[tokio::test]
async fn akrida_protocol_line_by_line() {
    let s = Server::start().await;
    let offer = create_offer(&s, "default", json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"], "claims": {"given_name": "Erika", "email": "e@x.org"}, "tx_code": {"length": 4}})).await;
    let session: Value = s.admin().post("/api/verifiers/default/sessions", &json!({"dcql_query": {"credentials": [{"id": "pid", "format": "dc+sd-jwt", "meta": {}, "claims": [{"path": ["given_name"]}]}]}})).await;
    let mediator_invitation = crate::mediator::invitation(&s, "").await;
    let mut agent = Agent::spawn();
    let commands = vec![
        (json!({"cmd": "presentRequest", "requestUrl": "x"}), 1),
        (
            json!({"cmd": "start", "withMediation": false, "port": "5555"}),
            0,
        ),
        (
            json!({"cmd": "receiveOffer", "offerUrl": offer["offer_uri"], "txCode": offer["tx_code"]}),
            0,
        ),
        (
            json!({"cmd": "presentRequest", "requestUrl": session["authorization_request"]}),
            0,
        ),
        // not mediated yet
        (json!({"cmd": "ping_mediator"}), 1),
        (json!({"cmd": "no_such_command"}), 1),
        (
            json!({"cmd": "start", "withMediation": true, "mediatorUrl": mediator_invitation}),
            0,
        ),
        (json!({"cmd": "ping_mediator"}), 0),
        (json!({"cmd": "ping_mediator"}), 0),
        (
            json!({"cmd": "receiveInvitation", "invitationUrl": mediator_invitation}),
            0,
        ),
        (
            json!({"cmd": "receiveInvitation", "invitationUrl": "http://127.0.0.1:1/?oob=bm9wZQ"}),
            1,
        ),
        // no issuer has offered anything
        (json!({"cmd": "receiveCredential", "timeoutMs": 300}), 1),
        (json!({"cmd": "presentationExchange"}), 1),
        (json!({"cmd": "shutdown"}), 0),
    ];
    // one command, one line: read each answer before sending the next
    for (cmd, expected) in commands {
        let v = agent.ask(cmd.clone());
        assert_eq!(v["error"], expected, "{cmd} → {v}");
        assert!(v.get("result").is_some());
    }
    assert!(agent.0.child.wait().unwrap().success());
    let result: Value = s
        .admin()
        .get(&format!(
            "/api/verifiers/default/sessions/{}",
            session["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(result["verified"], true, "{result}");
    // The agent was mediated: two connections (its own + receiveInvitation), one live socket gone.
    let st: Value = s.admin().get("/api/mediator/stats").await;
    assert_eq!(st["connections"], 2, "{st}");
    assert_eq!(st["mediations_granted"], 1, "{st}");
    s.stop();
}

/// The agent started with mediation connects to a credo-ts 0.6.3 issuer (DID exchange through
/// idstack's mediator) and receives a JSON-LD credential over issue-credential 2.0, the Akrida
/// `receiveInvitation` + `receiveCredential` flow; credo sees the exchange through to `done`.
#[tokio::test]
async fn agent_receives_a_credential_from_credo_over_didcomm() {
    let s = Server::start().await;
    let mediator_invitation = crate::mediator::invitation(&s, "").await;
    let mut issuer = crate::mediator::Credo::spawn("issuer");
    issuer.ok(json!({"cmd": "start", "mediatorInvitationUrl": null, "pickup": "none", "transport": "http"}));
    let credo_invitation = issuer.ok(json!({"cmd": "createInvitation"}));
    let mut agent = Agent::spawn();
    agent.ok(json!({"cmd": "start", "withMediation": true, "mediatorUrl": mediator_invitation}));
    let c = agent.ok(
        json!({"cmd": "receiveInvitation", "invitationUrl": credo_invitation["invitation_url"]}),
    );
    assert!(
        c["result"]["connection"]
            .as_str()
            .unwrap()
            .starts_with("did:peer:"),
        "{c}"
    );
    // credo answers the `complete` before it processes it
    let mut conn = Value::Null;
    for _ in 0..100 {
        let info = issuer.ok(json!({"cmd": "info"}));
        if let Some(c) = info["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["state"] == "completed")
        {
            conn = c["id"].clone();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(conn.is_string(), "credo never completed the connection");
    // twice: the second offer arrives on the same connection, through the mediator again
    for name in ["Erika", "Max"] {
        let offer = issuer.ok(
            json!({"cmd": "offerCredential", "connectionId": conn, "claims": {"given_name": name}}),
        );
        let got = agent.ok(json!({"cmd": "receiveCredential", "timeoutMs": 20000}));
        assert_eq!(got["result"]["issuer"], offer["issuer_did"], "{got}");
        issuer.ok(json!({"cmd": "awaitCredential", "credentialExchangeId": offer["credential_exchange_id"]}));
    }
    // nothing more was offered
    let none = agent.ask(json!({"cmd": "receiveCredential", "timeoutMs": 300}));
    assert_eq!(none["error"], 1, "{none}");
    agent.ok(json!({"cmd": "shutdown"}));
    s.stop();
}

/// `idstack agent --stdio`, one command and one answer line at a time.
struct Agent(crate::common::LineChild);

impl Agent {
    fn spawn() -> Self {
        let mut cmd = Command::new(bin());
        cmd.args(["agent", "--stdio"]);
        Agent(crate::common::LineChild::spawn(cmd))
    }

    fn ask(&mut self, cmd: Value) -> Value {
        self.0.ask(&cmd)
    }

    fn ok(&mut self, cmd: Value) -> Value {
        let r = self.ask(cmd.clone());
        assert_eq!(r["error"], 0, "{cmd} -> {r}");
        r
    }
}

/// Locust drives agents the Akrida way for a few seconds with zero failures.
#[tokio::test]
async fn locust_drives_agents() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("run");
    let locustfile =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest/locustfile.py");
    let out = Command::new("python3")
        .args([
            "-m",
            "locust",
            "-f",
            locustfile.to_str().unwrap(),
            "--headless",
            "-u",
            "2",
            "-r",
            "2",
            "-t",
            "4s",
            "--exit-code-on-error",
            "1",
            "--csv",
            csv.to_str().unwrap(),
        ])
        .env("IDSTACK_TARGET", &s.base)
        .env("IDSTACK_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("IDSTACK_BIN", bin())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "locust failed (installed by scripts/test.sh from loadtest/requirements.txt):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = std::fs::read_to_string(dir.path().join("run_stats.csv")).unwrap();
    let row = stats
        .lines()
        .find(|l| l.contains("presentRequest"))
        .unwrap_or_else(|| panic!("{stats}"));
    let cols: Vec<&str> = row.split(',').collect();
    assert!(
        cols[2].parse::<u64>().unwrap() > 0,
        "no presentations: {row}"
    );
    assert_eq!(cols[3], "0", "failures: {row}");
    let row = stats
        .lines()
        .find(|l| l.contains("ping_mediator"))
        .unwrap_or_else(|| panic!("no mediator pings: {stats}"));
    let cols: Vec<&str> = row.split(',').collect();
    assert!(cols[2].parse::<u64>().unwrap() > 0, "{row}");
    assert_eq!(cols[3], "0", "failures: {row}");
    s.stop();
}
