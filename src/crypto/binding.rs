//! The issuer-key binding rule: the one place that decides which key may sign a credential (or a
//! status list) for the issuer it names. Every entry point that checks an issuer's signature — the
//! OID4VP verifier for every format, VC-API verify, the wallet accepting or importing credentials,
//! status-list tokens — gets its key from here and nowhere else.
//!
//! The rule (adversarial by default: the token, its header and every fetched document are the
//! attacker's until proven otherwise):
//! - The issuer is what the payload names: `iss`, `vc.issuer` (VC-JWT 1.1) and `issuer` (VC-JOSE,
//!   `vc+jwt`), each a string or an object with `id`. When several are present they must agree.
//! - A header `jwk`, `x5u` or `jku` proves nothing about the issuer and is refused. An `x5c` is
//!   refused too, except for an SD-JWT VC with an `https` issuer when `x509.trust_anchors` is set:
//!   then the chain must end at an anchor and its leaf must name the issuer (see [`super::x509`]).
//! - DID issuers: the `kid` is a DID URL whose DID is exactly the issuer's (a relative `#frag`
//!   resolves against the issuer; no `kid` is allowed only when the issuer's DID document has exactly
//!   one `assertionMethod`), and the verification method it names must be listed in the issuer's DID
//!   document under `assertionMethod`. did:key and did:jwk documents are derived from the DID itself;
//!   did:web documents are fetched (see [`super::did::fetch_did_web_document`]).
//! - `https` issuers (SD-JWT VC only): the key comes from the issuer's JWT VC Issuer Metadata
//!   (`/.well-known/jwt-vc-issuer` inserted between host and path), whose `issuer` must equal `iss`,
//!   chosen by `kid` (required when it lists several keys).
//! - Nothing else is accepted. The signature is then checked with that key, and the header's `alg`
//!   must be the key's algorithm (no `none`, no HMAC, no algorithm confusion).

use serde_json::Value;

use super::x509::TrustAnchors;
use super::{did, jws, VerifyingKey};

/// Why a key could not be bound to the issuer (or the signature failed with the bound key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error("the credential names no issuer")]
    NoIssuer,
    #[error("the credential names two issuers: {0} and {1}")]
    IssuerMismatch(String, String),
    #[error("a header `{0}` proves nothing about the issuer; the key must come from the issuer's DID document or metadata")]
    HeaderKey(&'static str),
    #[error("kid {kid} does not belong to the issuer {issuer}")]
    KidNotIssuer { kid: String, issuer: String },
    #[error("kid {0} is not a DID URL or a relative reference (#...)")]
    BadKid(String),
    #[error("the issuer's DID document lists several assertion methods; a kid is required")]
    KidRequired,
    #[error("{0} is not an assertionMethod of the issuer")]
    NotAssertionMethod(String),
    #[error("issuer {0} is neither a DID nor an https URL")]
    UnsupportedIssuer(String),
    #[error("issuer key: {0}")]
    Resolve(String),
    #[error("issuer key: {0}")]
    Refused(String),
    #[error("issuer metadata: {0}")]
    Metadata(String),
    #[error("{0}")]
    Token(String),
    #[error("issuer signature: {0}")]
    Signature(String),
    #[error("x5c: {0}")]
    X5c(String),
}

impl BindingError {
    /// A stable, machine-readable code for API results.
    pub fn code(&self) -> &'static str {
        match self {
            BindingError::NoIssuer => "no_issuer",
            BindingError::IssuerMismatch(..) => "issuer_mismatch",
            BindingError::HeaderKey(_) => "header_key_not_trusted",
            BindingError::KidNotIssuer { .. } => "kid_not_issuer",
            BindingError::BadKid(_) => "bad_kid",
            BindingError::KidRequired => "kid_required",
            BindingError::NotAssertionMethod(_) => "not_assertion_method",
            BindingError::UnsupportedIssuer(_) => "unsupported_issuer",
            BindingError::Resolve(_) => "issuer_key_unresolvable",
            BindingError::Refused(_) => "outbound_refused",
            BindingError::Metadata(_) => "issuer_metadata",
            BindingError::Token(_) => "malformed_token",
            BindingError::Signature(_) => "bad_signature",
            BindingError::X5c(_) => "x5c_untrusted",
        }
    }
}

