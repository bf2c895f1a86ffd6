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
    // a multicodec prefix and a key (65 bytes uncompressed at most)
    let bytes =
        super::bs58_decode(mb, 80).map_err(|e| CryptoError::Did(format!("did:key base58: {e}")))?;
    if bytes.len() < 3 {
        return Err(CryptoError::Did("did:key too short".into()));
    }
    let (prefix, key) = bytes.split_at(2);
    match [prefix[0], prefix[1]] {
        ED25519_PUB => {
            let k: [u8; 32] = key
                .try_into()
                .map_err(|_| CryptoError::Did("Ed25519 did:key must carry 32 bytes".into()))?;
            VerifyingKey::ed25519_from_bytes(&k)
                .map_err(|e| CryptoError::Did(format!("did:key: {e}")))
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

/// Longest did:jwk resolved (a P-256 JWK with `alg`, `use` and a thumbprint `kid` is ~340
/// characters).
const MAX_DID_JWK: usize = 1024;

/// The JWK members a did:jwk may carry: a public signing key's. Any other — a private key's `d`,
/// or data a holder wants an issuer to sign into its subject id — is refused (attacker review: a
/// wallet's proof `kid` carried hundreds of KB of its own JSON into the credential's subject).
/// (`ext`: WebCrypto's `exportKey('jwk')` writes it; a boolean.)
const DID_JWK_MEMBERS: [&str; 9] = [
    "kty", "crv", "x", "y", "alg", "use", "kid", "key_ops", "ext",
];

fn from_did_jwk(did: &str) -> CryptoResult<VerifyingKey> {
    let enc = did
        .strip_prefix("did:jwk:")
        .ok_or_else(|| CryptoError::Did("not a did:jwk".into()))?;
    if did.len() > MAX_DID_JWK {
        return Err(CryptoError::Did(format!(
            "a did:jwk longer than {MAX_DID_JWK} characters"
        )));
    }
    // base64url without padding (as did:jwk specifies): padded, one key had any number of
    // spellings, each a subject id of its own (attacker review)
    if enc.contains('=') {
        return Err(CryptoError::Did(
            "a did:jwk is unpadded base64url: no `=`".into(),
        ));
    }
    let jwk: Value = serde_json::from_slice(&b64url_decode(enc)?)
        .map_err(|e| CryptoError::Did(format!("did:jwk JSON: {e}")))?;
    let members = jwk
        .as_object()
        .ok_or_else(|| CryptoError::Did("a did:jwk's JWK is an object".into()))?;
    if let Some(m) = members
        .keys()
        .find(|m| !DID_JWK_MEMBERS.contains(&m.as_str()))
    {
        return Err(CryptoError::Did(format!(
            "a did:jwk's JWK carries `{m}`, not a public signing key's member"
        )));
    }
    // did:jwk: a key whose `use` is `enc` has key agreement only, no authentication or assertion
    if members.get("ext").is_some_and(|e| !e.is_boolean()) {
        return Err(CryptoError::Did("a did:jwk's `ext` is a boolean".into()));
    }
    let signs = members.get("use").is_none_or(|u| u == "sig")
        && members.get("key_ops").is_none_or(|o| {
            o.as_array()
                .is_some_and(|o| o.iter().any(|x| x == "verify"))
        });
    if !signs {
        return Err(CryptoError::Did(
            "this did:jwk's key is not for signatures (use / key_ops)".into(),
        ));
    }
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

/// The URL of a did:web document, per the did:web method specification: the method-specific id is
/// `host[%3Aport](:segment)*`; only the port's `%3A` is percent-decoded. Refused: userinfo (`@`),
/// queries, fragments, slashes, other percent-encoding, empty segments, `.`/`..` segments, and
/// anything but a DNS name or IPv4 address as host. The scheme is https, except http for loopback
/// hosts (`localhost`, 127.0.0.0/8), which the outbound guard admits only where loopback is allowed
/// (sandbox default; `http.outbound`).
pub fn did_web_url(did: &str) -> CryptoResult<String> {
    let bad = |why: &str| CryptoError::Did(format!("malformed did:web ({why})"));
    let rest = did
        .strip_prefix("did:web:")
        .ok_or_else(|| CryptoError::Did("not a did:web".into()))?;
    if rest.len() > 2048 {
        return Err(bad("too long"));
    }
    let mut parts = rest.split(':');
    let host_part = parts.next().unwrap_or_default();
    let (host, port) = match host_part.find("%3A").or_else(|| host_part.find("%3a")) {
        Some(i) => (&host_part[..i], Some(&host_part[i + 3..])),
        None => (host_part, None),
    };
    let host = host.to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(bad("host"));
    }
    let port = match port {
        None => None,
        Some(p) => {
            let n: u16 = (!p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad("port"))?;
            Some(n)
        }
    };
    let mut path = Vec::new();
    for seg in parts {
        let seg_ok = !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !seg_ok {
            return Err(bad("path segment"));
        }
        path.push(seg);
    }
    let loopback = host == "localhost"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    let scheme = if loopback { "http" } else { "https" };
    let authority = match port {
        Some(p) => format!("{host}:{p}"),
        None => host,
    };
    Ok(if path.is_empty() {
        format!("{scheme}://{authority}/.well-known/did.json")
    } else {
        format!("{scheme}://{authority}/{}/did.json", path.join("/"))
    })
}

/// Fetches a did:web DID document (bounded size and time, through the outbound guard of `http`)
/// and checks that its `id` is the DID.
/// The document is untrusted input: callers pick keys from it only through
/// the issuer-key binding rule (`crypto/binding.rs`). This is the only place did:web documents are fetched.
pub async fn fetch_did_web_document(did: &str, http: &reqwest::Client) -> CryptoResult<Value> {
    use crate::http::outbound::{limits, read_capped};
    let url = did_web_url(did)?;
    let resp =
        crate::http::outbound::send(http.get(&url).timeout(std::time::Duration::from_secs(5)))
            .await
            .map_err(CryptoError::Outbound)?;
    if !resp.status().is_success() {
        return Err(CryptoError::Did(format!("{url}: HTTP {}", resp.status())));
    }
    let body = read_capped(resp, limits().did_document_max_bytes)
        .await
        .map_err(CryptoError::Outbound)?;
    let doc: Value = crate::json_cost::parse(&body, crate::json_cost::FETCHED_MAX)
        .map_err(|_| CryptoError::Did(format!("{url}: not a JSON document, or too complex")))?;
    if doc["id"].as_str() != Some(did) {
        return Err(CryptoError::Did("DID document id does not match".into()));
    }
    Ok(doc)
}

/// The outbound failure behind a DID resolution error, if that is what it was.
pub fn outbound_error(e: &CryptoError) -> Option<crate::http::outbound::OutboundError> {
    match e {
        CryptoError::Outbound(o) => Some(o.clone()),
        _ => None,
    }
}

/// Resolves any supported DID URL, fetching did:web documents (bounded size and time): a did:web
/// key must be listed under one of `relationships` (`authentication` for a holder's
/// presentation; `authentication` or `assertionMethod` for a verifier's request object) and
/// controlled by the DID itself; a kid without a fragment names the one method listed there
/// (attacker review: any method of the document was taken, the first for a bare DID, whatever
/// its purpose or controller). did:key and did:jwk have one key, for every purpose.
pub async fn resolve(
    kid: &str,
    relationships: &[&str],
    http: &reqwest::Client,
) -> CryptoResult<VerifyingKey> {
    let did = kid.split('#').next().unwrap_or(kid);
    if !did.starts_with("did:web:") {
        return resolve_offline(kid);
    }
    let doc = fetch_did_web_document(did, http).await?;
    let method = if kid.contains('#') {
        kid.to_string()
    } else {
        super::binding::only_related_method(&doc, relationships).ok_or_else(|| {
            CryptoError::Did(format!(
                "{kid} lists no single {} method: the kid must name one",
                relationships.join(" or ")
            ))
        })?
    };
    super::binding::related_key(&doc, &method, relationships).map_err(|e| {
        CryptoError::Did(match e {
            super::binding::Unrelated::NotListed(m) => {
                format!(
                    "{m} is not a {} method of the DID",
                    relationships.join(" or ")
                )
            }
            super::binding::Unrelated::Resolve(m) => m,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyType, SigningKey};

    /// Base58 decoding costs the square of its length: a 200,000-character did:key (any JWS
    /// `kid`, any credential's `iss`, before any signature or trust check) took seconds of a
    /// worker's CPU (attacker review). It is refused for its length, undecoded.
    #[test]
    fn a_long_did_key_is_refused_for_its_length() {
        let e = resolve_offline(&format!("did:key:z{}", "2".repeat(200_000))).unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        for (b58, max) in [("2".repeat(45), 32), ("1".repeat(33), 32)] {
            assert!(crate::crypto::bs58_decode(&b58, max).is_err(), "{b58}");
        }
        // the longest 32 bytes (all 0xff) and the all-zero key stay within the bound
        for bytes in [[0xffu8; 32], [0u8; 32]] {
            let b58 = bs58::encode(bytes).into_string();
            assert_eq!(crate::crypto::bs58_decode(&b58, 32).unwrap(), bytes);
        }
    }

    /// A did:jwk resolves only to a public signing key with nothing else in it.
    #[test]
    fn a_did_jwk_carries_a_public_signing_key_only() {
        let key = SigningKey::generate(KeyType::P256).verifying_key();
        let jwk = key.to_jwk();
        let with = |extra: Value| {
            let mut j = jwk.clone();
            j.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            format!("did:jwk:{}", b64url(j.to_string()))
        };
        assert_eq!(resolve_offline(&did_jwk(&key)).unwrap(), key);
        // one spelling of the encoding: padded forms are refused
        for pad in ["=", "==", "==="] {
            assert!(resolve_offline(&format!("{}{pad}", did_jwk(&key))).is_err());
        }
        let honest =
            with(json!({"alg": "ES256", "use": "sig", "kid": "k1", "key_ops": ["verify"]}));
        assert_eq!(resolve_offline(&format!("{honest}#0")).unwrap(), key);
        for (extra, says) in [
            (json!({"given_name": "Alice"}), "given_name"),
            (json!({"d": b64url([7u8; 32])}), "`d`"),
            (json!({"use": "enc"}), "not for signatures"),
            (json!({"key_ops": ["deriveKey"]}), "not for signatures"),
            (json!({"kid": "k".repeat(1024)}), "longer than"),
            (json!({"ext": "given_name=Alice"}), "boolean"),
        ] {
            let e = resolve_offline(&with(extra.clone())).unwrap_err();
            assert!(e.to_string().contains(says), "{extra}: {e}");
        }
    }

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
        assert_eq!(
            did_web_url("did:web:w3c-ccg.github.io:user:alice").unwrap(),
            "https://w3c-ccg.github.io/user/alice/did.json"
        );
        assert_eq!(
            did_web_url("did:web:Example.COM%3a8443").unwrap(),
            "https://example.com:8443/.well-known/did.json"
        );
        assert_eq!(
            did_web_url("did:web:localhost%3A9000:a_b.c-d").unwrap(),
            "http://localhost:9000/a_b.c-d/did.json"
        );
        // Only loopback hosts get http; a name that merely starts like one does not.
        assert!(did_web_url("did:web:localhost.evil.example")
            .unwrap()
            .starts_with("https://"));
        assert!(did_web_url("did:web:127.0.0.1.nip.io")
            .unwrap()
            .starts_with("https://"));
    }

    #[test]
    fn did_web_malformed_ids_are_refused() {
        for bad in [
            "did:web:localhost@169.254.169.254%3A80:path?",
            "did:web:user@example.com",
            "did:web:example.com?x=1",
            "did:web:example.com#frag",
            "did:web:example.com/evil",
            "did:web:example.com:..:admin",
            "did:web:example.com:.",
            "did:web:example.com::x",
            "did:web:example.com:",
            "did:web:",
            "did:web:%3A80",
            "did:web:example.com%3A",
            "did:web:example.com%3A0",
            "did:web:example.com%3A99999",
            "did:web:example.com%3A80x",
            "did:web:example.com%2Fevil",
            "did:web:example.com:a%2F..%2Fb",
            "did:web:exa mple.com",
            "did:web:a..b",
            "did:web:-a.example",
            "did:web:[::1]",
            "did:web:example.com:p\\q",
        ] {
            assert!(did_web_url(bad).is_err(), "{bad}");
        }
    }
}
