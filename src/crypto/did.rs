//! DIDs: did:key and did:jwk (offline), did:web (documents served by us, resolved over HTTP).

use serde_json::{json, Value};

use super::{b64url, b64url_decode, CryptoError, CryptoResult, VerifyingKey};

const ED25519_PUB: [u8; 2] = [0xed, 0x01];
const P256_PUB: [u8; 2] = [0x80, 0x24];
const SECP256K1_PUB: [u8; 2] = [0xe7, 0x01];

/// `did:key:z...` (multibase base58btc of the multicodec-prefixed compressed key).
pub fn did_key(key: &VerifyingKey) -> String {
    let prefix = match key {
        VerifyingKey::Ed25519(_) => ED25519_PUB,
        VerifyingKey::P256(_) => P256_PUB,
        VerifyingKey::Secp256k1(_) => SECP256K1_PUB,
    };
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(&key.compressed());
    format!("did:key:z{}", bs58::encode(bytes).into_string())
}

fn from_did_key(did: &str) -> CryptoResult<VerifyingKey> {
    let mb = did
        .strip_prefix("did:key:z")
        .ok_or_else(|| CryptoError::Did(format!("not a base58btc did:key: {did}")))?;
    let bytes = bs58::decode(mb)
        .into_vec()
        .map_err(|e| CryptoError::Did(format!("did:key base58: {e}")))?;
    if bytes.len() < 3 {
        return Err(CryptoError::Did("did:key too short".into()));
    }
    let (prefix, key) = bytes.split_at(2);
    match [prefix[0], prefix[1]] {
        ED25519_PUB => {
            let k: [u8; 32] = key
                .try_into()
                .map_err(|_| CryptoError::Did("Ed25519 did:key must carry 32 bytes".into()))?;
            ed25519_dalek::VerifyingKey::from_bytes(&k)
                .map(VerifyingKey::Ed25519)
                .map_err(|e| CryptoError::Did(e.to_string()))
        }
        P256_PUB => VerifyingKey::from_sec1("P-256", key),
        SECP256K1_PUB => VerifyingKey::from_sec1("secp256k1", key),
        _ => Err(CryptoError::Did("unsupported did:key multicodec".into())),
    }
}

/// `did:jwk:<base64url(public JWK)>`.
pub fn did_jwk(key: &VerifyingKey) -> String {
    format!("did:jwk:{}", b64url(key.to_jwk().to_string()))
}

fn from_did_jwk(did: &str) -> CryptoResult<VerifyingKey> {
    let enc = did
        .strip_prefix("did:jwk:")
        .ok_or_else(|| CryptoError::Did("not a did:jwk".into()))?;
    let jwk: Value = serde_json::from_slice(&b64url_decode(enc)?)
        .map_err(|e| CryptoError::Did(format!("did:jwk JSON: {e}")))?;
    VerifyingKey::from_jwk(&jwk)
}

/// `did:web` for an https/http base URL and path, e.g. `http://127.0.0.1:8080` + `issuers/default`
/// → `did:web:127.0.0.1%3A8080:issuers:default` (document at `<base>/issuers/default/did.json`).
pub fn did_web(base_url: &str, path: &str) -> String {
    let host = base_url
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let mut parts: Vec<String> = host.split('/').map(|s| s.replace(':', "%3A")).collect();
    parts.extend(
        path.split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    );
    format!("did:web:{}", parts.join(":"))
}

/// The verification method id to use as `kid` for a DID we control.
pub fn verification_method(did: &str) -> String {
    if let Some(rest) = did.strip_prefix("did:key:") {
        format!("{did}#{rest}")
    } else if did.starts_with("did:jwk:") {
        format!("{did}#0")
    } else {
        format!("{did}#key-1")
    }
}

/// A did:web DID document with one JsonWebKey2020 method.
pub fn did_web_document(did: &str, key: &VerifyingKey) -> Value {
    let vm = verification_method(did);
    json!({
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/suites/jws-2020/v1"],
        "id": did,
        "verificationMethod": [{
            "id": vm, "type": "JsonWebKey2020", "controller": did, "publicKeyJwk": key.to_jwk()
        }],
        "assertionMethod": [vm],
        "authentication": [vm],
    })
}

/// The DID URL a JWS names its signer by: `kid` when it is absolute, `iss` + `kid` when `kid` is a
/// relative reference (`#key-1`, as credo-ts writes), else `iss` alone.
pub fn signer_kid(header: &Value, payload: &Value) -> String {
    let iss = payload["iss"]
        .as_str()
        .or_else(|| payload["issuer"].as_str())
        .unwrap_or_default();
    match header["kid"].as_str() {
        Some(k) if k.starts_with('#') && iss.starts_with("did:") => format!("{iss}{k}"),
        Some(k) if k.starts_with("did:") => k.to_string(),
        _ => iss.to_string(),
    }
}

