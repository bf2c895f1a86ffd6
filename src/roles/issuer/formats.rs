//! Building credentials and status-list tokens in each format.

use serde_json::{json, Map, Value};

use super::model::{CredentialConfig, Format, Issuer};
use crate::crypto::{did, jws, sdjwt, CryptoResult, SigningKey, VerifyingKey};

/// Where a credential's status lives.
#[derive(Debug, Clone)]
pub struct StatusRef {
    /// The list (1-based, as in its URIs) and the index within it.
    pub list: u64,
    pub index: u64,
    /// IETF Token Status List URI (SD-JWT VC).
    pub token_list: String,
    /// W3C Bitstring Status List credential URIs (W3C formats).
    pub revocation_list: String,
    pub suspension_list: String,
}

pub struct IssueInput<'a> {
    pub issuer: &'a Issuer,
    pub key: &'a SigningKey,
    pub config: &'a CredentialConfig,
    pub vct: String,
    pub claims: &'a Map<String, Value>,
    pub holder: &'a VerifyingKey,
    /// The holder's DID when its proof named one.
    pub holder_did: Option<String>,
    pub credential_id: &'a str,
    pub now: i64,
    pub expires_at: Option<i64>,
    pub status: &'a StatusRef,
}

pub fn issue(input: &IssueInput<'_>) -> Result<Value, String> {
    match input.config.format {
        Format::JwtVcJson => Ok(Value::String(jwt_vc_json(input))),
        Format::SdJwt => Ok(Value::String(sd_jwt_vc(input))),
        Format::LdpVc => Err("ldp_vc is issued through `ldp_vc` on the blocking pool".into()),
        Format::MsoMdoc => Err("mso_mdoc is issued through `issuer::mdoc`".into()),
    }
}

/// VCDM 2.0 credential with a Data Integrity `eddsa-rdfc-2022` proof (`ldp_vc`): signed within
/// the `jsonld.*` bounds, in one of the JSON-LD slots verifications share (RDF canonicalization
/// is CPU-heavy), so a token's concurrent requests cannot take every thread (attacker review).
#[allow(clippy::too_many_arguments)]
pub async fn ldp_vc(
    issuer: &Issuer,
    key: std::sync::Arc<SigningKey>,
    credential_type: String,
    claims: Map<String, Value>,
    holder_did: String,
    credential_id: &str,
    now: i64,
    expires_at: Option<i64>,
    status: &StatusRef,
) -> CryptoResult<Value> {
    let vc = ldp_vc_document(
        credential_type,
        claims,
        holder_did,
        credential_id,
        now,
        expires_at,
        status,
    );
    let vm = issuer.verification_method.clone();
    crate::crypto::di::issue_credential_bounded(key, vm, vc, now).await
}

/// Whether an `ldp_vc` of this type with these claims can be signed: the same document, signed
/// with a throwaway key (an offer is refused when its credential could never be issued, rather
/// than each wallet's request failing at the credential endpoint), within the same bounds.
pub async fn ldp_vc_signable(
    credential_type: String,
    claims: Map<String, Value>,
    now: i64,
) -> CryptoResult<()> {
    let key = SigningKey::generate(crate::crypto::KeyType::Ed25519);
    let vm = did::verification_method(&did::did_key(&key.verifying_key()));
    let list = "https://issuer.invalid/status/1".to_string();
    let status = StatusRef {
        list: 1,
        index: 0,
        token_list: list.clone(),
        revocation_list: list.clone(),
        suspension_list: list,
    };
    let vc = ldp_vc_document(
        credential_type,
        claims,
        did::did_key(&key.verifying_key()),
        "trial",
        now,
        Some(now + 1),
        &status,
    );
    crate::crypto::di::issue_credential_bounded(std::sync::Arc::new(key), vm, vc, now)
        .await
        .map(|_| ())
}

