//! The document signer against what it signs (ISO 18013-5 Annex B and 9.3.1): its country, the
//! time the MSO was signed, and error reasons that never carry an attacker's text whole.

use super::*;
use rcgen::{CertificateParams, DnType, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256};

/// An IACA naming `countries` (none, one, or several countryName attributes).
fn iaca(countries: &[&str]) -> crate::crypto::x509::tests::Ca {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "IACA");
    name_countries(&mut p, countries);
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let cert = p.self_signed(&key).unwrap();
    crate::crypto::x509::tests::Ca { cert, key }
}

/// Sets the subject's countryName attributes (rcgen keeps one per type: further ones are added
/// as a custom type of the same OID).
fn name_countries(p: &mut CertificateParams, countries: &[&str]) {
    p.distinguished_name.remove(DnType::CountryName);
    for (i, c) in countries.iter().enumerate() {
        let ty = if i == 0 {
            DnType::CountryName
        } else {
            DnType::CustomDnType(vec![2, 5, 4, 6])
        };
        p.distinguished_name.push(
            ty,
            rcgen::DnValue::PrintableString((*c).try_into().unwrap()),
        );
    }
}

/// A fixture whose IACA names `iaca_countries` and whose document signer names `ds_countries`
/// and is `edit`ed after.
fn fixture_with(
    iaca_countries: &[&str],
    ds_countries: &[&str],
    edit: impl FnOnce(&mut CertificateParams),
) -> Fixture {
    fixture_under(&iaca(iaca_countries), |p| {
        document_signer(p);
        name_countries(p, ds_countries);
        edit(p);
    })
}

/// An mDL disclosing `issuing_country` (when given), MSO signed at `signed`, presented and
/// verified.
fn verify_with(
    f: &Fixture,
    issuing_country: Option<&str>,
    signed: i64,
) -> MdocResult<Vec<verify::Verified>> {
    let mut elements = vec![("family_name".to_string(), Value::Text("Mustermann".into()))];
    if let Some(c) = issuing_country {
        elements.push(("issuing_country".into(), Value::Text(c.into())));
    }
    let bytes = issue::issuer_signed(&issue::IssueRequest {
        doc_type: MDL,
        namespaces: &[(NS.to_string(), elements)],
        device_key: &f.device.verifying_key(),
        signer: &f.signer,
        x5chain: &f.chain,
        signed,
        valid_from: signed,
        valid_until: NOW + 3600,
        status: None,
    })
    .unwrap();
    let resp =
        present::device_response(&bytes, MDL, |_, _| true, &f.device, &transcript("n")).unwrap();
    verify_resp(f, &resp, "n")
}

/// t_country: `issuing_country` is the document signer's countryName, which is its IACA's.
#[test]
fn issuing_country_is_the_document_signers_country() {
    let f = fixture_with(&["DE"], &["DE"], |_| {});
    assert!(verify_with(&f, Some("DE"), NOW - 10).is_ok());
    assert!(verify_with(&f, None, NOW - 10).is_ok());
    let e = verify_with(&f, Some("FR"), NOW - 10).unwrap_err();
    assert_eq!(e.code(), "mdoc_country_mismatch", "{e}");
    assert!(e.to_string().contains("issuing_country"), "{e}");
    // a document signer of another country than its IACA
    let f = fixture_with(&["DE"], &["FR"], |_| {});
    let e = verify_with(&f, Some("FR"), NOW - 10).unwrap_err();
    assert_eq!(e.code(), "mdoc_country_mismatch", "{e}");
    // an IACA that names no country: the document signer's is the one
    let f = fixture_with(&[], &["FR"], |_| {});
    assert!(verify_with(&f, Some("FR"), NOW - 10).is_ok());
    // a document signer naming no country, or two
    for countries in [&[][..], &["DE", "FR"][..], &["DE", "DE"][..]] {
        let f = fixture_with(&["DE"], countries, |_| {});
        let e = verify_with(&f, None, NOW - 10).unwrap_err();
        assert_eq!(e.code(), "mdoc_country_mismatch", "{countries:?}: {e}");
        assert!(e.to_string().contains("exactly one countryName"), "{e}");
    }
}

/// ISO 18013-5 9.3.1: the MSO's `signed` time is within the document signer's validity.
#[test]
fn the_mso_is_signed_while_its_document_signer_is_valid() {
    // valid from 2027-01-01 (NOW is 2027-01-15)
    let f = fixture_with(&["UT"], &["UT"], |p| {
        p.not_before = rcgen::date_time_ymd(2027, 1, 1);
        p.not_after = rcgen::date_time_ymd(2028, 1, 1);
    });
    assert!(verify_with(&f, None, NOW - 10).is_ok());
    // signed a month before the certificate existed (backdated)
    let e = verify_with(&f, None, NOW - 40 * 86_400).unwrap_err();
    assert_eq!(e.code(), "mdoc_not_valid_now", "{e}");
    assert!(e.to_string().contains("document signer"), "{e}");
}

/// t_reflect: a 300 KB doc type is not reflected whole, and a truncated response is described
/// in words, not as Rust debug output.
#[test]
fn error_reasons_quote_no_attacker_text_whole() {
    let f = fixture();
    let signed = mdl(&f, NOW - 10, NOW + 3600);
    let huge = "A".repeat(300_000);
    let resp =
        present::device_response(&signed, &huge, |_, _| true, &f.device, &transcript("n")).unwrap();
    let e = verify_resp(&f, &resp, "n").unwrap_err();
    assert_eq!(e.code(), "mdoc_doctype_mismatch");
    assert!(
        e.to_string().len() < 2 * MAX_QUOTED + 200,
        "{} bytes",
        e.to_string().len()
    );
    assert!(e.to_string().contains('…'), "{e}");
    let good = present(&f, &signed, "n");
    for cut in [1, good.len() / 2] {
        let e = verify_resp(&f, &good[..cut], "n").unwrap_err().to_string();
        assert!(!e.contains("Error {") && !e.contains("Io("), "{e}");
        assert!(e.contains("truncated"), "{e}");
    }
    assert_eq!(clip(&"é".repeat(MAX_QUOTED)), "é".repeat(MAX_QUOTED));
    assert_eq!(
        clip(&"é".repeat(MAX_QUOTED + 1)),
        format!("{}…", "é".repeat(MAX_QUOTED))
    );
}
