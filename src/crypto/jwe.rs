//! JWE with ECDH-ES (direct key agreement) on P-256 and A128GCM / A256GCM, compact serialization:
//! what OpenID4VP `direct_post.jwt` responses use.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use serde_json::{json, Value};
use sha2::Digest;
use zeroize::Zeroizing;

use super::{b64url, b64url_decode, CryptoError, CryptoResult, VerifyingKey};

/// An ephemeral P-256 key agreement key (the verifier's, per session).
#[derive(Clone)]
pub struct EncryptionKey(p256::SecretKey);

impl EncryptionKey {
    pub fn generate() -> Self {
        Self(p256::SecretKey::random(&mut rand::rngs::OsRng))
    }
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.to_bytes().to_vec())
    }
    pub fn from_bytes(b: &[u8]) -> CryptoResult<Self> {
        p256::SecretKey::from_slice(b)
            .map(Self)
            .map_err(|e| CryptoError::InvalidKey(e.to_string()))
    }
    /// Public JWK with `use: enc`, `alg: ECDH-ES` and the given `kid`.
    /// The RFC 7638 SHA-256 thumbprint (raw bytes) of the public key: what an mdoc
    /// SessionTranscript names for an encrypted response (OpenID4VP 1.0 Appendix B.2.6.1).
    pub fn thumbprint(&self) -> Vec<u8> {
        let jwk = self.public_jwk("");
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap_or_default(),
            jwk["y"].as_str().unwrap_or_default()
        );
        super::sha256(canonical).to_vec()
    }

    pub fn public_jwk(&self, kid: &str) -> Value {
        let mut jwk =
            VerifyingKey::P256(p256::ecdsa::VerifyingKey::from(self.0.public_key())).to_jwk();
        jwk["use"] = json!("enc");
        jwk["alg"] = json!("ECDH-ES");
        jwk["kid"] = json!(kid);
        jwk
    }
}

fn concat_kdf(z: &[u8], enc: &str, apu: &[u8], apv: &[u8], key_len: usize) -> Zeroizing<Vec<u8>> {
    let mut h = sha2::Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    for part in [enc.as_bytes(), apu, apv] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.update(((key_len * 8) as u32).to_be_bytes());
    Zeroizing::new(h.finalize()[..key_len].to_vec())
}

fn key_len(enc: &str) -> CryptoResult<usize> {
    match enc {
        "A128GCM" => Ok(16),
        "A256GCM" => Ok(32),
        other => Err(CryptoError::Unsupported(format!("enc {other}"))),
    }
}

fn gcm(key: &[u8], iv: &[u8], aad: &[u8], data: &[u8], encrypt: bool) -> CryptoResult<Vec<u8>> {
    if iv.len() != 12 {
        return Err(CryptoError::Malformed("GCM iv must be 12 bytes".into()));
    }
    let nonce = aes_gcm::Nonce::from_slice(iv);
    let payload = Payload { msg: data, aad };
    let out = match key.len() {
        16 => {
            let c = aes_gcm::Aes128Gcm::new_from_slice(key)
                .map_err(|e| CryptoError::InvalidKey(e.to_string()))?;
            if encrypt {
                c.encrypt(nonce, payload)
            } else {
                c.decrypt(nonce, payload)
            }
        }
        _ => {
            let c = aes_gcm::Aes256Gcm::new_from_slice(key)
                .map_err(|e| CryptoError::InvalidKey(e.to_string()))?;
            if encrypt {
                c.encrypt(nonce, payload)
            } else {
                c.decrypt(nonce, payload)
            }
        }
    };
    out.map_err(|_| CryptoError::Malformed("JWE decryption failed".into()))
}

