//! Token Status List in CWT form (`application/statuslist+cwt`, draft-ietf-oauth-status-list):
//! the list an mdoc's MSO points at (`status.status_list.{idx, uri}`). A tagged COSE_Sign1
//! (ES256) whose protected header carries `typ` = `application/statuslist+cwt` and whose
//! unprotected header carries the signer's `x5chain`; the payload is a CWT claims set with
//! `sub` (2) = the list's URI, `iat` (6), optional `exp` (4) and `ttl` (65534), and
//! `status_list` (65533) = `{bits, lst}` where `lst` is the zlib-compressed status array.
//!
//! An mdoc's status list is believed only when its signer is the mdoc's own document signer:
//! same key, chain to a trust anchor.

use ciborium::Value;
use coset::{iana, Label, TaggedCborSerializable};

use super::{get, MdocError, MdocResult, X5CHAIN};
use crate::crypto::status::StatusArray;
use crate::crypto::x509::TrustAnchors;
use crate::crypto::SigningKey;

pub const MEDIA_TYPE: &str = "application/statuslist+cwt";
const SUB: i64 = 2;
const EXP: i64 = 4;
const IAT: i64 = 6;
const STATUS_LIST: i64 = 65533;
const TTL: i64 = 65534;
/// Largest status list token accepted.
pub const MAX_TOKEN_BYTES: usize = 2 * 1024 * 1024;

/// Signs `list` as the status list at `uri`.
pub fn sign(
    uri: &str,
    iat: i64,
    exp: Option<i64>,
    ttl: Option<u64>,
    list: &StatusArray,
    signer: &SigningKey,
    x5chain: &[Vec<u8>],
) -> MdocResult<Vec<u8>> {
    let mut claims = vec![
        (Value::Integer(SUB.into()), Value::Text(uri.into())),
        (Value::Integer(IAT.into()), Value::Integer(iat.into())),
        (
            Value::Integer(STATUS_LIST.into()),
            Value::Map(vec![
                (Value::Text("bits".into()), Value::Integer(list.bits.into())),
                (Value::Text("lst".into()), Value::Bytes(list.to_zlib())),
            ]),
        ),
    ];
    if let Some(exp) = exp {
        claims.push((Value::Integer(EXP.into()), Value::Integer(exp.into())));
    }
    if let Some(ttl) = ttl {
        claims.push((Value::Integer(TTL.into()), Value::Integer(ttl.into())));
    }
    let chain = match x5chain {
        [one] => Value::Bytes(one.clone()),
        many => Value::Array(many.iter().cloned().map(Value::Bytes).collect()),
    };
    coset::CoseSign1Builder::new()
        .protected(
            coset::HeaderBuilder::new()
                .algorithm(iana::Algorithm::ES256)
                .value(16, Value::Text(MEDIA_TYPE.into()))
                .build(),
        )
        .unprotected(coset::HeaderBuilder::new().value(X5CHAIN, chain).build())
        .payload(super::encode(&Value::Map(claims)))
        .create_signature(b"", |data| signer.sign(data))
        .build()
        .to_tagged_vec()
        .map_err(|e| MdocError::Malformed(format!("status list COSE_Sign1: {e}")))
}

/// Verifies a status list token fetched from `uri` for an mdoc signed by `signer` (the
/// document signer's key): the token's x5chain chains to `anchors`, its leaf key is `signer`,
/// the signature verifies, `sub` is `uri`, it carries `iat` and is fresh
/// ([`crate::crypto::status::freshness`]: not expired, not older than `max_age`). Returns the
/// status array and until when the token may be used.
/// A status list token's COSE_Sign1, tagged (18) or not, read within the mdoc bounds
/// ([`super::sign1`]: no counter signatures).
pub(super) fn token_sign1(bytes: &[u8]) -> MdocResult<coset::CoseSign1> {
    let v = super::decode_within(bytes, MAX_TOKEN_BYTES)
        .map_err(|e| MdocError::Malformed(format!("status list token: {e}")))?;
    let untagged = match v {
        Value::Tag(18, inner) => *inner,
        Value::Tag(..) => {
            return Err(MdocError::Malformed(
                "status list token: a tag other than COSE_Sign1's".into(),
            ))
        }
        other => other,
    };
    super::sign1(&untagged, "status list token")
}

