//! Issuer role through HTTP: metadata, full flows per format, single-use codes/nonces/tokens,
//! tx_code lockout, proof checks, status lists, authorization code + PKCE, did:web, bad input.

use idstack::crypto::{did, jws, sdjwt, status::StatusArray, KeyType, SigningKey};
use serde_json::{json, Value};

use crate::common::{client, expect_problem, Server, ADMIN_TOKEN};
use crate::holder::*;

fn identity() -> Value {
    json!({"given_name": "Erika", "family_name": "Mustermann", "birthdate": "1984-01-26", "email": "erika@example.org"})
}

#[tokio::test]
async fn metadata_in_both_well_known_forms() {
    let s = Server::start().await;
    let c = client();
    let a: Value = s
        .anon()
        .get("/.well-known/openid-credential-issuer/issuers/default")
        .await;
    let b: Value = s
        .anon()
        .get("/issuers/default/.well-known/openid-credential-issuer")
        .await;
    assert_eq!(a, b);
    assert_eq!(a["credential_issuer"], s.url("/issuers/default"));
    assert_eq!(a["nonce_endpoint"], s.url("/issuers/default/nonce"));
    let cfgs = a["credential_configurations_supported"]
        .as_object()
        .unwrap();
    assert_eq!(cfgs["IdentityCredential_dc_sd_jwt"]["format"], "dc+sd-jwt");
    assert!(cfgs["IdentityCredential_dc_sd_jwt"]["vct"]
        .as_str()
        .unwrap()
        .starts_with("http"));
    assert_eq!(
        cfgs["IdentityCredential_jwt_vc_json"]["format"],
        "jwt_vc_json"
    );
    for c in cfgs.values() {
        assert!(c["proof_types_supported"]["jwt"]["proof_signing_alg_values_supported"].is_array());
        assert!(c["credential_signing_alg_values_supported"].is_array());
        assert!(c["cryptographic_binding_methods_supported"].is_array());
        assert!(c["credential_metadata"]["claims"].is_array());
    }
    let asm: Value = s
        .anon()
        .get("/.well-known/oauth-authorization-server/issuers/default")
        .await;
    let asm2: Value = s
        .anon()
        .get("/issuers/default/.well-known/oauth-authorization-server")
        .await;
    assert_eq!(asm, asm2);
    assert_eq!(asm["issuer"], s.url("/issuers/default"));
    assert_eq!(asm["pre-authorized_grant_anonymous_access_supported"], true);
    let vct: Value = c
        .get(
            cfgs["IdentityCredential_dc_sd_jwt"]["vct"]
                .as_str()
                .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(vct["vct"], cfgs["IdentityCredential_dc_sd_jwt"]["vct"]);
    expect_problem(
        s.anon()
            .get_resp("/.well-known/openid-credential-issuer/issuers/nope")
            .await,
        404,
        "not_found",
    )
    .await;
    s.stop();
}

async fn issuer_key(s: &Server) -> idstack::crypto::VerifyingKey {
    let i: Value = s.admin().get("/api/issuers/default").await;
    did::resolve_offline(i["verification_method"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn sd_jwt_flow_with_tx_code_and_single_use_everything() {
    let s = Server::start().await;
    let offer = create_offer(&s, "default", json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"], "claims": identity(), "tx_code": {"length": 6, "input_mode": "numeric"}})).await;
    let tx = offer["tx_code"].as_str().unwrap().to_string();
    assert_eq!(tx.len(), 6);
    assert!(offer["offer_uri"]
        .as_str()
        .unwrap()
        .starts_with("openid-credential-offer://?credential_offer_uri="));
    // by reference
    let by_ref: Value = s
        .anon()
        .get(&format!(
            "/issuers/default/offers/{}",
            offer_reference(&offer)
        ))
        .await;
    assert_eq!(by_ref, offer["credential_offer"]);
    // the id alone (in clear in the store) fetches nothing
    let r = s
        .anon()
        .get_resp(&format!(
            "/issuers/default/offers/{}",
            offer["id"].as_str().unwrap()
        ))
        .await;
    expect_problem(r, 404, "not_found").await;
    let code = pre_auth_code(&offer);

    // missing and wrong tx_code
    let (st, e) = token(&s, "default", &code, None).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));
    let (st, e) = token(&s, "default", &code, Some("000000x")).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));
    let (st, tok) = token(&s, "default", &code, Some(&tx)).await;
    assert_eq!(st, 200, "{tok}");
    assert_eq!(tok["token_type"], "Bearer");
    assert!(
        tok.get("authorization_details").is_none(),
        "not asked with authorization_details: {tok}"
    );
    // code replay
    let (st, e) = token(&s, "default", &code, Some(&tx)).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));
    let at = tok["access_token"].as_str().unwrap();

    let holder = SigningKey::generate(KeyType::Ed25519);
    let aud = s.url("/issuers/default");
    let n = nonce(&s, "default").await;
    let (st, cred) = credential(&s, "default", at, json!({"credential_configuration_id": "IdentityCredential_dc_sd_jwt", "proofs": {"jwt": [proof(&holder, &aud, &n, false)]}})).await;
    assert_eq!(st, 200, "{cred}");
    let sd = cred["credentials"][0]["credential"].as_str().unwrap();
    let v = sdjwt::verify(sd, &issuer_key(&s).await).unwrap();
    assert_eq!(v.header["typ"], "dc+sd-jwt");
    assert_eq!(v.claims["given_name"], "Erika");
    assert_eq!(v.disclosed.len(), 4, "every claim selectively disclosable");
    assert_eq!(v.claims["cnf"]["jwk"], holder.verifying_key().to_jwk());
    assert!(v.claims["status"]["status_list"]["uri"]
        .as_str()
        .unwrap()
        .contains("/status-lists/token-1"));

    // the access token was single-use for this configuration: the holder's own key asking again
    // (the retry a lost answer or a 503 calls for) gets the same credential, not a second one
    let n2 = nonce(&s, "default").await;
    let (st, again) = credential(&s, "default", at, json!({"credential_configuration_id": "IdentityCredential_dc_sd_jwt", "proofs": {"jwt": [proof(&holder, &aud, &n2, false)]}})).await;
    assert_eq!(st, 200, "{again}");
    let again = sdjwt::verify(
        again["credentials"][0]["credential"].as_str().unwrap(),
        &issuer_key(&s).await,
    )
    .unwrap();
    assert_eq!(
        again.claims["status"], v.claims["status"],
        "the same status entry: the same credential"
    );
    assert_eq!(again.claims["iat"], v.claims["iat"]);
    assert_eq!(again.claims["cnf"], v.claims["cnf"]);
    // any other key is refused
    let other = SigningKey::generate(KeyType::Ed25519);
    let n3 = nonce(&s, "default").await;
    let (st, e) = credential(&s, "default", at, json!({"credential_configuration_id": "IdentityCredential_dc_sd_jwt", "proofs": {"jwt": [proof(&other, &aud, &n3, false)]}})).await;
    assert_eq!((st, e["error"].as_str()), (401, Some("invalid_token")));

    // offer state
    let view: Value = s
        .admin()
        .get(&format!(
            "/api/issuers/default/offers/{}",
            offer["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(view["state"], "credential_issued");
    assert_eq!(view["issued_credentials"].as_array().unwrap().len(), 1);
    // the used offer is no longer served by reference
    let r = s
        .anon()
        .get_resp(&format!(
            "/issuers/default/offers/{}",
            offer_reference(&offer)
        ))
        .await;
    expect_problem(r, 410, "gone").await;
    // Nothing that redeems or fetches the offer reached the log: not the offer's id (it was in
    // every request's path), the pre-authorized code, the tx_code or the access token.
    let log = s.log();
    for secret in [offer["id"].as_str().unwrap(), &code, &tx, at] {
        assert!(!log.contains(secret), "the log holds `{secret}`");
    }
    assert!(
        log.contains("/issuers/{issuer}/offers/{id}"),
        "requests are logged by route"
    );
    s.stop();
}

/// OID4VCI 1.0 §6.1/6.2: a pre-authorized token request may narrow the grant with
/// `authorization_details`; the response names the credential identifiers, and only those are issued.
#[tokio::test]
async fn pre_authorized_grant_narrowed_by_authorization_details() {
    let s = Server::start().await;
    let offer = create_offer(&s, "default", json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt", "IdentityCredential_jwt_vc_json"], "claims": identity()})).await;
    let code = pre_auth_code(&offer);
    let tok = |details: &'static str| {
        let (url, code) = (s.url("/issuers/default/token"), code.clone());
        async move {
            let r = client()
                .post(url)
                .form(&[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:pre-authorized_code",
                    ),
                    ("pre-authorized_code", code.as_str()),
                    ("authorization_details", details),
                ])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    for bad in [
        "not json",
        "[]",
        r#"[{"type":"something_else","credential_configuration_id":"IdentityCredential_dc_sd_jwt"}]"#,
        r#"[{"type":"openid_credential"}]"#,
        r#"[{"type":"openid_credential","credential_configuration_id":"IdentityCredential_ldp_vc"}]"#,
    ] {
        let (st, e) = tok(bad).await;
        assert_eq!(
            (st, e["error"].as_str()),
            (400, Some("invalid_authorization_details")),
            "{bad}: {e}"
        );
    }
    // the refused requests did not consume the code
    let (st, t) = tok(r#"[{"type":"openid_credential","credential_configuration_id":"IdentityCredential_dc_sd_jwt"}]"#).await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(
        t["authorization_details"][0]["credential_identifiers"],
        json!(["IdentityCredential_dc_sd_jwt"])
    );
    assert_eq!(t["authorization_details"].as_array().unwrap().len(), 1);
    let at = t["access_token"].as_str().unwrap();
    let holder = SigningKey::generate(KeyType::Ed25519);
    let aud = s.url("/issuers/default");
    // the configuration left out of authorization_details is not covered
    let n = nonce(&s, "default").await;
    let (st, e) = credential(&s, "default", at, json!({"credential_identifier": "IdentityCredential_jwt_vc_json", "proofs": {"jwt": [proof(&holder, &aud, &n, false)]}})).await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("unknown_credential_identifier")),
        "{e}"
    );
    let n = nonce(&s, "default").await;
    let (st, cred) = credential(&s, "default", at, json!({"credential_identifier": "IdentityCredential_dc_sd_jwt", "proofs": {"jwt": [proof(&holder, &aud, &n, false)]}})).await;
    assert_eq!(st, 200, "{cred}");
    s.stop();
}

#[tokio::test]
async fn nonce_replay_and_proof_checks() {
    let s = Server::start().await;
    let aud = s.url("/issuers/default");
    let holder = SigningKey::generate(KeyType::P256);
    let cfg = "IdentityCredential_jwt_vc_json";
    let fresh_token = || async {
        let offer = create_offer(
            &s,
            "default",
            json!({"credential_configuration_ids": [cfg], "claims": identity()}),
        )
        .await;
        let (_, t) = token(&s, "default", &pre_auth_code(&offer), None).await;
        t["access_token"].as_str().unwrap().to_string()
    };
    let at = fresh_token().await;
    let n = nonce(&s, "default").await;
    let body = |p: String| json!({"credential_configuration_id": cfg, "proofs": {"jwt": [p]}});

    // bad proofs: nothing consumed
    let cases = [
        jws::sign(
            &holder,
            json!({"typ": "JWT", "jwk": holder.verifying_key().to_jwk()}),
            &json!({"aud": aud, "iat": now(), "nonce": n}),
        ),
        jws::sign(
            &holder,
            json!({"typ": "openid4vci-proof+jwt", "jwk": holder.verifying_key().to_jwk()}),
            &json!({"aud": "https://elsewhere", "iat": now(), "nonce": n}),
        ),
        jws::sign(
            &holder,
            json!({"typ": "openid4vci-proof+jwt", "jwk": holder.verifying_key().to_jwk()}),
            &json!({"aud": aud, "iat": now() - 3600, "nonce": n}),
        ),
        jws::sign(
            &holder,
            json!({"typ": "openid4vci-proof+jwt", "jwk": SigningKey::generate(KeyType::P256).verifying_key().to_jwk()}),
            &json!({"aud": aud, "iat": now(), "nonce": n}),
        ),
        // iss, when present, is a client_id (OID4VCI 1.0 F.1)
        jws::sign(
            &holder,
            json!({"typ": "openid4vci-proof+jwt", "jwk": holder.verifying_key().to_jwk()}),
            &json!({"aud": aud, "iat": now(), "nonce": n, "iss": 7}),
        ),
        "not.a.jwt".to_string(),
    ];
    for p in cases {
        let (st, e) = credential(&s, "default", &at, body(p)).await;
        assert_eq!(
            (st, e["error"].as_str()),
            (400, Some("invalid_proof")),
            "{e}"
        );
    }
    // credential_identifier is only for a token whose response gave identifiers out (§8.2)
    let (st, e) = credential(
        &s,
        "default",
        &at,
        json!({"credential_identifier": cfg, "proofs": {"jwt": [proof(&holder, &aud, &n, false)]}}),
    )
    .await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_credential_request")),
        "{e}"
    );
    let (st, e) = credential(
        &s,
        "default",
        &at,
        json!({"credential_configuration_id": cfg}),
    )
    .await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_proof")),
        "{e}"
    );
    let (st, e) = credential(
        &s,
        "default",
        &at,
        body(proof(&holder, &aud, "never-issued", false)),
    )
    .await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_nonce")),
        "{e}"
    );
    let (st, e) = credential(&s, "default", &at, json!({"credential_configuration_id": "IdentityCredential_dc_sd_jwt", "proofs": {"jwt": [proof(&holder, &aud, &n, false)]}})).await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("unknown_credential_configuration")),
        "{e}"
    );
    let (st, e) = credential(
        &s,
        "default",
        "no-such-token",
        body(proof(&holder, &aud, &n, false)),
    )
    .await;
    assert_eq!(
        (st, e["error"].as_str()),
        (401, Some("invalid_token")),
        "{e}"
    );

    // the good proof (kid = did:key) works, and its nonce cannot be used again
    let (st, cred) = credential(&s, "default", &at, body(proof(&holder, &aud, &n, true))).await;
    assert_eq!(st, 200, "{cred}");
    let jwt = cred["credentials"][0]["credential"].as_str().unwrap();
    let (h, p) = jws::verify(jwt, &issuer_key(&s).await).unwrap();
    assert_eq!(h["typ"], "JWT");
    let holder_did = did::did_key(&holder.verifying_key());
    assert_eq!(p["sub"], holder_did);
    assert_eq!(p["vc"]["credentialSubject"]["email"], "erika@example.org");
    assert_eq!(p["vc"]["type"][1], "IdentityCredential");
    assert!(p["exp"].as_i64().unwrap() > now());
    let at2 = fresh_token().await;
    let (st, e) = credential(&s, "default", &at2, body(proof(&holder, &aud, &n, true))).await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_nonce")),
        "{e}"
    );

    // batch: two proofs on one key are refused before the c_nonce is used
    let n = nonce(&s, "default").await;
    let twice = vec![
        proof(&holder, &aud, &n, false),
        proof(&holder, &aud, &n, false),
    ];
    let (st, e) = credential(
        &s,
        "default",
        &at2,
        json!({"credential_configuration_id": cfg, "proofs": {"jwt": twice}}),
    )
    .await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_proof")),
        "{e}"
    );
    // three proofs → three credentials
    let keys: Vec<SigningKey> = (0..3)
        .map(|_| SigningKey::generate(KeyType::Ed25519))
        .collect();
    let proofs: Vec<String> = keys.iter().map(|k| proof(k, &aud, &n, false)).collect();
    let (st, cred) = credential(
        &s,
        "default",
        &at2,
        json!({"credential_configuration_id": cfg, "proofs": {"jwt": proofs}}),
    )
    .await;
    assert_eq!(st, 200, "{cred}");
    assert_eq!(cred["credentials"].as_array().unwrap().len(), 3);
    s.stop();
}

