//! Verifying issuer-signed data and DeviceResponses. Every check is fatal; the result names
//! only what was both disclosed and matched its digest.

use std::collections::{BTreeMap, BTreeSet};

use ciborium::Value;
use coset::Label;
use sha2::{Digest, Sha256};

use super::{
    array, clip, decode, encode, get, key_from_cose, malformed, map_entries, parse_tdate, tag24,
    text, untag24, MdocError, MdocResult, MAX_DOCUMENTS, MAX_ELEMENTS, X5CHAIN,
};
use crate::crypto::x509::TrustAnchors;
use crate::crypto::VerifyingKey;

/// Disclosed elements: namespace → element identifier → value (JSON form).
pub type Claims = BTreeMap<String, serde_json::Map<String, serde_json::Value>>;

/// Seconds an MSO's `signed` time may be ahead of this node's clock.
const SIGNED_SKEW: i64 = 60;

/// What a verified document says.
#[derive(Debug, Clone)]
pub struct Verified {
    pub doc_type: String,
    /// Namespace → element identifier → value (JSON form), for the disclosed elements only.
    pub claims: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    /// The holder's device key from the MSO.
    pub device_key: VerifyingKey,
    pub valid_from: i64,
    pub valid_until: i64,
    /// The MSO's `status`: none, a Token Status List reference (index, list URI), or (`Err`,
    /// why) one in a form this verifier cannot check (e.g. an ISO 18013-5 `identifier_list`),
    /// which must not pass for "no status".
    pub status: Result<Option<(u64, String)>, String>,
    /// The document signer certificate's subject (RFC 4514).
    pub signer: String,
    /// The document signer's key.
    pub signer_key: VerifyingKey,
    /// The trust anchor (DER) its chain ends at: the mdoc's status list must be signed by a
    /// document signer under the same anchor (the mdoc's own, or its successor after a rotation).
    pub anchor: Vec<u8>,
    /// The key identifiers of the authorities over its document signer
    /// ([`crate::crypto::x509::authority_key_ids`]): what a verifier's trusted issuers and DCQL
    /// `trusted_authorities` (`aki`) name an mdoc issuer by.
    pub authorities: Vec<Vec<u8>>,
    /// The computed key identifier of the anchor its chain ends at
    /// ([`crate::crypto::x509::computed_key_id`]): the issuer a result names, since the signer's
    /// subject is whatever a document signer wrote.
    pub anchor_key_id: Vec<u8>,
}

