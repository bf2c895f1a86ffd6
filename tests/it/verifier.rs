//! Verifier role: a real wallet (Animo @openid4vc/openid4vp, presenting credentials our issuer gave
//! the Animo OID4VCI holder) completes sessions; every policy has a negative case.

use std::io::{Read, Write};

use serde_json::{json, Value};

use crate::common::{client, expect_problem, Server, ADMIN_TOKEN};
use crate::holder::create_offer;
use crate::interop::node;

fn identity() -> Value {
    json!({"given_name": "Erika", "family_name": "Mustermann", "birthdate": "1984-01-26", "email": "erika@example.org"})
}

/// Issues `config` to a fresh Animo holder; returns the credential file (kept alive by the TempDir).
async fn obtain(s: &Server, config: &str) -> (tempfile::TempDir, String, Value) {
    let offer = create_offer(
        s,
        "default",
        json!({"credential_configuration_ids": [config], "claims": identity()}),
    )
    .await;
    let out = node(
        "oid4vci-holder.mjs",
        &["--offer", offer["offer_uri"].as_str().unwrap()],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cred.json");
    std::fs::write(&path, out.to_string()).unwrap();
    (dir, path.to_str().unwrap().to_string(), out)
}

async fn session(s: &Server, verifier: &str, body: Value) -> Value {
    let r = s
        .admin()
        .post_resp(&format!("/api/verifiers/{verifier}/sessions"), &body)
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

async fn result(s: &Server, verifier: &str, id: &str) -> Value {
    s.admin()
        .get(&format!("/api/verifiers/{verifier}/sessions/{id}"))
        .await
}

fn present(sess: &Value, cred: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "--request",
        sess["authorization_request"].as_str().unwrap(),
        "--credential",
        cred,
    ];
    args.extend_from_slice(extra);
    node("oid4vp-wallet.mjs", &args)
}

fn sd_query() -> Value {
    json!({"dcql_query": {"credentials": [{"id": "pid", "format": "dc+sd-jwt", "meta": {}, "claims": [{"path": ["given_name"]}, {"path": ["email"]}]}]}})
}

fn policy<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()
}

#[tokio::test]
async fn sd_jwt_with_selective_disclosure_and_replay_rejected() {
    let s = Server::start().await;
    let (_d, cred, _) = obtain(&s, "IdentityCredential_dc_sd_jwt").await;
    let sess = session(&s, "default", sd_query()).await;
    assert!(sess["authorization_request"]
        .as_str()
        .unwrap()
        .starts_with("openid4vp://?client_id=decentralized_identifier%3Adid%3Akey%3A"));
    assert!(sess["request_uri"]
        .as_str()
        .unwrap()
        .contains("/verifiers/default/requests/"));
    let out = present(&sess, &cred, &["--replay"]);
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["signed"], true);
    assert_eq!(
        out["replay"]["status"], 400,
        "a replayed vp_token is rejected: {out}"
    );
    let r = result(&s, "default", sess["id"].as_str().unwrap()).await;
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(r["verified"], true);
    let claims = &r["credentials"][0]["claims"];
    assert_eq!(claims["given_name"], "Erika");
    assert_eq!(claims["email"], "erika@example.org");
    assert!(
        claims.get("family_name").is_none(),
        "only requested claims disclosed: {claims}"
    );
    assert!(claims.get("birthdate").is_none());
    assert_eq!(r["policies"].as_array().unwrap().len(), 8);
    s.stop();
}

#[tokio::test]
async fn jwt_vc_json_with_encrypted_response_and_presentation_definition() {
    let s = Server::start().await;
    let (_d, cred, _) = obtain(&s, "IdentityCredential_jwt_vc_json").await;
    let sess = session(&s, "default", json!({
        "dcql_query": {"credentials": [{"id": "idc", "format": "jwt_vc_json", "meta": {"type_values": [["VerifiableCredential", "IdentityCredential"]]}, "claims": [{"path": ["credentialSubject", "email"]}]}]},
        "response_mode": "direct_post.jwt"
    })).await;
    let out = present(&sess, &cred, &[]);
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["response_mode"], "direct_post.jwt");
    let r = result(&s, "default", sess["id"].as_str().unwrap()).await;
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["credentials"][0]["format"], "jwt_vc_json");

    // presentation_definition (pre-1.0 wallets) with an SD-JWT
    let (_d2, cred2, _) = obtain(&s, "IdentityCredential_dc_sd_jwt").await;
    let sess = session(&s, "default", json!({"presentation_definition": {"id": "pd", "input_descriptors": [{"id": "in", "constraints": {"fields": [{"path": ["$.family_name"]}]}}]}})).await;
    let out = present(&sess, &cred2, &["--disclose", "family_name"]);
    assert_eq!(out["status"], 200, "{out}");
    let r = result(&s, "default", sess["id"].as_str().unwrap()).await;
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["credentials"][0]["claims"]["family_name"], "Mustermann");
    s.stop();
}

