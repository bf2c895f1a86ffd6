//! The console's guided demo in a real browser (Debian chromium via playwright-core): offer → QR →
//! the console's cloud wallet accepts → verification request → present → verified, disclosed claims;
//! then the same with the sandbox mDL (mso_mdoc).

use std::path::Path;
use std::process::Command;

use crate::common::{Server, ADMIN_TOKEN};

#[tokio::test]
async fn guided_demo_in_headless_chromium() {
    let s = Server::start().await;
    run_demo(&s, None, true, true);
    s.stop();
}

/// The same demo on a node in cluster mode (a one-node cluster): every record goes through the
/// replicated store, and the status panel lists the cluster's members.
#[cfg(feature = "cluster")]
#[tokio::test]
async fn guided_demo_on_a_cluster_node() {
    // free for UDP (gossip) and TCP (internal RPC, same number)
    let port = loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            break port;
        }
    };
    let s = Server::builder()
        .sled()
        .arg("--cluster")
        .env("IDSTACK__CLUSTER__NODE_ID", "console-n1")
        .env(
            "IDSTACK__CLUSTER__GOSSIP_ADDR",
            &format!("127.0.0.1:{port}"),
        )
        .env("IDSTACK__CLUSTER__SEEDS", &format!("127.0.0.1:{port}"))
        .env("IDSTACK__CLUSTER__SECRET", "console-test-secret-0123456789")
        .env("IDSTACK__CLUSTER__BOOTSTRAP_EXPECT", "1")
        .start()
        .await;
    run_demo(&s, Some("console-n1"), false, false);
    s.stop();
}

/// Runs tests/browser/demo.mjs against `s`: the SD-JWT demo, then (`mdoc`) the sandbox mDL in
/// the same cloud wallet.
fn run_demo(s: &Server, cluster_node: Option<&str>, keep_screenshot: bool, mdoc: bool) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists()
            && Path::new("/usr/bin/chromium").exists(),
        "browser test tools missing: run tests/browser/install.sh (scripts/test.sh does)"
    );
    let shot = s.dir.path().join("console-demo.png");
    let mut args = vec![
        "demo.mjs".to_string(),
        "--url".into(),
        s.base.clone(),
        "--token".into(),
        ADMIN_TOKEN.into(),
        "--screenshot".into(),
        shot.to_str().unwrap().into(),
    ];
    if let Some(n) = cluster_node {
        args.extend(["--cluster-node".to_string(), n.to_string()]);
    }
    if mdoc {
        args.push("--mdoc".into());
    }
    let out = Command::new("node")
        .current_dir(&dir)
        .args(&args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["ok"], true, "{report}");
    if mdoc {
        let ns = &report["mdoc"]["disclosed"]["org.iso.18013.5.1"];
        assert_eq!(ns["age_over_18"], true, "{report}");
    }
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "screenshot written"
    );
    if keep_screenshot {
        // keep a copy for humans looking at CI artefacts
        let _ = std::fs::copy(&shot, dir.join("console-demo.png"));
    }
}
