//! W3C VC-API: issue as Data Integrity and JWT, verify credentials and presentations, tamper fails.

use idstack::crypto::{did, jws, KeyType, SigningKey};
use serde_json::{json, Value};

use crate::common::{client, expect_problem, Server, ADMIN_TOKEN};

fn credential(context: &str, issuer: &str) -> Value {
    json!({
        "@context": [context, "https://w3id.org/idstack/credentials/v1"],
        "issuer": issuer,
        "type": ["VerifiableCredential", "IdentityCredential"],
        "credentialSubject": {"id": "did:example:alice", "given_name": "Alice"}
    })
}

/// VC-API issue (`options.format`), answering 201: the `verifiableCredential`.
async fn issued(s: &Server, credential: Value, format: &str) -> Value {
    let r = s
        .admin()
        .post_resp(
            "/vc-api/credentials/issue",
            &json!({"credential": credential, "options": {"format": format}}),
        )
        .await;
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["verifiableCredential"].clone()
}

/// VC-API verify: 200 with the result when verified, else 400 problem+json carrying the same
/// `verified` / `checks` / `errors` members.
async fn verify(s: &Server, path: &str, body: Value) -> Value {
    let r = s.anon().post_resp(path, &body).await;
    let status = r.status().as_u16();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    match v["verified"].as_bool() {
        Some(true) => assert_eq!(status, 200, "{v}"),
        _ => {
            assert_eq!(status, 400, "{v}");
            assert_eq!(ct, "application/problem+json");
            assert_eq!(v["code"], "verification_failed", "{v}");
        }
    }
    v
}

