//! Chains to trust anchors: what verifies and each refusal.

use super::*;
use rcgen::{
    BasicConstraints as Bc, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
    PKCS_ECDSA_P256_SHA256,
};

/// A CA (root or intermediate) and its key.
pub(crate) struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

pub(crate) fn ca(name: &str, parent: Option<&Ca>) -> Ca {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(Bc::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = match parent {
        None => p.self_signed(&key).unwrap(),
        Some(pa) => p.signed_by(&key, &pa.cert, &pa.key).unwrap(),
    };
    Ca { cert, key }
}

/// A leaf certificate for `sans` signed by `by`, and its key as an idstack signing key.
pub(crate) fn leaf(
    by: &Ca,
    sans: Vec<SanType>,
    edit: impl FnOnce(&mut CertificateParams),
) -> (String, crate::crypto::SigningKey) {
    use p256::pkcs8::DecodePrivateKey;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "document signer");
    p.subject_alt_names = sans;
    edit(&mut p);
    let cert = p.signed_by(&key, &by.cert, &by.key).unwrap();
    let sk = p256::ecdsa::SigningKey::from_pkcs8_der(&key.serialize_der()).unwrap();
    (b64(cert.der()), crate::crypto::SigningKey::P256(sk))
}

pub(crate) fn b64(der: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(der)
}

pub(crate) fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

const ISS: &str = "https://issuer.example/tenant";
const NOW: i64 = 1_800_000_000;

#[test]
fn chains_to_an_anchor_and_names_the_issuer() {
    let root = ca("root", None);
    let anchors = TrustAnchors::from_pem(root.cert.pem().as_bytes()).unwrap();
    let (leaf_der, sk) = leaf(&root, vec![dns("issuer.example")], |_| {});
    let key = anchors.leaf_key(&[leaf_der], ISS, NOW).unwrap();
    assert_eq!(key, sk.verifying_key());
    // via an intermediate, and a SAN URI naming the issuer exactly
    let mid = ca("intermediate", Some(&root));
    let uri = SanType::URI(ISS.try_into().unwrap());
    let (leaf_der, sk) = leaf(&mid, vec![uri], |_| {});
    let chain = [leaf_der, b64(mid.cert.der())];
    assert_eq!(
        anchors.leaf_key(&chain, ISS, NOW).unwrap(),
        sk.verifying_key()
    );
    // the intermediate alone may be the anchor
    let mid_anchor = TrustAnchors::from_pem(mid.cert.pem().as_bytes()).unwrap();
    assert!(mid_anchor.leaf_key(&chain[..1], ISS, NOW).is_ok());
}

#[test]
fn refusals() {
    let root = ca("root", None);
    let anchors = TrustAnchors::from_pem(root.cert.pem().as_bytes()).unwrap();
    let (good, _) = leaf(&root, vec![dns("issuer.example")], |_| {});
    let err = |chain: &[String], iss: &str| anchors.leaf_key(chain, iss, NOW).unwrap_err();

    // no anchors configured
    assert!(TrustAnchors::default()
        .leaf_key(std::slice::from_ref(&good), ISS, NOW)
        .unwrap_err()
        .contains("no X.509 trust anchor"));
    // another root
    let other = ca("root", None);
    let (foreign, _) = leaf(&other, vec![dns("issuer.example")], |_| {});
    assert!(err(&[foreign], ISS).contains("trust anchor"));
    // a leaf for another host, and an issuer that is not its URI
    let (elsewhere, _) = leaf(&root, vec![dns("evil.example")], |_| {});
    assert!(err(&[elsewhere], ISS).contains("does not name the issuer"));
    assert!(err(std::slice::from_ref(&good), "https://evil.example").contains("does not name"));
    // expired, not yet valid
    let (old, _) = leaf(&root, vec![dns("issuer.example")], |p| {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    });
    assert!(err(&[old], ISS).contains("expired"));
    let (future, _) = leaf(&root, vec![dns("issuer.example")], |p| {
        p.not_before = rcgen::date_time_ymd(2100, 1, 1);
        p.not_after = rcgen::date_time_ymd(2101, 1, 1);
    });
    assert!(err(&[future], ISS).contains("not yet valid"));
    // a "CA" in the middle that is not one: a leaf signing another leaf
    let mut not_ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    not_ca_params
        .distinguished_name
        .push(DnType::CommonName, "not a ca");
    let not_ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let not_ca = Ca {
        cert: not_ca_params
            .signed_by(&not_ca_key, &root.cert, &root.key)
            .unwrap(),
        key: not_ca_key,
    };
    let (under, _) = leaf(&not_ca, vec![dns("issuer.example")], |_| {});
    let e = err(&[under, b64(not_ca.cert.der())], ISS);
    assert!(
        e.contains("x5c[1]") && (e.contains("not a CA") || e.contains("basicConstraints")),
        "{e}"
    );
    // a chain whose order lies (the intermediate did not sign the leaf)
    let mid = ca("intermediate", Some(&root));
    assert!(err(&[good.clone(), b64(mid.cert.der())], ISS).contains("is not signed by"));
    // size and encoding bounds
    assert!(err(&[], ISS).contains("1 to"));
    assert!(err(&vec![good.clone(); MAX_CHAIN + 1], ISS).contains("1 to"));
    assert!(err(&["%%%".into()], ISS).contains("base64"));
    assert!(err(&[b64(b"not a certificate")], ISS).contains("certificate"));
    assert!(err(&["A".repeat(MAX_CERT_BYTES * 2)], ISS).contains("too large"));
    // a tampered leaf (its signature no longer covers it)
    use base64::Engine;
    let mut der = base64::engine::general_purpose::STANDARD
        .decode(&good)
        .unwrap();
    let at = der.len() / 2;
    der[at] ^= 1;
    let tampered = b64(&der);
    assert!(anchors.leaf_key(&[tampered], ISS, NOW).is_err());
}
