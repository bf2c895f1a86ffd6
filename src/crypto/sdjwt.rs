//! SD-JWT (RFC 9901) as used by SD-JWT VC (`dc+sd-jwt`): issuance with per-claim disclosures,
//! presentation with a chosen subset, key-binding JWT, and verification.

use std::collections::HashSet;

use serde_json::{json, Map, Value};

use super::{
    b64url, b64url_decode, jws, sha256, CryptoError, CryptoResult, SigningKey, VerifyingKey,
};

fn digest(disclosure: &str) -> String {
    b64url(sha256(disclosure.as_bytes()))
}

fn random_salt() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b64url(b)
}

/// Issues an SD-JWT: `payload` holds the always-visible claims (iss, vct, cnf, ...); each entry of
/// `disclosable` becomes a disclosure. Returns `<jwt>~<disclosure>~...~`.
pub fn issue(
    key: &SigningKey,
    header: Value,
    mut payload: Map<String, Value>,
    disclosable: &Map<String, Value>,
) -> String {
    let mut digests = Vec::new();
    let mut disclosures = Vec::new();
    for (name, value) in disclosable {
        let d = b64url(json!([random_salt(), name, value]).to_string());
        digests.push(digest(&d));
        disclosures.push(d);
    }
    digests.sort();
    payload.insert("_sd".into(), json!(digests));
    payload.insert("_sd_alg".into(), json!("sha-256"));
    let jwt = jws::sign(key, header, &Value::Object(payload));
    let mut out = jwt;
    out.push('~');
    for d in disclosures {
        out.push_str(&d);
        out.push('~');
    }
    out
}

/// A parsed SD-JWT: issuer JWT, disclosures, optional KB-JWT.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub jwt: String,
    pub disclosures: Vec<String>,
    pub kb_jwt: Option<String>,
}

pub fn parse(sd_jwt: &str) -> CryptoResult<Parsed> {
    let parts: Vec<&str> = sd_jwt.split('~').collect();
    if parts.len() < 2 {
        return Err(CryptoError::Malformed(
            "an SD-JWT has at least one `~`".into(),
        ));
    }
    let last = parts[parts.len() - 1];
    Ok(Parsed {
        jwt: parts[0].to_string(),
        disclosures: parts[1..parts.len() - 1]
            .iter()
            .filter(|d| !d.is_empty())
            .map(|d| d.to_string())
            .collect(),
        kb_jwt: (!last.is_empty()).then(|| last.to_string()),
    })
}

/// Decodes one disclosure into (name, value).
pub fn decode_disclosure(d: &str) -> CryptoResult<(String, Value)> {
    let v: Value = serde_json::from_slice(&b64url_decode(d)?)
        .map_err(|e| CryptoError::Malformed(format!("disclosure: {e}")))?;
    match v.as_array().map(Vec::as_slice) {
        Some([Value::String(_salt), Value::String(name), value]) => {
            Ok((name.clone(), value.clone()))
        }
        _ => Err(CryptoError::Malformed(
            "object-property disclosure must be [salt, name, value]".into(),
        )),
    }
}

/// Holder side: keeps only the disclosures whose claim names are in `names`.
pub fn select(sd_jwt: &str, names: &[&str]) -> CryptoResult<String> {
    let p = parse(sd_jwt)?;
    let mut out = p.jwt.clone();
    out.push('~');
    for d in &p.disclosures {
        let (name, _) = decode_disclosure(d)?;
        if names.contains(&name.as_str()) {
            out.push_str(d);
            out.push('~');
        }
    }
    Ok(out)
}

/// `sd_hash` over a presentation without its KB-JWT (`<jwt>~<d>~...~`).
pub fn sd_hash(presentation_without_kb: &str) -> String {
    b64url(sha256(presentation_without_kb.as_bytes()))
}

/// Appends a KB-JWT signed by the holder.
pub fn add_key_binding(
    presentation: &str,
    holder: &SigningKey,
    aud: &str,
    nonce: &str,
    iat: i64,
) -> String {
    let base = if presentation.ends_with('~') {
        presentation.to_string()
    } else {
        format!("{presentation}~")
    };
    let kb = jws::sign(
        holder,
        json!({"typ": "kb+jwt"}),
        &json!({"iat": iat, "aud": aud, "nonce": nonce, "sd_hash": sd_hash(&base)}),
    );
    format!("{base}{kb}")
}

/// A verified SD-JWT.
#[derive(Debug, Clone)]
pub struct Verified {
    pub header: Value,
    /// Issuer payload with disclosed claims merged in and `_sd`/`_sd_alg` removed.
    pub claims: Map<String, Value>,
    pub disclosed: Vec<String>,
    /// The KB-JWT payload when one was present and verified.
    pub key_binding: Option<Value>,
}