/// The issuer-signed part of one document: `issuerAuth` signed by a document signer chaining to
/// `anchors`, MSO doc type = `doc_type` (when given), SHA-256 digests, valid at `now`, every
/// disclosed item matching its digest.
pub fn issuer_signed(
    issuer_signed: &Value,
    doc_type: Option<&str>,
    anchors: &TrustAnchors,
    now: i64,
) -> MdocResult<Verified> {
    let auth = get(issuer_signed, "issuerAuth").ok_or_else(|| malformed("no issuerAuth"))?;
    let sign1 = super::sign1(auth, "issuerAuth")?;
    let alg = sign1.protected.header.alg.clone();
    if alg
        != Some(coset::RegisteredLabelWithPrivate::Assigned(
            coset::iana::Algorithm::ES256,
        ))
    {
        return Err(MdocError::Unsupported(
            "issuerAuth must be ES256 (alg in the protected header)".into(),
        ));
    }
    let payload = sign1
        .payload
        .as_deref()
        .ok_or_else(|| malformed("issuerAuth has no payload"))?;
    let (_, mso) = untag24(&super::decode(payload)?)?;
    // the doc type picks the anchors that may vouch for it (x509.iaca_doc_types); the
    // signature checked below covers it
    let chain = x5chain(&sign1)?;
    let path = anchors
        .chain_path_for(&chain, now, Some(text(&mso, "docType")?))
        .map_err(MdocError::Untrusted)?;
    let authorities = crate::crypto::x509::authority_key_ids(&path);
    let (signer, signer_cert) = (path.key, path.leaf);
    crate::crypto::x509::check_document_signer(&signer_cert).map_err(MdocError::Untrusted)?;
    if !matches!(signer, VerifyingKey::P256(_)) {
        return Err(MdocError::Unsupported(
            "document signer key must be P-256".into(),
        ));
    }
    sign1
        .verify_signature(b"", |sig, data| signer.verify(data, sig))
        .map_err(|_| MdocError::IssuerSignature)?;
    check_mso_header(&mso, doc_type)?;
    let (valid_from, valid_until) = validity_window(&mso, &signer_cert, now)?;
    let device_key = key_from_cose(
        get(
            get(&mso, "deviceKeyInfo").ok_or_else(|| malformed("no deviceKeyInfo"))?,
            "deviceKey",
        )
        .ok_or_else(|| malformed("no deviceKey"))?,
    )?;
    let claims = disclosed(issuer_signed, &mso)?;
    check_country(&signer_cert, &path.above, &claims)?;
    let anchor = path
        .above
        .last()
        .and_then(|a| x509_cert::der::Encode::to_der(a).ok())
        .unwrap_or_default();
    let anchor_key_id = path
        .above
        .last()
        .map(crate::crypto::x509::computed_key_id)
        .unwrap_or_default();
    Ok(Verified {
        doc_type: text(&mso, "docType")?.to_string(),
        claims,
        device_key,
        valid_from,
        valid_until,
        status: status_ref(&mso),
        signer: signer_cert.tbs_certificate.subject.to_string(),
        signer_key: signer,
        anchor,
        authorities,
        anchor_key_id,
    })
}

/// The MSO's validity window (validFrom, validUntil) when `now` is inside it and the MSO was
/// signed before `now` (a little skew allowed), before validUntil, and while its document signer
/// certificate was valid (ISO 18013-5 9.3.1).
fn validity_window(
    mso: &Value,
    signer_cert: &x509_cert::Certificate,
    now: i64,
) -> MdocResult<(i64, i64)> {
    let validity = get(mso, "validityInfo").ok_or_else(|| malformed("no validityInfo"))?;
    let valid_from =
        parse_tdate(get(validity, "validFrom").ok_or_else(|| malformed("no validFrom"))?)?;
    let valid_until =
        parse_tdate(get(validity, "validUntil").ok_or_else(|| malformed("no validUntil"))?)?;
    let signed = parse_tdate(get(validity, "signed").ok_or_else(|| malformed("no signed"))?)?;
    // ISO 18013-5 9.3.1: the MSO is signed while its document signer certificate is valid
    let ds_validity = &signer_cert.tbs_certificate.validity;
    let ds_from = ds_validity.not_before.to_unix_duration().as_secs() as i64;
    let ds_until = ds_validity.not_after.to_unix_duration().as_secs() as i64;
    if signed < ds_from || signed > ds_until {
        return Err(MdocError::Validity(
            "the MSO was signed outside its document signer certificate's validity".into(),
        ));
    }
    if now < valid_from {
        return Err(MdocError::Validity("validFrom is in the future".into()));
    }
    if now >= valid_until {
        return Err(MdocError::Validity("expired (validUntil passed)".into()));
    }
    // an issuer's clock a little ahead is tolerated; a signing time after the validity is not
    if signed > now + SIGNED_SKEW || signed >= valid_until {
        return Err(MdocError::Validity(
            "the MSO was signed in the future or after its validUntil".into(),
        ));
    }
    Ok((valid_from, valid_until))
}