/// The unsigned VCDM 2.0 credential of an `ldp_vc`.
fn ldp_vc_document(
    credential_type: String,
    claims: Map<String, Value>,
    holder_did: String,
    credential_id: &str,
    now: i64,
    expires_at: Option<i64>,
    status: &StatusRef,
) -> Map<String, Value> {
    let mut subject = claims;
    subject.insert("id".into(), json!(holder_did));
    let mut vc = Map::new();
    vc.insert(
        "id".into(),
        json!(format!("urn:uuid:{}", uuid_like(credential_id))),
    );
    vc.insert(
        "type".into(),
        json!(["VerifiableCredential", credential_type]),
    );
    vc.insert("credentialSubject".into(), Value::Object(subject));
    vc.insert("validFrom".into(), json!(rfc3339(now)));
    if let Some(exp) = expires_at {
        vc.insert("validUntil".into(), json!(rfc3339(exp)));
    }
    vc.insert(
        "credentialStatus".into(),
        json!([
            {"id": format!("{}#{}", status.revocation_list, status.index), "type": "BitstringStatusListEntry", "statusPurpose": "revocation", "statusListIndex": status.index.to_string(), "statusListCredential": status.revocation_list},
            {"id": format!("{}#{}", status.suspension_list, status.index), "type": "BitstringStatusListEntry", "statusPurpose": "suspension", "statusListIndex": status.index.to_string(), "statusListCredential": status.suspension_list}
        ]),
    );
    vc
}

/// The holder DID a credential is bound to: the proof's DID, or did:jwk of the proof key.
pub fn holder_did_of(holder: &VerifyingKey, named: &Option<String>) -> String {
    named.clone().unwrap_or_else(|| did::did_jwk(holder))
}

fn holder_did(input: &IssueInput<'_>) -> String {
    input
        .holder_did
        .clone()
        .unwrap_or_else(|| did::did_jwk(input.holder))
}

/// W3C VCDM 1.1 credential as a JWT (`jwt_vc_json`), with Bitstring status entries.
fn jwt_vc_json(input: &IssueInput<'_>) -> String {
    let subject_id = holder_did(input);
    let mut subject = input.claims.clone();
    subject.insert("id".into(), json!(subject_id));
    let s = input.status;
    // VCDM 1.1 has one credentialStatus object (wallets such as credo-ts reject an array), so
    // jwt_vc_json carries the revocation entry only; ldp_vc (VCDM 2.0) carries both purposes.
    let status = json!({
        "id": format!("{}#{}", s.revocation_list, s.index),
        "type": "BitstringStatusListEntry",
        "statusPurpose": "revocation",
        "statusListIndex": s.index.to_string(),
        "statusListCredential": s.revocation_list,
    });
    let mut vc = json!({
        "@context": ["https://www.w3.org/2018/credentials/v1"],
        "id": format!("urn:uuid:{}", uuid_like(input.credential_id)),
        "type": ["VerifiableCredential", input.config.credential_type],
        "issuer": input.issuer.did,
        "issuanceDate": rfc3339(input.now),
        "credentialSubject": subject,
        "credentialStatus": status,
    });
    let mut payload = json!({
        "iss": input.issuer.did,
        "sub": subject_id,
        "nbf": input.now,
        "iat": input.now,
        "jti": vc["id"],
    });
    if let Some(exp) = input.expires_at {
        payload["exp"] = json!(exp);
        vc["expirationDate"] = json!(rfc3339(exp));
    }
    vc_jwt(
        input.key,
        &input.issuer.verification_method,
        vc,
        Some(payload),
    )
}

/// A W3C credential secured as a JWT, signed with the issuer's key `kid`: VC-JWT (VCDM 1.1,
/// `typ: JWT`), the credential in the `vc` claim of `claims` (`iss`, `sub`, `nbf`, ...), when
/// `claims` is given; else VC-JOSE-COSE (`typ: vc+jwt`, VCDM 2.0), the credential itself the
/// payload. Both the OID4VCI `jwt_vc_json` format and VC-API issue sign through here.
pub fn vc_jwt(key: &SigningKey, kid: &str, vc: Value, claims: Option<Value>) -> String {
    match claims {
        Some(mut payload) => {
            payload["vc"] = vc;
            jws::sign(key, json!({"typ": "JWT", "kid": kid}), &payload)
        }
        None => jws::sign(key, json!({"typ": "vc+jwt", "kid": kid}), &vc),
    }
}

