//! The mdoc round trip and its negative cases: each attack is refused by the named check.

use ciborium::Value;

use super::*;
use crate::crypto::x509::tests::{ca, leaf};
use crate::crypto::x509::TrustAnchors;
use crate::crypto::{KeyType, SigningKey};

const NOW: i64 = 1_800_000_000;
const MDL: &str = "org.iso.18013.5.1.mDL";
const NS: &str = "org.iso.18013.5.1";

struct Fixture {
    anchors: TrustAnchors,
    signer: SigningKey,
    chain: Vec<Vec<u8>>,
    device: SigningKey,
}

fn fixture() -> Fixture {
    fixture_under(&ca("test IACA", None), document_signer)
}

/// A document signer under `root` (its certificate `edit`ed), `root` the one anchor.
fn fixture_under(
    root: &crate::crypto::x509::tests::Ca,
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> Fixture {
    use base64::Engine;
    let (ds, signer) = leaf(root, vec![], edit);
    Fixture {
        anchors: TrustAnchors::from_pem(root.cert.pem().as_bytes()).unwrap(),
        signer,
        chain: vec![base64::engine::general_purpose::STANDARD
            .decode(ds)
            .unwrap()],
        device: SigningKey::generate(KeyType::P256),
    }
}

/// ISO 18013-5 Annex B.1.4: a document signer has keyUsage digitalSignature, the mdlDS
/// extended key usage (1.0.18013.5.1.2) and one countryName.
fn document_signer(p: &mut rcgen::CertificateParams) {
    p.distinguished_name.push(rcgen::DnType::CountryName, "UT");
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::Other(vec![
        1, 0, 18013, 5, 1, 2,
    ])];
}

fn mdl(f: &Fixture, valid_from: i64, valid_until: i64) -> Vec<u8> {
    let elements = vec![
        ("family_name".to_string(), Value::Text("Mustermann".into())),
        ("given_name".to_string(), Value::Text("Erika".into())),
        (
            "birth_date".to_string(),
            from_json(&serde_json::json!("1984-01-26"), true),
        ),
        ("age_over_18".to_string(), Value::Bool(true)),
    ];
    issue::issuer_signed(&issue::IssueRequest {
        doc_type: MDL,
        namespaces: &[(NS.to_string(), elements)],
        device_key: &f.device.verifying_key(),
        signer: &f.signer,
        x5chain: &f.chain,
        signed: NOW - 10,
        valid_from,
        valid_until,
        status: Some((7, "https://issuer.example/status/1".into())),
    })
    .unwrap()
}

fn transcript(nonce: &str) -> Vec<u8> {
    transcript::oid4vp(
        "x509_san_dns:rp.example",
        nonce,
        None,
        "https://rp.example/response",
    )
}

fn present(f: &Fixture, signed: &[u8], nonce: &str) -> Vec<u8> {
    present::device_response(
        signed,
        MDL,
        |_, e| e == "family_name" || e == "age_over_18",
        &f.device,
        &transcript(nonce),
    )
    .unwrap()
}

fn verify_resp(f: &Fixture, resp: &[u8], nonce: &str) -> MdocResult<Vec<verify::Verified>> {
    verify::device_response(resp, &transcript(nonce), &f.anchors, NOW)
}

#[test]
fn issued_presented_and_verified_with_only_the_requested_elements() {
    let f = fixture();
    let signed = mdl(&f, NOW - 10, NOW + 3600);
    // the holder can check what it received (no device signature yet)
    let held =
        verify::issuer_signed(&decode(&signed).unwrap(), Some(MDL), &f.anchors, NOW).unwrap();
    assert_eq!(held.claims[NS].len(), 4);
    let docs = verify_resp(&f, &present(&f, &signed, "n-1"), "n-1").unwrap();
    assert_eq!(docs.len(), 1);
    let d = &docs[0];
    assert_eq!(d.doc_type, MDL);
    assert_eq!(
        serde_json::Value::Object(d.claims[NS].clone()),
        serde_json::json!({"family_name": "Mustermann", "age_over_18": true})
    );
    assert_eq!(
        d.status,
        Ok(Some((7, "https://issuer.example/status/1".into())))
    );
    assert_eq!(d.device_key, f.device.verifying_key());
    assert_eq!(held.claims[NS]["birth_date"], "1984-01-26");
}

