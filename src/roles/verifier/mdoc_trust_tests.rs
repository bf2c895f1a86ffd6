//! mso_mdoc at the verifier, from an attacker review: whom an mdoc's issuer is trusted by (the
//! verifier's trusted issuers, DCQL `trusted_authorities`), a status the verifier cannot read,
//! and what one response may make the verifier fetch.

use ciborium::Value as Cbor;
use coset::AsCborValue;
use serde_json::{json, Value};

use super::model::ALL_POLICIES;
use super::verify::{Audience, Ctx, Outcome, StatusCache, Trust};
use crate::crypto::mdoc::{self, issue, present, transcript};
use crate::crypto::x509::tests::{ca, leaf};
use crate::crypto::x509::TrustAnchors;
use crate::crypto::{KeyType, SigningKey};

const NOW: i64 = 1_800_000_000;
const MDL: &str = "org.iso.18013.5.1.mDL";
const NS: &str = "org.iso.18013.5.1";
const CLIENT: &str = "redirect_uri:https://rp.example/cb";
const NONCE: &str = "n-1";
const RESPONSE_URI: &str = "https://rp.example/cb";

struct Pki {
    anchors: TrustAnchors,
    /// The IACA's Subject Key Identifier.
    iaca_key_id: Vec<u8>,
    iaca_pem: String,
    ds: SigningKey,
    chain: Vec<Vec<u8>>,
    device: SigningKey,
}

/// An IACA the node trusts (`x509.trust_anchors`) and a proper document signer under it.
fn pki(iaca_name: &str) -> Pki {
    pki_with(ca(iaca_name, None), |_| {})
}

/// [`pki`] under `root`, the document signer's certificate edited by `edit`.
fn pki_with(
    root: crate::crypto::x509::tests::Ca,
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> Pki {
    use base64::Engine;
    let (ds_b64, ds) = leaf(&root, vec![], |p| {
        p.distinguished_name.push(rcgen::DnType::CountryName, "UT");
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::Other(vec![
            1, 0, 18013, 5, 1, 2,
        ])];
        edit(p);
    });
    let iaca = {
        use x509_cert::der::Decode;
        x509_cert::Certificate::from_der(root.cert.der()).unwrap()
    };
    Pki {
        anchors: TrustAnchors::from_pem(root.cert.pem().as_bytes()).unwrap(),
        iaca_key_id: crate::crypto::x509::subject_key_id(&iaca).expect("rcgen writes an SKI"),
        iaca_pem: root.cert.pem(),
        ds,
        chain: vec![base64::engine::general_purpose::STANDARD
            .decode(ds_b64)
            .unwrap()],
        device: SigningKey::generate(KeyType::P256),
    }
}

fn issue_mdl(p: &Pki, status: Option<(u64, String)>) -> Vec<u8> {
    issue::issuer_signed(&issue::IssueRequest {
        doc_type: MDL,
        namespaces: &[(
            NS.to_string(),
            vec![
                ("family_name".to_string(), Cbor::Text("Mustermann".into())),
                ("age_over_18".to_string(), Cbor::Bool(true)),
            ],
        )],
        device_key: &p.device.verifying_key(),
        signer: &p.ds,
        x5chain: &p.chain,
        signed: NOW - 10,
        valid_from: NOW - 10,
        valid_until: NOW + 3600,
        status,
    })
    .unwrap()
}

/// The IssuerSigned `signed` with its MSO `edit`ed and re-signed by the (genuine) document
/// signer: what an issuer would produce.
fn resign_mso(p: &Pki, signed: &[u8], edit: impl FnOnce(&mut Vec<(Cbor, Cbor)>)) -> Vec<u8> {
    let mut top = mdoc::decode(signed).unwrap();
    let Cbor::Map(entries) = &mut top else {
        panic!()
    };
    let auth = entries
        .iter_mut()
        .find(|(k, _)| *k == Cbor::Text("issuerAuth".into()))
        .map(|(_, v)| v)
        .unwrap();
    let sign1 = coset::CoseSign1::from_cbor_value(auth.clone()).unwrap();
    let (_, mut mso) =
        mdoc::untag24(&mdoc::decode(sign1.payload.as_deref().unwrap()).unwrap()).unwrap();
    let Cbor::Map(m) = &mut mso else { panic!() };
    edit(m);
    let payload = mdoc::encode(&mdoc::tag24(&mso));
    let resigned = coset::CoseSign1Builder::new()
        .protected(sign1.protected.header.clone())
        .unprotected(sign1.unprotected.clone())
        .payload(payload)
        .create_signature(b"", |d| p.ds.sign(d))
        .build();
    *auth = resigned.to_cbor_value().unwrap();
    mdoc::encode(&top)
}

