//! The holder side: a DeviceResponse disclosing only the requested elements of one mdoc,
//! device-signed over the verifier's SessionTranscript.

use ciborium::Value;
use coset::{iana, AsCborValue};

use super::{
    array, decode, encode, get, malformed, map_entries, tag24, text, untag24, MdocError, MdocResult,
};
use crate::crypto::SigningKey;

/// A DeviceResponse for the mdoc `issuer_signed` (its CBOR bytes) of type `doc_type`,
/// disclosing the elements `wanted(namespace, element)` accepts, signed with `device_key` over
/// `session_transcript` (encoded).
pub fn device_response(
    issuer_signed: &[u8],
    doc_type: &str,
    wanted: impl Fn(&str, &str) -> bool,
    device_key: &SigningKey,
    session_transcript: &[u8],
) -> MdocResult<Vec<u8>> {
    if !matches!(device_key, SigningKey::P256(_)) {
        return Err(MdocError::Unsupported("mdoc device keys are P-256".into()));
    }
    let signed = decode(issuer_signed)?;
    let auth = get(&signed, "issuerAuth")
        .ok_or_else(|| malformed("no issuerAuth"))?
        .clone();
    let mut name_spaces = Vec::new();
    if let Some(ns_map) = get(&signed, "nameSpaces") {
        for (ns, items) in map_entries(ns_map, "nameSpaces")? {
            let Value::Text(ns_name) = ns else {
                return Err(malformed("namespace names must be text"));
            };
            let mut keep = Vec::new();
            for item in array(items, "a namespace's items")? {
                let (_, decoded) = untag24(item)?;
                if wanted(ns_name, text(&decoded, "elementIdentifier")?) {
                    // the item exactly as issued: its digest must still match
                    keep.push(item.clone());
                }
            }
            if !keep.is_empty() {
                name_spaces.push((ns.clone(), Value::Array(keep)));
            }
        }
    }
    let device_ns = tag24(&Value::Map(Vec::new()));
    let transcript = decode(session_transcript)?;
    let device_auth = Value::Array(vec![
        Value::Text("DeviceAuthentication".into()),
        transcript,
        Value::Text(doc_type.into()),
        device_ns.clone(),
    ]);
    let payload = encode(&tag24(&device_auth));
    let sig = coset::CoseSign1Builder::new()
        .protected(
            coset::HeaderBuilder::new()
                .algorithm(iana::Algorithm::ES256)
                .build(),
        )
        .create_detached_signature(&payload, b"", |data| device_key.sign(data))
        .build()
        .to_cbor_value()
        .map_err(|e| malformed(format!("COSE_Sign1: {e}")))?;
    let document = Value::Map(vec![
        (Value::Text("docType".into()), Value::Text(doc_type.into())),
        (
            Value::Text("issuerSigned".into()),
            Value::Map(vec![
                (Value::Text("nameSpaces".into()), Value::Map(name_spaces)),
                (Value::Text("issuerAuth".into()), auth),
            ]),
        ),
        (
            Value::Text("deviceSigned".into()),
            Value::Map(vec![
                (Value::Text("nameSpaces".into()), device_ns),
                (
                    Value::Text("deviceAuth".into()),
                    Value::Map(vec![(Value::Text("deviceSignature".into()), sig)]),
                ),
            ]),
        ),
    ]);
    Ok(encode(&Value::Map(vec![
        (Value::Text("version".into()), Value::Text("1.0".into())),
        (
            Value::Text("documents".into()),
            Value::Array(vec![document]),
        ),
        (Value::Text("status".into()), Value::Integer(0.into())),
    ])))
}