pub fn verify(
    bytes: &[u8],
    uri: &str,
    mdoc: &super::verify::Verified,
    anchors: &TrustAnchors,
    now: i64,
    max_age: Option<i64>,
) -> MdocResult<(StatusArray, Option<i64>)> {
    if bytes.len() > MAX_TOKEN_BYTES {
        return Err(MdocError::TooLarge("status list token".into()));
    }
    let sign1 = token_sign1(bytes)?;
    let typ_ok = sign1
        .protected
        .header
        .rest
        .iter()
        .any(|(l, v)| *l == Label::Int(16) && *v == Value::Text(MEDIA_TYPE.into()));
    if !typ_ok {
        return Err(MdocError::Malformed(format!(
            "status list token typ is not {MEDIA_TYPE}"
        )));
    }
    if sign1.protected.header.alg
        != Some(coset::RegisteredLabelWithPrivate::Assigned(
            iana::Algorithm::ES256,
        ))
    {
        return Err(MdocError::Unsupported(
            "status list token must be ES256".into(),
        ));
    }
    let chain = super::verify::x5chain(&sign1)?;
    let path = anchors
        .chain_path(&chain, now)
        .map_err(MdocError::Untrusted)?;
    // the mdoc's own document signer, or another document signer under the same anchor (the
    // issuer's after a rotation: its lists outlive any one signer)
    let same_anchor = path
        .above
        .last()
        .and_then(|a| x509_cert::der::Encode::to_der(a).ok())
        .is_some_and(|a| !mdoc.anchor.is_empty() && a == mdoc.anchor);
    let key = path.key;
    // `alg` says ES256: a signer of another key type must not verify under that label
    if !matches!(key, crate::crypto::VerifyingKey::P256(_)) {
        return Err(MdocError::Unsupported(
            "the status list signer's key is not P-256 (ES256)".into(),
        ));
    }
    if key != mdoc.signer_key
        && !(same_anchor && crate::crypto::x509::check_document_signer(&path.leaf).is_ok())
    {
        return Err(MdocError::Untrusted(
            "the status list is signed neither by the mdoc's document signer nor by another document signer under its IACA".into(),
        ));
    }
    sign1
        .verify_signature(b"", |sig, data| key.verify(data, sig))
        .map_err(|_| MdocError::IssuerSignature)?;
    let claims = super::decode(sign1.payload.as_deref().unwrap_or_default())?;
    let int = |k: i64| match &claims {
        Value::Map(m) => m
            .iter()
            .find(|(key, _)| matches!(key, Value::Integer(i) if i128::from(*i) == i128::from(k)))
            .map(|(_, v)| v),
        _ => None,
    };
    if int(SUB) != Some(&Value::Text(uri.into())) {
        return Err(MdocError::Malformed(
            "status list token `sub` is not its URI".into(),
        ));
    }
    // a time is a NumericDate (RFC 8392): an integer, or a float (floored); anything else is
    // refused, not skipped
    let time = |k: i64, name: &str| match int(k) {
        None => Ok(None),
        Some(Value::Integer(t)) => i64::try_from(*t)
            .map(Some)
            .map_err(|_| MdocError::Malformed(format!("status list token `{name}` out of range"))),
        Some(Value::Float(f)) if f.is_finite() => Ok(Some(f.floor() as i64)),
        Some(_) => Err(MdocError::Malformed(format!(
            "status list token `{name}` is not a NumericDate"
        ))),
    };
    let (iat, exp) = (time(IAT, "iat")?, time(EXP, "exp")?);
    let good_until = crate::crypto::status::freshness(iat, exp, now, max_age, true)
        .map_err(MdocError::Validity)?;
    let list = int(STATUS_LIST).ok_or_else(|| MdocError::Malformed("no status_list".into()))?;
    let bits = match get(list, "bits") {
        Some(Value::Integer(b)) => u8::try_from(*b).unwrap_or(0),
        _ => 0,
    };
    let lst = match get(list, "lst") {
        Some(Value::Bytes(b)) => b,
        _ => {
            return Err(MdocError::Malformed(
                "status_list.lst must be a byte string".into(),
            ))
        }
    };
    let list =
        StatusArray::from_zlib(bits, lst).map_err(|e| MdocError::Malformed(e.to_string()))?;
    Ok((list, good_until))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::mdoc::verify::Verified;
    use crate::crypto::x509::tests::{ca, leaf};
    use crate::crypto::KeyType;

    #[test]
    fn signed_by_the_document_signer_or_refused() {
        use base64::Engine;
        let root = ca("IACA", None);
        let anchors = TrustAnchors::from_pem(root.cert.pem().as_bytes()).unwrap();
        let (ds, key) = leaf(&root, vec![], |_| {});
        let chain = vec![base64::engine::general_purpose::STANDARD
            .decode(ds)
            .unwrap()];
        let mut list = StatusArray::new(2, 1024).unwrap();
        list.set_lsb(7, 1).unwrap();
        let uri = "https://issuer.example/status/1";
        let now = 1_800_000_000;
        let root_der = root.cert.der().to_vec();
        // an mdoc signed by `signer_key` under `root`
        let by = |signer_key| Verified {
            doc_type: String::new(),
            claims: Default::default(),
            device_key: SigningKey::generate(KeyType::P256).verifying_key(),
            valid_from: 0,
            valid_until: 0,
            status: Ok(None),
            authorities: Vec::new(),
            signer: String::new(),
            signer_key,
            anchor: root_der.clone(),
            anchor_key_id: Vec::new(),
        };
        let t = sign(uri, now, None, Some(3600), &list, &key, &chain).unwrap();
        let (got, until) = verify(&t, uri, &by(key.verifying_key()), &anchors, now, None).unwrap();
        assert_eq!(until, None);
        assert_eq!((got.get_lsb(7).unwrap(), got.get_lsb(6).unwrap()), (1, 0));
        // exp is checked, and a list older than the verifier's maximum age is refused: an old
        // list replayed at its URI (a cache, anyone on the path) stops hiding a revocation
        let day = 86_400;
        let with_exp = sign(uri, now, Some(now + day), Some(60), &list, &key, &chain).unwrap();
        let mine = by(key.verifying_key());
        let (_, until) = verify(&with_exp, uri, &mine, &anchors, now + 10, Some(3600)).unwrap();
        assert_eq!(until, Some(now + 3600));
        assert!(verify(&with_exp, uri, &mine, &anchors, now + 3600, Some(3600)).is_err());
        assert!(verify(&with_exp, uri, &mine, &anchors, now + day, None).is_err());
        // another URI, another signer, another anchor, a truncated token
        assert!(verify(
            &t,
            "https://issuer.example/status/2",
            &by(key.verifying_key()),
            &anchors,
            now,
            None
        )
        .is_err());
        let other = SigningKey::generate(KeyType::P256).verifying_key();
        assert_eq!(
            verify(&t, uri, &by(other), &anchors, now, None)
                .unwrap_err()
                .code(),
            "mdoc_untrusted_signer"
        );
        let elsewhere = TrustAnchors::from_pem(ca("other", None).cert.pem().as_bytes()).unwrap();
        assert_eq!(
            verify(&t, uri, &by(key.verifying_key()), &elsewhere, now, None)
                .unwrap_err()
                .code(),
            "mdoc_untrusted_signer"
        );
        assert!(verify(
            &t[..t.len() - 3],
            uri,
            &by(key.verifying_key()),
            &anchors,
            now,
            None
        )
        .is_err());
        // the attacker's key with the genuine chain
        let forged = sign(
            uri,
            now,
            None,
            None,
            &StatusArray::new(2, 1024).unwrap(),
            &SigningKey::generate(KeyType::P256),
            &chain,
        )
        .unwrap();
        assert_eq!(
            verify(&forged, uri, &by(key.verifying_key()), &anchors, now, None)
                .unwrap_err()
                .code(),
            "mdoc_bad_issuer_signature"
        );
    }

    /// After a rotation the issuer signs its lists with its new document signer: an mdoc of the
    /// old one accepts a list signed by another document signer under the same IACA, never one
    /// under another IACA or by a certificate that is no document signer.
    #[test]
    fn a_successor_document_signer_under_the_same_iaca_may_sign_the_list() {
        use base64::Engine;
        let ds_eku = |p: &mut rcgen::CertificateParams| {
            p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::Other(vec![
                1, 0, 18013, 5, 1, 2,
            ])];
        };
        let root = ca("IACA", None);
        let anchors = TrustAnchors::from_pem(root.cert.pem().as_bytes()).unwrap();
        let der = |b64: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        };
        let (_, old) = leaf(&root, vec![], ds_eku);
        let (new_ds, new_key) = leaf(&root, vec![], ds_eku);
        let (plain, plain_key) = leaf(&root, vec![], |_| {});
        let uri = "https://issuer.example/status/1";
        let now = 1_800_000_000;
        let list = StatusArray::new(2, 1024).unwrap();
        let mdoc = |anchor: Vec<u8>| Verified {
            doc_type: String::new(),
            claims: Default::default(),
            device_key: old.verifying_key(),
            valid_from: 0,
            valid_until: 0,
            status: Ok(None),
            authorities: Vec::new(),
            signer: String::new(),
            signer_key: old.verifying_key(),
            anchor,
            anchor_key_id: Vec::new(),
        };
        let by_new = sign(uri, now, None, None, &list, &new_key, &[der(&new_ds)]).unwrap();
        verify(
            &by_new,
            uri,
            &mdoc(root.cert.der().to_vec()),
            &anchors,
            now,
            None,
        )
        .unwrap();
        let other_iaca = ca("other", None);
        assert_eq!(
            verify(
                &by_new,
                uri,
                &mdoc(other_iaca.cert.der().to_vec()),
                &anchors,
                now,
                None
            )
            .unwrap_err()
            .code(),
            "mdoc_untrusted_signer"
        );
        let by_plain = sign(uri, now, None, None, &list, &plain_key, &[der(&plain)]).unwrap();
        assert_eq!(
            verify(
                &by_plain,
                uri,
                &mdoc(root.cert.der().to_vec()),
                &anchors,
                now,
                None
            )
            .unwrap_err()
            .code(),
            "mdoc_untrusted_signer"
        );
    }
}
