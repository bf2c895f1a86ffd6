//! The shape checks a credential must pass before VC-API `issue` signs it (W3C VC Data Model 1.1
//! and 2.0): everything here is the caller's input, and a credential we sign must be one a
//! conforming verifier can read. Failures are 400s with the member that is wrong.

use serde_json::{Map, Value};

pub const VCDM1_CONTEXT: &str = "https://www.w3.org/2018/credentials/v1";
pub const VCDM2_CONTEXT: &str = "https://www.w3.org/ns/credentials/v2";

/// Which data model the credential's first `@context` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    V1,
    V2,
}

/// A URL in the VCDM sense: an absolute IRI (`scheme:rest`).
pub fn is_url(s: &str) -> bool {
    match s.split_once(':') {
        Some((scheme, rest)) => {
            !rest.is_empty()
                && !s.chars().any(char::is_whitespace)
                && scheme
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

fn date_time(v: &Value, name: &str) -> Result<(), String> {
    match v {
        Value::Null => Ok(()),
        Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => Ok(()),
        other => Err(format!(
            "{name} must be an XML Schema dateTimeStamp (e.g. 2026-01-01T00:00:00Z), got {other}"
        )),
    }
}

fn optional_url(v: Option<&Value>, name: &str) -> Result<(), String> {
    match v {
        None => Ok(()),
        Some(Value::String(s)) if is_url(s) => Ok(()),
        Some(other) => Err(format!("{name} must be a URL, got {other}")),
    }
}

/// Entries of `credentialStatus`, `termsOfUse`, `evidence`, `credentialSchema`, `refreshService`:
/// one object or an array of objects, each with a `type` and a URL `id` when it has one.
fn typed_entries(vc: &Map<String, Value>, name: &str) -> Result<(), String> {
    let entries: Vec<&Value> = match vc.get(name) {
        None => return Ok(()),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v) => vec![v],
    };
    for e in entries {
        let Value::Object(o) = e else {
            return Err(format!("{name} entries must be objects"));
        };
        let typed = match o.get("type") {
            Some(Value::String(t)) => !t.is_empty(),
            Some(Value::Array(a)) => !a.is_empty() && a.iter().all(Value::is_string),
            _ => false,
        };
        if !typed {
            return Err(format!("every {name} entry needs a type"));
        }
        optional_url(o.get("id"), &format!("{name}.id"))?;
    }
    Ok(())
}

/// Checks `vc` and returns its data model.
// Over 80 lines: the VC Data Model's checks of a credential, a flat list of independent
// field checks.
pub fn check(vc: &Map<String, Value>) -> Result<Model, String> {
    let contexts: Vec<&Value> = match vc.get("@context") {
        Some(Value::Array(a)) if !a.is_empty() => a.iter().collect(),
        _ => {
            return Err(
                "@context is required: an array starting with the VC Data Model context".into(),
            )
        }
    };
    let model = check_first(contexts[0].as_str().unwrap_or_default())?;
    for c in &contexts[1..] {
        match c {
            Value::String(s) if is_url(s) => {}
            Value::Object(_) => {}
            other => return Err(format!("@context entries are URLs or objects, got {other}")),
        }
    }
    let types: Vec<&str> = match vc.get("type") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => vec![s.as_str()],
        _ => Vec::new(),
    };
    if !types.contains(&"VerifiableCredential") {
        return Err("type is required and must include VerifiableCredential".into());
    }
    optional_url(vc.get("id"), "id")?;
    match vc.get("issuer") {
        None => {}
        Some(Value::String(s)) if is_url(s) => {}
        Some(Value::Object(o)) => optional_url(o.get("id"), "issuer.id").and_then(|_| {
            o.get("id")
                .map(|_| ())
                .ok_or_else(|| "issuer.id is required when issuer is an object".to_string())
        })?,
        Some(other) => {
            return Err(format!(
                "issuer must be a URL or an object with an id, got {other}"
            ))
        }
    }
    let subjects: Vec<&Value> = match vc.get("credentialSubject") {
        Some(Value::Array(a)) if !a.is_empty() => a.iter().collect(),
        Some(v @ Value::Object(_)) => vec![v],
        _ => {
            return Err(
                "credentialSubject must be an object or a non-empty array of objects".into(),
            )
        }
    };
    for s in subjects {
        let Value::Object(o) = s else {
            return Err("credentialSubject entries must be objects".into());
        };
        if o.is_empty() {
            return Err("credentialSubject must not be empty".into());
        }
        optional_url(o.get("id"), "credentialSubject.id")?;
    }
    for k in ["validFrom", "validUntil", "issuanceDate", "expirationDate"] {
        date_time(vc.get(k).unwrap_or(&Value::Null), k)?;
    }
    for name in [
        "credentialStatus",
        "termsOfUse",
        "evidence",
        "credentialSchema",
        "refreshService",
    ] {
        typed_entries(vc, name)?;
    }
    if let Some(Value::Object(schema)) = vc.get("credentialSchema") {
        schema_entry(schema)?;
    }
    if let Some(Value::Array(schemas)) = vc.get("credentialSchema") {
        for s in schemas.iter().filter_map(Value::as_object) {
            schema_entry(s)?;
        }
    }
    if let Some(rr) = vc.get("relatedResource") {
        related_resources(rr)?;
    }
    Ok(model)
}

/// A `credentialSchema` entry names its schema: an `id` that is a URL (VCDM 2.0 §4.11; its
/// `type` is checked with the other typed entries).
fn schema_entry(o: &Map<String, Value>) -> Result<(), String> {
    match o.get("id") {
        Some(Value::String(s)) if is_url(s) => Ok(()),
        _ => Err("every credentialSchema entry needs an id that is a URL".into()),
    }
}

/// `relatedResource` (VCDM 2.0 §5.3): one object or a non-empty array of objects, each with a URL
/// `id` unique among them and a well-formed `digestSRI` or `digestMultibase`. The digests are
/// checked for form only: the data model asks a verifier that retrieves the resource to compare
/// them, and issuing fetches nothing.
fn related_resources(rr: &Value) -> Result<(), String> {
    let entries: Vec<&Value> = match rr {
        Value::Array(a) if !a.is_empty() => a.iter().collect(),
        o @ Value::Object(_) => vec![o],
        _ => {
            return Err("relatedResource must be an object or a non-empty array of objects".into())
        }
    };
    let mut ids = std::collections::HashSet::new();
    for r in entries {
        let Value::Object(o) = r else {
            return Err("relatedResource entries must be objects".into());
        };
        let id = match o.get("id") {
            Some(Value::String(id)) if is_url(id) => id,
            _ => return Err("every relatedResource entry needs an id that is a URL".into()),
        };
        if !ids.insert(id) {
            return Err(format!("relatedResource ids must be unique; {id} repeats"));
        }
        let sri = o.get("digestSRI");
        let multibase = o.get("digestMultibase");
        if sri.is_none() && multibase.is_none() {
            return Err(format!(
                "relatedResource {id} needs a digestSRI or a digestMultibase"
            ));
        }
        if let Some(v) = sri {
            v.as_str().filter(|s| digest_sri_ok(s)).ok_or_else(|| {
                format!("relatedResource {id}: digestSRI must be sha256-, sha384- or sha512- and a base64 digest")
            })?;
        }
        if let Some(v) = multibase {
            v.as_str().filter(|s| digest_multibase_ok(s)).ok_or_else(|| {
                format!("relatedResource {id}: digestMultibase must be a multibase (u: base64url, z: base58btc) digest")
            })?;
        }
    }
    Ok(())
}

/// Subresource Integrity metadata: one or more `alg-base64digest` (standard base64) tokens.
fn digest_sri_ok(s: &str) -> bool {
    use base64::Engine as _;
    let mut tokens = s.split_ascii_whitespace().peekable();
    tokens.peek().is_some()
        && tokens.all(|t| {
            let t = t.split('?').next().unwrap_or_default();
            let Some((alg, digest)) = t.split_once('-') else {
                return false;
            };
            let len = match alg {
                "sha256" => 32,
                "sha384" => 48,
                "sha512" => 64,
                _ => return false,
            };
            base64::engine::general_purpose::STANDARD
                .decode(digest)
                .is_ok_and(|d| d.len() == len)
        })
}

/// A multibase digest: `u` + base64url (no padding) or `z` + base58btc, of a SHA-2 digest or a
/// multihash of one.
fn digest_multibase_ok(s: &str) -> bool {
    use base64::Engine as _;
    let bytes = match s.split_at_checked(1) {
        Some(("u", rest)) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(rest)
            .ok(),
        Some(("z", rest)) => crate::crypto::bs58_decode(rest, 66).ok(),
        _ => None,
    };
    bytes.is_some_and(|b| matches!(b.len(), 32 | 48 | 64 | 34 | 50 | 66))
}

fn check_first(first: &str) -> Result<Model, String> {
    match first {
        VCDM1_CONTEXT => Ok(Model::V1),
        VCDM2_CONTEXT => Ok(Model::V2),
        other => Err(format!(
            "the first @context must be {VCDM2_CONTEXT} or {VCDM1_CONTEXT}, got {other:?}"
        )),
    }
}

/// The issuer the credential names: its id (if any).
pub fn issuer_id(vc: &Map<String, Value>) -> Option<&str> {
    match vc.get("issuer")? {
        Value::String(s) => Some(s.as_str()),
        Value::Object(o) => o.get("id").and_then(Value::as_str),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SRI: &str = "sha384-e2AY0FBy6KUAgZ3rMaz7Uj/Gp0bkIIIB/bjgmVQS2PPSOr+Ufx9P5mVrVU+jxFXR";
    const MB: &str = "uip9JSonsxR2wk-kOhHE-B-hNbZIENkqbPHhoshdRI28";

    fn base() -> Map<String, Value> {
        json!({"@context": [VCDM2_CONTEXT], "type": ["VerifiableCredential"], "credentialSubject": {"name": "x"}})
            .as_object()
            .cloned()
            .unwrap()
    }

    #[test]
    fn accepts_minimal_and_rejects_each_shape_error() {
        assert_eq!(check(&base()), Ok(Model::V2));
        let cases: Vec<(&str, Value)> = vec![
            ("@context", json!(null)),
            ("@context", json!(["https://example.org/ctx"])),
            ("@context", json!([VCDM2_CONTEXT, 5])),
            ("type", json!(["Other"])),
            ("id", json!("not a url")),
            ("issuer", json!({"name": "no id"})),
            ("issuer", json!("nope")),
            ("credentialSubject", json!({})),
            ("credentialSubject", json!([])),
            ("credentialSubject", json!({"id": "x y"})),
            ("validFrom", json!("2026-13-01")),
            ("validUntil", json!(5)),
            ("credentialStatus", json!({"id": "urn:x"})),
            ("termsOfUse", json!([{"id": "urn:x"}])),
            ("evidence", json!({"type": []})),
            ("credentialSchema", json!({"id": "https://s.example"})),
            ("relatedResource", json!([{"id": "https://r.example"}])),
            ("relatedResource", json!(["https://r.example"])),
            ("relatedResource", json!([{"digestSRI": SRI}])),
            (
                "relatedResource",
                json!([{"id": "https://r.example", "digestSRI": SRI}, {"id": "https://r.example", "digestMultibase": MB}]),
            ),
            // base64url is not SRI's base64
            (
                "relatedResource",
                json!({"id": "https://r.example", "digestSRI": "sha384-e2AY0FBy6KUAgZ3rMaz7Uj_Gp0bkIIIB_bjgmVQS2PPSOr-Ufx9P5mVrVU-jxFXR"}),
            ),
            (
                "relatedResource",
                json!({"id": "https://r.example", "digestSRI": "md5-AAAA"}),
            ),
            (
                "relatedResource",
                json!({"id": "https://r.example", "digestMultibase": "x123"}),
            ),
            ("credentialSchema", json!({"type": "JsonSchema"})),
            (
                "credentialSchema",
                json!([{"type": "JsonSchema", "id": "not a url"}]),
            ),
        ];
        for (k, v) in cases {
            let mut vc = base();
            if v.is_null() {
                vc.remove(k);
            } else {
                vc.insert(k.into(), v.clone());
            }
            assert!(check(&vc).is_err(), "{k} = {v} accepted");
        }
        let mut ok = base();
        ok.insert(
            "issuer".into(),
            json!({"id": "did:example:1", "name": "Example"}),
        );
        ok.insert("validFrom".into(), json!("2026-01-01T00:00:00Z"));
        ok.insert(
            "relatedResource".into(),
            json!([{"id": "https://r.example", "digestSRI": SRI}, {"id": "https://s.example", "digestMultibase": MB, "mediaType": "application/ld+json"}]),
        );
        ok.insert(
            "credentialSchema".into(),
            json!({"id": "https://schema.example/s.json", "type": "JsonSchema"}),
        );
        assert_eq!(check(&ok), Ok(Model::V2));
        // a single relatedResource object
        ok.insert(
            "relatedResource".into(),
            json!({"id": "https://r.example", "digestMultibase": MB}),
        );
        assert_eq!(check(&ok), Ok(Model::V2));
        assert_eq!(issuer_id(&ok), Some("did:example:1"));
    }
}
