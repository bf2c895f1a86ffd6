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
    match open_disclosure(d)? {
        (Some(name), value) => Ok((name, value)),
        (None, _) => Err(CryptoError::Malformed(
            "object-property disclosure must be [salt, name, value]".into(),
        )),
    }
}

/// Refuses disclosures that together would cost more than [`crate::json_cost::FETCHED_MAX`]
/// parsed: base64 hides their structure from a request body's check.
fn check_disclosures_cost(disclosures: &[String]) -> CryptoResult<()> {
    let mut cost = 0usize;
    for d in disclosures {
        cost = cost.saturating_add(crate::json_cost::estimate(&b64url_decode(d)?));
    }
    if cost > crate::json_cost::FETCHED_MAX {
        return Err(CryptoError::Malformed(format!(
            "the disclosures are too complex: about {} MiB once read",
            cost >> 20
        )));
    }
    Ok(())
}

/// One disclosure: an object property (`[salt, name, value]`) or an array element (`[salt,
/// value]`).
fn open_disclosure(d: &str) -> CryptoResult<(Option<String>, Value)> {
    let v: Value = serde_json::from_slice(&b64url_decode(d)?)
        .map_err(|e| CryptoError::Malformed(format!("disclosure: {e}")))?;
    match v.as_array().map(Vec::as_slice) {
        Some([Value::String(_), Value::String(name), value]) => {
            Ok((Some(name.clone()), value.clone()))
        }
        Some([Value::String(_), value]) => Ok((None, value.clone())),
        _ => Err(CryptoError::Malformed(
            "a disclosure must be [salt, name, value] or [salt, value]".into(),
        )),
    }
}

/// The digests a value refers to, at any depth: `_sd` entries and array-element `...` ones.
fn digests_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::Array(sd)) = o.get("_sd") {
                out.extend(sd.iter().filter_map(Value::as_str).map(str::to_string));
            }
            if let (1, Some(Value::String(d))) = (o.len(), o.get("...")) {
                out.push(d.clone());
            }
            o.values().for_each(|x| digests_in(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| digests_in(x, out)),
        _ => {}
    }
}

/// Holder side: keeps the disclosures of the first-level claims in `names`, and every disclosure
/// nested in what they disclose (or in those claims when they are in the clear): a claim is
/// presented whole, its nested and array-element disclosures with it.
pub fn select(sd_jwt: &str, names: &[&str]) -> CryptoResult<String> {
    let paths: Vec<Vec<Value>> = names.iter().map(|n| vec![json!(n)]).collect();
    select_paths(sd_jwt, &paths)
}

/// Holder side: keeps what discloses each claim path (OpenID4VP claim paths: names, array
/// indexes, `null` for every element) — the disclosures along the path, and at its end the
/// claim whole, its nested disclosures with it. A path into `address` discloses that part of
/// `address`, not its other members (attacker review: a query for `["address", "country"]`
/// disclosed the whole address).
pub fn select_paths(sd_jwt: &str, paths: &[Vec<Value>]) -> CryptoResult<String> {
    let p = parse(sd_jwt)?;
    let (_, payload, _, _) = jws::decode_unverified(&p.jwt)?;
    check_disclosures_cost(&p.disclosures)?;
    let opened = p
        .disclosures
        .iter()
        .map(|d| Ok((digest(d), open_disclosure(d)?)))
        .collect::<CryptoResult<std::collections::HashMap<_, _>>>()?;
    let mut keep = HashSet::new();
    // digests whose claims are disclosed whole
    let mut pending = Vec::new();
    for path in paths {
        along(&payload, path, &opened, &mut keep, &mut pending);
    }
    while let Some(dg) = pending.pop() {
        if let Some((_, value)) = opened.get(&dg) {
            if keep.insert(dg) {
                digests_in(value, &mut pending);
            }
        }
    }
    let mut out = p.jwt.clone();
    out.push('~');
    for d in p.disclosures.iter().filter(|d| keep.contains(&digest(d))) {
        out.push_str(d);
        out.push('~');
    }
    Ok(out)
}

