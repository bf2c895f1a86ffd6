//! ISO/IEC 18013-5 mdoc (`mso_mdoc`): the issuer-signed structure an issuer hands out, the
//! DeviceResponse a holder presents, and their verification — on `ciborium` values and `coset`
//! COSE structures, never hand-written CBOR.
//!
//! - [`issue`]: `IssuerSigned` = issuer-signed items per namespace (each `#6.24(bstr .cbor
//!   IssuerSignedItem)` with a random salt) and `issuerAuth`, a COSE_Sign1 (ES256) over
//!   `#6.24(bstr .cbor MobileSecurityObject)` carrying the document signer's `x5chain`. The MSO
//!   holds the SHA-256 value digests, the device key (COSE_Key), the validity window and, when the
//!   issuer hosts one, a Token Status List reference (`status.status_list.{idx, uri}`).
//! - [`present`]: a DeviceResponse disclosing only requested elements, device-signed over the
//!   SessionTranscript.
//! - [`transcript`]: the SessionTranscript of OpenID4VP 1.0 Appendix B.2.6 (OpenID4VPHandover).
//! - [`verify`]: every check a verifier owes an mdoc: bounded input, issuerAuth signature by a
//!   document signer certificate (mdlDS EKU) whose chain ends at a trust anchor (names chained,
//!   `pathLenConstraint` obeyed), MSO doc type and digest algorithm, the validity window, the
//!   MSO's `signed` time within the document signer's validity, each disclosed item's digest, the
//!   country (ISO 18013-5 Annex B: the document signer names exactly one countryName, the CAs
//!   above it that name one name the same, and a disclosed `issuing_country` is it), and the
//!   device signature over the expected SessionTranscript with the MSO's device key.
//!
//! Everything here treats its input as an attacker's: sizes, counts and nesting are bounded
//! ([`MAX_BYTES`], [`MAX_DOCUMENTS`], [`MAX_ELEMENTS`], [`MAX_DEPTH`]) and every failure is an
//! [`MdocError`] with a stable reason code, never a panic; reasons quote attacker text cut by
//! [`clip`].

pub mod issue;
pub mod present;
pub mod status;
pub mod transcript;
pub mod verify;

use ciborium::Value;

/// Largest IssuerSigned or DeviceResponse accepted (bytes of CBOR).
pub const MAX_BYTES: usize = 512 * 1024;
/// Documents in one DeviceResponse.
pub const MAX_DOCUMENTS: usize = 8;
/// Issuer-signed elements in one document (all namespaces).
pub const MAX_ELEMENTS: usize = 256;
/// CBOR nesting depth accepted by the decoder.
pub const MAX_DEPTH: usize = 32;

/// COSE header label of `x5chain` (RFC 9360).
pub const X5CHAIN: i64 = 33;

/// Why an mdoc was refused. `code()` is stable and names the failed check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MdocError {
    #[error("malformed mdoc: {0}")]
    Malformed(String),
    #[error("mdoc over the limits: {0}")]
    TooLarge(String),
    #[error("unsupported mdoc: {0}")]
    Unsupported(String),
    #[error("the document signer does not chain to a trust anchor: {0}")]
    Untrusted(String),
    #[error("issuerAuth signature does not verify")]
    IssuerSignature,
    #[error("a disclosed element does not match its digest: {0}")]
    Digest(String),
    #[error("the mdoc is not valid now: {0}")]
    Validity(String),
    #[error("device authentication failed: {0}")]
    DeviceAuth(String),
    #[error("doc type mismatch: {0}")]
    DocType(String),
    #[error("country mismatch: {0}")]
    Country(String),
}

impl MdocError {
    /// The stable reason code (the verifier's failed-policy name).
    pub fn code(&self) -> &'static str {
        match self {
            MdocError::Malformed(_) => "mdoc_malformed",
            MdocError::TooLarge(_) => "mdoc_too_large",
            MdocError::Unsupported(_) => "mdoc_unsupported",
            MdocError::Untrusted(_) => "mdoc_untrusted_signer",
            MdocError::IssuerSignature => "mdoc_bad_issuer_signature",
            MdocError::Digest(_) => "mdoc_digest_mismatch",
            MdocError::Validity(_) => "mdoc_not_valid_now",
            MdocError::DeviceAuth(_) => "mdoc_device_auth_failed",
            MdocError::DocType(_) => "mdoc_doctype_mismatch",
            MdocError::Country(_) => "mdoc_country_mismatch",
        }
    }
}

impl crate::error::ErrorCode for MdocError {
    fn error_code(&self) -> crate::error::Code {
        crate::error::Code::Validation
    }
}

pub type MdocResult<T> = Result<T, MdocError>;

fn malformed(what: impl Into<String>) -> MdocError {
    MdocError::Malformed(what.into())
}

/// Decodes one CBOR item from `bytes` (bounded size and depth; trailing bytes refused).
pub fn decode(bytes: &[u8]) -> MdocResult<Value> {
    decode_within(bytes, MAX_BYTES)
}

