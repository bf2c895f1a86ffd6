//! A minimal OID4VCI holder for replay and negative tests (the interop suite uses real wallets).

use idstack::crypto::{did, jws, KeyType, SigningKey};
use serde_json::{json, Value};

use crate::common::{client, Server};

pub const PRE_AUTH: &str = "urn:ietf:params:oauth:grant-type:pre-authorized_code";

pub fn now() -> i64 {
    #[allow(clippy::disallowed_methods)]
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    n
}

pub async fn create_offer(s: &Server, issuer: &str, body: Value) -> Value {
    let r = s
        .admin()
        .post_resp(&format!("/api/issuers/{issuer}/offers"), &body)
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

/// The sandbox IACA of `s`'s default issuer (`GET /issuers/default/mdoc-iaca`) written to a PEM
/// file, for a holder or another node to trust; the directory lives as long as the first value.
pub async fn sandbox_iaca_file(s: &Server) -> (tempfile::TempDir, std::path::PathBuf) {
    let r = s.anon().get_resp("/issuers/default/mdoc-iaca").await;
    let pem = r.text().await.unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iaca.pem");
    std::fs::write(&path, &pem).unwrap();
    (dir, path)
}

/// The last path segment of an offer's `credential_offer_uri` (`<id>.<secret>`): what fetches
/// it from `/issuers/{issuer}/offers/{reference}` (the id alone does not).
pub fn offer_reference(offer: &Value) -> String {
    let uri = offer["offer_uri"].as_str().unwrap();
    let (_, encoded) = uri.split_once("credential_offer_uri=").unwrap();
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&format!("u={encoded}")).unwrap();
    pairs[0].1.rsplit('/').next().unwrap().to_string()
}

pub fn pre_auth_code(offer: &Value) -> String {
    offer["credential_offer"]["grants"][PRE_AUTH]["pre-authorized_code"]
        .as_str()
        .unwrap()
        .to_string()
}

pub async fn token(s: &Server, issuer: &str, code: &str, tx_code: Option<&str>) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", PRE_AUTH.to_string()),
        ("pre-authorized_code", code.to_string()),
    ];
    if let Some(t) = tx_code {
        form.push(("tx_code", t.to_string()));
    }
    let r = client()
        .post(s.url(&format!("/issuers/{issuer}/token")))
        .form(&form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

pub async fn nonce(s: &Server, issuer: &str) -> String {
    let r: Value = s
        .anon()
        .post(&format!("/issuers/{issuer}/nonce"), &serde_json::json!({}))
        .await;
    r["c_nonce"].as_str().unwrap().to_string()
}

pub fn proof(holder: &SigningKey, aud: &str, nonce: &str, by_did: bool) -> String {
    let header = if by_did {
        json!({"typ": "openid4vci-proof+jwt", "kid": did::verification_method(&did::did_key(&holder.verifying_key()))})
    } else {
        json!({"typ": "openid4vci-proof+jwt", "jwk": holder.verifying_key().to_jwk()})
    };
    jws::sign(
        holder,
        header,
        &json!({"aud": aud, "iat": now(), "nonce": nonce}),
    )
}

pub async fn credential(s: &Server, issuer: &str, access_token: &str, body: Value) -> (u16, Value) {
    let r = s
        .bearer(access_token)
        .post_resp(&format!("/issuers/{issuer}/credential"), &body)
        .await;
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Offer → token → nonce → credential; returns (holder key, credential response).
pub async fn full_flow(s: &Server, config: &str, claims: Value) -> (SigningKey, Value) {
    let offer = create_offer(
        s,
        "default",
        json!({"credential_configuration_ids": [config], "claims": claims}),
    )
    .await;
    let (st, tok) = token(s, "default", &pre_auth_code(&offer), None).await;
    assert_eq!(st, 200, "{tok}");
    let holder = SigningKey::generate(KeyType::P256);
    let n = nonce(s, "default").await;
    let aud = s.url("/issuers/default");
    let (st, cred) = credential(s, "default", tok["access_token"].as_str().unwrap(), json!({"credential_configuration_id": config, "proofs": {"jwt": [proof(&holder, &aud, &n, false)]}})).await;
    assert_eq!(st, 200, "{cred}");
    (holder, cred)
}