/// The disclosures along `path` from `node` go to `keep`; at its end, the digests of the claim
/// (disclosed whole) go to `whole`. The path's length bounds the recursion.
fn along(
    node: &Value,
    path: &[Value],
    opened: &std::collections::HashMap<String, (Option<String>, Value)>,
    keep: &mut HashSet<String>,
    whole: &mut Vec<String>,
) {
    let Some((seg, rest)) = path.split_first() else {
        digests_in(node, whole);
        return;
    };
    match (seg, node) {
        (Value::String(name), Value::Object(o)) => {
            if let Some(v) = o.get(name) {
                along(v, rest, opened, keep, whole);
            }
            for dg in o
                .get("_sd")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if let Some((Some(n), v)) = opened.get(dg) {
                    if n == name {
                        keep.insert(dg.to_string());
                        along(v, rest, opened, keep, whole);
                    }
                }
            }
        }
        (Value::Null | Value::Number(_), Value::Array(items)) => {
            let wanted = |i: usize| seg.is_null() || seg.as_u64() == Some(i as u64);
            for (_, item) in items.iter().enumerate().filter(|(i, _)| wanted(*i)) {
                let hidden = item
                    .as_object()
                    .filter(|o| o.len() == 1)
                    .and_then(|o| o.get("..."))
                    .and_then(Value::as_str);
                match hidden {
                    Some(dg) => {
                        if let Some((None, v)) = opened.get(dg) {
                            keep.insert(dg.to_string());
                            along(v, rest, opened, keep, whole);
                        }
                    }
                    None => along(item, rest, opened, keep, whole),
                }
            }
        }
        _ => {}
    }
}

/// How deep claims may nest: every object, array and disclosure inside another counts one (a
/// chain of disclosures nests without end within any single one's JSON depth limit).
const MAX_NESTING: usize = 64;
/// The most disclosures one SD-JWT may carry.
const MAX_DISCLOSURES: usize = 512;

/// RFC 9901 §7.1: `payload` with every disclosure in its place — object properties from `_sd`
/// digests, array elements from `{"...": digest}` — at any depth; `_sd` and `_sd_alg` removed,
/// and array elements whose disclosure is withheld dropped (a placeholder is no claim). Every
/// disclosure must be referenced, by a digest of its kind; a digest met twice refuses the whole.
/// Returns the claims and the names of the first-level claims that were disclosed.
pub fn reveal(
    mut payload: Map<String, Value>,
    disclosures: &[String],
) -> CryptoResult<(Map<String, Value>, Vec<String>)> {
    if let Some(alg) = payload.remove("_sd_alg") {
        if alg != "sha-256" {
            return Err(CryptoError::Unsupported(format!("_sd_alg {alg}")));
        }
    }
    let mut r = Reveal {
        pending: std::collections::HashMap::new(),
        seen: HashSet::new(),
        top: Vec::new(),
    };
    if disclosures.len() > MAX_DISCLOSURES {
        return Err(CryptoError::Malformed(format!(
            "over {MAX_DISCLOSURES} disclosures"
        )));
    }
    check_disclosures_cost(disclosures)?;
    for d in disclosures {
        if r.pending.insert(digest(d), open_disclosure(d)?).is_some() {
            return Err(CryptoError::Malformed("duplicate disclosure".into()));
        }
    }
    let claims = r.object(payload, 0)?;
    if !r.pending.is_empty() {
        return Err(CryptoError::Malformed(
            "a disclosure is not referenced by the issuer JWT".into(),
        ));
    }
    Ok((claims, r.top))
}

struct Reveal {
    pending: std::collections::HashMap<String, (Option<String>, Value)>,
    seen: HashSet<String>,
    top: Vec<String>,
}

impl Reveal {
    fn once(&mut self, dg: &str) -> CryptoResult<Option<(Option<String>, Value)>> {
        if !self.seen.insert(dg.to_string()) {
            return Err(CryptoError::Malformed(
                "a digest appears twice in the SD-JWT".into(),
            ));
        }
        Ok(self.pending.remove(dg))
    }

    fn object(
        &mut self,
        mut o: Map<String, Value>,
        depth: usize,
    ) -> CryptoResult<Map<String, Value>> {
        if depth > MAX_NESTING {
            return Err(CryptoError::Malformed(format!(
                "disclosures nest deeper than {MAX_NESTING}"
            )));
        }
        let sd = match o.remove("_sd") {
            None => Vec::new(),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(CryptoError::Malformed("_sd must be an array".into())),
        };
        let mut out = Map::new();
        for (k, v) in o {
            out.insert(k, self.value(v, depth)?);
        }
        for dg in sd {
            let dg = dg
                .as_str()
                .ok_or_else(|| CryptoError::Malformed("an _sd digest is not a string".into()))?;
            let Some((name, value)) = self.once(dg)? else {
                continue; // a decoy, or withheld
            };
            let name = name.ok_or_else(|| {
                CryptoError::Malformed("an array-element disclosure is named in _sd".into())
            })?;
            if name == "_sd" || name == "..." || out.contains_key(&name) {
                return Err(CryptoError::Malformed(format!(
                    "disclosure for `{name}` collides"
                )));
            }
            let value = self.value(value, depth + 1)?;
            if depth == 0 {
                self.top.push(name.clone());
            }
            out.insert(name, value);
        }
        Ok(out)
    }