/// ISO 18013-5 Annex B: the document signer names exactly one countryName; every CA above it
/// (its IACA, the anchor) that names a country names the same one; and an `issuing_country`
/// disclosed in any namespace is that country.
fn check_country(
    ds: &x509_cert::Certificate,
    above: &[x509_cert::Certificate],
    claims: &Claims,
) -> MdocResult<()> {
    use crate::crypto::x509::countries;
    let country = match countries(ds).as_slice() {
        [c] if !c.is_empty() => c.clone(),
        other => {
            return Err(MdocError::Country(format!(
                "the document signer certificate must name exactly one countryName (it names {})",
                other.len()
            )))
        }
    };
    for ca in above {
        if let Some(theirs) = countries(ca).iter().find(|c| **c != country) {
            return Err(MdocError::Country(format!(
                "the document signer's countryName {country} differs from its CA's {}",
                clip(theirs)
            )));
        }
    }
    for (ns, elements) in claims {
        match elements.get("issuing_country") {
            None => {}
            Some(serde_json::Value::String(c)) if *c == country => {}
            Some(other) => {
                return Err(MdocError::Country(format!(
                    "{}: issuing_country {} is not the document signer's countryName {country}",
                    clip(ns),
                    clip(&other.to_string())
                )))
            }
        }
    }
    Ok(())
}

/// The doc type and issuer-signed elements of an `IssuerSigned` WITHOUT checking its signature,
/// chain or validity (each disclosed item is still checked against the MSO's digests): for a
/// holder deciding which of its own credentials answer a query. Never a verification result.
pub fn parse_unverified(issuer_signed_bytes: &[u8]) -> MdocResult<(String, Claims)> {
    let signed = decode(issuer_signed_bytes)?;
    let auth = get(&signed, "issuerAuth").ok_or_else(|| malformed("no issuerAuth"))?;
    let sign1 = super::sign1(auth, "issuerAuth")?;
    let payload = sign1
        .payload
        .as_deref()
        .ok_or_else(|| malformed("issuerAuth has no payload"))?;
    let (_, mso) = untag24(&decode(payload)?)?;
    Ok((
        text(&mso, "docType")?.to_string(),
        disclosed(&signed, &mso)?,
    ))
}

fn check_mso_header(mso: &Value, doc_type: Option<&str>) -> MdocResult<()> {
    if text(mso, "version")? != "1.0" {
        return Err(MdocError::Unsupported("MSO version must be 1.0".into()));
    }
    if text(mso, "digestAlgorithm")? != "SHA-256" {
        return Err(MdocError::Unsupported(
            "digestAlgorithm must be SHA-256".into(),
        ));
    }
    let mso_type = text(mso, "docType")?;
    if let Some(want) = doc_type {
        if mso_type != want {
            return Err(MdocError::DocType(format!(
                "the document says {}, its MSO {}",
                clip(want),
                clip(mso_type)
            )));
        }
    }
    Ok(())
}

/// The chain in the `x5chain` header (protected, else unprotected, where ISO 18013-5 puts it):
/// one bstr or an array of them. The signed one wins when both are there (review: an
/// unprotected chain could stand in for the issuer's protected one over the same key).
pub(super) fn x5chain(sign1: &coset::CoseSign1) -> MdocResult<Vec<Vec<u8>>> {
    let find = |h: &coset::Header| {
        h.rest
            .iter()
            .find(|(l, _)| *l == Label::Int(X5CHAIN))
            .map(|(_, v)| v.clone())
    };
    let v = find(&sign1.protected.header)
        .or_else(|| find(&sign1.unprotected))
        .ok_or_else(|| MdocError::Untrusted("issuerAuth carries no x5chain".into()))?;
    match v {
        Value::Bytes(b) => Ok(vec![b]),
        Value::Array(a) if !a.is_empty() && a.len() <= crate::crypto::x509::MAX_CHAIN => a
            .into_iter()
            .map(|c| match c {
                Value::Bytes(b) => Ok(b),
                _ => Err(malformed("x5chain entries must be byte strings")),
            })
            .collect(),
        _ => Err(malformed(
            "x5chain must be a bstr or an array of 1 to 5 bstr",
        )),
    }
}