#[test]
fn another_requests_transcript_is_refused() {
    let f = fixture();
    let resp = present(&f, &mdl(&f, NOW - 10, NOW + 3600), "n-1");
    assert_eq!(
        verify_resp(&f, &resp, "n-2").unwrap_err().code(),
        "mdoc_device_auth_failed"
    );
    let other_rp = transcript::oid4vp(
        "x509_san_dns:evil.example",
        "n-1",
        None,
        "https://rp.example/response",
    );
    let e = verify::device_response(&resp, &other_rp, &f.anchors, NOW).unwrap_err();
    assert_eq!(e.code(), "mdoc_device_auth_failed");
}

#[test]
fn a_device_signature_by_another_key_is_refused() {
    let f = fixture();
    let signed = mdl(&f, NOW - 10, NOW + 3600);
    let thief = SigningKey::generate(KeyType::P256);
    let resp =
        present::device_response(&signed, MDL, |_, _| true, &thief, &transcript("n")).unwrap();
    assert_eq!(
        verify_resp(&f, &resp, "n").unwrap_err().code(),
        "mdoc_device_auth_failed"
    );
}

#[test]
fn validity_window_is_enforced() {
    let f = fixture();
    let expired = present(&f, &mdl(&f, NOW - 7200, NOW - 1), "n");
    assert_eq!(
        verify_resp(&f, &expired, "n").unwrap_err().code(),
        "mdoc_not_valid_now"
    );
    let early = present(&f, &mdl(&f, NOW + 600, NOW + 7200), "n");
    assert_eq!(
        verify_resp(&f, &early, "n").unwrap_err().code(),
        "mdoc_not_valid_now"
    );
}

#[test]
fn a_document_signer_outside_the_trust_anchors_is_refused() {
    let f = fixture();
    let resp = present(&f, &mdl(&f, NOW - 10, NOW + 3600), "n");
    let other = ca("someone else's IACA", None);
    let anchors = TrustAnchors::from_pem(other.cert.pem().as_bytes()).unwrap();
    let e = verify::device_response(&resp, &transcript("n"), &anchors, NOW).unwrap_err();
    assert_eq!(e.code(), "mdoc_untrusted_signer");
    let e = verify::device_response(&resp, &transcript("n"), &TrustAnchors::default(), NOW)
        .unwrap_err();
    assert_eq!(e.code(), "mdoc_untrusted_signer");
}

