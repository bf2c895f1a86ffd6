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

const ISS: &str = "https://issuer.example";
const NOW: i64 = 1_800_000_000;

/// A DNS name names a `dns:` issuer and an https issuer that is a bare origin, never one with a
/// path: a certificate for the host is no certificate for every issuer under it (verifier
/// review: a shared platform's tenants, or the site's TLS certificate). A URI names exactly
/// itself; a TLS-only certificate names no issuer.
#[test]
fn a_dns_name_speaks_for_the_host_not_for_every_issuer_under_it() {
    let root = ca("root", None);
    let anchors = TrustAnchors::from_pem(root.cert.pem().as_bytes()).unwrap();
    let (by_dns, _) = leaf(&root, vec![dns("issuer.example")], |_| {});
    for iss in [
        "https://issuer.example",
        "https://issuer.example/",
        "dns:issuer.example",
        "dns://ns.example/issuer.example",
    ] {
        assert!(
            anchors
                .leaf_key(std::slice::from_ref(&by_dns), iss, NOW)
                .is_ok(),
            "{iss}"
        );
    }
    for iss in [
        "https://issuer.example/tenant",
        "https://issuer.example/?x",
        "https://issuer.example:8443",
        "https://issuer.example.evil.example",
        "dns:evil.example",
        "http://issuer.example",
    ] {
        let e = anchors
            .leaf_key(std::slice::from_ref(&by_dns), iss, NOW)
            .unwrap_err();
        assert!(
            e.to_string().contains("does not name the issuer"),
            "{iss}: {e}"
        );
    }
    let path = "https://issuer.example/tenant";
    let uri = SanType::URI(path.try_into().unwrap());
    let (by_uri, _) = leaf(&root, vec![uri], |_| {});
    assert!(anchors
        .leaf_key(std::slice::from_ref(&by_uri), path, NOW)
        .is_ok());
    assert!(anchors
        .leaf_key(&[by_uri], "https://issuer.example/other", NOW)
        .is_err());
    // a TLS server's certificate signs no credentials, even for its own host
    let (tls, _) = leaf(&root, vec![dns("issuer.example")], |p| {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    });
    let e = anchors.leaf_key(&[tls], ISS, NOW).unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");
}

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

/// A CA named `name` under `parent` (self-signed without one) with `pathLenConstraint` `len`.
fn ca_with_path_len(name: &str, parent: Option<&Ca>, len: u8) -> Ca {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(Bc::Constrained(len));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let cert = match parent {
        None => p.self_signed(&key).unwrap(),
        Some(pa) => p.signed_by(&key, &pa.cert, &pa.key).unwrap(),
    };
    Ca { cert, key }
}

/// t_issuer_crafted: a certificate whose issuer name is not its signer's subject (signed with
/// the right key) does not chain (RFC 5280 6.1.3 (a)(4)).
#[test]
fn issuer_names_chain() {
    let root = ca("root", None);
    let anchors = TrustAnchors::from_pem(root.cert.pem().as_bytes()).unwrap();
    let mid = ca("intermediate", Some(&root));
    // an issuer certificate for the name "someone else" holding the intermediate's key
    let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
    other
        .distinguished_name
        .push(DnType::CommonName, "someone else");
    other.is_ca = IsCa::Ca(Bc::Unconstrained);
    let named_other = Ca {
        cert: other.self_signed(&mid.key).unwrap(),
        key: KeyPair::try_from(mid.key.serialize_der().as_slice()).unwrap(),
    };
    let (leaf_der, _) = leaf(&named_other, vec![dns("issuer.example")], |_| {});
    let e = anchors
        .leaf_key(&[leaf_der, b64(mid.cert.der())], ISS, NOW)
        .unwrap_err();
    assert!(e.contains("issuer name"), "{e}");
    // the same leaf issued under the intermediate's own name chains
    let (leaf_der, _) = leaf(&mid, vec![dns("issuer.example")], |_| {});
    assert!(anchors
        .leaf_key(&[leaf_der, b64(mid.cert.der())], ISS, NOW)
        .is_ok());
}