fn present_b64(p: &Pki, signed: &[u8]) -> String {
    let st = transcript::oid4vp(CLIENT, NONCE, None, RESPONSE_URI);
    let resp = present::device_response(
        signed,
        MDL,
        |_, e| e == "family_name" || e == "age_over_18",
        &p.device,
        &st,
    )
    .unwrap();
    crate::crypto::b64url(resp)
}

/// Runs the verifier's evaluation (as `response.rs` does) and returns policy → (passed, reason).
async fn evaluate(
    anchors: &TrustAnchors,
    trust: Trust,
    dcql: Value,
    pres: String,
) -> std::collections::BTreeMap<String, (bool, String)> {
    evaluate_all(anchors, trust, dcql, vec![pres]).await
}

/// [`evaluate`] with several presentations for the query.
async fn evaluate_all(
    anchors: &TrustAnchors,
    trust: Trust,
    dcql: Value,
    pres: Vec<String>,
) -> std::collections::BTreeMap<String, (bool, String)> {
    evaluate_in(anchors, trust, dcql, pres, false).await
}

/// [`evaluate_all`], in production mode when `production` (status lists over https only).
async fn evaluate_in(
    anchors: &TrustAnchors,
    trust: Trust,
    dcql: Value,
    pres: Vec<String>,
    production: bool,
) -> std::collections::BTreeMap<String, (bool, String)> {
    let http = reqwest::Client::new();
    let cache = StatusCache::default();
    let st = transcript::oid4vp(CLIENT, NONCE, None, RESPONSE_URI);
    let no_sd_jwt_anchors = TrustAnchors::default();
    let ctx = Ctx {
        dcql_query: Some(&dcql),
        presentation_definition: None,
        audience: Some(Audience {
            nonce: Some(NONCE),
            client_id: Some(CLIENT),
        }),
        now: NOW,
        http: &http,
        trust: &trust,
        issuer_allowlist: true,
        status_cache: &cache,
        // IACAs serve mdocs only: none of them is an SD-JWT VC issuer anchor
        anchors: &no_sd_jwt_anchors,
        mdoc_anchors: anchors,
        require_status: false,
        mdoc_transcript: Some(&st),
        fetched: Default::default(),
        https_only: production,
        status_max_age: Some(86_400),
    };
    let out: Outcome = super::query::evaluate(&ctx, &json!({ "mdl": pres }), None).await;
    let all: Vec<String> = ALL_POLICIES.iter().map(|s| s.to_string()).collect();
    out.results(&all)
        .into_iter()
        .map(|r| (r.name, (r.passed, r.reason.unwrap_or_default())))
        .collect()
}

fn mdl_query(extra: Value) -> Value {
    let mut q = json!({"id": "mdl", "format": "mso_mdoc", "meta": {"doctype_value": MDL},
        "claims": [{"path": [NS, "family_name"]}]});
    for (k, v) in extra.as_object().unwrap() {
        q[k] = v.clone();
    }
    json!({"credentials": [q]})
}

/// The `aki:` entry naming the test IACA of `p` (its Subject Key Identifier).
fn iaca_entry(p: &Pki) -> String {
    super::verify::aki_entry(&p.iaca_key_id)
}