    fn value(&mut self, v: Value, depth: usize) -> CryptoResult<Value> {
        if depth > MAX_NESTING {
            return Err(CryptoError::Malformed(format!(
                "disclosures nest deeper than {MAX_NESTING}"
            )));
        }
        match v {
            Value::Object(o) => Ok(Value::Object(self.object(o, depth + 1)?)),
            Value::Array(a) => {
                let mut out = Vec::with_capacity(a.len());
                for el in a {
                    let placeholder = match &el {
                        Value::Object(o) if o.len() == 1 => o.get("...").cloned(),
                        _ => None,
                    };
                    let Some(dg) = placeholder else {
                        out.push(self.value(el, depth + 1)?);
                        continue;
                    };
                    let dg = dg.as_str().ok_or_else(|| {
                        CryptoError::Malformed("an array-element digest is not a string".into())
                    })?;
                    match self.once(dg)? {
                        None => {} // withheld: no element
                        Some((None, value)) => out.push(self.value(value, depth + 1)?),
                        Some((Some(_), _)) => {
                            return Err(CryptoError::Malformed(
                                "an object-property disclosure is named in an array".into(),
                            ))
                        }
                    }
                }
                Ok(Value::Array(out))
            }
            other => Ok(other),
        }
    }
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
    let (claims, disclosed) = reveal(
        payload.as_object().cloned().unwrap_or_default(),
        &p.disclosures,
    )?;
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