/// `pathLenConstraint` of every CA on the path, the anchor's included, bounds the CAs below it.
#[test]
fn path_length_constraints_hold() {
    let der = |c: &Ca| b64(c.cert.der());
    // an anchor allowing no CA below it, with an intermediate below it
    let root0 = ca_with_path_len("root", None, 0);
    let anchors = TrustAnchors::from_pem(root0.cert.pem().as_bytes()).unwrap();
    let mid = ca("intermediate", Some(&root0));
    let (leaf_der, _) = leaf(&mid, vec![dns("issuer.example")], |_| {});
    let e = anchors
        .leaf_key(&[leaf_der, der(&mid)], ISS, NOW)
        .unwrap_err();
    assert!(e.contains("trust anchor"), "{e}");
    let (direct, _) = leaf(&root0, vec![dns("issuer.example")], |_| {});
    assert!(anchors.leaf_key(&[direct], ISS, NOW).is_ok());
    // an intermediate allowing no CA below it, with one below it
    let root = ca("root", None);
    let anchors = TrustAnchors::from_pem(root.cert.pem().as_bytes()).unwrap();
    let mid0 = ca_with_path_len("intermediate", Some(&root), 0);
    let sub = ca("sub", Some(&mid0));
    let (leaf_der, _) = leaf(&sub, vec![dns("issuer.example")], |_| {});
    let chain = [leaf_der, der(&sub), der(&mid0)];
    let e = anchors.leaf_key(&chain, ISS, NOW).unwrap_err();
    assert!(
        e.contains("x5c[2]") && e.contains("pathLenConstraint"),
        "{e}"
    );
    // the same intermediate as the anchor, sent in the chain
    let mid_anchor = TrustAnchors::from_pem(mid0.cert.pem().as_bytes()).unwrap();
    assert!(mid_anchor.leaf_key(&chain, ISS, NOW).is_err());
    // pathLenConstraint 1 allows the one
    let mid1 = ca_with_path_len("intermediate", Some(&root), 1);
    let sub = ca("sub", Some(&mid1));
    let (leaf_der, _) = leaf(&sub, vec![dns("issuer.example")], |_| {});
    assert!(anchors
        .leaf_key(&[leaf_der, der(&sub), der(&mid1)], ISS, NOW)
        .is_ok());
}

/// An anchor's signature on a certificate is checked once per anchor set; everything else still
/// holds at every use: the leaf's validity at `now`, and another certificate (here one signed by
/// another CA of the same name) is checked for itself.
#[test]
fn a_remembered_anchor_signature_keeps_every_other_check() {
    let root = ca("root", None);
    let anchors = TrustAnchors::from_pem(root.cert.pem().as_bytes()).unwrap();
    let until = NOW + 86_400;
    let (leaf_der, sk) = leaf(&root, vec![dns("issuer.example")], |p| {
        p.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 60).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(until).unwrap();
    });
    for _ in 0..2 {
        let key = anchors.leaf_key(std::slice::from_ref(&leaf_der), ISS, NOW);
        assert_eq!(key.unwrap(), sk.verifying_key());
    }
    let e = anchors.leaf_key(&[leaf_der], ISS, until + 1).unwrap_err();
    assert!(e.contains("expired"), "{e}");
    let impostor = ca("root", None);
    let (forged, _) = leaf(&impostor, vec![dns("issuer.example")], |_| {});
    assert!(anchors.leaf_key(&[forged], ISS, NOW).is_err());
}

/// An SD-JWT issuer's x5c leaf signs credentials, and names the issuer as a URL a person reads
/// the same way (attacker review): not a CA or an mdoc document signer, no user-info or other
/// port matched by a DNS name, no extension twice.
#[test]
fn an_issuer_leaf_is_a_signing_certificate_that_names_the_issuer_plainly() {
    let root = ca("root", None);
    let anchors = TrustAnchors::from_pem(root.cert.pem().as_bytes()).unwrap();
    let err = |chain: &[String], iss: &str| anchors.leaf_key(chain, iss, NOW).unwrap_err();
    let (good, _) = leaf(&root, vec![dns("issuer.example")], |_| {});
    assert!(anchors
        .leaf_key(std::slice::from_ref(&good), ISS, NOW)
        .is_ok());
    for iss in [
        "https://issuer.gov@issuer.example/",
        "https://issuer.example:8443/tenant",
        "http://issuer.example/tenant",
    ] {
        assert!(
            err(std::slice::from_ref(&good), iss).contains("does not name"),
            "{iss}"
        );
    }
    let (ca_leaf, _) = leaf(&root, vec![dns("issuer.example")], |p| {
        p.is_ca = IsCa::Ca(Bc::Unconstrained);
    });
    assert!(err(&[ca_leaf], ISS).contains("CA certificate"));
    let (no_signing, _) = leaf(&root, vec![dns("issuer.example")], |p| {
        p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    });
    assert!(err(&[no_signing], ISS).contains("digitalSignature"));
    let (ds, _) = leaf(&root, vec![dns("issuer.example")], |p| {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::Other(vec![
            1, 0, 18013, 5, 1, 2,
        ])];
    });
    assert!(err(&[ds], ISS).contains("document signer"));
    let (twice, _) = leaf(&root, vec![dns("issuer.example")], |p| {
        let ext = rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 17], {
            // subjectAltName { dNSName "issuer.example" }, the same extension again
            let name = b"issuer.example";
            let mut v = vec![0x30, (name.len() + 2) as u8, 0x82, name.len() as u8];
            v.extend_from_slice(name);
            v
        });
        p.custom_extensions = vec![ext];
    });
    assert!(err(&[twice], ISS).contains("twice"));
}