/// A verifier that lists issuers trusts an mdoc only when its list names an authority over the
/// document signer (`aki:…`); a node-wide anchor alone is not enough (before, every mdoc under
/// any `x509.trust_anchors` IACA passed `issuer_allowlist` whatever the verifier listed).
#[tokio::test]
async fn an_mdoc_issuer_is_trusted_only_as_the_verifier_lists_it() {
    let p = pki("IACA of another jurisdiction");
    let pres = present_b64(&p, &issue_mdl(&p, None));
    for trust in [
        Trust::Only(vec![]),
        Trust::Only(vec!["did:web:dmv.example".into()]),
        Trust::Only(vec!["aki:c29tZW9uZSBlbHNl".into()]),
    ] {
        let r = evaluate(
            &p.anchors,
            trust.clone(),
            mdl_query(json!({})),
            pres.clone(),
        )
        .await;
        assert!(!r["issuer_allowlist"].0, "{trust:?} passed: {r:?}");
        assert!(
            trust == Trust::Only(vec![]) || r["issuer_allowlist"].1.contains(&iaca_entry(&p)),
            "the reason names the IACA to list: {r:?}"
        );
    }
    for trust in [
        Trust::Any,
        Trust::Only(vec!["did:web:x".into(), iaca_entry(&p)]),
    ] {
        let r = evaluate(
            &p.anchors,
            trust.clone(),
            mdl_query(json!({})),
            pres.clone(),
        )
        .await;
        assert!(r.values().all(|(ok, _)| *ok), "{trust:?}: {r:?}");
    }
}

/// DCQL `trusted_authorities` (`aki`) is enforced: an mdoc under another IACA does not answer
/// the query; one under the named IACA does.
#[tokio::test]
async fn dcql_trusted_authorities_are_enforced() {
    let p = pki("IACA of another jurisdiction");
    let pres = present_b64(&p, &issue_mdl(&p, None));
    let named =
        |v: &str| mdl_query(json!({"trusted_authorities": [{"type": "aki", "values": [v]}]}));
    let r = evaluate(
        &p.anchors,
        Trust::Any,
        named("s9tIpPmhxdiuNkHMEWNpYim8S8Y"),
        pres.clone(),
    )
    .await;
    assert!(!r["query_match"].0, "{r:?}");
    assert!(r["query_match"].1.contains("trusted_authorities"), "{r:?}");
    let ours = crate::crypto::b64url(&p.iaca_key_id);
    let r = evaluate(&p.anchors, Trust::Any, named(&ours), pres).await;
    assert!(r.values().all(|(ok, _)| *ok), "{r:?}");
}

/// A `status` the verifier cannot read (an ISO 18013-5 identifier list, a text index) fails the
/// `status` policy; before, it passed as "no status", and a revoked mdoc with it was accepted.
#[tokio::test]
async fn an_unreadable_mdoc_status_reference_is_not_a_pass() {
    let p = pki("IACA");
    let t = |s: &str| Cbor::Text(s.into());
    for status in [
        Cbor::Map(vec![(
            t("identifier_list"),
            Cbor::Map(vec![
                (t("id"), Cbor::Bytes(vec![1, 2, 3])),
                (t("uri"), t("https://issuer.example/idl/1")),
            ]),
        )]),
        Cbor::Map(vec![(
            t("status_list"),
            Cbor::Map(vec![
                (t("idx"), t("7")),
                (t("uri"), t("https://issuer.example/status/1")),
            ]),
        )]),
    ] {
        let signed = resign_mso(&p, &issue_mdl(&p, None), |m| {
            m.push((t("status"), status.clone()))
        });
        let r = evaluate(
            &p.anchors,
            Trust::Any,
            mdl_query(json!({})),
            present_b64(&p, &signed),
        )
        .await;
        assert!(!r["status"].0, "{status:?}: {r:?}");
    }
}

