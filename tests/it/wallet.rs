//! Wallet role end to end in one process: accounts, wallets, keys, DIDs, receiving from our issuer
//! and presenting to our verifier per format with selective disclosure, status, isolation.

use serde_json::{json, Value};

use crate::common::{client, expect_problem, Server, ADMIN_TOKEN};
use crate::holder::create_offer;

pub(crate) struct User {
    pub(crate) token: String,
    pub(crate) wallet: String,
}

pub(crate) async fn signup(s: &Server, email: &str) -> User {
    let c = client();
    let r = c
        .post(s.url("/wallet/auth/register"))
        .json(&json!({"email": email, "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let login: Value = c
        .post(s.url("/wallet/auth/login"))
        .json(&json!({"email": email, "password": "correct horse battery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().unwrap().to_string();
    let w: Value = c
        .post(s.url("/wallet/wallets"))
        .bearer_auth(&token)
        .json(&json!({"name": "main"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    User {
        token,
        wallet: w["id"].as_str().unwrap().to_string(),
    }
}

pub(crate) async fn call(
    s: &Server,
    u: &User,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let url = s.url(&format!("/wallet/wallets/{}{path}", u.wallet));
    let mut rb = client().request(method, url).bearer_auth(&u.token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    rb.send().await.unwrap()
}

fn identity() -> Value {
    json!({"given_name": "Erika", "family_name": "Mustermann", "birthdate": "1984-01-26", "email": "erika@example.org"})
}

pub(crate) async fn verify_session(s: &Server, query: Value) -> Value {
    let r = client()
        .post(s.url("/api/verifiers/default/sessions"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&query)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

pub(crate) async fn session_result(s: &Server, id: &str) -> Value {
    client()
        .get(s.url(&format!("/api/verifiers/default/sessions/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn receive_and_present_every_format_with_selective_disclosure() {
    let s = Server::start().await;
    let u = signup(&s, "erika@example.org").await;
    use reqwest::Method as M;

    for (config, query) in [
        (
            "IdentityCredential_dc_sd_jwt",
            json!({"dcql_query": {"credentials": [{"id": "pid", "format": "dc+sd-jwt", "meta": {}, "claims": [{"path": ["family_name"]}]}]}}),
        ),
        (
            "IdentityCredential_jwt_vc_json",
            json!({"dcql_query": {"credentials": [{"id": "idc", "format": "jwt_vc_json", "meta": {"type_values": [["VerifiableCredential"]]}, "claims": [{"path": ["credentialSubject", "email"]}]}]}, "response_mode": "direct_post.jwt"}),
        ),
        (
            "IdentityCredential_ldp_vc",
            json!({"dcql_query": {"credentials": [{"id": "ldp", "format": "ldp_vc", "meta": {"type_values": [["IdentityCredential"]]}, "claims": [{"path": ["credentialSubject", "birthdate"]}]}]}}),
        ),
    ] {
        let offer = create_offer(&s, "default", json!({"credential_configuration_ids": [config], "claims": identity(), "tx_code": {"length": 6}})).await;
        let resolved: Value = call(
            &s,
            &u,
            M::POST,
            "/exchange/resolve-offer",
            Some(json!({"offer": offer["offer_uri"]})),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(resolved["credentials"][0]["id"], config, "{resolved}");
        assert_eq!(resolved["tx_code"]["length"], 6);
        // without the tx_code the issuer refuses: a clear 4xx, nothing stored
        let r = call(
            &s,
            &u,
            M::POST,
            "/exchange/accept-offer",
            Some(json!({"offer": offer["offer_uri"]})),
        )
        .await;
        expect_problem(r, 422, "validation_failed").await;
        let r = call(
            &s,
            &u,
            M::POST,
            "/exchange/accept-offer",
            Some(json!({"offer": offer["offer_uri"], "tx_code": offer["tx_code"]})),
        )
        .await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let stored: Vec<Value> = r.json().await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0]["configuration_id"], config);

        let sess = verify_session(&s, query).await;
        let req = sess["authorization_request"].as_str().unwrap();
        let matches: Value = call(
            &s,
            &u,
            M::POST,
            "/exchange/resolve-request",
            Some(json!({"request": req})),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(matches["satisfiable"], true, "{matches}");
        assert!(matches["verified_signer"]
            .as_str()
            .unwrap()
            .starts_with("did:key:"));
        let r = call(
            &s,
            &u,
            M::POST,
            "/exchange/present",
            Some(json!({"request": req})),
        )
        .await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let result = session_result(&s, sess["id"].as_str().unwrap()).await;
        assert_eq!(result["verified"], true, "{result}");
        let claims = &result["credentials"][0]["claims"];
        if config.ends_with("sd_jwt") {
            assert_eq!(claims["family_name"], "Mustermann");
            assert!(
                claims.get("email").is_none() && claims.get("given_name").is_none(),
                "only the requested claim: {claims}"
            );
        } else if config.ends_with("ldp_vc") {
            assert_eq!(claims["birthdate"], "1984-01-26");
            assert_eq!(result["credentials"][0]["format"], "ldp_vc");
        } else {
            assert_eq!(claims["email"], "erika@example.org");
        }
    }

    // listing, filters, detail with disclosures, history
    let all: Vec<Value> = call(&s, &u, M::GET, "/credentials", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    let sd: Vec<Value> = call(&s, &u, M::GET, "/credentials?format=dc%2Bsd-jwt", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(sd.len(), 1);
    let detail: Value = call(
        &s,
        &u,
        M::GET,
        &format!("/credentials/{}", sd[0]["id"].as_str().unwrap()),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(detail["claims"]["given_name"], "Erika");
    assert_eq!(detail["disclosable"].as_array().unwrap().len(), 4);
    let history: Vec<Value> = call(&s, &u, M::GET, "/history", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history.len(), 6);
    assert_eq!(history[0]["kind"], "present");

    // status check follows revocation at the issuer
    let status: Value = call(
        &s,
        &u,
        M::POST,
        &format!("/credentials/{}/status", sd[0]["id"].as_str().unwrap()),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(status["status"], "valid");
    let issued: Vec<Value> = client()
        .get(s.url("/api/issuers/default/credentials"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for c in issued {
        client()
            .post(s.url(&format!(
                "/api/issuers/default/credentials/{}/revoke",
                c["id"].as_str().unwrap()
            )))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
    }
    for c in &all {
        let status: Value = call(
            &s,
            &u,
            M::POST,
            &format!("/credentials/{}/status", c["id"].as_str().unwrap()),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(status["status"], "revoked", "{c}");
    }
    s.stop();
}

#[tokio::test]
async fn accounts_isolation_roles_keys_and_dids() {
    let s = Server::start().await;
    let c = client();
    use reqwest::Method as M;
    let a = signup(&s, "a@example.org").await;
    let b = signup(&s, "b@example.org").await;
    // duplicate email, weak password, bad email
    let r = c
        .post(s.url("/wallet/auth/register"))
        .json(&json!({"email": "A@example.org", "password": "another password"}))
        .send()
        .await
        .unwrap();
    expect_problem(r, 409, "conflict").await;
    let r = c
        .post(s.url("/wallet/auth/register"))
        .json(&json!({"email": "c@example.org", "password": "short"}))
        .send()
        .await
        .unwrap();
    expect_problem(r, 422, "validation_failed").await;
    // another account's wallet is a 404, not a 403
    let stolen = User {
        token: b.token.clone(),
        wallet: a.wallet.clone(),
    };
    expect_problem(
        call(&s, &stolen, M::GET, "/credentials", None).await,
        404,
        "not_found",
    )
    .await;
    // viewers read but cannot change
    let r = c
        .post(s.url(&format!("/wallet/wallets/{}/members", a.wallet)))
        .bearer_auth(&a.token)
        .json(&json!({"email": "b@example.org", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        call(&s, &stolen, M::GET, "/credentials", None)
            .await
            .status(),
        200
    );
    expect_problem(
        call(&s, &stolen, M::POST, "/keys", Some(json!({}))).await,
        403,
        "forbidden",
    )
    .await;

    // keys: generate each type, import, export public, delete
    for kt in ["Ed25519", "P-256", "secp256k1"] {
        let k: Value = call(&s, &a, M::POST, "/keys", Some(json!({"key_type": kt})))
            .await
            .json()
            .await
            .unwrap();
        assert!(k["public_jwk"].get("d").is_none(), "{k}");
    }
    let imported = idstack::crypto::SigningKey::generate(idstack::crypto::KeyType::P256);
    let jwk: Value = serde_json::from_str(&imported.to_private_jwk()).unwrap();
    let r = call(&s, &a, M::POST, "/keys/import", Some(json!({"jwk": jwk}))).await;
    assert_eq!(r.status(), 201);
    let k: Value = r.json().await.unwrap();
    assert_eq!(k["public_jwk"], imported.verifying_key().to_jwk());
    expect_problem(
        call(&s, &a, M::POST, "/keys/import", Some(json!({"jwk": jwk}))).await,
        409,
        "conflict",
    )
    .await;
    expect_problem(
        call(
            &s,
            &a,
            M::POST,
            "/keys/import",
            Some(json!({"jwk": {"kty": "RSA"}})),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    let keys: Vec<Value> = call(&s, &a, M::GET, "/keys", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(keys.len(), 4);
    // DIDs: did:key (default), did:jwk, did:web served at its path
    let d1: Value = call(&s, &a, M::POST, "/dids", Some(json!({"method": "key"})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d1["is_default"], true);
    let d2: Value = call(
        &s,
        &a,
        M::POST,
        "/dids",
        Some(json!({"method": "jwk", "key_id": k["id"]})),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(d2["did"].as_str().unwrap().starts_with("did:jwk:"));
    let d3: Value = call(&s, &a, M::POST, "/dids", Some(json!({"method": "web"})))
        .await
        .json()
        .await
        .unwrap();
    let resolved = idstack::crypto::did::resolve(
        d3["verification_method"].as_str().unwrap(),
        &reqwest::Client::new(),
    )
    .await;
    assert!(resolved.is_ok(), "{resolved:?}");
    assert_eq!(
        call(
            &s,
            &a,
            M::POST,
            "/dids/default",
            Some(json!({"did": d2["did"]}))
        )
        .await
        .status(),
        204
    );
    let dids: Vec<Value> = call(&s, &a, M::GET, "/dids", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(dids.iter().filter(|d| d["is_default"] == true).count(), 1);
    expect_problem(
        call(
            &s,
            &a,
            M::DELETE,
            &format!("/keys/{}", k["id"].as_str().unwrap()),
            None,
        )
        .await,
        409,
        "conflict",
    )
    .await;

    // a malicious offer (unreachable issuer) is a clear 4xx
    let r = call(&s, &a, M::POST, "/exchange/resolve-offer", Some(json!({"offer": "openid-credential-offer://?credential_offer_uri=http%3A%2F%2F127.0.0.1%3A9%2Fnothing"}))).await;
    expect_problem(r, 424, "remote_party_failed").await;
    let r = call(
        &s,
        &a,
        M::POST,
        "/exchange/resolve-offer",
        Some(json!({"offer": "hello"})),
    )
    .await;
    expect_problem(r, 422, "validation_failed").await;

    // rename, logout, admin disable, lockout
    let r = c
        .put(s.url(&format!("/wallet/wallets/{}", a.wallet)))
        .bearer_auth(&a.token)
        .json(&json!({"name": "renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "renamed");
    let me: Value = c
        .get(s.url("/wallet/auth/me"))
        .bearer_auth(&b.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "b@example.org");
    assert_eq!(
        c.post(s.url("/wallet/auth/logout"))
            .bearer_auth(&b.token)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    expect_problem(
        c.get(s.url("/wallet/auth/me"))
            .bearer_auth(&b.token)
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized",
    )
    .await;
    let accounts: Vec<Value> = c
        .get(s.url("/api/wallet/accounts"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(accounts.len(), 2);
    let aid = accounts
        .iter()
        .find(|x| x["email"] == "a@example.org")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.post(s.url(&format!("/api/wallet/accounts/{aid}/disable")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    expect_problem(
        c.get(s.url("/wallet/auth/me"))
            .bearer_auth(&a.token)
            .send()
            .await
            .unwrap(),
        403,
        "forbidden",
    )
    .await;
    for _ in 0..5 {
        let r = c
            .post(s.url("/wallet/auth/login"))
            .json(&json!({"email": "b@example.org", "password": "wrong password!"}))
            .send()
            .await
            .unwrap();
        expect_problem(r, 401, "unauthorized").await;
    }
    let r = c
        .post(s.url("/wallet/auth/login"))
        .json(&json!({"email": "b@example.org", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("retry-after").is_some());
    expect_problem(r, 429, "too_many_requests").await;
    // delete a wallet
    let c2 = signup(&s, "c@example.org").await;
    assert_eq!(
        c.delete(s.url(&format!("/wallet/wallets/{}", c2.wallet)))
            .bearer_auth(&c2.token)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    expect_problem(call(&s, &c2, M::GET, "/keys", None).await, 404, "not_found").await;
    s.stop();
}