/// An anchor's Subject Key Identifier names it (for `aki:` trust) only when it is a hash of its
/// own key: a trusted IACA that declares another's identifier does not pass for that one.
#[test]
fn an_anchors_declared_key_identifier_counts_only_when_it_is_its_own() {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "B");
    p.is_ca = IsCa::Ca(Bc::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(vec![0xAA; 20]);
    let b = Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    };
    let anchors = TrustAnchors::from_pem(b.cert.pem().as_bytes()).unwrap();
    let (l, _) = leaf(&b, vec![dns("issuer.example")], |_| {});
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD.decode(l).unwrap();
    let path = anchors.chain_path(&[der], NOW).unwrap();
    let ids = authority_key_ids(&path);
    assert!(
        !ids.contains(&vec![0xAA; 20]),
        "a declared identifier counted"
    );
    assert!(!ids.is_empty());
    // rcgen's own identifier (a hash of the key) does count
    let own = ca("root", None);
    let anchors = TrustAnchors::from_pem(own.cert.pem().as_bytes()).unwrap();
    let (l, _) = leaf(&own, vec![dns("issuer.example")], |_| {});
    let der = base64::engine::general_purpose::STANDARD.decode(l).unwrap();
    let path = anchors.chain_path(&[der], NOW).unwrap();
    let ski = subject_key_id(path.above.last().unwrap()).unwrap();
    assert!(authority_key_ids(&path).contains(&ski));
}

/// A certificate whose CA wrote a multi-valued RDN in another order than DER's (BER-sorted
/// sets are common in the wild) verifies: the signature is checked over the `tbsCertificate`
/// as received. The der crate sorts a SET OF as it decodes, so the decoded certificate encoded
/// again is not what its CA signed (it was refused before).
#[test]
fn a_certificate_is_verified_over_its_bytes_as_received() {
    use der::{Encode, Tag};
    use p256::pkcs8::DecodePrivateKey;
    use signature::Signer;
    use std::str::FromStr;
    let root = ca("root", None);
    let (leaf_b64, _) = leaf(&root, vec![dns("issuer.example")], |_| {});
    let leaf_der = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(leaf_b64)
            .unwrap()
    };
    let mut cert = Certificate::from_der(&leaf_der).unwrap();
    // subject: one RDN of two values; DER puts CN (its encoding is shorter) first
    let name = x509_cert::name::Name::from_str("CN=b+C=AT").unwrap();
    let rdn = name.0[0].to_der().unwrap();
    let atvs: Vec<Vec<u8>> = name.0[0].0.iter().map(|a| a.to_der().unwrap()).collect();
    assert_eq!(atvs.len(), 2);
    let unsorted = [&rdn[..2], &atvs[1][..], &atvs[0][..]].concat();
    assert_ne!(unsorted, rdn);
    cert.tbs_certificate.subject = name;
    let sorted_tbs = cert.tbs_certificate.to_der().unwrap();
    let at = sorted_tbs
        .windows(rdn.len())
        .position(|w| w == rdn.as_slice())
        .unwrap();
    let mut tbs = sorted_tbs.clone();
    tbs[at..at + rdn.len()].copy_from_slice(&unsorted);
    let ca_key = p256::ecdsa::SigningKey::from_pkcs8_der(&root.key.serialize_der()).unwrap();
    let sig: p256::ecdsa::DerSignature = ca_key.sign(&tbs);
    let body = [
        tbs.clone(),
        cert.signature_algorithm.to_der().unwrap(),
        der::asn1::BitString::from_bytes(sig.as_bytes())
            .unwrap()
            .to_der()
            .unwrap(),
    ]
    .concat();
    let der = [
        der::Header::new(Tag::Sequence, der::Length::try_from(body.len()).unwrap())
            .unwrap()
            .to_der()
            .unwrap(),
        body,
    ]
    .concat();
    // what is checked: the bytes as received are not the decoded certificate encoded again
    let decoded = Certificate::from_der(&der).unwrap();
    assert_eq!(signed_part(&der).unwrap(), tbs.as_slice());
    assert_eq!(decoded.tbs_certificate.to_der().unwrap(), sorted_tbs);
    let anchors = TrustAnchors::default().with([Certificate::from_der(root.cert.der()).unwrap()]);
    anchors.chain_path(std::slice::from_ref(&der), NOW).unwrap();
    // and one byte changed in what was signed still fails
    let mut forged = der;
    let i = forged.len() - sig.as_bytes().len() - 20;
    forged[i] ^= 1;
    assert!(anchors.chain_path(&[forged], NOW).is_err());
}

#[test]
fn pem_chains_keep_each_certificates_bytes() {
    let root = ca("root", None);
    let inter = ca("intermediate", Some(&root));
    let pem = format!("{}\n\n{}", inter.cert.pem(), root.cert.pem());
    let chain = pem_chain(&pem).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].1, inter.cert.der().to_vec());
    assert_eq!(chain[1].1, root.cert.der().to_vec());
    assert!(is_self_signed_ca(&chain[1].0, &chain[1].1));
    assert!(!is_self_signed_ca(&chain[0].0, &chain[0].1));
    assert!(pem_chain("").unwrap().is_empty());
    for bad in [
        "-----BEGIN CERTIFICATE-----\nAAAA\n",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ] {
        assert!(pem_chain(bad).is_err(), "{bad}");
    }
    let many = root.cert.pem().repeat(MAX_CHAIN + 1);
    assert!(pem_chain(&many).is_err());
}