/// What one response can make the verifier fetch: copies of one mdoc for a single-credential
/// query are refused before any is verified (no fetch); for a query with `multiple`, more than
/// ten presentations are refused the same way, and up to ten under one list fetch it once.
#[tokio::test]
async fn copies_of_one_mdoc_do_not_each_fetch_the_status_list() {
    use std::sync::atomic::Ordering;
    let (port, hits) = super::verify::testing::counting_503_server();
    let p = pki("IACA");
    let pres = present_b64(
        &p,
        &issue_mdl(&p, Some((7, format!("http://127.0.0.1:{port}/status/1")))),
    );
    let copies = |n: usize| (0..n).map(|_| pres.clone()).collect::<Vec<_>>();
    let r = evaluate_all(&p.anchors, Trust::Any, mdl_query(json!({})), copies(40)).await;
    assert!(!r["query_match"].0, "{r:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let multiple = mdl_query(json!({"multiple": true}));
    let r = evaluate_all(&p.anchors, Trust::Any, multiple.clone(), copies(11)).await;
    assert!(!r["query_match"].0, "{r:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let r = evaluate_all(&p.anchors, Trust::Any, multiple, copies(10)).await;
    // the list answered 503: status fails, after one fetch
    assert!(!r["status"].0, "{r:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // in production mode a list over plain http is not fetched at all
    let r = evaluate_in(
        &p.anchors,
        Trust::Any,
        mdl_query(json!({})),
        copies(1),
        true,
    )
    .await;
    assert!(r["status"].1.contains("not https"), "{r:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // nor is the list of an issuer the verifier does not trust (it fails already)
    let r = evaluate_all(
        &p.anchors,
        Trust::Only(vec!["aki:bm90LXRoaXMtb25l".into()]),
        mdl_query(json!({})),
        copies(1),
    )
    .await;
    assert!(!r["issuer_allowlist"].0, "{r:?}");
    assert!(r["status"].1.contains("not checked"), "{r:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// An IACA the node trusts cannot pass for another one by declaring that one's key identifier
/// (here: a document signer under IACA B whose Authority Key Identifier is IACA A's): only
/// identifiers of keys that signed the path count.
#[tokio::test]
async fn a_trusted_iaca_cannot_pass_for_another_by_its_key_identifier() {
    let a = pki("IACA A");
    // AuthorityKeyIdentifier ::= SEQUENCE { keyIdentifier [0] IMPLICIT OCTET STRING }
    let mut aki = vec![
        0x30,
        (a.iaca_key_id.len() + 2) as u8,
        0x80,
        a.iaca_key_id.len() as u8,
    ];
    aki.extend_from_slice(&a.iaca_key_id);
    let b = pki_with(ca("IACA B", None), move |p| {
        p.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
            &[2, 5, 29, 35],
            aki,
        )];
    });
    // the node trusts both IACAs; the verifier and the query only A
    let both = TrustAnchors::from_pem(format!("{}{}", a.iaca_pem, b.iaca_pem).as_bytes()).unwrap();
    let pres = present_b64(&b, &issue_mdl(&b, None));
    let r = evaluate(
        &both,
        Trust::Only(vec![iaca_entry(&a)]),
        mdl_query(json!({})),
        pres.clone(),
    )
    .await;
    assert!(!r["issuer_allowlist"].0, "{r:?}");
    let ours = crate::crypto::b64url(&a.iaca_key_id);
    let q = mdl_query(json!({"trusted_authorities": [{"type": "aki", "values": [ours]}]}));
    let r = evaluate(&both, Trust::Any, q, pres).await;
    assert!(!r["query_match"].0, "{r:?}");
}

/// A presentation carrying more credentials than one presentation may is refused before any of
/// them is verified (each could cost a DID resolution and a status list fetch).
#[tokio::test]
async fn a_presentation_with_too_many_credentials_is_refused_unverified() {
    let holder = SigningKey::generate(KeyType::Ed25519);
    let did = crate::crypto::did::did_jwk(&holder.verifying_key());
    let vp = |n: usize| {
        crate::crypto::jws::sign(
            &holder,
            json!({"alg": "EdDSA", "typ": "JWT", "kid": format!("{did}#0")}),
            &json!({"iss": did, "aud": CLIENT, "nonce": NONCE, "iat": NOW,
                "vp": {"type": ["VerifiablePresentation"],
                       "verifiableCredential": vec!["not.a.credential"; n]}}),
        )
    };
    let q = json!({"credentials": [{"id": "mdl", "format": "jwt_vc_json", "meta": {}}]});
    let anchors = TrustAnchors::default();
    let r = evaluate(&anchors, Trust::Any, q.clone(), vp(11)).await;
    assert!(r["query_match"].1.contains("11 credentials"), "{r:?}");
    // the presentation's own signature is checked; none of its credentials is
    assert!(r["signature"].0, "{r:?}");
    // ten are verified (and fail, being garbage)
    let r = evaluate(&anchors, Trust::Any, q, vp(10)).await;
    assert!(!r["signature"].0, "{r:?}");
    assert!(!r["query_match"].1.contains("credentials in one"), "{r:?}");
}
