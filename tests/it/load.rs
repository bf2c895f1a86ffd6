//! The load harness runs every scenario briefly against a real idstack with zero errors and writes
//! well-formed JSON.

use std::path::Path;
use std::process::{Command, ExitStatus};

use serde_json::Value;

use crate::common::{bin, Server, ADMIN_TOKEN};

/// `idstack load --quiet` against `target` with `args` after the scenario; the JSON report when
/// `out` is given.
fn load(target: &str, scenario: &str, args: &[&str], out: Option<&Path>) -> (ExitStatus, Value) {
    let mut cmd = Command::new(bin());
    cmd.args([
        "load",
        "--target",
        target,
        "--scenario",
        scenario,
        "--quiet",
    ])
    .args(args)
    .env("IDSTACK_ADMIN_TOKEN", ADMIN_TOKEN);
    if let Some(out) = out {
        cmd.arg("--json").arg(out);
    }
    let status = cmd.status().unwrap();
    let report = match out {
        Some(out) => serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap(),
        None => Value::Null,
    };
    (status, report)
}

#[tokio::test]
async fn every_scenario_runs_clean_and_reports_json() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    for scenario in [
        "health",
        "issue",
        "verify",
        "mdoc",
        "wallet",
        "wallet-login",
        "wallet-list",
        "mediator-connect",
        "mediator-ping",
        "mediator-message",
    ] {
        let out = dir.path().join(format!("{scenario}.json"));
        let (status, report) = load(
            &s.base,
            scenario,
            &["--users", "2", "--duration", "2s"],
            Some(&out),
        );
        assert!(status.success(), "{scenario}: load exited {status}");
        assert_eq!(report["scenario"], scenario);
        assert_eq!(report["failed"], 0, "{report}");
        assert!(report["flows"].as_u64().unwrap() > 0, "{report}");
        let ops = report["operations"].as_array().unwrap();
        assert!(
            ops.iter()
                .any(|o| o["operation"] == "full flow" && o["p99_ms"].as_f64().unwrap() > 0.0),
            "{report}"
        );
    }
    // --spawn-rate: users start one by one and all of them end together, after the ramp (4 users
    // at 4/s: 1 s) plus the duration (1 s); a lower bound only, sleeps cannot end early.
    let out = dir.path().join("ramp.json");
    let (status, report) = load(
        &s.base,
        "health",
        &["--users", "4", "--spawn-rate", "4", "--duration", "1s"],
        Some(&out),
    );
    assert!(status.success());
    assert_eq!(report["failed"], 0, "{report}");
    assert!(report["duration_s"].as_f64().unwrap() >= 2.0, "{report}");
    // an unreachable target: errors, non-zero exit
    let (status, _) = load(
        "http://127.0.0.1:9",
        "health",
        &["--users", "1", "--duration", "1s"],
        None,
    );
    assert!(!status.success());
    s.stop();
}
