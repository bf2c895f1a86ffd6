//! The foundation: health, metrics, OpenAPI, Swagger, console, auth, errors, CLI, shutdown.

use crate::common::{client, expect_problem, run_cli, Server, ADMIN_TOKEN};

#[tokio::test]
async fn health_metrics_docs_and_console() {
    let s = Server::start().await;
    let live: serde_json::Value = s.anon().get("/health/live").await;
    assert_eq!(live["status"], "live");
    let r = s.anon().get_resp("/health/ready").await;
    assert_eq!(r.status(), 200);
    let ready: serde_json::Value = r.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["failing"].as_array().unwrap().len(), 0);
    assert_eq!(ready["roles"].as_array().unwrap().len(), 4, "{ready}");

    let metrics = s.anon().text("/metrics").await;
    assert!(
        metrics.contains(
            "idstack_http_requests_total{method=\"GET\",route=\"/health/ready\",status=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("idstack_http_request_duration_seconds_bucket"));
    assert!(metrics.contains("idstack_store_size_bytes"));
    assert!(metrics.contains("process_resident_memory_bytes"));

    let doc: serde_json::Value = s.anon().get("/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(doc["info"]["title"], "idstack");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["components"]["securitySchemes"]["admin_token"].is_object());

    let docs = s.anon().get_resp("/docs/").await;
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
    let init = s.anon().text("/docs/swagger-initializer.js").await;
    assert!(init.contains("/openapi.json"), "{init}");

    let console = s.anon().get_resp("/").await;
    assert_eq!(console.status(), 200);
    assert!(console.text().await.unwrap().contains("idstack"));
    assert_eq!(s.anon().get_resp("/console/console.js").await.status(), 200);
    s.stop();
}

#[tokio::test]
async fn errors_are_problem_json_and_request_ids_flow() {
    let s = Server::start().await;
    let c = client();
    let r = s.anon().get_resp("/no/such/thing").await;
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(generated.len() >= 16);
    expect_problem(r, 404, "route_not_found").await;

    let r = c
        .get(s.url("/health/live"))
        .header("X-Request-Id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc-123");
    // an unacceptable id is replaced, not echoed
    let r = c
        .get(s.url("/health/live"))
        .header("X-Request-Id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "bad id with spaces");
    s.stop();
}

#[tokio::test]
async fn management_api_needs_the_admin_token() {
    let s = Server::start().await;
    let c = client();
    let r = s.anon().get_resp("/api/system").await;
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    expect_problem(r, 401, "unauthorized").await;
    let r = s
        .bearer("wrong-token-000000000000")
        .get_resp("/api/system")
        .await;
    expect_problem(r, 401, "unauthorized").await;
    let r = c
        .get(s.url("/api/system"))
        .header("Authorization", ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    expect_problem(r, 401, "unauthorized").await;
    let info: serde_json::Value = s.admin().get("/api/system").await;
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["public_url"], s.base);
    assert_eq!(info["mode"], "sandbox");
    s.stop();
}

#[tokio::test]
async fn production_mode_without_tokens_disables_admin_and_needs_a_master_key() {
    // no master key: refuses to start
    let dir = tempfile::tempdir().unwrap();
    let (status, _, err) = run_cli(
        dir.path(),
        &["serve", "--bind", "127.0.0.1:0", "--data-dir", "d"],
        &[("IDSTACK__SERVER__MODE", "production")],
    );
    assert!(!status.success());
    assert!(err.contains("master_key"), "{err}");

    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let s = Server::builder()
        .no_admin_token()
        .env("IDSTACK__SERVER__MODE", "production")
        .env("IDSTACK__STORE__MASTER_KEY", key)
        .start()
        .await;
    let r = s
        .bearer("anything-at-all-00000")
        .get_resp("/api/system")
        .await;
    expect_problem(r, 401, "admin_disabled").await;
    assert!(!s.log().contains(key), "master key leaked into the log");
    let dir = s.stop();
    // a different master key cannot open the same data: refuse to start
    let (status, _, err) = run_cli(
        dir.path(),
        &["serve", "--bind", "127.0.0.1:0", "--data-dir", "data"],
        &[
            ("IDSTACK__SERVER__MODE", "production"),
            ("IDSTACK__STORE__MASTER_KEY", &"ab".repeat(32)),
        ],
    );
    assert!(!status.success());
    assert!(err.contains("does not open"), "{err}");
}

#[tokio::test]
async fn sandbox_generates_admin_token_once_and_master_key_0600() {
    let s = Server::builder().no_admin_token().start().await;
    let log = s.log();
    let token = log
        .lines()
        .skip_while(|l| !l.contains("sandbox admin token"))
        .nth(2)
        .map(str::trim)
        .unwrap()
        .to_string();
    assert!(token.len() >= 16, "{log}");
    let r = s.bearer(&token).get_resp("/api/system").await;
    assert_eq!(r.status(), 200);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.data_dir().join("master.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir = s.stop();
    // restart on the same data: same token works, and it is not printed again
    let s = Server::builder().no_admin_token().dir(dir).start().await;
    let r = s.bearer(&token).get_resp("/api/system").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.log().matches(&token).count(),
        1,
        "token printed more than once"
    );
    let dir = s.stop();
    let (status, out, _) = run_cli(dir.path(), &["admin-token", "--data-dir", "data"], &[]);
    assert!(status.success());
    assert_eq!(out.trim(), token);
}

#[tokio::test]
async fn role_selection_by_flag_and_env() {
    let s = Server::builder()
        .arg("--role")
        .arg("issuer,verifier")
        .start()
        .await;
    let ready: serde_json::Value = s.anon().get("/health/ready").await;
    assert_eq!(ready["roles"], serde_json::json!(["issuer", "verifier"]));
    s.stop();
    let s = Server::builder()
        .env("IDSTACK__SERVER__ROLES", "mediator")
        .start()
        .await;
    let ready: serde_json::Value = s.anon().get("/health/ready").await;
    assert_eq!(ready["roles"], serde_json::json!(["mediator"]));
    s.stop();

    let dir = tempfile::tempdir().unwrap();
    let (status, _, err) = run_cli(
        dir.path(),
        &[
            "serve",
            "--role",
            "issuer,teleporter",
            "--bind",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert!(!status.success());
    assert!(
        err.contains("teleporter") && err.contains("issuer, verifier, wallet, mediator"),
        "{err}"
    );
}

#[tokio::test]
async fn cli_version_config_print_and_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let (status, out, _) = run_cli(dir.path(), &["--version"], &[]);
    assert!(status.success());
    assert!(
        out.contains(env!("CARGO_PKG_VERSION"))
            && out.contains("features:")
            && out.contains("issuer"),
        "{out}"
    );

    let (status, out, err) = run_cli(
        dir.path(),
        &["config", "print", "--bind", "127.0.0.1:9999"],
        &[
            ("IDSTACK__ADMIN__TOKENS", "very-secret-admin-token-1"),
            ("IDSTACK__LOG__FORMAT", "json"),
        ],
    );
    assert!(status.success(), "{err}");
    assert!(out.contains("bind = \"127.0.0.1:9999\""), "{out}");
    assert!(out.contains("format = \"json\""), "{out}");
    assert!(!out.contains("very-secret"), "{out}");
    assert!(out.contains("<redacted>"));

    std::fs::write(dir.path().join("config.toml"), "[server]\nbnd = \"x\"\n").unwrap();
    let (status, _, err) = run_cli(dir.path(), &["serve"], &[]);
    assert!(!status.success());
    assert!(err.contains("bnd"), "{err}");
}

#[tokio::test]
async fn healthcheck_command_and_store_export_import() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (status, _, _) = run_cli(dir.path(), &["healthcheck", "--url", &s.base], &[]);
    assert!(status.success());
    let (status, _, _) = run_cli(
        dir.path(),
        &["healthcheck", "--url", &s.base, "--probe", "live"],
        &[],
    );
    assert!(status.success());
    let data = s.stop();

    // the port is closed now
    let (status, _, _) = run_cli(
        dir.path(),
        &["healthcheck", "--url", "http://127.0.0.1:9"],
        &[],
    );
    assert!(!status.success());

    // `idstack store <verb> --data-dir data <flag> <file>` in `dir`
    let store_cmd = |dir: &std::path::Path, verb: &str, flag: &str, file: &str| {
        run_cli(dir, &["store", verb, "--data-dir", "data", flag, file], &[])
    };
    let dump = dir.path().join("dump.jsonl");
    use std::os::unix::fs::PermissionsExt;
    // onto a file that was there, readable by others and held open by a reader: the export is a
    // new private file put in its place, and the reader keeps what it opened (secrets review: it
    // was the same inode, cut and rewritten, so the reader read the export)
    std::fs::write(&dump, "old\n").unwrap();
    std::fs::set_permissions(&dump, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut before = std::fs::File::open(&dump).unwrap();
    let (status, _, err) = store_cmd(data.path(), "export", "--out", dump.to_str().unwrap());
    assert!(status.success(), "{err}");
    let lines = std::fs::read_to_string(&dump).unwrap();
    assert!(lines.lines().count() >= 1);
    let mut held = String::new();
    std::io::Read::read_to_string(&mut before, &mut held).unwrap();
    assert_eq!(held, "old\n");
    assert_eq!(
        std::fs::metadata(&dump).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // never through a symbolic link (one planted in a shared directory would take the export)
    let link = dir.path().join("link.jsonl");
    let target = dir.path().join("elsewhere.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (status, _, err) = store_cmd(data.path(), "export", "--out", link.to_str().unwrap());
    assert!(!status.success());
    assert!(err.contains("symbolic link"), "{err}");
    assert!(!target.exists());
    assert!(lines.contains("seal_canary"));
    // into a new data dir without the exporting store's master key: refused, nothing written
    // (it overwrote the canary, and that node never started again)
    let keyless = tempfile::tempdir().unwrap();
    let (status, _, err) = store_cmd(keyless.path(), "import", "--in", dump.to_str().unwrap());
    assert!(!status.success());
    assert!(err.contains("another master key"), "{err}");
    let (status, out, err) = run_cli(
        keyless.path(),
        &["store", "export", "--data-dir", "data"],
        &[],
    );
    assert!(status.success(), "{err}");
    assert_eq!(out.lines().count(), 1, "its own canary only: {out}");
    // import into a new data dir that shares the master key
    let fresh = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(fresh.path().join("data")).unwrap();
    std::fs::copy(
        data.path().join("data/master.key"),
        fresh.path().join("data/master.key"),
    )
    .unwrap();
    let (status, _, err) = store_cmd(fresh.path(), "import", "--in", dump.to_str().unwrap());
    assert!(status.success(), "{err}");
    let (status, again, _) = run_cli(
        fresh.path(),
        &["store", "export", "--data-dir", "data"],
        &[],
    );
    assert!(status.success());
    // every record back, but the target keeps its own seal canary (same key, its own nonce)
    let records = |dump: &str| {
        let mut v: Vec<String> = dump
            .lines()
            .filter(|l| !l.contains("seal_canary"))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    assert!(again.contains("seal_canary"));
    assert!(records(&lines) == records(&again), "the records differ");
}