/// [`decode`] of at most `max` bytes.
pub fn decode_within(bytes: &[u8], max: usize) -> MdocResult<Value> {
    if bytes.len() > max {
        return Err(MdocError::TooLarge(format!(
            "{} bytes (at most {max})",
            bytes.len()
        )));
    }
    let mut rest = bytes;
    let v: Value = ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_DEPTH)
        .map_err(|e| malformed(cbor_error(&e)))?;
    if !rest.is_empty() {
        return Err(malformed("trailing bytes after the CBOR item"));
    }
    Ok(v)
}

/// COSE header label of counter signatures (RFC 9052 §3.1; mdoc uses none).
const COUNTER_SIGNATURE: i64 = 7;

/// A COSE_Sign1 from its CBOR value (`what` names it in errors). Counter signatures are refused
/// before coset sees the structure: coset parses each one's protected header with a fresh CBOR
/// decode, so nested counter signatures recurse once per level past any depth bound of ours (a
/// stack overflow aborted the process); without one at the top, coset never recurses.
pub(super) fn sign1(v: &Value, what: &str) -> MdocResult<coset::CoseSign1> {
    use coset::AsCborValue;
    let parts = match v {
        Value::Array(a) if a.len() == 4 => a,
        _ => return Err(malformed(format!("{what} is not a COSE_Sign1"))),
    };
    let protected = match &parts[0] {
        Value::Bytes(b) if b.is_empty() => None,
        Value::Bytes(b) => Some(decode(b)?),
        _ => {
            return Err(malformed(format!(
                "{what}: the protected header is not a byte string"
            )))
        }
    };
    for header in protected.iter().chain([&parts[1]]) {
        let Value::Map(entries) = header else {
            return Err(malformed(format!("{what}: a header that is not a map")));
        };
        if entries
            .iter()
            .any(|(k, _)| *k == Value::Integer(COUNTER_SIGNATURE.into()))
        {
            return Err(MdocError::Unsupported(format!(
                "{what}: counter signatures are not supported"
            )));
        }
    }
    coset::CoseSign1::from_cbor_value(v.clone())
        .map_err(|e| malformed(format!("{what} is not a COSE_Sign1: {}", cose_error(&e))))
}

/// A decoding failure as short text (ciborium's own Display is its Debug form).
fn cbor_error<T>(e: &ciborium::de::Error<T>) -> String {
    use ciborium::de::Error;
    match e {
        Error::Io(_) => "CBOR: truncated input".into(),
        Error::Syntax(at) => format!("CBOR: invalid syntax at byte {at}"),
        Error::Semantic(_, what) => format!("CBOR: {}", clip(what)),
        Error::RecursionLimitExceeded => format!("CBOR: nested deeper than {MAX_DEPTH}"),
    }
}

/// A COSE structure's decoding failure as short text.
fn cose_error(e: &coset::CoseError) -> String {
    match e {
        coset::CoseError::DecodeFailed(e) => cbor_error(e),
        other => clip(&other.to_string()),
    }
}

/// Longest attacker-supplied text (a doc type, a namespace, an element name) quoted in a reason.
pub const MAX_QUOTED: usize = 200;

/// `s` cut to [`MAX_QUOTED`] characters (with an ellipsis when cut): error reasons are shown to
/// the caller and stored with the session, so they never carry an attacker's text whole.
pub fn clip(s: &str) -> String {
    clip_to(s, MAX_QUOTED)
}

/// `s` cut to `max` characters, on a character boundary, with an ellipsis when cut.
pub fn clip_to(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// Encodes a CBOR value (ciborium writes the definite-length, preferred-size form).
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = ciborium::ser::into_writer(v, &mut out);
    out
}

/// `#6.24(bstr .cbor v)`: an embedded CBOR data item.
pub fn tag24(v: &Value) -> Value {
    Value::Tag(24, Box::new(Value::Bytes(encode(v))))
}

/// The bytes inside `#6.24(bstr)`, and the item they hold.
pub fn untag24(v: &Value) -> MdocResult<(&[u8], Value)> {
    match v {
        Value::Tag(24, inner) => match inner.as_ref() {
            Value::Bytes(b) => Ok((b.as_slice(), decode(b)?)),
            _ => Err(malformed("tag 24 must wrap a byte string")),
        },
        _ => Err(malformed("expected an embedded CBOR item (tag 24)")),
    }
}

/// The entry `key` (a text key) of a CBOR map.
pub fn get<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
    match map {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| matches!(k, Value::Text(t) if t == key))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn text<'a>(map: &'a Value, key: &str) -> MdocResult<&'a str> {
    match get(map, key) {
        Some(Value::Text(t)) => Ok(t),
        _ => Err(malformed(format!("`{key}` must be a text string"))),
    }
}

fn map_entries<'a>(v: &'a Value, what: &str) -> MdocResult<&'a [(Value, Value)]> {
    match v {
        Value::Map(m) => Ok(m),
        _ => Err(malformed(format!("{what} must be a map"))),
    }
}

fn array<'a>(v: &'a Value, what: &str) -> MdocResult<&'a [Value]> {
    match v {
        Value::Array(a) => Ok(a),
        _ => Err(malformed(format!("{what} must be an array"))),
    }
}

