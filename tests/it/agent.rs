//! `idstack agent --stdio` speaks the Akrida agent.js protocol line by line.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::common::{bin, client, Server, ADMIN_TOKEN};
use crate::holder::create_offer;

#[tokio::test]
async fn akrida_protocol_line_by_line() {
    let s = Server::start().await;
    let offer = create_offer(&s, "default", json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"], "claims": {"given_name": "Erika", "email": "e@x.org"}, "tx_code": {"length": 4}})).await;
    let session: Value = client()
        .post(s.url("/api/verifiers/default/sessions"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"dcql_query": {"credentials": [{"id": "pid", "format": "dc+sd-jwt", "claims": [{"path": ["given_name"]}]}]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let inv: Value = client()
        .get(s.url("/api/mediator/invitation"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mediator_invitation = inv["invitation_url"].as_str().unwrap().to_string();
    let mut child = Command::new(bin())
        .args(["agent", "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
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
        (json!({"cmd": "receiveCredential"}), 1),
        (json!({"cmd": "shutdown"}), 0),
    ];
    // one command, one line: read each answer before sending the next
    for (cmd, expected) in commands {
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not one JSON line ({e}): {line:?}"));
        assert_eq!(v["error"], expected, "{cmd} → {v}");
        assert!(v.get("result").is_some());
    }
    assert!(child.wait().unwrap().success());
    let result: Value = client()
        .get(s.url(&format!(
            "/api/verifiers/default/sessions/{}",
            session["id"].as_str().unwrap()
        )))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(result["verified"], true, "{result}");
    // The agent was mediated: two connections (its own + receiveInvitation), one live socket gone.
    let st: Value = client()
        .get(s.url("/api/mediator/stats"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["connections"], 2, "{st}");
    assert_eq!(st["mediations_granted"], 1, "{st}");
    s.stop();
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