/// A key proven to belong to `issuer`, and the verification method (or JWK `kid`) it was found by.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerKey {
    pub issuer: String,
    pub method: String,
    pub key: VerifyingKey,
}

/// Which issuer identifiers a token may use.
#[derive(Debug, Clone, Copy)]
pub enum Issuers<'a> {
    /// DIDs only (W3C VCs, status lists of W3C VCs).
    Did,
    /// DIDs or `https` URLs (SD-JWT VC): keys from JWT VC Issuer Metadata, or from an `x5c` chain
    /// ending at one of `anchors` (checked at `now`).
    DidOrHttps { anchors: &'a TrustAnchors, now: i64 },
}

fn id_of(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s.as_str()),
        Value::Object(o) => o.get("id").and_then(Value::as_str),
        _ => None,
    }
}

/// The issuer a JWT-secured credential names; `iss`, `vc.issuer` and `issuer` must agree.
pub fn jwt_issuer(payload: &Value) -> Result<String, BindingError> {
    let mut found: Option<&str> = None;
    for v in [
        &payload["iss"],
        &payload["vc"]["issuer"],
        &payload["issuer"],
    ] {
        if v.is_null() {
            continue;
        }
        let Some(id) = id_of(v).filter(|s| !s.is_empty()) else {
            return Err(BindingError::NoIssuer);
        };
        match found {
            None => found = Some(id),
            Some(f) if f == id => {}
            Some(f) => return Err(BindingError::IssuerMismatch(f.into(), id.into())),
        }
    }
    found.map(str::to_string).ok_or(BindingError::NoIssuer)
}

/// The issuer of a JSON-LD (Data Integrity) credential: `issuer` as a string or `{id}`.
pub fn ld_issuer(vc: &Value) -> Result<String, BindingError> {
    id_of(&vc["issuer"])
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or(BindingError::NoIssuer)
}

/// The DID document of a DID: derived for did:key / did:jwk, fetched for did:web.
pub async fn did_document(did_: &str, http: &reqwest::Client) -> Result<Value, BindingError> {
    if did_.starts_with("did:web:") {
        return did::fetch_did_web_document(did_, http).await.map_err(
            |e| match did::outbound_error(&e) {
                // The outbound guard refused the fetch (a private address, a redirect...).
                Some(o) => BindingError::Refused(o.to_string()),
                None => BindingError::Resolve(e.to_string()),
            },
        );
    }
    if did_.contains('#') || did_.contains('?') {
        return Err(BindingError::Resolve(format!("{did_} is not a bare DID")));
    }
    let key = did::resolve_offline(did_).map_err(|e| BindingError::Resolve(e.to_string()))?;
    // The implicit document: the key's one verification method, used for every relationship.
    Ok(did::did_web_document(did_, &key))
}

/// Makes a (possibly relative) DID URL absolute against the document's DID.
fn absolute(doc_id: &str, reference: &str) -> String {
    if reference.starts_with('#') {
        format!("{doc_id}{reference}")
    } else {
        reference.to_string()
    }
}

/// The key of verification method `method` (absolute DID URL), which must be listed under
/// `assertionMethod` in `doc` (by reference or embedded).
pub fn assertion_key(doc: &Value, method: &str) -> Result<VerifyingKey, BindingError> {
    related_key(doc, method, &["assertionMethod"]).map_err(|e| match e {
        Unrelated::NotListed(m) => BindingError::NotAssertionMethod(m),
        Unrelated::Resolve(m) => BindingError::Resolve(m),
    })
}

/// Why a verification method is not a DID's key for a purpose.
#[derive(Debug)]
pub enum Unrelated {
    /// Not listed under the relationship, or controlled by another DID.
    NotListed(String),
    Resolve(String),
}