/// Claim names of an SD-JWT VC that only the issuer sets (RFC 7519 registered claims it uses;
/// not `sub`, which SD-JWT VC leaves to the credential; SD-JWT VC's `vct`, `cnf`, `status`) or
/// that SD-JWT itself reserves (`_sd`, `_sd_alg`, `...`): an offer's claim of one of these names
/// never reaches the credential (attacker review: a non-disclosable `cnf` in the offer replaced
/// the proven holder key). A configuration naming one is refused when it is made.
pub const SD_JWT_RESERVED: [&str; 12] = [
    "iss", "aud", "iat", "nbf", "exp", "jti", "vct", "cnf", "status", "_sd", "_sd_alg", "...",
];

/// SD-JWT VC (`dc+sd-jwt`) bound to the holder key, with a Token Status List reference.
fn sd_jwt_vc(input: &IssueInput<'_>) -> String {
    let mut payload = Map::new();
    payload.insert("iss".into(), json!(input.issuer.did));
    payload.insert("iat".into(), json!(input.now));
    payload.insert("nbf".into(), json!(input.now));
    if let Some(exp) = input.expires_at {
        payload.insert("exp".into(), json!(exp));
    }
    payload.insert("vct".into(), json!(input.vct));
    payload.insert("cnf".into(), json!({"jwk": input.holder.to_jwk()}));
    payload.insert(
        "status".into(),
        json!({"status_list": {"idx": input.status.index, "uri": input.status.token_list}}),
    );
    let mut disclosable = Map::new();
    for (name, value) in input.claims {
        // the issuer's own claims (binding, status, validity, type) and SD-JWT's names are not
        // the offer's to set, disclosable or not
        if SD_JWT_RESERVED.contains(&name.as_str()) {
            continue;
        }
        let sd = input
            .config
            .claims
            .iter()
            .find(|c| &c.name == name)
            .map(|c| c.selectively_disclosable)
            .unwrap_or(true);
        if sd {
            disclosable.insert(name.clone(), value.clone());
        } else {
            payload.insert(name.clone(), value.clone());
        }
    }
    sdjwt::issue(
        input.key,
        json!({"typ": "dc+sd-jwt", "kid": input.issuer.verification_method}),
        payload,
        &disclosable,
    )
}

/// A Token Status List token (`statuslist+jwt`).
pub fn token_status_list(
    issuer: &Issuer,
    key: &SigningKey,
    uri: &str,
    bits: u8,
    lst: String,
    now: i64,
    ttl: i64,
) -> String {
    jws::sign(
        key,
        json!({"typ": "statuslist+jwt", "kid": issuer.verification_method}),
        &json!({
            "sub": uri,
            "iat": now,
            "exp": now + super::status::STATUS_LIST_LIFETIME_SECS,
            "ttl": ttl,
            "status_list": {"bits": bits, "lst": lst},
        }),
    )
}

/// A BitstringStatusListCredential secured as a JWT (VC-JOSE: the payload is the credential).
pub fn bitstring_status_credential(
    issuer: &Issuer,
    key: &SigningKey,
    uri: &str,
    purpose: &str,
    encoded: String,
    now: i64,
) -> String {
    jws::sign(
        key,
        json!({"typ": "vc+jwt", "kid": issuer.verification_method}),
        &json!({
            "@context": ["https://www.w3.org/ns/credentials/v2"],
            "id": uri,
            "type": ["VerifiableCredential", "BitstringStatusListCredential"],
            "issuer": issuer.did,
            "validFrom": rfc3339(now),
            "validUntil": rfc3339(now + super::status::STATUS_LIST_LIFETIME_SECS),
            "credentialSubject": {
                "id": format!("{uri}#list"),
                "type": "BitstringStatusList",
                "statusPurpose": purpose,
                "encodedList": encoded,
            },
            "iss": issuer.did,
            "iat": now,
            "exp": now + super::status::STATUS_LIST_LIFETIME_SECS,
        }),
    )
}

/// A UUID-shaped rendering of a random id (for `urn:uuid:` identifiers).
fn uuid_like(id: &str) -> String {
    let h = crate::crypto::sha256_hex(id);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Unix seconds → RFC 3339 UTC.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