/// `tdate` (tag 0, RFC 3339 text) for a Unix time.
pub fn tdate(secs: i64) -> Value {
    let s = chrono::DateTime::from_timestamp(secs, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    Value::Tag(0, Box::new(Value::Text(s)))
}

/// A `tdate` as Unix seconds.
pub fn parse_tdate(v: &Value) -> MdocResult<i64> {
    match v {
        Value::Tag(0, inner) => match inner.as_ref() {
            Value::Text(t) => chrono::DateTime::parse_from_rfc3339(t)
                .map(|d| d.timestamp())
                .map_err(|_| malformed(format!("tdate `{}` is not RFC 3339", clip(t)))),
            _ => Err(malformed("tdate must be text")),
        },
        _ => Err(malformed("expected a tdate (tag 0)")),
    }
}

/// An element value as JSON for results and DCQL matching: byte strings as base64url, tagged
/// dates as their text, integers as numbers; maps keep text keys only.
pub fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Integer(i) => {
            let n: i128 = (*i).into();
            i64::try_from(n)
                .map(J::from)
                .unwrap_or_else(|_| J::String(n.to_string()))
        }
        Value::Bytes(b) => J::String(crate::crypto::b64url(b)),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .unwrap_or(J::Null),
        Value::Text(t) => J::String(t.clone()),
        Value::Bool(b) => J::Bool(*b),
        Value::Null => J::Null,
        Value::Tag(_, inner) => to_json(inner),
        Value::Array(a) => J::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(
            m.iter()
                .filter_map(|(k, v)| match k {
                    Value::Text(k) => Some((k.clone(), to_json(v))),
                    _ => None,
                })
                .collect(),
        ),
        _ => J::Null,
    }
}

/// A JSON claim value as CBOR: strings that are ISO dates (`YYYY-MM-DD`) become `full-date`
/// (tag 1004) for the elements ISO 18013-5 defines as dates; everything else maps directly.
pub fn from_json(v: &serde_json::Value, date_element: bool) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i.into()),
            None => Value::Float(n.as_f64().unwrap_or_default()),
        },
        J::String(s)
            if date_element && chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() =>
        {
            Value::Tag(1004, Box::new(Value::Text(s.clone())))
        }
        J::String(s) => Value::Text(s.clone()),
        J::Array(a) => Value::Array(a.iter().map(|x| from_json(x, false)).collect()),
        J::Object(o) => Value::Map(
            o.iter()
                .map(|(k, x)| (Value::Text(k.clone()), from_json(x, date_element)))
                .collect(),
        ),
    }
}

/// The device key as a COSE_Key (EC2 P-256).
pub fn cose_key(key: &crate::crypto::VerifyingKey) -> MdocResult<Value> {
    use coset::AsCborValue;
    match key {
        crate::crypto::VerifyingKey::P256(k) => {
            let point = k.to_encoded_point(false);
            let (x, y) = (
                point.x().map(|x| x.to_vec()).unwrap_or_default(),
                point.y().map(|y| y.to_vec()).unwrap_or_default(),
            );
            coset::CoseKeyBuilder::new_ec2_pub_key(coset::iana::EllipticCurve::P_256, x, y)
                .build()
                .to_cbor_value()
                .map_err(|e| malformed(format!("COSE_Key: {e}")))
        }
        _ => Err(MdocError::Unsupported(
            "mdoc device keys are P-256 (ES256)".into(),
        )),
    }
}

/// A COSE_Key (EC2 P-256, uncompressed) as a verifying key.
pub fn key_from_cose(v: &Value) -> MdocResult<crate::crypto::VerifyingKey> {
    use coset::{AsCborValue, KeyType, Label};
    let key = coset::CoseKey::from_cbor_value(v.clone())
        .map_err(|e| malformed(format!("device key COSE_Key: {}", cose_error(&e))))?;
    if key.kty != KeyType::Assigned(coset::iana::KeyType::EC2) {
        return Err(MdocError::Unsupported("device key must be EC2".into()));
    }
    let param = |l: i64| {
        key.params
            .iter()
            .find(|(k, _)| *k == Label::Int(l))
            .map(|(_, v)| v)
    };
    let crv_ok = matches!(param(-1), Some(Value::Integer(i)) if i128::from(*i) == coset::iana::EllipticCurve::P_256 as i128);
    if !crv_ok {
        return Err(MdocError::Unsupported("device key must be on P-256".into()));
    }
    let (Some(Value::Bytes(x)), Some(Value::Bytes(y))) = (param(-2), param(-3)) else {
        return Err(malformed("device key needs x and y coordinates"));
    };
    if x.len() != 32 || y.len() != 32 {
        return Err(malformed("device key coordinates must be 32 bytes"));
    }
    let mut sec1 = Vec::with_capacity(65);
    sec1.push(4);
    sec1.extend_from_slice(x);
    sec1.extend_from_slice(y);
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
        .map(crate::crypto::VerifyingKey::P256)
        .map_err(|_| malformed("device key is not a P-256 point"))
}

#[cfg(test)]
mod tests;