/// The key of verification method `method` (absolute DID URL), which must be listed under one of
/// `relationships` in `doc` (by reference or embedded) and be controlled by the document's DID:
/// a key the document lists for another purpose, or holds for another controller, is not the
/// DID's key for this one.
pub fn related_key(
    doc: &Value,
    method: &str,
    relationships: &[&str],
) -> Result<VerifyingKey, Unrelated> {
    let doc_id = doc["id"].as_str().unwrap_or_default();
    let listed: Vec<&Value> = relationships
        .iter()
        .filter_map(|r| doc[*r].as_array())
        .flatten()
        .collect();
    let mut embedded = None;
    let mut referenced = false;
    for m in listed {
        match m {
            Value::String(r) if absolute(doc_id, r) == method => referenced = true,
            Value::Object(o)
                if o.get("id")
                    .and_then(Value::as_str)
                    .map(|i| absolute(doc_id, i))
                    == Some(method.to_string()) =>
            {
                embedded = Some(m.clone())
            }
            _ => {}
        }
    }
    let vm = match (embedded, referenced) {
        (Some(vm), _) => vm,
        (None, true) => doc["verificationMethod"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|m| m["id"].as_str().map(|i| absolute(doc_id, i)) == Some(method.into()))
            })
            .cloned()
            .ok_or_else(|| Unrelated::Resolve(format!("{method} is not in the DID document")))?,
        (None, false) => return Err(Unrelated::NotListed(method.to_string())),
    };
    // a controller is one DID, this document's (a list or an object is no controller to check:
    // refused rather than passed over)
    match &vm["controller"] {
        Value::Null => {}
        Value::String(c) if c == doc_id => {}
        Value::String(c) => {
            return Err(Unrelated::NotListed(format!(
                "{method} (controlled by {c})"
            )))
        }
        _ => {
            return Err(Unrelated::NotListed(format!(
                "{method} (its controller is not one DID)"
            )))
        }
    }
    method_key(&vm).map_err(Unrelated::Resolve)
}