#[tokio::test]
async fn issue_and_verify_ldp_and_jwt() {
    let s = Server::start().await;
    let issuer_did = s.default_issuer_did().await;
    for (format, context) in [
        ("ldp", "https://www.w3.org/ns/credentials/v2"),
        ("jwt", "https://www.w3.org/2018/credentials/v1"),
        ("jwt", "https://www.w3.org/ns/credentials/v2"),
    ] {
        let r = s.admin().post_resp("/vc-api/credentials/issue", &json!({"credential": credential(context, &issuer_did), "options": {"format": format}})).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let vc = r.json::<Value>().await.unwrap()["verifiableCredential"].clone();
        let v = verify(
            &s,
            "/vc-api/credentials/verify",
            json!({"verifiableCredential": vc}),
        )
        .await;
        assert_eq!(v["verified"], true, "{format} {context}: {v}");
        // tampered
        let bad = match &vc {
            Value::String(jwt) => {
                let parts: Vec<&str> = jwt.split('.').collect();
                json!(format!(
                    "{}.{}.{}",
                    parts[0],
                    idstack::crypto::b64url(b"{\"iss\":\"x\"}"),
                    parts[2]
                ))
            }
            other => {
                let mut o = other.clone();
                o["credentialSubject"]["given_name"] = json!("Mallory");
                o
            }
        };
        let v = verify(
            &s,
            "/vc-api/credentials/verify",
            json!({"verifiableCredential": bad}),
        )
        .await;
        assert_eq!(v["verified"], false, "{format}: tampered accepted: {v}");
        assert!(!v["errors"].as_array().unwrap().is_empty());
    }

    // a Data Integrity presentation of a Data Integrity credential
    let vc = issued(
        &s,
        credential("https://www.w3.org/ns/credentials/v2", &issuer_did),
        "ldp",
    )
    .await;
    let holder = SigningKey::generate(KeyType::Ed25519);
    let vm = did::verification_method(&did::did_key(&holder.verifying_key()));
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // the credential names the server's served context: resolve it offline here too
    idstack::crypto::di::register_context_origin(&s.base);
    let vp = idstack::crypto::di::issue_presentation(
        &holder,
        &vm,
        std::slice::from_ref(&vc),
        "chal-1",
        "example.org",
        now,
    )
    .unwrap();
    let v = verify(&s, "/vc-api/presentations/verify", json!({"verifiablePresentation": vp, "options": {"challenge": "chal-1", "domain": "example.org"}})).await;
    assert_eq!(v["verified"], true, "{v}");
    let v = verify(&s, "/vc-api/presentations/verify", json!({"verifiablePresentation": vp, "options": {"challenge": "other", "domain": "example.org"}})).await;
    assert_eq!(v["verified"], false);
    // a JWT VP
    let jwt_vc = s.admin().post("/vc-api/credentials/issue", &json!({"credential": credential("https://www.w3.org/2018/credentials/v1", &issuer_did), "options": {"format": "jwt"}})).await["verifiableCredential"].clone();
    let jvp = jws::sign(
        &holder,
        json!({"kid": vm}),
        &json!({"nonce": "n1", "aud": "rp", "vp": {"verifiableCredential": [jwt_vc]}}),
    );
    let v = verify(
        &s,
        "/vc-api/presentations/verify",
        json!({"verifiablePresentation": jvp, "options": {"challenge": "n1", "domain": "rp"}}),
    )
    .await;
    assert_eq!(v["verified"], true, "{v}");
    // ...but not with an unsigned credential, or an envelope that does not read, beside it: a
    // caller would take every credential of the presentation it sent as verified
    let unsigned = credential("https://www.w3.org/2018/credentials/v1", &issuer_did);
    let unreadable = json!({"@context": ["https://www.w3.org/ns/credentials/v2"],
        "type": "EnvelopedVerifiableCredential", "id": "data:application/vc+jwt;base64,eHg"});
    for extra in [unsigned, unreadable] {
        let jvp = jws::sign(
            &holder,
            json!({"kid": vm}),
            &json!({"nonce": "n1", "aud": "rp", "vp": {"verifiableCredential": [jwt_vc.clone(), extra]}}),
        );
        let v = verify(
            &s,
            "/vc-api/presentations/verify",
            json!({"verifiablePresentation": jvp, "options": {"challenge": "n1", "domain": "rp"}}),
        )
        .await;
        assert_eq!(v["verified"], false, "{v}");
    }

    // bad input and auth
    expect_problem(
        s.anon()
            .post_resp("/vc-api/credentials/issue", &json!({"credential": {}}))
            .await,
        401,
        "unauthorized",
    )
    .await;
    expect_problem(
        s.admin()
            .post_resp(
                "/vc-api/credentials/issue",
                &json!({"credential": {"type": "x"}}),
            )
            .await,
        400,
        "bad_request",
    )
    .await;
    expect_problem(s.admin().post_resp("/vc-api/credentials/issue", &json!({"credential": {"@context": ["https://www.w3.org/ns/credentials/v2", "https://unknown.example/ctx"], "type": ["VerifiableCredential"], "credentialSubject": {"x": 1}}})).await, 400, "bad_request").await;
    // VC Data Model shape errors are 400s, never 500s.
    for bad in [
        json!({"type": ["VerifiableCredential"], "credentialSubject": {"x": 1}}),
        json!({"@context": ["https://www.w3.org/ns/credentials/v2"], "credentialSubject": {"x": 1}}),
        json!({"@context": ["https://www.w3.org/ns/credentials/v2"], "type": ["VerifiableCredential"], "credentialSubject": {}}),
        json!({"@context": ["https://www.w3.org/ns/credentials/v2"], "type": ["VerifiableCredential"], "id": "not a url", "credentialSubject": {"x": 1}}),
        json!({"@context": ["https://www.w3.org/ns/credentials/v2"], "type": ["VerifiableCredential"], "validFrom": "yesterday", "credentialSubject": {"x": 1}}),
        json!({"@context": ["https://www.w3.org/ns/credentials/v2"], "type": ["VerifiableCredential"], "credentialStatus": {"id": "https://s.example/1"}, "credentialSubject": {"x": 1}}),
        json!({"@context": ["https://www.w3.org/ns/credentials/v2"], "type": ["VerifiableCredential"], "issuer": "did:key:z6MkNotOurs", "credentialSubject": {"x": 1}}),
        // VC-API: the credential names its issuer; there is no implicit default
        json!({"@context": ["https://www.w3.org/ns/credentials/v2"], "type": ["VerifiableCredential"], "credentialSubject": {"x": 1}}),
        json!({"@context": ["https://www.w3.org/ns/credentials/v2"], "type": ["VerifiableCredential"], "issuer": issuer_did, "credentialSchema": {"type": "JsonSchema"}, "credentialSubject": {"x": 1}}),
        json!({"@context": ["https://www.w3.org/ns/credentials/v2"], "type": ["VerifiableCredential"], "issuer": issuer_did, "relatedResource": [
            {"id": "https://r.example/a", "digestSRI": "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="},
            {"id": "https://r.example/a", "digestSRI": "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="}], "credentialSubject": {"x": 1}}),
    ] {
        expect_problem(
            s.admin()
                .post_resp("/vc-api/credentials/issue", &json!({"credential": bad}))
                .await,
            400,
            "bad_request",
        )
        .await;
    }
    // credential.issuer names the tenant that signs, and an issuer object keeps its name.
    let issuer: Value = s.admin().get("/api/issuers/default").await;
    for format in ["ldp", "jwt"] {
        let mut cred = credential("https://www.w3.org/ns/credentials/v2", &issuer_did);
        cred["issuer"] = json!({"id": issuer["did"], "name": "Example University"});
        let r = s
            .admin()
            .post_resp(
                "/vc-api/credentials/issue",
                &json!({"credential": cred, "options": {"format": format}}),
            )
            .await;
        assert_eq!(r.status(), 201, "{format}: {}", r.text().await.unwrap());
        let vc = r.json::<Value>().await.unwrap()["verifiableCredential"].clone();
        let shown = match &vc {
            Value::String(jwt) => jws::decode_unverified(jwt).unwrap().1,
            other => other.clone(),
        };
        assert_eq!(
            shown["issuer"]["name"], "Example University",
            "{format}: {shown}"
        );
        let v = verify(
            &s,
            "/vc-api/credentials/verify",
            json!({"verifiableCredential": vc}),
        )
        .await;
        assert_eq!(v["verified"], true, "{format}: {v}");
    }
    // VCDM 1.1 input secured as Data Integrity (the DI context is added) verifies.
    let r = s.admin().post_resp("/vc-api/credentials/issue", &json!({"credential": credential("https://www.w3.org/2018/credentials/v1", &issuer_did)})).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let vc = r.json::<Value>().await.unwrap()["verifiableCredential"].clone();
    assert!(vc["issuanceDate"].is_string(), "{vc}");
    let v = verify(
        &s,
        "/vc-api/credentials/verify",
        json!({"verifiableCredential": vc}),
    )
    .await;
    assert_eq!(v["verified"], true, "{v}");
    expect_problem(
        s.anon()
            .post_resp(
                "/vc-api/credentials/verify",
                &json!({"verifiableCredential": 42}),
            )
            .await,
        400,
        "bad_request",
    )
    .await;
    s.stop();
}

