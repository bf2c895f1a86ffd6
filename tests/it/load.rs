//! The load harness runs every scenario briefly against a real idstack with zero errors and writes
//! well-formed JSON.

use std::process::Command;

use serde_json::Value;

use crate::common::{bin, Server, ADMIN_TOKEN};

#[tokio::test]
async fn every_scenario_runs_clean_and_reports_json() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    for scenario in [
        "health",
        "issue",
        "verify",
        "wallet",
        "mediator-connect",
        "mediator-ping",
        "mediator-message",
    ] {
        let out = dir.path().join(format!("{scenario}.json"));
        let status = Command::new(bin())
            .args([
                "load",
                "--target",
                &s.base,
                "--scenario",
                scenario,
                "--users",
                "2",
                "--duration",
                "2s",
                "--quiet",
                "--json",
                out.to_str().unwrap(),
            ])
            .env("IDSTACK_ADMIN_TOKEN", ADMIN_TOKEN)
            .status()
            .unwrap();
        assert!(status.success(), "{scenario}: load exited {status}");
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
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
    // an unreachable target: errors, non-zero exit
    let status = Command::new(bin())
        .args([
            "load",
            "--target",
            "http://127.0.0.1:9",
            "--scenario",
            "health",
            "--users",
            "1",
            "--duration",
            "1s",
            "--quiet",
        ])
        .status()
        .unwrap();
    assert!(!status.success());
    s.stop();
}