/// Each issuer-signed item disclosed in `issuer_signed.nameSpaces`, checked against the MSO's
/// value digests (SHA-256 over the tag-24 item exactly as received).
fn disclosed(
    issuer_signed: &Value,
    mso: &Value,
) -> MdocResult<BTreeMap<String, serde_json::Map<String, serde_json::Value>>> {
    let digests = get(mso, "valueDigests").ok_or_else(|| malformed("no valueDigests"))?;
    let mut out = BTreeMap::new();
    let Some(name_spaces) = get(issuer_signed, "nameSpaces") else {
        return Ok(out);
    };
    let mut count = 0usize;
    for (ns, items) in map_entries(name_spaces, "nameSpaces")? {
        let Value::Text(ns) = ns else {
            return Err(malformed("namespace names must be text"));
        };
        let ns_digests = get(digests, ns)
            .ok_or_else(|| MdocError::Digest(format!("no digests for namespace {}", clip(ns))))?;
        let ns_quoted = clip(ns);
        let mut seen_ids = BTreeSet::new();
        let mut elements = serde_json::Map::new();
        for item in array(items, "a namespace's items")? {
            count += 1;
            if count > MAX_ELEMENTS {
                return Err(MdocError::TooLarge(format!(
                    "more than {MAX_ELEMENTS} elements"
                )));
            }
            let (_, decoded) = untag24(item)?;
            let id = match get(&decoded, "digestID") {
                Some(Value::Integer(i)) => u64::try_from(*i)
                    .map_err(|_| malformed("digestID must be an unsigned integer"))?,
                _ => return Err(malformed("digestID must be an unsigned integer")),
            };
            if !seen_ids.insert(id) {
                return Err(MdocError::Digest(format!(
                    "digestID {id} disclosed twice in {ns_quoted}"
                )));
            }
            let want = map_entries(ns_digests, "valueDigests")?
                .iter()
                .find(|(k, _)| matches!(k, Value::Integer(i) if u64::try_from(*i).ok() == Some(id)))
                .map(|(_, v)| v)
                .ok_or_else(|| MdocError::Digest(format!("no digest {id} in {ns_quoted}")))?;
            let got = Sha256::digest(encode(item));
            if !matches!(want, Value::Bytes(w) if w.as_slice() == got.as_slice()) {
                return Err(MdocError::Digest(format!(
                    "element with digestID {id} in {ns_quoted}"
                )));
            }
            let name = text(&decoded, "elementIdentifier")?.to_string();
            let value =
                get(&decoded, "elementValue").ok_or_else(|| malformed("no elementValue"))?;
            if elements
                .insert(name.clone(), super::to_json(value))
                .is_some()
            {
                return Err(MdocError::Digest(format!(
                    "element {} disclosed twice in {ns_quoted}",
                    clip(&name)
                )));
            }
        }
        out.insert(ns.clone(), elements);
    }
    Ok(out)
}

fn status_ref(mso: &Value) -> Result<Option<(u64, String)>, String> {
    let Some(status) = get(mso, "status") else {
        return Ok(None);
    };
    let unreadable = || {
        "the mdoc's status is not a Token Status List reference (status_list with an integer idx and a text uri)".to_string()
    };
    let list = get(status, "status_list").ok_or_else(unreadable)?;
    let idx = match get(list, "idx") {
        Some(Value::Integer(i)) => u64::try_from(*i).map_err(|_| unreadable())?,
        _ => return Err(unreadable()),
    };
    match get(list, "uri") {
        Some(Value::Text(u)) => Ok(Some((idx, u.clone()))),
        _ => Err(unreadable()),
    }
}

/// A DeviceResponse: every document's issuer-signed part (as [`issuer_signed`]) and its device
/// signature over `DeviceAuthentication` with `session_transcript` (the encoded
/// SessionTranscript the verifier expects), made with the MSO's device key.
pub fn device_response(
    bytes: &[u8],
    session_transcript: &[u8],
    anchors: &TrustAnchors,
    now: i64,
) -> MdocResult<Vec<Verified>> {
    let resp = decode(bytes)?;
    if text(&resp, "version")? != "1.0" {
        return Err(MdocError::Unsupported(
            "DeviceResponse version must be 1.0".into(),
        ));
    }
    match get(&resp, "status") {
        Some(Value::Integer(i)) if i128::from(*i) == 0 => {}
        _ => return Err(malformed("DeviceResponse status must be 0 (OK)")),
    }
    let docs = array(
        get(&resp, "documents").ok_or_else(|| malformed("no documents"))?,
        "documents",
    )?;
    if docs.is_empty() {
        return Err(malformed("no documents"));
    }
    if docs.len() > MAX_DOCUMENTS {
        return Err(MdocError::TooLarge(format!(
            "more than {MAX_DOCUMENTS} documents"
        )));
    }
    let transcript = decode(session_transcript)?;
    docs.iter()
        .map(|doc| document(doc, &transcript, anchors, now))
        .collect()
}