/// `x509.iaca_doc_types`: an IACA trusted for mDLs vouches for no other doc type, though its
/// document signer signs one; a prefix takes the doc types under it; an unscoped file, any; a
/// scope naming no anchor file, or no doc type, is a configuration error.
#[test]
fn an_iaca_scoped_to_doc_types_vouches_for_those_only() {
    const PID: &str = "eu.europa.ec.eudi.pid.1";
    let root = ca("test IACA", None);
    let f = fixture_under(&root, document_signer);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("iaca.pem");
    std::fs::write(&file, root.cert.pem()).unwrap();
    let file = file.to_string_lossy().to_string();
    let scoped = |types: &[&str]| {
        let scope = [(file.clone(), types.iter().map(|t| t.to_string()).collect())];
        TrustAnchors::load_scoped(std::slice::from_ref(&file), &scope.into_iter().collect())
    };
    let issued = |doc_type: &str| {
        let elements = vec![("family_name".to_string(), Value::Text("Mustermann".into()))];
        let bytes = issue::issuer_signed(&issue::IssueRequest {
            doc_type,
            namespaces: &[(NS.to_string(), elements)],
            device_key: &f.device.verifying_key(),
            signer: &f.signer,
            x5chain: &f.chain,
            signed: NOW - 10,
            valid_from: NOW - 10,
            valid_until: NOW + 3600,
            status: None,
        })
        .unwrap();
        decode(&bytes).unwrap()
    };
    let (mdl, pid) = (issued(MDL), issued(PID));

    let mdl_only = scoped(&[MDL]).unwrap();
    let v = verify::issuer_signed(&mdl, Some(MDL), &mdl_only, NOW).unwrap();
    assert_eq!(v.doc_type, MDL);
    let e = verify::issuer_signed(&pid, Some(PID), &mdl_only, NOW).unwrap_err();
    assert_eq!(e.code(), "mdoc_untrusted_signer");
    assert!(e.to_string().contains("not trusted for doc type"), "{e}");
    // not by leaving the expected doc type out either
    let e = verify::issuer_signed(&pid, None, &mdl_only, NOW).unwrap_err();
    assert_eq!(e.code(), "mdoc_untrusted_signer");

    let pids = scoped(&["eu.europa.ec.eudi.pid.*"]).unwrap();
    verify::issuer_signed(&pid, Some(PID), &pids, NOW).unwrap();
    assert!(verify::issuer_signed(&mdl, Some(MDL), &pids, NOW).is_err());
    // the sandbox IACA and unscoped files vouch for any doc type
    let any = TrustAnchors::load_scoped(std::slice::from_ref(&file), &Default::default()).unwrap();
    verify::issuer_signed(&pid, Some(PID), &any, NOW).unwrap();
    let sandbox = mdl_only.clone().with([
        <x509_cert::Certificate as x509_cert::der::Decode>::from_der(root.cert.der()).unwrap(),
    ]);
    verify::issuer_signed(&pid, Some(PID), &sandbox, NOW).unwrap();

    assert!(scoped(&[]).is_err());
    assert!(scoped(&["*"]).is_err());
    let elsewhere = [("/etc/other.pem".to_string(), vec![MDL.to_string()])];
    let e = TrustAnchors::load_scoped(
        std::slice::from_ref(&file),
        &elsewhere.into_iter().collect(),
    )
    .unwrap_err();
    assert!(e.contains("/etc/other.pem"), "{e}");
}

/// Rewrites the one issuer-signed item of the response through `edit` (on its decoded map),
/// re-wrapping it, so its bytes change while the MSO's digest stays.
fn edit_first_item(resp: &[u8], edit: impl Fn(&mut Vec<(Value, Value)>)) -> Vec<u8> {
    let mut v = decode(resp).unwrap();
    let Value::Map(top) = &mut v else { panic!() };
    let docs = &mut top
        .iter_mut()
        .find(|(k, _)| k == &Value::Text("documents".into()))
        .unwrap()
        .1;
    let Value::Array(docs) = docs else { panic!() };
    let Value::Map(doc) = &mut docs[0] else {
        panic!()
    };
    let issuer = &mut doc
        .iter_mut()
        .find(|(k, _)| k == &Value::Text("issuerSigned".into()))
        .unwrap()
        .1;
    let Value::Map(issuer) = issuer else { panic!() };
    let ns = &mut issuer
        .iter_mut()
        .find(|(k, _)| k == &Value::Text("nameSpaces".into()))
        .unwrap()
        .1;
    let Value::Map(ns) = ns else { panic!() };
    let Value::Array(items) = &mut ns[0].1 else {
        panic!()
    };
    let (_, decoded) = untag24(&items[0]).unwrap();
    let Value::Map(mut m) = decoded else { panic!() };
    edit(&mut m);
    items[0] = tag24(&Value::Map(m));
    encode(&v)
}

#[test]
fn a_tampered_element_fails_its_digest() {
    let f = fixture();
    let resp = present(&f, &mdl(&f, NOW - 10, NOW + 3600), "n");
    let forged = edit_first_item(&resp, |m| {
        for (k, v) in m.iter_mut() {
            if k == &Value::Text("elementValue".into()) {
                *v = match v {
                    Value::Bool(_) => Value::Bool(false),
                    _ => Value::Text("Musterfrau".into()),
                };
            }
        }
    });
    assert_eq!(
        verify_resp(&f, &forged, "n").unwrap_err().code(),
        "mdoc_digest_mismatch"
    );
    // renaming the element (an undisclosed one under a disclosed digest) fails the same way
    let renamed = edit_first_item(&resp, |m| {
        for (k, v) in m.iter_mut() {
            if k == &Value::Text("elementIdentifier".into()) {
                *v = Value::Text("given_name".into());
            }
        }
    });
    assert_eq!(
        verify_resp(&f, &renamed, "n").unwrap_err().code(),
        "mdoc_digest_mismatch"
    );
}

