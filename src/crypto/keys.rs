//! Signing and verifying keys with their JWK forms.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{b64url, b64url_decode, sha256, CryptoError, CryptoResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum KeyType {
    #[serde(rename = "Ed25519", alias = "ed25519")]
    Ed25519,
    #[serde(rename = "P-256", alias = "p256", alias = "P256")]
    P256,
    #[serde(rename = "secp256k1")]
    Secp256k1,
}

impl KeyType {
    /// The JWS `alg` for this key type.
    pub fn alg(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "EdDSA",
            KeyType::P256 => "ES256",
            KeyType::Secp256k1 => "ES256K",
        }
    }
}

#[derive(Clone)]
pub enum SigningKey {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
    Secp256k1(k256::ecdsa::SigningKey),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?}, <private>)", self.key_type())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyingKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
    Secp256k1(k256::ecdsa::VerifyingKey),
}

impl SigningKey {
    pub fn generate(kt: KeyType) -> Self {
        let mut rng = rand::rngs::OsRng;
        match kt {
            KeyType::Ed25519 => SigningKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut rng)),
            KeyType::P256 => SigningKey::P256(p256::ecdsa::SigningKey::random(&mut rng)),
            KeyType::Secp256k1 => SigningKey::Secp256k1(k256::ecdsa::SigningKey::random(&mut rng)),
        }
    }

    pub fn key_type(&self) -> KeyType {
        match self {
            SigningKey::Ed25519(_) => KeyType::Ed25519,
            SigningKey::P256(_) => KeyType::P256,
            SigningKey::Secp256k1(_) => KeyType::Secp256k1,
        }
    }

    pub fn alg(&self) -> &'static str {
        self.key_type().alg()
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        match self {
            SigningKey::Ed25519(k) => VerifyingKey::Ed25519(k.verifying_key()),
            SigningKey::P256(k) => VerifyingKey::P256(*k.verifying_key()),
            SigningKey::Secp256k1(k) => VerifyingKey::Secp256k1(*k.verifying_key()),
        }
    }

    /// JWS signature bytes (Ed25519: 64 bytes; ECDSA: r || s, 64 bytes, low-S).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        use signature::Signer;
        match self {
            SigningKey::Ed25519(k) => k.sign(msg).to_bytes().to_vec(),
            SigningKey::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign(msg);
                s.to_bytes().to_vec()
            }
            SigningKey::Secp256k1(k) => {
                let s: k256::ecdsa::Signature = k.sign(msg);
                s.normalize_s().unwrap_or(s).to_bytes().to_vec()
            }
        }
    }

    /// The private JWK (for sealing in the store). Handle as a secret.
    pub fn to_private_jwk(&self) -> Zeroizing<String> {
        let mut jwk = self.verifying_key().to_jwk();
        let d = match self {
            SigningKey::Ed25519(k) => b64url(k.to_bytes()),
            SigningKey::P256(k) => b64url(k.to_bytes()),
            SigningKey::Secp256k1(k) => b64url(k.to_bytes()),
        };
        jwk["d"] = Value::String(d);
        Zeroizing::new(jwk.to_string())
    }

    pub fn from_private_jwk(jwk: &str) -> CryptoResult<Self> {
        let v: Value =
            serde_json::from_str(jwk).map_err(|e| CryptoError::InvalidKey(e.to_string()))?;
        let d = Zeroizing::new(b64url_decode(
            v["d"]
                .as_str()
                .ok_or_else(|| CryptoError::InvalidKey("no `d`".into()))?,
        )?);
        let key = match (v["kty"].as_str(), v["crv"].as_str()) {
            (Some("OKP"), Some("Ed25519")) => {
                let bytes: [u8; 32] = d
                    .as_slice()
                    .try_into()
                    .map_err(|_| CryptoError::InvalidKey("Ed25519 d must be 32 bytes".into()))?;
                SigningKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&bytes))
            }
            (Some("EC"), Some("P-256")) => SigningKey::P256(
                p256::ecdsa::SigningKey::from_slice(&d)
                    .map_err(|e| CryptoError::InvalidKey(e.to_string()))?,
            ),
            (Some("EC"), Some("secp256k1")) => SigningKey::Secp256k1(
                k256::ecdsa::SigningKey::from_slice(&d)
                    .map_err(|e| CryptoError::InvalidKey(e.to_string()))?,
            ),
            _ => return Err(CryptoError::Unsupported("key type".into())),
        };
        // the public part, when given, must match
        let mut public = v.clone();
        if let Some(m) = public.as_object_mut() {
            m.remove("d");
        }
        if v.get("x").is_some() && VerifyingKey::from_jwk(&public)? != key.verifying_key() {
            return Err(CryptoError::InvalidKey(
                "public part does not match d".into(),
            ));
        }
        Ok(key)
    }
}