    /// RFC 9901 §7.1 at every depth (attacker review: nested `_sd` objects and array-element
    /// placeholders were left in the claims, so a query for `nationalities` or `address` was
    /// satisfied by digests the holder never disclosed; an honest wallet's nested disclosures
    /// were refused as unreferenced).
    #[test]
    fn nested_and_array_element_disclosures_are_revealed_or_dropped() {
        let d = |v: Value| b64url(v.to_string());
        let nat_de = d(json!(["s1", "DE"]));
        let nat_fr = d(json!(["s2", "FR"]));
        let street = d(json!(["s3", "street", "Heidestraße 17"]));
        let locality = d(json!(["s4", "locality", "Berlin"]));
        let birth = d(json!(["s5", "place_of_birth", {"_sd": [digest(&locality)]}]));
        let issuer = SigningKey::generate(KeyType::Ed25519);
        let payload = json!({
            "iss": "did:example:issuer", "vct": "https://example.com/pid",
            "nationalities": [{"...": digest(&nat_de)}, {"...": digest(&nat_fr)}, "XX"],
            "address": {"_sd": [digest(&street), digest("a decoy")], "country": "DE"},
            "_sd": [digest(&birth)], "_sd_alg": "sha-256",
        });
        let jwt = jws::sign(&issuer, json!({"typ": "dc+sd-jwt"}), &payload);
        let all = [&nat_de, &nat_fr, &street, &locality, &birth];
        let full = format!("{jwt}~{}~", all.map(String::as_str).join("~"));
        let v = verify(&full, &issuer.verifying_key()).unwrap();
        assert_eq!(v.claims["nationalities"], json!(["DE", "FR", "XX"]));
        assert_eq!(
            v.claims["address"],
            json!({"street": "Heidestraße 17", "country": "DE"})
        );
        assert_eq!(v.claims["place_of_birth"], json!({"locality": "Berlin"}));
        assert_eq!(v.disclosed, vec!["place_of_birth".to_string()]);

        // withheld: no placeholder and no `_sd` is read as a claim
        let none = verify(&format!("{jwt}~"), &issuer.verifying_key()).unwrap();
        assert_eq!(none.claims["nationalities"], json!(["XX"]));
        assert_eq!(none.claims["address"], json!({"country": "DE"}));
        assert!(!none.claims.contains_key("place_of_birth"));
        let view = crate::dcql::CredentialView {
            format: "dc+sd-jwt".into(),
            root: Value::Object(none.claims),
            vct: None,
            types: Vec::new(),
            doctype: None,
        };
        let q = json!({"id": "q", "format": "dc+sd-jwt",
                       "claims": [{"path": ["address", "street"]}]});
        assert!(crate::dcql::mismatch(&view, &q).is_some());

        // a nested disclosure without its parent is unreferenced; a digest met twice refuses
        assert!(verify(&format!("{jwt}~{locality}~"), &issuer.verifying_key()).is_err());
        let twice = json!({"iss": "i", "a": [{"...": digest(&nat_de)}, {"...": digest(&nat_de)}]});
        let jwt2 = jws::sign(&issuer, json!({"typ": "dc+sd-jwt"}), &twice);
        assert!(verify(&format!("{jwt2}~{nat_de}~"), &issuer.verifying_key()).is_err());
        // an array-element disclosure named in `_sd`, or a property one in an array: refused
        let wrong = json!({"iss": "i", "_sd": [digest(&nat_de)], "a": [{"...": digest(&street)}]});
        let jwt3 = jws::sign(&issuer, json!({"typ": "dc+sd-jwt"}), &wrong);
        assert!(verify(&format!("{jwt3}~{nat_de}~"), &issuer.verifying_key()).is_err());
        assert!(verify(&format!("{jwt3}~{street}~"), &issuer.verifying_key()).is_err());

        // the holder presents a claim whole: its nested disclosures go with it
        let chosen = select(&full, &["place_of_birth", "address"]).unwrap();
        let got = parse(&chosen).unwrap().disclosures;
        let mut want = vec![street.clone(), locality.clone(), birth.clone()];
        want.sort();
        let mut got_sorted = got.clone();
        got_sorted.sort();
        assert_eq!(got_sorted, want);
        verify(&chosen, &issuer.verifying_key()).unwrap();
        // a path discloses what is on it: one member of a disclosed object, one element
        let path = |p: Value| p.as_array().unwrap().clone();
        let chosen = select_paths(&full, &[path(json!(["place_of_birth", "locality"]))]).unwrap();
        let mut got = parse(&chosen).unwrap().disclosures;
        got.sort();
        let mut want = vec![birth.clone(), locality.clone()];
        want.sort();
        assert_eq!(got, want);
        let chosen = select_paths(&full, &[path(json!(["address", "country"]))]).unwrap();
        assert!(
            parse(&chosen).unwrap().disclosures.is_empty(),
            "street stays hidden"
        );
        let chosen = select_paths(&full, &[path(json!(["nationalities", 1]))]).unwrap();
        assert_eq!(parse(&chosen).unwrap().disclosures, vec![nat_fr.clone()]);
        let chosen = select_paths(&full, &[path(json!(["nationalities", null]))]).unwrap();
        assert_eq!(parse(&chosen).unwrap().disclosures.len(), 2);
        let v = verify(&chosen, &issuer.verifying_key()).unwrap();
        assert_eq!(v.claims["nationalities"], json!(["DE", "FR", "XX"]));
    }

    /// Attacker review of `reveal`: a chain of array-element disclosures, each nested in arrays
    /// within its own JSON depth limit, recursed without a depth check: one presentation would
    /// overflow a worker's stack and abort the process. The chain is refused at the nesting bound.
    #[test]
    fn a_chain_of_nested_disclosures_is_refused_not_recursed_without_end() {
        let issuer = SigningKey::generate(KeyType::Ed25519);
        let mut next = b64url(json!(["s", 1]).to_string());
        let mut chain = vec![next.clone()];
        for i in 0..300 {
            let mut v = json!([{"...": digest(&next)}]);
            for _ in 0..100 {
                v = json!([v]);
            }
            next = b64url(json!([format!("s{i}"), v]).to_string());
            chain.push(next.clone());
        }
        let payload = json!({"iss": "i", "a": [{"...": digest(&next)}]});
        let jwt = jws::sign(&issuer, json!({"typ": "dc+sd-jwt"}), &payload);
        let sd = format!("{jwt}~{}~", chain.join("~"));
        let e = verify(&sd, &issuer.verifying_key()).unwrap_err();
        assert!(e.to_string().contains("nest deeper"), "{e}");
        // and no more than MAX_DISCLOSURES disclosures are read at all
        let many = vec![b64url(json!(["s", "n", 1]).to_string()); MAX_DISCLOSURES + 1];
        let e = verify(
            &format!("{jwt}~{}~", many.join("~")),
            &issuer.verifying_key(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("disclosures"), "{e}");
    }
}