#[test]
fn a_disclosed_item_twice_is_refused() {
    let f = fixture();
    let signed = mdl(&f, NOW - 10, NOW + 3600);
    let mut v = decode(&signed).unwrap();
    let Value::Map(top) = &mut v else { panic!() };
    let Value::Map(ns) = &mut top[0].1 else {
        panic!()
    };
    let Value::Array(items) = &mut ns[0].1 else {
        panic!()
    };
    items.push(items[0].clone());
    let e = verify::issuer_signed(&v, Some(MDL), &f.anchors, NOW).unwrap_err();
    assert_eq!(e.code(), "mdoc_digest_mismatch");
}

#[test]
fn a_document_claiming_another_doc_type_is_refused() {
    let f = fixture();
    let signed = mdl(&f, NOW - 10, NOW + 3600);
    let resp = present::device_response(
        &signed,
        "eu.europa.ec.eudi.pid.1",
        |_, _| true,
        &f.device,
        &transcript("n"),
    )
    .unwrap();
    assert_eq!(
        verify_resp(&f, &resp, "n").unwrap_err().code(),
        "mdoc_doctype_mismatch"
    );
}

/// An mDL saying family_name "Forged", its MSO signed by `signer` with `chain` as x5chain.
fn forged_mdl(f: &Fixture, signer: &SigningKey, chain: &[Vec<u8>]) -> Vec<u8> {
    issue::issuer_signed(&issue::IssueRequest {
        doc_type: MDL,
        namespaces: &[(
            NS.into(),
            vec![("family_name".into(), Value::Text("Forged".into()))],
        )],
        device_key: &f.device.verifying_key(),
        signer,
        x5chain: chain,
        signed: NOW - 10,
        valid_from: NOW - 10,
        valid_until: NOW + 3600,
        status: None,
    })
    .unwrap()
}

#[test]
fn a_forged_issuer_auth_is_refused() {
    let f = fixture();
    // the attacker's own MSO (all digests its own), signed with its own key but naming the
    // genuine document signer certificate
    let attacker = SigningKey::generate(KeyType::P256);
    let resp = present(&f, &forged_mdl(&f, &attacker, &f.chain), "n");
    assert_eq!(
        verify_resp(&f, &resp, "n").unwrap_err().code(),
        "mdoc_bad_issuer_signature"
    );
}

#[test]
fn malformed_and_oversized_input_is_a_clear_error_never_a_panic() {
    let f = fixture();
    let resp = present(&f, &mdl(&f, NOW - 10, NOW + 3600), "n");
    for cut in [0, 1, resp.len() / 3, resp.len() - 1] {
        assert_eq!(
            verify_resp(&f, &resp[..cut], "n").unwrap_err().code(),
            "mdoc_malformed",
            "cut at {cut}"
        );
    }
    let mut trailing = resp.clone();
    trailing.push(0);
    assert_eq!(
        verify_resp(&f, &trailing, "n").unwrap_err().code(),
        "mdoc_malformed"
    );
    let huge = vec![0x40; MAX_BYTES + 1];
    assert_eq!(
        verify_resp(&f, &huge, "n").unwrap_err().code(),
        "mdoc_too_large"
    );
    // deep nesting: 10,000 nested arrays
    let deep = vec![0x81; 10_000];
    assert!(verify_resp(&f, &deep, "n").is_err());
    // every single-byte corruption is refused or (if it hit nothing signed, e.g. a map key the
    // verifier then does not see) verifies a subset of the same claims: it never panics and never
    // yields a claim that was not issued
    let good = verify_resp(&f, &resp, "n").unwrap()[0].claims.clone();
    for i in 0..resp.len() {
        let mut b = resp.clone();
        b[i] ^= 0x5a;
        if let Ok(docs) = verify_resp(&f, &b, "n") {
            for (ns, elements) in &docs[0].claims {
                for (k, v) in elements {
                    assert_eq!(good.get(ns).and_then(|e| e.get(k)), Some(v), "byte {i}");
                }
            }
        }
    }
}