#[tokio::test]
async fn tx_code_lockout() {
    let s = Server::start().await;
    let offer = create_offer(&s, "default", json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"], "claims": identity(), "tx_code": {"length": 4}})).await;
    let code = pre_auth_code(&offer);
    for _ in 0..5 {
        let (st, _) = token(&s, "default", &code, Some("xxxx")).await;
        assert_eq!(st, 400);
    }
    let (st, e) = token(
        &s,
        "default",
        &code,
        Some(offer["tx_code"].as_str().unwrap()),
    )
    .await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_grant")),
        "locked after 5 failures: {e}"
    );
    s.stop();
}

#[tokio::test]
async fn revocation_and_suspension_show_in_both_status_lists() {
    let s = Server::start().await;
    let (_, cred) = full_flow(&s, "IdentityCredential_jwt_vc_json", identity()).await;
    let (_, p) = jws::decode_unverified(cred["credentials"][0]["credential"].as_str().unwrap())
        .map(|(h, p, _, _)| (h, p))
        .unwrap();
    let entry = &p["vc"]["credentialStatus"];
    let idx: u64 = entry["statusListIndex"].as_str().unwrap().parse().unwrap();
    let list_url = entry["statusListCredential"].as_str().unwrap().to_string();
    let (_, sd) = full_flow(&s, "IdentityCredential_dc_sd_jwt", identity()).await;
    let v = sdjwt::parse(sd["credentials"][0]["credential"].as_str().unwrap()).unwrap();
    let (_, sdp) = jws::decode_unverified(&v.jwt)
        .map(|(h, p, _, _)| (h, p))
        .unwrap();
    let tidx = sdp["status"]["status_list"]["idx"].as_u64().unwrap();
    let token_url = sdp["status"]["status_list"]["uri"]
        .as_str()
        .unwrap()
        .to_string();

    let creds: Vec<Value> = s.admin().get_as("/api/issuers/default/credentials").await;
    assert_eq!(creds.len(), 2);
    assert!(
        creds.iter().all(|c| c.get("claims").is_none()),
        "claims are not stored"
    );
    let w3c_id = creds.iter().find(|c| c["format"] == "jwt_vc_json").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sd_id = creds.iter().find(|c| c["format"] == "dc+sd-jwt").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ik = issuer_key(&s).await;

    let bit = |url: String, idx: u64| {
        let ik = ik.clone();
        async move {
            let r = client().get(&url).send().await.unwrap();
            assert_eq!(r.headers()["content-type"], "application/vc+jwt");
            assert!(r.headers().get("etag").is_some());
            let (_, p) = jws::verify(&r.text().await.unwrap(), &ik).unwrap();
            StatusArray::from_encoded_list(p["credentialSubject"]["encodedList"].as_str().unwrap())
                .unwrap()
                .get_msb(idx)
                .unwrap()
        }
    };
    let token_status = |url: String, idx: u64| {
        let ik = ik.clone();
        async move {
            let r = client().get(&url).send().await.unwrap();
            assert_eq!(r.headers()["content-type"], "application/statuslist+jwt");
            let (h, p) = jws::verify(&r.text().await.unwrap(), &ik).unwrap();
            assert_eq!(h["typ"], "statuslist+jwt");
            assert_eq!(p["sub"], url);
            let bits = p["status_list"]["bits"].as_u64().unwrap() as u8;
            StatusArray::from_token_lst(bits, p["status_list"]["lst"].as_str().unwrap())
                .unwrap()
                .get_lsb(idx)
                .unwrap()
        }
    };
    assert!(!bit(list_url.clone(), idx).await);
    assert_eq!(token_status(token_url.clone(), tidx).await, 0);

    let r = s
        .admin()
        .post_resp(
            &format!("/api/issuers/default/credentials/{w3c_id}/revoke"),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        bit(list_url.clone(), idx).await,
        "revocation bit set on next fetch"
    );
    // revocation is final
    let r = s
        .admin()
        .post_resp(
            &format!("/api/issuers/default/credentials/{w3c_id}/reinstate"),
            &serde_json::json!({}),
        )
        .await;
    expect_problem(r, 409, "conflict").await;

    let susp = s
        .admin()
        .post_resp(
            &format!("/api/issuers/default/credentials/{sd_id}/suspend"),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(susp.status(), 200);
    assert_eq!(token_status(token_url.clone(), tidx).await, 2);
    s.admin()
        .post_resp(
            &format!("/api/issuers/default/credentials/{sd_id}/reinstate"),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(token_status(token_url.clone(), tidx).await, 0);

    expect_problem(
        s.anon()
            .get_resp("/issuers/default/status-lists/token-99")
            .await,
        404,
        "not_found",
    )
    .await;
    expect_problem(
        s.admin()
            .post_resp(
                "/api/issuers/default/credentials/nope/revoke",
                &serde_json::json!({}),
            )
            .await,
        404,
        "not_found",
    )
    .await;
    s.stop();
}

#[tokio::test]
async fn authorization_code_flow_with_pkce() {
    let s = Server::start().await;
    let offer = create_offer(&s, "default", json!({"credential_configuration_ids": ["IdentityCredential_jwt_vc_json"], "claims": identity(), "authorization_code": true})).await;
    let issuer_state = offer["credential_offer"]["grants"]["authorization_code"]["issuer_state"]
        .as_str()
        .unwrap();
    let verifier = "a-very-long-code-verifier-with-enough-entropy-0123456789";
    let challenge = idstack::crypto::b64url(idstack::crypto::sha256(verifier.as_bytes()));
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect
        .get(s.url("/issuers/default/authorize"))
        .query(&[
            ("response_type", "code"),
            ("client_id", "wallet-1"),
            ("redirect_uri", "https://wallet.example/cb"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("issuer_state", issuer_state),
            ("state", "xyz"),
            (
                "authorization_details",
                r#"[{"type":"openid_credential","credential_configuration_id":"IdentityCredential_jwt_vc_json"}]"#,
            ),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    // A redirect_uri with a line break (a header smuggled into Location, or a 500 once the code
    // was stored) or a javascript: one is refused.
    // So is one outside issuer.redirect_uris (sandbox default `*`: no user-info, no plain http
    // off loopback): an error, never a redirect.
    for bad in [
        "https://wallet.example/cb\nX-Injected: 1",
        "javascript:alert(1)",
        "https://wallet.example@evil.example/cb",
        "http://evil.example/cb",
    ] {
        let r = no_redirect
            .get(s.url("/issuers/default/authorize"))
            .query(&[
                ("response_type", "code"),
                ("client_id", "wallet-1"),
                ("redirect_uri", bad),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
                ("issuer_state", issuer_state),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad:?}");
        assert!(r.headers().get("location").is_none(), "{bad:?}");
    }
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(loc.starts_with("https://wallet.example/cb?code="), "{loc}");
    assert!(loc.contains("state=xyz"));
    let code = loc
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    let token_url = s.url("/issuers/default/token");
    let tok = |verifier: &'static str, code: String| {
        let token_url = token_url.clone();
        async move {
            let r = client()
                .post(&token_url)
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", code.as_str()),
                    ("code_verifier", verifier),
                    ("redirect_uri", "https://wallet.example/cb"),
                    ("client_id", "wallet-1"),
                ])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (st, t) = tok(verifier, code.clone()).await;
    assert_eq!(st, 200, "{t}");
    // OID4VCI 1.0 §6.2: asked with authorization_details, answered with credential_identifiers
    assert_eq!(
        t["authorization_details"],
        json!([{"type": "openid_credential", "credential_configuration_id": "IdentityCredential_jwt_vc_json", "credential_identifiers": ["IdentityCredential_jwt_vc_json"]}])
    );
    let holder = SigningKey::generate(KeyType::Ed25519);
    // a proof made for another client is refused (OID4VCI 1.0 F.1: iss is the client_id)
    let n = nonce(&s, "default").await;
    let for_client = |iss: &str| {
        jws::sign(
            &holder,
            json!({"typ": "openid4vci-proof+jwt", "jwk": holder.verifying_key().to_jwk()}),
            &json!({"aud": s.url("/issuers/default"), "iat": now(), "nonce": n, "iss": iss}),
        )
    };
    let (st, e) = credential(&s, "default", t["access_token"].as_str().unwrap(), json!({"credential_identifier": "IdentityCredential_jwt_vc_json", "proofs": {"jwt": [for_client("another-wallet")]}})).await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_proof")),
        "{e}"
    );
    let (st, cred) = credential(&s, "default", t["access_token"].as_str().unwrap(), json!({"credential_identifier": "IdentityCredential_jwt_vc_json", "proofs": {"jwt": [for_client("wallet-1")]}})).await;
    assert_eq!(st, 200, "{cred}");
    let fetch = || async {
        let n = nonce(&s, "default").await;
        credential(&s, "default", t["access_token"].as_str().unwrap(), json!({"credential_identifier": "IdentityCredential_jwt_vc_json", "proofs": {"jwt": [proof(&holder, &s.url("/issuers/default"), &n, false)]}})).await
    };
    let (st, cred) = fetch().await;
    assert_eq!(st, 200, "{cred}");
    let (st, e) = tok(verifier, code.clone()).await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_grant")),
        "code replay"
    );
    // the replay revoked the token the code's first use got (RFC 6749 §4.1.2)
    let (st, e) = fetch().await;
    assert_eq!(
        (st, e["error"].as_str()),
        (401, Some("invalid_token")),
        "{e}"
    );
    // wrong PKCE verifier on a fresh authorization
    let offer = create_offer(&s, "default", json!({"credential_configuration_ids": ["IdentityCredential_jwt_vc_json"], "claims": identity(), "authorization_code": true})).await;
    let is = offer["credential_offer"]["grants"]["authorization_code"]["issuer_state"]
        .as_str()
        .unwrap();
    let r = no_redirect
        .get(s.url("/issuers/default/authorize"))
        .query(&[
            ("response_type", "code"),
            ("client_id", "wallet-1"),
            ("redirect_uri", "https://wallet.example/cb"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("issuer_state", is),
        ])
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let code = loc
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    // a verifier too short to be one (RFC 7636 §4.1) is refused without using the code
    let (st, e) = tok("short", code.clone()).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_request")));
    let (st, e) = tok("wrong-verifier-wrong-verifier-wrong-verifier-00000", code).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));
    // Refusals once the redirect URI is accepted and the issuer_state names a live offer go back
    // to the client there (RFC 6749 §4.1.2.1), with its state and our iss; before, the wallet's
    // user was left on a 400 page. Plain PKCE, another response_type:
    for (param, value, error) in [
        ("code_challenge_method", "plain", "invalid_request"),
        ("response_type", "token", "unsupported_response_type"),
    ] {
        let mut q = vec![
            ("response_type", "code"),
            ("client_id", "w"),
            ("redirect_uri", "https://w/cb"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("issuer_state", is),
            ("state", "st-1"),
        ];
        q.iter_mut().find(|(k, _)| *k == param).unwrap().1 = value;
        let r = no_redirect
            .get(s.url("/issuers/default/authorize"))
            .query(&q)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302, "{param}");
        let loc = reqwest::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
        let got: std::collections::HashMap<_, _> = loc.query_pairs().into_owned().collect();
        assert!(loc.as_str().starts_with("https://w/cb?error="), "{loc}");
        assert_eq!(got["error"], error, "{param}: {loc}");
        assert_eq!(got["state"], "st-1");
        assert_eq!(got["iss"], s.url("/issuers/default"));
        assert!(!got.contains_key("code"), "{loc}");
        assert!(got["error_description"]
            .chars()
            .all(|c| (' '..='~').contains(&c)));
    }
    // Without a live offer's issuer_state nothing is sent back: under `*` anyone could make the
    // issuer's origin redirect to any URI with an error (an open redirector)
    let r = no_redirect
        .get(s.url("/issuers/default/authorize"))
        .query(&[
            ("response_type", "code"),
            ("client_id", "w"),
            ("redirect_uri", "https://evil.example/login"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("issuer_state", "no-such-state"),
        ])
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("location").is_none());
    expect_problem(r, 400, "bad_request").await;
    s.stop();
}

#[tokio::test]
async fn issuer_tenants_crud_did_web_and_bad_input() {
    let s = Server::start().await;
    let c = client();
    let mk = |body: Value| {
        c.post(s.url("/api/issuers"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let cfgs = json!({"Badge_sd": {"format": "dc+sd-jwt", "credential_type": "Badge", "claims": [{"name": "level"}]}});
    let r = mk(json!({"id": "acme", "key_type": "P-256", "did_method": "web", "credential_configurations": cfgs})).await.unwrap();
    assert_eq!(r.status(), 201);
    let acme: Value = r.json().await.unwrap();
    assert!(acme["did"]
        .as_str()
        .unwrap()
        .starts_with("did:web:127.0.0.1%3A"));
    let doc: Value = s.anon().get("/issuers/acme/did.json").await;
    assert_eq!(doc["id"], acme["did"]);
    // resolve the did:web over HTTP and use it to verify an issued credential
    let offer = create_offer(
        &s,
        "acme",
        json!({"credential_configuration_ids": ["Badge_sd"], "claims": {"level": 3}}),
    )
    .await;
    let (_, t) = token(&s, "acme", &pre_auth_code(&offer), None).await;
    let holder = SigningKey::generate(KeyType::Secp256k1);
    let n = nonce(&s, "acme").await;
    let (st, cred) = credential(&s, "acme", t["access_token"].as_str().unwrap(), json!({"credential_configuration_id": "Badge_sd", "proofs": {"jwt": [proof(&holder, &s.url("/issuers/acme"), &n, false)]}})).await;
    assert_eq!(st, 200, "{cred}");
    let key = did::resolve(
        acme["verification_method"].as_str().unwrap(),
        &["assertionMethod"],
        &reqwest::Client::new(),
    )
    .await
    .unwrap();
    let v = sdjwt::verify(cred["credentials"][0]["credential"].as_str().unwrap(), &key).unwrap();
    assert_eq!(v.claims["level"], 3);
    assert_eq!(v.header["alg"], "ES256");
    // a token for acme is refused by default
    expect_problem(mk(json!({"id": "acme"})).await.unwrap(), 409, "conflict").await;
    expect_problem(
        mk(json!({"id": "Bad Id!"})).await.unwrap(),
        422,
        "validation_failed",
    )
    .await;
    expect_problem(
        mk(json!({"id": "x", "key_type": "RSA"})).await.unwrap(),
        400,
        "invalid_json",
    )
    .await;
    expect_problem(mk(json!({"id": "y", "key_type": "P-256", "credential_configurations": {"L": {"format": "ldp_vc", "credential_type": "T", "claims": [{"name": "a"}]}}})).await.unwrap(), 422, "validation_failed").await;
    let r = s
        .admin()
        .put_resp("/api/issuers/acme", &json!({"display_name": "ACME Corp"}))
        .await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["display_name"],
        "ACME Corp"
    );
    let list: Vec<Value> = s.admin().get_as("/api/issuers").await;
    assert_eq!(list.len(), 2);
    let r = s.admin().delete_resp("/api/issuers/acme").await;
    assert_eq!(r.status(), 204);
    expect_problem(
        s.admin().get_resp("/api/issuers/acme").await,
        404,
        "not_found",
    )
    .await;
    expect_problem(
        s.admin().delete_resp("/api/issuers/default").await,
        409,
        "conflict",
    )
    .await;

    // offers: unknown issuer/config, unknown claim, TTL bounds, oversized body, malformed JSON
    let offer = |issuer: &str, body: Value| {
        c.post(s.url(&format!("/api/issuers/{issuer}/offers")))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    expect_problem(
        offer(
            "nope",
            json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"]}),
        )
        .await
        .unwrap(),
        404,
        "not_found",
    )
    .await;
    expect_problem(
        offer("default", json!({"credential_configuration_ids": ["Nope"]}))
            .await
            .unwrap(),
        422,
        "validation_failed",
    )
    .await;
    expect_problem(offer("default", json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"], "claims": {"ssn": "1"}})).await.unwrap(), 422, "validation_failed").await;
    expect_problem(offer("default", json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"], "ttl_seconds": 0})).await.unwrap(), 422, "validation_failed").await;
    expect_problem(offer("default", json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"], "tx_code": {"length": 40}})).await.unwrap(), 422, "validation_failed").await;
    let huge = json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"], "claims": {"given_name": "x".repeat(2 * 1024 * 1024)}});
    expect_problem(
        offer("default", huge).await.unwrap(),
        413,
        "payload_too_large",
    )
    .await;
    let r = c
        .post(s.url("/api/issuers/default/offers"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{\"credential_configuration_ids\": [")
        .send()
        .await
        .unwrap();
    expect_problem(r, 400, "invalid_json").await;
    let r = s
        .anon()
        .post_resp("/api/issuers/default/offers", &json!({}))
        .await;
    expect_problem(r, 401, "unauthorized").await;

    // token endpoint garbage
    let r = c
        .post(s.url("/issuers/default/token"))
        .body("%%%=&&")
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (st, e) = token(&s, "default", "made-up-code", None).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));
    let r = c
        .post(s.url("/issuers/default/token"))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
    let r = c
        .post(s.url("/issuers/default/credential"))
        .bearer_auth("x")
        .body("{{{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    s.stop();
}

#[tokio::test]
async fn signing_key_is_stable_across_restarts() {
    let s = Server::start().await;
    let before: Value = s.admin().get("/api/issuers/default").await;
    let dir = s.stop();
    let s = Server::builder().dir(dir).start().await;
    let after: Value = s.admin().get("/api/issuers/default").await;
    assert_eq!(before["did"], after["did"]);
    assert_eq!(before["key_fingerprint"], after["key_fingerprint"]);
    s.stop();
}