impl VerifyingKey {
    pub fn key_type(&self) -> KeyType {
        match self {
            VerifyingKey::Ed25519(_) => KeyType::Ed25519,
            VerifyingKey::P256(_) => KeyType::P256,
            VerifyingKey::Secp256k1(_) => KeyType::Secp256k1,
        }
    }

    pub fn alg(&self) -> &'static str {
        self.key_type().alg()
    }

    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> CryptoResult<()> {
        use signature::Verifier;
        let ok = match self {
            // `verify_strict`, not the cofactored-tolerant `Verifier::verify`: it also refuses a
            // small-order key or `R`, so even a weak key that slipped past the constructors cannot
            // carry a signature that verifies for every message (which would void holder binding).
            VerifyingKey::Ed25519(k) => ed25519_dalek::Signature::from_slice(sig)
                .map(|s| k.verify_strict(msg, &s).is_ok())
                .unwrap_or(false),
            VerifyingKey::P256(k) => p256::ecdsa::Signature::from_slice(sig)
                .map(|s| k.verify(msg, &s).is_ok())
                .unwrap_or(false),
            VerifyingKey::Secp256k1(k) => k256::ecdsa::Signature::from_slice(sig)
                .map(|s| {
                    let s = s.normalize_s().unwrap_or(s);
                    k.verify(msg, &s).is_ok()
                })
                .unwrap_or(false),
        };
        ok.then_some(()).ok_or(CryptoError::BadSignature)
    }

    /// Public JWK (`kty`, `crv`, `x`, `y`).
    pub fn to_jwk(&self) -> Value {
        match self {
            VerifyingKey::Ed25519(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(k.as_bytes())})
            }
            VerifyingKey::P256(k) => {
                let p = k.to_encoded_point(false);
                json!({"kty": "EC", "crv": "P-256", "x": b64url(p.x().map(|x| x.as_slice()).unwrap_or_default()), "y": b64url(p.y().map(|y| y.as_slice()).unwrap_or_default())})
            }
            VerifyingKey::Secp256k1(k) => {
                let p = k.to_encoded_point(false);
                json!({"kty": "EC", "crv": "secp256k1", "x": b64url(p.x().map(|x| x.as_slice()).unwrap_or_default()), "y": b64url(p.y().map(|y| y.as_slice()).unwrap_or_default())})
            }
        }
    }

    pub fn from_jwk(jwk: &Value) -> CryptoResult<Self> {
        if jwk.get("d").is_some() {
            return Err(CryptoError::InvalidKey(
                "a public JWK must not contain `d`".into(),
            ));
        }
        let field = |name: &str| -> CryptoResult<Vec<u8>> {
            b64url_decode(
                jwk[name]
                    .as_str()
                    .ok_or_else(|| CryptoError::InvalidKey(format!("JWK lacks `{name}`")))?,
            )
        };
        match (jwk["kty"].as_str(), jwk["crv"].as_str()) {
            (Some("OKP"), Some("Ed25519")) => {
                let x: [u8; 32] = field("x")?
                    .try_into()
                    .map_err(|_| CryptoError::InvalidKey("Ed25519 x must be 32 bytes".into()))?;
                Self::ed25519_from_bytes(&x)
            }
            (Some("EC"), Some(crv @ ("P-256" | "secp256k1"))) => {
                let (x, y) = (field("x")?, field("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(CryptoError::InvalidKey(
                        "EC coordinates must be 32 bytes".into(),
                    ));
                }
                let mut sec1 = Vec::with_capacity(65);
                sec1.push(4);
                sec1.extend_from_slice(&x);
                sec1.extend_from_slice(&y);
                Self::from_sec1(crv, &sec1)
            }
            _ => Err(CryptoError::Unsupported(format!(
                "JWK kty={:?} crv={:?}",
                jwk["kty"], jwk["crv"]
            ))),
        }
    }

    /// An Ed25519 public key from its 32 bytes, as every outside Ed25519 key must be made: refuses
    /// non-points and small-order ("weak") points. For a weak key such as the identity point a
    /// signature exists that the permissive verification equation accepts for any message, so a
    /// proof or KB-JWT under it proves nothing; the holder binding it claims would be void.
    pub(crate) fn ed25519_from_bytes(bytes: &[u8; 32]) -> CryptoResult<Self> {
        let k = ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map_err(|e| CryptoError::InvalidKey(format!("not an Ed25519 public key: {e}")))?;
        if k.is_weak() {
            return Err(CryptoError::InvalidKey(
                "weak (small-order) Ed25519 public key".into(),
            ));
        }
        Ok(VerifyingKey::Ed25519(k))
    }

    pub(crate) fn from_sec1(crv: &str, bytes: &[u8]) -> CryptoResult<Self> {
        match crv {
            "P-256" => p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                .map(VerifyingKey::P256)
                .map_err(|e| CryptoError::InvalidKey(e.to_string())),
            _ => k256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                .map(VerifyingKey::Secp256k1)
                .map_err(|e| CryptoError::InvalidKey(e.to_string())),
        }
    }

    /// Compressed public key bytes (Ed25519: the 32 raw bytes).
    pub(crate) fn compressed(&self) -> Vec<u8> {
        match self {
            VerifyingKey::Ed25519(k) => k.as_bytes().to_vec(),
            VerifyingKey::P256(k) => k.to_encoded_point(true).as_bytes().to_vec(),
            VerifyingKey::Secp256k1(k) => k.to_encoded_point(true).as_bytes().to_vec(),
        }
    }

    /// RFC 7638 JWK thumbprint (base64url SHA-256), a stable fingerprint.
    pub fn thumbprint(&self) -> String {
        let jwk = self.to_jwk();
        let canonical = match self {
            VerifyingKey::Ed25519(_) => format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                jwk["x"].as_str().unwrap_or_default()
            ),
            _ => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                jwk["crv"].as_str().unwrap_or_default(),
                jwk["x"].as_str().unwrap_or_default(),
                jwk["y"].as_str().unwrap_or_default()
            ),
        };
        b64url(sha256(canonical))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_type_signs_verifies_and_round_trips() {
        for kt in [KeyType::Ed25519, KeyType::P256, KeyType::Secp256k1] {
            let k = SigningKey::generate(kt);
            let sig = k.sign(b"hello");
            assert_eq!(sig.len(), 64);
            let vk = k.verifying_key();
            vk.verify(b"hello", &sig).unwrap();
            assert_eq!(vk.verify(b"hellO", &sig), Err(CryptoError::BadSignature));
            let back = SigningKey::from_private_jwk(&k.to_private_jwk()).unwrap();
            assert_eq!(back.verifying_key(), vk);
            assert_eq!(VerifyingKey::from_jwk(&vk.to_jwk()).unwrap(), vk);
            assert_eq!(vk.thumbprint().len(), 43);
            // another key does not verify
            let other = SigningKey::generate(kt).verifying_key();
            assert!(other.verify(b"hello", &sig).is_err());
        }
    }

    #[test]
    fn rfc7638_thumbprint_vector() {
        // RFC 8037 appendix A.3: thumbprint of the Ed25519 example key
        let jwk =
            json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        let vk = VerifyingKey::from_jwk(&jwk).unwrap();
        assert_eq!(
            vk.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    /// The identity point (y = 1): small order, so the forged signature below (R = identity,
    /// s = 0) satisfies the permissive equation [8][s]B = [8]R + [8][k]A for every message.
    const IDENTITY: [u8; 32] = {
        let mut b = [0u8; 32];
        b[0] = 1;
        b
    };

    fn forged_signature() -> Vec<u8> {
        let mut sig = IDENTITY.to_vec();
        sig.extend([0u8; 32]);
        sig
    }

    #[test]
    fn weak_ed25519_jwk_is_refused() {
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(IDENTITY)});
        let err = VerifyingKey::from_jwk(&jwk).unwrap_err();
        assert!(
            matches!(&err, CryptoError::InvalidKey(m) if m.contains("weak")),
            "{err:?}"
        );
    }

    #[test]
    fn weak_ed25519_did_key_and_did_jwk_are_refused() {
        let mut bytes = vec![0xed, 0x01];
        bytes.extend(IDENTITY);
        let did_key = format!("did:key:z{}", bs58::encode(bytes).into_string());
        let err = crate::crypto::did::resolve_offline(&did_key).unwrap_err();
        assert!(err.to_string().contains("weak"), "{err:?}");
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(IDENTITY)});
        let did_jwk = format!("did:jwk:{}", b64url(jwk.to_string()));
        assert!(crate::crypto::did::resolve_offline(&did_jwk).is_err());
    }

    #[test]
    fn forged_signature_under_a_weak_key_does_not_verify() {
        // Build the weak key directly (bypassing the refusing constructors) to show that
        // verification itself is strict too.
        let weak = ed25519_dalek::VerifyingKey::from_bytes(&IDENTITY).unwrap();
        assert!(weak.is_weak());
        let sig = ed25519_dalek::Signature::from_slice(&forged_signature()).unwrap();
        // The attack premise: the permissive check accepts the forgery for arbitrary messages.
        use signature::Verifier;
        assert!(weak.verify(b"any message", &sig).is_ok());
        let vk = VerifyingKey::Ed25519(weak);
        for msg in [&b"any message"[..], b"another", b""] {
            assert_eq!(
                vk.verify(msg, &forged_signature()),
                Err(CryptoError::BadSignature)
            );
        }
    }

    #[test]
    fn public_jwk_with_private_part_is_refused() {
        let k = SigningKey::generate(KeyType::P256);
        let private: Value = serde_json::from_str(&k.to_private_jwk()).unwrap();
        assert!(VerifyingKey::from_jwk(&private).is_err());
    }
}