/// Decrypts a compact JWE addressed to `key`; returns (protected header, plaintext).
pub fn decrypt(jwe: &str, key: &EncryptionKey) -> CryptoResult<(Value, Vec<u8>)> {
    let parts: Vec<&str> = jwe.split('.').collect();
    let [h, ek, iv, ct, tag] = parts.as_slice() else {
        return Err(CryptoError::Malformed(
            "a compact JWE has five parts".into(),
        ));
    };
    if !ek.is_empty() {
        return Err(CryptoError::Unsupported(
            "only ECDH-ES direct key agreement".into(),
        ));
    }
    let header: Value = serde_json::from_slice(&b64url_decode(h)?)
        .map_err(|e| CryptoError::Malformed(format!("JWE header: {e}")))?;
    if header["alg"] != "ECDH-ES" {
        return Err(CryptoError::Unsupported(format!(
            "JWE alg {}",
            header["alg"]
        )));
    }
    let enc = header["enc"].as_str().unwrap_or_default();
    let len = key_len(enc)?;
    let epk = VerifyingKey::from_jwk(&header["epk"])?;
    let VerifyingKey::P256(epk) = epk else {
        return Err(CryptoError::Unsupported("epk must be P-256".into()));
    };
    let epk = p256::PublicKey::from_sec1_bytes(epk.to_encoded_point(false).as_bytes())
        .map_err(|e| CryptoError::InvalidKey(e.to_string()))?;
    let shared = p256::ecdh::diffie_hellman(self_scalar(key), epk.as_affine());
    let apu = header["apu"]
        .as_str()
        .map(b64url_decode)
        .transpose()?
        .unwrap_or_default();
    let apv = header["apv"]
        .as_str()
        .map(b64url_decode)
        .transpose()?
        .unwrap_or_default();
    let cek = concat_kdf(shared.raw_secret_bytes(), enc, &apu, &apv, len);
    let mut data = b64url_decode(ct)?;
    data.extend_from_slice(&b64url_decode(tag)?);
    let plain = gcm(&cek, &b64url_decode(iv)?, h.as_bytes(), &data, false)?;
    Ok((header, plain))
}

fn self_scalar(key: &EncryptionKey) -> p256::NonZeroScalar {
    key.0.to_nonzero_scalar()
}

/// Encrypts `plaintext` to a P-256 public JWK (wallet side of direct_post.jwt).
pub fn encrypt(
    plaintext: &[u8],
    recipient: &Value,
    enc: &str,
    extra_header: Value,
) -> CryptoResult<String> {
    let len = key_len(enc)?;
    let VerifyingKey::P256(rk) = VerifyingKey::from_jwk(&strip_meta(recipient))? else {
        return Err(CryptoError::Unsupported(
            "recipient must be a P-256 key".into(),
        ));
    };
    let rk = p256::PublicKey::from_sec1_bytes(rk.to_encoded_point(false).as_bytes())
        .map_err(|e| CryptoError::InvalidKey(e.to_string()))?;
    let eph = p256::ecdh::EphemeralSecret::random(&mut rand::rngs::OsRng);
    let epk = VerifyingKey::P256(p256::ecdsa::VerifyingKey::from(eph.public_key())).to_jwk();
    let shared = eph.diffie_hellman(&rk);
    let mut header = match extra_header {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    header.insert("alg".into(), json!("ECDH-ES"));
    header.insert("enc".into(), json!(enc));
    header.insert("epk".into(), epk);
    if let Some(kid) = recipient.get("kid") {
        header.insert("kid".into(), kid.clone());
    }
    let apu = header
        .get("apu")
        .and_then(Value::as_str)
        .map(b64url_decode)
        .transpose()?
        .unwrap_or_default();
    let apv = header
        .get("apv")
        .and_then(Value::as_str)
        .map(b64url_decode)
        .transpose()?
        .unwrap_or_default();
    let cek = concat_kdf(shared.raw_secret_bytes(), enc, &apu, &apv, len);
    let h = b64url(Value::Object(header).to_string());
    let mut iv = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut iv);
    let out = gcm(&cek, &iv, h.as_bytes(), plaintext, true)?;
    let (ct, tag) = out.split_at(out.len() - 16);
    Ok(format!(
        "{h}..{}.{}.{}",
        b64url(iv),
        b64url(ct),
        b64url(tag)
    ))
}

fn strip_meta(jwk: &Value) -> Value {
    json!({"kty": jwk["kty"], "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_both_encs_and_tamper() {
        let k = EncryptionKey::generate();
        for enc in ["A128GCM", "A256GCM"] {
            let jwe = encrypt(
                b"{\"vp_token\":1}",
                &k.public_jwk("k1"),
                enc,
                json!({"apv": b64url("nonce")}),
            )
            .unwrap();
            let (h, p) = decrypt(&jwe, &k).unwrap();
            assert_eq!(p, b"{\"vp_token\":1}");
            assert_eq!(h["kid"], "k1");
            let mut parts: Vec<String> = jwe.split('.').map(str::to_string).collect();
            parts[3] = b64url(b"tampered-ciphertext");
            assert!(decrypt(&parts.join("."), &k).is_err());
            assert!(decrypt(&jwe, &EncryptionKey::generate()).is_err());
        }
        let back = EncryptionKey::from_bytes(&k.to_bytes()).unwrap();
        assert_eq!(back.public_jwk("x"), k.public_jwk("x"));
    }
}