#[tokio::test]
async fn every_policy_has_a_failing_case() {
    let s = Server::start().await;
    let (_d, cred, held) = obtain(&s, "IdentityCredential_dc_sd_jwt").await;

    for (tamper, failing) in [
        ("nonce", "nonce_audience"),
        ("aud", "nonce_audience"),
        ("signature", "holder_binding"),
        ("disclosure", "disclosure_integrity"),
    ] {
        let sess = session(&s, "default", sd_query()).await;
        let out = present(&sess, &cred, &["--tamper", tamper]);
        assert_eq!(out["status"], 400, "{tamper}: {out}");
        let r = result(&s, "default", sess["id"].as_str().unwrap()).await;
        assert_eq!(
            r["state"], "pending",
            "a bad response leaves the session usable for the real wallet"
        );
        assert_eq!(policy(&r, failing)["passed"], false, "{tamper}: {r}");
        // ... and the real wallet still succeeds afterwards
        let out = present(&sess, &cred, &[]);
        assert_eq!(out["status"], 200, "{tamper}: honest retry {out}");
        assert_eq!(
            result(&s, "default", sess["id"].as_str().unwrap()).await["verified"],
            true
        );
    }

    // query_match: a requested claim is withheld
    let sess = session(&s, "default", sd_query()).await;
    let out = present(&sess, &cred, &["--disclose", "given_name"]);
    assert_eq!(out["status"], 400);
    let r = result(&s, "default", sess["id"].as_str().unwrap()).await;
    assert_eq!(policy(&r, "query_match")["passed"], false, "{r}");

    // issuer_allowlist
    let r = s.admin().post_resp("/api/verifiers", &json!({"id": "picky", "signing_key_type": "P-256", "trusted_issuers": ["did:key:zSomeoneElse"]})).await;
    assert_eq!(r.status(), 201);
    let sess = session(&s, "picky", sd_query()).await;
    present(&sess, &cred, &[]);
    let r = result(&s, "picky", sess["id"].as_str().unwrap()).await;
    assert_eq!(policy(&r, "issuer_allowlist")["passed"], false, "{r}");

    // status: revoke → the status policy fails
    let creds: Vec<Value> = s.admin().get_as("/api/issuers/default/credentials").await;
    assert_eq!(creds.len(), 1);
    let _ = held;
    s.admin()
        .post_resp(
            &format!(
                "/api/issuers/default/credentials/{}/revoke",
                creds[0]["id"].as_str().unwrap()
            ),
            &serde_json::json!({}),
        )
        .await;
    let sess = session(&s, "default", sd_query()).await;
    let out = present(&sess, &cred, &[]);
    assert_eq!(out["status"], 400);
    let r = result(&s, "default", sess["id"].as_str().unwrap()).await;
    let st = policy(&r, "status");
    assert_eq!(st["passed"], false);
    assert!(st["reason"].as_str().unwrap().contains("revoked"), "{st}");

    // three bad responses end the session as failed
    let sess = session(&s, "default", sd_query()).await;
    for _ in 0..3 {
        present(&sess, &cred, &["--tamper", "nonce"]);
    }
    let r = result(&s, "default", sess["id"].as_str().unwrap()).await;
    assert_eq!(r["state"], "failed", "{r}");
    assert_eq!(r["verified"], false);
    assert_eq!(r["failed_attempts"].as_array().unwrap().len(), 2);
    s.stop();
}

