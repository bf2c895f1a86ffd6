//! Compact JWS / JWT.

use serde_json::Value;

use super::{b64url, b64url_decode, did, CryptoError, CryptoResult, SigningKey, VerifyingKey};

/// Signs `payload` with `key`; `header` (an object: `typ`, `kid`, `jwk`...) gets `alg` added.
pub fn sign(key: &SigningKey, header: Value, payload: &Value) -> String {
    let mut header = match header {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    header.insert("alg".into(), Value::String(key.alg().into()));
    let signing_input = format!(
        "{}.{}",
        b64url(Value::Object(header).to_string()),
        b64url(payload.to_string())
    );
    let sig = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64url(sig))
}

/// Splits and decodes without verifying: (header, payload, signing input, signature).
pub fn decode_unverified(token: &str) -> CryptoResult<(Value, Value, String, Vec<u8>)> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(CryptoError::Malformed(
            "a compact JWS has three parts".into(),
        ));
    };
    // bounded by what they cost parsed, not only by the length of the text they came in
    // (base64 hides their structure from a request body's check: `crate::json_cost`)
    let parse = |part: &str, what: &str| -> CryptoResult<Value> {
        let bytes = b64url_decode(part)?;
        crate::json_cost::check(&bytes, crate::json_cost::FETCHED_MAX)
            .map_err(|why| CryptoError::Malformed(format!("{what}: {why}")))?;
        serde_json::from_slice(&bytes).map_err(|e| CryptoError::Malformed(format!("{what}: {e}")))
    };
    let header = parse(h, "header")?;
    let payload = parse(p, "payload")?;
    if !header.is_object() || !payload.is_object() {
        return Err(CryptoError::Malformed(
            "header and payload must be JSON objects".into(),
        ));
    }
    Ok((header, payload, format!("{h}.{p}"), b64url_decode(s)?))
}

/// Verifies with a known key; the header's `alg` must be the key's algorithm (no `none`, no confusion).
pub fn verify(token: &str, key: &VerifyingKey) -> CryptoResult<(Value, Value)> {
    let (header, payload, input, sig) = decode_unverified(token)?;
    if header["alg"].as_str() != Some(key.alg()) {
        return Err(CryptoError::Unsupported(format!(
            "alg {} does not match the {:?} key",
            header["alg"],
            key.key_type()
        )));
    }
    // RFC 7515 §4.1.11: a critical extension this verifier does not understand makes the JWS
    // invalid; it understands none (`b64: false`, say, changes what was signed)
    if header.get("crit").is_some() {
        return Err(CryptoError::Unsupported(
            "crit extensions are not supported".into(),
        ));
    }
    key.verify(input.as_bytes(), &sig)?;
    Ok((header, payload))
}

/// The signer's key named by a JWS header: an embedded `jwk`, or a `kid` that is a did:key/did:jwk URL.
/// Returns the key and, when given by DID, the DID URL.
pub fn header_key(header: &Value) -> CryptoResult<(VerifyingKey, Option<String>)> {
    if let Some(jwk) = header.get("jwk") {
        if header
            .get("kid")
            .is_some_and(|k| k.as_str().is_some_and(|k| k.starts_with("did:")))
        {
            return Err(CryptoError::Malformed(
                "use either jwk or a DID kid, not both".into(),
            ));
        }
        return Ok((VerifyingKey::from_jwk(jwk)?, None));
    }
    if header.get("x5c").is_some() {
        return Err(CryptoError::Unsupported("x5c key identification".into()));
    }
    match header["kid"].as_str() {
        Some(kid) if kid.starts_with("did:") => {
            Ok((did::resolve_offline(kid)?, Some(kid.to_string())))
        }
        _ => Err(CryptoError::Malformed(
            "the header names no key (jwk or did kid)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyType;
    use serde_json::json;

    #[test]
    fn sign_verify_and_tamper() {
        for kt in [KeyType::Ed25519, KeyType::P256, KeyType::Secp256k1] {
            let k = SigningKey::generate(kt);
            let t = sign(&k, json!({"typ": "JWT"}), &json!({"sub": "x", "n": 1}));
            let (h, p) = verify(&t, &k.verifying_key()).unwrap();
            assert_eq!(h["alg"], kt.alg());
            assert_eq!(p["n"], 1);
            // tampered payload
            let parts: Vec<&str> = t.split('.').collect();
            let forged = format!(
                "{}.{}.{}",
                parts[0],
                b64url(json!({"sub": "x", "n": 2}).to_string()),
                parts[2]
            );
            assert_eq!(
                verify(&forged, &k.verifying_key()),
                Err(CryptoError::BadSignature)
            );
            // wrong key
            assert!(verify(&t, &SigningKey::generate(kt).verifying_key()).is_err());
        }
        assert!(decode_unverified("a.b").is_err());
        assert!(decode_unverified("!!.??.##").is_err());
    }

    #[test]
    fn alg_must_match_key() {
        let ed = SigningKey::generate(KeyType::Ed25519);
        let t = sign(&ed, json!({}), &json!({}));
        let (_, _, input, sig) = decode_unverified(&t).unwrap();
        let h = b64url(json!({"alg": "none"}).to_string());
        let p = input.split('.').nth(1).unwrap();
        let none = format!("{h}.{p}.{}", b64url(sig));
        assert!(verify(&none, &ed.verifying_key()).is_err());
    }

    /// A critical extension is not understood, so the JWS is invalid (RFC 7515 §4.1.11), even
    /// when its signature holds.
    #[test]
    fn critical_extensions_are_refused() {
        let ed = SigningKey::generate(KeyType::Ed25519);
        let t = sign(
            &ed,
            json!({"crit": ["b64"], "b64": false}),
            &json!({"a": 1}),
        );
        let err = verify(&t, &ed.verifying_key()).unwrap_err().to_string();
        assert!(err.contains("crit"), "{err}");
        assert!(verify(&sign(&ed, json!({}), &json!({"a": 1})), &ed.verifying_key()).is_ok());
    }

    #[test]
    fn independent_es256_signature_verifies() {
        // produced with the p256 crate directly, not through `sign`
        use p256::ecdsa::signature::Signer;
        let sk = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let h = b64url(r#"{"alg":"ES256","typ":"JWT"}"#);
        let p = b64url(r#"{"iss":"me"}"#);
        let s: p256::ecdsa::Signature = sk.sign(format!("{h}.{p}").as_bytes());
        let token = format!("{h}.{p}.{}", b64url(s.to_bytes()));
        let (_, payload) = verify(&token, &VerifyingKey::P256(*sk.verifying_key())).unwrap();
        assert_eq!(payload["iss"], "me");
    }

    #[test]
    fn header_key_by_jwk_or_did() {
        let k = SigningKey::generate(KeyType::P256);
        let vk = k.verifying_key();
        assert_eq!(header_key(&json!({"jwk": vk.to_jwk()})).unwrap().0, vk);
        let kid = did::verification_method(&did::did_key(&vk));
        assert_eq!(header_key(&json!({"kid": kid})).unwrap().0, vk);
        assert!(header_key(&json!({"kid": "whatever"})).is_err());
    }
}