fn document(
    doc: &Value,
    transcript: &Value,
    anchors: &TrustAnchors,
    now: i64,
) -> MdocResult<Verified> {
    let doc_type = text(doc, "docType")?;
    let issuer = get(doc, "issuerSigned").ok_or_else(|| malformed("no issuerSigned"))?;
    let verified = issuer_signed(issuer, Some(doc_type), anchors, now)?;
    let device = get(doc, "deviceSigned").ok_or_else(|| malformed("no deviceSigned"))?;
    let ns_bytes =
        get(device, "nameSpaces").ok_or_else(|| malformed("no deviceSigned nameSpaces"))?;
    let (_, device_ns) = untag24(ns_bytes)?;
    if !matches!(&device_ns, Value::Map(m) if m.is_empty()) {
        return Err(MdocError::Unsupported(
            "device-signed elements are not accepted (only issuer-signed data counts)".into(),
        ));
    }
    let auth = get(device, "deviceAuth").ok_or_else(|| malformed("no deviceAuth"))?;
    if get(auth, "deviceMac").is_some() {
        return Err(MdocError::Unsupported(
            "deviceMac needs a reader key this flow does not have; use deviceSignature".into(),
        ));
    }
    let sig = get(auth, "deviceSignature").ok_or_else(|| malformed("no deviceSignature"))?;
    let sign1 = super::sign1(sig, "deviceSignature")?;
    if sign1.protected.header.alg
        != Some(coset::RegisteredLabelWithPrivate::Assigned(
            coset::iana::Algorithm::ES256,
        ))
    {
        return Err(MdocError::Unsupported(
            "deviceSignature must be ES256".into(),
        ));
    }
    // the detached payload: #6.24(bstr .cbor DeviceAuthentication), rebuilt from what we expect
    let device_auth = Value::Array(vec![
        Value::Text("DeviceAuthentication".into()),
        transcript.clone(),
        Value::Text(doc_type.into()),
        ns_bytes.clone(),
    ]);
    let payload = encode(&tag24(&device_auth));
    // ISO 18013-5 9.1.3.6: the payload is detached (nil); coset's detached check panics on one
    if sign1.payload.is_some() {
        return Err(MdocError::DeviceAuth(
            "deviceSignature must have a detached (nil) payload".into(),
        ));
    }
    sign1
        .verify_detached_signature(&payload, b"", |s, data| verified.device_key.verify(data, s))
        .map_err(|_| {
            MdocError::DeviceAuth(
                "the device signature does not cover this request's SessionTranscript with the MSO's device key".into(),
            )
        })?;
    Ok(verified)
}

#[cfg(test)]
mod x5chain_tests {
    use super::*;

    #[test]
    fn the_protected_x5chain_wins_over_an_unprotected_one() {
        let chain = |b: &[u8]| (Label::Int(X5CHAIN), Value::Bytes(b.to_vec()));
        let mut sign1 = coset::CoseSign1Builder::new()
            .protected(coset::HeaderBuilder::new().build())
            .build();
        sign1.unprotected.rest.push(chain(b"unprotected"));
        assert_eq!(x5chain(&sign1).unwrap(), vec![b"unprotected".to_vec()]);
        sign1.protected.header.rest.push(chain(b"protected"));
        assert_eq!(x5chain(&sign1).unwrap(), vec![b"protected".to_vec()]);
    }
}
