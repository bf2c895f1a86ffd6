//! Denial-of-service attacks against the real binary (issue #18 items 1, 4 metrics, 8): a JSON-LD
//! blank-node bomb, metrics label flooding with random HTTP methods, the console's security
//! headers and the `/metrics` token.

use serde_json::{json, Value};

use crate::common::{client, expect_problem, Server, ADMIN_TOKEN};

/// utime + stime of a process, in clock ticks (/proc/<pid>/stat fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // the command name (field 2) is in parentheses and may hold spaces: count after it
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn ticks_per_second() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100)
}

/// A 2 KB credential whose subject is `n` blank nodes all linked to each other: URDNA2015 has to
/// permute them (8 nodes cost ssi 6.6 s of CPU, 9 about 90 s). Its proof is well-formed, with a
/// signature that never gets looked at.
fn blank_node_bomb(n: usize) -> Value {
    use idstack::crypto::{did, KeyType, SigningKey};
    let key = SigningKey::generate(KeyType::Ed25519);
    let did = did::did_key(&key.verifying_key());
    let subjects: Vec<Value> = (0..n)
        .map(|i| {
            let knows: Vec<Value> = (0..n)
                .filter(|j| *j != i)
                .map(|j| json!({"id": format!("_:n{j}")}))
                .collect();
            json!({"id": format!("_:n{i}"), "knows": knows})
        })
        .collect();
    json!({
        "@context": ["https://www.w3.org/ns/credentials/v2", "https://w3id.org/idstack/credentials/v1"],
        "type": ["VerifiableCredential"],
        "issuer": did,
        "validFrom": "2026-01-01T00:00:00Z",
        "credentialSubject": subjects,
        "proof": {
            "type": "DataIntegrityProof",
            "cryptosuite": "eddsa-rdfc-2022",
            "created": "2026-01-01T00:00:00Z",
            "verificationMethod": did::verification_method(&did),
            "proofPurpose": "assertionMethod",
            "proofValue": "z3FXQjecWufY46yg5abdVZsXqLhxhueuSoZgNSARiKBk9czhSePTFehP8c3PGfb6a22gkfUKKT4ZxjUacTpzQfYB"
        }
    })
}

#[tokio::test]
async fn jsonld_blank_node_bomb_is_refused_with_bounded_cpu() {
    let s = Server::start().await;
    let pid = s.child.as_ref().unwrap().id();
    let before = cpu_ticks(pid);
    let mut answers = Vec::new();
    for n in [8, 9, 9] {
        let bomb = blank_node_bomb(n);
        answers.push(
            s.anon()
                .post_resp(
                    "/vc-api/credentials/verify",
                    &json!({"verifiableCredential": bomb}),
                )
                .await,
        );
    }
    // Signing canonicalizes too: an admin's (or a tenant's) credential is held to the same bound.
    // (the VC-API wants a URL as the subject's id: the linked blank nodes hang below it)
    let mut unsigned = blank_node_bomb(9);
    unsigned.as_object_mut().unwrap().remove("proof");
    unsigned["issuer"] = json!(s.default_issuer_did().await);
    let linked = unsigned["credentialSubject"].take();
    unsigned["credentialSubject"] = json!({"id": "did:example:holder", "knows": linked});
    answers.push(
        s.admin()
            .post_resp(
                "/vc-api/credentials/issue",
                &json!({"credential": unsigned}),
            )
            .await,
    );
    let spent = cpu_ticks(pid) - before;
    // Unbounded, these four cost ssi more than 15 minutes of CPU (a release build).
    assert!(
        spent < 25 * ticks_per_second(),
        "the server spent {spent} ticks on four refused bombs"
    );
    for r in answers {
        let body = expect_problem(r, 422, "jsonld_too_complex").await;
        assert!(
            body["detail"].as_str().unwrap().contains("jsonld."),
            "{body}"
        );
    }
    // An ordinary Data Integrity credential still verifies.
    let vc = s.admin().post("/vc-api/credentials/issue", &json!({"credential": {
            "@context": ["https://www.w3.org/ns/credentials/v2", "https://w3id.org/idstack/credentials/v1"],
            "issuer": s.default_issuer_did().await,
            "type": ["VerifiableCredential", "IdentityCredential"],
            "credentialSubject": {"id": "did:example:holder", "given_name": "Erika"}
        }})).await["verifiableCredential"]
        .clone();
    let v: Value = s
        .anon()
        .post(
            "/vc-api/credentials/verify",
            &json!({"verifiableCredential": vc}),
        )
        .await;
    assert_eq!(v["verified"], true, "{v}");
    s.stop();
}

async fn metrics_text(s: &Server) -> String {
    let r = s.anon().get_resp("/metrics").await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

async fn random_methods(c: &reqwest::Client, s: &Server, round: &str, n: usize) {
    for i in 0..n {
        let m = reqwest::Method::from_bytes(format!("X{round}{i}Q").as_bytes()).unwrap();
        let path = ["/", "/health/live", "/nope", "/vc-api/credentials/verify"][i % 4];
        let r = c.request(m, s.url(path)).send().await.unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
    }
}

#[tokio::test]
async fn random_http_methods_do_not_grow_metrics_and_console_sends_security_headers() {
    let s = Server::start().await;
    let c = client();
    // every series these requests can create exists after a first round
    random_methods(&c, &s, "a", 40).await;
    metrics_text(&s).await;
    let before = metrics_text(&s).await;
    random_methods(&c, &s, "b", 400).await;
    let after = metrics_text(&s).await;
    assert!(
        after.len() < before.len() + 1_000,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    let allowed = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other",
    ];
    for line in after.lines().filter(|l| l.contains("method=\"")) {
        let m = line
            .split("method=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert!(allowed.contains(&m), "method label {m}: {line}");
    }
    assert!(after.contains("method=\"other\""));

    // console headers (item 8)
    for path in ["/", "/console/console.js", "/console/qr.svg"] {
        let r = if path.ends_with(".svg") {
            let c = reqwest::Client::new();
            c.post(s.url(path))
                .body("openid-credential-offer://?x")
                .send()
                .await
                .unwrap()
        } else {
            s.anon().get_resp(path).await
        };
        assert_eq!(r.status(), 200, "{path}");
        let h = |k: &str| {
            r.headers()
                .get(k)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let csp = h("content-security-policy");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(h("x-frame-options"), "DENY", "{path}");
        assert_eq!(h("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(h("referrer-policy"), "no-referrer", "{path}");
    }
    s.stop();
}

#[tokio::test]
async fn metrics_token_is_required_when_configured() {
    let token = "metrics-token-0123456789";
    let s = Server::builder()
        .env("IDSTACK__METRICS__TOKEN", token)
        .start()
        .await;
    expect_problem(s.anon().get_resp("/metrics").await, 401, "unauthorized").await;
    for wrong in ["metrics-token-0123456780", ADMIN_TOKEN] {
        expect_problem(
            s.bearer(wrong).get_resp("/metrics").await,
            401,
            "unauthorized",
        )
        .await;
    }
    let r = s.bearer(token).get_resp("/metrics").await;
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("idstack_http_requests_total"));
    // health stays open for probes
    assert_eq!(s.anon().get_resp("/health/ready").await.status(), 200);
    s.stop();
}
