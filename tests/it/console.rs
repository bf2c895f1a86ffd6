//! The console's guided demo in a real browser (Debian chromium via playwright-core): offer → QR →
//! the console's cloud wallet accepts → verification request → present → verified, disclosed claims.

use std::path::Path;
use std::process::Command;

use crate::common::{Server, ADMIN_TOKEN};

#[tokio::test]
async fn guided_demo_in_headless_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists()
            && Path::new("/usr/bin/chromium").exists(),
        "browser test tools missing: run tests/browser/install.sh (scripts/test.sh does)"
    );
    let s = Server::start().await;
    let shot = s.dir.path().join("console-demo.png");
    let out = Command::new("node")
        .current_dir(&dir)
        .args([
            "demo.mjs",
            "--url",
            &s.base,
            "--token",
            ADMIN_TOKEN,
            "--screenshot",
            shot.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["ok"], true, "{report}");
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "screenshot written"
    );
    // keep a copy for humans looking at CI artefacts
    let _ = std::fs::copy(&shot, dir.join("console-demo.png"));
    s.stop();
}
