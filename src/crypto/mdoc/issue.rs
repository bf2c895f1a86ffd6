//! Building an `IssuerSigned` structure (ISO 18013-5 §8.3.2.1.2.2 / OpenID4VCI 1.0 Appendix
//! A.2: the credential is its base64url CBOR).

use ciborium::Value;
use coset::{iana, AsCborValue};
use rand::{seq::SliceRandom, RngCore};
use sha2::{Digest, Sha256};

use super::{cose_key, encode, tag24, tdate, MdocError, MdocResult, X5CHAIN};
use crate::crypto::{SigningKey, VerifyingKey};

/// What an issuer puts into one mdoc.
pub struct IssueRequest<'a> {
    pub doc_type: &'a str,
    /// Namespace → (element identifier, value), in the order given.
    pub namespaces: &'a [(String, Vec<(String, Value)>)],
    /// The holder's device key (from its proof of possession).
    pub device_key: &'a VerifyingKey,
    /// The document signer's key (P-256) and its chain, DER, document signer certificate first.
    pub signer: &'a SigningKey,
    pub x5chain: &'a [Vec<u8>],
    pub signed: i64,
    pub valid_from: i64,
    pub valid_until: i64,
    /// Token Status List reference: (index, list URI).
    pub status: Option<(u64, String)>,
}

/// Salt bytes per issuer-signed item (ISO 18013-5: at least 16).
const SALT_BYTES: usize = 32;

/// The IssuerSigned structure as CBOR bytes.
pub fn issuer_signed(req: &IssueRequest<'_>) -> MdocResult<Vec<u8>> {
    if !matches!(req.signer, SigningKey::P256(_)) {
        return Err(MdocError::Unsupported(
            "the document signer key must be P-256 (ES256)".into(),
        ));
    }
    if req.x5chain.is_empty() {
        return Err(MdocError::Unsupported(
            "the document signer needs its certificate (x5chain)".into(),
        ));
    }
    let (name_spaces, value_digests) = salted_items(req.namespaces);
    let payload = encode(&tag24(&Value::Map(mso(req, value_digests)?)));
    let issuer_auth = issuer_auth(req, payload)?;
    Ok(encode(&Value::Map(vec![
        (Value::Text("nameSpaces".into()), Value::Map(name_spaces)),
        (Value::Text("issuerAuth".into()), issuer_auth),
    ])))
}

/// Namespace → salted tag-24 IssuerSignedItems, and namespace → digest id → SHA-256 digest.
#[allow(clippy::type_complexity)]
fn salted_items(
    namespaces: &[(String, Vec<(String, Value)>)],
) -> (Vec<(Value, Value)>, Vec<(Value, Value)>) {
    let mut name_spaces = Vec::new();
    let mut value_digests = Vec::new();
    let mut rng = rand::thread_rng();
    for (ns, elements) in namespaces {
        // digest ids in random order, so their sequence reveals nothing about undisclosed items
        let mut ids: Vec<u64> = (0..elements.len() as u64).collect();
        ids.shuffle(&mut rng);
        let mut items = Vec::new();
        let mut digests = Vec::new();
        for ((name, value), id) in elements.iter().zip(ids) {
            let mut salt = vec![0u8; SALT_BYTES];
            rng.fill_bytes(&mut salt);
            let item = tag24(&Value::Map(vec![
                (Value::Text("digestID".into()), Value::Integer(id.into())),
                (Value::Text("random".into()), Value::Bytes(salt)),
                (
                    Value::Text("elementIdentifier".into()),
                    Value::Text(name.clone()),
                ),
                (Value::Text("elementValue".into()), value.clone()),
            ]));
            digests.push((
                Value::Integer(id.into()),
                Value::Bytes(Sha256::digest(encode(&item)).to_vec()),
            ));
            items.push(item);
        }
        name_spaces.push((Value::Text(ns.clone()), Value::Array(items)));
        value_digests.push((Value::Text(ns.clone()), Value::Map(digests)));
    }
    (name_spaces, value_digests)
}

/// The MobileSecurityObject's members (ISO 18013-5 §9.1.2.4), with the Token Status List
/// reference when there is one.
fn mso(
    req: &IssueRequest<'_>,
    value_digests: Vec<(Value, Value)>,
) -> MdocResult<Vec<(Value, Value)>> {
    let text = |t: &str| Value::Text(t.into());
    let mut mso = vec![
        (text("version"), text("1.0")),
        (text("digestAlgorithm"), text("SHA-256")),
        (text("valueDigests"), Value::Map(value_digests)),
        (
            text("deviceKeyInfo"),
            Value::Map(vec![(text("deviceKey"), cose_key(req.device_key)?)]),
        ),
        (text("docType"), text(req.doc_type)),
        (
            text("validityInfo"),
            Value::Map(vec![
                (text("signed"), tdate(req.signed)),
                (text("validFrom"), tdate(req.valid_from)),
                (text("validUntil"), tdate(req.valid_until)),
            ]),
        ),
    ];
    if let Some((idx, uri)) = &req.status {
        mso.push((
            text("status"),
            Value::Map(vec![(
                text("status_list"),
                Value::Map(vec![
                    (text("idx"), Value::Integer((*idx).into())),
                    (text("uri"), Value::Text(uri.clone())),
                ]),
            )]),
        ));
    }
    Ok(mso)
}

/// issuerAuth: the COSE_Sign1 (ES256) over the MSO, with the document signer's x5chain.
fn issuer_auth(req: &IssueRequest<'_>, payload: Vec<u8>) -> MdocResult<Value> {
    let chain = match req.x5chain {
        [one] => Value::Bytes(one.clone()),
        many => Value::Array(many.iter().cloned().map(Value::Bytes).collect()),
    };
    let sign1 = coset::CoseSign1Builder::new()
        .protected(
            coset::HeaderBuilder::new()
                .algorithm(iana::Algorithm::ES256)
                .build(),
        )
        .unprotected(coset::HeaderBuilder::new().value(X5CHAIN, chain).build())
        .payload(payload)
        .create_signature(b"", |data| req.signer.sign(data))
        .build();
    sign1
        .to_cbor_value()
        .map_err(|e| MdocError::Malformed(format!("COSE_Sign1: {e}")))
}
