//! The adversarial corpus (issue #17): forged and malformed credentials and presentations sent to
//! the OID4VP response endpoint and to VC-API verify. Every case must be rejected — with the
//! specific policy that failed, and never with a 5xx — while the genuine credential still verifies.
//! The reported forgery (an issuer's payload re-signed with the attacker's did:key named in the
//! header `kid`) also runs end to end through the real Animo wallet.

use idstack::crypto::{b64url, did, jws, sdjwt, KeyType, SigningKey};
use serde_json::{json, Map, Value};

use crate::common::{client, Server, ADMIN_TOKEN};
use crate::holder::{create_offer, full_flow, now};
use crate::interop::node;

struct Request {
    id: String,
    verifier: String,
    nonce: String,
    client_id: String,
    state: String,
    response_uri: String,
}

async fn open(s: &Server, verifier: &str, body: Value) -> Request {
    let r = s
        .admin()
        .post_resp(&format!("/api/verifiers/{verifier}/sessions"), &body)
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let sess: Value = r.json().await.unwrap();
    let jwt = client()
        .get(sess["request_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (_, p, _, _) = jws::decode_unverified(&jwt).unwrap();
    Request {
        id: sess["id"].as_str().unwrap().into(),
        verifier: verifier.into(),
        nonce: p["nonce"].as_str().unwrap().into(),
        client_id: p["client_id"].as_str().unwrap().into(),
        state: p["state"].as_str().unwrap().into(),
        response_uri: p["response_uri"].as_str().unwrap().into(),
    }
}

/// Posts `vp_token` (as it is) with the session's state; returns (HTTP status, its JSON answer).
async fn post_vp_token(req: &Request, vp_token: String) -> (u16, Value) {
    let r = client()
        .post(&req.response_uri)
        .form(&[
            ("vp_token", vp_token.as_str()),
            ("state", req.state.as_str()),
        ])
        .send()
        .await
        .unwrap();
    (
        r.status().as_u16(),
        r.json::<Value>().await.unwrap_or_default(),
    )
}

/// Posts `vp_token` for query `q`; returns (HTTP status, session result).
async fn respond(s: &Server, req: &Request, q: &str, presentation: Value) -> (u16, Value) {
    let vp_token = json!({ q: [presentation] }).to_string();
    let (status, _) = post_vp_token(req, vp_token).await;
    assert!(status < 500, "a forged presentation caused a {status}");
    let result: Value = s
        .admin()
        .get(&format!(
            "/api/verifiers/{}/sessions/{}",
            req.verifier, req.id
        ))
        .await;
    (status, result)
}

fn policy(r: &Value, name: &str) -> (bool, String) {
    let p = r["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no policy {name} in {r}"));
    (
        p["passed"].as_bool().unwrap(),
        p["reason"].as_str().unwrap_or_default().to_string(),
    )
}

/// Asserts the presentation was refused by `failing` (and its reason mentions `why`).
async fn refused(s: &Server, req: &Request, q: &str, pres: Value, failing: &str, why: &str) {
    let (status, r) = respond(s, req, q, pres).await;
    assert_eq!(status, 400, "accepted: {r}");
    assert_eq!(r["verified"], false, "{r}");
    let (passed, reason) = policy(&r, failing);
    assert!(!passed, "{failing} passed: {r}");
    assert!(
        reason.contains(why),
        "{failing}: expected `{why}` in `{reason}`"
    );
}

fn split_jwt(t: &str) -> (Value, Value) {
    let (h, p, _, _) = jws::decode_unverified(t).unwrap();
    (h, p)
}

fn enc(v: &Value) -> String {
    b64url(v.to_string())
}

fn kb(holder: &SigningKey, sd: &str, aud: &str, nonce: &str, iat: i64) -> String {
    jws::sign(
        holder,
        json!({"typ": "kb+jwt"}),
        &json!({"iat": iat, "aud": aud, "nonce": nonce, "sd_hash": sdjwt::sd_hash(sd)}),
    )
}

/// `<issuer jwt>~<disclosures>~<kb>` for `req`.
fn sd_present(holder: &SigningKey, jwt: &str, disclosures: &[String], req: &Request) -> String {
    let mut base = format!("{jwt}~");
    for d in disclosures {
        base.push_str(d);
        base.push('~');
    }
    let k = kb(holder, &base, &req.client_id, &req.nonce, now());
    format!("{base}{k}")
}

fn sd_query() -> Value {
    json!({"dcql_query": {"credentials": [{"id": "pid", "format": "dc+sd-jwt", "meta": {}, "claims": [{"path": ["given_name"]}]}]}})
}

fn attacker_did(kt: KeyType, jwk: bool) -> (SigningKey, String, String) {
    let k = SigningKey::generate(kt);
    let d = if jwk {
        did::did_jwk(&k.verifying_key())
    } else {
        did::did_key(&k.verifying_key())
    };
    let vm = did::verification_method(&d);
    (k, d, vm)
}

/// An SD-JWT VC issued by `key` as `iss` (self-consistent: it passes the binding), with
/// `extra` merged into the payload.
fn self_issued_sd(
    key: &SigningKey,
    iss: &str,
    vm: &str,
    holder: &SigningKey,
    extra: Value,
) -> (String, Vec<String>) {
    sd_jwt_by(
        key,
        json!({"typ": "dc+sd-jwt", "kid": vm}),
        iss,
        holder,
        extra,
    )
}

/// An SD-JWT VC (issuer JWT, disclosures) signed by `key` under `header` as `iss`, bound to
/// `holder`, disclosing `given_name`, with `extra` merged into the payload.
fn sd_jwt_by(
    key: &SigningKey,
    header: Value,
    iss: &str,
    holder: &SigningKey,
    extra: Value,
) -> (String, Vec<String>) {
    let mut payload = Map::new();
    payload.insert("iss".into(), json!(iss));
    payload.insert("vct".into(), json!("https://example.org/identity"));
    payload.insert("iat".into(), json!(now()));
    payload.insert(
        "cnf".into(),
        json!({"jwk": holder.verifying_key().to_jwk()}),
    );
    if let Value::Object(m) = extra {
        payload.extend(m);
    }
    let mut sd = Map::new();
    sd.insert("given_name".into(), json!("Erika"));
    let issued = sdjwt::issue(key, header, payload, &sd);
    let p = sdjwt::parse(&issued).unwrap();
    (p.jwt, p.disclosures)
}

#[tokio::test]
async fn sd_jwt_forgeries_are_refused_by_the_right_policy() {
    let s = Server::start().await;
    let (holder, cred) = full_flow(
        &s,
        "IdentityCredential_dc_sd_jwt",
        json!({"given_name": "Erika", "family_name": "Mustermann", "email": "e@example.org", "birthdate": "1984-01-26"}),
    )
    .await;
    let issued = cred["credentials"][0]["credential"].as_str().unwrap();
    let parsed = sdjwt::parse(issued).unwrap();
    let (_, victim) = split_jwt(&parsed.jwt);
    let victim_iss = victim["iss"].as_str().unwrap().to_string();
    let given: Vec<String> = parsed
        .disclosures
        .iter()
        .filter(|d| sdjwt::decode_disclosure(d).unwrap().0 == "given_name")
        .cloned()
        .collect();

    // The genuine credential verifies (the corpus below is not failing for an unrelated reason).
    let req = open(&s, "default", sd_query()).await;
    let (status, r) = respond(
        &s,
        &req,
        "pid",
        json!(sd_present(&holder, &parsed.jwt, &given, &req)),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["verified"], true);

    // 0b. The same response posted twice at once (a replay racing the original): one answer is
    //     accepted, with the redirect and its response_code; the other is refused, whichever
    //     node or order (a session is answered once).
    let mut q = sd_query();
    q["success_redirect"] = json!("https://rp.example/done");
    let req = open(&s, "default", q).await;
    let vp_token = json!({"pid": [sd_present(&holder, &parsed.jwt, &given, &req)]}).to_string();
    let post = |vp: String| post_vp_token(&req, vp);
    let (a, b) = tokio::join!(post(vp_token.clone()), post(vp_token.clone()));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 400], "{a:?} {b:?}");
    let won = if a.0 == 200 { &a } else { &b };
    assert!(won.1["redirect_uri"]
        .as_str()
        .unwrap()
        .contains("response_code="));
    assert_eq!(post(vp_token).await.0, 400);

    // 1. The reported forgery: payload kept, status dropped, re-signed by the attacker's did:key /
    //    did:jwk named in the header kid.
    let mut no_status = victim.clone();
    no_status.as_object_mut().unwrap().remove("status");
    for (kt, jwk) in [(KeyType::P256, false), (KeyType::Ed25519, true)] {
        let (a, _, avm) = attacker_did(kt, jwk);
        let forged = jws::sign(&a, json!({"typ": "dc+sd-jwt", "kid": avm}), &no_status);
        let req = open(&s, "default", sd_query()).await;
        refused(
            &s,
            &req,
            "pid",
            json!(sd_present(&holder, &forged, &given, &req)),
            "signature",
            "kid_not_issuer",
        )
        .await;
    }
    // 2. Header key injection: jwk / x5c naming the attacker's key.
    let (a, _, _) = attacker_did(KeyType::P256, false);
    for h in [
        json!({"typ": "dc+sd-jwt", "jwk": a.verifying_key().to_jwk()}),
        json!({"typ": "dc+sd-jwt", "x5c": ["MIIBszCCAVmgAwIBAgIUQ"]}),
    ] {
        let forged = jws::sign(&a, h, &no_status);
        let req = open(&s, "default", sd_query()).await;
        refused(
            &s,
            &req,
            "pid",
            json!(sd_present(&holder, &forged, &given, &req)),
            "signature",
            "header_key_not_trusted",
        )
        .await;
    }
    // 3. alg none, HS256 keyed with the issuer's public key, an algorithm the key cannot have,
    //    a signature over a different header.
    let (vh, _) = split_jwt(&parsed.jwt);
    let kid = vh["kid"].clone();
    let payload_b64 = parsed.jwt.split('.').nth(1).unwrap().to_string();
    let none = format!(
        "{}.{payload_b64}.",
        enc(&json!({"alg": "none", "kid": kid}))
    );
    let hs_header = enc(&json!({"alg": "HS256", "kid": kid}));
    let issuer_pub = did::resolve_offline(kid.as_str().unwrap())
        .map(|k| k.to_jwk().to_string())
        .unwrap_or_default();
    let hs = {
        use hmac::{Mac, SimpleHmac};
        let mut mac = SimpleHmac::<sha2::Sha256>::new_from_slice(issuer_pub.as_bytes()).unwrap();
        mac.update(format!("{hs_header}.{payload_b64}").as_bytes());
        format!(
            "{hs_header}.{payload_b64}.{}",
            b64url(mac.finalize().into_bytes())
        )
    };
    let sig = parsed.jwt.split('.').nth(2).unwrap();
    let wrong_alg = format!(
        "{}.{payload_b64}.{sig}",
        enc(&json!({"alg": "ES256K", "kid": kid, "typ": "dc+sd-jwt"}))
    );
    let other_header = format!(
        "{}.{payload_b64}.{sig}",
        enc(&json!({"alg": vh["alg"], "kid": kid, "typ": "vc+sd-jwt"}))
    );
    for forged in [none, hs, wrong_alg, other_header] {
        let req = open(&s, "default", sd_query()).await;
        refused(
            &s,
            &req,
            "pid",
            json!(sd_present(&holder, &forged, &given, &req)),
            "signature",
            "bad_signature",
        )
        .await;
    }

    // 4. Disclosures: tampered, duplicated, not referenced; `_sd_alg` other than sha-256.
    let d0 = given[0].clone();
    let tampered = b64url(json!(["salt", "given_name", "Mallory"]).to_string());
    for (ds, why) in [
        (vec![tampered], "not referenced"),
        (vec![d0.clone(), d0.clone()], "duplicate"),
    ] {
        let req = open(&s, "default", sd_query()).await;
        refused(
            &s,
            &req,
            "pid",
            json!(sd_present(&holder, &parsed.jwt, &ds, &req)),
            "disclosure_integrity",
            why,
        )
        .await;
    }
    let (a, a_did, avm) = attacker_did(KeyType::P256, false);
    let (jwt, ds) = self_issued_sd(&a, &a_did, &avm, &holder, json!({}));
    // SD-JWT VC claims that must not be selectively disclosable: an issuer that made `exp` one
    // let the holder withhold it (and `status`, and pick `cnf`).
    let mut payload = Map::new();
    payload.insert("iss".into(), json!(a_did));
    payload.insert("vct".into(), json!("https://example.org/identity"));
    payload.insert(
        "cnf".into(),
        json!({"jwk": holder.verifying_key().to_jwk()}),
    );
    let mut sd = Map::new();
    sd.insert("given_name".into(), json!("Erika"));
    sd.insert("exp".into(), json!(now() - 10));
    let issued = sdjwt::issue(&a, json!({"typ": "dc+sd-jwt", "kid": avm}), payload, &sd);
    let p = sdjwt::parse(&issued).unwrap();
    let req = open(&s, "default", sd_query()).await;
    refused(
        &s,
        &req,
        "pid",
        json!(sd_present(&holder, &p.jwt, &p.disclosures, &req)),
        "disclosure_integrity",
        "`exp` must not be selectively disclosable",
    )
    .await;
    let (mut h512, mut p512) = split_jwt(&jwt);
    p512["_sd_alg"] = json!("sha-512");
    h512.as_object_mut().unwrap().remove("alg");
    let jwt512 = jws::sign(&a, h512, &p512);
    let req = open(&s, "default", sd_query()).await;
    refused(
        &s,
        &req,
        "pid",
        json!(sd_present(&holder, &jwt512, &ds, &req)),
        "disclosure_integrity",
        "_sd_alg",
    )
    .await;

    // A query that waives holder binding accepts the credential without a KB-JWT (OID4VP 1.0
    // `require_cryptographic_holder_binding: false`), and still checks the issuer's signature.
    let mut waived = sd_query();
    waived["dcql_query"]["credentials"][0]["require_cryptographic_holder_binding"] = json!(false);
    let req = open(&s, "default", waived.clone()).await;
    let (status, r) = respond(
        &s,
        &req,
        "pid",
        json!(format!("{}~{}~", parsed.jwt, given[0])),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    // Another JWT the issuer signed is no SD-JWT VC, even for a query that asks for nothing
    // more: its public Bitstring status list credential, with `~` appended.
    let list = client()
        .get(s.url("/issuers/default/status-lists/revocation-1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let bare = json!({"dcql_query": {"credentials": [{"id": "pid", "format": "dc+sd-jwt",
        "meta": {}, "require_cryptographic_holder_binding": false}]}});
    let req = open(&s, "default", bare).await;
    refused(
        &s,
        &req,
        "pid",
        json!(format!("{list}~")),
        "signature",
        "typ",
    )
    .await;
    // Nor is it a jwt_vc_json credential, nor is the SD-JWT's issuer JWT without its
    // disclosures, for a query that waives holder binding and asks for nothing more.
    let bare_w3c = json!({"dcql_query": {"credentials": [{"id": "pid", "format": "jwt_vc_json",
        "meta": {}, "require_cryptographic_holder_binding": false}]}});
    for (token, why) in [(&list, "status list"), (&parsed.jwt, "typ")] {
        let req = open(&s, "default", bare_w3c.clone()).await;
        refused(&s, &req, "pid", json!(token), "signature", why).await;
    }
    let (a0, _, a0vm) = attacker_did(KeyType::P256, false);
    let forged = jws::sign(&a0, json!({"typ": "dc+sd-jwt", "kid": a0vm}), &no_status);
    let req = open(&s, "default", waived).await;
    refused(
        &s,
        &req,
        "pid",
        json!(format!("{forged}~{}~", given[0])),
        "signature",
        "kid_not_issuer",
    )
    .await;

    // 5. Key binding: missing KB-JWT, wrong sd_hash, wrong aud, wrong nonce, iat far off.
    let req = open(&s, "default", sd_query()).await;
    refused(
        &s,
        &req,
        "pid",
        json!(format!("{}~{}~", parsed.jwt, d0)),
        "holder_binding",
        "no key-binding",
    )
    .await;
    let req = open(&s, "default", sd_query()).await;
    let wrong_hash = format!(
        "{}~{}~{}",
        parsed.jwt,
        d0,
        kb(
            &holder,
            "something-else~",
            &req.client_id,
            &req.nonce,
            now()
        )
    );
    refused(
        &s,
        &req,
        "pid",
        json!(wrong_hash),
        "holder_binding",
        "sd_hash",
    )
    .await;
    let base = format!("{}~{}~", parsed.jwt, d0);
    for (aud, nonce, iat, why) in [
        (Some("https://other.example"), None, now(), "aud"),
        (None, Some("not-the-nonce"), now(), "nonce"),
        (None, None, now() - 86_400, "iat"),
        (None, None, now() + 86_400, "iat"),
    ] {
        let req = open(&s, "default", sd_query()).await;
        let k = kb(
            &holder,
            &base,
            aud.unwrap_or(&req.client_id),
            nonce.unwrap_or(&req.nonce),
            iat,
        );
        refused(
            &s,
            &req,
            "pid",
            json!(format!("{base}{k}")),
            "nonce_audience",
            why,
        )
        .await;
    }
    // A KB-JWT signed by another key than the credential's cnf.
    let req = open(&s, "default", sd_query()).await;
    let stranger = SigningKey::generate(KeyType::P256);
    refused(
        &s,
        &req,
        "pid",
        json!(sd_present(&stranger, &parsed.jwt, &given, &req)),
        "holder_binding",
        "signature",
    )
    .await;

    // 6. Cross-session replay: a presentation made for session A, sent to session B.
    let a_req = open(&s, "default", sd_query()).await;
    let b_req = open(&s, "default", sd_query()).await;
    refused(
        &s,
        &b_req,
        "pid",
        json!(sd_present(&holder, &parsed.jwt, &given, &a_req)),
        "nonce_audience",
        "nonce",
    )
    .await;

    // 7. Validity: expired, not yet valid, unparseable — on credentials whose signature binds
    //    (self-issued by the attacker), so only the validity policy can catch them.
    for (extra, why) in [
        (json!({"exp": now() - 3_600}), "expired"),
        (json!({"nbf": now() + 3_600}), "not valid before"),
        (json!({"exp": "tomorrow"}), "NumericDate"),
    ] {
        let (jwt, ds) = self_issued_sd(&a, &a_did, &avm, &holder, extra);
        let req = open(&s, "default", sd_query()).await;
        refused(
            &s,
            &req,
            "pid",
            json!(sd_present(&holder, &jwt, &ds, &req)),
            "validity",
            why,
        )
        .await;
    }

    // 8. Issuer allow-list. In sandbox mode an empty `trusted_issuers` means this node's own
    //    issuers, not everyone: a self-consistent credential from a stranger fails it.
    let (jwt, ds) = self_issued_sd(&a, &a_did, &avm, &holder, json!({}));
    let req = open(&s, "default", sd_query()).await;
    refused(
        &s,
        &req,
        "pid",
        json!(sd_present(&holder, &jwt, &ds, &req)),
        "issuer_allowlist",
        "not trusted",
    )
    .await;
    //    And with an explicit list, only that list.
    verifier_trusting(&s, "only-default", json!([victim_iss])).await;
    let (jwt, ds) = self_issued_sd(&a, &a_did, &avm, &holder, json!({}));
    let req = open(&s, "only-default", sd_query()).await;
    refused(
        &s,
        &req,
        "pid",
        json!(sd_present(&holder, &jwt, &ds, &req)),
        "issuer_allowlist",
        "not trusted",
    )
    .await;

    // 9. Status: no status reference while the session requires one; a status list that is not
    //    signed by the credential's issuer (the attacker points at the real issuer's list). A
    //    verifier trusting the attacker's issuer: an untrusted issuer's status is not checked.
    verifier_trusting(&s, "trusts-a", json!([a_did])).await;
    let mut q = sd_query();
    q["require_status"] = json!(true);
    let req = open(&s, "trusts-a", q).await;
    refused(
        &s,
        &req,
        "pid",
        json!(sd_present(&holder, &jwt, &ds, &req)),
        "status",
        "requires",
    )
    .await;
    let (jwt, ds) = self_issued_sd(
        &a,
        &a_did,
        &avm,
        &holder,
        json!({"status": victim["status"].clone()}),
    );
    let req = open(&s, "trusts-a", sd_query()).await;
    refused(
        &s,
        &req,
        "pid",
        json!(sd_present(&holder, &jwt, &ds, &req)),
        "status",
        "status list signature",
    )
    .await;

    // 10. A genuine presentation made for another session, replayed until the session fails:
    //     the failed session keeps none of its claims (they would reach the admin API, SSE and
    //     the webhook as this session's answer). Before, the final failure stored them.
    let elsewhere = open(&s, "default", sd_query()).await;
    let replayed = json!(sd_present(&holder, &parsed.jwt, &given, &elsewhere));
    let req = open(&s, "default", sd_query()).await;
    let mut last = Value::Null;
    for _ in 0..3 {
        // two are refused as attempts; the third is the session's (failed) answer
        last = respond(&s, &req, "pid", replayed.clone()).await.1;
    }
    assert_eq!(last["state"], "failed", "{last}");
    assert_eq!(last["credentials"], json!([]), "{last}");
    s.stop();
}