/// The one method `doc` lists under `relationships` (absolute), for a kid without a fragment;
/// `None` when there is none or more than one.
pub fn only_related_method(doc: &Value, relationships: &[&str]) -> Option<String> {
    let doc_id = doc["id"].as_str().unwrap_or_default();
    let mut ids: Vec<String> = relationships
        .iter()
        .filter_map(|r| doc[*r].as_array())
        .flatten()
        .filter_map(id_of)
        .map(|i| absolute(doc_id, i))
        .collect();
    // one key listed under both relationships (idstack's own did:web documents) is one method
    ids.sort();
    ids.dedup();
    match ids.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// The public key of a verification method: `publicKeyJwk` or a Multikey `publicKeyMultibase`.
fn method_key(vm: &Value) -> Result<VerifyingKey, String> {
    if let Some(jwk) = vm.get("publicKeyJwk") {
        if jwk.get("d").is_some() {
            return Err("a verification method must not carry a private key".into());
        }
        return VerifyingKey::from_jwk(jwk).map_err(|e| e.to_string());
    }
    if let Some(mb) = vm["publicKeyMultibase"].as_str() {
        return did::resolve_offline(&format!("did:key:{mb}")).map_err(|e| e.to_string());
    }
    Err("the verification method has no usable public key".into())
}

/// The single assertion method of a DID document, for tokens without `kid`.
fn only_assertion_method(doc: &Value) -> Result<String, BindingError> {
    let doc_id = doc["id"].as_str().unwrap_or_default();
    match doc["assertionMethod"].as_array().map(Vec::as_slice) {
        Some([one]) => id_of(one)
            .map(|i| absolute(doc_id, i))
            .ok_or_else(|| BindingError::Resolve("malformed assertionMethod".into())),
        Some([]) | None => Err(BindingError::NotAssertionMethod(doc_id.to_string())),
        Some(_) => Err(BindingError::KidRequired),
    }
}

/// The key a DID issuer signs with for verification method `kid` (absolute, relative or absent).
pub async fn did_issuer_key(
    issuer: &str,
    kid: Option<&str>,
    http: &reqwest::Client,
) -> Result<IssuerKey, BindingError> {
    if issuer.contains('#') || issuer.contains('?') || issuer.contains('/') {
        return Err(BindingError::UnsupportedIssuer(issuer.to_string()));
    }
    let method = match kid {
        Some(k) if k.starts_with('#') => Some(format!("{issuer}{k}")),
        Some(k) if k.starts_with("did:") => {
            let kid_did = k.split(['#', '?']).next().unwrap_or(k);
            if kid_did != issuer {
                return Err(BindingError::KidNotIssuer {
                    kid: k.to_string(),
                    issuer: issuer.to_string(),
                });
            }
            if !k.contains('#') {
                None
            } else {
                Some(k.to_string())
            }
        }
        Some(k) => return Err(BindingError::BadKid(k.to_string())),
        None => None,
    };
    let doc = did_document(issuer, http).await?;
    let method = match method {
        Some(m) => m,
        None => only_assertion_method(&doc)?,
    };
    let key = assertion_key(&doc, &method)?;
    Ok(IssuerKey {
        issuer: issuer.to_string(),
        method,
        key,
    })
}

/// The URL of an `https` issuer's JWT VC Issuer Metadata (SD-JWT VC §5): the well-known segment
/// goes between the host and the issuer's path. Plain http only for loopback hosts (the same rule
/// as did:web).
pub fn jwt_vc_issuer_metadata_url(iss: &str) -> Result<String, BindingError> {
    let (scheme, rest) = iss
        .split_once("://")
        .ok_or_else(|| BindingError::UnsupportedIssuer(iss.to_string()))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let loopback = {
        let h = host.rsplit_once(':').map_or(host, |(h, _)| h);
        h == "127.0.0.1" || h == "localhost" || h == "[::1]"
    };
    let ok = match scheme {
        "https" => true,
        "http" => loopback,
        _ => false,
    };
    if !ok
        || host.is_empty()
        || host.contains('@')
        || rest.contains('?')
        || rest.contains('#')
        || path.split('/').any(|s| s == "..")
    {
        return Err(BindingError::UnsupportedIssuer(iss.to_string()));
    }
    Ok(format!("{scheme}://{host}/.well-known/jwt-vc-issuer{path}"))
}

const METADATA_MAX: usize = 64 * 1024;

async fn fetch_json(http: &reqwest::Client, url: &str) -> Result<Value, BindingError> {
    // through the guard's URL check first: an IP-literal host it refuses is never connected to
    let mut resp =
        crate::http::outbound::send(http.get(url).timeout(std::time::Duration::from_secs(5)))
            .await
            .map_err(|e| match e {
                e if e.is_refused() => BindingError::Refused(e.to_string()),
                _ => BindingError::Metadata(format!("{url} could not be fetched")),
            })?;
    if !resp.status().is_success() {
        return Err(BindingError::Metadata(format!(
            "{url}: HTTP {}",
            resp.status().as_u16()
        )));
    }
    if resp
        .content_length()
        .is_some_and(|l| l > METADATA_MAX as u64)
    {
        return Err(BindingError::Metadata(format!("{url}: too large")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|_| BindingError::Metadata(format!("{url}: read failed")))?
    {
        if body.len() + chunk.len() > METADATA_MAX {
            return Err(BindingError::Metadata(format!("{url}: too large")));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|_| BindingError::Metadata(format!("{url}: not JSON")))
}

/// The key an `https` SD-JWT VC issuer signs with, from its JWT VC Issuer Metadata.
pub async fn https_issuer_key(
    iss: &str,
    kid: Option<&str>,
    http: &reqwest::Client,
) -> Result<IssuerKey, BindingError> {
    let url = jwt_vc_issuer_metadata_url(iss)?;
    let meta = fetch_json(http, &url).await?;
    if meta["issuer"].as_str() != Some(iss) {
        return Err(BindingError::Metadata(format!(
            "the metadata at {url} is for another issuer"
        )));
    }
    let jwks = match (&meta["jwks"], meta["jwks_uri"].as_str()) {
        (Value::Object(_), None) => meta["jwks"].clone(),
        (Value::Null, Some(u)) => {
            let same_origin = jwt_vc_issuer_metadata_url(u).is_ok()
                && u.split('/').take(3).eq(iss.split('/').take(3));
            if !same_origin {
                return Err(BindingError::Metadata(
                    "jwks_uri must be on the issuer's own origin".into(),
                ));
            }
            fetch_json(http, u).await?
        }
        _ => {
            return Err(BindingError::Metadata(
                "exactly one of jwks and jwks_uri is required".into(),
            ))
        }
    };
    let keys = jwks["keys"].as_array().cloned().unwrap_or_default();
    let jwk = match kid {
        Some(k) => keys.iter().find(|j| j["kid"].as_str() == Some(k)),
        None if keys.len() == 1 => keys.first(),
        None => return Err(BindingError::KidRequired),
    }
    .ok_or_else(|| BindingError::Metadata(format!("no key {kid:?} in the issuer's JWKS")))?;
    if jwk.get("d").is_some() {
        return Err(BindingError::Metadata(
            "the JWKS carries a private key".into(),
        ));
    }
    let key = VerifyingKey::from_jwk(jwk).map_err(|e| BindingError::Metadata(e.to_string()))?;
    Ok(IssuerKey {
        issuer: iss.to_string(),
        method: kid.unwrap_or_default().to_string(),
        key,
    })
}

/// The key bound to the issuer a JWT names (see the module doc for the rule).
pub async fn jwt_issuer_key(
    header: &Value,
    payload: &Value,
    allowed: Issuers<'_>,
    http: &reqwest::Client,
) -> Result<IssuerKey, BindingError> {
    for h in ["jwk", "x5u", "jku"] {
        if header.get(h).is_some() {
            return Err(BindingError::HeaderKey(h));
        }
    }
    let issuer = jwt_issuer(payload)?;
    if let Some(x5c) = header.get("x5c") {
        // Only an https issuer's chain to a configured anchor, whose leaf names that issuer.
        return match allowed {
            Issuers::DidOrHttps { anchors, now }
                if issuer.starts_with("https://") && !anchors.is_empty() =>
            {
                let chain: Vec<String> = x5c
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|c| c.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let key = anchors
                    .leaf_key(&chain, &issuer, now)
                    .map_err(BindingError::X5c)?;
                Ok(IssuerKey {
                    issuer,
                    method: "x5c".into(),
                    key,
                })
            }
            _ => Err(BindingError::HeaderKey("x5c")),
        };
    }
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(other) => return Err(BindingError::BadKid(other.to_string())),
    };
    if issuer.starts_with("did:") {
        did_issuer_key(&issuer, kid, http).await
    } else if matches!(allowed, Issuers::DidOrHttps { .. })
        && (issuer.starts_with("https://") || issuer.starts_with("http://"))
    {
        https_issuer_key(&issuer, kid, http).await
    } else {
        Err(BindingError::UnsupportedIssuer(issuer))
    }
}

/// Verifies an issuer-signed compact JWS (a JWT credential, the issuer JWT of an SD-JWT, a
/// status-list token): binds the key to the issuer it names, then checks the signature.
/// Returns the bound key, header and payload.
pub async fn verify_issuer_jwt(
    token: &str,
    allowed: Issuers<'_>,
    http: &reqwest::Client,
) -> Result<(IssuerKey, Value, Value), BindingError> {
    let (header, payload, _, _) =
        jws::decode_unverified(token).map_err(|e| BindingError::Token(e.to_string()))?;
    let bound = jwt_issuer_key(&header, &payload, allowed, http).await?;
    jws::verify(token, &bound.key).map_err(|e| BindingError::Signature(e.to_string()))?;
    Ok((bound, header, payload))
}

/// The implicit-document check for Data Integrity proofs: the proof's verification method must be
/// an assertion method of the credential's issuer DID.
pub async fn ld_issuer_key(
    vc: &Value,
    proof_method: &str,
    http: &reqwest::Client,
) -> Result<IssuerKey, BindingError> {
    let issuer = ld_issuer(vc)?;
    if !issuer.starts_with("did:") {
        return Err(BindingError::UnsupportedIssuer(issuer));
    }
    did_issuer_key(&issuer, Some(proof_method), http).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{b64url, KeyType, SigningKey};
    use serde_json::json;

    fn http() -> reqwest::Client {
        reqwest::Client::new()
    }

    fn did_key_issuer() -> (SigningKey, String, String) {
        let k = SigningKey::generate(KeyType::P256);
        let d = did::did_key(&k.verifying_key());
        let vm = did::verification_method(&d);
        (k, d, vm)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn issuer_claims_must_agree() {
        assert_eq!(jwt_issuer(&json!({"iss": "did:a"})).unwrap(), "did:a");
        assert_eq!(
            jwt_issuer(&json!({"iss": "did:a", "vc": {"issuer": {"id": "did:a"}}})).unwrap(),
            "did:a"
        );
        assert_eq!(jwt_issuer(&json!({"issuer": "did:a"})).unwrap(), "did:a");
        assert!(matches!(
            jwt_issuer(&json!({"iss": "did:a", "vc": {"issuer": "did:b"}})),
            Err(BindingError::IssuerMismatch(..))
        ));
        assert_eq!(jwt_issuer(&json!({})), Err(BindingError::NoIssuer));
        assert_eq!(jwt_issuer(&json!({"iss": 5})), Err(BindingError::NoIssuer));
    }

    #[test]
    fn genuine_did_key_credential_binds() {
        let (k, d, vm) = did_key_issuer();
        let t = jws::sign(&k, json!({"kid": vm}), &json!({"iss": d}));
        let (b, _, _) = rt()
            .block_on(verify_issuer_jwt(&t, Issuers::Did, &http()))
            .unwrap();
        assert_eq!(b.issuer, d);
        assert_eq!(b.key, k.verifying_key());
        // no kid: the one assertion method of the derived document
        let t = jws::sign(&k, json!({}), &json!({"iss": d}));
        rt().block_on(verify_issuer_jwt(&t, Issuers::Did, &http()))
            .unwrap();
        // relative kid
        let frag = vm.split_once('#').unwrap().1;
        let t = jws::sign(&k, json!({"kid": format!("#{frag}")}), &json!({"iss": d}));
        rt().block_on(verify_issuer_jwt(&t, Issuers::Did, &http()))
            .unwrap();
    }

    #[test]
    fn forged_kid_of_another_did_is_refused() {
        // The reported forgery: the victim issuer's payload re-signed with the attacker's did:key,
        // named in the header kid.
        let (_, victim, _) = did_key_issuer();
        for kt in [KeyType::Ed25519, KeyType::P256] {
            let attacker = SigningKey::generate(kt);
            for a_did in [
                did::did_key(&attacker.verifying_key()),
                did::did_jwk(&attacker.verifying_key()),
            ] {
                let kid = did::verification_method(&a_did);
                let t = jws::sign(&attacker, json!({"kid": kid}), &json!({"iss": victim}));
                let r = rt().block_on(verify_issuer_jwt(&t, Issuers::Did, &http()));
                assert!(matches!(r, Err(BindingError::KidNotIssuer { .. })), "{r:?}");
            }
        }
    }

    #[test]
    fn header_keys_prove_nothing() {
        let (k, d, vm) = did_key_issuer();
        for (name, h) in [
            ("jwk", json!({"jwk": k.verifying_key().to_jwk(), "kid": vm})),
            ("x5c", json!({"x5c": ["MIIB"], "kid": vm})),
            ("jku", json!({"jku": "https://evil.example/jwks"})),
        ] {
            let t = jws::sign(&k, h, &json!({"iss": d}));
            let r = rt().block_on(verify_issuer_jwt(&t, Issuers::Did, &http()));
            assert_eq!(r.unwrap_err().code(), "header_key_not_trusted", "{name}");
        }
    }

    #[test]
    fn wrong_key_under_the_right_kid_fails_the_signature() {
        let (_, d, vm) = did_key_issuer();
        let attacker = SigningKey::generate(KeyType::P256);
        let t = jws::sign(&attacker, json!({"kid": vm}), &json!({"iss": d}));
        let r = rt().block_on(verify_issuer_jwt(&t, Issuers::Did, &http()));
        assert_eq!(r.unwrap_err().code(), "bad_signature");
    }

    #[test]
    fn alg_none_and_hmac_with_the_public_key_are_refused() {
        let (k, d, vm) = did_key_issuer();
        let payload = b64url(json!({"iss": d}).to_string());
        let none = format!(
            "{}.{payload}.",
            b64url(json!({"alg": "none", "kid": vm}).to_string())
        );
        let r = rt().block_on(verify_issuer_jwt(&none, Issuers::Did, &http()));
        assert!(r.is_err());
        // HS256 keyed with the issuer's public key bytes
        use hmac::{Mac, SimpleHmac};
        let h = b64url(json!({"alg": "HS256", "kid": vm}).to_string());
        let mut mac =
            SimpleHmac::<sha2::Sha256>::new_from_slice(&k.verifying_key().compressed()).unwrap();
        mac.update(format!("{h}.{payload}").as_bytes());
        let hs = format!("{h}.{payload}.{}", b64url(mac.finalize().into_bytes()));
        let r = rt().block_on(verify_issuer_jwt(&hs, Issuers::Did, &http()));
        assert_eq!(r.unwrap_err().code(), "bad_signature");
        // ES256K claimed for a P-256 key
        let mut t = jws::sign(&k, json!({"kid": vm}), &json!({"iss": d}));
        let parts: Vec<String> = t.split('.').map(str::to_string).collect();
        let h2 = b64url(json!({"alg": "ES256K", "kid": vm}).to_string());
        t = format!("{h2}.{}.{}", parts[1], parts[2]);
        let r = rt().block_on(verify_issuer_jwt(&t, Issuers::Did, &http()));
        assert_eq!(r.unwrap_err().code(), "bad_signature");
    }

    #[test]
    fn signature_over_a_different_header_fails() {
        let (k, d, vm) = did_key_issuer();
        let t = jws::sign(&k, json!({"kid": vm, "typ": "JWT"}), &json!({"iss": d}));
        let parts: Vec<&str> = t.split('.').collect();
        let other_h = b64url(json!({"alg": "ES256", "kid": vm, "typ": "vc+jwt"}).to_string());
        let forged = format!("{other_h}.{}.{}", parts[1], parts[2]);
        let r = rt().block_on(verify_issuer_jwt(&forged, Issuers::Did, &http()));
        assert_eq!(r.unwrap_err().code(), "bad_signature");
    }

    #[test]
    fn did_document_rules() {
        let k = SigningKey::generate(KeyType::Ed25519);
        let other = SigningKey::generate(KeyType::Ed25519);
        let d = "did:web:issuer.example";
        let doc = json!({
            "id": d,
            "verificationMethod": [
                {"id": "#key-1", "type": "JsonWebKey2020", "controller": d, "publicKeyJwk": k.verifying_key().to_jwk()},
                {"id": format!("{d}#auth"), "type": "JsonWebKey2020", "controller": d, "publicKeyJwk": other.verifying_key().to_jwk()},
                {"id": format!("{d}#foreign"), "type": "JsonWebKey2020", "controller": "did:web:evil.example", "publicKeyJwk": other.verifying_key().to_jwk()},
                {"id": format!("{d}#many"), "type": "JsonWebKey2020", "controller": [d, "did:web:evil.example"], "publicKeyJwk": other.verifying_key().to_jwk()}
            ],
            "assertionMethod": ["#key-1", format!("{d}#foreign"), format!("{d}#many")],
            "authentication": [format!("{d}#auth")]
        });
        assert_eq!(
            assertion_key(&doc, &format!("{d}#key-1")).unwrap(),
            k.verifying_key()
        );
        // an authentication key is not an assertion key
        assert!(matches!(
            assertion_key(&doc, &format!("{d}#auth")),
            Err(BindingError::NotAssertionMethod(_))
        ));
        // a method controlled by someone else does not count, nor one whose controller is a list
        for m in ["foreign", "many"] {
            assert!(matches!(
                assertion_key(&doc, &format!("{d}#{m}")),
                Err(BindingError::NotAssertionMethod(_))
            ));
        }
        assert_eq!(only_assertion_method(&doc), Err(BindingError::KidRequired));
        // a holder's or a verifier's key (did::resolve): listed under the relationship asked
        // for, and the DID's own
        let auth = format!("{d}#auth");
        assert_eq!(
            related_key(&doc, &auth, &["authentication"]).unwrap(),
            other.verifying_key()
        );
        for (method, rels) in [
            (format!("{d}#key-1"), &["authentication"][..]),
            (
                format!("{d}#foreign"),
                &["authentication", "assertionMethod"][..],
            ),
        ] {
            assert!(
                matches!(
                    related_key(&doc, &method, rels),
                    Err(Unrelated::NotListed(_))
                ),
                "{method}"
            );
        }
        assert_eq!(
            related_key(
                &doc,
                &format!("{d}#key-1"),
                &["authentication", "assertionMethod"]
            )
            .unwrap(),
            k.verifying_key()
        );
        // a kid without a fragment: the one method listed, never the first of several
        assert_eq!(only_related_method(&doc, &["authentication"]), Some(auth));
        assert_eq!(only_related_method(&doc, &["assertionMethod"]), None);
        assert_eq!(only_related_method(&doc, &["capabilityInvocation"]), None);
        let ours = crate::crypto::did::did_web_document(d, &k.verifying_key());
        assert_eq!(
            only_related_method(&ours, &["authentication", "assertionMethod"]),
            Some(crate::crypto::did::verification_method(d))
        );
    }

    #[test]
    fn metadata_url_placement() {
        assert_eq!(
            jwt_vc_issuer_metadata_url("https://issuer.example/tenant/1").unwrap(),
            "https://issuer.example/.well-known/jwt-vc-issuer/tenant/1"
        );
        assert_eq!(
            jwt_vc_issuer_metadata_url("https://issuer.example").unwrap(),
            "https://issuer.example/.well-known/jwt-vc-issuer"
        );
        assert!(jwt_vc_issuer_metadata_url("http://issuer.example").is_err());
        assert!(jwt_vc_issuer_metadata_url("http://127.0.0.1:9/x").is_ok());
        assert!(jwt_vc_issuer_metadata_url("https://a@b.example/").is_err());
        assert!(jwt_vc_issuer_metadata_url("https://b.example/../x").is_err());
    }

    /// An SD-JWT VC issuer identified by an https URL may prove its key with an `x5c` chain to a
    /// configured anchor whose leaf names it; nothing else makes an `x5c` count.
    #[test]
    fn x5c_binds_only_an_https_issuer_to_a_configured_anchor() {
        use crate::crypto::x509::tests::{ca, dns, leaf};
        use crate::crypto::x509::TrustAnchors;
        let root = ca("root", None);
        let anchors = TrustAnchors::from_pem(root.cert.pem().as_bytes()).unwrap();
        let now = 1_800_000_000;
        let with = Issuers::DidOrHttps {
            anchors: &anchors,
            now,
        };
        let (cert, sk) = leaf(&root, vec![dns("issuer.example")], |_| {});
        let iss = json!({"iss": "https://issuer.example"});
        let header = json!({"typ": "dc+sd-jwt", "x5c": [cert]});
        let t = jws::sign(&sk, header.clone(), &iss);
        let (b, _, _) = rt().block_on(verify_issuer_jwt(&t, with, &http())).unwrap();
        assert_eq!(b.key, sk.verifying_key());
        assert_eq!(b.issuer, "https://issuer.example");
        // the chain is right but someone else signed
        let other = SigningKey::generate(KeyType::P256);
        let t = jws::sign(&other, header.clone(), &iss);
        let r = rt().block_on(verify_issuer_jwt(&t, with, &http()));
        assert_eq!(r.unwrap_err().code(), "bad_signature");
        // the leaf is for another issuer
        let t = jws::sign(&sk, header.clone(), &json!({"iss": "https://bank.example"}));
        let r = rt().block_on(verify_issuer_jwt(&t, with, &http()));
        assert_eq!(r.unwrap_err().code(), "x5c_untrusted");
        // a chain of the attacker's own root
        let evil = ca("root", None);
        let (cert, esk) = leaf(&evil, vec![dns("issuer.example")], |_| {});
        let t = jws::sign(&esk, json!({"x5c": [cert]}), &iss);
        let r = rt().block_on(verify_issuer_jwt(&t, with, &http()));
        assert_eq!(r.unwrap_err().code(), "x5c_untrusted");
        // no anchors configured, a DID issuer, or a W3C credential: an x5c proves nothing
        let t = jws::sign(&sk, header.clone(), &iss);
        let none = Issuers::DidOrHttps {
            anchors: &TrustAnchors::default(),
            now,
        };
        for allowed in [none, Issuers::Did] {
            let r = rt().block_on(verify_issuer_jwt(&t, allowed, &http()));
            assert_eq!(r.unwrap_err().code(), "header_key_not_trusted");
        }
        let (_, victim, _) = did_key_issuer();
        let t = jws::sign(&sk, header, &json!({"iss": victim}));
        let r = rt().block_on(verify_issuer_jwt(&t, with, &http()));
        assert_eq!(r.unwrap_err().code(), "header_key_not_trusted");
    }

    #[test]
    fn https_issuers_only_for_sd_jwt() {
        let (k, _, _) = did_key_issuer();
        let t = jws::sign(&k, json!({}), &json!({"iss": "https://issuer.example"}));
        let r = rt().block_on(verify_issuer_jwt(&t, Issuers::Did, &http()));
        assert_eq!(r.unwrap_err().code(), "unsupported_issuer");
        let t = jws::sign(&k, json!({}), &json!({"iss": "urn:x"}));
        let r = rt().block_on(verify_issuer_jwt(
            &t,
            Issuers::DidOrHttps {
                anchors: &TrustAnchors::default(),
                now: 0,
            },
            &http(),
        ));
        assert_eq!(r.unwrap_err().code(), "unsupported_issuer");
    }
}