#[tokio::test]
async fn sse_events_and_signed_webhook() {
    let s = Server::start().await;
    let (_d, cred, _) = obtain(&s, "IdentityCredential_dc_sd_jwt").await;
    // a webhook receiver
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let receiver = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = sock.read(&mut chunk).unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(idx) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= idx + 4 + len {
                    sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .unwrap();
                    return text;
                }
            }
        }
    });
    let sess = session(&s, "default", json!({"dcql_query": sd_query()["dcql_query"], "webhook_url": hook, "success_redirect": "https://rp.example/done"})).await;
    let id = sess["id"].as_str().unwrap().to_string();
    let events = s
        .admin()
        .get_resp(&format!("/api/verifiers/default/sessions/{id}/events"))
        .await;
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    // A rejected response changes the view once (a failed attempt): one frame for it, not one
    // per re-read while the session stays pending.
    let bad = present(&sess, &cred, &["--tamper", "nonce"]);
    assert_eq!(bad["status"], 400, "{bad}");
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let out = present(&sess, &cred, &[]);
    // the redirect carries a response_code the RP finds in the result (OpenID4VP 1.0 §13.3):
    // only the browser the wallet sends back has it
    let to = out["body"]["redirect_uri"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let code = to
        .strip_prefix("https://rp.example/done?response_code=")
        .unwrap_or_else(|| panic!("{out}"));
    assert!(code.len() >= 32, "{to}");
    let result: Value = s
        .admin()
        .get(&format!("/api/verifiers/default/sessions/{id}"))
        .await;
    assert_eq!(result["response_code"], code, "{result}");
    let body = tokio::time::timeout(std::time::Duration::from_secs(15), events.text())
        .await
        .expect("SSE stream ends when the session finishes")
        .unwrap();
    let frames: Vec<&str> = body.split("\n\n").filter(|f| !f.is_empty()).collect();
    assert_eq!(
        frames.len(),
        3,
        "pending, the failed attempt, completed: {body}"
    );
    assert!(frames[0].contains("\"state\":\"pending\""));
    assert!(frames[1].contains("failed_attempts\":[\""), "{body}");
    assert!(frames.last().unwrap().contains("\"state\":\"completed\""));

    let request = receiver.join().unwrap();
    let body = &request[request.find("\r\n\r\n").unwrap() + 4..];
    let header_value = |name: &str| {
        request
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix(&format!("{name}: "))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no {name}"))
    };
    use hmac::Mac;
    // `sha256=<hex HMAC of the body>` under the key `GET /api/system/webhook-secret` gave
    let hmac_hex = |secret: &Value| {
        let hex = secret["secret"].as_str().unwrap();
        let key: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(body.as_bytes());
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256={hex}")
    };
    let secret: Value = s.admin().get("/api/system/webhook-secret").await;
    assert_eq!(secret["header"], "X-Idstack-Signature");
    let sig = header_value("x-idstack-signature");
    assert_eq!(sig.trim(), hmac_hex(&secret));
    // and under the tenant's own key, which another tenant's receiver does not have
    let tenant_sig = header_value("x-idstack-tenant-signature");
    let own: Value = s.admin().get("/api/verifiers/default/webhook-secret").await;
    assert_eq!(own["header"], "X-Idstack-Tenant-Signature");
    assert_eq!(tenant_sig.trim(), hmac_hex(&own));
    assert_ne!(tenant_sig.trim(), sig.trim());
    let unknown = s
        .admin()
        .get_resp("/api/verifiers/no-such-verifier/webhook-secret")
        .await;
    assert_eq!(unknown.status(), 404);
    let event: Value = serde_json::from_str(body).unwrap();
    assert_eq!(event["session"]["verified"], true);
    // what a receiver refuses replays by, inside what the signature covers
    assert!(
        event["delivery_id"].as_str().unwrap().len() >= 16,
        "{event}"
    );
    assert!(event["sent_at"].as_i64().unwrap() >= result["created_at"].as_i64().unwrap());
    // A stream open when the node stops ends at once (within its 1 s re-read), not at the end
    // of the drain (server.shutdown_timeout_seconds, 10 s); the process still exits 0.
    let sess = session(&s, "default", sd_query()).await;
    let id = sess["id"].as_str().unwrap().to_string();
    let events = s
        .admin()
        .get_resp(&format!("/api/verifiers/default/sessions/{id}/events"))
        .await;
    assert_eq!(events.status(), 200);
    let stopping = tokio::task::spawn_blocking(move || s.stop());
    let body = tokio::time::timeout(std::time::Duration::from_secs(5), events.text())
        .await
        .expect("the event stream outlived the node's stop")
        .unwrap_or_default();
    assert!(body.contains("\"state\":\"pending\""), "{body}");
    stopping.await.unwrap();
}