/// Verifies the issuer signature with `issuer_key`, every disclosure digest, and the KB-JWT (if
/// present) against `cnf.jwk` and the presentation's `sd_hash`. Audience/nonce/time checks on the
/// KB-JWT are the caller's (returned in `key_binding`).
pub fn verify(sd_jwt: &str, issuer_key: &VerifyingKey) -> CryptoResult<Verified> {
    let p = parse(sd_jwt)?;
    let (header, payload) = jws::verify(&p.jwt, issuer_key)?;
    let mut claims = payload.as_object().cloned().unwrap_or_default();
    if let Some(alg) = claims.get("_sd_alg") {
        if alg != "sha-256" {
            return Err(CryptoError::Unsupported(format!("_sd_alg {alg}")));
        }
    }
    let digests: HashSet<String> = claims
        .get("_sd")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut seen = HashSet::new();
    let mut disclosed = Vec::new();
    for d in &p.disclosures {
        let dg = digest(d);
        if !digests.contains(&dg) {
            return Err(CryptoError::Malformed(
                "a disclosure is not referenced by the issuer JWT".into(),
            ));
        }
        if !seen.insert(dg) {
            return Err(CryptoError::Malformed("duplicate disclosure".into()));
        }
        let (name, value) = decode_disclosure(d)?;
        if name == "_sd" || name == "..." || claims.contains_key(&name) {
            return Err(CryptoError::Malformed(format!(
                "disclosure for `{name}` collides"
            )));
        }
        claims.insert(name.clone(), value);
        disclosed.push(name);
    }
    claims.remove("_sd");
    claims.remove("_sd_alg");
    let key_binding = match &p.kb_jwt {
        None => None,
        Some(kb) => {
            let cnf = claims
                .get("cnf")
                .and_then(|c| c.get("jwk"))
                .ok_or_else(|| CryptoError::Malformed("KB-JWT present but no cnf.jwk".into()))?;
            let holder = VerifyingKey::from_jwk(cnf)?;
            let (kh, kp) = jws::verify(kb, &holder)?;
            if kh["typ"] != "kb+jwt" {
                return Err(CryptoError::Malformed("KB-JWT typ must be kb+jwt".into()));
            }
            let base = &sd_jwt[..sd_jwt.len() - kb.len()];
            if kp["sd_hash"].as_str() != Some(sd_hash(base).as_str()) {
                return Err(CryptoError::Malformed(
                    "KB-JWT sd_hash does not match the presentation".into(),
                ));
            }
            Some(kp)
        }
    };
    Ok(Verified {
        header,
        claims,
        disclosed,
        key_binding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyType;

    fn sample() -> (SigningKey, SigningKey, String) {
        let issuer = SigningKey::generate(KeyType::Ed25519);
        let holder = SigningKey::generate(KeyType::P256);
        let mut payload = Map::new();
        payload.insert("iss".into(), json!("did:example:issuer"));
        payload.insert("vct".into(), json!("https://example.com/id"));
        payload.insert(
            "cnf".into(),
            json!({"jwk": holder.verifying_key().to_jwk()}),
        );
        let mut sd = Map::new();
        sd.insert("given_name".into(), json!("Erika"));
        sd.insert("family_name".into(), json!("Mustermann"));
        sd.insert("email".into(), json!("erika@example.com"));
        let s = issue(&issuer, json!({"typ": "dc+sd-jwt"}), payload, &sd);
        (issuer, holder, s)
    }

    #[test]
    fn full_disclosure_verifies() {
        let (issuer, _, s) = sample();
        let v = verify(&s, &issuer.verifying_key()).unwrap();
        assert_eq!(v.claims["given_name"], "Erika");
        assert_eq!(v.disclosed.len(), 3);
        assert!(v.claims.get("_sd").is_none());
        assert_eq!(v.header["typ"], "dc+sd-jwt");
    }

    #[test]
    fn subset_with_key_binding() {
        let (issuer, holder, s) = sample();
        let sel = select(&s, &["email"]).unwrap();
        let pres = add_key_binding(&sel, &holder, "verifier", "n-1", 100);
        let v = verify(&pres, &issuer.verifying_key()).unwrap();
        assert_eq!(v.disclosed, vec!["email".to_string()]);
        assert!(v.claims.get("given_name").is_none());
        let kb = v.key_binding.unwrap();
        assert_eq!(kb["nonce"], "n-1");
        assert_eq!(kb["aud"], "verifier");
    }

    #[test]
    fn tampering_is_detected() {
        let (issuer, holder, s) = sample();
        // a forged disclosure
        let forged = format!(
            "{s}{}~",
            b64url(json!(["salt", "given_name", "Mallory"]).to_string())
        );
        assert!(verify(&forged, &issuer.verifying_key()).is_err());
        // a KB-JWT computed over another disclosure set
        let sel = select(&s, &["email"]).unwrap();
        let pres = add_key_binding(&sel, &holder, "v", "n", 1);
        let kb = pres.rsplit('~').next().unwrap();
        let swapped = format!("{}{kb}", select(&s, &["email", "given_name"]).unwrap());
        assert!(verify(&swapped, &issuer.verifying_key()).is_err());
        // KB-JWT by another key
        let other = SigningKey::generate(KeyType::P256);
        let bad = add_key_binding(&sel, &other, "v", "n", 1);
        assert!(verify(&bad, &issuer.verifying_key()).is_err());
        // wrong issuer key
        assert!(verify(&s, &SigningKey::generate(KeyType::Ed25519).verifying_key()).is_err());
    }
}