/// Resolves a DID or DID URL (kid) to its key without network: did:key and did:jwk.
pub fn resolve_offline(kid: &str) -> CryptoResult<VerifyingKey> {
    let did = kid.split('#').next().unwrap_or(kid);
    if did.starts_with("did:key:") {
        from_did_key(did)
    } else if did.starts_with("did:jwk:") {
        from_did_jwk(did)
    } else {
        Err(CryptoError::Did(format!("cannot resolve {did} offline")))
    }
}

/// The URL of a did:web document.
pub fn did_web_url(did: &str) -> CryptoResult<String> {
    let rest = did
        .strip_prefix("did:web:")
        .ok_or_else(|| CryptoError::Did("not a did:web".into()))?;
    let mut parts = rest.split(':');
    let host = parts.next().unwrap_or_default().replace("%3A", ":");
    if host.is_empty() || host.contains('/') {
        return Err(CryptoError::Did("bad did:web host".into()));
    }
    let path: Vec<&str> = parts.collect();
    // Loopback hosts are served over http in development; everything else must be https.
    let scheme = if host.starts_with("127.0.0.1") || host.starts_with("localhost") {
        "http"
    } else {
        "https"
    };
    Ok(if path.is_empty() {
        format!("{scheme}://{host}/.well-known/did.json")
    } else {
        format!("{scheme}://{host}/{}/did.json", path.join("/"))
    })
}

/// Fetches a did:web DID document (bounded size and time) and checks that its `id` is the DID.
/// The document is untrusted input: callers pick keys from it only through
/// [`crate::crypto::binding`]'s rules. This is the only place did:web documents are fetched.
pub async fn fetch_did_web_document(did: &str, http: &reqwest::Client) -> CryptoResult<Value> {
    let url = did_web_url(did)?;
    let resp = http
        .get(&url)
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| CryptoError::Did(format!("fetching {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(CryptoError::Did(format!("{url}: HTTP {}", resp.status())));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| CryptoError::Did(format!("{url}: {e}")))?;
    if body.len() > 256 * 1024 {
        return Err(CryptoError::Did("DID document too large".into()));
    }
    let doc: Value =
        serde_json::from_slice(&body).map_err(|e| CryptoError::Did(format!("{url}: {e}")))?;
    if doc["id"].as_str() != Some(did) {
        return Err(CryptoError::Did("DID document id does not match".into()));
    }
    Ok(doc)
}

/// Resolves any supported DID URL, fetching did:web documents (bounded size and time).
pub async fn resolve(kid: &str, http: &reqwest::Client) -> CryptoResult<VerifyingKey> {
    let did = kid.split('#').next().unwrap_or(kid);
    if !did.starts_with("did:web:") {
        return resolve_offline(kid);
    }
    let doc = fetch_did_web_document(did, http).await?;
    let methods = doc["verificationMethod"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let vm = methods
        .iter()
        .find(|m| kid.contains('#') && m["id"].as_str() == Some(kid))
        .or_else(|| {
            if kid.contains('#') {
                None
            } else {
                methods.first()
            }
        })
        .ok_or_else(|| CryptoError::Did(format!("{kid} not in the DID document")))?;
    VerifyingKey::from_jwk(&vm["publicKeyJwk"])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyType, SigningKey};

    #[test]
    fn did_key_spec_vector() {
        // did:key spec test vector (Ed25519)
        let did = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
        let k = resolve_offline(&format!(
            "{did}#z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
        ))
        .unwrap();
        assert_eq!(did_key(&k), did);
    }

    #[test]
    fn did_key_and_jwk_round_trip_every_type() {
        for kt in [KeyType::Ed25519, KeyType::P256, KeyType::Secp256k1] {
            let vk = SigningKey::generate(kt).verifying_key();
            let d = did_key(&vk);
            assert_eq!(resolve_offline(&verification_method(&d)).unwrap(), vk);
            let j = did_jwk(&vk);
            assert_eq!(resolve_offline(&verification_method(&j)).unwrap(), vk);
        }
        assert!(
            did_key(&SigningKey::generate(KeyType::P256).verifying_key())
                .starts_with("did:key:zDn")
        );
        assert!(
            did_key(&SigningKey::generate(KeyType::Ed25519).verifying_key())
                .starts_with("did:key:z6Mk")
        );
    }

    #[test]
    fn did_web_forms() {
        let d = did_web("http://127.0.0.1:8080", "issuers/default");
        assert_eq!(d, "did:web:127.0.0.1%3A8080:issuers:default");
        assert_eq!(
            did_web_url(&d).unwrap(),
            "http://127.0.0.1:8080/issuers/default/did.json"
        );
        assert_eq!(
            did_web_url("did:web:example.com").unwrap(),
            "https://example.com/.well-known/did.json"
        );
    }
}