/// VC-JOSE-COSE: `options.format = "enveloped"` issues a VCDM 2.0 `vc+jwt` as an
/// `EnvelopedVerifiableCredential`; verify accepts it alone and inside a `vp+jwt` presentation;
/// tampering, other envelopes and VCDM 1.1 input are refused.
#[tokio::test]
async fn enveloped_credentials_issue_and_verify() {
    let s = Server::start().await;
    let c = client();
    let issuer_did = s.default_issuer_did().await;
    let issue = |cred: Value| {
        c.post(s.url("/vc-api/credentials/issue"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"credential": cred, "options": {"format": "enveloped"}}))
            .send()
    };
    let r = issue(credential(
        "https://www.w3.org/ns/credentials/v2",
        &issuer_did,
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let env = r.json::<Value>().await.unwrap()["verifiableCredential"].clone();
    assert_eq!(env["type"], "EnvelopedVerifiableCredential", "{env}");
    assert_eq!(env["@context"], "https://www.w3.org/ns/credentials/v2");
    let id = env["id"].as_str().unwrap();
    let jwt = id.strip_prefix("data:application/vc+jwt,").expect(id);
    let (header, payload, _, _) = jws::decode_unverified(jwt).unwrap();
    assert_eq!(header["typ"], "vc+jwt");
    assert_eq!(payload["credentialSubject"]["given_name"], "Alice");
    let v = verify(
        &s,
        "/vc-api/credentials/verify",
        json!({"verifiableCredential": env}),
    )
    .await;
    assert_eq!(v["verified"], true, "{v}");

    // tampered payload inside the envelope
    let parts: Vec<&str> = jwt.split('.').collect();
    let mut forged = payload.clone();
    forged["credentialSubject"]["given_name"] = json!("Mallory");
    let forged_jwt = format!(
        "{}.{}.{}",
        parts[0],
        idstack::crypto::b64url(forged.to_string().as_bytes()),
        parts[2]
    );
    let mut bad = env.clone();
    bad["id"] = json!(format!("data:application/vc+jwt,{forged_jwt}"));
    let v = verify(
        &s,
        "/vc-api/credentials/verify",
        json!({"verifiableCredential": bad}),
    )
    .await;
    assert_eq!(v["verified"], false, "{v}");
    // envelopes idstack cannot read: 400 bad_request, not a verdict
    for id in [
        format!("data:application/vc+sd-jwt,{jwt}"),
        "data:application/vc+jwt;base64,eHh4".to_string(),
        "https://example.org/vc".to_string(),
    ] {
        let mut e = env.clone();
        e["id"] = json!(id);
        expect_problem(
            s.anon()
                .post_resp(
                    "/vc-api/credentials/verify",
                    &json!({"verifiableCredential": e}),
                )
                .await,
            400,
            "bad_request",
        )
        .await;
    }
    // VCDM 1.1 cannot be enveloped
    expect_problem(
        issue(credential(
            "https://www.w3.org/2018/credentials/v1",
            &issuer_did,
        ))
        .await
        .unwrap(),
        400,
        "bad_request",
    )
    .await;

    // a VC-JOSE presentation (vp+jwt, the payload is the presentation) carrying the envelope
    let holder = SigningKey::generate(KeyType::Ed25519);
    let holder_did = did::did_key(&holder.verifying_key());
    let vm = did::verification_method(&holder_did);
    let vp_payload = json!({
        "@context": ["https://www.w3.org/ns/credentials/v2"],
        "type": ["VerifiablePresentation"],
        "holder": holder_did,
        "verifiableCredential": [env],
        "nonce": "n-env",
        "aud": "rp.example",
    });
    let vp = jws::sign(&holder, json!({"typ": "vp+jwt", "kid": vm}), &vp_payload);
    let v = verify(
        &s,
        "/vc-api/presentations/verify",
        json!({"verifiablePresentation": vp, "options": {"challenge": "n-env", "domain": "rp.example"}}),
    )
    .await;
    assert_eq!(v["verified"], true, "{v}");
    // signed by someone else than the holder it names
    let other = SigningKey::generate(KeyType::Ed25519);
    let other_vm = did::verification_method(&did::did_key(&other.verifying_key()));
    let vp = jws::sign(
        &other,
        json!({"typ": "vp+jwt", "kid": other_vm}),
        &vp_payload,
    );
    let v = verify(
        &s,
        "/vc-api/presentations/verify",
        json!({"verifiablePresentation": vp, "options": {"challenge": "n-env", "domain": "rp.example"}}),
    )
    .await;
    assert_eq!(v["verified"], false, "{v}");
    s.stop();
}

/// Presentations without credentials are judged on their own proof; `EnvelopedVerifiablePresentation`
/// (VCDM 2.0 §4.13.2) is read like the `vp+jwt` it carries; credentials with proof sets verify
/// only when every proof does and one is the issuer's.
#[tokio::test]
async fn presentations_envelopes_and_proof_sets() {
    let s = Server::start().await;
    let issuer_did = s.default_issuer_did().await;
    let holder = SigningKey::generate(KeyType::Ed25519);
    let holder_did = did::did_key(&holder.verifying_key());
    let vm = did::verification_method(&holder_did);
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let vp_verify = |vp: Value, options: Value| {
        let s = &s;
        async move {
            verify(
                s,
                "/vc-api/presentations/verify",
                json!({"verifiablePresentation": vp, "options": options}),
            )
            .await
        }
    };

    // a Data Integrity presentation that carries no credential
    let vp = idstack::crypto::di::issue_presentation(&holder, &vm, &[], "c-1", "d.example", now)
        .unwrap();
    let v = vp_verify(
        vp.clone(),
        json!({"challenge": "c-1", "domain": "d.example"}),
    )
    .await;
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["checks"], json!(["signature", "nonce_audience"]), "{v}");
    // only the challenge asked for: the domain is not checked
    let v = vp_verify(vp.clone(), json!({"challenge": "c-1"})).await;
    assert_eq!(v["verified"], true, "{v}");
    for options in [
        json!({"challenge": "c-2"}),
        json!({"challenge": "c-1", "domain": "other.example"}),
    ] {
        let v = vp_verify(vp.clone(), options.clone()).await;
        assert_eq!(v["verified"], false, "{options}: {v}");
    }
    let mut tampered = vp.clone();
    tampered["holder"] = json!("did:example:mallory");
    assert_eq!(vp_verify(tampered, json!({})).await["verified"], false);
    // no proof at all
    let unsigned = json!({"@context": ["https://www.w3.org/ns/credentials/v2"], "type": ["VerifiablePresentation"]});
    assert_eq!(vp_verify(unsigned, json!({})).await["verified"], false);

    // an EnvelopedVerifiablePresentation of a vp+jwt carrying an enveloped credential
    let env_vc = issued(
        &s,
        credential("https://www.w3.org/ns/credentials/v2", &issuer_did),
        "enveloped",
    )
    .await;
    let vp_jwt = jws::sign(
        &holder,
        json!({"typ": "vp+jwt", "kid": vm}),
        &json!({
            "@context": ["https://www.w3.org/ns/credentials/v2"],
            "type": ["VerifiablePresentation"],
            "holder": holder_did,
            "verifiableCredential": [env_vc],
            "nonce": "n-1",
            "aud": "rp.example",
        }),
    );
    let envelope = |id: String| json!({"@context": "https://www.w3.org/ns/credentials/v2", "type": "EnvelopedVerifiablePresentation", "id": id});
    for prefix in ["data:application/vp+jwt,", "data:application/jwt,"] {
        let v = vp_verify(
            envelope(format!("{prefix}{vp_jwt}")),
            json!({"challenge": "n-1"}),
        )
        .await;
        assert_eq!(v["verified"], true, "{prefix}: {v}");
    }
    let v = vp_verify(
        envelope(format!("data:application/vp+jwt,{vp_jwt}")),
        json!({"challenge": "n-1", "domain": "rp.example"}),
    )
    .await;
    assert_eq!(v["verified"], true, "{v}");
    let v = vp_verify(
        envelope(format!("data:application/vp+jwt,{vp_jwt}")),
        json!({"challenge": "n-2"}),
    )
    .await;
    assert_eq!(v["verified"], false, "{v}");
    // a forged presentation inside the envelope
    let other = SigningKey::generate(KeyType::Ed25519);
    let parts: Vec<&str> = vp_jwt.split('.').collect();
    let resigned = jws::sign(
        &other,
        jws::decode_unverified(&vp_jwt).unwrap().0,
        &jws::decode_unverified(&vp_jwt).unwrap().1,
    );
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        resigned.split('.').nth(2).unwrap()
    );
    let v = vp_verify(
        envelope(format!("data:application/vp+jwt,{forged}")),
        json!({"challenge": "n-1"}),
    )
    .await;
    assert_eq!(v["verified"], false, "{v}");
    // envelopes that cannot be read: 400 bad_request
    let mut no_context = envelope(format!("data:application/vp+jwt,{vp_jwt}"));
    no_context["@context"] = json!([]);
    for bad in [
        no_context,
        envelope(vp_jwt.clone()),
        envelope(format!("data:application/vc+sd-jwt,{vp_jwt}")),
    ] {
        expect_problem(
            s.anon()
                .post_resp(
                    "/vc-api/presentations/verify",
                    &json!({"verifiablePresentation": bad, "options": {"challenge": "n-1"}}),
                )
                .await,
            400,
            "bad_request",
        )
        .await;
    }

    // a proof set: the issuer's proof and a witness's
    let vc = issued(
        &s,
        credential("https://www.w3.org/ns/credentials/v2", &issuer_did),
        "ldp",
    )
    .await;
    let wvm = did::verification_method(&did::did_key(&other.verifying_key()));
    let set = idstack::crypto::di::add_assertion_proof(&other, &wvm, &vc, None, &[], now).unwrap();
    let cred_verify = |vc: Value| {
        let s = &s;
        async move {
            verify(
                s,
                "/vc-api/credentials/verify",
                json!({"verifiableCredential": vc}),
            )
            .await
        }
    };
    assert_eq!(cred_verify(set.clone()).await["verified"], true);
    // the witness's proof alone does not make the credential the issuer's
    let mut witness_only = set.clone();
    witness_only["proof"] = json!([set["proof"][1].clone()]);
    assert_eq!(cred_verify(witness_only).await["verified"], false);
    // an attacker's proof "by the issuer" next to a broken real one
    let mut broken = set.clone();
    broken["proof"][0]["proofValue"] = json!(
        "z3FXQjecWufY46yg5abdVZsXqLhxhueuSoZgNSARiKBk9czhSePTFehP8c3PGfb6a22gkfUKKiWVk5JgnRu4Qj1n"
    );
    assert_eq!(cred_verify(broken).await["verified"], false);
    s.stop();
}