/// The first document's `deviceSigned` map (nameSpaces, deviceAuth) of a decoded response.
fn device_signed(v: &mut Value) -> &mut Vec<(Value, Value)> {
    let Value::Map(top) = v else { panic!() };
    let Value::Array(docs) = &mut top[1].1 else {
        panic!()
    };
    let Value::Map(doc) = &mut docs[0] else {
        panic!()
    };
    let Value::Map(device) = &mut doc[2].1 else {
        panic!()
    };
    device
}

#[test]
fn device_mac_and_device_signed_elements_are_not_accepted() {
    let f = fixture();
    let resp = present(&f, &mdl(&f, NOW - 10, NOW + 3600), "n");
    let mut v = decode(&resp).unwrap();
    let device = device_signed(&mut v);
    device[1].1 = Value::Map(vec![(
        Value::Text("deviceMac".into()),
        Value::Array(vec![]),
    )]);
    assert_eq!(
        verify_resp(&f, &encode(&v), "n").unwrap_err().code(),
        "mdoc_unsupported"
    );
}

/// A deviceSignature that carries its payload attached (ISO 18013-5 says nil) equal to the
/// DeviceAuthenticationBytes the verifier expects: anyone can compute those from the request, so
/// this must be a clear refusal, not a panic in coset's detached-signature check.
#[test]
fn an_attached_device_auth_payload_is_refused_not_a_panic() {
    let f = fixture();
    let resp = present(&f, &mdl(&f, NOW - 10, NOW + 3600), "n");
    let device_auth = Value::Array(vec![
        Value::Text("DeviceAuthentication".into()),
        decode(&transcript("n")).unwrap(),
        Value::Text(MDL.into()),
        tag24(&Value::Map(Vec::new())),
    ]);
    let payload = encode(&tag24(&device_auth));
    let mut v = decode(&resp).unwrap();
    let device = device_signed(&mut v);
    let Value::Map(auth) = &mut device[1].1 else {
        panic!()
    };
    let Value::Array(sign1) = &mut auth[0].1 else {
        panic!()
    };
    sign1[2] = Value::Bytes(payload);
    let attached = encode(&v);
    let outcome = std::panic::catch_unwind(|| verify_resp(&f, &attached, "n"));
    let e = outcome
        .expect("verification panicked")
        .expect_err("an attached payload is refused");
    assert_eq!(e.code(), "mdoc_device_auth_failed");
}