/// A JWT VP (holder did:key) carrying `vc`.
fn jwt_vp(holder: &SigningKey, vc: &str, req: &Request) -> String {
    let hd = did::did_key(&holder.verifying_key());
    jws::sign(
        holder,
        json!({"typ": "JWT", "kid": did::verification_method(&hd)}),
        &json!({"iss": hd, "aud": req.client_id, "nonce": req.nonce, "iat": now(), "vp": {"type": ["VerifiablePresentation"], "verifiableCredential": [vc]}}),
    )
}

fn jwt_query() -> Value {
    json!({"dcql_query": {"credentials": [{"id": "idc", "format": "jwt_vc_json", "meta": {"type_values": [["VerifiableCredential", "IdentityCredential"]]}}]}})
}

#[tokio::test]
async fn jwt_vc_and_vc_api_forgeries_are_refused() {
    let s = Server::start().await;
    // Issue a jwt_vc_json to a did:key holder (the proof names the holder by DID).
    let offer = create_offer(
        &s,
        "default",
        json!({"credential_configuration_ids": ["IdentityCredential_jwt_vc_json"], "claims": {"given_name": "Erika", "family_name": "Mustermann", "email": "e@example.org", "birthdate": "1984-01-26"}}),
    )
    .await;
    let (st, tok) =
        crate::holder::token(&s, "default", &crate::holder::pre_auth_code(&offer), None).await;
    assert_eq!(st, 200);
    let holder = SigningKey::generate(KeyType::P256);
    let n = crate::holder::nonce(&s, "default").await;
    let aud = s.url("/issuers/default");
    let (st, cred) = crate::holder::credential(&s, "default", tok["access_token"].as_str().unwrap(), json!({"credential_configuration_id": "IdentityCredential_jwt_vc_json", "proofs": {"jwt": [crate::holder::proof(&holder, &aud, &n, true)]}})).await;
    assert_eq!(st, 200, "{cred}");
    let vc = cred["credentials"][0]["credential"]
        .as_str()
        .unwrap()
        .to_string();

    let req = open(&s, "default", jwt_query()).await;
    let (status, r) = respond(&s, &req, "idc", json!(jwt_vp(&holder, &vc, &req))).await;
    assert_eq!(status, 200, "{r}");

    // A bare credential (no holder-signed presentation) only where the query waives binding.
    let req = open(&s, "default", jwt_query()).await;
    refused(
        &s,
        &req,
        "idc",
        json!(vc),
        "holder_binding",
        "bare credential",
    )
    .await;
    let mut waived = jwt_query();
    waived["dcql_query"]["credentials"][0]["require_cryptographic_holder_binding"] = json!(false);
    let req = open(&s, "default", waived).await;
    let (status, r) = respond(&s, &req, "idc", json!(vc)).await;
    assert_eq!(status, 200, "{r}");

    let (_, victim) = split_jwt(&vc);
    let mut no_status = victim.clone();
    no_status["vc"]
        .as_object_mut()
        .unwrap()
        .remove("credentialStatus");
    for jwk in [false, true] {
        let (a, _, avm) = attacker_did(KeyType::P256, jwk);
        let forged = jws::sign(&a, json!({"typ": "JWT", "kid": avm}), &no_status);
        let req = open(&s, "default", jwt_query()).await;
        refused(
            &s,
            &req,
            "idc",
            json!(jwt_vp(&holder, &forged, &req)),
            "signature",
            "kid_not_issuer",
        )
        .await;
        // VC-API: the same forgery as a bare credential, and inside a presentation.
        let r = s
            .anon()
            .post_resp(
                "/vc-api/credentials/verify",
                &json!({"verifiableCredential": forged}),
            )
            .await;
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["verified"], false);
        assert!(v["errors"].to_string().contains("kid_not_issuer"), "{v}");
        let r = s
            .anon()
            .post_resp(
                "/vc-api/presentations/verify",
                &json!({"verifiablePresentation": jwt_vp(&holder, &forged, &req)}),
            )
            .await;
        assert_eq!(r.status(), 400);
    }
    // vc.issuer disagreeing with iss
    let (a, a_did, avm) = attacker_did(KeyType::P256, false);
    let mut two = victim.clone();
    two["iss"] = json!(a_did);
    two["vc"]["issuer"] = victim["iss"].clone();
    let forged = jws::sign(&a, json!({"typ": "JWT", "kid": avm}), &two);
    let req = open(&s, "default", jwt_query()).await;
    refused(
        &s,
        &req,
        "idc",
        json!(jwt_vp(&holder, &forged, &req)),
        "signature",
        "issuer_mismatch",
    )
    .await;
    // VCDM 2.0 validFrom in the future / unparseable dates on a self-consistent credential.
    for (vc_extra, why) in [
        (
            json!({"validFrom": "2999-01-01T00:00:00Z"}),
            "not valid before",
        ),
        (json!({"validUntil": "not a date"}), "not a valid date-time"),
    ] {
        let mut p = json!({"iss": a_did, "sub": did::did_key(&holder.verifying_key()), "vc": {"@context": ["https://www.w3.org/2018/credentials/v1"], "type": ["VerifiableCredential", "IdentityCredential"], "issuer": a_did, "credentialSubject": {"id": did::did_key(&holder.verifying_key()), "given_name": "Erika"}}});
        for (k, v) in vc_extra.as_object().unwrap() {
            p["vc"][k] = v.clone();
        }
        let t = jws::sign(&a, json!({"typ": "JWT", "kid": avm}), &p);
        let req = open(&s, "default", jwt_query()).await;
        refused(
            &s,
            &req,
            "idc",
            json!(jwt_vp(&holder, &t, &req)),
            "validity",
            why,
        )
        .await;
        let r = s
            .anon()
            .post_resp(
                "/vc-api/credentials/verify",
                &json!({"verifiableCredential": t}),
            )
            .await;
        assert_eq!(r.status(), 400, "VC-API runs the validity policy too");
    }

    // ldp_vc via VC-API: issuer ≠ proof DID, wrong proofPurpose, tampered document.
    let r = s.admin().post_resp("/vc-api/credentials/issue", &json!({"credential": {"@context": ["https://www.w3.org/ns/credentials/v2", "https://w3id.org/idstack/credentials/v1"], "issuer": s.default_issuer_did().await, "type": ["VerifiableCredential", "IdentityCredential"], "credentialSubject": {"id": "did:example:alice", "given_name": "Alice"}}})).await;
    assert_eq!(r.status(), 201);
    let ldp = r.json::<Value>().await.unwrap()["verifiableCredential"].clone();
    let verify_url = s.url("/vc-api/credentials/verify");
    let verify = |body: Value| {
        let url = verify_url.clone();
        async move {
            let r = client().post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (st, v) = verify(json!({"verifiableCredential": ldp})).await;
    assert_eq!(st, 200, "{v}");
    // (A proof by another DID with the victim named as issuer: the issuer cannot be changed
    // after signing without breaking the proof, and a proof whose DID is not the issuer's is
    // refused by crypto::di and crypto::binding — both end in the `signature` policy.)
    let (ed, _, ed_vm) = attacker_did(KeyType::Ed25519, false);
    // the credential names the server's served context: resolve it offline here too
    idstack::crypto::di::register_context_origin(&s.base);
    let mut body = ldp.as_object().unwrap().clone();
    body.remove("proof");
    body.insert(
        "issuer".into(),
        json!(did::did_key(&holder.verifying_key())),
    );
    let other_issuer =
        idstack::crypto::di::issue_credential(&ed, &ed_vm, body.clone(), now()).unwrap();
    let mut claimed = other_issuer.clone();
    claimed["issuer"] = ldp["issuer"].clone();
    let mut purpose = ldp.clone();
    purpose["proof"]["proofPurpose"] = json!("authentication");
    let mut tampered = ldp.clone();
    tampered["credentialSubject"]["given_name"] = json!("Mallory");
    for bad in [claimed, purpose, tampered] {
        let (st, v) = verify(json!({"verifiableCredential": bad})).await;
        assert_eq!(st, 400, "{v}");
        assert!(v["errors"].to_string().contains("signature"), "{v}");
    }

    // Attacker review: a self-issued credential whose subject nests 120 deep was stored with the
    // session past serde_json's read limit, and the session (and the tenant's whole session
    // list) answered 500 until the record expired. Its claims are not kept.
    // (the depths around the limit: the payload itself must still parse)
    let (a, a_did, avm) = attacker_did(KeyType::P256, false);
    for levels in 121..=125 {
        let mut deep = json!("x");
        for _ in 0..levels {
            deep = json!([deep]);
        }
        let p = json!({"iss": a_did, "sub": a_did, "vc": {"@context": ["https://www.w3.org/2018/credentials/v1"], "type": ["VerifiableCredential", "IdentityCredential"], "issuer": a_did, "credentialSubject": {"id": a_did, "deep": deep}}});
        let t = jws::sign(&a, json!({"typ": "JWT", "kid": avm}), &p);
        let req = open(&s, "default", jwt_query()).await;
        for _ in 0..3 {
            respond(&s, &req, "idc", json!(jwt_vp(&a, &t, &req))).await;
        }
        let r = s
            .admin()
            .get_resp(&format!("/api/verifiers/default/sessions/{}", req.id))
            .await;
        assert_eq!(r.status(), 200, "{levels}: {}", r.text().await.unwrap());
        let r = s.admin().get_resp("/api/verifiers/default/sessions").await;
        assert_eq!(r.status(), 200, "{levels}: {}", r.text().await.unwrap());
    }
    s.stop();
}

/// The reported attack end to end through the real Animo OID4VCI holder and OID4VP wallet: the
/// wallet presents a credential whose issuer JWT the attacker re-signed with its own did:key.
#[tokio::test]
async fn animo_wallet_presenting_a_re_signed_credential_is_refused() {
    let s = Server::start().await;
    let offer = create_offer(
        &s,
        "default",
        json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"], "claims": {"given_name": "Erika", "family_name": "Mustermann", "email": "e@example.org", "birthdate": "1984-01-26"}}),
    )
    .await;
    let mut held = node(
        "oid4vci-holder.mjs",
        &["--offer", offer["offer_uri"].as_str().unwrap()],
    );
    let issued = held["credentials"][0].as_str().unwrap().to_string();
    let (jwt, rest) = issued.split_once('~').unwrap();
    let (_, mut payload) = split_jwt(jwt);
    payload.as_object_mut().unwrap().remove("status");
    let (a, _, avm) = attacker_did(KeyType::P256, false);
    let forged = format!(
        "{}~{rest}",
        jws::sign(&a, json!({"typ": "dc+sd-jwt", "kid": avm}), &payload)
    );
    held["credentials"][0] = json!(forged);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forged.json");
    std::fs::write(&path, held.to_string()).unwrap();
    let r = s
        .admin()
        .post_resp("/api/verifiers/default/sessions", &sd_query())
        .await;
    let sess: Value = r.json().await.unwrap();
    let out = node(
        "oid4vp-wallet.mjs",
        &[
            "--request",
            sess["authorization_request"].as_str().unwrap(),
            "--credential",
            path.to_str().unwrap(),
        ],
    );
    assert_eq!(out["status"], 400, "the forgery was accepted: {out}");
    let r: Value = s
        .admin()
        .get(&format!(
            "/api/verifiers/default/sessions/{}",
            sess["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r["verified"], false);
    let (passed, reason) = policy(&r, "signature");
    assert!(!passed && reason.contains("kid_not_issuer"), "{r}");
    s.stop();
}

/// Production mode: a verifier that trusts no issuer refuses to create sessions (an empty list is
/// not "trust everyone"); one with trusted issuers works.
#[tokio::test]
async fn production_verifier_without_trust_refuses_sessions() {
    let s = Server::builder()
        .env("IDSTACK__SERVER__MODE", "production")
        .env("IDSTACK__STORE__MASTER_KEY", crate::common::TEST_MASTER_KEY)
        .start()
        .await;
    let r = s
        .admin()
        .post_resp("/api/verifiers/default/sessions", &sd_query())
        .await;
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    assert!(
        p["detail"].as_str().unwrap().contains("trusts no issuer"),
        "{p}"
    );
    trusting_verifier(&s, "trusting").await;
    open(&s, "trusting", sd_query()).await;
    // Webhooks and the success redirect carry disclosed claims and the response_code: in
    // production, not over plain http to a host http.outbound.allow does not name.
    for field in ["webhook_url", "success_redirect"] {
        let mut q = sd_query();
        q[field] = json!("http://rp.example/hook?secret=s3");
        let r = s
            .admin()
            .post_resp("/api/verifiers/trusting/sessions", &q)
            .await;
        assert_eq!(r.status(), 422, "{field}");
        let p: Value = r.json().await.unwrap();
        assert!(p["detail"].as_str().unwrap().contains("plain http"), "{p}");
        q[field] = json!("https://rp.example/hook?secret=s3");
        open(&s, "trusting", q).await;
    }
    let r = s
        .admin()
        .post_resp(
            "/api/issuers",
            &json!({"id": "hooked", "webhook_url": "http://rp.example/hook"}),
        )
        .await;
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("plain http"), "{p}");
    s.stop();
}

/// A certificate (CA when `parent` is None: self-signed root) and its key.
struct Cert {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn x509_root(name: &str) -> Cert {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    Cert {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

/// A leaf certificate for DNS name `host` under `root`, `edit`ed: (base64 DER, signing key).
fn x509_leaf_with(
    root: &Cert,
    host: &str,
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> (String, SigningKey) {
    use base64::Engine;
    use p256::pkcs8::DecodePrivateKey;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
    edit(&mut p);
    let cert = p.signed_by(&key, &root.cert, &root.key).unwrap();
    let sk = p256::ecdsa::SigningKey::from_pkcs8_der(&key.serialize_der()).unwrap();
    (
        base64::engine::general_purpose::STANDARD.encode(cert.der()),
        SigningKey::P256(sk),
    )
}

/// A server whose `x509.trust_anchors` is `root` (keep the directory while it runs).
/// A node with `root` as its one `x509.trust_anchors` IACA, whose default verifier trusts mdocs
/// under it (`aki:` of its key identifier) besides the node's own default issuer.
async fn anchored_server(root: &Cert) -> (Server, tempfile::TempDir) {
    anchored_server_by(root, "IDSTACK__X509__TRUST_ANCHORS").await
}

/// [`anchored_server`] with `root` in the anchor list `var` names.
async fn anchored_server_by(root: &Cert, var: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("anchors.pem");
    std::fs::write(&pem, root.cert.pem()).unwrap();
    let s = Server::builder()
        .env(var, pem.to_str().unwrap())
        .start()
        .await;
    let own = s.default_issuer_did().await;
    let r = s
        .admin()
        .put_resp(
            "/api/verifiers/default",
            &json!({"trusted_issuers": [own, iaca_entry(root)]}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    (s, dir)
}

/// An SD-JWT VC (issuer JWT, disclosures) by `signer` as `iss`, with `chain` as its `x5c`, bound
/// to `holder`.
fn x5c_sd_jwt(
    signer: &SigningKey,
    chain: &str,
    iss: &str,
    holder: &SigningKey,
) -> (String, Vec<String>) {
    sd_jwt_by(
        signer,
        json!({"typ": "dc+sd-jwt", "x5c": [chain]}),
        iss,
        holder,
        json!({}),
    )
}

/// Anchors serve their purpose only (attacker review: one list served SD-JWT VC issuers and mdoc
/// IACAs, so any trusted IACA could certify a key for any `https` issuer): a CA in
/// `x509.iaca_anchors` vouches for mdoc document signers, not SD-JWT issuers; one in
/// `x509.sd_jwt_anchors` for SD-JWT issuers, not mdocs.
#[tokio::test]
async fn anchors_serve_their_own_purpose_only() {
    let root = x509_root("Test IACA");
    let iss = "https://issuer.example";
    let holder = SigningKey::generate(KeyType::P256);
    let device = SigningKey::generate(KeyType::P256);
    let mdl = "org.iso.18013.5.1.mDL";
    let mdl_query = json!({"dcql_query": {"credentials": [{"id": "mdl", "format": "mso_mdoc",
        "meta": {"doctype_value": mdl}, "claims": [{"path": ["org.iso.18013.5.1", "family_name"]}]}]}});
    let (cert, sk) = x509_leaf(&root, "issuer.example");
    let signed = mdoc_issue(&mdoc_ds(&root), &device, mdl, now() + 3600);
    for (var, sd_jwt_ok, mdoc_ok) in [
        ("IDSTACK__X509__IACA_ANCHORS", false, true),
        ("IDSTACK__X509__SD_JWT_ANCHORS", true, false),
    ] {
        let (s, _dir) = anchored_server_by(&root, var).await;
        verifier_trusting(&s, "pki", json!([iss, iaca_entry(&root)])).await;
        let (jwt, ds) = x5c_sd_jwt(&sk, &cert, iss, &holder);
        let req = open(&s, "pki", sd_query()).await;
        let (_, r) = respond(&s, &req, "pid", json!(sd_present(&holder, &jwt, &ds, &req))).await;
        assert_eq!(r["verified"] == json!(true), sd_jwt_ok, "{var}: {r}");
        let req = open(&s, "pki", mdl_query.clone()).await;
        let pres = mdoc_present(&device, &signed, mdl, &req);
        let (_, r) = respond(&s, &req, "mdl", json!(pres)).await;
        assert_eq!(r["verified"] == json!(true), mdoc_ok, "{var}: {r}");
        s.stop();
    }
}

/// How a verifier's trusted_issuers names the IACA `root`: `aki:` and its key identifier.
fn iaca_entry(root: &Cert) -> String {
    use x509_cert::der::Decode;
    let c = x509_cert::Certificate::from_der(root.cert.der()).unwrap();
    let ski = idstack::crypto::x509::subject_key_id(&c).expect("rcgen writes an SKI");
    format!("aki:{}", idstack::crypto::b64url(ski))
}

/// An SD-JWT VC issuer's certificate for DNS name `host` under `root`.
fn x509_leaf(root: &Cert, host: &str) -> (String, SigningKey) {
    x509_leaf_with(root, host, |_| {})
}

/// An mdoc document signer under `root` (ISO 18013-5 Annex B.1.4: digitalSignature, mdlDS EKU,
/// one countryName).
fn mdoc_ds(root: &Cert) -> (String, SigningKey) {
    x509_leaf_with(root, "ds.example", |p| {
        p.distinguished_name.push(rcgen::DnType::CountryName, "UT");
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::Other(vec![
            1, 0, 18013, 5, 1, 2,
        ])];
    })
}

/// IssuerSigned of doc type `doc_type` by document signer `ds` (family_name, given_name,
/// age_over_18 in org.iso.18013.5.1), bound to `device`, valid until `valid_until`.
fn mdoc_issue(
    ds: &(String, SigningKey),
    device: &SigningKey,
    doc_type: &str,
    valid_until: i64,
) -> Vec<u8> {
    use base64::Engine;
    use idstack::crypto::mdoc::issue;
    let chain = base64::engine::general_purpose::STANDARD
        .decode(&ds.0)
        .unwrap();
    let text = |t: &str| ciborium::Value::Text(t.into());
    let elements = vec![
        ("family_name".to_string(), text("Mustermann")),
        ("given_name".to_string(), text("Erika")),
        ("age_over_18".to_string(), ciborium::Value::Bool(true)),
    ];
    let t = now();
    issue::issuer_signed(&issue::IssueRequest {
        doc_type,
        namespaces: &[("org.iso.18013.5.1".into(), elements)],
        device_key: &device.verifying_key(),
        signer: &ds.1,
        x5chain: &[chain],
        signed: t - 120,
        valid_from: t - 120,
        valid_until,
        status: None,
    })
    .unwrap()
}

/// A base64url DeviceResponse of `signed` (family_name and age_over_18 disclosed) device-signed
/// over the SessionTranscript of `target`.
fn mdoc_present(device: &SigningKey, signed: &[u8], doc_type: &str, target: &Request) -> String {
    use idstack::crypto::mdoc::{present, transcript};
    let st = transcript::oid4vp(&target.client_id, &target.nonce, None, &target.response_uri);
    let resp = present::device_response(
        signed,
        doc_type,
        |_, e| e == "family_name" || e == "age_over_18",
        device,
        &st,
    )
    .unwrap();
    b64url(resp)
}

/// SD-JWT VC with an `https` issuer whose key comes in an `x5c` chain: verified when the chain
/// ends at a configured `x509.trust_anchors` certificate and its leaf names the issuer; a chain
/// of the attacker's own root, or a leaf for another host, is refused by `signature`.
#[tokio::test]
async fn sd_jwt_x5c_chain_must_end_at_a_configured_anchor() {
    let root = x509_root("Test IACA");
    let (s, _dir) = anchored_server(&root).await;
    let iss = "https://issuer.example";
    verifier_trusting(&s, "pki", json!([iss])).await;
    let holder = SigningKey::generate(KeyType::P256);
    let issue =
        |signer: &SigningKey, chain: &str, iss: &str| x5c_sd_jwt(signer, chain, iss, &holder);

    let (cert, sk) = x509_leaf(&root, "issuer.example");
    let (jwt, ds) = issue(&sk, &cert, iss);
    let req = open(&s, "pki", sd_query()).await;
    let (status, r) = respond(&s, &req, "pid", json!(sd_present(&holder, &jwt, &ds, &req))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["verified"], true, "{r}");

    let evil_root = x509_root("Test IACA");
    let (evil_cert, evil_sk) = x509_leaf(&evil_root, "issuer.example");
    let (jwt, ds) = issue(&evil_sk, &evil_cert, iss);
    let req = open(&s, "pki", sd_query()).await;
    let pres = json!(sd_present(&holder, &jwt, &ds, &req));
    refused(&s, &req, "pid", pres, "signature", "x5c_untrusted").await;

    let (other_cert, other_sk) = x509_leaf(&root, "bank.example");
    let (jwt, ds) = issue(&other_sk, &other_cert, iss);
    let req = open(&s, "pki", sd_query()).await;
    let pres = json!(sd_present(&holder, &jwt, &ds, &req));
    refused(
        &s,
        &req,
        "pid",
        pres,
        "signature",
        "does not name the issuer",
    )
    .await;
    s.stop();
}

/// mso_mdoc at the verifier (DCQL `meta.doctype_value`, claim paths [namespace, element]): a
/// DeviceResponse device-signed over this session's SessionTranscript by the key in an MSO whose
/// document signer chains to `x509.trust_anchors` verifies, and only the disclosed elements are
/// in the result. Refused, each by the policy it breaks: one made for another session
/// (holder_binding), one under another IACA or signed by a certificate under the anchor that is
/// no document signer (issuer_allowlist), an expired one (validity), a
/// truncated one (signature); a query without doctype_value is refused (422) at session creation.
#[tokio::test]
async fn mdoc_device_responses_are_bound_to_the_session_and_the_anchor() {
    let root = x509_root("Test IACA");
    let (s, _dir) = anchored_server(&root).await;
    let device = SigningKey::generate(KeyType::P256);
    let t = now();
    let mdl = "org.iso.18013.5.1.mDL";
    let issue_under =
        |root: &Cert, valid_until: i64| mdoc_issue(&mdoc_ds(root), &device, mdl, valid_until);
    let query = json!({"dcql_query": {"credentials": [{"id": "mdl", "format": "mso_mdoc",
        "meta": {"doctype_value": "org.iso.18013.5.1.mDL"},
        "claims": [{"path": ["org.iso.18013.5.1", "family_name"]}, {"path": ["org.iso.18013.5.1", "age_over_18"]}]}]}});
    let respond_with = |req: &Request, signed: &[u8], for_req: Option<&Request>| {
        mdoc_present(&device, signed, mdl, for_req.unwrap_or(req))
    };
    let good = issue_under(&root, t + 3600);

    let req = open(&s, "default", query.clone()).await;
    let (status, r) = respond(&s, &req, "mdl", json!(respond_with(&req, &good, None))).await;
    assert_eq!((status, &r["verified"]), (200, &json!(true)), "{r}");
    let c = &r["credentials"][0];
    assert_eq!(c["format"], "mso_mdoc");
    assert_eq!(
        c["claims"]["org.iso.18013.5.1"],
        json!({"family_name": "Mustermann", "age_over_18": true})
    );
    assert!(c["claims"]["org.iso.18013.5.1"].get("given_name").is_none());

    let failed = |r: &Value, policy: &str| {
        r["verified"] != json!(true)
            && r["policies"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == policy && p["passed"] == json!(false))
    };
    // device-signed for another session (a replay into this one)
    let other = open(&s, "default", query.clone()).await;
    let req = open(&s, "default", query.clone()).await;
    let (_, r) = respond(
        &s,
        &req,
        "mdl",
        json!(respond_with(&req, &good, Some(&other))),
    )
    .await;
    assert!(failed(&r, "holder_binding"), "{r}");
    // a document signer under the attacker's own IACA
    let evil = issue_under(&x509_root("Evil IACA"), t + 3600);
    let req = open(&s, "default", query.clone()).await;
    let (_, r) = respond(&s, &req, "mdl", json!(respond_with(&req, &evil, None))).await;
    assert!(failed(&r, "issuer_allowlist"), "{r}");
    // a certificate under the configured anchor that is no document signer: an SD-JWT VC
    // issuer's (the anchors serve both), here minting an mDL with its own key
    let not_ds = mdoc_issue(&x509_leaf(&root, "issuer.example"), &device, mdl, t + 3600);
    let req = open(&s, "default", query.clone()).await;
    let (_, r) = respond(&s, &req, "mdl", json!(respond_with(&req, &not_ds, None))).await;
    assert!(failed(&r, "issuer_allowlist"), "{r}");
    // expired
    let expired = issue_under(&root, t - 60);
    let req = open(&s, "default", query.clone()).await;
    let (_, r) = respond(&s, &req, "mdl", json!(respond_with(&req, &expired, None))).await;
    assert!(failed(&r, "validity"), "{r}");
    // truncated CBOR
    let req = open(&s, "default", query.clone()).await;
    let full = idstack::crypto::b64url_decode(&respond_with(&req, &good, None)).unwrap();
    let (status, r) = respond(&s, &req, "mdl", json!(b64url(&full[..full.len() / 2]))).await;
    assert!(status < 500 && failed(&r, "signature"), "{status} {r}");
    // a query for an mdoc must name its doctype
    let r = s.admin().post_resp("/api/verifiers/default/sessions", &json!({"dcql_query": {"credentials": [{"id": "m", "format": "mso_mdoc", "meta": {}}]}})).await;
    assert_eq!(r.status(), 422);
    s.stop();
}

/// presentation_definition (ISO 18013-7 Annex B): an mso_mdoc input descriptor's id is the doc
/// type it asks for. A document of another doc type from a trusted document signer, carrying the
/// same namespace and elements, does not answer it (query_match).
#[tokio::test]
async fn mdoc_presentation_definition_descriptor_id_is_the_doctype() {
    let root = x509_root("Test IACA");
    let (s, _dir) = anchored_server(&root).await;
    let device = SigningKey::generate(KeyType::P256);
    let ds = mdoc_ds(&root);
    let mdl = "org.iso.18013.5.1.mDL";
    let pd = json!({"presentation_definition": {"id": "pd", "input_descriptors": [{
        "id": mdl, "format": {"mso_mdoc": {"alg": ["ES256"]}},
        "constraints": {"limit_disclosure": "required", "fields": [
            {"path": ["$['org.iso.18013.5.1']['age_over_18']"], "filter": {"const": true}}]}}]}});
    let answer = |req: &Request, doc_type: &str| {
        let signed = mdoc_issue(&ds, &device, doc_type, now() + 3600);
        let submission = json!({"id": "s", "definition_id": "pd",
            "descriptor_map": [{"id": mdl, "format": "mso_mdoc", "path": "$"}]});
        (
            mdoc_present(&device, &signed, doc_type, req),
            submission.to_string(),
        )
    };
    let post = |req: &Request, vp_token: String, submission: String| {
        let (uri, state) = (req.response_uri.clone(), req.state.clone());
        async move {
            client()
                .post(&uri)
                .form(&[
                    ("vp_token", vp_token.as_str()),
                    ("presentation_submission", submission.as_str()),
                    ("state", state.as_str()),
                ])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let result = |req: &Request| {
        let url = s.url(&format!(
            "/api/verifiers/{}/sessions/{}",
            req.verifier, req.id
        ));
        async move {
            client()
                .get(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    // the mDL answers
    let req = open(&s, "default", pd.clone()).await;
    let (vp, sub) = answer(&req, mdl);
    assert_eq!(post(&req, vp, sub).await, 200);
    let r = result(&req).await;
    assert_eq!(r["verified"], true, "{r}");
    // another doc type, same namespace and elements, same trusted signer
    let req = open(&s, "default", pd.clone()).await;
    let (vp, sub) = answer(&req, "org.example.loyalty.1");
    let status = post(&req, vp, sub).await;
    assert!(status < 500, "{status}");
    let r = result(&req).await;
    assert_ne!(r["verified"], true, "{r}");
    let (passed, reason) = policy(&r, "query_match");
    assert!(
        !passed && reason.contains("does not answer this descriptor"),
        "{reason}"
    );
    s.stop();
}

/// Creates verifier `id` trusting the default issuer (production mode trusts no issuer unasked).
async fn trusting_verifier(s: &Server, id: &str) {
    let issuer: Value = s.admin().get("/api/issuers/default").await;
    verifier_trusting(s, id, json!([issuer["did"]])).await;
}

/// Creates verifier `id` (P-256) whose `trusted_issuers` are `trusted`.
async fn verifier_trusting(s: &Server, id: &str, trusted: Value) {
    let r = s
        .admin()
        .post_resp(
            "/api/verifiers",
            &json!({"id": id, "signing_key_type": "P-256", "trusted_issuers": trusted}),
        )
        .await;
    assert_eq!(r.status(), 201);
}

/// `signed` (an mDL bound to `device`) presented to a new session of verifier `verifier` asking
/// for family_name: the response's status and body.
async fn present_mdl(
    s: &Server,
    verifier: &str,
    device: &SigningKey,
    signed: &[u8],
) -> (u16, Value) {
    let mdl = "org.iso.18013.5.1.mDL";
    let req = open(
        s,
        verifier,
        json!({"dcql_query": {"credentials": [{"id": "mdl", "format": "mso_mdoc",
        "meta": {"doctype_value": mdl},
        "claims": [{"path": ["org.iso.18013.5.1", "family_name"]}]}]}}),
    )
    .await;
    respond(
        s,
        &req,
        "mdl",
        json!(mdoc_present(device, signed, mdl, &req)),
    )
    .await
}

/// An IACA for country `country` and a document signer under it (`edit`ed): (IACA PEM, document
/// signer certificate PEM, document signer key PKCS#8 PEM).
fn mdoc_chain(
    country: &str,
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> (String, String, String) {
    let iaca = mdoc_iaca(country);
    let (ds, key) = mdoc_ds_under(&iaca, country, edit);
    (iaca.cert.pem(), ds, key)
}

/// A production-like IACA (self-signed, pathLen 0) for `country`.
fn mdoc_iaca(country: &str) -> Cert {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "Production IACA");
    p.distinguished_name
        .push(rcgen::DnType::CountryName, country);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    Cert {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

/// A document signer under `iaca` (`edit`ed): (certificate PEM, key PKCS#8 PEM).
fn mdoc_ds_under(
    iaca: &Cert,
    country: &str,
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> (String, String) {
    let ds_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "Production DS");
    p.distinguished_name
        .push(rcgen::DnType::CountryName, country);
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::Other(vec![
        1, 0, 18013, 5, 1, 2,
    ])];
    edit(&mut p);
    let ds = p.signed_by(&ds_key, &iaca.cert, &iaca.key).unwrap();
    (ds.pem(), ds_key.serialize_pem())
}

/// Production mode creates no sandbox IACA: an mso_mdoc offer is refused (422) until the issuer
/// imports its own document signer and chain (`PUT /api/issuers/{issuer}/mdoc-signer`). Imports
/// are checked before anything is stored — a key that is not the certificate's, a leaf that is
/// no document signer, a chain that does not end at its IACA or lacks it, countries that differ
/// — and the imported signer then issues mDLs that this node's verifier, anchored to that IACA,
/// accepts; `issuing_country` must be the document signer's country. The key never comes back.
#[tokio::test]
async fn production_issuer_imports_its_mdoc_document_signer_chain() {
    let de_iaca = mdoc_iaca("DE");
    let iaca = de_iaca.cert.pem();
    let (ds, key) = mdoc_ds_under(&de_iaca, "DE", |_| {});
    let dir = tempfile::tempdir().unwrap();
    let anchors = dir.path().join("iaca.pem");
    std::fs::write(&anchors, &iaca).unwrap();
    let s = Server::builder()
        .env("IDSTACK__SERVER__MODE", "production")
        .env("IDSTACK__STORE__MASTER_KEY", crate::common::TEST_MASTER_KEY)
        .env("IDSTACK__X509__TRUST_ANCHORS", anchors.to_str().unwrap())
        // the verifier fetches the issuer's CWT status list from this same node, over http
        .env("IDSTACK__HTTP__OUTBOUND__ALLOW_PRIVATE", "loopback")
        .env("IDSTACK__VERIFIER__STATUS_LISTS_OVER_HTTP", "true")
        .start()
        .await;
    let mdl = "org.iso.18013.5.1.mDL";
    let claims = |country: &str| {
        json!({"family_name": "Mustermann", "given_name": "Erika", "birth_date": "1984-01-26",
        "issue_date": "2026-01-01", "expiry_date": "2036-01-01", "issuing_country": country,
        "issuing_authority": "Kraftfahrt-Bundesamt", "document_number": "D-1",
        "driving_privileges": [{"vehicle_category_code": "B"}], "un_distinguishing_sign": "D",
        "age_over_18": true})
    };
    let offer = |claims: Value| {
        client()
            .post(s.url("/api/issuers/default/offers"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"credential_configuration_ids": [mdl], "claims": claims}))
            .send()
    };
    let r = offer(claims("DE")).await.unwrap();
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("mdoc-signer"), "{p}");
    let r = s.anon().get_resp("/issuers/default/mdoc-iaca").await;
    assert_eq!(r.status(), 404, "no sandbox IACA in production");
    // nor a CWT status list signed by a document signer it does not have (404, not 500), and
    // no arithmetic on list numbers from the URL
    let status_list = |list: &str| {
        s.anon()
            .request(
                reqwest::Method::GET,
                format!("/issuers/default/status-lists/{list}"),
            )
            .header("Accept", "application/statuslist+cwt")
            .send()
    };
    assert_eq!(status_list("token-1").await.unwrap().status(), 404);
    for huge in ["token-18446744073709551615", "token-140737488355329"] {
        assert_eq!(status_list(huge).await.unwrap().status(), 404, "{huge}");
    }

    let import = |key: &str, chain: String| {
        client()
            .put(s.url("/api/issuers/default/mdoc-signer"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"private_key_pem": key, "certificate_chain_pem": chain}))
            .send()
    };
    let (other_iaca, other_ds, other_key) = mdoc_chain("DE", |_| {});
    let (not_ds_iaca, not_ds, not_ds_key) = mdoc_chain("DE", |p| p.extended_key_usages.clear());
    let (fr_iaca, fr_ds, fr_key) = mdoc_chain("DE", |p| {
        p.distinguished_name.push(rcgen::DnType::CountryName, "FR")
    });
    for (k, chain, why) in [
        (&other_key, format!("{ds}{iaca}"), "not the document signer"),
        (
            &not_ds_key,
            format!("{not_ds}{not_ds_iaca}"),
            "extendedKeyUsage",
        ),
        (&key, format!("{ds}{other_iaca}"), "does not verify"),
        (&key, format!("{other_ds}{iaca}"), "does not verify"),
        (&key, ds.clone(), "IACA"),
        (&fr_key, format!("{fr_ds}{fr_iaca}"), "same countryName"),
        (&"not a key".to_string(), format!("{ds}{iaca}"), "PKCS#8"),
        (&key, " \r\n".to_string(), "empty"),
    ] {
        let r = import(k, chain).await.unwrap();
        assert_eq!(r.status(), 422, "{why}");
        let p: Value = r.json().await.unwrap();
        assert!(p["detail"].as_str().unwrap().contains(why), "{why}: {p}");
    }

    let r = import(&key, format!("{ds}{iaca}")).await.unwrap();
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["country"], "DE", "{info}");
    assert_eq!(info["imported"], true);
    assert!(!info.to_string().contains("PRIVATE"), "{info}");
    let pem = s.anon().text("/issuers/default/mdoc-iaca").await;
    assert_eq!(pem.trim(), iaca.trim(), "the imported IACA is published");

    // issuing_country must be the document signer's
    assert_eq!(offer(claims("UT")).await.unwrap().status(), 422);
    let (device, cred) = full_flow(&s, mdl, claims("DE")).await;
    let signed =
        idstack::crypto::b64url_decode(cred["credentials"][0]["credential"].as_str().unwrap())
            .unwrap();
    // a verifier that trusts the issuer's DID does not trust its mdocs: their issuer is named
    // by the IACA over the document signer
    trusting_verifier(&s, "rp").await;
    let (status, r) = present_mdl(&s, "rp", &device, &signed).await;
    assert_ne!((status, &r["verified"]), (200, &json!(true)), "{r}");
    assert!(r.to_string().contains(&iaca_entry(&de_iaca)), "{r}");
    let issuer: Value = s.admin().get("/api/issuers/default").await;
    let r = s
        .admin()
        .put_resp(
            "/api/verifiers/rp",
            &json!({"trusted_issuers": [issuer["did"], iaca_entry(&de_iaca)]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let (status, r) = present_mdl(&s, "rp", &device, &signed).await;
    assert_eq!((status, &r["verified"]), (200, &json!(true)), "{r}");
    // rotation: a new document signer under the same IACA signs the status lists from now on;
    // the mdoc of the old one still verifies (its list is signed under its IACA)
    let (ds2, key2) = mdoc_ds_under(&de_iaca, "DE", |_| {});
    let r = import(&key2, format!("{ds2}{iaca}")).await.unwrap();
    assert_eq!(r.status(), 200);
    let (status, r) = present_mdl(&s, "rp", &device, &signed).await;
    assert_eq!(
        (status, &r["verified"]),
        (200, &json!(true)),
        "after a rotation: {r}"
    );
    // and the very next mdoc is signed by the new document signer (none opened before is used)
    let (_, cred) = full_flow(&s, mdl, claims("DE")).await;
    let next =
        idstack::crypto::b64url_decode(cred["credentials"][0]["credential"].as_str().unwrap())
            .unwrap();
    let anchors = idstack::crypto::x509::TrustAnchors::from_pem(iaca.as_bytes()).unwrap();
    let v = idstack::crypto::mdoc::decode(&next)
        .and_then(|d| idstack::crypto::mdoc::verify::issuer_signed(&d, None, &anchors, now()))
        .unwrap();
    let key2 = {
        use p256::pkcs8::DecodePrivateKey;
        p256::ecdsa::SigningKey::from_pkcs8_pem(&key2).unwrap()
    };
    assert_eq!(
        v.signer_key,
        idstack::crypto::VerifyingKey::P256(*key2.verifying_key())
    );
    // a deleted tenant's document signer goes with it: the same id created again has none
    let r = s
        .admin()
        .post_resp("/api/issuers", &json!({"id": "t1", "key_type": "P-256"}))
        .await;
    assert_eq!(r.status(), 201);
    let r = s
        .admin()
        .put_resp(
            "/api/issuers/t1/mdoc-signer",
            &json!({"private_key_pem": key, "certificate_chain_pem": format!("{ds}{iaca}")}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.admin().delete_resp("/api/issuers/t1").await.status(), 204);
    let r = s
        .admin()
        .post_resp("/api/issuers", &json!({"id": "t1", "key_type": "P-256"}))
        .await;
    assert_eq!(r.status(), 201);
    let r = s.admin().get_resp("/api/issuers/t1/mdoc-signer").await;
    assert_eq!(
        r.status(),
        404,
        "the old tenant's document signer was forgotten"
    );
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(
        !s.log().contains(&key_body[..40]),
        "the private key leaked into the log"
    );
    s.stop();
}

mod mdoc_documents;
mod mdoc_trust;
mod pex_format;

/// An SD-JWT VC naming an `https` issuer on an internal IP literal: its JWT VC Issuer Metadata is
/// not fetched — the outbound guard refuses the URL before any connection (attacker review: the
/// metadata fetch bypassed the pre-connect check, so the verifier opened TCP and sent a TLS
/// hello to any internal port an outsider named, and timing told open ports from filtered ones).
#[tokio::test]
async fn an_sd_jwt_issuer_on_an_internal_address_is_not_contacted() {
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = internal.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = internal.accept().await {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(sock);
        }
    });
    let s = Server::builder()
        .env("IDSTACK__HTTP__OUTBOUND__ALLOW_PRIVATE", "none")
        .start()
        .await;
    let (issuer, holder) = (
        SigningKey::generate(KeyType::P256),
        SigningKey::generate(KeyType::P256),
    );
    let iss = format!("https://127.0.0.1:{port}");
    let (jwt, disclosures) = self_issued_sd(&issuer, &iss, "k1", &holder, json!({}));
    let req = open(&s, "default", sd_query()).await;
    let (status, r) = respond(
        &s,
        &req,
        "pid",
        json!(sd_present(&holder, &jwt, &disclosures, &req)),
    )
    .await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["verified"], false, "{r}");
    assert!(r.to_string().contains("not allowed"), "{r}");
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the internal address was connected to"
    );
}