#[tokio::test]
async fn sessions_bad_input_and_unknown_or_finished_sessions() {
    let s = Server::start().await;
    let c = client();
    let post = |body: Value| {
        c.post(s.url("/api/verifiers/default/sessions"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    expect_problem(post(json!({})).await.unwrap(), 422, "validation_failed").await;
    expect_problem(
        post(json!({"dcql_query": {"credentials": []}}))
            .await
            .unwrap(),
        422,
        "validation_failed",
    )
    .await;
    // OID4VP 1.0 §6.1: `meta` is required; its members are checked for shape.
    for q in [
        json!({"id": "a", "format": "dc+sd-jwt"}),
        json!({"id": "a", "format": "dc+sd-jwt", "meta": {"vct_values": []}}),
        json!({"id": "a", "format": "jwt_vc_json", "meta": {"type_values": ["VerifiableCredential"]}}),
        json!({"id": "a", "format": "dc+sd-jwt", "meta": {}, "require_cryptographic_holder_binding": "no"}),
    ] {
        expect_problem(
            post(json!({"dcql_query": {"credentials": [q]}}))
                .await
                .unwrap(),
            422,
            "validation_failed",
        )
        .await;
    }
    expect_problem(
        post(json!({"dcql_query": {"credentials": [{"id": "a", "format": "mso_mdoc"}]}}))
            .await
            .unwrap(),
        422,
        "validation_failed",
    )
    .await;
    expect_problem(
        post(json!({"dcql_query": sd_query()["dcql_query"], "policies": ["made_up"]}))
            .await
            .unwrap(),
        422,
        "validation_failed",
    )
    .await;
    expect_problem(
        post(json!({"dcql_query": sd_query()["dcql_query"], "response_mode": "fragment"}))
            .await
            .unwrap(),
        400,
        "invalid_json",
    )
    .await;
    expect_problem(
        s.admin()
            .post_resp("/api/verifiers/nope/sessions", &sd_query())
            .await,
        404,
        "not_found",
    )
    .await;
    expect_problem(
        s.admin()
            .get_resp("/api/verifiers/default/sessions/nope")
            .await,
        404,
        "not_found",
    )
    .await;
    expect_problem(
        s.anon().get_resp("/verifiers/default/requests/nope").await,
        404,
        "not_found",
    )
    .await;

    let r = c
        .post(s.url("/verifiers/default/responses/nope"))
        .form(&[("vp_token", "{}"), ("state", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let sess = post(sd_query())
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let id = sess["id"].as_str().unwrap();
    let resp_url = s.url(&format!("/verifiers/default/responses/{id}"));
    // wrong state, garbage token, huge body: rejected without changing the session
    let r = c
        .post(&resp_url)
        .form(&[("vp_token", "{}"), ("state", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    let r = c
        .post(&resp_url)
        .body("%%%")
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(&resp_url)
        .body(vec![b'a'; 2 * 1024 * 1024])
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert!(r.status() == 413 || r.status() == 400, "{}", r.status());
    assert_eq!(result(&s, "default", id).await["state"], "pending");
    // the wallet declines: a final answer
    let req_jwt = s
        .anon()
        .text(&format!("/verifiers/default/requests/{id}"))
        .await;
    let payload: Value = serde_json::from_slice(
        &idstack::crypto::b64url_decode(req_jwt.split('.').nth(1).unwrap()).unwrap(),
    )
    .unwrap();
    let r = c
        .post(&resp_url)
        .form(&[
            ("error", "access_denied"),
            ("state", payload["state"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = result(&s, "default", id).await;
    assert_eq!(v["state"], "failed");
    assert!(v["error"].as_str().unwrap().starts_with("access_denied"));
    // a finished session's request object is gone
    expect_problem(
        s.anon()
            .get_resp(&format!("/verifiers/default/requests/{id}"))
            .await,
        410,
        "gone",
    )
    .await;
    s.stop();
}
