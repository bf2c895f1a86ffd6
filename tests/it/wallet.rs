//! Wallet role end to end in one process: accounts, wallets, keys, DIDs, receiving from our issuer
//! and presenting to our verifier per format with selective disclosure, status, isolation.

use serde_json::{json, Value};

use crate::api::WalletUser;
use crate::common::{expect_problem, Server};
use crate::holder::create_offer;

fn identity() -> Value {
    json!({"given_name": "Erika", "family_name": "Mustermann", "birthdate": "1984-01-26", "email": "erika@example.org"})
}

pub(crate) async fn verify_session(s: &Server, query: Value) -> Value {
    let r = s
        .admin()
        .post_resp("/api/verifiers/default/sessions", &query)
        .await;
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

/// What `u`'s wallet answers `POST /exchange/resolve-request` for `request` (any status).
async fn resolve_request(s: &Server, u: &WalletUser, request: &str) -> Value {
    u.send(
        s,
        reqwest::Method::POST,
        "/exchange/resolve-request",
        Some(json!({"request": request})),
    )
    .await
    .json()
    .await
    .unwrap()
}

pub(crate) async fn session_result(s: &Server, id: &str) -> Value {
    s.admin()
        .get(format!("/api/verifiers/default/sessions/{id}"))
        .await
}

#[tokio::test]
async fn receive_and_present_every_format_with_selective_disclosure() {
    let s = Server::start().await;
    let u = WalletUser::signup(&s, "erika@example.org").await;
    use reqwest::Method as M;

    for (config, query) in [
        (
            "IdentityCredential_dc_sd_jwt",
            // claim sets: the first one the credential satisfies (family_name alone) is disclosed,
            // not every claim the query names
            json!({"dcql_query": {"credentials": [{"id": "pid", "format": "dc+sd-jwt", "meta": {},
                "claims": [{"id": "n", "path": ["nickname"]}, {"id": "f", "path": ["family_name"]}, {"id": "g", "path": ["given_name"]}],
                "claim_sets": [["n"], ["f"], ["f", "g"]]}]}}),
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
        let resolved: Value = u
            .send(
                &s,
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
        let r = u
            .send(
                &s,
                M::POST,
                "/exchange/accept-offer",
                Some(json!({"offer": offer["offer_uri"]})),
            )
            .await;
        expect_problem(r, 422, "validation_failed").await;
        let r = u
            .send(
                &s,
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
        let matches = resolve_request(&s, &u, req).await;
        assert_eq!(matches["satisfiable"], true, "{matches}");
        assert!(matches["verified_signer"]
            .as_str()
            .unwrap()
            .starts_with("did:key:"));
        let r = u
            .send(
                &s,
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
    let all: Vec<Value> = u
        .send(&s, M::GET, "/credentials", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    let sd: Vec<Value> = u
        .send(&s, M::GET, "/credentials?format=dc%2Bsd-jwt", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(sd.len(), 1);
    let detail: Value = u
        .send(
            &s,
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
    let history: Vec<Value> = u
        .send(&s, M::GET, "/history", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history.len(), 6);
    assert_eq!(history[0]["kind"], "present");

    // DCQL credential_sets: one option per required set (the first this wallet answers: no
    // mDL here, so the PID), an optional set only when selected
    let sets_query = json!({"dcql_query": {"credentials": [
            {"id": "mdl", "format": "mso_mdoc", "meta": {"doctype_value": "org.iso.18013.5.1.mDL"}},
            {"id": "pid", "format": "dc+sd-jwt", "meta": {}, "claims": [{"path": ["family_name"]}]},
            {"id": "mail", "format": "jwt_vc_json", "meta": {"type_values": [["VerifiableCredential"]]},
                "claims": [{"path": ["credentialSubject", "email"]}]}],
        "credential_sets": [{"options": [["mdl"], ["pid"]]}, {"required": false, "options": [["mail"]]}]}});
    let jwt_vc = all.iter().find(|c| c["format"] == "jwt_vc_json").unwrap()["id"].clone();
    for (selections, presented) in [(json!({}), 1), (json!({"mail": jwt_vc}), 2)] {
        let sess = verify_session(&s, sets_query.clone()).await;
        let req = sess["authorization_request"].as_str().unwrap();
        let matches = resolve_request(&s, &u, req).await;
        assert_eq!(matches["satisfiable"], true, "{matches}");
        let r = u
            .send(
                &s,
                M::POST,
                "/exchange/present",
                Some(json!({"request": req, "selections": selections,
                    "request_digest": matches["request_digest"]})),
            )
            .await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let out: Value = r.json().await.unwrap();
        assert_eq!(
            out["presented"].as_array().unwrap().len(),
            presented,
            "{out}"
        );
        let result = session_result(&s, sess["id"].as_str().unwrap()).await;
        assert_eq!(result["verified"], true, "{result}");
        assert_eq!(
            result["credentials"].as_array().unwrap().len(),
            presented,
            "{result}"
        );
    }

    // status check follows revocation at the issuer
    let status: Value = u
        .send(
            &s,
            M::POST,
            &format!("/credentials/{}/status", sd[0]["id"].as_str().unwrap()),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "valid");
    let issued: Vec<Value> = s.admin().get_as("/api/issuers/default/credentials").await;
    for c in issued {
        s.admin()
            .post_resp(
                &format!(
                    "/api/issuers/default/credentials/{}/revoke",
                    c["id"].as_str().unwrap()
                ),
                &serde_json::json!({}),
            )
            .await;
    }
    for c in &all {
        let status: Value = u
            .send(
                &s,
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
    use reqwest::Method as M;
    let a = WalletUser::signup(&s, "a@example.org").await;
    let b = WalletUser::signup(&s, "b@example.org").await;
    // duplicate email, weak password, bad email
    let r = s
        .anon()
        .post_resp(
            "/wallet/auth/register",
            &json!({"email": "A@example.org", "password": "another password"}),
        )
        .await;
    expect_problem(r, 409, "conflict").await;
    let r = s
        .anon()
        .post_resp(
            "/wallet/auth/register",
            &json!({"email": "c@example.org", "password": "short"}),
        )
        .await;
    expect_problem(r, 422, "validation_failed").await;
    // another account's wallet is a 404, not a 403
    let stolen = WalletUser {
        token: b.token.clone(),
        wallet: a.wallet.clone(),
    };
    expect_problem(
        stolen.send(&s, M::GET, "/credentials", None).await,
        404,
        "not_found",
    )
    .await;
    // a share is an invitation: nothing opens for b until it accepts
    let r = s
        .bearer(&a.token)
        .post_resp(
            &format!("/wallet/wallets/{}/members", a.wallet),
            &json!({"email": "b@example.org", "role": "viewer"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let invited: Value = r.json().await.unwrap();
    assert_eq!(
        (invited["email"].as_str(), invited["role"].as_str()),
        (Some("b@example.org"), Some("viewer"))
    );
    expect_problem(
        stolen.send(&s, M::GET, "/credentials", None).await,
        404,
        "not_found",
    )
    .await;
    let pending = s.bearer(&b.token).get("/wallet/invitations").await;
    assert_eq!(pending[0]["wallet"], a.wallet.as_str(), "{pending}");
    assert_eq!(pending[0]["invited_by_email"], "a@example.org", "{pending}");
    let listed = s
        .bearer(&a.token)
        .get(&format!("/wallet/wallets/{}/invitations", a.wallet))
        .await;
    assert_eq!(listed[0]["email"], "b@example.org", "{listed}");
    let r = s
        .bearer(&b.token)
        .post_resp(&format!("/wallet/invitations/{}", a.wallet), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    // viewers read but cannot change
    assert_eq!(
        stolen.send(&s, M::GET, "/credentials", None).await.status(),
        200
    );
    expect_problem(
        stolen.send(&s, M::POST, "/keys", Some(json!({}))).await,
        403,
        "forbidden",
    )
    .await;
    // the last owner cannot be demoted (nobody could manage or delete the wallet then)
    let r = s
        .bearer(&a.token)
        .post_resp(
            &format!("/wallet/wallets/{}/members", a.wallet),
            &json!({"email": "a@example.org", "role": "viewer"}),
        )
        .await;
    expect_problem(r, 409, "conflict").await;

    // members: the owner lists them (a viewer may not: emails are personal)
    let members_path = format!("/wallet/wallets/{}/members", a.wallet);
    let members: Vec<Value> =
        serde_json::from_value(s.bearer(&a.token).get(&members_path).await).unwrap();
    let id_of = |email: &str| {
        let m = members.iter().find(|m| m["email"] == email).unwrap();
        m["account"].as_str().unwrap().to_string()
    };
    assert_eq!(members.len(), 2, "{members:?}");
    let (a_id, b_id) = (id_of("a@example.org"), id_of("b@example.org"));
    expect_problem(
        s.bearer(&b.token).get_resp(&members_path).await,
        403,
        "forbidden",
    )
    .await;
    // the last owner can neither leave nor be removed; a viewer removes nobody else
    let r = s
        .bearer(&a.token)
        .delete_resp(format!("{members_path}/{a_id}"))
        .await;
    expect_problem(r, 409, "conflict").await;
    let r = s
        .bearer(&b.token)
        .delete_resp(format!("{members_path}/{a_id}"))
        .await;
    expect_problem(r, 403, "forbidden").await;
    // a viewer leaves, and its access ends with it
    let r = s
        .bearer(&b.token)
        .delete_resp(format!("{members_path}/{b_id}"))
        .await;
    assert_eq!(r.status(), 204);
    expect_problem(
        stolen.send(&s, M::GET, "/credentials", None).await,
        404,
        "not_found",
    )
    .await;
    // shared again (invited and accepted), then removed by the owner; removing a non-member
    // is a 404
    let r = s
        .bearer(&a.token)
        .post_resp(
            &members_path,
            &json!({"email": "b@example.org", "role": "viewer"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let r = s
        .bearer(&b.token)
        .post_resp(&format!("/wallet/invitations/{}", a.wallet), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        stolen.send(&s, M::GET, "/credentials", None).await.status(),
        200
    );
    let r = s
        .bearer(&a.token)
        .delete_resp(format!("{members_path}/{b_id}"))
        .await;
    assert_eq!(r.status(), 204);
    expect_problem(
        stolen.send(&s, M::GET, "/credentials", None).await,
        404,
        "not_found",
    )
    .await;
    let r = s
        .bearer(&a.token)
        .delete_resp(format!("{members_path}/{b_id}"))
        .await;
    expect_problem(r, 404, "not_found").await;
    let members: Vec<Value> =
        serde_json::from_value(s.bearer(&a.token).get(&members_path).await).unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0]["role"], "owner");

    // keys: generate each type, import, export public, delete
    for kt in ["Ed25519", "P-256", "secp256k1"] {
        let k: Value = a
            .send(&s, M::POST, "/keys", Some(json!({"key_type": kt})))
            .await
            .json()
            .await
            .unwrap();
        assert!(k["public_jwk"].get("d").is_none(), "{k}");
    }
    let imported = idstack::crypto::SigningKey::generate(idstack::crypto::KeyType::P256);
    let jwk: Value = serde_json::from_str(&imported.to_private_jwk()).unwrap();
    let r = a
        .send(&s, M::POST, "/keys/import", Some(json!({"jwk": jwk})))
        .await;
    assert_eq!(r.status(), 201);
    let k: Value = r.json().await.unwrap();
    assert_eq!(k["public_jwk"], imported.verifying_key().to_jwk());
    expect_problem(
        a.send(&s, M::POST, "/keys/import", Some(json!({"jwk": jwk})))
            .await,
        409,
        "conflict",
    )
    .await;
    expect_problem(
        a.send(
            &s,
            M::POST,
            "/keys/import",
            Some(json!({"jwk": {"kty": "RSA"}})),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    let keys: Vec<Value> = a
        .send(&s, M::GET, "/keys", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(keys.len(), 4);
    // DIDs: did:key (default), did:jwk, did:web served at its path
    let d1: Value = a
        .send(&s, M::POST, "/dids", Some(json!({"method": "key"})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d1["is_default"], true);
    let d2: Value = a
        .send(
            &s,
            M::POST,
            "/dids",
            Some(json!({"method": "jwk", "key_id": k["id"]})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(d2["did"].as_str().unwrap().starts_with("did:jwk:"));
    let d3: Value = a
        .send(&s, M::POST, "/dids", Some(json!({"method": "web"})))
        .await
        .json()
        .await
        .unwrap();
    let resolved = idstack::crypto::did::resolve(
        d3["verification_method"].as_str().unwrap(),
        &["authentication"],
        &reqwest::Client::new(),
    )
    .await;
    assert!(resolved.is_ok(), "{resolved:?}");
    assert_eq!(
        a.send(
            &s,
            M::POST,
            "/dids/default",
            Some(json!({"did": d2["did"]}))
        )
        .await
        .status(),
        204
    );
    let dids: Vec<Value> = a
        .send(&s, M::GET, "/dids", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(dids.iter().filter(|d| d["is_default"] == true).count(), 1);
    expect_problem(
        a.send(
            &s,
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
    let r = a.send(&s, M::POST, "/exchange/resolve-offer", Some(json!({"offer": "openid-credential-offer://?credential_offer_uri=http%3A%2F%2F127.0.0.1%3A9%2Fnothing"}))).await;
    expect_problem(r, 424, "remote_party_failed").await;
    let r = a
        .send(
            &s,
            M::POST,
            "/exchange/resolve-offer",
            Some(json!({"offer": "hello"})),
        )
        .await;
    expect_problem(r, 422, "validation_failed").await;

    // rename, logout, admin disable, lockout
    let r = s
        .bearer(&a.token)
        .put_resp(
            &format!("/wallet/wallets/{}", a.wallet),
            &json!({"name": "renamed"}),
        )
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "renamed");
    let me: Value = s.bearer(&b.token).get("/wallet/auth/me").await;
    assert_eq!(me["email"], "b@example.org");
    assert_eq!(
        s.bearer(&b.token)
            .post_resp("/wallet/auth/logout", &serde_json::json!({}))
            .await
            .status(),
        204
    );
    expect_problem(
        s.bearer(&b.token).get_resp("/wallet/auth/me").await,
        401,
        "unauthorized",
    )
    .await;
    let accounts: Vec<Value> = s.admin().get_as("/api/wallet/accounts").await;
    assert_eq!(accounts.len(), 2);
    let aid = accounts
        .iter()
        .find(|x| x["email"] == "a@example.org")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.admin()
        .post_resp(
            &format!("/api/wallet/accounts/{aid}/disable"),
            &serde_json::json!({}),
        )
        .await;
    expect_problem(
        s.bearer(&a.token).get_resp("/wallet/auth/me").await,
        403,
        "forbidden",
    )
    .await;
    for _ in 0..5 {
        let r = s
            .anon()
            .post_resp(
                "/wallet/auth/login",
                &json!({"email": "b@example.org", "password": "wrong password!"}),
            )
            .await;
        expect_problem(r, 401, "unauthorized").await;
    }
    let r = s
        .anon()
        .post_resp(
            "/wallet/auth/login",
            &json!({"email": "b@example.org", "password": "correct horse battery"}),
        )
        .await;
    assert!(r.headers().get("retry-after").is_some());
    expect_problem(r, 429, "too_many_requests").await;
    // delete a wallet
    let c2 = WalletUser::signup(&s, "c@example.org").await;
    assert_eq!(
        s.bearer(&c2.token)
            .delete_resp(&format!("/wallet/wallets/{}", c2.wallet))
            .await
            .status(),
        204
    );
    expect_problem(c2.send(&s, M::GET, "/keys", None).await, 404, "not_found").await;
    // a password change over HTTP ends every session of the account, the caller's too, and
    // logging out everywhere keeps the password
    let login = |password: &'static str| {
        let s = &s;
        async move {
            s.anon()
                .post_resp(
                    "/wallet/auth/login",
                    &json!({"email": "c@example.org", "password": password}),
                )
                .await
        }
    };
    let r = login(crate::api::PASSWORD).await;
    assert_eq!(r.status(), 200);
    let other: Value = r.json().await.unwrap();
    let other = other["token"].as_str().unwrap().to_string();
    let change =
        |current: &str, new: &str| json!({"current_password": current, "new_password": new});
    let r = s
        .bearer(&c2.token)
        .post_resp(
            "/wallet/auth/password",
            &change("wrong password!", "a new passphrase"),
        )
        .await;
    expect_problem(r, 403, "forbidden").await;
    let r = s
        .anon()
        .post_resp(
            "/wallet/auth/password",
            &change(crate::api::PASSWORD, "a new passphrase"),
        )
        .await;
    expect_problem(r, 401, "unauthorized").await;
    let r = s
        .bearer(&c2.token)
        .post_resp(
            "/wallet/auth/password",
            &change(crate::api::PASSWORD, "a new passphrase"),
        )
        .await;
    assert_eq!(r.status(), 204);
    for token in [&c2.token, &other] {
        let r = s.bearer(token).get_resp("/wallet/auth/me").await;
        expect_problem(r, 401, "unauthorized").await;
    }
    expect_problem(login(crate::api::PASSWORD).await, 401, "unauthorized").await;
    let r = login("a new passphrase").await;
    assert_eq!(r.status(), 200);
    let fresh: Value = r.json().await.unwrap();
    let fresh = fresh["token"].as_str().unwrap().to_string();
    let r = s
        .bearer(&fresh)
        .post_resp("/wallet/auth/logout-everywhere", &json!({}))
        .await;
    assert_eq!(r.status(), 204);
    let r = s.bearer(&fresh).get_resp("/wallet/auth/me").await;
    expect_problem(r, 401, "unauthorized").await;
    assert_eq!(login("a new passphrase").await.status(), 200);
    s.stop();
}

/// A verifier that answers its `request_uri` with a harmless query to resolve-request and a
/// greedier one to present (attacker review: present fetched the request again, and without
/// `request_digest` answered whatever came back): present answers the request that was resolved
/// and shown, without fetching it again.
#[tokio::test]
async fn present_answers_the_request_that_was_resolved() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start().await;
    let u = WalletUser::signup(&s, "shown@example.org").await;
    let offer = create_offer(&s, "default", json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"], "claims": identity()})).await;
    let (st, body) = u
        .call(
            &s,
            "/exchange/accept-offer",
            json!({"offer": offer["offer_uri"]}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let ask = |claims: Value| json!({"dcql_query": {"credentials": [{"id": "pid", "format": "dc+sd-jwt", "meta": {}, "claims": claims}]}});
    let shown = verify_session(&s, ask(json!([{"path": ["family_name"]}]))).await;
    let greedy = verify_session(
        &s,
        ask(json!([{"path": ["family_name"]}, {"path": ["given_name"]}, {"path": ["email"]}])),
    )
    .await;
    let param = |sess: &Value, name: &str| {
        let url = reqwest::Url::parse(sess["authorization_request"].as_str().unwrap()).unwrap();
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    let object = |sess: &Value| {
        let uri = param(sess, "request_uri");
        async move {
            crate::common::client()
                .get(uri)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    // the relay: the shown request first, the greedy one after
    let answers = Arc::new([object(&shown).await, object(&greedy).await]);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            let n = h.fetch_add(1, Ordering::SeqCst).min(1);
            let body = answers[n].clone();
            tokio::spawn(async move {
                let _ = sock.read(&mut [0u8; 8192]).await;
                let _ = sock
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/oauth-authz-req+jwt\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    let request = serde_urlencoded::to_string([
        ("client_id", param(&shown, "client_id")),
        ("request_uri", format!("http://127.0.0.1:{port}/request")),
    ])
    .map(|q| format!("openid4vp://?{q}"))
    .unwrap();
    let (st, matches) = u
        .call(&s, "/exchange/resolve-request", json!({"request": request}))
        .await;
    assert_eq!(st, 200, "{matches}");
    assert_eq!(
        matches["dcql_query"]["credentials"][0]["claims"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // no request_digest sent: what was resolved is what is answered
    let (st, out) = u
        .call(&s, "/exchange/present", json!({"request": request}))
        .await;
    assert_eq!(st, 200, "{out}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the request was fetched again"
    );
    let result = session_result(&s, shown["id"].as_str().unwrap()).await;
    assert_eq!(result["verified"], true, "{result}");
    let claims = &result["credentials"][0]["claims"];
    assert!(
        claims.get("given_name").is_none() && claims.get("email").is_none(),
        "{claims}"
    );
    let result = session_result(&s, greedy["id"].as_str().unwrap()).await;
    assert_ne!(result["verified"], true, "{result}");
    s.stop();
}