/// ISO 18013-5 Annex B: only a document signer certificate (an end entity with the mdlDS
/// extended key usage) signs an MSO. A certificate issued under the same anchor for something
/// else (an SD-JWT issuer's or a TLS server's), an intermediate CA, or the anchor (IACA) itself
/// is not one.
#[test]
fn only_a_document_signer_certificate_may_sign_an_mso() {
    use base64::Engine;
    use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
    let f = fixture();
    let root = ca("test IACA", None);
    let anchors = TrustAnchors::from_pem(root.cert.pem().as_bytes()).unwrap();
    let der = |b64: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    };
    let signed_by = |signer: &SigningKey, chain: Vec<Vec<u8>>| {
        let resp = present(&f, &forged_mdl(&f, signer, &chain), "n");
        verify::device_response(&resp, &transcript("n"), &anchors, NOW)
    };
    // the genuine case: a document signer (mdlDS EKU, digitalSignature)
    let (ds, ds_key) = leaf(&root, vec![], document_signer);
    assert!(signed_by(&ds_key, vec![der(&ds)]).is_ok());
    // an SD-JWT VC issuer's certificate (a dNSName SAN, no EKU) under the same anchor
    let (issuer_cert, issuer_key) = leaf(
        &root,
        vec![crate::crypto::x509::tests::dns("issuer.example")],
        |_| {},
    );
    let e = signed_by(&issuer_key, vec![der(&issuer_cert)]).unwrap_err();
    assert_eq!(e.code(), "mdoc_untrusted_signer", "{e}");
    // a TLS server certificate
    let (tls, tls_key) = leaf(&root, vec![], |p| {
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    let e = signed_by(&tls_key, vec![der(&tls)]).unwrap_err();
    assert_eq!(e.code(), "mdoc_untrusted_signer", "{e}");
    // mdlDS EKU but keyUsage without digitalSignature
    let (no_ku, no_ku_key) = leaf(&root, vec![], |p| {
        document_signer(p);
        p.key_usages = vec![KeyUsagePurpose::KeyAgreement];
    });
    let e = signed_by(&no_ku_key, vec![der(&no_ku)]).unwrap_err();
    assert_eq!(e.code(), "mdoc_untrusted_signer", "{e}");
    // an intermediate CA signing the MSO itself (even one carrying the mdlDS EKU)
    let (mid, mid_key) = leaf(&root, vec![], |p| {
        document_signer(p);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages.push(KeyUsagePurpose::KeyCertSign);
    });
    let e = signed_by(&mid_key, vec![der(&mid)]).unwrap_err();
    assert_eq!(e.code(), "mdoc_untrusted_signer", "{e}");
    // the IACA (the anchor itself) as the signer
    let iaca_key = {
        use p256::pkcs8::DecodePrivateKey;
        SigningKey::P256(
            p256::ecdsa::SigningKey::from_pkcs8_der(&root.key.serialize_der()).unwrap(),
        )
    };
    let e = signed_by(&iaca_key, vec![root.cert.der().to_vec()]).unwrap_err();
    assert_eq!(e.code(), "mdoc_untrusted_signer", "{e}");
}

mod signer;

/// `[protected bstr, {}, h'']` counter signatures nested `levels` deep, as the header map
/// `{7: COSE_Signature}`: coset parses each level's protected header afresh (a new CBOR decode,
/// a new depth limit), so the nesting is invisible to a depth-bounded decoder.
fn nested_counter_signatures(levels: usize) -> Vec<u8> {
    let bstr = |b: &[u8]| encode(&Value::Bytes(b.to_vec()));
    let mut header = vec![0xa0]; // {}
    for _ in 0..levels {
        let mut next = vec![0xa1, 0x07, 0x83]; // {7: [
        next.extend(bstr(&header));
        next.extend([0xa0, 0x40]); // {}, h'' ]}
        header = next;
    }
    header
}

/// A COSE_Sign1 whose headers carry counter signatures is refused before coset parses it: coset
/// recursed once per nested counter signature (a stack overflow aborted the process for ~10,000
/// levels in ~90 KB, reached before any trust or signature check), and mdoc uses none.
#[test]
fn counter_signatures_are_refused_before_coset_recurses_into_them() {
    let deep = nested_counter_signatures(10_000);
    let top: Value = decode(&deep).unwrap(); // {7: [bstr, {}, h'']}
                                             // in the unprotected header, and in the protected one
    let unprotected = Value::Array(vec![
        Value::Bytes(vec![]),
        top.clone(),
        Value::Null,
        Value::Bytes(vec![]),
    ]);
    let protected = Value::Array(vec![
        Value::Bytes(deep.clone()),
        Value::Map(vec![]),
        Value::Null,
        Value::Bytes(vec![]),
    ]);
    for auth in [unprotected, protected] {
        let issuer_signed = Value::Map(vec![
            (Value::Text("nameSpaces".into()), Value::Map(vec![])),
            (Value::Text("issuerAuth".into()), auth.clone()),
        ]);
        let e =
            verify::issuer_signed(&issuer_signed, None, &TrustAnchors::default(), NOW).unwrap_err();
        assert!(e.to_string().contains("counter signature"), "{e}");
        let e = verify::parse_unverified(&encode(&issuer_signed)).unwrap_err();
        assert!(e.to_string().contains("counter signature"), "{e}");
        let response = Value::Map(vec![
            (Value::Text("version".into()), Value::Text("1.0".into())),
            (Value::Text("status".into()), Value::Integer(0.into())),
            (
                Value::Text("documents".into()),
                Value::Array(vec![Value::Map(vec![
                    (Value::Text("docType".into()), Value::Text(MDL.into())),
                    (Value::Text("issuerSigned".into()), issuer_signed),
                ])]),
            ),
        ]);
        let f = fixture();
        assert!(verify_resp(&f, &encode(&response), "n").is_err());
        // a status list token is read the same way (tagged or not)
        let e = status::token_sign1(&encode(&auth)).unwrap_err();
        assert!(e.to_string().contains("counter signature"), "{e}");
    }
}
